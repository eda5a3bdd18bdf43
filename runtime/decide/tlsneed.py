"""What TLS outbound delivery requires for a domain, and why: pure, from the facts the
look-ups found (runtime/delivery/tlspolicy.py gathers them).

The levels, strongest first:

- `dane`: the domain's MX records are DNSSEC-secure and an MX host has secure TLSA
  records (RFC 7672): each such host must present a chain that matches them. DANE wins
  over MTA-STS (RFC 8461 §2).
- `mta-sts`: the domain publishes an MTA-STS policy in `enforce` mode (RFC 8461): only
  MX hosts matching the policy, each with a certificate valid for its name.
- `required`: the site lists the domain in `outbound.require_tls`: a certificate valid
  for the MX host's name (the system's CA store, and `outbound.tls.ca_file`).
- `mta-sts-testing`: a policy in `testing` mode: delivered as opportunistic, and what
  enforce would have refused is logged and reported (TLS-RPT).
- `opportunistic`: STARTTLS when offered, the certificate unchecked, clear text when
  TLS fails (RFC 7435).

Each host of a delivery then gets a `HostCheck`: how to handshake with it, or why it
is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from mailplan.runtime.decide import dane, mtasts

Level = Literal["opportunistic", "mta-sts-testing", "required", "mta-sts", "dane"]
Check = Literal["opportunistic", "pkix", "pkix-testing", "dane", "encrypt", "skip"]
PolicyType = Literal["tlsa", "sts", "no-policy-found"]


@dataclass(frozen=True)
class Lookup:
    """The TLSA records of one MX host: found (secure), none, or a failed look-up."""

    records: tuple[dane.Tlsa, ...] = ()
    failure: str = ""


@dataclass(frozen=True)
class TlsFacts:
    """What is known about a destination domain's TLS policies."""

    domain: str
    required: bool = False  # listed in outbound.require_tls
    dane: str = "off"  # "off" (by the site), or why not: "insecure ...", or "secure"
    tlsa: Mapping[str, Lookup] = field(default_factory=dict)  # MX host -> its TLSA
    sts: mtasts.StsPolicy | None = None
    sts_note: str = "off"  # why there is no policy (or where it came from)
    sts_failure: str = ""  # the TLS-RPT result type of a policy fetch that failed


@dataclass(frozen=True)
class Need:
    """A domain's requirement: the level, the reason in words, and for TLS-RPT the
    policy's type, text and MX patterns."""

    domain: str
    level: Level
    reason: str
    policy_type: PolicyType = "no-policy-found"
    policy_strings: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()
    tlsa: Mapping[str, Lookup] = field(default_factory=dict)
    required: bool = False
    failure: str = ""  # a policy fetch that failed, for TLS-RPT (RFC 8460 §4.3.2.2)

    @property
    def strict(self) -> bool:
        """Whether a failure defers rather than falls back."""
        return self.level in ("dane", "mta-sts", "required")


@dataclass(frozen=True)
class HostCheck:
    """How to treat one MX host: the check, the TLSA records for `dane`, or why it is skipped."""

    check: Check
    records: tuple[dane.Tlsa, ...] = ()
    reason: str = ""


def plain(domain: str, required: bool = False) -> Need:
    """No policy looked up: a relay host, an IP literal (or a test)."""
    if required:
        return Need(domain, "required", f"{domain} is in outbound.require_tls", required=True)
    return Need(domain, "opportunistic", "no policy: STARTTLS when offered, unverified")


def need(facts: TlsFacts) -> Need:
    """The requirement for a domain, from what the look-ups found."""
    domain = facts.domain
    with_records = {host: found for host, found in facts.tlsa.items() if found.records}
    failed = any(found.failure for found in facts.tlsa.values())
    if facts.dane == "secure" and (with_records or failed):  # a failed look-up: that host waits
        hosts = ", ".join(sorted(with_records))
        strings = tuple(
            f"{_tlsa_name(host)} TLSA {record}"
            for host, found in sorted(with_records.items())
            for record in found.records
        )
        return Need(
            domain,
            "dane",
            f"DANE: the MX records are DNSSEC-signed and {hosts or 'a host'} publish(es) TLSA "
            "records (or their look-up failed)",
            "tlsa",
            strings,
            (),
            facts.tlsa,
            facts.required,
        )
    policy = facts.sts
    needed = _sts(facts) if policy is not None and policy.mode in ("enforce", "testing") else None
    if needed is None and facts.required:
        needed = plain(domain, True)
    if needed is None:
        why = [f"DANE {facts.dane}", f"MTA-STS {facts.sts_note}"]
        needed = Need(
            domain, "opportunistic", f"no policy ({'; '.join(why)}): STARTTLS when offered"
        )
    if facts.sts_failure:  # reported under the MTA-STS policy type (RFC 8460 §4.4)
        return replace(needed, policy_type="sts", failure=facts.sts_failure)
    return needed


def _sts(facts: TlsFacts) -> Need:
    """The requirement of a domain's MTA-STS policy in enforce or testing mode."""
    domain, policy = facts.domain, facts.sts
    assert policy is not None
    level: Level = "mta-sts" if policy.mode == "enforce" else "mta-sts-testing"
    if level == "mta-sts-testing" and facts.required:
        level = "required"
    return Need(
        domain,
        level,
        f"MTA-STS policy id {policy.id} in {policy.mode} mode ({facts.sts_note}), "
        f"mx {' '.join(policy.mx)}",
        "sts",
        tuple(policy.text().split("\n")),
        policy.mx,
        {},
        facts.required,
    )


def host_check(needed: Need, host: str) -> HostCheck:
    """How to handshake with MX host `host` of a domain that needs `needed`."""
    if needed.level == "dane":
        found = needed.tlsa.get(host, Lookup())
        if found.failure:
            return HostCheck("skip", reason=f"TLSA look-up failed: {found.failure}")
        if found.records and dane.usable(found.records):
            return HostCheck("dane", dane.usable(found.records))
        if found.records:  # TLSA records, none usable: encrypted, unauthenticated (§2.2)
            return HostCheck("encrypt")
        return HostCheck("pkix" if needed.required else "opportunistic")
    if needed.level == "mta-sts":
        if not mtasts.allows(needed.mx_patterns, host):
            return HostCheck("skip", reason="not an MX host the MTA-STS policy allows")
        return HostCheck("pkix")
    if needed.level == "required":
        return HostCheck("pkix")
    if needed.level == "mta-sts-testing":
        if not mtasts.allows(needed.mx_patterns, host):
            return HostCheck("pkix-testing", reason="not an MX host the MTA-STS policy allows")
        return HostCheck("pkix-testing")
    return HostCheck("opportunistic")


def _tlsa_name(host: str) -> str:
    return f"_25._tcp.{host}"
