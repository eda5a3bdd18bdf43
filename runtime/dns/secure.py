"""DNS for outbound TLS policies: TXT records (`_mta-sts`, `_smtp._tls`) and TLSA records
with whether the resolver validated them (the AD bit).

The AD bit is only as good as the path to the resolver that set it: it is believed
when every nameserver the resolver asks is on loopback (a validating resolver on this
host, as Postfix requires for DANE), or when the site says its resolver is trusted
(`outbound.tls.trusted_resolver`).
"""

from __future__ import annotations

import ipaddress

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver

from mailplan.runtime.decide.dane import Tlsa


class Trouble(Exception):
    """A look-up that failed for now (time-out, server failure): the reason."""


def validating(resolve: dns.asyncresolver.Resolver, trusted: bool) -> bool:
    """Whether the AD bit of `resolve`'s answers may be believed."""
    if trusted:
        return True
    for server in resolve.nameservers:
        try:
            if not ipaddress.ip_address(str(server)).is_loopback:
                return False
        except ValueError:  # a DoH/DoT URL: not on this host
            return False
    return bool(resolve.nameservers)


async def txt(name: str, resolve: dns.asyncresolver.Resolver) -> list[str]:
    """The TXT records of `name`, each one's strings joined; [] when there are none."""
    try:
        answer = await resolve.resolve(name, "TXT")
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise Trouble(f"{name} TXT: {_why(exc)}") from None
    except dns.exception.DNSException as exc:
        raise Trouble(f"{name} TXT: {exc}") from None
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


async def tlsa(host: str, resolve: dns.asyncresolver.Resolver) -> tuple[tuple[Tlsa, ...], bool]:
    """The TLSA records of MX host `host` for port 25, and whether the answer (or the
    denial that there are any) had the AD bit."""
    name = f"_25._tcp.{host.rstrip('.')}"
    try:
        answer = await resolve.resolve(name, "TLSA")
    except dns.resolver.NXDOMAIN as denial:
        return (), any(bool(r.flags & dns.flags.AD) for r in denial.responses().values())  # type: ignore[no-untyped-call]
    except dns.resolver.NoAnswer as denial:
        return (), bool(denial.response().flags & dns.flags.AD)  # type: ignore[no-untyped-call]
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise Trouble(f"{name} TLSA: {_why(exc)}") from None
    except dns.exception.DNSException as exc:
        raise Trouble(f"{name} TLSA: {exc}") from None
    records = tuple(
        Tlsa(rdata.usage, rdata.selector, rdata.mtype, rdata.cert)
        for rdata in answer
        if rdata.rdtype == dns.rdatatype.TLSA
    )
    return records, bool(answer.response.flags & dns.flags.AD)


def _why(exc: Exception) -> str:
    return "time-out" if isinstance(exc, dns.exception.Timeout) else "server failure"
