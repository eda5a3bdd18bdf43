"""Queue processing, in the seed's order: route each recipient, place the message in its
logical queues, run the domain and account rules, deliver. (Server rules ran before
the message was queued: `runtime.smtp.session`.)

LOCAL delivers here, at once, into Maildir, after the rules of the domain and the
account (`runtime.rules.enact` says what their outcome means: folders, flags, copies,
auto-replies, a bounce). Every other recipient (SMTP, PIPE, LIST, and ERROR for one
that the current plan refuses) is handed to `runtime.delivery.scheduler` as a `Waiting` entry,
due now for a fresh message or when its retry journal says for one found in the
queue at start.

Every message accepted over SMTP is made durable in the intake journal
(`runtime.store.intake`) before its 250, and processed after it, in batches
(`Processor.deliver_soon`): the Maildir copies of a batch and the queue files of what
still waits (remote, LMTP, PIPE, LIST recipients) are made durable together, and only
then is each message settled in the journal. What waits to be processed is bounded:
past a soft limit a 250 waits for the batches to catch up (`Processor.admit`, Postfix's
in_flow_delay), past a hard one new mail hears 451 4.3.1 (`Full`). Under `serve` the
processor runs in the queue process (`runtime.serve.queueprocess`): the process that
accepts keeps the journal and the `Backlog`, and is told what each batch settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from mailplan.runtime.base import metrics
from mailplan.runtime.decide import lmtp, retry
from mailplan.runtime.decide.router import Router, Routing
from mailplan.runtime.delivery import pipe
from mailplan.runtime.delivery.scheduler import Waiting
from mailplan.runtime.queue.arrival import Arrival
from mailplan.runtime.queue.local import (
    REJECTED,
    REPLY_LOG,
    STORED,
    Drop,
    Effects,
    Local,
    dropped_into,
    execute,
)
from mailplan.runtime.rules import actions as ruleactions
from mailplan.runtime.rules import enact
from mailplan.runtime.store import durable
from mailplan.runtime.store.intake import Intake, Ticket
from mailplan.runtime.store.spool import BadQueueFile, Envelope, Spool

log = logging.getLogger("mailplan.queue")


class Full(Exception):
    """So much accepted mail waits to be processed that new mail must come back later
    (the reply is `451 4.3.1`)."""


WORKERS = 4
BATCH_DELAY = 0.02  # seconds a batch of `deliver_soon` messages gathers before delivery
BATCH_LIMIT = 1000  # messages in one such batch
# What may wait for `deliver_soon` (accepted, held in memory until processed): past the
# soft limits a 250 waits for the batches to catch up (at most FLOW_DELAY seconds, as
# Postfix's in_flow_delay), past the hard ones new mail is refused with 451 4.3.1.
SOFT_LIMIT = 2_000  # messages
SOFT_BYTES = 64 << 20
HARD_LIMIT = 20_000
HARD_BYTES = 256 << 20
FLOW_DELAY = 1.0
STOP_WAIT = 30.0  # seconds a stop waits for those batches (what is left stays in the journal)
RETRY_FAILED = 60  # seconds before a message whose processing failed is processed again
GIVE_UP_FAILED = 3  # failures (not of the disk) before a message is set aside as `.bad`


def process(
    spool: Spool,
    queue_id: str,
    router: Router,
    mail_directory: Path,
    digest: str = "",
    fresh: Arrival | None = None,
    effects: Effects | None = None,
    replies: ruleactions.ReplyLog | None = None,
    batch: durable.Batch | None = None,
    say: Callable[..., None] = log.info,
    tally: list[tuple[str, str]] | None = None,
) -> list[Waiting]:
    """Process one queued message by `router`; returns the recipients still waiting.

    `fresh` is a message that just arrived (none of its recipients is done yet): its
    envelope and bytes save reading them back, and its recipients keep the routing
    decided at RCPT (`Arrival`); `router` is then the plan it arrived under. With
    `batch`, the message was never queued (`Processor.deliver_soon`): its Maildir copies
    go into the batch, and there is no queue file to update. `say` writes the line about
    each recipient (a batch logs them once committed); `tally` gathers the module of each
    recipient done, for the batch to count once committed (else they are counted here).
    Blocking (it reads the queue file
    and fsyncs mailboxes): run it off the event loop.
    """
    if fresh is not None:
        message: _Message | None = _Message.fresh(fresh)
    else:
        message = _Message.read(spool, queue_id, router)
    if message is None:
        return []
    schedule = router.plan.queue.retry
    local = Local(
        spool, router, mail_directory, message.envelope, message.bytes,
        effects if effects is not None else Effects(),
        replies if replies is not None else ruleactions.MemoryReplyLog(), batch,
        headers=fresh.headers if fresh is not None else None,
    )  # fmt: skip
    done: list[str] = []
    outcomes: list[tuple[str, str]] = []  # (module, outcome) of each recipient done
    waiting: list[Waiting] = []
    # one copy per mailbox, however many recipients lead to it (an alias beside its
    # account): what its rules did, or the recipient whose LMTP delivery serves it
    delivered: dict[str, str] = {}
    for recipient in message.pending():
        routing = message.routing(recipient)
        decided = _decided(routing, digest)
        facts = {"extra": _facts(queue_id, recipient, routing)}
        if routing.module == "LOCAL" and routing.queue in delivered:
            done.append(recipient)
            earlier = delivered[routing.queue]
            outcomes.append(_again(say, earlier, queue_id, recipient, routing, decided, facts))
        elif routing.module == "LOCAL" and not lmtp.over_lmtp(router.plan, routing.queue):
            stored = delivered[routing.queue] = _deliver(local, routing.queue, done, batch is None)
            done.append(recipient)
            outcomes.append(_said(say, stored, queue_id, recipient, routing, decided, facts))
        elif routing.module == "DISCARD":
            done.append(recipient)
            outcomes.append(("DISCARD", "delivered"))
            say("%s <%s> discarded (%s)", queue_id, recipient, decided, **facts)
        else:
            entry = _waiting(local, message, recipient, routing, schedule, delivered)
            if isinstance(entry, str):  # through the rules to LMTP: what they stored is queued
                done.append(recipient)
                said = _said(say, entry, queue_id, recipient, routing, decided, facts, lmtp=True)
                outcomes.append(said)
                continue
            waiting.append(entry)
            say("%s <%s> queued in %s (%s)", queue_id, recipient, entry.queue, decided, **facts)
    if batch is None:
        _record(spool, queue_id, done, waiting)
    count(outcomes, tally)
    return waiting


def _said(
    say: Callable[..., None],
    stored: str,
    queue_id: str,
    recipient: str,
    routing: Routing,
    decided: str,
    facts: dict[str, Any],
    lmtp: bool = False,
) -> tuple[str, str]:
    """Log what LOCAL delivery did for one recipient (`Local.deliver`; with `lmtp`, what
    the rules stored was queued for LMTP); its module and outcome for /metrics."""
    if stored == STORED and lmtp:
        say("%s <%s> through rules to LMTP (%s)", queue_id, recipient, decided, **facts)
    elif stored == STORED:
        say("%s <%s> delivered to %s (%s)", queue_id, recipient, routing, decided, **facts)
    else:  # the account's rules kept no copy, or rejected the message (a bounce if they could)
        shown = "rejected by" if stored == REJECTED else "stored in no folder by"
        line = "%s <%s> %s the rules of %s (%s)"
        say(line, queue_id, recipient, shown, routing.queue, decided, **facts)
    return "LOCAL", "rejected" if stored == REJECTED else "delivered"


def _again(
    say: Callable[..., None],
    earlier: str,
    queue_id: str,
    recipient: str,
    routing: Routing,
    decided: str,
    facts: dict[str, Any],
) -> tuple[str, str]:
    """A recipient whose mailbox an earlier recipient of the message reached already (an
    alias beside its account): what was done then stands for both, once. `earlier` is
    what the account's rules did, or `<recipient>` whose LMTP delivery serves both."""
    if earlier.startswith("<"):
        line = "%s <%s> goes into the mailbox of %s with %s (%s)"
        say(line, queue_id, recipient, routing.queue, earlier, decided, **facts)
        return "LOCAL", "delivered"
    return _said(say, earlier, queue_id, recipient, routing, decided, facts)


def count(outcomes: list[tuple[str, str]], tally: list[tuple[str, str]] | None = None) -> None:
    """Recipients done here (LOCAL, DISCARD; delivered, or rejected by the account's
    rules), for /metrics: now, or into `tally` (a batch counts them once committed)."""
    if tally is not None:
        tally.extend(outcomes)
        return
    for module, outcome in outcomes:
        metrics.meters().deliveries.labels(module=module, outcome=outcome).inc()


@dataclass(frozen=True)
class _Message:
    """A message to process: as it arrived (with its routings), or read from the queue
    (with what is done and its retry journal)."""

    envelope: Envelope
    bytes: bytes
    routing: Callable[[str], Routing]
    finished: set[str] = field(default_factory=set)
    history: retry.History | None = None  # None: it just arrived

    def pending(self) -> list[str]:
        """The recipients not yet done, in the envelope's order."""
        return [r for r in self.envelope.recipients if r not in self.finished]

    @classmethod
    def fresh(cls, arrival: Arrival) -> _Message:
        return cls(arrival.envelope, arrival.message, arrival.routing)

    @classmethod
    def read(cls, spool: Spool, queue_id: str, router: Router) -> _Message | None:
        """The queued message, or None when it is gone or set aside as unreadable."""
        try:
            envelope, message = spool.load(queue_id)
        except FileNotFoundError:
            return None  # finished meanwhile
        except (BadQueueFile, UnicodeError) as exc:
            spool.set_aside(queue_id, str(exc))
            return None
        finished, history = spool.finished(queue_id), spool.history(queue_id)
        return cls(envelope, message, router.route, finished, history)

    def waiting(self, recipient: str, routing: Routing, schedule: tuple[int, ...]) -> Waiting:
        """The recipient for the delivery wing: due now with its bytes at hand when the
        message just arrived, else when its retry journal says."""
        envelope = self.envelope
        if self.history is None:
            return Waiting(
                envelope.id, recipient, routing, envelope.arrived,
                envelope=envelope, message=self.bytes,
            )  # fmt: skip
        due = retry.due(self.history, recipient, envelope.arrived, schedule)
        attempts = self.history.attempts.get(recipient, 0)
        return Waiting(envelope.id, recipient, routing, envelope.arrived, due, attempts)


def _waiting(
    local: Local,
    message: _Message,
    recipient: str,
    routing: Routing,
    schedule: tuple[int, ...],
    delivered: dict[str, str],
) -> Waiting | str:
    """A recipient for the delivery wing. A LOCAL one (whose mailbox is reached by LMTP)
    goes through the account's rules first: the plain case (INBOX, the message unchanged)
    waits in the LMTP queue as it is; anything else the rules stored is queued as drops
    of its own, and the recipient is done (what `Local.deliver` says the rules did).
    Either is noted in `delivered`, for the account's other recipients."""
    if routing.module != "LOCAL":
        return message.waiting(recipient, routing, schedule)
    plan, account = local.router.plan, routing.queue
    delivered[account] = f"<{recipient}>"
    folder = dropped_into(message.envelope)
    if folder is not None:  # a drop: the rules ran already
        return message.waiting(recipient, lmtp.handover(plan, routing, folder), schedule)
    stored, drops = local.collect(account)
    if drops == [Drop("INBOX", message.bytes, "")]:
        return message.waiting(recipient, lmtp.handover(plan, routing), schedule)
    for drop in drops:
        local.queue_drop(account, drop)
    delivered[account] = stored
    return stored


def _facts(queue_id: str, recipient: str, routing: Routing) -> dict[str, str]:
    """What a JSON log line says of a recipient's routing (`runtime.serve.logs.FACTS`)."""
    sources = " ".join(str(step.source) for step in routing.steps if step.source)
    facts = {"queue_id": queue_id, "recipient": recipient}
    return facts | {"source": sources} if sources else facts


def _decided(routing: Routing, digest: str) -> str:
    """Where a routing was decided, for the log: the site lines, and the plan."""
    decided = " ".join(str(step.source) for step in routing.steps if step.source) or "built-in"
    return decided + (f", plan {digest[:19]}" if digest else "")


def _deliver(local: Local, account: str, done: list[str], queued: bool) -> str:
    """LOCAL delivery to one account (what it did: `Local.deliver`); if it fails, what was
    delivered before it is recorded, so that it is not delivered twice (a batch's copies
    are not delivered yet)."""
    try:
        return local.deliver(account)
    except Exception:
        if queued and done and local.spool.exists(local.envelope.id):
            local.spool.done(local.envelope.id, done)
        raise


def _record(spool: Spool, queue_id: str, done: list[str], waiting: list[Waiting]) -> None:
    """The queue file after processing: gone when nothing waits, else what is done."""
    if not waiting:
        spool.remove(queue_id)
    elif done:
        spool.done(queue_id, done)


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


class Accepts(Protocol):
    """What an SMTP session hands its messages to: this process's `Processor`, or the
    front of a queue in a process of its own (`runtime.serve.queueprocess.Feed`)."""

    async def admit(self) -> None: ...

    async def accept(self, arrival: Arrival) -> None: ...

    def run(self, execution: enact.Execution, handover: pipe.Handover) -> None: ...


class Backlog:
    """What was accepted and is not processed yet, bounded: past the soft limits a 250
    waits for processing to catch up (at most `FLOW_DELAY`, Postfix's in_flow_delay),
    past the hard ones new mail hears 451 4.3.1 (`Full`)."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.settled = asyncio.Event()  # nothing waits
        self.settled.set()
        self._roomy = asyncio.Event()  # below the soft limits: a 250 need not wait
        self._roomy.set()

    async def admit(self) -> None:
        """Before a message is accepted: past the soft limits, wait for the backlog to
        come down (at most `FLOW_DELAY`); past the hard ones, raise `Full`."""
        if self._over(HARD_LIMIT, HARD_BYTES):
            raise Full
        if self._roomy.is_set():
            return
        metrics.meters().flow_delays.inc()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._roomy.wait(), FLOW_DELAY)
        if self._over(HARD_LIMIT, HARD_BYTES):
            raise Full

    def add(self, size: int) -> None:
        self.count += 1
        self.bytes += size
        self.settled.clear()
        if self._over(SOFT_LIMIT, SOFT_BYTES):
            self._roomy.clear()

    def remove(self, count: int, size: int) -> None:
        self.count -= count
        self.bytes -= size
        if not self._over(SOFT_LIMIT, SOFT_BYTES):
            self._roomy.set()
        if not self.count:
            self.settled.set()

    def _over(self, count: int, size: int) -> bool:
        return self.count >= count or self.bytes >= size


@dataclass(frozen=True)
class _Soon:
    """A message for `Processor.deliver_soon`, and its place in the intake journal (None:
    the journal is another process's, `settled` tells it)."""

    arrival: Arrival
    ticket: Ticket | None


class Processor:
    """Feeds queued messages to `process`, a few at a time, with the current plan."""

    def __init__(
        self,
        spool: Spool,
        current: Callable[[], tuple[str, Router]],
        mail_directory: Path,
        hand_over: Callable[[list[Waiting]], None],
        intake: Intake | None,
        park: Callable[[str], None] | None = None,
        settled: Callable[[list[str]], None] | None = None,
    ) -> None:
        """`park` takes a message read from the queue that is on hold (`Delivery.park`).
        Without `intake`, the journal is another process's (`runtime.serve.queueprocess`):
        `settled` is told the ids of each batch once what it made is durable."""
        self.spool = spool
        self.park = park
        self.current = current
        self.mail_directory = mail_directory
        self.hand_over = hand_over  # where waiting recipients go: `Delivery.add`
        mail_directory.mkdir(parents=True, exist_ok=True)
        self.replies = ruleactions.SqliteReplyLog(mail_directory / REPLY_LOG)
        self.intake = intake
        self.settled = settled
        self._ids: asyncio.Queue[tuple[str, Arrival | None]] = asyncio.Queue()
        self._soon: list[_Soon] = []  # for `_deliver_batches`
        self._failures: dict[str, int] = {}  # queue id -> processings that failed in a row
        self._more = asyncio.Event()
        self.waiting = Backlog()  # handed to `deliver_soon`, not settled yet
        self._batch_done = asyncio.Event()  # no batch is being delivered
        self._batch_done.set()
        self._workers: list[asyncio.Task[None]] = []
        self._commands: set[asyncio.Task[None]] = set()

    async def admit(self) -> None:
        """Before a message is accepted: `Backlog.admit`."""
        await self.waiting.admit()

    async def accept(self, arrival: Arrival) -> None:
        """Make a message durable before its 250: append it to the intake journal; it is
        processed after the 250, in the next batch (`deliver_soon`)."""
        # shielded: a client gone before its 250 cannot leave a record unsettled
        await asyncio.shield(self._journal(arrival))

    async def _journal(self, arrival: Arrival) -> None:
        assert self.intake is not None, "a processor without a journal accepts nothing"
        ticket = await self.intake.write(arrival.envelope, arrival.message)
        self.deliver_soon(arrival, ticket)

    def run(self, execution: enact.Execution, handover: pipe.Handover) -> None:
        """Start the program of an Execute action; the processor owns the task (a stop
        waits for it)."""
        self._spawn(execute(execution, handover))

    def deliver_soon(self, arrival: Arrival, ticket: Ticket | None) -> None:
        """Process, in the next batch, a message that is in the intake journal; it is
        settled there once what processing made of it is durable (Maildir copies, and a
        queue file for the recipients that still wait)."""
        self._soon.append(_Soon(arrival, ticket))
        self.waiting.add(len(arrival.message))
        self._more.set()

    @property
    def backlog(self) -> int:
        """Messages accepted and not yet processed (in the journal, unsettled)."""
        return self.waiting.count

    async def _deliver_batches(self) -> None:
        """Process what `deliver_soon` gathered, a batch at a time: its Maildir files and
        queue files are made durable together, then the recipients that wait go to the
        delivery wing. A batch that fails goes to the queue, message by message, where
        processing has its own retries."""
        while True:
            await self._more.wait()
            await asyncio.sleep(BATCH_DELAY)  # for the batch to fill
            self._more.clear()
            batch, self._soon = self._soon[:BATCH_LIMIT], self._soon[BATCH_LIMIT:]
            if self._soon:
                self._more.set()
            if not batch:
                continue
            self._batch_done.clear()
            effects = Effects()
            handed: list[Waiting] = []
            try:
                handed, failed = await asyncio.to_thread(self._deliver_batch, batch, effects)
                for queue_id in failed:
                    self.submit(queue_id)
            except Exception as exc:
                disk = isinstance(exc, OSError)  # one line, not a traceback
                why = f" ({exc})" if disk else ""
                failed_line = "processing %d message(s) failed%s; they go to the queue"
                log.error(failed_line, len(batch), why, exc_info=not disk)
                effects.commands = []  # they run when the queue processes the message
                batch = await self._queue_each(batch)
            finally:
                self._batch_done.set()
                for created in effects.created:  # durable already, even after a failure
                    self.submit(created)
            self.hand_over(handed)
            for command, facts in effects.commands:
                self._spawn(execute(command, facts))
            self._settle(batch)

    async def _queue_each(self, batch: list[_Soon]) -> list[_Soon]:
        """Write the messages of a failed batch to the queue, to be processed from there;
        returns those that are queued. The others stay in the journal and are tried
        again later."""
        queued, left = [], []
        for soon in batch:
            try:
                await asyncio.to_thread(self._queue_one, soon)
            except Exception as exc:  # it stays in the journal and is tried again
                log.error("%s: cannot queue it either: %s", soon.arrival.envelope.id, exc)
                left.append(soon)
                continue
            self.submit(soon.arrival.envelope.id)
            queued.append(soon)
        if left:
            log.error("%d message(s) tried again in %d s", len(left), RETRY_FAILED)
            asyncio.get_running_loop().call_later(RETRY_FAILED, self._retry_soon, left)
        return queued

    def _queue_one(self, soon: _Soon) -> None:
        envelope = soon.arrival.envelope
        if not self.spool.exists(envelope.id):  # stored by an earlier try
            self.spool.store(envelope, soon.arrival.message)

    def _settle(self, batch: list[_Soon]) -> None:
        if self.intake is not None:
            for soon in batch:
                if soon.ticket is not None:
                    self.intake.settle(soon.ticket)
            self.intake.write_marks()
        if self.settled is not None:
            self.settled([soon.arrival.envelope.id for soon in batch])
        self.waiting.remove(len(batch), sum(len(soon.arrival.message) for soon in batch))

    def _deliver_batch(
        self, batch: list[_Soon], effects: Effects
    ) -> tuple[list[Waiting], list[str]]:
        """Process a batch (in a thread): returns its recipients that wait, each of whose
        messages has a queue file once this returns, and the ids of the messages whose
        processing failed (queued, to be processed from there)."""
        files = durable.Batch()
        handed: list[Waiting] = []
        lines: list[tuple[tuple[Any, ...], dict[str, Any]]] = []  # logged after the commit
        tally: list[tuple[str, str]] = []  # counted after the commit

        def say(*line: Any, **facts: Any) -> None:
            lines.append((line, facts))

        failed: list[_Soon] = []
        try:
            for soon in batch:
                arrival = soon.arrival
                mark, said, counted = files.mark(), len(lines), len(tally)
                made, commands = len(effects.created), len(effects.commands)
                try:
                    waiting = process(
                        self.spool, arrival.envelope.id, arrival.router, self.mail_directory,
                        arrival.digest, arrival, effects, self.replies, files, say, tally,
                    )  # fmt: skip
                except OSError:
                    raise  # the disk: the whole batch goes to the queue
                except Exception:  # this message only (a bug it meets): the rest goes on
                    log.exception("%s: processing failed; queued", arrival.envelope.id)
                    files.undo(mark)  # what it did is undone: it is done again from the queue
                    del lines[said:], tally[counted:], effects.commands[commands:]
                    for created in effects.created[made:]:
                        self.spool.remove(created)  # its rules' copies and replies
                    del effects.created[made:]
                    failed.append(soon)
                    continue
                if waiting:
                    handed += self._stage(arrival, waiting, files)
            for soon in failed:  # processed again from the queue, with its own retries
                self._queue_one(soon)
            files.commit()
        except BaseException:
            files.abandon()
            raise
        for line in lines:
            log.info(*line[0], **line[1])
        count(tally)
        return handed, [soon.arrival.envelope.id for soon in failed]

    def _stage(
        self, arrival: Arrival, waiting: list[Waiting], files: durable.Batch
    ) -> list[Waiting]:
        """The queue file of the recipients that wait, in the batch: it holds those
        recipients only (the others are done once the batch is committed)."""
        wanted = {entry.recipient for entry in waiting}
        envelope = arrival.envelope
        staged = replace(envelope, recipients=tuple(r for r in envelope.recipients if r in wanted))
        self.spool.stage(staged, arrival.message, files)
        for entry in waiting:
            entry.envelope = staged
        return waiting

    def _retry_soon(self, batch: list[_Soon]) -> None:
        self._soon.extend(batch)
        self._more.set()

    def submit(self, queue_id: str, fresh: Arrival | None = None) -> None:
        """Process `queue_id` soon; `fresh` is the message as it arrived, when it just did."""
        self._ids.put_nowait((queue_id, fresh))

    def start(self) -> None:
        """Queue every `.msg` again (nothing accepted is lost), then work."""
        for queue_id in self.spool.ids():
            self.submit(queue_id)
        self._workers = [asyncio.create_task(self._work()) for _ in range(WORKERS)]
        self._workers.append(asyncio.create_task(self._deliver_batches()))

    async def drain(self) -> None:
        """Wait until every submitted message has been processed."""
        while True:
            await self._ids.join()
            await self.waiting.settled.wait()
            if self._ids.empty() and self.waiting.settled.is_set():
                return

    async def stop(self) -> None:
        try:  # what got 250 is delivered before the batches stop, or stays in the journal
            await asyncio.wait_for(self.waiting.settled.wait(), STOP_WAIT)
        except TimeoutError:
            log.warning("stopping with %d message(s) in the intake journal", self.waiting.count)
        await self._batch_done.wait()  # a batch under way ends and is settled, not cut off
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, *self._commands, return_exceptions=True)
        self.replies.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _held(self, queue_id: str, fresh: Arrival | None) -> bool:
        """Whether a message read from the queue is on hold: then it is parked, and not
        even its local copies are made until it is released."""
        if fresh is not None or self.park is None:
            return False
        if not await asyncio.to_thread(self.spool.is_held, queue_id):
            return False
        self.park(queue_id)
        return True

    def _give_up_or_retry(self, queue_id: str, exc: Exception) -> None:
        """After a failed processing: try again in RETRY_FAILED seconds; a message that
        failed GIVE_UP_FAILED times for something other than the disk is set aside as
        `.bad` (what it meets is a bug: trying forever would redo, every minute, what
        its rules did before failing)."""
        failures = self._failures[queue_id] = self._failures.get(queue_id, 0) + 1
        if isinstance(exc, OSError) or failures < GIVE_UP_FAILED:
            log.error(
                "%s: processing failed; tried again in %d s",
                queue_id,
                RETRY_FAILED,
                exc_info=not isinstance(exc, OSError),
            )
            asyncio.get_running_loop().call_later(RETRY_FAILED, self.submit, queue_id)
            return
        del self._failures[queue_id]
        try:
            reason = f"{type(exc).__name__}: {exc}"
            self.spool.set_aside(queue_id, reason, f"failed {failures} times")
        except OSError as error:
            log.error("%s: cannot set it aside: %s", queue_id, error)

    async def _work(self) -> None:
        while True:
            queue_id, fresh = await self._ids.get()
            effects = Effects()
            try:
                if await self._held(queue_id, fresh):
                    continue
                started = time.monotonic()
                # a message that just arrived is processed by the plan it arrived under
                digest, router = (fresh.digest, fresh.router) if fresh else self.current()
                waiting = await asyncio.to_thread(
                    process,
                    self.spool,
                    queue_id,
                    router,
                    self.mail_directory,
                    digest,
                    fresh,
                    effects,
                    self.replies,
                )
                self.hand_over(waiting)
                for command, facts in effects.commands:
                    self._spawn(execute(command, facts))
                log.debug("%s processed in %.1f ms", queue_id, (time.monotonic() - started) * 1e3)
            except Exception as exc:
                self._give_up_or_retry(queue_id, exc)
            else:
                self._failures.pop(queue_id, None)
            finally:
                for created in effects.created:  # what it queued goes on, even after a failure
                    self.submit(created)
                self._ids.task_done()
