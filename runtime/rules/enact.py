"""What rule outcomes do, worked out without I/O: the callers store and deliver.

Server rules run on every message received over SMTP, at the end of DATA, before the
message is queued (so `Reject with` is the reply to DATA and nothing is stored);
`at_enqueue` says what to queue. Domain and account rules run in LOCAL delivery,
for the account being delivered to; `at_delivery` says where the account's copy
goes, with which flags, and what else to send. docs/rules.md describes each action.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mailplan.plan.model import Pipe, RuleAction, RuleVerb
from mailplan.runtime.rules import actions as ruleactions
from mailplan.runtime.rules.engine import Directive, Facts, Outcome

SENDING = ("Redirect to", "Mirror to", "Forward to")
PLACING = ("Reject with", "Store in", "Add Header", "Tag Subject")
NOTING = ("Remember 'From' in", "Copy Attachments into", "Reply with", "Reply to All with")


@dataclass(frozen=True)
class Copy:
    """A message a rule sends on: queued like any other."""

    sender: str
    recipients: tuple[str, ...]
    message: bytes
    why: str


@dataclass(frozen=True)
class Execution:
    """An Execute action: a declared pipe, the command line, and the message it reads."""

    pipe: Pipe
    argv: tuple[str, ...]
    message: bytes


@dataclass
class Enqueue:
    """What server rules make of a message being received."""

    rejection: str | None
    message: bytes
    recipients: tuple[str, ...]
    copies: list[Copy] = field(default_factory=list)
    commands: list[Execution] = field(default_factory=list)


@dataclass
class Placement:
    """Where LOCAL delivery puts one account's copy, and what else the rules ask for."""

    message: bytes
    folders: list[str]  # "INBOX", or the folders of Store in; empty: not delivered
    flags: str  # Maildir info flags
    copies: list[Copy] = field(default_factory=list)
    commands: list[Execution] = field(default_factory=list)
    rejection: str | None = None  # Reject with: bounce to the sender with this reply
    remember: list[tuple[str, str]] = field(default_factory=list)  # (address book, address)
    attachments: list[tuple[str, bytes]] = field(default_factory=list)  # (folder, message)
    replies: list[tuple[str, bool, int]] = field(default_factory=list)  # text, to all, period


def _value(values: tuple[str, ...]) -> str:
    return values[0] if values else ""


def at_enqueue(
    outcome: Outcome,
    message: bytes,
    sender: str,
    recipients: tuple[str, ...],
    pipes: tuple[Pipe, ...],
    postmaster: str,
    now: datetime,
) -> Enqueue:
    """The server rules' outcome for a message from `sender` to `recipients`."""
    result = Enqueue(None, message, recipients)
    for step in outcome.steps:
        action = step.action
        verb, value = action.verb, _value(action.values)
        if verb == "Reject with":
            result.rejection = ruleactions.rejection(value or None)
            return result
        if verb == "Discard":
            result.recipients = ()
        elif verb == "Add Header":
            result.message = ruleactions.add_header(result.message, value)
        elif verb == "Tag Subject":
            result.message = ruleactions.tag_subject(result.message, value)
        elif verb in SENDING:
            result.copies.append(
                _copy(verb, action.values, result.message, sender, postmaster, now, f"{step}")
            )
            if verb != "Mirror to":
                result.recipients = ()
        elif verb == "Execute":
            command = _command(pipes, value, result.message)
            if command is not None:
                result.commands.append(command)
    return result


def at_delivery(
    outcome: Outcome,
    facts: Facts,
    message: bytes,
    account: str,
    pipes: tuple[Pipe, ...],
) -> Placement:
    """The domain and account rules' outcome for `account`'s copy of a message."""
    placement = Placement(message, ["INBOX"] if outcome.keep else [], "")
    marks: list[tuple[RuleVerb, tuple[str, ...]]] = []
    for step in outcome.steps:
        verb = step.action.verb
        if verb == "Mark":
            marks.append((verb, step.action.values))
        elif verb in PLACING:
            _place(placement, step.action)
        elif verb in SENDING or verb == "Execute":
            _send(placement, step, facts, account, pipes)
        elif verb in NOTING:
            _note(placement, step.action, facts)
    placement.flags = ruleactions.flags(marks)
    # one copy per folder, in the order the rules named them
    placement.folders = list(dict.fromkeys(placement.folders))
    return placement


def _place(placement: Placement, action: RuleAction) -> None:
    """Reject with, Store in, Add Header and Tag Subject: where the copy goes, and as what."""
    verb, value = action.verb, _value(action.values)
    if verb == "Reject with":
        placement.rejection = ruleactions.rejection(value or None)
    elif verb == "Store in":
        placement.folders.append(value)
    elif verb == "Add Header":
        placement.message = ruleactions.add_header(placement.message, value)
    elif verb == "Tag Subject":
        placement.message = ruleactions.tag_subject(placement.message, value)


def _send(
    placement: Placement, step: Directive, facts: Facts, account: str, pipes: tuple[Pipe, ...]
) -> None:
    """Redirect, Mirror, Forward and Execute: the message as it is now, sent on or piped."""
    action = step.action
    if action.verb == "Execute":
        command = _command(pipes, _value(action.values), placement.message)
        if command is not None:
            placement.commands.append(command)
        return
    sender = ruleactions.envelope_sender(action.verb, facts.sender, account)
    copy = _copy(
        action.verb, action.values, placement.message, sender, account, facts.now, f"{step}"
    )
    placement.copies.append(copy)


def _note(placement: Placement, action: RuleAction, facts: Facts) -> None:
    """Remember, Copy Attachments and the Replies: done after the copy is delivered."""
    verb, value = action.verb, _value(action.values)
    if verb == "Remember 'From' in":
        for _, address in facts.headers.mailboxes("from")[:1]:
            placement.remember.append((value, address))
    elif verb == "Copy Attachments into":
        parts = ruleactions.attachments(placement.message)
        if parts is not None:
            placement.attachments.append((value, parts))
    else:  # Reply with, Reply to All with
        period = action.period if action.period is not None else 7 * 86400
        placement.replies.append((value, verb == "Reply to All with", period))


def _copy(
    verb: RuleVerb,
    targets: tuple[str, ...],
    message: bytes,
    sender: str,
    by: str,
    now: datetime,
    why: str,
) -> Copy:
    """What Redirect, Mirror or Forward (with its Resent- fields, RFC 5322 3.6.6) send."""
    if verb == "Forward to":
        message = ruleactions.resent(message, by, targets, now, by.rpartition("@")[2])
    return Copy(sender, targets, message, why)


def _command(pipes: tuple[Pipe, ...], value: str, message: bytes) -> Execution | None:
    argv = ruleactions.pipe_command(pipes, value)
    if argv is None:
        return None
    name = value.split()[0]
    declared = next(p for p in pipes if p.name == name)
    return Execution(declared, argv, message)
