"""Delivery status notifications, parsed back with the email package
(runtime/decide/dsn.py, RFC 3464)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from mailplan.runtime.decide import dsn

HOST = "mail.example.test"
ARRIVED = 1_700_000_000.0
NOW = ARRIVED + 3600
UNTIL = ARRIVED + 5 * 86400

ORIGINAL = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test, carol@remote.test\r\n"
    b"Subject: caf\xc3\xa9 au lait\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"the secret body\r\n"
    b"\r\n"
    b"second paragraph\r\n"
)

REFUSED = dsn.Failure(
    "bob@remote.test", "5.1.1", "550 5.1.1 <bob@remote.test>: no such user", "mx.remote.test", True
)
PIPE_FAILED = dsn.Failure("carol@remote.test", "5.3.0", "pipe report: exit status 1: oops")
DEFERRED = dsn.Failure(
    "bob@remote.test", "4.2.1", "451 4.2.1 mailbox busy, try later", "mx.remote.test", True
)


def make(**changes: Any) -> bytes:
    arguments: dict[str, Any] = {
        "hostname": HOST,
        "sender": "alice@example.test",
        "queue_id": "Q1234",
        "arrived": ARRIVED,
        "failures": [REFUSED],
        "action": "failed",
        "original": ORIGINAL,
        "now": NOW,
    }
    arguments.update(changes)
    return dsn.report(**arguments)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_parts())  # type: ignore[arg-type]


def status_blocks(message: EmailMessage) -> list[Message]:
    status = parts(message)[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    return blocks


def text_of(message: EmailMessage) -> str:
    text = parts(message)[0].get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def when(text: str) -> float:
    return parsedate_to_datetime(text).timestamp()


# --- the shape RFC 3464 requires ------------------------------------------------------------


def test_bounce_is_a_multipart_report_with_three_parts() -> None:
    message = parse(make(original=b"Subject: plain\r\n\r\nbody\r\n"))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["MIME-Version"] == "1.0"
    assert [part.get_content_type() for part in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert message.defects == []
    assert all(part.defects == [] for part in parts(message))


def test_bounce_header() -> None:
    message = parse(make())
    assert message["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert message["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOST}"
    assert message["To"] == "alice@example.test"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert when(message["Date"]) == NOW
    assert message["Message-ID"].endswith(f"@{HOST}>")


def test_each_report_has_its_own_message_id() -> None:
    assert parse(make())["Message-ID"] != parse(make())["Message-ID"]


def test_bounce_is_ready_for_smtp() -> None:
    raw = make(failures=[replace_diagnostic(REFUSED, "550 " + "very long reason " * 80)])
    lines = raw.split(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in lines) <= 998


def replace_diagnostic(failure: dsn.Failure, diagnostic: str) -> dsn.Failure:
    return dsn.Failure(failure.recipient, failure.status, diagnostic, failure.remote, failure.smtp)


# --- message/delivery-status ----------------------------------------------------------------


def test_per_message_fields() -> None:
    first = status_blocks(parse(make()))[0]
    assert first["Reporting-MTA"] == f"dns; {HOST}"
    assert first["X-Mailplan-Queue-ID"] == "Q1234"
    assert when(first["Arrival-Date"]) == ARRIVED
    assert "Final-Recipient" not in first


def test_per_recipient_fields_of_an_smtp_refusal() -> None:
    blocks = status_blocks(parse(make()))
    assert len(blocks) == 2
    block = blocks[1]
    assert block["Final-Recipient"] == "rfc822; bob@remote.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx.remote.test"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@remote.test>: no such user"
    assert when(block["Last-Attempt-Date"]) == NOW
    assert "Will-Retry-Until" not in block


def test_local_failure_has_no_remote_mta_and_its_own_diagnostic_type() -> None:
    block = status_blocks(parse(make(failures=[PIPE_FAILED])))[1]
    assert block["Final-Recipient"] == "rfc822; carol@remote.test"
    assert block["Status"] == "5.3.0"
    assert "Remote-MTA" not in block
    assert block["Diagnostic-Code"] == "x-mailplan; pipe report: exit status 1: oops"


def test_one_block_per_recipient_in_order() -> None:
    blocks = status_blocks(parse(make(failures=[REFUSED, PIPE_FAILED])))
    assert [block["Final-Recipient"] for block in blocks[1:]] == [
        "rfc822; bob@remote.test",
        "rfc822; carol@remote.test",
    ]
    assert [block["Status"] for block in blocks[1:]] == ["5.1.1", "5.3.0"]


def test_multiline_reply_becomes_one_diagnostic_line() -> None:
    failure = replace_diagnostic(REFUSED, "550-5.1.1 first line\n550 5.1.1   second line\r\n")
    block = status_blocks(parse(make(failures=[failure])))[1]
    assert block["Diagnostic-Code"] == "smtp; 550-5.1.1 first line 550 5.1.1 second line"


def test_long_diagnostic_is_folded_and_unfolds_unchanged() -> None:
    reason = "550 5.7.1 " + " ".join(f"word{n}" for n in range(60))
    block = status_blocks(parse(make(failures=[replace_diagnostic(REFUSED, reason)])))[1]
    assert block["Diagnostic-Code"] == f"smtp; {reason}"


# --- the delay warning ------------------------------------------------------------------------


def test_delay_warning() -> None:
    message = parse(make(failures=[DEFERRED], action="delayed", retry_until=UNTIL))
    assert message["Subject"] == "Delayed Mail (still trying)"
    assert message.get_content_type() == "multipart/report"
    block = status_blocks(message)[1]
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.2.1"
    assert block["Diagnostic-Code"] == "smtp; 451 4.2.1 mailbox busy, try later"
    assert when(block["Will-Retry-Until"]) == UNTIL
    text = text_of(message)
    assert "has not been delivered yet" in text
    assert datetime.fromtimestamp(UNTIL, UTC).strftime("%d %b %Y") in text


def test_delay_warning_without_a_limit_has_no_retry_until() -> None:
    message = parse(make(failures=[DEFERRED], action="delayed"))
    assert "Will-Retry-Until" not in status_blocks(message)[1]
    assert "will be tried again." in text_of(message)


def test_a_bounce_never_says_it_will_retry() -> None:
    message = parse(make(retry_until=UNTIL))
    assert "Will-Retry-Until" not in status_blocks(message)[1]


# --- the text part --------------------------------------------------------------------------


def test_text_part_names_each_recipient_its_reason_and_the_host() -> None:
    text = text_of(parse(make(failures=[REFUSED, PIPE_FAILED])))
    assert text.startswith(f"This is the mail system at {HOST}.\n")
    assert "could not be delivered" in text
    assert (
        "<bob@remote.test>: 550 5.1.1 <bob@remote.test>: no such user (from mx.remote.test)\n"
        in text
    )
    assert "<carol@remote.test>: pipe report: exit status 1: oops\n" in text


# --- text/rfc822-headers -----------------------------------------------------------------------


def test_original_header_only_with_eight_bit_bytes_kept() -> None:
    raw = make()
    headers = parts(parse(raw))[2]
    assert headers.get_content_type() == "message/global-headers"  # its Subject is UTF-8
    assert headers["Content-Transfer-Encoding"] == "8bit"
    assert b"Subject: caf\xc3\xa9 au lait\r\n" in raw
    assert b"secret body" not in raw
    assert b"second paragraph" not in raw
    original = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]
    assert original in raw  # byte for byte
    (fields,) = headers.get_payload()  # a message/* part: parsed as the header it holds
    assert fields["Subject"] == "caf\u00e9 au lait"
    assert fields["Message-ID"] == "<1@example.test>"


def test_original_with_bare_newlines() -> None:
    original = b"From: alice@example.test\nSubject: hi\n\nbody text\n"
    raw = make(original=original)
    assert b"Subject: hi\r\n" in raw
    assert b"body text" not in raw


# --- header_block --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "header"),
    [
        pytest.param(b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n", id="crlf"),
        pytest.param(b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n", id="lf"),
        pytest.param(b"A: 1\r\nB: 2\r\n", b"A: 1\r\nB: 2\r\n", id="no-body"),
        pytest.param(b"A: 1\r\n\r\nx\r\n\r\ny", b"A: 1\r\n", id="blank-lines-in-body"),
        pytest.param(b"A: 1\n\nbody\r\n\r\nmore\r\n", b"A: 1\n", id="lf-header-crlf-body"),
    ],
)
def test_header_block(message: bytes, header: bytes) -> None:
    assert dsn.header_block(message) == header


@pytest.mark.parametrize(
    ("address", "field"),
    [
        ("bob@remote.test", "rfc822; bob@remote.test"),
        ("bob+tag@remote.test", "rfc822; bob+tag@remote.test"),
        ("j\u00f6rg@remote.test", "utf-8; j\\x{F6}rg@remote.test"),
        (
            "\u7528\u6237+a=b@\u4f8b\u5b50.test",
            "utf-8; \\x{7528}\\x{6237}\\x{2B}a\\x{3D}b@\\x{4F8B}\\x{5B50}.test",
        ),
        ("\U0001f600@remote.test", "utf-8; \\x{1F600}@remote.test"),
    ],
)
def test_final_recipient_of_an_address_that_is_not_ascii(address: str, field: str) -> None:
    """RFC 6533: the `utf-8` address type, in xtext, so the status block stays ASCII."""
    assert dsn.recipient_field(address) == field
    blocks = status_blocks(parse(make(failures=[dsn.Failure(address, "5.1.1", "no")])))
    assert blocks[1]["Final-Recipient"] == field


def test_a_report_to_a_sender_that_is_not_ascii_has_a_utf8_header() -> None:
    """RFC 6532: the address is written as it is (the DSN goes out with SMTPUTF8); an
    encoded word is no address."""
    raw = make(sender="j\u00f6rg@example.test")
    assert "To: j\u00f6rg@example.test\r\n".encode() in raw
    assert b"=?utf-8?" not in raw.split(b"\r\n\r\n", 1)[0]
    assert parse(raw)["To"] == "j\u00f6rg@example.test"
    assert make().split(b"\r\n\r\n", 1)[0].isascii()  # an ASCII sender: an ASCII header


@pytest.mark.parametrize(
    ("subject", "kind"),
    [
        (b"plain", "text/rfc822-headers"),
        (b"caf\xc3\xa9", "message/global-headers"),  # UTF-8 (RFC 6532)
        (b"caf\xe9", "text/rfc822-headers"),  # Latin-1 bytes: no UTF-8, kept as they came
    ],
)
def test_the_original_header_part_says_what_it_holds(subject: bytes, kind: str) -> None:
    raw = make(original=b"Subject: " + subject + b"\r\n\r\nbody\r\n")
    headers = parts(parse(raw))[2]
    assert headers.get_content_type() == kind
    assert b"Subject: " + subject + b"\r\n" in raw
