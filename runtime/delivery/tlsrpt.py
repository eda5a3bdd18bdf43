"""TLS reports (RFC 8460), the I/O: the daily counts kept in the queue folder
(`QUEUE/tls-rpt.json`, written atomically), and the reports of the days that are over,
sent to the `rua` of each domain's `_smtp._tls` record: a message through the server's
own queue for `mailto:`, a POST of the gzip JSON for `https:`.

Counting happens on the event loop (in memory); `save` writes the file, off the loop,
after a delivery batch at most once every SAVE_EVERY seconds, before reports are sent
and at a clean stop, so counts survive a restart (a crash loses at most the last
minute's sessions: counts are statistics, and one fsync per batch would cost relaying).
A day's counts are dropped once its reports are queued or posted; a report that cannot
be sent now (DNS trouble) is tried again later, and a day older than a week is dropped
unsent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dns.asyncresolver
import httpx

from mailplan.plan.model import Plan
from mailplan.runtime.decide import tlsrpt
from mailplan.runtime.dns import secure
from mailplan.runtime.store import durable
from mailplan.runtime.store.spool import Envelope, Spool, new_id

log = logging.getLogger("mailplan.tls-rpt")

FILE = "tls-rpt.json"
POST_TIMEOUT = 30.0
KEEP_DAYS = 7  # a day whose reports could not be sent for this long is dropped
SAVE_EVERY = 60.0  # seconds between two writes of the counts after delivery batches


class Reports:
    """The counts of TLS sessions per policy domain and day, durable."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        self.counts: tlsrpt.Counts = {}
        self.changed = False
        self._lock = threading.Lock()
        self._made = self._written = 0  # generations of the file's text
        self._saved = time.monotonic()
        try:
            loaded = json.loads(self.path.read_text())
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
            self.counts = loaded
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning(
                "%s: cannot read the TLS report counts, starting afresh: %s", self.path, exc
            )

    def observe(self, session: tlsrpt.TlsSession) -> None:
        """Count one session (on the event loop)."""
        tlsrpt.count(self.counts, tlsrpt.day_of(time.time()), session)
        self.changed = True

    async def save(self, now: bool = True) -> None:
        """Write the counts if they changed (with `now` false, only when the last write is
        SAVE_EVERY seconds old): made on the event loop, written off it."""
        if not self.changed or (not now and time.monotonic() - self._saved < SAVE_EVERY):
            return
        self.changed = False
        self._saved = time.monotonic()
        self._made += 1
        text = json.dumps(self.counts, indent=1, sort_keys=True).encode()
        await asyncio.to_thread(self._write, self._made, text)

    def _write(self, generation: int, text: bytes) -> None:
        with self._lock:  # two saves in flight: one at a time, and never an older text last
            if generation < self._written:
                return
            durable.publish(self.path.with_suffix(".tmp"), self.path, text)
            self._written = generation

    async def send(
        self,
        plan: Plan,
        digest: str,
        spool: Spool,
        resolve: dns.asyncresolver.Resolver,
        trust: ssl.SSLContext,
        submit: Callable[[str], None],
        now: float | None = None,
    ) -> list[str]:
        """Send the reports of every day that is over; the queue ids of the messages made.

        `submit(queue_id)` hands a queued report to the processor."""
        now = time.time() if now is None else now
        today = tlsrpt.day_of(now)
        made: list[str] = []
        for day in tlsrpt.due(self.counts, today):
            left = {}
            for domain, entry in self.counts[day].items():
                try:
                    made += await self._send(
                        plan, digest, spool, resolve, trust, day, domain, entry, now
                    )
                except secure.Trouble as trouble:
                    log.info("%s: TLS report for %s postponed: %s", domain, day, trouble)
                    left[domain] = entry
            old = tlsrpt.day_of(now - KEEP_DAYS * 86400)
            if left and day > old:
                self.counts[day] = left
            else:
                del self.counts[day]
            self.changed = True
        await self.save()
        for queue_id in made:
            submit(queue_id)
        return made

    async def _send(
        self,
        plan: Plan,
        digest: str,
        spool: Spool,
        resolve: dns.asyncresolver.Resolver,
        trust: ssl.SSLContext,
        day: str,
        domain: str,
        entry: dict[str, object],
        now: float,
    ) -> list[str]:
        addresses = tlsrpt.rua(await secure.txt(f"_smtp._tls.{domain}", resolve))
        if not addresses:
            return []
        hostname = plan.server.hostname
        postmaster = f"postmaster@{plan.server.main_domain}"
        ident = f"{day}.{uuid.uuid4().hex}@{hostname}"
        document = tlsrpt.report(day, domain, entry, hostname, f"mailto:{postmaster}", ident)
        made = []
        for where in addresses:
            if where.startswith("mailto:"):
                to = where[len("mailto:") :].split("?", 1)[0]
                message, _ = tlsrpt.message(document, hostname, postmaster, to, now)
                envelope = Envelope(
                    id=new_id(),
                    arrived=now,
                    plan=digest,
                    listener="tls-report",
                    client="127.0.0.1",
                    helo=hostname,
                    tls="",
                    auth="",
                    sender=postmaster,
                    recipients=(to,),
                    relayable=frozenset((to,)),
                )
                await asyncio.to_thread(spool.store, envelope, message)
                log.info("%s: TLS report for %s queued as %s for %s", domain, day, envelope.id, to)
                made.append(envelope.id)
            else:
                _, payload = tlsrpt.message(document, hostname, postmaster, "", now)
                await _post(where, payload, trust, domain, day)
        return made


async def _post(url: str, payload: bytes, trust: ssl.SSLContext, domain: str, day: str) -> None:
    """POST a report to an `https:` rua (RFC 8460 §5.4); a failure is logged, not retried."""
    try:
        async with httpx.AsyncClient(
            verify=trust, timeout=POST_TIMEOUT, follow_redirects=False, trust_env=False
        ) as client:
            response = await client.post(
                url,
                content=payload,
                headers={"Content-Type": "/".join(tlsrpt.MEDIA_TYPE)},
            )
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        log.warning("%s: TLS report for %s not posted to %s: %s", domain, day, url, exc)
        return
    if response.status_code // 100 != 2:
        log.warning(
            "%s: TLS report for %s refused by %s: HTTP %d", domain, day, url, response.status_code
        )
        return
    log.info("%s: TLS report for %s posted to %s", domain, day, url)
