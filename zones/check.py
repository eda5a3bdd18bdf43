"""Check: ask DNS for every record the plan needs and say which are present, missing or
different. The only module of `zones` that does network I/O.

Records are compared by value, per owner and type. TXT records are compared with the
published TXT of their kind (`v=spf1`, `v=DMARC1`, ...), so unrelated TXT records at a
name do not matter. SPF is judged by what it authorises: pyspf evaluates the published
record through the same DNS server for the addresses the plan says may send (each must
`pass`) and for one that may not (it must get the site's policy), and counts the DNS
look-ups of the whole include tree (RFC 7208 §4.6.4).
"""

from __future__ import annotations

import ipaddress
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import spf as pyspf

from mailplan.plan.model import Domain, Plan
from mailplan.zones import spf
from mailplan.zones.records import Mx, Record, Srv, Zone

Status = Literal["present", "missing", "different"]
STATUSES: tuple[Status, ...] = ("present", "missing", "different")
# What each SPF policy gives an address that nothing in the record authorises.
STRANGER_RESULT = {"-all": "fail", "~all": "softfail", "?all": "neutral"}
STRANGERS = ("198.51.100.254", "203.0.113.254", "192.0.2.254", "2001:db8:ffff::fe")
TXT_KINDS = ("v=spf1", "v=DKIM1", "v=DMARC1", "v=STSv1", "v=TLSRPTv1")
TAG_KINDS = TXT_KINDS[1:]  # tag=value lists; SPF is judged by what it authorises


@dataclass(frozen=True)
class Finding:
    status: Status
    name: str  # absolute owner name
    type: str
    expected: str
    found: tuple[str, ...]
    note: str = ""

    def line(self) -> str:
        text = f"{self.status:<10} {self.type:<5} {self.name}  {self.expected}"
        if self.status == "different":
            text += f"  (found: {' | '.join(self.found) or 'nothing'})"
        return text + (f"  [{self.note}]" if self.note else "")


def resolver_for(address: str | None, timeout: float = 5.0) -> dns.resolver.Resolver:
    """A resolver asking `IP`, `IP:PORT` or `[IPv6]:PORT`; the system's when None."""
    if address is None:
        try:
            return dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise ValueError(
                "no system resolver is configured: give --resolver IP[:PORT]"
            ) from None
    host, port = address, 53
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else -1
    elif address.count(":") == 1:
        host, _, number = address.partition(":")
        port = int(number) if number.isdigit() else -1
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--resolver {address}: not IP[:PORT]") from None
    if not 0 < port < 65536:
        raise ValueError(f"--resolver {address}: not IP[:PORT]")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.timeout = resolver.lifetime = timeout
    return resolver


def check(plan: Plan, zones: tuple[Zone, ...], resolver: dns.resolver.Resolver) -> list[Finding]:
    """One finding per record the zones need (SPF judged by what it authorises)."""
    domains = {d.name: d for d in plan.domains}
    findings: list[Finding] = []
    for zone in zones:
        groups: dict[tuple[str, str, str], list[Record]] = {}
        for record in zone.records:
            owner = zone.name if record.name == "@" else f"{record.name}.{zone.name}"
            groups.setdefault((owner, record.type, _kind(record)), []).append(record)
        for (owner, kind, txt_kind), records in groups.items():
            found, why = _ask(resolver, owner, kind)
            if kind == "TXT":
                found = tuple(t for t in found if _txt_kind(t) == txt_kind)
            if txt_kind == "v=spf1" and found:
                findings.append(_spf(plan, domains[zone.domain], owner, found, resolver))
            else:
                findings += _compare(owner, kind, records, found, why)
    return findings


def _compare(
    owner: str, kind: str, records: list[Record], found: tuple[str, ...], why: str
) -> list[Finding]:
    expected = [_value(r) for r in records]
    key = _tags if kind == "TXT" else str

    def among(value: str, values: Iterable[str]) -> bool:
        return any(key(value) == key(other) for other in values)

    unmatched = [v for v in expected if not among(v, found)]
    extra = tuple(v for v in found if not among(v, expected))
    findings = []
    for value in expected:
        if among(value, found):
            findings.append(Finding("present", owner, kind, value, found))
        elif not found:
            findings.append(Finding("missing", owner, kind, value, (), why))
        else:
            findings.append(Finding("different", owner, kind, value, extra or found))
    if extra and not unmatched:
        findings.append(
            Finding("different", owner, kind, "no other records", extra, "not in the plan")
        )
    return findings


def _spf(
    plan: Plan,
    domain: Domain,
    owner: str,
    found: tuple[str, ...],
    resolver: dns.resolver.Resolver,
) -> Finding:
    expected = spf.record(plan, domain)
    if len(found) > 1:
        return Finding("different", owner, "TXT", expected, found, "two SPF records: permerror")
    wrong = []
    lookups = 0
    want = {a: "pass" for a in spf.authorised(plan, domain)}
    outsider = _outsider(plan, domain)
    if outsider is not None:
        want[outsider] = STRANGER_RESULT[domain.spf.policy] if domain.sends_mail else "fail"
    with _default_resolver(resolver):
        for address, result in want.items():
            query = pyspf.query(i=address, s=f"postmaster@{owner}", h=plan.server.hostname)
            got, _, explanation = query.check()
            lookups = max(lookups, query.lookups)
            if got != result:
                detail = f": {explanation}" if got in ("permerror", "temperror") else ""
                wrong.append(f"{address} {got}{detail} (should {result})")
    note = f"{lookups} DNS look-up{'' if lookups == 1 else 's'}" if not wrong else "; ".join(wrong)
    judged = ", ".join(f"{a} {r}" for a, r in want.items())
    if wrong:
        return Finding("different", owner, "TXT", expected, found, note)
    return Finding("present", owner, "TXT", expected, found, f"{judged}; {note}")


def _outsider(plan: Plan, domain: Domain) -> str | None:
    """An address that nothing the plan puts in the record authorises."""
    inside = [
        ipaddress.ip_network(a, strict=False)
        for a in (*spf.authorised(plan, domain), *domain.spf.ip4, *domain.spf.ip6)
    ]
    return next(
        (a for a in STRANGERS if not any(ipaddress.ip_address(a) in net for net in inside)), None
    )


@contextmanager
def _default_resolver(resolver: dns.resolver.Resolver) -> Iterator[None]:
    """pyspf asks dnspython's default resolver (through its deprecated `query`)."""
    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="spf")
            yield
    finally:
        dns.resolver.default_resolver = saved


def _ask(resolver: dns.resolver.Resolver, owner: str, kind: str) -> tuple[tuple[str, ...], str]:
    """The values published at `owner` (normalised as `_value` writes them), and why none."""
    try:
        answer = resolver.resolve(owner, kind, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return (), "no such name"
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        return (), f"no answer: {exc}"
    if answer.rrset is None:
        return (), f"no {kind} record"
    values = []
    for rdata in answer.rrset:
        if kind == "TXT":
            values.append(b"".join(rdata.strings).decode(errors="replace"))
        elif kind in ("A", "AAAA"):
            values.append(str(ipaddress.ip_address(rdata.address)))
        else:
            values.append(rdata.to_text().lower())
    return tuple(sorted(values)), ""  # servers rotate the order of a record set


def _value(record: Record) -> str:
    value = record.value
    if isinstance(value, Mx | Srv):
        return record.rdata().lower()
    if record.type in ("A", "AAAA"):
        return str(ipaddress.ip_address(value))
    return value


def _tags(text: str) -> str | frozenset[tuple[str, str]]:
    """A tag-value TXT record (DKIM, DMARC, MTA-STS, TLS-RPT) as its tags, so that the
    order of tags and the spaces around them do not count, nor the spaces inside a
    value (a DKIM key is often published split by spaces); SPF and other TXT records
    compare as they are."""
    if _txt_kind(text) not in TAG_KINDS:
        return text
    tags = [part.partition("=") for part in text.split(";") if part.strip()]
    return frozenset((name.strip(), "".join(value.split())) for name, _, value in tags)


def _kind(record: Record) -> str:
    return _txt_kind(record.value) if record.type == "TXT" and isinstance(record.value, str) else ""


def _txt_kind(text: str) -> str:
    first = text.split(";", 1)[0].split(" ", 1)[0].strip()
    return next((kind for kind in TXT_KINDS if first.lower() == kind.lower()), first)
