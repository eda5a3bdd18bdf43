"""Changes in the server's own settings: names, addresses, TLS files, outbound TLS (the
domains that require it, and which policies of other domains are honoured), what
account rules may do, and the networks of the Client IPs and the blacklisted IPs."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from mailplan.diff.change import Change
from mailplan.diff.settings import COVERS
from mailplan.plan.model import AddressList, Interval, Plan

Ranges = list[tuple[int, int]]


def server(old: Plan, new: Plan) -> Iterator[Change]:
    for label, was, now in _fields(old, new):
        if was != now:
            yield Change("server", f"{label}: {_shown(was)} -> {_shown(now)}")
    yield from _outbound_tls(old, new)
    yield from _networks(old, new)


# outbound.tls settings whose turning off weakens what is enforced on mail that leaves
_WEAKER = {
    "mta_sts": "MTA-STS policies of other domains are no longer enforced",
    "dane": "DANE TLSA records of other domains are no longer enforced",
    "trusted_resolver": "",
}


def _outbound_tls(old: Plan, new: Plan) -> Iterator[Change]:
    a, b = old.outbound.tls, new.outbound.tls
    for key in ("mta_sts", "dane", "reports", "ca_file", "trusted_resolver"):
        was, now = getattr(a, key), getattr(b, key)
        if was != now:
            why = _WEAKER.get(key) if was is True and now is False else None
            yield Change(
                "server", f"outbound tls {key}: {_shown(was)} -> {_shown(now)}", why or None
            )


def _fields(old: Plan, new: Plan) -> list[tuple[str, object, object]]:
    a, b = old.server, new.server
    return [
        ("hostname", a.hostname, b.hostname),
        ("main domain", a.main_domain, b.main_domain),
        ("addresses", a.addresses, b.addresses),
        ("user", a.user, b.user),
        ("group", a.group, b.group),
        ("tls certificate", old.tls.certificate, new.tls.certificate),
        ("tls key", old.tls.key, new.tls.key),
        ("outbound require_tls", old.outbound.require_tls, new.outbound.require_tls),
        ("account rules may", old.account_rules.actions, new.account_rules.actions),
        ("admin listener", _admin(old), _admin(new)),
    ]


def _admin(plan: Plan) -> str | None:
    return None if plan.admin is None else f"{plan.admin.bind} port {plan.admin.port}"


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def _networks(old: Plan, new: Plan) -> Iterator[Change]:
    clients = _list(old, old.server.client_ips), _list(new, new.server.client_ips)
    relays = True in COVERS[new.relaying.scope]
    for network in minus(clients[1], clients[0]):
        why = "widens who may relay" if relays else None
        yield Change("server", f"client IPs: {network} added", why)
    for network in minus(clients[0], clients[1]):
        yield Change("server", f"client IPs: {network} removed")
    blacklisted = _list(old, old.server.blacklisted_ips), _list(new, new.server.blacklisted_ips)
    for network in minus(blacklisted[1], blacklisted[0]):
        yield Change("server", f"blacklisted IPs: {network} added")
    for network in minus(blacklisted[0], blacklisted[1]):
        yield Change("server", f"blacklisted IPs: {network} removed")


def _list(plan: Plan, name: str) -> AddressList | None:
    return next((c for c in plan.address_lists if c.name == name), None)


def _ranges(intervals: tuple[Interval, ...]) -> Ranges:
    return [
        (int(ipaddress.ip_address(i.first)), int(ipaddress.ip_address(i.last))) for i in intervals
    ]


def minus(a: AddressList | None, b: AddressList | None) -> list[str]:
    """The networks (CIDR) in `a` and not in `b`."""
    found: list[str] = []
    families = (("ipv4", ipaddress.IPv4Address), ("ipv6", ipaddress.IPv6Address))
    for family, address in families:
        mine = _ranges(getattr(a, family)) if a else []
        theirs = _ranges(getattr(b, family)) if b else []
        for first, last in _subtract(mine, theirs):
            networks = ipaddress.summarize_address_range(address(first), address(last))
            found += [str(n) for n in networks]
    return found


def _subtract(mine: Ranges, theirs: Ranges) -> Ranges:
    """The parts of the sorted, disjoint ranges `mine` that no range of `theirs` covers."""
    left: Ranges = []
    for first, last in mine:
        start = first
        for low, high in theirs:
            if high < start or low > last:
                continue
            if low > start:
                left.append((start, low - 1))
            start = high + 1
        if start <= last:
            left.append((start, last))
    return left
