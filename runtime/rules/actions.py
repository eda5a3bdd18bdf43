"""What rule actions do to a message: pure functions over message bytes, and the
auto-reply's decision and message. The reply log (who was answered when) is the one
piece of state; `SqliteReplyLog` keeps it on disk, behind the small `ReplyLog` interface.

- Add Header puts the field at the top of the header block; Tag Subject prefixes the
  Subject (once); Redirect and Mirror send the message unchanged, with the original
  envelope sender; Forward prepends Resent-From/To/Date/Message-ID (RFC 5322 3.6.6)
  and the forwarding account becomes the envelope sender.
- Reply with answers the envelope sender; Reply to All with also the To and Cc
  addresses. Neither answers bounces, automatic messages, lists or mail systems
  (RFC 3834), nor one sender twice within the rule's period.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from email import message_from_bytes
from email.errors import MessageError
from email.message import EmailMessage
from email.policy import SMTP, default
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Protocol

from mailplan.plan.model import Pipe, RuleVerb
from mailplan.runtime.decide.message import split
from mailplan.runtime.rules.engine import Facts, Headers, automated

MAILDIR_FLAGS = {"Draft": "D", "Flagged": "F", "Answered": "R", "Seen": "S", "Deleted": "T"}
_SUBJECT = re.compile(rb"^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def _newline(message: bytes) -> bytes:
    return b"\r\n" if b"\r\n" in message[:1000] or not message else b"\n"


def add_header(message: bytes, field: str) -> bytes:
    """`message` with the header field `Name: value` added at the top."""
    return field.encode("utf-8") + _newline(message) + message


def tag_subject(message: bytes, tag: str) -> bytes:
    """`message` whose Subject starts with `tag` (added once; a Subject made if none)."""
    head, blank, body = split(message)
    raw = tag.encode("utf-8")
    found = _SUBJECT.search(head)
    if found is None:
        return b"Subject: " + raw + _newline(message) + message
    if found[1].lower().startswith(raw.lower()):
        return message
    tagged = raw + (b" " + found[1] if found[1] else b"")
    return head[: found.start(1)] + tagged + head[found.end(1) :] + blank + body


def resent(message: bytes, by: str, to: Sequence[str], now: datetime, domain: str) -> bytes:
    """`message` as Forward to sends it: a Resent- block prepended (RFC 5322 3.6.6)."""
    fields = [
        f"Resent-From: {by}",
        f"Resent-To: {', '.join(to)}",
        f"Resent-Date: {format_datetime(now)}",
        f"Resent-Message-ID: {make_msgid(domain=domain)}",
    ]
    newline = _newline(message)
    return newline.join(line.encode("utf-8") for line in fields) + newline + message


def rejection(text: str | None) -> str:
    """The SMTP reply of Reject with: the rule's text, with `550 5.7.1` unless it gives a
    code of its own."""
    text = (text or "").strip()
    if re.match(r"[45][0-9][0-9](?: |$)", text):
        return text
    return f"550 5.7.1 {text or 'rejected by a rule'}"


def envelope_sender(verb: RuleVerb, original: str, account: str) -> str:
    """The envelope sender of a copy that Redirect, Mirror or Forward sends. A bounce
    stays a bounce (null sender), so that its own failure is never bounced again."""
    return account if verb == "Forward to" and original else original


def flags(verbs_and_values: Sequence[tuple[RuleVerb, Sequence[str]]]) -> str:
    """The Maildir info flags (`:2,FLAGS`) that the Mark actions ask for, sorted."""
    found = {
        MAILDIR_FLAGS[value]
        for verb, values in verbs_and_values
        if verb == "Mark"
        for value in values
        if value in MAILDIR_FLAGS
    }
    return "".join(sorted(found))


def pipe_command(pipes: Sequence[Pipe], value: str) -> tuple[str, ...] | None:
    """The command line Execute runs: the declared pipe's program and arguments, then the
    words after its name; None when the site declares no such pipe."""
    words = value.split()
    pipe = next((p for p in pipes if words and p.name == words[0]), None)
    return None if pipe is None else (pipe.program, *pipe.args, *words[1:])


def attachments(message: bytes) -> bytes | None:
    """A message holding only the attachments of `message` (Copy Attachments into), or None
    (also for a structure the email package cannot take apart: parts nested thousands
    deep exceed Python's recursion, and a broken header may raise what it raises)."""
    try:
        return _attachments(message)
    except (RecursionError, MessageError, ValueError, LookupError, TypeError):
        return None


def _attachments(message: bytes) -> bytes | None:
    original = message_from_bytes(message, _class=EmailMessage, policy=default)
    parts = list(original.iter_attachments())
    if not parts:
        return None
    copy = EmailMessage()
    for name in ("From", "To", "Date", "Subject", "Message-ID"):
        if original[name] is not None:
            copy[name] = original[name]
    copy.set_content(f"The attachments of: {original['Subject'] or '(no subject)'}\n")
    copy.make_mixed()
    for part in parts:
        copy.attach(part)
    return copy.as_bytes(policy=SMTP)


class ReplyLog(Protocol):
    """When each responder last answered each sender (seconds since the epoch)."""

    def last(self, responder: str, sender: str) -> float | None: ...

    def record(self, responder: str, sender: str, when: float) -> None: ...


class MemoryReplyLog:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    def last(self, responder: str, sender: str) -> float | None:
        return self._seen.get((responder.lower(), sender.lower()))

    def record(self, responder: str, sender: str, when: float) -> None:
        self._seen[(responder.lower(), sender.lower())] = when


class SqliteReplyLog:
    """The reply log in one SQLite file, so that a restart does not answer anyone twice."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies "
            "(responder TEXT, sender TEXT, at REAL, PRIMARY KEY (responder, sender))"
        )

    def last(self, responder: str, sender: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT at FROM replies WHERE responder = ? AND sender = ?",
                (responder.lower(), sender.lower()),
            ).fetchone()
        return None if row is None else float(row[0])

    def record(self, responder: str, sender: str, when: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?)",
                (responder.lower(), sender.lower(), when),
            )

    def close(self) -> None:
        self._db.close()


def why_not_reply(facts: Facts, responder: str, last: float | None, period: int) -> str | None:
    """Why an auto-reply must not be sent, or None when it may be."""
    reason = automated(facts.headers, facts.sender)
    if reason is not None:
        return reason
    if facts.sender.lower() == responder.lower():
        return "the sender is the responder"
    if last is not None and facts.now.timestamp() - last < period:
        return f"{facts.sender} was answered less than {period} seconds ago"
    return None


def reply_recipients(facts: Facts, responder: str, everyone: bool) -> tuple[str, ...]:
    """Whom a Reply with (the sender) or Reply to All with (and To, Cc) answers."""
    found = [facts.sender]
    if everyone:
        found += facts.headers.addresses("to", "cc")
    seen = {responder.lower()}
    unique = []
    for address in found:
        if address and address.lower() not in seen:
            seen.add(address.lower())
            unique.append(address)
    return tuple(unique)


def auto_reply(
    headers: Headers, responder: str, to: Sequence[str], text: str, now: datetime
) -> bytes:
    """The auto-reply: `Auto-Submitted: auto-replied`, In-Reply-To and References kept."""
    reply = EmailMessage()
    reply["From"] = responder
    reply["To"] = ", ".join(to)
    subject = headers.get("subject") or ""
    reply["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}".strip()
    reply["Date"] = format_datetime(now)
    reply["Message-ID"] = make_msgid(domain=responder.rpartition("@")[2] or None)
    reply["Auto-Submitted"] = "auto-replied"
    original = headers.get("message-id")
    if original:
        reply["In-Reply-To"] = original
        reply["References"] = " ".join([*(headers.get("references") or "").split(), original])
    reply.set_content(text if text.endswith("\n") else text + "\n")
    return reply.as_bytes(policy=SMTP)
