"""What changes for addresses and logins, proved with the runtime's own router and policy
(as the compiler's open-relay check proves MP303): the addresses the two routing tables
mention, every domain of either plan with a probe local part, and every login name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mailplan.diff.change import Change
from mailplan.plan.model import Kind, Pattern, Plan
from mailplan.runtime.decide.router import Router, Routing

PROBE = "probe"  # what a `*` stands for in an address that is tried


@dataclass(frozen=True)
class Probe:
    shown: str  # as the diff names it: the pattern, with its `*`
    address: str  # what is routed


def _witness(pattern: Pattern) -> Probe:
    shown = f"*@{pattern.picture}" if pattern.kind == "domain" else pattern.picture
    return Probe(shown, shown.replace("*", PROBE))


def probes(old: Plan, new: Plan, kind: Kind) -> list[Probe]:
    """The addresses the routing tables mention (left sides of records for `kind`, and the
    addresses they produce), then `*@DOMAIN` for their domains and every domain of the site."""
    found: dict[str, Probe] = {}
    domains: list[str] = []
    for plan in (old, new):
        for route in plan.routes:
            if kind not in route.kinds:
                continue
            mentioned = [_witness(route.left)]
            if route.right.kind == "address":
                mentioned.append(_witness(Pattern("address", route.right.value)))
            for probe in mentioned:
                found.setdefault(probe.address, probe)
                domains.append(probe.address.rpartition("@")[2])
        domains += [n for d in plan.domains for n in (d.name, *d.aliases)]
    for name in domains:
        if name and "[" not in name:
            found.setdefault(f"{PROBE}@{name}", Probe(f"*@{name}", f"{PROBE}@{name}"))
    return list(found.values())


def outcome(routing: Routing) -> str:
    """What happens to mail for an address, in words."""
    if routing.module == "ERROR":
        return f"rejected ({routing.status})"
    if routing.module == "DISCARD":
        return "discarded"
    if routing.module == "LOCAL":
        return f"delivered to account {routing.queue}"
    if routing.module == "SMTP":
        who = "for any sender" if routing.relayable else "for senders who may relay"
        return f"relayed to {routing.queue} {who}"
    if routing.module == "PIPE":
        return f"piped to {routing.queue}"
    return f"sent to list {routing.queue}"


def _where(routing: Routing) -> str:
    places = [str(step.source) for step in routing.steps if step.source is not None]
    return f" ({places[0]})" if places else ""


def _opens(was: Routing, now: Routing) -> bool:
    return now.module == "SMTP" and now.relayable and not (was.module == "SMTP" and was.relayable)


def behaviour(old: Plan, new: Plan) -> Iterator[Change]:
    """What changes for mail to the probed addresses, then for login names."""
    before, after = Router(old), Router(new)
    yield from mail(old, new, before, after)
    yield from logins(old, new, before, after)


def mail(old: Plan, new: Plan, before: Router, after: Router) -> Iterator[Change]:
    for probe in probes(old, new, "mail"):
        was, now = before.route(probe.address), after.route(probe.address)
        a, b = outcome(was), outcome(now)
        if a == b:
            continue
        where = _where(now) or _where(was)
        unsafe = "opens relaying for any sender" if _opens(was, now) else None
        yield Change("behaviour", f"`{probe.shown}` was {a}, is now {b}{where}", unsafe)


def _logins(plan: Plan) -> set[str]:
    names = set()
    for domain in plan.domains:
        for account in domain.accounts:
            names |= {f"{account.name}@{domain.name}", f"{account.name}%{domain.name}"}
            names |= {f"{alias}@{domain.name}" for alias in account.aliases}
    names |= {_witness(r.left).address for r in plan.routes if "access" in r.kinds}
    return names


def _account(routing: Routing) -> str | None:
    return routing.queue if routing.module == "LOCAL" else None


def logins(old: Plan, new: Plan, before: Router, after: Router) -> Iterator[Change]:
    for name in sorted(_logins(old) | _logins(new)):
        was = _account(before.route(name, "access"))
        now = _account(after.route(name, "access"))
        if was == now:
            continue
        if now is None:
            text = f"logins as `{name}` no longer reach an account (was `{was}`)"
        elif was is None:
            text = f"logins as `{name}` now reach account `{now}` (was none)"
        else:
            text = f"logins as `{name}` now reach account `{now}` (was `{was}`)"
        yield Change("behaviour", text)
