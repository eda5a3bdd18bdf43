"""DNS for the receiving checks: one small interface, two answerers.

`Dns` asks a real DNS server through dnspython (the system's, or `IP[:PORT]`);
`Zones` answers from zone-file texts held in memory, which is how `mailplan test`
cases bring their own DNS so that they need no network. Both answer a query with
the record data, an empty list when the name exists without records of that type,
`NoSuchDomain` for NXDOMAIN, and `DnsTrouble` for anything that may be better later
(time-out, server failure, refusal) — a check must turn that into a temporary
failure, never a permanent one.

pyspf does its own look-ups through a module function; `spf_answers` sends them to
either answerer, for one thread at a time. `Budget` puts a deadline on an answerer's
blocking look-ups, for checks that ask many names for one message.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.zone

from mailplan.runtime.dns import mx


class NoSuchDomain(Exception):
    """The name does not exist (NXDOMAIN)."""


class DnsTrouble(Exception):
    """No answer for now: a time-out, a server failure, a refusal."""


class Answerer(Protocol):
    async def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]: ...

    def query_blocking(
        self, name: str, rdtype: str, lifetime: float | None = None
    ) -> list[dns.rdata.Rdata]:
        """`lifetime`: wait at most that long (and never longer than the answerer's own
        time-out)."""
        ...


class Dns:
    """Answers from a DNS server (dnspython), with answers cached for their TTL."""

    def __init__(self, nameserver: str | None, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.resolver = mx.resolver(nameserver, timeout)
        self.blocking = dns.resolver.Resolver(configure=nameserver is None)
        self.blocking.nameservers = self.resolver.nameservers
        self.blocking.port = self.resolver.port
        self.blocking.timeout = self.blocking.lifetime = timeout
        self.blocking.cache = dns.resolver.Cache()

    async def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        try:
            return list(await self.resolver.resolve(name, rdtype))
        except dns.resolver.NoAnswer:
            return []
        except (dns.resolver.NXDOMAIN, dns.exception.SyntaxError, dns.name.NameTooLong):
            raise NoSuchDomain(name) from None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTrouble(f"{name} {rdtype}: {_why(exc)}") from None

    def query_blocking(
        self, name: str, rdtype: str, lifetime: float | None = None
    ) -> list[dns.rdata.Rdata]:
        wait = self.timeout if lifetime is None else min(lifetime, self.timeout)
        try:
            return list(self.blocking.resolve(name, rdtype, lifetime=wait))
        except dns.resolver.NoAnswer:
            return []
        except (dns.resolver.NXDOMAIN, dns.exception.SyntaxError, dns.name.NameTooLong):
            raise NoSuchDomain(name) from None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTrouble(f"{name} {rdtype}: {_why(exc)}") from None


# The most records a test case's zone may hold, counting each line and what every
# `$GENERATE` makes: dnspython would expand `$GENERATE 1-10000000` for minutes.
MAX_ZONE_RECORDS = 10_000
_GENERATE = re.compile(r"^[ \t]*\$GENERATE[ \t]+(\S+)", re.IGNORECASE | re.MULTILINE)
_RANGE = re.compile(r"([0-9]{1,10})-([0-9]{1,10})(?:/([0-9]{1,10}))?")


def zone_of(origin: str, records: str) -> str:
    """A whole zone file for `origin`: an SOA and NS on top of `records` (zone-file lines,
    names relative to the origin), as `mailplan test` cases write them.

    ValueError when the records are more than MAX_ZONE_RECORDS."""
    if _records(records) > MAX_ZONE_RECORDS:
        raise ValueError(f"more than {MAX_ZONE_RECORDS} records ($GENERATE ranges counted)")
    origin = origin.rstrip(".") + "."
    return (
        f"$ORIGIN {origin}\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n"
        f"@ IN NS ns\n{records}\n"
    )


def _records(text: str) -> int:
    """How many records zone-file lines make at most: a line one, a `$GENERATE` its range."""
    count = text.count("\n") + 1
    for written in _GENERATE.findall(text):
        span = _RANGE.fullmatch(written)
        if span is None:  # too many digits is too many records; dnspython refuses the rest
            count += MAX_ZONE_RECORDS if written[:1].isdigit() else 0
            continue
        start, stop, step = int(span[1]), int(span[2]), int(span[3] or 1)
        count += (stop - start) // max(step, 1) + 1 if stop >= start else 0
    return count


class Zones:
    """Answers from zone-file texts (origin → text); a name in none of them does not exist."""

    def __init__(self, texts: Mapping[str, str]) -> None:
        self.zones = [
            dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
            for origin, text in texts.items()
        ]

    async def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        return self.query_blocking(name, rdtype)

    def query_blocking(
        self, name: str, rdtype: str, lifetime: float | None = None
    ) -> list[dns.rdata.Rdata]:
        wanted = dns.name.from_text(name)
        for zone in self.zones:
            if zone.origin is None or not wanted.is_subdomain(zone.origin):
                continue
            node = zone.get_node(wanted)
            if node is None:
                if any(n.is_subdomain(wanted) for n in zone.nodes):
                    return []  # an empty non-terminal exists
                raise NoSuchDomain(name)
            found = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
            return list(found) if found is not None else []
        raise NoSuchDomain(name)


class Budget:
    """An answerer's blocking look-ups within `seconds` from now, all together: each waits
    at most what is left, and once it is spent every look-up is `DnsTrouble` at once. A
    message whose eight signatures, ARC chain, DMARC record and SPF each find a silent
    name server then waits the budget, not the sum of their time-outs."""

    def __init__(self, answerer: Answerer, seconds: float) -> None:
        self.answerer = answerer
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    async def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        return await self.answerer.query(name, rdtype)

    def query_blocking(
        self, name: str, rdtype: str, lifetime: float | None = None
    ) -> list[dns.rdata.Rdata]:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise DnsTrouble(f"{name} {rdtype}: the {self.seconds:g} s for DNS are spent")
        wait = left if lifetime is None else min(left, lifetime)
        return self.answerer.query_blocking(name, rdtype, lifetime=wait)


_asking = threading.local()  # the answerer pyspf's look-ups go to, in this thread


@contextmanager
def spf_answers(answerer: Answerer) -> Iterator[None]:
    """Within this block, in this thread, pyspf asks `answerer` (other threads and other
    users of pyspf are left alone: they keep its own dnspython look-ups)."""
    _install()
    _asking.answerer = answerer
    try:
        yield
    finally:
        _asking.answerer = None


def _install() -> None:
    import spf

    if getattr(spf.DNSLookup, "mailplan", False):
        return
    own = spf.DNSLookup

    def lookup(name: str, qtype: str, *rest: Any, **options: Any) -> list[Any]:
        answerer = getattr(_asking, "answerer", None)
        if answerer is None:
            return own(name, qtype, *rest, **options)  # type: ignore[no-any-return]
        return _answer(answerer, name, qtype)

    lookup.mailplan = True  # type: ignore[attr-defined]
    spf.DNSLookup = lookup


def _answer(answerer: Answerer, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
    """An answer in the shape pyspf's `DNSLookup` gives."""
    import spf

    try:
        records = answerer.query_blocking(name, qtype)
    except NoSuchDomain:
        return []
    except DnsTrouble as trouble:
        raise spf.TempError(f"DNS {trouble}") from None
    found: list[tuple[tuple[str, str], Any]] = []
    for rdata in records:
        value: Any
        if qtype in ("A", "AAAA"):
            value = rdata.address  # type: ignore[attr-defined]
        elif qtype == "MX":
            value = (rdata.preference, rdata.exchange)  # type: ignore[attr-defined]
        elif qtype == "PTR":
            value = rdata.target.to_text(True)  # type: ignore[attr-defined]
        else:  # TXT, SPF
            value = rdata.strings  # type: ignore[attr-defined]
        found.append(((name, qtype), value))
    return found


def _why(exc: Exception) -> str:
    return "time-out" if isinstance(exc, dns.exception.Timeout) else "server failure"
