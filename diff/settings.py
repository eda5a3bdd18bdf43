"""Changes in what site.yaml declares: domains, accounts, forwarders, lists, listeners,
relaying and receiving scopes, limits and pipes (pure)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mailplan.diff.change import Change
from mailplan.plan.model import Account, Domain, Listener, MailingList, Plan, Scope

# Whom a scope covers: (trusted clients, everybody else), as `decide.policy.in_scope` says.
COVERS: dict[Scope, frozenset[bool]] = {
    "everybody": frozenset({True, False}),
    "clients-only": frozenset({True}),
    "everybody-except-clients": frozenset({False}),
    "nobody": frozenset(),
}
AUTH_STRENGTH = {"none": 0, "optional": 1, "required": 2}


def settings(old: Plan, new: Plan) -> list[Change]:
    return [
        *domains(old, new),
        *accounts(old, new),
        *forwarders(old, new),
        *lists(old, new),
        *listeners(old, new),
        *scopes(old, new),
        *limits(old, new),
        *pipes(old, new),
    ]


def _keyed(old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """(key, old value or None, new value or None) for every key of either, sorted."""
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before != after:
            yield key, before, after


def domains(old: Plan, new: Plan) -> Iterator[Change]:
    before = {d.name: d for d in old.domains}
    after = {d.name: d for d in new.domains}
    for name, was, now in _keyed(before, after):
        if now is None:
            yield Change("domains", f"domain {name} removed", "removes a domain")
        elif was is None:
            yield Change("domains", f"domain {name} added")
        else:
            yield from _domain(name, was, now)


def _domain(name: str, was: Domain, now: Domain) -> Iterator[Change]:
    for alias in sorted(set(was.aliases) - set(now.aliases)):
        yield Change("domains", f"alias {alias} of {name} removed", "removes a domain")
    for alias in sorted(set(now.aliases) - set(was.aliases)):
        yield Change("domains", f"alias {alias} of {name} added")
    unknown = (was.unknown.action, was.unknown.target), (now.unknown.action, now.unknown.target)
    if unknown[0] != unknown[1]:
        shown = [" ".join(filter(None, u)) for u in unknown]
        yield Change("domains", f"unknown names of {name}: {shown[0]} -> {shown[1]}")


def _accounts(plan: Plan) -> dict[str, Account]:
    return {f"{a.name}@{d.name}": a for d in plan.domains for a in d.accounts}


def accounts(old: Plan, new: Plan) -> Iterator[Change]:
    for address, was, now in _keyed(_accounts(old), _accounts(new)):
        if now is None:
            yield Change("accounts", f"account {address} removed", "removes an account")
        elif was is None:
            yield Change("accounts", f"account {address} added")
        else:
            yield from _account(address, was, now)


def _account(address: str, was: Account, now: Account) -> Iterator[Change]:
    if was.password != now.password:
        state = "removed" if now.password is None else "changed"
        yield Change("accounts", f"account {address}: password {state}")
    for alias in sorted(set(was.aliases) - set(now.aliases)):
        yield Change("accounts", f"account {address}: alias {alias} removed")
    for alias in sorted(set(now.aliases) - set(was.aliases)):
        yield Change("accounts", f"account {address}: alias {alias} added")
    if was.folders != now.folders:
        yield Change(
            "accounts", f"account {address}: folders {_list(was.folders)} -> {_list(now.folders)}"
        )


def _list(items: tuple[str, ...]) -> str:
    return ", ".join(items) or "none"


def forwarders(old: Plan, new: Plan) -> Iterator[Change]:
    def table(plan: Plan) -> dict[str, str]:
        return {f"{f.name}@{d.name}": f.target for d in plan.domains for f in d.forwarders}

    for address, was, now in _keyed(table(old), table(new)):
        if now is None:
            yield Change("forwarders", f"forwarder {address} -> {was} removed")
        elif was is None:
            yield Change("forwarders", f"forwarder {address} -> {now} added")
        else:
            yield Change("forwarders", f"forwarder {address}: {was} -> {now}")


def lists(old: Plan, new: Plan) -> Iterator[Change]:
    def table(plan: Plan) -> dict[str, MailingList]:
        return {f"{m.name}@{d.name}": m for d in plan.domains for m in d.lists}

    for address, was, now in _keyed(table(old), table(new)):
        if now is None:
            yield Change("lists", f"list {address} removed")
        elif was is None:
            yield Change("lists", f"list {address} added ({len(now.members)} members)")
        else:
            yield from _mailing_list(address, was, now)


def _mailing_list(address: str, was: MailingList, now: MailingList) -> Iterator[Change]:
    if was.owner != now.owner:
        yield Change("lists", f"list {address}: owner {was.owner} -> {now.owner}")
    if was.posting != now.posting:
        yield Change("lists", f"list {address}: posting {was.posting} -> {now.posting}")
    before = {m.address for m in was.members}
    after = {m.address for m in now.members}
    for member in sorted(before - after):
        yield Change("lists", f"list {address}: member {member} removed")
    for member in sorted(after - before):
        yield Change("lists", f"list {address}: member {member} added")


def listeners(old: Plan, new: Plan) -> Iterator[Change]:
    before = {entry.name: entry for entry in old.listeners}
    after = {entry.name: entry for entry in new.listeners}
    for name, was, now in _keyed(before, after):
        if now is None:
            yield Change("listeners", f"listener {name} (port {was.port}) removed")
        elif was is None:
            yield Change(
                "listeners",
                f"listener {name} added: {now.protocol} port {now.port}, "
                f"tls {now.tls}, auth {now.auth}",
            )
        else:
            yield from _listener(name, was, now)


def _listener(name: str, was: Listener, now: Listener) -> Iterator[Change]:
    for field in ("protocol", "port", "bind", "plaintext_auth"):
        a, b = getattr(was, field), getattr(now, field)
        if a != b:
            shown = [_value(v) for v in (a, b)]
            yield Change("listeners", f"listener {name}: {field} {shown[0]} -> {shown[1]}")
    if was.tls != now.tls:
        dropped = now.tls == "none"
        yield Change(
            "listeners",
            f"listener {name}: tls {was.tls} -> {now.tls}",
            "drops TLS from a listener" if dropped else None,
        )
    if was.auth != now.auth:
        weaker = AUTH_STRENGTH[now.auth] < AUTH_STRENGTH[was.auth]
        yield Change(
            "listeners",
            f"listener {name}: auth {was.auth} -> {now.auth}",
            "drops AUTH from a listener" if weaker else None,
        )


def scopes(old: Plan, new: Plan) -> Iterator[Change]:
    was, now = old.relaying, new.relaying
    if was.scope != now.scope:
        wider = not COVERS[now.scope] <= COVERS[was.scope]
        yield Change(
            "scopes",
            f"relaying scope: {was.scope} -> {now.scope}",
            "widens who may relay" if wider else None,
        )
    if was.authenticated != now.authenticated:
        yield Change(
            "scopes",
            f"relaying for authenticated clients: {_yes(was.authenticated)} -> "
            f"{_yes(now.authenticated)}",
            "widens who may relay" if now.authenticated else None,
        )
    yield from _receiving(old, new)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return _yes(value)
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _receiving(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = old.receiving, new.receiving
    checks: list[tuple[str, Scope, Scope]] = [
        ("return_path", a.return_path.scope, b.return_path.scope),
        ("reverse_connect", a.reverse_connect.scope, b.reverse_connect.scope),
        ("spf", a.spf.scope, b.spf.scope),
        ("rbl", a.rbl.scope, b.rbl.scope),
        ("blacklisted_ips", a.blacklisted_ips, b.blacklisted_ips),
        ("dkim", a.dkim.scope, b.dkim.scope),
        ("dmarc", a.dmarc.scope, b.dmarc.scope),
    ]
    for name, was, now in checks:
        if was != now:
            lower = not COVERS[was] <= COVERS[now]
            yield Change(
                "scopes",
                f"receiving check {name} scope: {was} -> {now}",
                "lowers a receiving check's scope" if lower else None,
            )
    for name in ("return_path", "reverse_connect", "spf", "rbl", "dmarc", "arc"):
        was_check, now_check = getattr(a, name), getattr(b, name)
        for field in ("action", "threshold", "zones", "cache", "timeout", "seal"):
            x, y = getattr(was_check, field, None), getattr(now_check, field, None)
            if x != y:
                yield Change(
                    "scopes", f"receiving check {name} {field}: {_shown(x)} -> {_shown(y)}"
                )


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(f"{z.zone}={z.weight}" for z in value) or "none"
    return str(value)


def limits(old: Plan, new: Plan) -> Iterator[Change]:
    for section in ("limits", "queue"):
        was, now = getattr(old, section), getattr(new, section)
        for field in was.__dataclass_fields__:
            x, y = getattr(was, field), getattr(now, field)
            if x != y:
                shown = [", ".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in (x, y)]
                yield Change("limits", f"{section}.{field}: {shown[0]} -> {shown[1]}")


def pipes(old: Plan, new: Plan) -> Iterator[Change]:
    def table(plan: Plan) -> dict[str, str]:
        return {
            p.name: " ".join((p.program, *p.args)) + f" (timeout {p.timeout}s)" for p in plan.pipes
        }

    for name, was, now in _keyed(table(old), table(new)):
        if now is None:
            yield Change("pipes", f"pipe {name} removed")
        elif was is None:
            yield Change("pipes", f"pipe {name} added: {now}")
        else:
            yield Change("pipes", f"pipe {name}: {was} -> {now}")
