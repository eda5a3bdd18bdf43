"""Delivery status notifications (RFC 3464): the bounce and the delay warning.

A DSN is a `multipart/report; report-type=delivery-status` message with three
parts: a text a person can read, the `message/delivery-status` fields (one block
for the message, one per recipient), and the original message's header
(`text/rfc822-headers`, or `message/global-headers` when it is in UTF-8). It goes
from the null return path, so that a DSN that cannot be delivered is never answered
by another. Pure: the caller queues it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Literal

from mailplan.runtime.decide.message import header_block

Action = Literal["failed", "delayed"]
FIELDS = SMTP.clone(max_line_length=998)  # fields are not folded for looks
RFC822_HEADERS = "text/rfc822-headers"
GLOBAL_HEADERS = b"message/global-headers"
_CONTENT_TYPE = b"Content-Type: "


@dataclass(frozen=True)
class Failure:
    """What happened to one recipient: its status (`5.1.1`) and the reply or reason."""

    recipient: str
    status: str
    diagnostic: str
    remote: str | None = None  # the host that answered, when one did
    smtp: bool = False  # whether `diagnostic` is a remote SMTP reply


def report(
    *,
    hostname: str,
    sender: str,
    queue_id: str,
    arrived: float,
    failures: list[Failure],
    action: Action,
    original: bytes,
    now: float,
    retry_until: float | None = None,
) -> bytes:
    """The DSN for `failures` of one message, addressed to its return path `sender`."""
    failed = action == "failed"
    # a sender with a non-ASCII address can only be written in a UTF-8 header (RFC 6532);
    # such a DSN goes out with SMTPUTF8, as any mail to that address must
    utf8 = not sender.isascii()
    subject = "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still trying)"
    message = _cover(hostname, sender, subject, now, utf8)
    message.set_content(_explanation(hostname, failures, failed, retry_until))
    until = None if failed else retry_until
    status = _delivery_status(hostname, queue_id, arrived, failures, action, now, until)
    message.make_mixed()
    message.attach(status)  # type: ignore[arg-type]  # a plain Message part is valid MIME
    head = header_block(original)
    message.attach(_headers_part(head))  # type: ignore[arg-type]
    message.set_type("multipart/report")
    message.set_param("report-type", "delivery-status")
    made = message.as_bytes(policy=FIELDS.clone(utf8=utf8))
    if _in_utf8(head):
        # RFC 6533 6.3: the email package writes a message/* part only from ASCII, so
        # the part is made as text/rfc822-headers and named here (its own header line,
        # the first such line: the parts before it are ours)
        made = made.replace(
            _CONTENT_TYPE + RFC822_HEADERS.encode(), _CONTENT_TYPE + GLOBAL_HEADERS, 1
        )
    return made


def _cover(hostname: str, sender: str, subject: str, now: float, utf8: bool) -> EmailMessage:
    """The DSN's own header fields, from the mailer-daemon to `sender`."""
    message = EmailMessage(policy=SMTP.clone(utf8=True) if utf8 else SMTP)
    message["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    message["To"] = sender
    message["Subject"] = subject
    message["Date"] = format_datetime(_when(now))
    message["Message-ID"] = make_msgid(domain=hostname)
    message["Auto-Submitted"] = "auto-replied"
    return message


def _delivery_status(
    hostname: str,
    queue_id: str,
    arrived: float,
    failures: list[Failure],
    action: Action,
    now: float,
    until: float | None,
) -> Message:
    """The message/delivery-status part: the block for the message, then one per recipient."""
    per_message = Message(policy=FIELDS)
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Mailplan-Queue-ID"] = queue_id
    per_message["Arrival-Date"] = format_datetime(_when(arrived))
    blocks = [per_message, *(_recipient_block(f, action, now, until) for f in failures)]
    status = Message(policy=SMTP)
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)  # type: ignore[arg-type]
    return status


def _recipient_block(failure: Failure, action: Action, now: float, until: float | None) -> Message:
    """The delivery-status fields of one recipient; `until` only in a delay warning."""
    block = Message(policy=FIELDS)
    block["Final-Recipient"] = recipient_field(failure.recipient)
    block["Action"] = action
    block["Status"] = failure.status
    if failure.remote:
        block["Remote-MTA"] = f"dns; {failure.remote}"
    kind = "smtp" if failure.smtp else "x-mailplan"
    diagnostic = _one_line(failure.diagnostic).encode("ascii", "replace").decode()
    block["Diagnostic-Code"] = f"{kind}; {diagnostic}"
    block["Last-Attempt-Date"] = format_datetime(_when(now))
    if until is not None:
        block["Will-Retry-Until"] = format_datetime(_when(until))
    return block


def _headers_part(head: bytes) -> Message:
    """The original message's header, as text/rfc822-headers (renamed later when UTF-8)."""
    headers = Message(policy=SMTP)
    headers["Content-Type"] = RFC822_HEADERS
    headers["Content-Transfer-Encoding"] = "8bit"
    headers.set_payload(head.decode("ascii", "surrogateescape"))
    return headers


def _in_utf8(head: bytes) -> bool:
    """Whether header fields are in UTF-8 (RFC 6532): not ASCII, and valid UTF-8 (8-bit
    bytes of another charset are kept as text/rfc822-headers, as they came)."""
    if head.isascii():
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def recipient_field(address: str) -> str:
    """A Final-Recipient value: `rfc822; ADDRESS`, or for an address that is not ASCII
    `utf-8; ADDRESS` in RFC 6533's xtext (`\\x{HEX}` for what is not plain ASCII, and
    for `+`, `=` and `\\`), which keeps the field ASCII."""
    if address.isascii():
        return f"rfc822; {address}"
    return "utf-8; " + "".join(
        c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )


def _explanation(hostname: str, failures: list[Failure], failed: bool, until: float | None) -> str:
    if failed:
        lines = [
            f"This is the mail system at {hostname}.",
            "",
            "Your message could not be delivered to one or more recipients.",
            "It is attached below. The reasons:",
        ]
    else:
        lines = [
            f"This is the mail system at {hostname}.",
            "",
            "Your message has not been delivered yet to the recipients below.",
            "No action is needed: delivery will be tried again",
        ]
        if until is not None:
            lines[-1] += f" until {format_datetime(_when(until))}"
        lines[-1] += "."
    lines.append("")
    for failure in failures:
        where = f" (from {failure.remote})" if failure.remote else ""
        lines.append(f"<{failure.recipient}>: {_one_line(failure.diagnostic)}{where}")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
