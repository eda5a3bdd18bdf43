"""What rspamd's `/checkv2` answer means (runtime/decide/spam.py): the reply for each
action, the X-Spam-* headers, the Subject rspamd rewrote, forged headers removed."""

from __future__ import annotations

from typing import Any

import pytest

from mailplan.runtime.decide import replies, spam

MESSAGE = (
    b"Received: from x\r\n"
    b"X-Spam-Flag: NO\r\n"
    b"x-spam-status: No,\r\n  score=-100\r\n"
    b"Subject: cheap\r\n  pills\r\n"
    b"From: <a@remote.test>\r\n"
    b"\r\n"
    b"X-Spam-Flag: NO in the body stays\r\n"
)


def answer(action: str, **more: Any) -> dict[str, Any]:
    return {"action": action, "score": 7.5, "required_score": 15.0, "symbols": {}} | more


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        ("reject", replies.SPAM_REJECTED),
        ("soft reject", replies.SPAM_TRY_LATER),
        ("greylist", replies.GREYLISTED),
    ],
    ids=["reject", "soft-reject", "greylist"],
)
def test_refusing_actions_are_replies(action: str, reply: str) -> None:
    verdict = spam.verdict(answer(action))
    assert verdict.reply == reply
    assert reply[:9] in ("550 5.7.1", "451 4.7.1")


def test_rspamds_own_words_come_with_our_codes() -> None:
    said = answer("reject", messages={"smtp_message": "Gtube   pattern"})
    assert spam.verdict(said).reply == "550 5.7.1 Gtube pattern"
    control = answer("reject", messages={"smtp_message": "bad\r\n250 ok"})
    assert spam.verdict(control).reply == replies.SPAM_REJECTED


@pytest.mark.parametrize(
    ("action", "flag"),
    [("add header", "YES"), ("rewrite subject", "YES"), ("no action", "NO")],
    ids=["add-header", "rewrite-subject", "no-action"],
)
def test_accepting_actions_add_the_headers(action: str, flag: str) -> None:
    symbols = {"GTUBE": {"score": 0.5}, "BAYES_SPAM": {"score": 5.1}, "R_DKIM_NA": {"score": 0}}
    verdict = spam.verdict(answer(action, symbols=symbols, subject="[SPAM] cheap pills"))
    assert verdict.reply is None
    out = spam.apply(MESSAGE, verdict)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(
        f"X-Spam-Flag: {flag}\r\nX-Spam-Score: 7.50\r\nX-Spam-Action: {action}\r\n".encode()
    )
    status = "Yes" if flag == "YES" else "No"
    assert (
        f"X-Spam-Status: {status}, score=7.50 required=15.00 tests=BAYES_SPAM,GTUBE,R_DKIM_NA"
        in head.decode()
    )
    assert head.lower().count(b"x-spam-flag") == 1  # the sender's own is gone
    assert b"score=-100" not in head
    assert body == b"X-Spam-Flag: NO in the body stays\r\n"
    subject = b"Subject: [SPAM] cheap pills\r\n" if action == "rewrite subject" else None
    assert (subject or b"Subject: cheap\r\n  pills\r\n") in head + b"\r\n"


def test_a_rewritten_subject_that_is_not_ascii_is_encoded() -> None:
    verdict = spam.verdict(answer("rewrite subject", subject="*** SPAM *** grüße"))
    out = spam.apply(b"From: a\n\nbody\n", verdict)
    assert b"Subject: =?utf-8?" in out and out.endswith(b"\n\nbody\n")


def test_headers_rspamd_asks_for_are_added_when_printable() -> None:
    milter = {
        "add_headers": {"X-Rspamd-Server": {"value": "scan1"}, "Bad Name": "x", "X-B": "a\r\nb"}
    }
    verdict = spam.verdict(answer("no action", milter=milter))
    assert ("X-Rspamd-Server", "scan1") in verdict.headers
    assert all(name not in ("Bad Name", "X-B") for name, _ in verdict.headers)


@pytest.mark.parametrize(
    "result",
    [{}, {"action": 3, "score": 1}, {"action": "reject", "score": "high"}],
    ids=["empty", "action-not-text", "score-not-number"],
)
def test_an_answer_that_is_no_result_is_unreadable(result: dict[str, Any]) -> None:
    with pytest.raises(spam.Unreadable):
        spam.verdict(result)
