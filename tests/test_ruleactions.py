"""runtime/rules/actions.py: what actions do to message bytes, and the auto-reply."""

from __future__ import annotations

import email
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP, default
from pathlib import Path

import pytest

from mailplan.plan.model import Pipe, Source
from mailplan.runtime.rules.actions import (
    MemoryReplyLog,
    SqliteReplyLog,
    add_header,
    attachments,
    auto_reply,
    envelope_sender,
    flags,
    pipe_command,
    rejection,
    reply_recipients,
    resent,
    tag_subject,
    why_not_reply,
)
from mailplan.runtime.rules.engine import Headers
from tests.rulekit import MESSAGE, THURSDAY, facts

RAW = MESSAGE.encode()


def test_add_header_puts_the_field_on_top() -> None:
    changed = add_header(RAW, "X-Rule: yes")
    assert changed == b"X-Rule: yes\r\n" + RAW
    assert Headers.parse(changed).get("x-rule") == "yes"
    assert add_header(b"Subject: a\n\nb\n", "X-A: 1") == b"X-A: 1\nSubject: a\n\nb\n"


def test_tag_subject_prefixes_once() -> None:
    tagged = tag_subject(b"Subject: hello\r\nTo: a@b\r\n\r\nSubject: body\r\n", "[SPAM]")
    assert tagged == b"Subject: [SPAM] hello\r\nTo: a@b\r\n\r\nSubject: body\r\n"
    assert tag_subject(tagged, "[spam]") == tagged


def test_tag_subject_of_a_folded_subject_keeps_the_folding() -> None:
    message = b"Subject: a long\r\n subject\r\n\r\nbody"
    assert tag_subject(message, "[x]") == b"Subject: [x] a long\r\n subject\r\n\r\nbody"
    assert Headers.parse(tag_subject(message, "[x]")).get("subject") == "[x] a long subject"


def test_tag_subject_makes_a_subject_when_there_is_none() -> None:
    assert tag_subject(b"To: a@b\r\n\r\nbody", "[x]") == b"Subject: [x]\r\nTo: a@b\r\n\r\nbody"


def test_forward_prepends_resent_fields_and_redirect_keeps_the_headers() -> None:
    forwarded = resent(RAW, "alice@example.com", ["bob@example.net"], THURSDAY, "example.com")
    headers = Headers.parse(forwarded)
    assert headers.get("resent-from") == "alice@example.com"
    assert headers.get("resent-to") == "bob@example.net"
    assert headers.get("resent-date") == "Thu, 26 Nov 2026 14:30:00 -0000"
    assert (headers.get("resent-message-id") or "").endswith("@example.com>")
    assert forwarded.endswith(RAW)
    assert envelope_sender("Forward to", "bob@remote.test", "alice@example.com") == (
        "alice@example.com"
    )
    for verb in ("Redirect to", "Mirror to"):
        assert envelope_sender(verb, "bob@remote.test", "alice@example.com") == "bob@remote.test"
    # A forwarded bounce stays a bounce: its failure must not bounce back (no ping-pong).
    assert envelope_sender("Forward to", "", "alice@example.com") == ""


def test_mark_gives_maildir_flags() -> None:
    assert flags(
        [("Mark", ("Seen", "Flagged")), ("Store in", ("Junk",)), ("Mark", ("Draft",))]
    ) == ("DFS")
    assert flags([("Mark", ("Answered", "Deleted"))]) == "RT"


def test_execute_runs_only_a_declared_pipe() -> None:
    pipe = Pipe("spam-report", Source("site.yaml", 1, 1), "/usr/bin/report", ("--learn",), 60)
    assert pipe_command([pipe], "spam-report --quiet") == ("/usr/bin/report", "--learn", "--quiet")
    assert pipe_command([pipe], "rm -rf /") is None


def test_copy_attachments_keeps_only_the_attachments() -> None:
    message = EmailMessage()
    message["From"] = "bob@remote.test"
    message["Subject"] = "the invoice"
    message.set_content("see attached")
    message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="i.pdf")
    copy = attachments(message.as_bytes(policy=SMTP))
    assert copy is not None
    parsed = email.message_from_bytes(copy, _class=EmailMessage, policy=default)
    files = [part.get_filename() for part in parsed.iter_attachments()]
    assert files == ["i.pdf"]
    assert parsed["Subject"] == "the invoice"
    assert attachments(RAW) is None


@pytest.mark.parametrize(
    ("prefix", "sender", "reason"),
    [
        ("", "", "a bounce (null sender)"),
        ("", "MAILER-DAEMON@remote.test", "MAILER-DAEMON@remote.test is a mail system"),
        ("", "owner-staff@lists.test", "owner-staff@lists.test is a mail system"),
        ("", "staff-request@lists.test", "staff-request@lists.test is a mail system"),
        ("Auto-Submitted: auto-replied\r\n", "bob@remote.test", "Auto-Submitted: auto-replied"),
        ("Precedence: list\r\n", "bob@remote.test", "Precedence: list"),
        ("Precedence: junk\r\n", "bob@remote.test", "Precedence: junk"),
        ("List-Unsubscribe: <mailto:u@l>\r\n", "bob@remote.test", "a mailing list message"),
    ],
)
def test_no_auto_reply_to_bounces_lists_or_machines(prefix: str, sender: str, reason: str) -> None:
    about = facts(prefix + MESSAGE, sender=sender)
    found = why_not_reply(about, "alice@example.com", None, 86400)
    assert found is not None and found.startswith(reason)


def test_auto_reply_at_most_once_per_period() -> None:
    log = MemoryReplyLog()
    about = facts()
    now = THURSDAY.timestamp()
    assert (
        why_not_reply(
            about, "alice@example.com", log.last("alice@example.com", "bob@remote.test"), 3600
        )
        is None
    )
    log.record("alice@example.com", "bob@remote.test", now)
    last = log.last("ALICE@example.com", "Bob@remote.test")
    assert why_not_reply(about, "alice@example.com", last, 3600) == (
        "bob@remote.test was answered less than 3600 seconds ago"
    )
    later = facts(now=datetime.fromtimestamp(now + 3600))
    assert why_not_reply(later, "alice@example.com", last, 3600) is None


def test_no_auto_reply_to_oneself() -> None:
    found = why_not_reply(facts(sender="alice@example.com"), "Alice@example.com", None, 60)
    assert found == "the sender is the responder"


def test_the_reply_log_survives_a_restart(tmp_path: Path) -> None:
    log = SqliteReplyLog(tmp_path / "replies.sqlite")
    log.record("alice@example.com", "bob@remote.test", 1000.5)
    log.close()
    again = SqliteReplyLog(tmp_path / "replies.sqlite")
    assert again.last("alice@example.com", "BOB@remote.test") == 1000.5
    assert again.last("alice@example.com", "carol@remote.test") is None
    again.close()


def test_reply_recipients() -> None:
    about = facts()
    assert reply_recipients(about, "alice@example.com", everyone=False) == ("bob@remote.test",)
    assert reply_recipients(about, "alice@example.com", everyone=True) == (
        "bob@remote.test",
        "carol@example.com",
        "dave@other.test",
    )


def test_the_auto_reply_says_what_it_is() -> None:
    headers = Headers.parse(b"Subject: lunch?\r\nMessage-ID: <m1@remote.test>\r\n\r\n")
    raw = auto_reply(headers, "alice@example.com", ["bob@remote.test"], "I am away.", THURSDAY)
    reply = email.message_from_bytes(raw, _class=EmailMessage, policy=default)
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<m1@remote.test>"
    assert reply["References"] == "<m1@remote.test>"
    assert reply["Subject"] == "Re: lunch?"
    assert reply["From"] == "alice@example.com"
    assert reply["To"] == "bob@remote.test"
    assert reply.get_content().rstrip() == "I am away."
    assert b"\r\n" in raw
    again = auto_reply(
        Headers.parse(b"Subject: Re: x\r\n\r\n"), "a@b.test", ["c@d.test"], "t", THURSDAY
    )
    parsed = email.message_from_bytes(again, _class=EmailMessage, policy=default)
    assert parsed["Subject"] == "Re: x"
    assert parsed["In-Reply-To"] is None


def test_reject_with_gives_an_smtp_reply() -> None:
    assert rejection("550 5.7.1 no executables") == "550 5.7.1 no executables"
    assert rejection("451 4.7.1 try later") == "451 4.7.1 try later"
    assert rejection("not wanted here") == "550 5.7.1 not wanted here"
    assert rejection(None) == "550 5.7.1 rejected by a rule"
