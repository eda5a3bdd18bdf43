"""The Authentication-Results header (runtime/decide/authresults.py): written by authres,
read back by authres, and the incoming fields that claim our name removed."""

from __future__ import annotations

import authres
import pytest

from mailplan.runtime.decide.authresults import (
    ArcResult,
    SignatureResult,
    claims,
    header,
    without_ours,
)
from mailplan.runtime.decide.dmarc import DmarcVerdict

HOST = "mail.example.com"


def parsed(text: str) -> authres.AuthenticationResultsHeader:
    return authres.all_features().parse(" ".join(text.split()))


def test_every_method_in_one_header_that_authres_reads_back() -> None:
    text = header(
        HOST,
        ("pass", "mailfrom", "sender.test"),
        [
            SignatureResult("pass", "sender.test", "s1", "ed25519-sha256"),
            SignatureResult("fail", "other.test", "s2", "rsa-sha256", "body changed"),
        ],
        DmarcVerdict("pass", "sender.test", "reject", reason="aligned DKIM pass"),
        ArcResult("none"),
    )
    assert text.startswith(f"Authentication-Results: {HOST};\r\n\t")
    found = parsed(text)
    assert found.authserv_id == HOST
    assert [(r.method, r.result) for r in found.results] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dkim", "fail"),
        ("dmarc", "pass"),
        ("arc", "none"),
    ]
    assert found.results[0].smtp_mailfrom == "sender.test"
    assert found.results[1].header_d == "sender.test"
    assert found.results[1].header_s == "s1"
    assert found.results[3].header_from == "sender.test"


def test_no_signature_is_dkim_none_and_a_bounce_is_judged_on_helo() -> None:
    text = header(HOST, ("neutral", "helo", "client.test"), [], None, None)
    found = parsed(text)
    assert [(r.method, r.result) for r in found.results] == [("spf", "neutral"), ("dkim", "none")]
    assert found.results[0].smtp_helo == "client.test"


def test_reasons_are_comments_with_nothing_that_breaks_them() -> None:
    text = header(
        HOST, None, [SignatureResult("permerror", "", "", "", "bad (x) \\ \x00 y")], None, None
    )
    assert "dkim=permerror (bad x y)" in " ".join(text.split())
    parsed(text)


@pytest.mark.parametrize(
    ("value", "ours"),
    [
        (f"{HOST}; dkim=pass", True),
        ("MAIL.Example.COM; spf=pass smtp.mailfrom=a.test", True),
        (f"{HOST} (a comment); none", True),
        (f"{HOST}; this is not ( parseable", True),  # judged by its first word
        ("mx.google.com; dkim=pass header.d=a.test", False),
        (f"{HOST}.evil.test; dkim=pass", False),
        ("", False),
    ],
)
def test_claims(value: str, ours: bool) -> None:
    assert claims(value, HOST) is ours


def test_forged_fields_are_removed_and_the_others_kept_byte_for_byte() -> None:
    message = (
        b"Received: from x\r\n\tby y; Mon, 1 Jan 2026 00:00:00 +0000\r\n"
        b"Authentication-Results: mail.example.com;\r\n\tdkim=pass header.d=bank.test\r\n"
        b"Authentication-Results: mx.other.test; spf=pass\r\n"
        b"authentication-results: MAIL.EXAMPLE.COM; dmarc=pass\r\n"
        b"X-DMARC-Quarantine: nothing to see\r\n"
        b"From: a@b.test\r\n"
        b"\r\n"
        b"Authentication-Results: mail.example.com; in the body stays\r\n"
    )
    cleaned, removed = without_ours(message, HOST)
    assert removed == 3
    assert cleaned == (
        b"Received: from x\r\n\tby y; Mon, 1 Jan 2026 00:00:00 +0000\r\n"
        b"Authentication-Results: mx.other.test; spf=pass\r\n"
        b"From: a@b.test\r\n"
        b"\r\n"
        b"Authentication-Results: mail.example.com; in the body stays\r\n"
    )


def test_a_message_without_forgeries_is_the_same_object() -> None:
    message = b"From: a@b.test\r\nSubject: hi\r\n\r\nbody\r\n"
    cleaned, removed = without_ours(message, HOST)
    assert cleaned is message and removed == 0
