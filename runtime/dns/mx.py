"""Where an SMTP queue's mail goes: MX look-up (RFC 5321 §5.1, RFC 7505) with dnspython.

A domain's exchangers are tried in preference order (lower value first, equal
values shuffled); a domain without MX falls back to its own A/AAAA (then the domain
is its own exchanger, secure for DANE when the missing MX and its addresses are both
DNSSEC-validated, RFC 7672 §2.2.1); a null MX
(`0 .`) means the domain takes no mail. A relay host (a `._via` route) is looked
up by its addresses only, and an IP literal needs no look-up at all. A DNS answer
that says "no such domain" is permanent; a time-out or a server failure is
temporary and never turns into a bounce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.resolver

from mailplan.runtime.decide.address import ip_literal


@dataclass(frozen=True)
class Host:
    """One exchanger and its addresses, in the order to try them."""

    name: str
    addresses: tuple[str, ...]
    secure: bool = False  # came from a DNSSEC-validated MX answer (the AD bit)


class LookupFailed(Exception):
    """No destination: `status` says whether it is for good (5.x.x) or for now (4.x.x)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")


def resolver(nameserver: str | None, timeout: float = 10.0) -> dns.asyncresolver.Resolver:
    """The resolver to use: `IP[:PORT]` when given (tests, split DNS), else the system's."""
    if nameserver is None:
        chosen = dns.asyncresolver.Resolver()
    else:
        chosen = dns.asyncresolver.Resolver(configure=False)
        host, port = split_server(nameserver)
        chosen.nameservers = [host]
        chosen.port = port
    chosen.timeout = chosen.lifetime = timeout
    chosen.cache = dns.resolver.Cache()  # answers kept for their TTL
    chosen.flags = dns.flags.RD | dns.flags.AD  # ask for the AD bit (RFC 6840 §5.7): DANE
    return chosen


def split_server(text: str) -> tuple[str, int]:
    """`IP`, `IP:PORT`, `[IPv6]:PORT` or a bare IPv6 address → (ip, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


async def destinations(queue: str, domain: str, resolve: dns.asyncresolver.Resolver) -> list[Host]:
    """The hosts to try for the SMTP queue `queue` of mail to `domain`, best first.

    `queue` is the domain itself (MX look-up), an IP literal `[192.0.2.1]` (that
    address), or a relay host from a `._via` route (its addresses, no MX).
    """
    if (ip := ip_literal(queue)) is not None:
        return [Host(queue, (ip,))]
    if queue != domain:
        return [Host(queue, await addresses(queue, resolve, fail=True))]
    found, secure = await _exchanges(domain, resolve)
    if found is None:  # no MX: the domain's own addresses
        addressed, validated = await _addresses(domain, resolve, fail=True)
        return [Host(domain, addressed, secure and validated)]
    exchanges = found
    return [replace(host, secure=secure) for host in await _hosts(domain, exchanges, resolve)]


async def _exchanges(
    domain: str, resolve: dns.asyncresolver.Resolver
) -> tuple[list[dns.name.Name] | None, bool]:
    """The exchangers of `domain` in the order to try them (None when it has no MX), and
    whether the answer, or the denial that there is any, had the AD bit."""
    _valid(domain)
    try:
        answer = await resolve.resolve(domain, "MX")
    except dns.resolver.NoAnswer as nodata:
        return None, _denied(nodata)
    except dns.resolver.NXDOMAIN:
        raise LookupFailed("5.1.2", f"{domain}: no such domain") from None
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise LookupFailed("4.4.3", f"{domain}: DNS failure ({_why(exc)})") from None
    records = sorted(
        ((rdata.preference, random.random(), rdata.exchange) for rdata in answer),
        key=lambda record: record[:2],
    )
    if len(records) == 1 and records[0][2] == dns.name.root:
        raise LookupFailed("5.1.10", f"{domain} accepts no mail (null MX)")
    exchanges = [exchange for _, _, exchange in records if exchange != dns.name.root]
    return exchanges, _validated(answer.response)


async def _hosts(
    domain: str, exchanges: list[dns.name.Name], resolve: dns.asyncresolver.Resolver
) -> list[Host]:
    """The exchangers that have addresses; when none has, a temporary failure before a
    permanent one."""
    hosts = []
    trouble: LookupFailed | None = None
    for exchange in exchanges:
        name = exchange.to_text(omit_final_dot=True)
        try:
            hosts.append(Host(name, await addresses(name, resolve, fail=True)))
        except LookupFailed as failure:
            trouble = failure if not failure.permanent else trouble
    if hosts:
        return hosts
    if trouble is not None:
        raise trouble
    raise LookupFailed("5.4.4", f"{domain}: none of its exchangers has an address")


async def addresses(
    name: str, resolve: dns.asyncresolver.Resolver, *, fail: bool
) -> tuple[str, ...]:
    """The IPv4 then IPv6 addresses of `name`; with `fail`, none is an error."""
    found, _ = await _addresses(name, resolve, fail=fail)
    return found


async def _addresses(
    name: str, resolve: dns.asyncresolver.Resolver, *, fail: bool
) -> tuple[tuple[str, ...], bool]:
    """`addresses`, and whether both answers (records or none) had the AD bit."""
    _valid(name)
    found: list[str] = []
    temporary: str | None = None
    missing = 0
    validated = True
    for kind in ("A", "AAAA"):
        try:
            answer = await resolve.resolve(name, kind)
        except dns.resolver.NoAnswer as nodata:
            validated = validated and _denied(nodata)
            continue
        except dns.resolver.NXDOMAIN:
            missing += 1
            continue
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            temporary = _why(exc)
            continue
        validated = validated and _validated(answer.response)
        found.extend(rdata.address for rdata in answer)
    if found or not fail:
        return tuple(found), validated and bool(found) and not missing and temporary is None
    if temporary is not None:
        raise LookupFailed("4.4.3", f"{name}: DNS failure ({temporary})")
    if missing:
        raise LookupFailed("5.1.2", f"{name}: no such domain")
    raise LookupFailed("5.1.2", f"{name}: no address")


def _valid(name: str) -> None:
    """Refuse, for good, a name that DNS cannot even ask for (empty or overlong labels)."""
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as exc:  # empty or long labels, bad IDNA
        raise LookupFailed("5.1.2", f"{name}: not a valid domain name ({exc})") from None


def _validated(response: dns.message.Message) -> bool:
    """Whether a response carries the AD bit (whether to believe it is for `dns/secure.py`
    to say: `Host.secure` only records what the resolver claimed)."""
    return bool(response.flags & dns.flags.AD)


def _denied(nodata: dns.resolver.NoAnswer) -> bool:
    """Whether "no records of that type" came with the AD bit (a validated denial)."""
    response = nodata.kwargs.get("response")
    return isinstance(response, dns.message.Message) and _validated(response)


def _why(exc: Exception) -> str:
    return "time-out" if isinstance(exc, dns.exception.Timeout) else "server failure"
