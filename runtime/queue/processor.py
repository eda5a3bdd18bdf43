"""Queue processing, in the seed's order: route each recipient, place the message in its
logical queues, run the domain and account rules, deliver. (Server rules ran before
the message was queued: `runtime.smtp.session`.)

LOCAL delivers here, at once, into Maildir, after the rules of the domain and the
account (`runtime.rules.enact` says what their outcome means: folders, flags, copies,
auto-replies, a bounce). Every other recipient (SMTP, PIPE, LIST, and ERROR for one
that the current plan refuses) is handed to `runtime.delivery.scheduler` as a `Waiting` entry,
due now for a fresh message or when its retry journal says for one found in the
queue at start.

Mail that was never queued (all its recipients local accounts without rules: it is
in the intake journal, `runtime.store.intake`) comes through `Processor.deliver_soon`
and is delivered in batches whose Maildir copies are made durable together.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mailplan.runtime.decide import dsn, retry
from mailplan.runtime.decide.addresslist import AddressSet
from mailplan.runtime.decide.router import Router, Routing
from mailplan.runtime.delivery import pipe
from mailplan.runtime.delivery.scheduler import Waiting, bounce, enqueue
from mailplan.runtime.queue.arrival import Arrival
from mailplan.runtime.rules import actions as ruleactions
from mailplan.runtime.rules import enact
from mailplan.runtime.rules.engine import Facts, Headers, RuleBook
from mailplan.runtime.store import durable, maildir
from mailplan.runtime.store.intake import Intake, Ticket
from mailplan.runtime.store.spool import BadQueueFile, Envelope, Spool

log = logging.getLogger("mailplan.queue")

WORKERS = 4
BATCH_DELAY = 0.02  # seconds a batch of `deliver_soon` messages gathers before delivery
BATCH_LIMIT = 1000  # messages in one such batch
# what may wait for `deliver_soon` (held in memory until delivered); beyond, mail is queued
SOON_LIMIT = 20_000  # messages
SOON_BYTES = 256 << 20
STOP_WAIT = 30.0  # seconds a stop waits for those batches (what is left stays in the journal)
RETRY_FAILED = 60  # seconds before a message whose processing failed is processed again
MAX_HOPS = 50  # Received and Delivered-To lines a message may carry (as Postfix's hopcount_limit)
REPLY_LOG = "replies.sqlite"
# The listener names of messages the server made itself (bounces, list copies, rule
# copies, auto-replies): for rules, their Source is `local`.
MADE_HERE = (
    "bounce",
    "rule",
    "list ",
    "auto-reply",
)  # in the mail directory: who was auto-answered when


@dataclass
class Effects:
    """What processing asked the event loop to do next: new messages to process, and
    programs to run (Execute)."""

    created: list[str] = field(default_factory=list)
    commands: list[tuple[enact.Execution, pipe.Handover]] = field(default_factory=list)


@functools.lru_cache(maxsize=4)
def _rules_of(router: Router) -> tuple[RuleBook, AddressSet]:
    """The rules of the router's plan, compiled once, and its Client IPs."""
    plan = router.plan
    return RuleBook(plan), AddressSet.named(plan, plan.server.client_ips)


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
) -> list[Waiting]:
    """Process one queued message by `router`; returns the recipients still waiting.

    `fresh` is a message that just arrived (none of its recipients is done yet): its
    envelope and bytes save reading them back, and its recipients keep the routing
    decided at RCPT (`Arrival`); `router` is then the plan it arrived under. With
    `batch`, the message was never queued (`Processor.deliver_soon`): its Maildir copies
    go into the batch, and there is no queue file to update. `say` writes the line about
    each recipient (a batch logs them once committed). Blocking (it reads the queue file
    and fsyncs mailboxes): run it off the event loop.
    """
    history: retry.History | None = None
    routing_of: Callable[[str], Routing] = router.route
    if fresh is not None:
        envelope, message, finished = fresh.envelope, fresh.message, set()
        routing_of = fresh.routing
    else:
        try:
            envelope, message = spool.load(queue_id)
        except FileNotFoundError:
            return []  # finished meanwhile
        except (BadQueueFile, UnicodeError) as exc:
            spool.set_aside(queue_id, str(exc))
            return []
        finished = spool.finished(queue_id)
        history = spool.history(queue_id)
    schedule = router.plan.queue.retry
    effects = effects if effects is not None else Effects()
    replies = replies if replies is not None else ruleactions.MemoryReplyLog()
    done: list[str] = []
    waiting: list[Waiting] = []
    delivered: set[str] = set()  # one copy per mailbox, however many recipients lead to it
    for recipient in envelope.recipients:
        if recipient in finished:
            continue
        routing = routing_of(recipient)
        decided = " ".join(str(step.source) for step in routing.steps if step.source) or "built-in"
        decided += f", plan {digest[:19]}" if digest else ""
        # Server rules will run here (the rules issue); then placement in logical queues.
        if routing.module == "LOCAL":
            if routing.queue not in delivered:
                local = Local(
                    spool, router, mail_directory, envelope, message, effects, replies, batch
                )
                try:
                    local.deliver(routing.queue)
                except Exception:
                    # those are not delivered twice (a batch's copies are not delivered yet)
                    if batch is None and done and spool.exists(queue_id):
                        spool.done(queue_id, done)
                    raise
                delivered.add(routing.queue)
            done.append(recipient)
            say("%s <%s> delivered to %s (%s)", queue_id, recipient, routing, decided)
        elif routing.module == "DISCARD":
            done.append(recipient)
            say("%s <%s> discarded (%s)", queue_id, recipient, decided)
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
            say("%s <%s> queued in %s (%s)", queue_id, recipient, entry.queue, decided)
    if batch is None and not waiting:
        spool.remove(queue_id)
    elif batch is None and done:
        spool.done(queue_id, done)
    return waiting


@dataclass
class Local:
    """LOCAL delivery of one message to the accounts it goes to, through their rules."""

    spool: Spool
    router: Router
    mail_directory: Path
    envelope: Envelope
    message: bytes
    effects: Effects
    replies: ruleactions.ReplyLog
    batch: durable.Batch | None = None

    def deliver(self, account: str) -> None:
        book, clients = _rules_of(self.router)
        rules = book.local(account)
        if not rules.rules:
            self._store(account, "INBOX", self.message, "")
            return
        facts = self._facts(account, clients)
        looped = account.lower() in (a.lower() for a in facts.headers.all("delivered-to"))
        hops = len(facts.headers.all("received")) + len(facts.headers.all("delivered-to"))
        if looped or hops > MAX_HOPS:
            why = "it has been through its rules before" if looped else f"{hops} hops"
            log.warning(
                "%s <%s> mail loop (%s): delivered without rules", self.envelope.id, account, why
            )
            self._store(account, "INBOX", self.message, "")
            return
        outcome = rules.evaluate(facts)
        for line in outcome.log():
            log.info("%s <%s> %s", self.envelope.id, account, line)
        placement = enact.at_delivery(outcome, facts, self.message, account, self.router.plan.pipes)
        for folder in placement.folders:
            self._store(account, folder, placement.message, placement.flags)
        for folder, parts in placement.attachments:
            self._store(account, folder, parts, "")
        for copy in placement.copies:
            stamped = f"Delivered-To: {account}\r\n".encode() + copy.message
            self._queue(copy.sender, copy.recipients, stamped, f"rule copy for {account}")
        if placement.rejection is not None:
            self._bounce(account, placement.rejection)
        for text, everyone, period in placement.replies:
            self._reply(facts, account, text, everyone, period)
        for book_name, address in placement.remember:
            self._remember(account, book_name, address)
        for command in placement.commands:
            facts_for_pipe = pipe.Handover(
                self.envelope.id,
                self.envelope.sender,
                account,
                self.envelope.client,
                self.envelope.helo,
                self.envelope.auth,
            )
            self.effects.commands.append((command, facts_for_pipe))

    def _facts(self, account: str, clients: AddressSet) -> Facts:
        envelope = self.envelope
        internal = envelope.listener in MADE_HERE or envelope.listener.startswith(MADE_HERE)
        sources = {"local" if internal else "remote"}
        if envelope.client in clients:
            sources.add("trusted")
        if envelope.auth not in ("", "-"):
            sources.add("authenticated")
        return Facts(
            headers=Headers.parse(self.message),
            sender=envelope.sender,
            recipients=envelope.recipients,
            size=len(self.message),
            sources=frozenset(sources),
            tls=envelope.tls != "none",
            submit_address=envelope.client,
            now=datetime.now().astimezone(),
            mailboxes=lambda name: maildir.mailbox(self.mail_directory, account, name).is_dir(),
        )

    def _store(self, account: str, folder: str, message: bytes, flags: str) -> None:
        box = maildir.mailbox(self.mail_directory, account, folder)
        maildir.deliver(box, self.envelope.sender, message, flags, self.batch)

    def _queue(self, sender: str, recipients: tuple[str, ...], message: bytes, why: str) -> None:
        queue_id = enqueue(self.spool, self.envelope, sender, recipients, message, why, time.time())
        self.effects.created.append(queue_id)
        shown = ", ".join(f"<{r}>" for r in recipients)
        log.info("%s: %s queued as %s for %s", self.envelope.id, why, queue_id, shown)

    def _bounce(self, account: str, reply: str) -> None:
        if not self.envelope.sender:
            log.info(
                "%s <%s> rejected by a rule; no bounce to the null sender",
                self.envelope.id,
                account,
            )
            return
        found = re.match(r"[245]\d\d(?: ([245]\.\d{1,3}\.\d{1,3}))?\s*(.*)", reply)
        status = found[1] if found and found[1] and found[1][0] == "5" else "5.7.1"
        reason = (found[2] if found else reply) or "rejected by a rule"
        failure = dsn.Failure(account, status, reason)
        now = time.time()
        queue_id = bounce(self.spool, self.router.plan, self.envelope, self.message, [failure], now)
        self.effects.created.append(queue_id)

    def _reply(self, facts: Facts, account: str, text: str, everyone: bool, period: int) -> None:
        last = self.replies.last(account, facts.sender)
        why = ruleactions.why_not_reply(facts, account, last, period)
        if why is not None:
            log.info("%s <%s> no auto-reply: %s", self.envelope.id, account, why)
            return
        to = ruleactions.reply_recipients(facts, account, everyone)
        answer = ruleactions.auto_reply(facts.headers, account, to, text, facts.now)
        self._queue("", to, answer, f"auto-reply of {account}")
        self.replies.record(account, facts.sender, facts.now.timestamp())

    def _remember(self, account: str, book: str, address: str) -> None:
        """Remember 'From' in: one address a line in `ACCOUNT/addressbooks/BOOK.txt`."""
        folder = maildir.mailbox(self.mail_directory, account) / "addressbooks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{book.replace('/', '_')}.txt"
        known = path.read_text(encoding="utf-8").split("\n") if path.exists() else []
        if address.lower() not in (line.lower() for line in known):
            with path.open("a", encoding="utf-8") as file:
                file.write(f"{address}\n")


def delivers_at_once(arrival: Arrival) -> bool:
    """Whether every recipient goes to a local account without rules (or is discarded):
    then the message needs no queue file, only the intake journal until its Maildir
    copies are durable (`Processor.deliver_soon`)."""
    book, _ = _rules_of(arrival.router)
    for recipient in arrival.envelope.recipients:
        routing = arrival.routing(recipient)
        if routing.module == "DISCARD":
            continue
        if routing.module != "LOCAL" or book.local(routing.queue).rules:
            return False
    return True


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


async def execute(command: enact.Execution, facts: pipe.Handover) -> None:
    """An Execute action: the declared program gets the message; its result is logged."""
    result = await pipe.run(command.pipe, list(command.argv), facts, command.message)
    log.info("%s Execute %s: %s", facts.queue_id, command.pipe.name, result.text)


@dataclass(frozen=True)
class _Soon:
    """A message for `Processor.deliver_soon`, and its place in the intake journal."""

    arrival: Arrival
    ticket: Ticket


class Processor:
    """Feeds queued messages to `process`, a few at a time, with the current plan."""

    def __init__(
        self,
        spool: Spool,
        current: Callable[[], tuple[str, Router]],
        mail_directory: Path,
        hand_over: Callable[[list[Waiting]], None],
        intake: Intake,
    ) -> None:
        self.spool = spool
        self.current = current
        self.mail_directory = mail_directory
        self.hand_over = hand_over  # where waiting recipients go: `Delivery.add`
        mail_directory.mkdir(parents=True, exist_ok=True)
        self.replies = ruleactions.SqliteReplyLog(mail_directory / REPLY_LOG)
        self.intake = intake
        self._ids: asyncio.Queue[tuple[str, Arrival | None]] = asyncio.Queue()
        self._soon: list[_Soon] = []  # for `_deliver_batches`
        self._more = asyncio.Event()
        self._unsettled = 0  # handed to `deliver_soon`, not settled yet
        self._unsettled_bytes = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._batch_done = asyncio.Event()  # no batch is being delivered
        self._batch_done.set()
        self._workers: list[asyncio.Task[None]] = []
        self._commands: set[asyncio.Task[None]] = set()

    async def accept(self, arrival: Arrival) -> None:
        """Make a message durable before its 250: queue it, or, when every recipient is a
        local account without rules, write it to the intake journal, to be delivered
        into the Maildirs in the next batch (`runtime.store.intake`). Then process it."""
        if not self.backlogged and delivers_at_once(arrival):
            # shielded: a client gone before its 250 cannot leave a record unsettled
            await asyncio.shield(self._journal(arrival))
            return
        await asyncio.to_thread(self.spool.store, arrival.envelope, arrival.message)
        self.submit(arrival.envelope.id, arrival)

    async def _journal(self, arrival: Arrival) -> None:
        ticket = await self.intake.write(arrival.envelope, arrival.message)
        self.deliver_soon(arrival, ticket)

    def run(self, execution: enact.Execution, handover: pipe.Handover) -> None:
        """Start the program of an Execute action; the processor owns the task (a stop
        waits for it)."""
        self._spawn(execute(execution, handover))

    def deliver_soon(self, arrival: Arrival, ticket: Ticket) -> None:
        """LOCAL delivery, in the next batch, of a message that is in the intake journal
        and was never queued (see `delivers_at_once`); settled once its copies are
        durable."""
        self._soon.append(_Soon(arrival, ticket))
        self._unsettled += 1
        self._unsettled_bytes += len(arrival.message)
        self._settled.clear()
        self._more.set()

    @property
    def backlogged(self) -> bool:
        """Whether so much waits for `deliver_soon` that new mail should be queued instead
        (acceptance must not outrun delivery without bound)."""
        return self._unsettled >= SOON_LIMIT or self._unsettled_bytes >= SOON_BYTES

    async def _deliver_batches(self) -> None:
        """Deliver what `deliver_soon` gathered, a batch at a time: its Maildir files are
        made durable together. A batch that fails goes to the queue, message by message,
        where processing has its own retries."""
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
            try:
                await asyncio.to_thread(self._deliver_batch, batch)
            except Exception:
                log.exception("delivering %d message(s) failed; they are queued", len(batch))
                batch = await self._queue_each(batch)
            finally:
                self._batch_done.set()
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
        for soon in batch:
            self.intake.settle(soon.ticket)
        self.intake.write_marks()
        self._unsettled -= len(batch)
        self._unsettled_bytes -= sum(len(soon.arrival.message) for soon in batch)
        if not self._unsettled:
            self._settled.set()

    def _deliver_batch(self, batch: list[_Soon]) -> None:
        files = durable.Batch()
        lines: list[tuple[Any, ...]] = []  # logged once true: after the commit
        try:
            for soon in batch:
                arrival = soon.arrival
                waiting = process(
                    self.spool, arrival.envelope.id, arrival.router, self.mail_directory,
                    arrival.digest, arrival, batch=files, say=lambda *line: lines.append(line),
                )  # fmt: skip
                if waiting:  # cannot happen: `delivers_at_once` saw the same routings
                    raise OSError(f"{arrival.envelope.id}: recipients left to queue")
            files.commit()
        except BaseException:
            files.abandon()
            raise
        for line in lines:
            log.info(*line)

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
        await self._ids.join()
        await self._settled.wait()

    async def stop(self) -> None:
        try:  # what got 250 is delivered before the batches stop, or stays in the journal
            await asyncio.wait_for(self._settled.wait(), STOP_WAIT)
        except TimeoutError:
            log.warning("stopping with %d message(s) in the intake journal", self._unsettled)
        await self._batch_done.wait()  # a batch under way ends and is settled, not cut off
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, *self._commands, return_exceptions=True)
        self.replies.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _work(self) -> None:
        while True:
            queue_id, fresh = await self._ids.get()
            effects = Effects()
            try:
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
            except Exception:
                log.exception("%s: processing failed; tried again in %d s", queue_id, RETRY_FAILED)
                asyncio.get_running_loop().call_later(RETRY_FAILED, self.submit, queue_id)
            finally:
                for created in effects.created:  # what it queued goes on, even after a failure
                    self.submit(created)
                self._ids.task_done()
