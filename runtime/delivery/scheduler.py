"""Delivery beyond the mailbox: the SMTP, PIPE and LIST queues, retries and bounces.

Recipients that `runtime.queue.processor` could not deliver at once arrive here as
`Waiting` entries and wait in their logical queue (`SMTP(domain)`, `LMTP(servers)`,
`PIPE(name)`, `LIST(list@domain)`) until they are due. A due queue gets a worker: the
SMTP module sends every due message of its queue over one connection (a few
connections at most per queue), LMTP hands LOCAL mail to the mailbox server the same
way (`runtime.delivery.lmtp`), PIPE runs the declared program once per
recipient, LIST turns a post into a new queued message for the members. Recipients
that the plan refuses (`ERROR`) fail at once.

`settle` records what happened, in the order that loses nothing: a bounce is
queued durably before the failed recipient is marked done, and a message's files
go only when every recipient is done. Temporary failures go into the message's
retry journal (`runtime.decide.retry`) and the recipient waits again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import dns.asyncresolver

from mailplan.plan import codec
from mailplan.plan.model import MailingList, Plan
from mailplan.runtime.base import metrics
from mailplan.runtime.decide import dsn, lists, retry
from mailplan.runtime.decide import lmtp as lmtp_decide
from mailplan.runtime.decide import tlsrpt as tlsrpt_decide
from mailplan.runtime.decide.router import Router, Routing
from mailplan.runtime.delivery import lmtp, mtasts, outbound, pipe, tlspolicy, tlsrpt
from mailplan.runtime.delivery.courier import Courier
from mailplan.runtime.delivery.outbound import Fate, Parcel
from mailplan.runtime.dns import mx
from mailplan.runtime.store.spool import BadQueueFile, Envelope, Spool, new_id

log = logging.getLogger("mailplan.delivery")

T = TypeVar("T")
BATCH = 50  # messages one SMTP worker takes from its queue
SETTLE_RETRY = 60  # seconds before a batch whose outcomes could not be recorded is tried again
CONNECTIONS = {"SMTP": 4, "LMTP": 4, "PIPE": 2, "LIST": 1, "ERROR": 1}  # workers per queue
STOP_WAIT = 5.0  # seconds a stop waits for the batches under way


@dataclass
class Waiting:
    """A recipient of a queued message that waits in a logical queue."""

    queue_id: str
    recipient: str
    routing: Routing
    arrived: float
    due: float = 0.0
    attempts: int = 0
    envelope: Envelope | None = None
    message: bytes | None = None  # kept only while the message is fresh

    @property
    def queue(self) -> str:
        return f"{self.routing.module}({self.routing.queue})"


@dataclass(frozen=True)
class Remote:
    """How this server reaches others: the serve command's options (tests and split DNS)."""

    port: int = 25
    resolver: str | None = None
    timeout: float = 60.0  # an SMTP command to another server
    dns_timeout: float = 10.0  # a DNS look-up of the receiving checks
    https_port: int = 443  # MTA-STS policy fetches (`serve --mta-sts-port`, for tests)
    root: Path = Path(".")  # where a relative `outbound.tls.ca_file` is


@dataclass
class _Queue:
    name: str
    module: str
    ready: list[Waiting] = field(default_factory=list)
    later: list[tuple[float, int, Waiting]] = field(default_factory=list)
    active: int = 0


_sequence = itertools.count()


def settle(
    spool: Spool,
    plan: Plan,
    entries: list[Waiting],
    outcomes: list[Fate],
    now: float,
) -> tuple[list[Waiting], list[str]]:
    """Record `outcomes` of `entries` (one message); returns who waits again and new queue ids.

    Blocking (fsync): run it off the event loop.
    """
    queue_id = entries[0].queue_id
    try:
        envelope, message = _contents(spool, entries[0])
    except FileNotFoundError:
        log.info("%s: finished meanwhile", queue_id)
        return [], []
    except (BadQueueFile, UnicodeError) as exc:  # set aside when it is processed next
        log.error("%s: cannot read the message to settle it: %s", queue_id, exc)
        return [], []
    sorting = _Sorting(queue_id, plan, envelope.arrived, now)
    by_recipient = {entry.recipient: entry for entry in entries}
    for outcome in outcomes:
        sorting.take(by_recipient[outcome.recipient], outcome)
    new: list[str] = []
    if sorting.delayed:
        new += _warn_once(spool, plan, envelope, message, sorting.delayed, now)
    if sorting.journal:
        spool.journal(queue_id, sorting.journal)
    if sorting.failures:
        if envelope.sender:
            new.append(bounce(spool, plan, envelope, message, sorting.failures, now))
        else:
            log.info("%s: no bounce for a message with the null return path", queue_id)
    if sorting.done:
        _mark_done(spool, envelope, sorting.done)
    return sorting.again, new


def _settle_all(
    spool: Spool, plan: Plan, work: list[tuple[list[Waiting], list[Fate]]], now: float
) -> tuple[list[tuple[list[Waiting], list[str]]], Exception | None]:
    """`settle` for each message of a batch, in order; what the settled ones gave, and the
    error that stopped the rest (those are tried again later, as a whole batch would be)."""
    results = []
    for entries, outcomes in work:
        try:
            results.append(settle(spool, plan, entries, outcomes, now))
        except Exception as exc:
            return results, exc
    return results, None


@dataclass
class _Sorting:
    """The outcomes of one message's recipients, sorted: done, failed (for the bounce),
    delayed (for the warning), waiting again (with the lines of the retry journal)."""

    queue_id: str
    plan: Plan
    arrived: float
    now: float
    done: list[str] = field(default_factory=list)
    failures: list[dsn.Failure] = field(default_factory=list)
    delayed: list[dsn.Failure] = field(default_factory=list)
    again: list[Waiting] = field(default_factory=list)
    journal: str = ""

    def take(self, entry: Waiting, outcome: Fate) -> None:
        failure = dsn.Failure(
            outcome.recipient, outcome.status, outcome.text, outcome.remote, outcome.smtp
        )
        facts = _facts(outcome)
        counted = metrics.meters().deliveries
        if outcome.kind == "delivered":
            counted.labels(module=entry.routing.module, outcome="delivered").inc()
            self.done.append(outcome.recipient)
            log.info(
                "%s <%s> delivered: %s%s", self.queue_id, outcome.recipient, outcome.text,
                _by(outcome), extra=facts,
            )  # fmt: skip
        elif outcome.kind == "permanent":
            counted.labels(module=entry.routing.module, outcome="failed").inc()
            self.failures.append(failure)
            self.done.append(outcome.recipient)
            log.info(
                "%s <%s> failed: %s%s", self.queue_id, outcome.recipient, outcome.text,
                _by(outcome), extra=facts,
            )  # fmt: skip
        elif retry.expired(self.arrived, self.now, self.plan.queue.give_up_after):
            counted.labels(module=entry.routing.module, outcome="expired").inc()
            gave_up = f"gave up after {_span(self.now - self.arrived)}: {outcome.text}"
            self.failures.append(replace(failure, status="4.4.7", diagnostic=gave_up))
            self.done.append(outcome.recipient)
            log.info("%s <%s> %s", self.queue_id, outcome.recipient, gave_up, extra=facts)
        else:
            counted.labels(module=entry.routing.module, outcome="deferred").inc()
            self._defer(entry, outcome, failure, facts)

    def _defer(
        self, entry: Waiting, outcome: Fate, failure: dsn.Failure, facts: dict[str, str | None]
    ) -> None:
        now, schedule = self.now, self.plan.queue.retry
        self.journal += retry.failure_line(now, outcome.status, outcome.recipient, outcome.text)
        attempts = entry.attempts + 1
        interval = schedule[min(attempts, len(schedule)) - 1]
        self.again.append(replace(entry, due=now + interval, attempts=attempts, message=None))
        self.delayed.append(failure)
        log.info(
            "%s <%s> deferred (%s), next try in %s",
            self.queue_id,
            outcome.recipient,
            outcome.text,
            _span(interval),
            extra=facts,
        )


def _mark_done(spool: Spool, envelope: Envelope, done: list[str]) -> None:
    """Record recipients as done; the message goes when none is left."""
    queue_id = envelope.id
    finished = spool.finished(queue_id) | set(done)
    if finished >= set(envelope.recipients):
        spool.remove(queue_id)  # all done: no need to record who first
    else:
        spool.done(queue_id, done)
        if spool.finished(queue_id) >= set(envelope.recipients):
            spool.remove(queue_id)  # another worker finished the rest meanwhile


_warning = threading.Lock()  # for `_warn_once`


def _warn_once(
    spool: Spool,
    plan: Plan,
    envelope: Envelope,
    message: bytes,
    delayed: list[dsn.Failure],
    now: float,
) -> list[str]:
    """The message's delay warning, when it is due and was not sent: once, however many
    queues settle the message at the same moment; recorded as sent only once it is
    queued (a failure leaves it due). Recorded without a sender too: not asked again."""
    with _warning:
        if not retry.should_warn(
            spool.history(envelope.id), envelope.arrived, now, plan.queue.warn_after
        ):
            return []
        made = []
        if envelope.sender:
            until = envelope.arrived + plan.queue.give_up_after
            made.append(bounce(spool, plan, envelope, message, delayed, now, until))
        spool.journal(envelope.id, retry.event_line("W", now))
        return made


def bounce(
    spool: Spool,
    plan: Plan,
    original: Envelope,
    message: bytes,
    failures: list[dsn.Failure],
    now: float,
    retry_until: float | None = None,
) -> str:
    """Queue the DSN for `failures` of `original` (a delay warning with `retry_until`)."""
    report = dsn.report(
        hostname=plan.server.hostname,
        sender=original.sender,
        queue_id=original.id,
        arrived=original.arrived,
        failures=failures,
        action="failed" if retry_until is None else "delayed",
        original=message,
        now=now,
        retry_until=retry_until,
    )
    queue_id = enqueue(spool, original, "", (original.sender,), report, "bounce", now)
    metrics.meters().bounces.labels(action="failed" if retry_until is None else "delayed").inc()
    log.info("%s: DSN for %s queued as %s", original.id, original.sender, queue_id)
    return queue_id


def enqueue(
    spool: Spool,
    original: Envelope,
    sender: str,
    recipients: tuple[str, ...],
    message: bytes,
    listener: str,
    now: float,
) -> str:
    """Queue a message the server makes itself (a bounce, a rule's copy, an auto-reply),
    durably, keeping the original's client facts; returns its queue id."""
    envelope = Envelope(
        id=new_id(),
        arrived=now,
        plan=original.plan,
        listener=listener,
        client=original.client,
        helo=original.helo,
        tls=original.tls,
        auth=original.auth,
        sender=sender,
        recipients=recipients,
        relayable=frozenset(recipients),
    )
    spool.store(envelope, message)
    return envelope.id


def _contents(spool: Spool, entry: Waiting) -> tuple[Envelope, bytes]:
    if entry.envelope is not None and entry.message is not None:
        return entry.envelope, entry.message
    return spool.load(entry.queue_id)


async def _read(spool: Spool, entry: Waiting) -> tuple[Envelope, bytes]:
    """The envelope and message of an entry: at hand while fresh, else from the queue file."""
    if entry.envelope is not None and entry.message is not None:
        return entry.envelope, entry.message
    return await asyncio.to_thread(spool.load, entry.queue_id)


def _facts(outcome: Fate) -> dict[str, str | None]:
    """What a JSON log line says of one recipient's delivery (runtime.serve.logs.FACTS)."""
    return {
        "queue_id": outcome.queue_id,
        "recipient": outcome.recipient,
        "host": outcome.remote,
        "address": outcome.address,
        "reply": outcome.text if outcome.smtp else None,
    }


def _by(outcome: Fate) -> str:
    """` (HOST[ADDRESS])` when a remote host answered."""
    if outcome.remote is None:
        return ""
    return f" ({outcome.remote}[{outcome.address or '?'}])"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


class Delivery:
    """The logical queues that wait, and the workers that empty them."""

    def __init__(
        self,
        spool: Spool,
        current: Callable[[], Router],
        remote: Remote,
        submit: Callable[[str], None],
    ) -> None:
        self.spool = spool
        self.current = current
        self.remote = remote
        self.submit = submit
        self.queues: dict[str, _Queue] = {}
        self._timers: list[tuple[float, int, str]] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.connections = outbound.Connections()
        self._destinations: tuple[Plan | None, outbound.Destinations] = (
            None,
            outbound.Destinations(),
        )
        self.courier: Courier | None = None  # outbound SMTP's own loop (`start`)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self._sweeper: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self.reports = tlsrpt.Reports(spool.directory)  # TLS-RPT counts, durable
        self.policies = mtasts.Cache(spool.directory)  # MTA-STS policies, durable
        self._trust: dict[tuple[str | None, int], ssl.SSLContext] = {}
        self._fetcher: mtasts.Fetcher | None = None
        self.parked: set[str] = set()  # messages on hold (`mailplan queue hold`)

    def start(self) -> None:
        self.trust(self.current().plan)  # a CA file that cannot be read: said at start
        self._loop = asyncio.get_running_loop()
        if os.environ.get("MAILPLAN_COURIER", "1") != "0":
            self.courier = Courier(type(self._loop))
        self._runner = asyncio.create_task(self._run())
        self._sweeper = asyncio.create_task(self._sweep())
        self._reporter = asyncio.create_task(self._report())

    async def _report(self) -> None:
        """Send the TLS reports of the days that are over: at start, then after each
        midnight (UTC)."""
        while True:
            if not await self._send_reports():
                await asyncio.sleep(3600)
                continue
            now = time.time()
            await asyncio.sleep(86400 - now % 86400 + 60)

    async def _send_reports(self) -> bool:
        """Send what the plan served now asks for; False when that failed. (A function of
        its own, so that the plan is not held through the sleeps between: a reload frees
        the plan it replaced once nothing uses it.)"""
        plan = self.current().plan
        if plan.outbound.tls.reports:
            try:
                await self.reports.send(
                    plan,
                    codec.digest(plan),
                    self.spool,
                    self._dns(),
                    self.trust(plan),
                    self.submit,
                )
            except Exception:
                log.exception("TLS reports not sent; tried again in an hour")
                return False
        return True

    def _dns(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = mx.resolver(self.remote.resolver)
        return self._resolver

    def trust(self, plan: Plan) -> ssl.SSLContext:
        """What verifies certificates: the system's CA store and the site's `ca_file`."""
        written = plan.outbound.tls.ca_file
        path = None if written is None else self.remote.root / written
        try:  # the file's time in the key: a CA file replaced in place is read again
            key = (written, path.stat().st_mtime_ns if path is not None else 0)
        except OSError:
            key = (written, -1)
        context = self._trust.get(key)
        if context is None:
            try:
                context = tlspolicy.trust(path)
            except (OSError, ssl.SSLError) as exc:
                log.error("outbound.tls.ca_file %s cannot be used: %s", path, exc)
                context = tlspolicy.trust(None)
            self._trust = {key: context}  # only the current one is kept
        return context

    async def stop(self) -> None:
        """Stop: no new work; the batches under way get STOP_WAIT seconds to end (a batch
        cancelled halfway forgets what the remote side accepted, and sends it again after
        the restart), then what is left is cancelled."""
        self.stopping = True  # no new work: cancelled workers must not start others
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_WAIT)
        running = (self._runner, self._sweeper, self._reporter)
        tasks = [*self._tasks, *(t for t in running if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._outbound(self.connections.sweep(everything=True))
        if self.courier is not None:
            await self.courier.close()
        await self.reports.save()

    async def _sweep(self) -> None:
        """Close the kept connections that nobody used for a while."""
        while True:
            await asyncio.sleep(self.connections.idle / 2)
            await self._outbound(self.connections.sweep())

    async def _outbound(self, work: Coroutine[Any, Any, T]) -> T:
        """Outbound SMTP work, on the courier's loop when there is one: the kept
        connections and everything `outbound.deliver` does live there."""
        if self.courier is None:
            return await work
        return await self.courier.run(work)

    def _found(self, plan: Plan) -> outbound.Destinations:
        """What recent batches found of their destinations, under this plan only."""
        if self._destinations[0] is not plan:
            self._destinations = (plan, outbound.Destinations())
        return self._destinations[1]

    def _observe(self, session: tlsrpt_decide.TlsSession) -> None:
        """A TLS session to count, from the courier's thread: counted on this loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.reports.observe, session)

    def park(self, queue_id: str) -> None:
        """Keep a message on hold out of the queues until `mailplan queue release`; the
        processor reads it again then (`reschedule`)."""
        if queue_id not in self.parked:
            log.info("%s on hold: not delivered until released", queue_id)
        self.parked.add(queue_id)
        self._drop({queue_id})

    def _drop(self, ids: set[str]) -> None:
        """Take every recipient of these messages out of the queues."""
        for queue in self.queues.values():
            queue.ready = [entry for entry in queue.ready if entry.queue_id not in ids]
            later = [item for item in queue.later if item[2].queue_id not in ids]
            if len(later) != len(queue.later):
                heapq.heapify(later)
                queue.later = later

    async def _unheld(self, batch: list[Waiting]) -> list[Waiting]:
        """The entries of a batch whose message is neither on hold nor deleted now (what
        `mailplan queue hold` or `delete` did while they waited). A message that just
        arrived (its bytes at hand) is not looked at: it was not waiting, and the signal
        of `mailplan queue` takes it out of the queues if it waits for a retry."""
        ids = {entry.queue_id for entry in batch if entry.message is None}
        if not ids:
            return batch
        states = await asyncio.to_thread(lambda: {i: self._state(i) for i in ids})
        for queue_id, state in states.items():
            if state == "held":
                self.park(queue_id)
            elif state == "deleted":
                log.info("%s deleted from the queue: not delivered", queue_id)
        return [entry for entry in batch if states.get(entry.queue_id, "queued") == "queued"]

    def _state(self, queue_id: str) -> str:
        if not self.spool.exists(queue_id):
            return "deleted"
        return "held" if self.spool.is_held(queue_id) else "queued"

    def add(self, entries: list[Waiting]) -> None:
        now = time.time()
        entries = [entry for entry in entries if entry.queue_id not in self.parked]
        for entry in entries:
            queue = self.queues.get(entry.queue)
            if queue is None:
                queue = self.queues[entry.queue] = _Queue(entry.queue, entry.routing.module)
            if entry.due <= now:
                queue.ready.append(entry)
            else:
                heapq.heappush(queue.later, (entry.due, next(_sequence), entry))
                heapq.heappush(self._timers, (entry.due, next(_sequence), queue.name))
                self._wake.set()
        for name in {entry.queue for entry in entries}:
            self._kick(self.queues[name])

    def reschedule(self) -> None:
        """Work out every waiting recipient's next try again, from its retry journal and
        the current plan's schedule: after `mailplan queue flush` (which wrote `F` lines
        in the journals) and after a reload. The journals are read off the event loop."""
        task = asyncio.get_running_loop().create_task(self._reschedule())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reschedule(self) -> None:
        await self._holds()
        ids = {entry.queue_id for queue in self.queues.values() for *_, entry in queue.later}
        histories = await asyncio.to_thread(lambda: {i: self.spool.history(i) for i in ids})
        schedule = self.current().plan.queue.retry
        now = time.time()
        for queue in list(self.queues.values()):
            later = []
            for due, _, entry in queue.later:
                history = histories.get(entry.queue_id)
                if history is None:  # came after the journals were read: as it was
                    later.append((due, next(_sequence), entry))
                    continue
                entry.due = retry.due(history, entry.recipient, entry.arrived, schedule)
                if entry.due <= now:
                    queue.ready.append(entry)
                else:
                    later.append((entry.due, next(_sequence), entry))
                    heapq.heappush(self._timers, (entry.due, next(_sequence), queue.name))
            heapq.heapify(later)
            queue.later = later
            self._kick(queue)
        self._wake.set()

    async def _holds(self) -> None:
        """What `mailplan queue hold`, `release` and `delete` changed: held messages leave
        the queues, released ones are processed again (their retry journals kept),
        deleted ones are forgotten. Each is a line in the log."""
        waiting = {e.queue_id for q in self.queues.values() for e in q.ready}
        waiting |= {item[2].queue_id for q in self.queues.values() for item in q.later}
        parked = set(self.parked)
        states = await asyncio.to_thread(lambda: {i: self._state(i) for i in waiting | parked})
        for queue_id in sorted(parked):
            if states[queue_id] == "queued":
                self.parked.discard(queue_id)
                log.info("%s released from hold", queue_id)
                self.submit(queue_id)
            elif states[queue_id] == "deleted":
                self.parked.discard(queue_id)
                log.info("%s deleted from the queue while on hold", queue_id)
        for queue_id in sorted(waiting):
            if states[queue_id] == "held":
                self.park(queue_id)
        deleted = {i for i in waiting if states[i] == "deleted"}
        for queue_id in sorted(deleted):
            log.info("%s deleted from the queue: not delivered", queue_id)
        self._drop(deleted)

    async def _run(self) -> None:
        """Move entries whose time has come to their queue's ready list."""
        while True:
            now = time.time()
            while self._timers and self._timers[0][0] <= now:
                _, _, name = heapq.heappop(self._timers)
                queue = self.queues.get(name)
                if queue is None:  # emptied and forgotten since
                    continue
                while queue.later and queue.later[0][0] <= now:
                    queue.ready.append(heapq.heappop(queue.later)[2])
                self._kick(queue)
            self._wake.clear()
            timeout = self._timers[0][0] - now if self._timers else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _kick(self, queue: _Queue) -> None:
        if self.stopping:
            return
        limit = CONNECTIONS.get(queue.module, 1)
        while queue.ready and queue.active < limit:
            size = BATCH if queue.module in ("SMTP", "LMTP") else 1
            batch, queue.ready = queue.ready[:size], queue.ready[size:]
            queue.active += 1
            task = asyncio.create_task(self._work(queue, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work(self, queue: _Queue, batch: list[Waiting]) -> None:
        router = self.current()
        try:
            batch = await self._unheld(batch)
            try:
                outcomes = await self._deliver(queue, batch, router) if batch else []
            except Exception as exc:  # a bug or an I/O error: a temporary failure, retried
                log.exception("%s: delivery failed", queue.name)
                outcomes = [
                    Fate(e.queue_id, e.recipient, "temporary", "4.3.0", f"internal error: {exc}")
                    for e in batch
                ]
            await self._settle(router.plan, batch, outcomes)
        except Exception:
            log.exception("%s: cannot record what became of a batch; tried again later", queue.name)
            self.add([replace(e, due=time.time() + SETTLE_RETRY, message=None) for e in batch])
        finally:
            queue.active -= 1
            self._kick(queue)
            if not (queue.ready or queue.later or queue.active):  # forget idle queues
                self.queues.pop(queue.name, None)

    async def _settle(self, plan: Plan, batch: list[Waiting], outcomes: list[Fate]) -> None:
        """Record the outcomes of a batch, message by message, in one trip to a thread."""
        by_message: dict[str, list[Waiting]] = {}
        for entry in batch:
            by_message.setdefault(entry.queue_id, []).append(entry)
        mine: dict[str, list[Fate]] = {}
        for outcome in outcomes:
            mine.setdefault(outcome.queue_id, []).append(outcome)
        # a message without outcomes here was settled already (LMTP settles one by one)
        work = [(entries, mine[key]) for key, entries in by_message.items() if key in mine]
        if work:
            results, failure = await asyncio.to_thread(
                _settle_all, self.spool, plan, work, time.time()
            )
            for again, new in results:
                self.add(again)
                for created in new:
                    self.submit(created)
            if failure is not None:
                raise failure
        await self.reports.save(now=False)

    async def _deliver(self, queue: _Queue, batch: list[Waiting], router: Router) -> list[Fate]:
        if queue.module == "SMTP":
            return await self._smtp(batch, router)
        if queue.module == "LMTP":
            return await self._lmtp(batch, router)
        if queue.module == "PIPE":
            return [await self._pipe(entry, router) for entry in batch]
        if queue.module == "LIST":
            outcomes = []
            for entry in batch:
                outcome, created = await asyncio.to_thread(self._list, entry, router)
                outcomes.append(outcome)
                if created is not None:
                    self.submit(created)
            return outcomes
        return [
            _failed(entry, entry.routing.status or "5.1.1", entry.routing.reason or "refused")
            for entry in batch
        ]

    async def _parcels(
        self, batch: list[Waiting]
    ) -> tuple[list[Parcel], dict[tuple[str, str], list[str]]]:
        """A batch as messages with their routed targets, and (queue id, target) → the
        recipients as the client gave them (two recipients routed to one address: one copy)."""
        parcels: dict[str, Parcel] = {}
        asked: dict[tuple[str, str], list[str]] = {}
        for entry in batch:
            key = (entry.queue_id, entry.routing.target)
            if key in asked:
                asked[key].append(entry.recipient)
                continue
            asked[key] = [entry.recipient]
            envelope, message = await _read(self.spool, entry)
            known = parcels.get(entry.queue_id)
            targets = (
                (*known.recipients, entry.routing.target) if known else (entry.routing.target,)
            )
            parcels[entry.queue_id] = Parcel(entry.queue_id, envelope.sender, targets, message)
        return list(parcels.values()), asked

    async def _lmtp(self, batch: list[Waiting], router: Router) -> list[Fate]:
        """LOCAL mail handed over to the mailbox server, one outcome per recipient; each
        message is settled as soon as the server answered for it (the window in which a
        crash delivers twice is one message, not a batch)."""
        parcels, asked = await self._parcels(batch)
        servers = lmtp_decide.servers(batch[0].routing.queue)
        settings = lmtp.LmtpSettings(router.plan.server.hostname, self.remote.timeout)

        def named(results: list[Fate]) -> list[Fate]:
            return [
                replace(outcome, recipient=recipient)
                for outcome in results
                for recipient in asked[(outcome.queue_id, outcome.recipient)]
            ]

        async def settled(results: list[Fate]) -> None:
            await self._settle(router.plan, batch, named(results))

        return named(await lmtp.deliver(servers, parcels, settings, settled))

    async def _smtp(self, batch: list[Waiting], router: Router) -> list[Fate]:
        plan = router.plan
        first = batch[0].routing
        domain = first.target.rpartition("@")[2].lower()
        parcels, asked = await self._parcels(batch)
        resolve = self._dns()
        trust = self.trust(plan)
        wanted = plan.outbound.tls
        fetcher = None
        if wanted.mta_sts:
            if self._fetcher is None:  # one for all batches: one fetch at a time per domain
                self._fetcher = mtasts.Fetcher(
                    self.policies, resolve, trust, self.remote.https_port
                )
            fetcher = self._fetcher
            fetcher.trust = trust  # the current plan's
        policies = tlspolicy.Policies(wanted, plan.outbound.require_tls, resolve, fetcher)
        settings = outbound.Settings(
            helo=plan.server.hostname,
            port=self.remote.port,
            # a relay host or IP literal carries several domains: TLS if any of them needs it
            require_tls=any(
                entry.routing.target.rpartition("@")[2].lower() in plan.outbound.require_tls
                for entry in batch
            ),
            timeout=self.remote.timeout,
            connections=self.connections,
            policy=policies.need,
            trust=trust,
            observe=(self._observe if self.courier else self.reports.observe)
            if wanted.reports
            else None,
            destinations=self._found(plan),
        )
        results = await self._outbound(
            outbound.deliver(first.queue, domain, parcels, settings, resolve)
        )
        # Outcomes name the routed target; settle knows recipients as the client gave them.
        return [
            replace(outcome, recipient=recipient)
            for outcome in results
            for recipient in asked[(outcome.queue_id, outcome.recipient)]
        ]

    async def _pipe(self, entry: Waiting, router: Router) -> Fate:
        declared = router.pipes.get(entry.routing.queue)
        if declared is None:
            return _failed(entry, "5.3.5", f"no such pipe: {entry.routing.queue}")
        envelope, message = await _read(self.spool, entry)
        facts = pipe.Handover(
            entry.queue_id,
            envelope.sender,
            entry.recipient,
            envelope.client,
            envelope.helo,
            envelope.auth,
        )
        result = await pipe.run(
            declared, pipe.arguments(entry.routing.target, declared), facts, message
        )
        return Fate(entry.queue_id, entry.recipient, result.kind, result.status, result.text)  # type: ignore[arg-type]

    def _list(self, entry: Waiting, router: Router) -> tuple[Fate, str | None]:
        """Expand a post (blocking: it queues the members' copy durably)."""
        name, _, domain = entry.routing.queue.partition("@")
        found = _mailing_list(router.plan, name, domain)
        if found is None:
            return _failed(entry, "5.1.1", f"no such list: {entry.routing.queue}"), None
        envelope, message = _contents(self.spool, entry)
        post = lists.expand(found, domain, envelope.sender, message)
        if isinstance(post, lists.Refusal):
            return _failed(entry, post.status, post.reason), None
        if not post.recipients:
            text = f"list {entry.routing.queue} has no members"
            return Fate(entry.queue_id, entry.recipient, "delivered", "2.0.0", text), None
        expanded = enqueue(
            self.spool,
            envelope,
            post.sender,
            post.recipients,
            post.message,
            f"list {entry.routing.queue}",
            time.time(),
        )
        text = f"expanded to {len(post.recipients)} member(s) as {expanded}"
        return Fate(entry.queue_id, entry.recipient, "delivered", "2.0.0", text), expanded


def _mailing_list(plan: Plan, name: str, domain: str) -> MailingList | None:
    for hosted in plan.domains:
        if hosted.name == domain:
            return next((found for found in hosted.lists if found.name == name), None)
    return None


def _failed(entry: Waiting, status: str, reason: str) -> Fate:
    return Fate(entry.queue_id, entry.recipient, "permanent", status, reason)
