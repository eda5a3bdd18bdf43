"""Records: the DNS records a plan needs, zone by zone, as plain values (pure, no I/O).

Every domain and every domain alias is a zone. A zone gets MX (or a null MX), SPF,
DKIM, DMARC, MTA-STS and TLS-RPT records and the RFC 6186 SRV records, and the A/AAAA
records of every mail host (MX hosts and the server's hostname) whose name falls in
it. docs/dns.md says why each record is there and which site keys make it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Literal

from mailplan.plan.model import Domain, Listener, Plan
from mailplan.zones import spf

RecordType = Literal["A", "AAAA", "MX", "TXT", "SRV"]


@dataclass(frozen=True)
class Mx:
    priority: int
    host: str  # absolute, with the final dot; "." is the null MX (RFC 7505)


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str  # absolute; "." says the service is not offered (RFC 6186 §3.4)


@dataclass(frozen=True)
class Record:
    """One resource record: owner relative to the zone (`@` is the apex) and its value."""

    name: str
    type: RecordType
    ttl: int
    value: str | Mx | Srv
    why: str

    def rdata(self) -> str:
        """The value in zone-file form (TXT as quoted strings of at most 255 octets)."""
        if isinstance(self.value, Mx):
            return f"{self.value.priority} {self.value.host}"
        if isinstance(self.value, Srv):
            v = self.value
            return f"{v.priority} {v.weight} {v.port} {v.target}"
        if self.type == "TXT":
            return " ".join(f'"{_escape(chunk)}"' for chunk in txt_strings(self.value))
        return self.value


@dataclass(frozen=True)
class Zone:
    name: str
    domain: str  # the site domain this zone receives mail for (itself or the one it aliases)
    records: tuple[Record, ...]
    mta_sts_policy: str | None  # served at https://mta-sts.NAME/.well-known/mta-sts.txt


# RFC 6186 and RFC 8314: the SRV services mail clients look for, in the order printed.
SERVICES = ("submissions", "submission", "imaps", "imap", "pop3s", "pop3")
_BASE = {
    "smtps": "submission",
    "submission": "submission",
    "imaps": "imap",
    "imap": "imap",
    "pop3s": "pop3",
    "pop3": "pop3",
}


def service(listener: Listener) -> str | None:
    """The SRV service a listener offers: chosen by its TLS mode as well as its protocol
    (a pop3 listener with implicit TLS is `pop3s`); None for server-to-server SMTP."""
    base = _BASE.get(listener.protocol)
    if base is None:
        return None
    return f"{base}s" if listener.tls == "implicit" else base


def reachable(listener: Listener) -> bool:
    """Whether clients elsewhere can reach the listener: not bound to loopback only."""
    return not all(ipaddress.ip_address(address).is_loopback for address in listener.bind)


def txt_strings(text: str) -> list[str]:
    """A TXT value cut into character-strings of at most 255 octets (RFC 1035 §3.3.14)."""
    data = text.encode()
    return [data[i : i + 255].decode() for i in range(0, len(data), 255)] or [""]


def zones(plan: Plan) -> tuple[Zone, ...]:
    """Every zone of the site, sorted by name."""
    found = []
    for domain in plan.domains:
        for name in (domain.name, *domain.aliases):
            found.append(_zone(plan, domain, name))
    hosts = _hosts(plan)
    names = [zone.name for zone in found]
    placed: dict[str, list[Record]] = {}
    for host, addresses in hosts.items():
        home = _owner_zone(host, names)
        if home is None:
            continue
        owner = "@" if host == home else host[: -len(home) - 1]
        ttl = next(z for z in found if z.name == home).records[0].ttl
        for address in addresses:
            kind: RecordType = "AAAA" if ":" in address else "A"
            placed.setdefault(home, []).append(
                Record(owner, kind, ttl, address, f"address of mail host {host}")
            )
    reports: dict[str, list[Record]] = {}
    for zone in found:
        for receiver, record in _report_authorisations(plan, zone, names):
            reports.setdefault(receiver, []).append(record)
    result = []
    for zone in found:
        mx = tuple(r for r in zone.records if r.type == "MX")
        rest = tuple(r for r in zone.records if r.type != "MX")
        records = (*mx, *placed.get(zone.name, ()), *rest, *reports.get(zone.name, ()))
        result.append(Zone(zone.name, zone.domain, records, zone.mta_sts_policy))
    return tuple(sorted(result, key=lambda z: z.name))


def _zone(plan: Plan, domain: Domain, name: str) -> Zone:
    dns = domain.dns
    assert dns is not None, "compiler.resolve_dns fills Domain.dns"
    ttl = dns.ttl
    records: list[Record] = []

    def add(owner: str, kind: RecordType, value: str | Mx | Srv, why: str) -> None:
        records.append(Record(owner, kind, ttl, value, why))

    if not domain.sends_mail:
        add("@", "MX", Mx(0, "."), "null MX: this domain takes no mail (RFC 7505)")
        add("@", "TXT", "v=spf1 -all", "SPF: this domain sends no mail")
        add("*._domainkey", "TXT", "v=DKIM1; p=", "DKIM: no key is valid for this domain")
        add("_dmarc", "TXT", _dmarc_text(domain), "DMARC: reject all mail from this domain")
        return Zone(name, domain.name, tuple(records), None)
    for host in sorted(dns.mx, key=lambda h: (h.priority, h.host)):
        add("@", "MX", Mx(host.priority, host.host + "."), f"MX of {domain.name}")
    add("@", "TXT", spf.record(plan, domain), "SPF: who may send mail from this domain")
    for key in dns.dkim:
        text = f"v=DKIM1; k={key.algorithm}; p={key.public_key}"
        add(f"{key.selector}._domainkey", "TXT", text, f"DKIM public key from {key.file}")
    add("_dmarc", "TXT", _dmarc_text(domain), "DMARC policy")
    policy = None
    if dns.mta_sts is not None:
        policy = _mta_sts_policy(domain)
        ident = hashlib.sha256(policy.encode()).hexdigest()[:20]
        add("_mta-sts", "TXT", f"v=STSv1; id={ident}", "MTA-STS: the policy's id")
    if dns.tls_rpt is not None:
        text = f"v=TLSRPTv1; rua={','.join(dns.tls_rpt.rua)}"
        add("_smtp._tls", "TXT", text, "TLS-RPT: where TLS failure reports go")
    for offered in SERVICES:
        listeners = [x for x in plan.listeners if service(x) == offered and reachable(x)]
        for rank, listener in enumerate(listeners):
            target = Srv(rank, 1, listener.port, plan.server.hostname + ".")
            add(f"_{offered}._tcp", "SRV", target, f"{offered} for mail clients (RFC 6186)")
        if not listeners:
            add(f"_{offered}._tcp", "SRV", Srv(0, 0, 0, "."), f"{offered} is not offered")
    return Zone(name, domain.name, tuple(records), policy)


def _dmarc_text(domain: Domain) -> str:
    assert domain.dns is not None
    dmarc = domain.dns.dmarc
    tags = [f"v=DMARC1; p={dmarc.policy}"]
    if dmarc.subdomain_policy is not None:
        tags.append(f"sp={dmarc.subdomain_policy}")
    if dmarc.rua:
        tags.append(f"rua={','.join(dmarc.rua)}")
    if dmarc.ruf:
        tags.append(f"ruf={','.join(dmarc.ruf)}")
    if dmarc.adkim != "r":
        tags.append(f"adkim={dmarc.adkim}")
    if dmarc.aspf != "r":
        tags.append(f"aspf={dmarc.aspf}")
    if dmarc.percent != 100:
        tags.append(f"pct={dmarc.percent}")
    return "; ".join(tags)


def _mta_sts_policy(domain: Domain) -> str:
    """The policy file (RFC 8461 §3.2): its mx lines are the domain's MX hosts."""
    assert domain.dns is not None and domain.dns.mta_sts is not None
    lines = ["version: STSv1", f"mode: {domain.dns.mta_sts.mode}"]
    lines += [f"mx: {host}" for host in dict.fromkeys(h.host for h in domain.dns.mx)]
    lines.append(f"max_age: {domain.dns.mta_sts.max_age}")
    return "\n".join(lines) + "\n"


def _report_authorisations(plan: Plan, zone: Zone, names: list[str]) -> list[tuple[str, Record]]:
    """RFC 7489 §7.1: a zone of the site that receives another's DMARC reports says it will.

    Each (receiving zone, `NAME._report._dmarc` record) the zone's report addresses need.
    """
    domain = next(d for d in plan.domains if d.name == zone.domain)
    if domain.dns is None or not domain.sends_mail:
        return []
    found = []
    dmarc = domain.dns.dmarc
    for uri in dict.fromkeys((*dmarc.rua, *dmarc.ruf)):
        receiver = uri.rsplit("@", 1)[-1].split("!", 1)[0].lower()  # `!10m`: a size limit
        if receiver != zone.name and receiver in names:
            why = f"DMARC: {receiver} takes the reports of {zone.name}"
            owner = f"{zone.name}._report._dmarc"
            found.append((receiver, Record(owner, "TXT", domain.dns.ttl, "v=DMARC1", why)))
    return found


def _hosts(plan: Plan) -> dict[str, tuple[str, ...]]:
    """Every mail host the site names with the addresses it gives for it."""
    found: dict[str, list[str]] = {}
    if plan.server.addresses:
        found[plan.server.hostname] = list(plan.server.addresses)
    for domain in plan.domains:
        for host in domain.dns.mx if domain.dns and domain.sends_mail else ():
            found.setdefault(host.host, []).extend((*host.ipv4, *host.ipv6))
    return {host: tuple(dict.fromkeys(a)) for host, a in sorted(found.items()) if a}


def _owner_zone(host: str, zones: list[str]) -> str | None:
    """The zone a host name belongs to: the longest zone name it ends with."""
    inside = [z for z in zones if host == z or host.endswith("." + z)]
    return max(inside, key=len) if inside else None


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
