"""DNS check: what the site publishes in DNS can work: SPF within its look-up limit and
size, one key per DKIM selector, no mail records on a domain that takes no mail.

SPF is judged on the record `zones.spf` builds, the one `mailplan dns` prints; look-ups
inside included records need DNS and are counted by `mailplan dns check`.
"""

from __future__ import annotations

import ipaddress

from mailplan.compiler.diagnostics import Diagnostic, error, warning
from mailplan.plan.model import Domain, Plan, Source
from mailplan.runtime.decide.router import Router
from mailplan.zones import spf


def check_dns(plan: Plan, router: Router) -> list[Diagnostic]:
    problems: list[Diagnostic] = []
    for domain in plan.domains:
        if domain.dns is None:
            continue
        problems += _spf(plan, domain, domain.dns.spf_source)
        seen: dict[str, Source] = {}
        for key in domain.dns.dkim:
            if key.selector in seen:
                message = (
                    f"DKIM selector {key.selector} of {domain.name} is given twice "
                    f"(line {seen[key.selector].line}): one key per selector"
                )
                problems.append(_error(key.source, "MP504", message))
            seen.setdefault(key.selector, key.source)
        if not domain.sends_mail:
            problems += _no_mail(domain) + _takes_mail(domain)
    return problems


def _takes_mail(domain: Domain) -> list[Diagnostic]:
    """A domain with `sends_mail: false` publishes a null MX: it must not receive mail."""
    implied = ("postmaster", None, ())  # the main domain's, when the site names none
    kinds = {
        "accounts": [a for a in domain.accounts if (a.name, a.password, a.aliases) != implied],
        "forwarders": domain.forwarders,
        "lists": domain.lists,
        "mx hosts": domain.mx,
        "domain aliases": domain.aliases,
    }
    has = [name for name, things in kinds.items() if things]
    if not has:
        return []
    message = (
        f"{domain.name} has sends_mail: false, which publishes a null MX (RFC 7505: the "
        f"domain takes no mail), but it has {', '.join(has)}: every sender would bounce "
        "their mail; remove sends_mail: false, or those"
    )
    return [_error(domain.source, "MP507", message)]


def _spf(plan: Plan, domain: Domain, source: Source) -> list[Diagnostic]:
    bad = [
        f"spf.{key} of {domain.name}: {value!r} is not an IPv{version} address or network"
        for key, version, values in (("ip4", 4, domain.spf.ip4), ("ip6", 6, domain.spf.ip6))
        for value in values
        if not _network(value, version)
    ]
    if bad:  # the record would be broken, or authorise what it should not
        return [_error(source, "MP508", message) for message in bad]
    terms = spf.terms(plan, domain)
    costly = spf.lookups(terms)
    problems = []
    if len(costly) > spf.MAX_LOOKUPS:
        message = (
            f"the SPF record of {domain.name} needs {len(costly)} DNS look-ups, more than the "
            f"{spf.MAX_LOOKUPS} that RFC 7208 §4.6.4 allows (receivers then reject it as "
            f"permerror): {', '.join(costly)}; replace includes by ip4:/ip6: networks"
        )
        problems.append(_error(source, "MP501", message))
    text = spf.record(plan, domain)
    if len(text) > spf.MAX_LENGTH:
        message = (
            f"the SPF record of {domain.name} is {len(text)} characters, more than the "
            f"{spf.MAX_LENGTH} that fit a DNS answer over UDP (RFC 7208 §3.4)"
        )
        problems.append(_warning(source, "MP505", message))
    return problems


def _no_mail(domain: Domain) -> list[Diagnostic]:
    assert domain.dns is not None
    ignored = [(k.source, "dkim") for k in domain.dns.dkim[:1]]
    if domain.dns.mta_sts is not None:
        ignored.append((domain.dns.mta_sts.source, "mta_sts"))
    if domain.dns.tls_rpt is not None:
        ignored.append((domain.dns.tls_rpt.source, "tls_rpt"))
    return [
        _warning(
            where,
            "MP506",
            f"{key} of {domain.name} is not published: the domain sends no mail "
            "(sends_mail: false publishes a null MX, v=spf1 -all and DMARC p=reject)",
        )
        for where, key in ignored
    ]


def _network(value: str, version: int) -> bool:
    try:
        return ipaddress.ip_network(value, strict=False).version == version
    except ValueError:
        return False


def _error(source: Source, code: str, message: str) -> Diagnostic:
    return error(source.file, source.line, source.column, code, message)


def _warning(source: Source, code: str, message: str) -> Diagnostic:
    return warning(source.file, source.line, source.column, code, message)
