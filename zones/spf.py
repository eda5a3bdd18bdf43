"""SPF: the record a domain publishes, built from the plan, and the look-ups it costs.

The record authorises the server's own addresses (`server.addresses`), the domain's
MX hosts (`mx`), the site's `spf.ip4`/`spf.ip6` and `spf.include`, then ends with the
site's policy. A domain that sends no mail publishes `v=spf1 -all`.
"""

from __future__ import annotations

import ipaddress

from mailplan.plan.model import Domain, Plan

# RFC 7208 §4.6.4: these terms cost a DNS look-up each; at most 10 per evaluation.
LOOKUP_TERMS = ("include:", "a:", "a/", "mx:", "mx/", "ptr:", "exists:", "redirect=")
MAX_LOOKUPS = 10
# RFC 7208 §3.4: a record that fits in a 512-octet UDP answer.
MAX_LENGTH = 450


def terms(plan: Plan, domain: Domain) -> tuple[str, ...]:
    """The mechanisms and modifiers of `domain`'s SPF record, without `v=spf1`."""
    if not domain.sends_mail:
        return ("-all",)
    found: list[str] = ["mx"]
    ip4 = [a for a in plan.server.addresses if ":" not in a] + list(domain.spf.ip4)
    ip6 = [a for a in plan.server.addresses if ":" in a] + list(domain.spf.ip6)
    found += [f"ip4:{a}" for a in ip4]
    found += [f"ip6:{a}" for a in ip6]
    found += [f"include:{name}" for name in domain.spf.include]
    found.append(domain.spf.policy)
    return tuple(dict.fromkeys(found))


def record(plan: Plan, domain: Domain) -> str:
    return " ".join(("v=spf1", *terms(plan, domain)))


def lookups(spf_terms: tuple[str, ...]) -> list[str]:
    """The terms of a record that each cost a DNS look-up (nested includes not counted)."""
    return [
        term
        for term in spf_terms
        if term.lstrip("+-~?") in ("a", "mx", "ptr") or term.lstrip("+-~?").startswith(LOOKUP_TERMS)
    ]


def authorised(plan: Plan, domain: Domain) -> tuple[str, ...]:
    """One address for each thing the record authorises that the plan knows the address of:
    the server's addresses, each MX host's, and the first address of each `ip4`/`ip6` network."""
    if not domain.sends_mail:
        return ()
    found = list(plan.server.addresses)
    mx = domain.dns.mx if domain.dns else domain.mx
    for host in mx:
        found += [*host.ipv4, *host.ipv6]
    for network in (*domain.spf.ip4, *domain.spf.ip6):
        found.append(str(ipaddress.ip_network(network, strict=False).network_address))
    return tuple(dict.fromkeys(found))
