"""MTA-STS (RFC 8461), the I/O: the `_mta-sts` TXT look-up, the HTTPS fetch of the policy
and the durable cache in the queue folder (`QUEUE/mta-sts.json`).

A policy is fetched only when the record's `id` changed or the cached policy's
`max_age` ran out; a cached policy that is still fresh keeps applying when the record
disappears or the fetch fails (RFC 8461 §5.1), which is what stops an attacker who can
block the fetch. The fetch is httpx over verified TLS (the system's CA store and the
site's `outbound.tls.ca_file`), to `mta-sts.DOMAIN`'s addresses as the server's own
resolver gives them, with a strict time-out, no redirects, and at most 64 KiB read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dns.asyncresolver
import httpx

from mailplan.runtime.decide import mtasts
from mailplan.runtime.dns import mx, secure
from mailplan.runtime.store import durable

log = logging.getLogger("mailplan.mta-sts")
logging.getLogger("httpx").setLevel(logging.WARNING)  # our own line says what was fetched

FETCH_TIMEOUT = 10.0
FILE = "mta-sts.json"


class Cache:
    """The policies fetched, by domain, kept in a file that survives restarts (with
    `keep` false, read from the file and never written: `mailplan tls`)."""

    def __init__(self, directory: Path, keep: bool = True) -> None:
        self.path = directory / FILE
        self.keep = keep
        self._lock = threading.Lock()
        self.policies: dict[str, mtasts.StsPolicy] = {}
        try:
            data = json.loads(self.path.read_text())
            for domain, fields in data.items():
                fields["mx"] = tuple(fields["mx"])
                self.policies[domain] = mtasts.StsPolicy(**fields)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning(
                "%s: cannot read the MTA-STS policy cache, starting afresh: %s", self.path, exc
            )

    def get(self, domain: str) -> mtasts.StsPolicy | None:
        return self.policies.get(domain)

    def put(self, domain: str, policy: mtasts.StsPolicy) -> None:
        """Keep `policy` for `domain`, durably (blocking: fsync)."""
        with self._lock:
            self.policies[domain] = policy
            if not self.keep:
                return
            now = time.time()
            kept = {d: p for d, p in self.policies.items() if not p.expired(now)}
            text = json.dumps({d: asdict(p) for d, p in sorted(kept.items())}, indent=1)
            durable.publish(self.path.with_suffix(".tmp"), self.path, text.encode())


class Fetcher:
    """Finds the policy that applies to a domain now."""

    def __init__(
        self,
        cache: Cache,
        resolve: dns.asyncresolver.Resolver,
        trust: ssl.SSLContext,
        port: int = 443,
    ) -> None:
        self.cache = cache
        self.resolve = resolve
        self.trust = trust
        self.port = port
        self._busy: dict[str, asyncio.Future[Found]] = {}

    async def policy(self, domain: str) -> Found:
        """The policy for `domain` (or None), a note on where it came from, and the
        TLS-RPT result type of a fetch that failed."""
        running = self._busy.get(domain)
        if running is not None:  # one fetch per domain at a time
            return await asyncio.shield(running)
        future: asyncio.Future[Found] = asyncio.get_running_loop().create_future()
        self._busy[domain] = future
        try:
            found = await self._policy(domain)
            future.set_result(found)
            return found
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may wait for it
            raise
        finally:
            del self._busy[domain]

    async def _policy(self, domain: str) -> Found:
        now = time.time()
        cached = self.cache.get(domain)
        fresh = cached if cached is not None and not cached.expired(now) else None
        try:
            ident = mtasts.record_id(await secure.txt(f"_mta-sts.{domain}", self.resolve))
        except secure.Trouble as trouble:
            return Found(
                fresh, f"cached; the TXT look-up failed: {trouble}" if fresh else f"{trouble}"
            )
        except mtasts.Invalid as invalid:
            if fresh is not None:
                return Found(fresh, f"cached; _mta-sts.{domain}: {invalid}")
            return Found(None, f"not published (_mta-sts.{domain}: {invalid})")
        if fresh is not None and fresh.id == ident:
            return Found(fresh, "cached")
        try:
            text = await self.fetch(domain)
            policy = mtasts.parse(text, ident, now)
        except (Unavailable, mtasts.Invalid) as failure:
            log.info("%s: MTA-STS policy not fetched: %s", domain, failure)
            result = failure.result if isinstance(failure, Unavailable) else "sts-policy-invalid"
            if fresh is not None:
                note = f"cached; the new policy could not be fetched: {failure}"
                return Found(fresh, note, result)
            return Found(None, f"policy fetch failed: {failure}", result)
        await asyncio.to_thread(self.cache.put, domain, policy)
        log.info("%s: MTA-STS policy id %s fetched: mode %s", domain, ident, policy.mode)
        return Found(policy, "fetched")

    async def fetch(self, domain: str) -> str:
        """The text of `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (Unavailable if not)."""
        host = f"mta-sts.{domain}"
        try:
            addresses = await mx.addresses(host, self.resolve, fail=True)
        except mx.LookupFailed as failure:
            raise Unavailable(failure.reason) from None
        problem = Unavailable("no address")
        for address in addresses:
            literal = f"[{address}]" if ":" in address else address
            url = f"https://{literal}:{self.port}/.well-known/mta-sts.txt"
            try:
                return await self._get(url, host)
            except Unavailable as unavailable:
                problem = unavailable
        raise problem

    async def _get(self, url: str, host: str) -> str:
        limit = mtasts.MAX_POLICY_BYTES
        try:
            async with (
                httpx.AsyncClient(
                    verify=self.trust,
                    timeout=FETCH_TIMEOUT,
                    follow_redirects=False,
                    trust_env=False,
                ) as client,
                asyncio.timeout(FETCH_TIMEOUT),
                client.stream(
                    "GET",
                    url,
                    # identity: a compressed body could unpack far past the size cap at once
                    headers={"Host": host, "Accept-Encoding": "identity"},
                    extensions={"sni_hostname": host},
                ) as response,
            ):
                if response.status_code != 200:
                    raise Unavailable(f"https://{host}/: HTTP {response.status_code}")
                kind = response.headers.get("content-type", "")
                if not kind.lower().startswith("text/plain"):
                    raise Unavailable(f"https://{host}/: Content-Type {kind!r}, not text/plain")
                body = b""
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > limit:
                        raise Unavailable(
                            f"https://{host}/: the policy is larger than {limit} bytes"
                        )
        except (httpx.HTTPError, ssl.SSLError, OSError, TimeoutError) as exc:
            why = _why(exc)
            result = "sts-webpki-invalid" if "certificate verify failed" in why else ""
            raise Unavailable(f"https://{host}/: {why}", result) from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise Unavailable(f"https://{host}/: the policy is not UTF-8") from None


class Unavailable(Exception):
    """The policy could not be fetched: why, and the TLS-RPT result type (RFC 8460 §4.3.2.2)."""

    def __init__(self, reason: str, result: str = "") -> None:
        super().__init__(reason)
        self.result = result or "sts-policy-fetch-error"


@dataclass(frozen=True)
class Found:
    """What `Fetcher.policy` found: the policy (or None), where it came from, and the
    TLS-RPT result type of a failed fetch ('' when none failed)."""

    policy: mtasts.StsPolicy | None
    note: str
    failure: str = ""


def _why(exc: BaseException) -> str:
    cause: Any = exc
    while cause.__context__ is not None and not str(cause):
        cause = cause.__context__
    if isinstance(exc, TimeoutError) or isinstance(cause, httpx.TimeoutException):
        return "time-out"
    text = str(cause) or type(cause).__name__
    return " ".join(text.split())[:200]
