"""What a destination domain requires of outbound TLS: the look-ups behind
`runtime.decide.tlsneed` (TLSA records through a validating resolver, the MTA-STS
policy through `runtime.delivery.mtasts`), for delivery and for `mailplan tls`.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import dns.asyncresolver

from mailplan.plan.model import OutboundTls
from mailplan.runtime.decide import tlsneed
from mailplan.runtime.decide.tlsneed import Lookup, Need, TlsFacts
from mailplan.runtime.delivery import mtasts
from mailplan.runtime.dns import mx, secure


def trust(ca_file: Path | None) -> ssl.SSLContext:
    """The context that verifies certificates: the system's CA store, and `ca_file`.

    OSError or ssl.SSLError when the CA file cannot be read."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class Policies:
    """Finds what each destination domain needs, as the site's `outbound.tls` says."""

    def __init__(
        self,
        settings: OutboundTls,
        required: tuple[str, ...],
        resolve: dns.asyncresolver.Resolver,
        fetcher: mtasts.Fetcher | None,
    ) -> None:
        self.settings = settings
        self.required = required
        self.resolve = resolve
        self.fetcher = fetcher

    async def need(self, domain: str, hosts: list[mx.Host]) -> Need:
        return tlsneed.need(await self.facts(domain, hosts))

    async def facts(self, domain: str, hosts: list[mx.Host]) -> TlsFacts:
        dane, tlsa = await self._dane(hosts)
        found = mtasts.Found(None, "off (outbound.tls.mta_sts)")
        if self.settings.mta_sts and self.fetcher is not None:
            found = await self.fetcher.policy(domain)
        return TlsFacts(
            domain, domain in self.required, dane, tlsa, found.policy, found.note, found.failure
        )

    async def _dane(self, hosts: list[mx.Host]) -> tuple[str, dict[str, Lookup]]:
        if not self.settings.dane:
            return "off (outbound.tls.dane)", {}
        if not secure.validating(self.resolve, self.settings.trusted_resolver):
            return "not used: the resolver is not on loopback (outbound.tls.trusted_resolver)", {}
        if not hosts or not all(host.secure for host in hosts):
            return "not used: the MX records are not DNSSEC-validated", {}
        found = await asyncio.gather(*(self._tlsa(host.name) for host in hosts))
        return "secure", {host.name: lookup for host, lookup in zip(hosts, found, strict=True)}

    async def _tlsa(self, host: str) -> Lookup:
        try:
            records, validated = await secure.tlsa(host, self.resolve)
        except secure.Trouble as trouble:
            return Lookup(failure=str(trouble))
        return Lookup(records if validated else ())
