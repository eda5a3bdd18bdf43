"""Changes in the DNS records `mailplan dns` would publish (zones.records, pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from mailplan.diff.change import Change
from mailplan.plan.model import Plan
from mailplan.zones.records import Record, zones

# Records whose deletion or change breaks receiving or authenticating mail.
GUARDED = ("MX", "SPF", "DKIM", "DMARC")
LONG = 100  # longer values are shortened

Key = tuple[str, str, str]  # (owner as an absolute name, type, kind)


def kind(record: Record) -> str:
    """MX, SPF, DKIM, DMARC, or the record's type."""
    value = record.value if isinstance(record.value, str) else ""
    if record.type == "TXT" and value.startswith("v=spf1"):
        return "SPF"
    if record.type == "TXT" and "._domainkey" in f".{record.name}":
        return "DKIM"
    if record.type == "TXT" and record.name.startswith("_dmarc"):
        return "DMARC"
    return record.type


def published(plan: Plan) -> dict[Key, set[str]]:
    """Each owner, type and kind, with the values published there."""
    found: dict[Key, set[str]] = {}
    for zone in zones(plan):
        for record in zone.records:
            owner = zone.name if record.name == "@" else f"{record.name}.{zone.name}"
            key = (owner, record.type, kind(record))
            found.setdefault(key, set()).add(f"{record.ttl} {record.rdata()}")
    return found


def dns(old: Plan, new: Plan) -> Iterator[Change]:
    before, after = published(old), published(new)
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key, set()), after.get(key, set())
        if was == now:
            continue
        owner, rtype, what = key
        unsafe = f"deletes or changes {what} records" if what in GUARDED and was else None
        name = f"{owner} {rtype}" + (f" ({what})" if what != rtype else "")
        if was and now:
            yield Change("dns", f"{name} changed: {_shown(was)} -> {_shown(now)}", unsafe)
        elif now:
            yield Change("dns", f"{name} added: {_shown(now)}")
        else:
            yield Change("dns", f"{name} removed: {_shown(was)}", unsafe)


def _shown(values: set[str]) -> str:
    return " | ".join(_short(value) for value in sorted(values))


def _short(value: str) -> str:
    """A long value (a DKIM key) as its start and a fingerprint, so two keys still differ."""
    if len(value) <= LONG:
        return value
    fingerprint = hashlib.sha256(value.encode()).hexdigest()[:12]
    return f"{value[: LONG - 30]}... (sha256 {fingerprint})"
