"""Queue processing, in the seed's order: route each recipient, (server rules), place the
message in its logical queues, (domain and account rules), deliver.

LOCAL delivers here, at once, into Maildir. Every other recipient (SMTP, PIPE,
LIST, and ERROR for one that the current plan refuses) is handed to
`runtime.delivery` as a `Waiting` entry, due now for a fresh message or when its
retry journal says for one found in the queue at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from runtime import maildir, retry
from runtime.delivery import Waiting
from runtime.router import Router
from runtime.spool import BadQueueFile, Envelope, Spool

log = logging.getLogger("mailplan.queue")

WORKERS = 4


def process(
    spool: Spool,
    queue_id: str,
    router: Router,
    mail_directory: Path,
    digest: str = "",
    fresh: tuple[Envelope, bytes] | None = None,
) -> list[Waiting]:
    """Process one queued message by `router`; returns the recipients still waiting.

    `fresh` is the envelope and message of a message that was just stored (none of its
    recipients is done yet), to save reading them back. Blocking (it reads the queue
    file and fsyncs mailboxes): run it off the event loop.
    """
    history: retry.History | None = None
    if fresh is not None:
        (envelope, message), finished = fresh, set()
    else:
        try:
            envelope, message = spool.load(queue_id)
        except (BadQueueFile, OSError, UnicodeError) as exc:
            spool.set_aside(queue_id, str(exc))
            return []
        finished = spool.finished(queue_id)
        history = spool.history(queue_id)
    schedule = router.plan.queue.retry
    done: list[str] = []
    waiting: list[Waiting] = []
    delivered: set[str] = set()  # one copy per mailbox, however many recipients lead to it
    for recipient in envelope.recipients:
        if recipient in finished:
            continue
        routing = router.route(recipient)
        decided = " ".join(str(step.source) for step in routing.steps if step.source) or "built-in"
        decided += f", plan {digest[:19]}" if digest else ""
        # Server rules will run here (the rules issue); then placement in logical queues.
        if routing.module == "LOCAL":
            # Domain and account rules will run here, for LOCAL only.
            if routing.queue not in delivered:
                maildir.deliver(
                    maildir.mailbox(mail_directory, routing.queue), envelope.sender, message
                )
                delivered.add(routing.queue)
            done.append(recipient)
            log.info("%s <%s> delivered to %s (%s)", queue_id, recipient, routing, decided)
        elif routing.module == "DISCARD":
            done.append(recipient)
            log.info("%s <%s> discarded (%s)", queue_id, recipient, decided)
        else:
            if history is None:  # fresh: due now, and its bytes are at hand for the first try
                entry = Waiting(
                    queue_id,
                    recipient,
                    routing,
                    envelope.arrived,
                    envelope=envelope,
                    message=message,
                )
            else:
                due = retry.due(history, recipient, envelope.arrived, schedule)
                attempts = history.attempts.get(recipient, 0)
                entry = Waiting(queue_id, recipient, routing, envelope.arrived, due, attempts)
            waiting.append(entry)
            log.info("%s <%s> queued in %s (%s)", queue_id, recipient, entry.queue, decided)
    if not waiting:
        spool.remove(queue_id)
    elif done:
        spool.done(queue_id, done)
    return waiting


def pending(spool: Spool, router: Router) -> list[Waiting]:
    """Every recipient that is not done, as the plan routes it now (for `mailplan queue`)."""
    found = []
    for queue_id in sorted(p.stem for p in spool.directory.glob("*.msg")):
        try:
            envelope, _ = spool.load(queue_id)
        except (BadQueueFile, OSError, UnicodeError):
            continue
        finished = spool.finished(queue_id)
        for recipient in envelope.recipients:
            if recipient not in finished:
                found.append(
                    Waiting(queue_id, recipient, router.route(recipient), envelope.arrived)
                )
    return found


class Processor:
    """Feeds queued messages to `process`, a few at a time, with the current plan."""

    def __init__(
        self,
        spool: Spool,
        current: Callable[[], tuple[str, Router]],
        mail_directory: Path,
        hand_over: Callable[[list[Waiting]], None],
    ) -> None:
        self.spool = spool
        self.current = current
        self.mail_directory = mail_directory
        self.hand_over = hand_over  # where waiting recipients go: `Delivery.add`
        self._ids: asyncio.Queue[tuple[str, tuple[Envelope, bytes] | None]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []

    def submit(self, queue_id: str, fresh: tuple[Envelope, bytes] | None = None) -> None:
        """Process `queue_id` soon; `fresh` is its envelope and message when just stored."""
        self._ids.put_nowait((queue_id, fresh))

    def start(self) -> None:
        """Queue every `.msg` again (nothing accepted is lost), then work."""
        for queue_id in self.spool.ids():
            self.submit(queue_id)
        self._workers = [asyncio.create_task(self._work()) for _ in range(WORKERS)]

    async def drain(self) -> None:
        """Wait until every submitted message has been processed."""
        await self._ids.join()

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            queue_id, fresh = await self._ids.get()
            try:
                started = time.monotonic()
                digest, router = self.current()
                waiting = await asyncio.to_thread(
                    process, self.spool, queue_id, router, self.mail_directory, digest, fresh
                )
                self.hand_over(waiting)
                log.debug("%s processed in %.1f ms", queue_id, (time.monotonic() - started) * 1e3)
            except Exception:
                log.exception("%s: processing failed; it stays queued for the next start", queue_id)
            finally:
                self._ids.task_done()
