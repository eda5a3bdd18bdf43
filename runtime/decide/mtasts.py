"""MTA-STS (RFC 8461), the pure part: the `_mta-sts` TXT record, the policy file, and
which MX host names a policy allows.

The fetch and the durable cache are `runtime/delivery/mtasts.py`; what a policy means
for a delivery is `runtime/decide/tlsneed.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Mode = Literal["enforce", "testing", "none"]
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: at most one year
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3: a policy larger than 64 KiB is not read
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_PATTERN = re.compile(r"(\*\.)?([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}\.?")


class Invalid(Exception):
    """A record or a policy that does not follow the RFC: the reason, for logs and reports."""


@dataclass(frozen=True)
class StsPolicy:
    """A policy as fetched: its mode, the MX patterns, how long it is good for, the id
    of the TXT record it came with and when it was fetched (seconds since the epoch)."""

    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    id: str
    fetched: float

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.max_age

    def text(self) -> str:
        """The policy as its lines (for TLS-RPT's `policy-string` and `mailplan tls`)."""
        lines = ["version: STSv1", f"mode: {self.mode}"]
        lines += [f"mx: {pattern}" for pattern in self.mx]
        lines.append(f"max_age: {self.max_age}")
        return "\n".join(lines)


def record_id(texts: list[str]) -> str:
    """The `id` of a domain's `_mta-sts` TXT records (each record's strings joined).

    Records that do not start with `v=STSv1` are ignored; none is Invalid("no ..."), and
    more than one is Invalid (RFC 8461 §3.1: then there is no policy)."""
    found = [text for text in texts if re.match(r"v=STSv1\s*(;|$)", text)]
    if not found:
        raise Invalid("no v=STSv1 record")
    if len(found) > 1:
        raise Invalid("more than one v=STSv1 record")
    fields = _fields(found[0], ";", "=")
    ident = fields.get("id", "")
    if not _ID.fullmatch(ident):
        raise Invalid(f"the record's id is not 1 to 32 letters and digits: {ident!r}")
    return ident


def parse(text: str, ident: str, fetched: float) -> StsPolicy:
    """A policy file (RFC 8461 §3.2): `key: value` lines, CRLF or LF; Invalid when it is not one."""
    fields: dict[str, str] = {}
    patterns: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise Invalid(f"a line that is not `key: value`: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            if not _PATTERN.fullmatch(value):
                raise Invalid(f"not an MX pattern: {value[:60]!r}")
            patterns.append(value.rstrip(".").lower())
        else:
            fields.setdefault(key, value)  # RFC 8461 §3.2: the first of a repeated key counts
    if fields.get("version") != "STSv1":
        raise Invalid("the policy's version is not STSv1")
    mode = fields.get("mode")
    if mode not in ("enforce", "testing", "none"):
        raise Invalid(f"the policy's mode is not enforce, testing or none: {mode!r}")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise Invalid(f"the policy's max_age is not a number of seconds: {age!r}")
    if mode != "none" and not patterns:
        raise Invalid("the policy names no mx")
    return StsPolicy(mode, tuple(patterns), min(int(age), MAX_AGE_LIMIT), ident, fetched)  # type: ignore[arg-type]


def allows(patterns: tuple[str, ...], host: str) -> bool:
    """Whether the MX host `host` matches one of the policy's patterns (RFC 8461 §4.1):
    `mail.example.com` itself, or `*.example.com` for exactly one label more."""
    host = host.rstrip(".").lower()
    for pattern in patterns:
        if pattern.startswith("*."):
            label, dot, rest = host.partition(".")
            if label and dot and rest == pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def _fields(text: str, separator: str, equals: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(separator):
        key, _, value = part.partition(equals)
        fields.setdefault(key.strip(), value.strip())
    return fields
