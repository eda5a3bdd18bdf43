"""LOCAL delivery: a message into an account's Maildir, through the rules of its domain
and its own (CommuniGate's order: they run for LOCAL deliveries only).

`runtime.rules.enact` says what the rules' outcome means (folders, flags, copies,
auto-replies, a bounce, programs to run); `Local` does it. What it makes that must
travel on (copies, bounces, replies: new queue files) and the programs to run are
`Effects` for the processor, which owns the tasks.

Where LOCAL goes over LMTP (`delivery.local: {via: lmtp}`), the rules run here all the
same, but what they store is collected as `Drop`s instead of written: the processor
hands the plain case (INBOX, the message as it came) to the LMTP queue as it is, and
queues every other drop as a message of its own (`lmtp FOLDER`, rules done) for the
LMTP queue to deliver into that folder.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mailplan.runtime.decide import dsn, lmtp
from mailplan.runtime.decide.addresslist import AddressSet
from mailplan.runtime.decide.router import Router
from mailplan.runtime.delivery import pipe
from mailplan.runtime.delivery.scheduler import bounce, enqueue
from mailplan.runtime.rules import actions as ruleactions
from mailplan.runtime.rules import enact
from mailplan.runtime.rules.engine import Facts, Headers, RuleBook
from mailplan.runtime.store import durable, maildir
from mailplan.runtime.store.spool import Envelope, Spool

log = logging.getLogger("mailplan.queue")

MAX_HOPS = 50  # Received and Delivered-To lines a message may carry (as Postfix's hopcount_limit)
REPLY_LOG = "replies.sqlite"  # in the mail directory: who was auto-answered when
# The listener names of messages the server made itself (bounces, list copies, rule
# copies, auto-replies): for rules, their Source is `local`.
MADE_HERE = ("bounce", "rule", "list ", "auto-reply")


@dataclass
class Effects:
    """What processing asked the event loop to do next: new messages to process, and
    programs to run (Execute)."""

    created: list[str] = field(default_factory=list)
    commands: list[tuple[enact.Execution, pipe.Handover]] = field(default_factory=list)


# What LOCAL delivery did for an account (`Local.deliver`): its rules may store no copy
# (Discard, Redirect) or reject the message (a bounce to the sender).
STORED, REJECTED, NOT_STORED = "stored", "rejected", "not stored"

LMTP_DROP = "lmtp "  # listener of a queued drop: `lmtp FOLDER`, its rules already ran


@dataclass(frozen=True)
class Drop:
    """What an account's rules store, collected for LMTP rather than written."""

    folder: str
    message: bytes
    flags: str


def dropped_into(envelope: Envelope) -> str | None:
    """The folder of a queued drop (a message whose rules already ran), or None."""
    if envelope.listener.startswith(LMTP_DROP):
        return envelope.listener.removeprefix(LMTP_DROP)
    return None


@functools.lru_cache(maxsize=4)
def rules_of(router: Router) -> tuple[RuleBook, AddressSet]:
    """The rules of the router's plan, compiled once, and its Client IPs."""
    plan = router.plan
    return RuleBook(plan), AddressSet.named(plan, plan.server.client_ips)


def looping(account: str, headers: Headers) -> str | None:
    """Why a message must not go through the account's rules again (a mail loop)."""
    delivered_to = headers.all("delivered-to")
    if account.lower() in (address.lower() for address in delivered_to):
        return "it has been through its rules before"
    hops = len(headers.all("received")) + len(delivered_to)
    return f"{hops} hops" if hops > MAX_HOPS else None


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
    drops: list[Drop] | None = None  # collecting for LMTP (`collect`) rather than writing
    headers: Headers | None = None  # of `message`, if parsed already (`Arrival.headers`)

    def collect(self, account: str) -> tuple[str, list[Drop]]:
        """Run the account's rules as `deliver` does, but return what they store (and
        what `deliver` returns)."""
        self.drops = []
        try:
            stored = self.deliver(account)
            return stored, self.drops
        finally:
            self.drops = None

    def queue_drop(self, account: str, drop: Drop) -> None:
        """Queue what the rules stored in a folder (or changed) as a message of its own,
        for the LMTP queue to deliver into that folder without the rules again."""
        if drop.flags:
            log.info(
                "%s <%s> flags %s are not carried over LMTP", self.envelope.id, account, drop.flags
            )
        if not lmtp.carried(drop.folder):
            log.warning(
                "%s <%s> folder %r cannot travel over LMTP (not ASCII): delivered to INBOX",
                self.envelope.id, account, drop.folder,
            )  # fmt: skip
        sender = self.envelope.sender
        self._queue(sender, (account,), drop.message, f"{LMTP_DROP}{drop.folder}")

    def deliver(self, account: str) -> str:
        """Deliver to `account`'s mailbox through its rules: STORED, REJECTED or NOT_STORED."""
        folder = dropped_into(self.envelope)
        if folder is not None:  # a drop whose domain now delivers into Maildir: as it is
            self._store(account, folder, self.message, "")
            return STORED
        book, clients = rules_of(self.router)
        rules = book.local(account)
        if not rules.rules:
            self._store(account, "INBOX", self.message, "")
            return STORED
        facts = self._facts(account, clients)
        why = looping(account, facts.headers)
        if why is not None:
            log.warning(
                "%s <%s> mail loop (%s): delivered without rules", self.envelope.id, account, why
            )
            self._store(account, "INBOX", self.message, "")
            return STORED
        outcome = rules.evaluate(facts)
        for line in outcome.log():
            log.info("%s <%s> %s", self.envelope.id, account, line)
        placement = enact.at_delivery(outcome, facts, self.message, account, self.router.plan.pipes)
        self._carry_out(account, facts, placement)
        if placement.folders or placement.attachments:
            return STORED
        return REJECTED if placement.rejection is not None else NOT_STORED

    def _carry_out(self, account: str, facts: Facts, placement: enact.Placement) -> None:
        """Do what the rules' outcome means for this account (`enact.at_delivery`)."""
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
            headers=self.headers if self.headers is not None else Headers.parse(self.message),
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
        if self.drops is not None:
            self.drops.append(Drop(folder, message, flags))
            return
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


async def execute(command: enact.Execution, facts: pipe.Handover) -> None:
    """An Execute action: the declared program gets the message; its result is logged."""
    result = await pipe.run(command.pipe, list(command.argv), facts, command.message)
    log.info("%s Execute %s: %s", facts.queue_id, command.pipe.name, result.text)
