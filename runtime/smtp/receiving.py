"""Receiving checks at MAIL FROM: DNSBL, Return-Path verification, SPF, reverse connect.

Each check has a CommuniGate scope (everybody, clients only, everybody except
clients, nobody; a session that logged in counts as a client) and, where it makes
sense, an action: refuse, or only add a header. They run in this order, cheapest
first, and the first refusal ends the round:

1. **DNSBL**: the client's IP in the site's zones (IPv4 and IPv6 forms); listed
   zones add their weights, and a total at the threshold refuses (`554 5.7.1`,
   with the zones' TXT reasons). A zone that does not answer counts as not listing.
2. **Return-Path verification**: an address the router knows (local, or routed
   by the table) needs no look-up; an address that routes to an error is refused;
   otherwise the domain needs MX records, or A/AAAA without them (`550 5.1.8`),
   and a null MX means it sends no mail (`550 5.7.27`, RFC 7505).
3. **SPF** (pyspf) on the client IP, HELO and MAIL FROM: a `Received-SPF` header
   always, and a refusal on `fail` (`550 5.7.23`, RFC 7372; `softfail` too where
   the site says so); `temperror` is `451 4.7.24`.
4. **Reverse connect**: the sender domain's MX is asked whether it takes the
   sender's address (`MAIL FROM:<>`, `RCPT TO`, `QUIT`, never DATA); answers are
   cached for the site's time; a refusal is `550 5.1.8`.

A DNS time-out or failure never refuses for good: it gives `451 4.4.3`.

At the end of DATA, `authentication.py` verifies DKIM, ARC and DMARC (`self.authentication`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib

from mailplan.plan.model import Plan, Scope
from mailplan.runtime.base import metrics
from mailplan.runtime.base.threads import checking
from mailplan.runtime.decide.policy import Client, in_scope
from mailplan.runtime.decide.router import Router
from mailplan.runtime.dns import mx
from mailplan.runtime.dns.lookup import Answerer, Dns, DnsTrouble, NoSuchDomain, spf_answers
from mailplan.runtime.smtp.authentication import Authentication

log = logging.getLogger("mailplan.checks")

CACHE_SIZE = 100_000  # reverse-connect answers kept at most


@dataclass(frozen=True)
class Verdict:
    """One check's outcome: a refusal (`reply`) or a header for the message, or neither."""

    check: str
    result: str
    reply: str | None = None
    header: str | None = None


@dataclass
class CallbackCache:
    """Reverse-connect answers by address, kept for the site's time (across reloads)."""

    entries: dict[str, tuple[float, Verdict]] = field(default_factory=dict)

    def get(self, address: str, now: float) -> Verdict | None:
        found = self.entries.get(address.lower())
        if found is None or found[0] < now:
            return None
        return found[1]

    def put(self, address: str, verdict: Verdict, until: float) -> None:
        if len(self.entries) >= CACHE_SIZE:  # forget what has expired, then the oldest
            now = time.time()
            self.entries = {a: e for a, e in self.entries.items() if e[0] >= now}
            while len(self.entries) >= CACHE_SIZE:
                del self.entries[next(iter(self.entries))]
        self.entries[address.lower()] = (until, verdict)


def _listing(answer: str) -> bool:
    """Whether a DNSBL's A answer lists the IP: 127.0.0.0/8, except 127.255.255.0/24, which
    zones use to say the query itself was refused (an open resolver, a quota)."""
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        return False
    return address in _LISTED and address not in _ZONE_ERRORS


_LISTED = ipaddress.ip_network("127.0.0.0/8")
_ZONE_ERRORS = ipaddress.ip_network("127.255.255.0/24")


def printable(text: str, limit: int = 200) -> str:
    """Text from DNS made safe for an SMTP reply: one line of printable ASCII, short."""
    cleaned = "".join(c if " " <= c <= "~" else " " for c in text)
    return " ".join(cleaned.split())[:limit]


def reverse_name(ip: str) -> str:
    """The DNSBL form of an IP: reversed octets, or reversed nibbles for IPv6."""
    pointer = ipaddress.ip_address(ip).reverse_pointer
    return pointer.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")


class Checks:
    """The receiving checks of one plan; the answerer and the cache outlive reloads."""

    def __init__(
        self,
        plan: Plan,
        router: Router,
        answerer: Answerer,
        cache: CallbackCache | None = None,
        smtp_port: int = 25,
    ) -> None:
        self.plan = plan
        self.router = router
        self.answerer = answerer
        self.cache = cache or CallbackCache()
        self.smtp_port = smtp_port
        self.hostname = plan.server.hostname
        self.authentication = Authentication(plan, answerer)  # DKIM, ARC, DMARC at DATA

    def applies(self, scope: Scope, client: Client) -> bool:
        return in_scope(scope, client.trusted or client.authenticated is not None)

    async def at_mail(self, client: Client, helo: str, sender: str) -> list[Verdict]:
        """Every check due for this MAIL FROM; the last verdict may carry a refusal."""
        receiving = self.plan.receiving
        verdicts: list[Verdict] = []
        rounds: tuple[tuple[Scope, Callable[[], Awaitable[Verdict]]], ...] = (
            (receiving.rbl.scope, lambda: self.rbl(client.ip)),
            (receiving.return_path.scope, lambda: self.return_path(sender)),
            (receiving.spf.scope, lambda: self.spf(client.ip, helo, sender)),
            (receiving.reverse_connect.scope, lambda: self.reverse_connect(sender)),
        )
        for scope, check in rounds:
            if not self.applies(scope, client):
                continue
            verdict = await check()
            verdicts.append(verdict)
            metrics.meters().checks.labels(
                check=verdict.check,
                result=verdict.result.partition(" ")[0],
                action="refused" if verdict.reply else "passed",
            ).inc()
            if verdict.reply:
                log.info(
                    "%s <%s> refused by %s: %s", client.ip, sender, verdict.check, verdict.reply
                )
                break
        return verdicts

    # -- DNSBL -----------------------------------------------------------------------

    async def rbl(self, ip: str) -> Verdict:
        check = self.plan.receiving.rbl
        if not check.zones:
            return Verdict("rbl", "none")
        name = reverse_name(ip)
        answers = await asyncio.gather(
            *(self._listed(f"{name}.{zone.zone}") for zone in check.zones)
        )
        listed = [(zone, why) for zone, why in zip(check.zones, answers, strict=True) if why]
        score = sum(zone.weight for zone, _ in listed)
        if not listed:
            return Verdict("rbl", "pass")
        reasons = "; ".join(f"{zone.zone}: {why}" for zone, why in listed)
        if score < check.threshold:
            return Verdict("rbl", f"listed {score}/{check.threshold}", header=None)
        reply = f"550 5.7.1 Service unavailable; client [{ip}] blocked using {reasons}"
        return Verdict("rbl", "listed", reply=reply)

    async def _listed(self, name: str) -> str | None:
        """Why a zone lists `name` (its TXT, or its A answer), or None when it does not."""
        try:
            found = await self.answerer.query(name, "A")
        except (NoSuchDomain, DnsTrouble):
            return None
        codes = [str(rdata) for rdata in found if _listing(str(rdata))]
        if len(codes) < len(found):
            log.warning("%s: answers that are no listing: %s", name, ", ".join(map(str, found)))
        if not codes:
            return None
        try:
            texts = await self.answerer.query(name, "TXT")
        except (NoSuchDomain, DnsTrouble):
            texts = []
        said = " ".join(
            b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
            for rdata in texts
        )
        return printable(said) or f"listed ({', '.join(sorted(codes))})"

    # -- Return-Path -----------------------------------------------------------------

    async def return_path(self, sender: str) -> Verdict:
        if not sender:
            return Verdict("return-path", "null")
        routing = self.router.route(sender)
        if routing.module == "ERROR":
            reason = routing.reason or "the address does not exist"
            return self._refuse_sender(f"550 5.1.8 <{sender}>: sender address rejected: {reason}")
        if routing.module != "SMTP" or any(step.source for step in routing.steps):
            return Verdict("return-path", "known")
        domain = sender.rpartition("@")[2]
        try:
            exchangers = await self.answerer.query(domain, "MX")
            if exchangers and all(str(r.exchange) == "." for r in exchangers):  # type: ignore[attr-defined]
                reply = (
                    f"550 5.7.27 <{sender}>: the sender's domain {domain} sends no mail (null MX)"
                )
                return self._refuse_sender(reply)
            if not exchangers:
                addresses = [*await self.answerer.query(domain, "A")]
                if not addresses:
                    addresses = [*await self.answerer.query(domain, "AAAA")]
                if not addresses:
                    reply = (
                        f"550 5.1.8 <{sender}>: the sender's domain {domain} has no mail exchanger"
                    )
                    return self._refuse_sender(reply)
        except NoSuchDomain:
            return self._refuse_sender(
                f"550 5.1.8 <{sender}>: the sender's domain {domain} does not exist"
            )
        except DnsTrouble as trouble:
            reply = f"451 4.4.3 <{sender}>: cannot verify the sender's domain now ({trouble})"
            return Verdict("return-path", "temperror", reply=reply)
        return Verdict("return-path", "pass")

    def _refuse_sender(self, reply: str) -> Verdict:
        if self.plan.receiving.return_path.action == "header":
            return Verdict(
                "return-path", "fail", header=f"X-Return-Path-Check: fail ({reply[10:]})"
            )
        return Verdict("return-path", "fail", reply=reply)

    # -- SPF -------------------------------------------------------------------------

    async def spf(self, ip: str, helo: str, sender: str) -> Verdict:
        return await checking(self.spf_blocking, ip, helo, sender)

    def spf_blocking(self, ip: str, helo: str, sender: str) -> Verdict:
        import spf

        query = spf.query(i=ip, s=sender or f"postmaster@{helo}", h=helo or "unknown", timeout=20)
        with spf_answers(self.answerer):
            result, _, explanation = query.check()
        header = "Received-SPF: " + query.get_header(result, self.hostname)
        action = self.plan.receiving.spf.action
        refused = result == "fail" or (result == "softfail" and action == "reject-softfail")
        if refused and action != "header":
            about = sender or helo
            reply = f"550 5.7.23 <{about}>: SPF {result}: {printable(explanation)}"
            return Verdict("spf", result, reply=reply)
        if result == "temperror" and action != "header":
            reply = f"451 4.7.24 SPF temporary error: {printable(explanation)}"
            return Verdict("spf", result, reply=reply)
        return Verdict("spf", result, header=header)

    # -- reverse connect -----------------------------------------------------------------

    async def reverse_connect(self, sender: str) -> Verdict:
        if not sender:
            return Verdict("reverse-connect", "null")
        routing = self.router.route(sender)
        if routing.module != "SMTP" or any(step.source for step in routing.steps):
            return Verdict("reverse-connect", "known")
        now = time.time()
        cached = self.cache.get(sender, now)
        if cached is not None:
            return cached
        if not isinstance(self.answerer, Dns):
            return Verdict("reverse-connect", "unchecked")  # `mailplan test` has no network
        verdict = await self._call_back(sender)
        if verdict.result in ("pass", "fail"):
            self.cache.put(sender, verdict, now + self.plan.receiving.reverse_connect.cache)
        return verdict

    async def _call_back(self, sender: str) -> Verdict:
        assert isinstance(self.answerer, Dns)
        domain = sender.rpartition("@")[2]
        timeout = self.plan.receiving.reverse_connect.timeout
        try:
            hosts = await mx.destinations(domain, domain, self.answerer.resolver)
        except mx.LookupFailed as failure:
            if failure.permanent:
                return self._callback_refusal(sender, failure.reason)
            reply = f"451 4.4.3 <{sender}>: cannot verify the sender now ({failure.reason})"
            return Verdict("reverse-connect", "temperror", reply=reply)
        last = "no mail exchanger answered"
        for host in hosts:
            for address in host.addresses:
                client = aiosmtplib.SMTP(
                    hostname=address,
                    port=self.smtp_port,
                    local_hostname=self.hostname,
                    timeout=timeout,
                    start_tls=False,
                )
                try:
                    await client.connect()
                    await client.ehlo()
                    await client.mail("")
                    answer = await client.execute_command(f"RCPT TO:<{sender}>".encode())
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError) as exc:
                    client.close()
                    last = f"{host.name}[{address}]: {exc}"
                    continue
                said = f"{answer.code} {' '.join(answer.message.split())}"
                if answer.code < 300:
                    return Verdict("reverse-connect", "pass")
                if answer.code >= 500:
                    return self._callback_refusal(sender, f"{host.name} said {said}")
                last = f"{host.name} said {said}"
        reply = f"451 4.4.1 <{sender}>: cannot verify the sender now ({last})"
        return Verdict("reverse-connect", "temperror", reply=reply)

    def _callback_refusal(self, sender: str, why: str) -> Verdict:
        reply = f"550 5.1.8 <{sender}>: sender address rejected: {why}"
        if self.plan.receiving.reverse_connect.action == "header":
            return Verdict("reverse-connect", "fail", header=f"X-Reverse-Connect: fail ({why})")
        return Verdict("reverse-connect", "fail", reply=reply)
