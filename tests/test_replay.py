"""`mailplan diff OLD NEW --replay LOG`: the envelopes a real server logged (JSON log), decided
again under each plan; and the envelope line of the log itself."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import pytest
from dnskit import NameServer, zone_text
from serverkit import LOOPBACK, MailServer, free_port, mailplan
from sitekit import plain, write_site

from mailplan.compiler.pipeline import compile_site
from mailplan.diff.replay import UNDECIDED, decide, render, replay
from mailplan.plan.model import Plan
from mailplan.runtime.decide.policy import Policy
from mailplan.runtime.decide.transaction import Recorded, Transaction

TIMEOUT = 15.0
UNTRUSTED = "127.0.0.9"
ZONE = zone_text("test", "remote IN A 192.0.2.1")


def site(folder: Path, port: int, client_ips: tuple[str, ...] = (LOOPBACK,)) -> Path:
    return write_site(
        folder, listeners={"smtp": plain(port)}, accounts=["alice"], client_ips=client_ips
    )


def plan(folder: Path) -> Plan:
    compiled = compile_site(folder).plan
    assert compiled is not None
    return compiled


def transaction(source: str, sender: str, recipients: list[str], port: int) -> None:
    with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT, source_address=(source, 0)) as client:
        client.ehlo("client.example.com")
        if client.mail(sender)[0] != 250:
            return
        accepted = [r for r in recipients if client.rcpt(r)[0] == 250]
        if accepted:
            client.data(b"Subject: replayed\r\n\r\nreplayed\r\n")


def test_replay_of_a_real_log(tmp_path: Path) -> None:
    port = free_port()
    old = site(tmp_path / "old", port)
    log = tmp_path / "server.log"
    with NameServer(tmp_path, {"test": ZONE}) as dns:
        server = MailServer(
            old, tmp_path, [port], resolver=dns.address,
            extra_arguments=["--log-format", "json"], log_file=log,
        )  # fmt: skip
        with server:
            transaction(UNTRUSTED, "someone@remote.test", ["x@partner.example"], port)
            transaction(
                UNTRUSTED, "someone@remote.test", ["alice@example.com", "y@p.example"], port
            )
            transaction(LOOPBACK, "alice@example.com", ["z@partner.example"], port)
            transaction(UNTRUSTED, "x@nowhere.test", ["alice@example.com"], port)
            with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:  # left before DATA
                client.ehlo("client.example.com")
                client.mail("alice@example.com")
                client.rcpt("alice@example.com")
    envelopes = [
        json.loads(line)["envelope"]
        for line in log.read_text().splitlines()
        if line.startswith("{") and "envelope" in json.loads(line)
    ]
    assert [e["rcpt"] for e in envelopes] == [
        [{"to": "x@partner.example", "reply": "550"}],
        [{"to": "alice@example.com", "reply": "250"}, {"to": "y@p.example", "reply": "550"}],
        [{"to": "z@partner.example", "reply": "250"}],
        [],
        [{"to": "alice@example.com", "reply": "250"}],
    ]
    first = envelopes[0]
    assert (first["client"], first["helo"], first["from"], first["mail"]) == (
        UNTRUSTED, "client.example.com", "someone@remote.test", "250",
    )  # fmt: skip
    assert {v["check"]: v["result"] for v in first["verdicts"]} == {
        "rbl": "none",  # no zone to ask
        "return-path": "pass",
        "spf": "none",
    }
    assert "data" not in first  # no recipient was accepted: DATA never came
    assert envelopes[1]["data"] == "250" and "data" not in envelopes[4]
    assert envelopes[3]["mail"] == "550"
    assert envelopes[3]["verdicts"][-1]["reply"].startswith("550 5.1.8 ")

    # The new site trusts 127.0.0.9: what it sent to other domains is relayed now.
    new = site(tmp_path / "new", port, (LOOPBACK, UNTRUSTED))
    done = mailplan("diff", old, new, "--replay", log)
    assert done.returncode == 3, done.stderr  # wider Client IPs: unsafe
    replayed = done.stdout.split("\nreplay: ", 1)[1]
    assert replayed.splitlines() == [
        f"3 of 5 envelope(s) in {log} change (2 of 5 recipient(s), 1 MAIL FROM without RCPT)",
        "        1  550 5.7.1 -> 250 relayed to p.example",
        "        1  550 5.7.1 -> 250 relayed to partner.example",
        # a trusted client's sender is not checked: its Return-Path verdict does not matter
        "        1  MAIL 550 5.1.8 (return-path) -> MAIL 250 (no RCPT recorded)",
    ]
    as_json = json.loads(mailplan("diff", old, new, "--replay", log, "--format", "json").stdout)
    assert as_json["replay"]["changed_envelopes"] == 3
    assert as_json["replay"]["not_json"] == 0


def transact(**fields: object) -> Transaction:
    base: dict[str, object] = {
        "client": UNTRUSTED, "tls": False, "helo": "h", "login": None, "sender": "s@remote.test",
    }  # fmt: skip
    return Transaction(**{**base, **fields})  # type: ignore[arg-type]


@pytest.fixture
def plans(tmp_path: Path) -> tuple[Plan, Plan]:
    old = site(tmp_path / "old", 2525)
    narrow = write_site(
        tmp_path / "new",
        listeners={"smtp": plain(2525)},
        accounts=["alice"],
        extra={"receiving": {"spf": {"scope": "everybody"}}, "limits": {"max_recipients": 1}},
    )
    return plan(old), plan(narrow)


def test_a_check_the_log_has_no_verdict_of_is_undecided(plans: tuple[Plan, Plan]) -> None:
    old, new = plans
    # a Client IP: no check ran; the new plan checks SPF for everybody
    trusted = transact(client=LOOPBACK, recipients=[("alice@example.com", "250")])
    assert decide(Policy(old), trusted) == ["250 to account alice@example.com"]
    assert decide(Policy(new), trusted) == [UNDECIDED]
    checked = transact(
        client=LOOPBACK,
        verdicts=[Recorded("spf", "fail", "550 5.7.23 SPF fail")],
        recipients=[("alice@example.com", "250"), ("alice@example.com", "250")],
    )
    # refused by the recorded verdict; and the new plan's limit of one recipient
    assert decide(Policy(new), checked) == ["MAIL 550 5.7.23 (spf)"] * 2
    passed = transact(
        client=LOOPBACK,
        verdicts=[Recorded("spf", "pass")],
        recipients=[("alice@example.com", "250"), ("alice@example.com", "250")],
    )
    assert decide(Policy(new), passed)[1].startswith("452 ")


def test_logins_relay(plans: tuple[Plan, Plan]) -> None:
    old, _ = plans
    outsider = transact(
        verdicts=[Recorded("return-path", "pass"), Recorded("spf", "pass")],
        recipients=[("x@elsewhere.example", "550")],
    )
    assert decide(Policy(old), outsider) == ["550 5.7.1"]
    logged_in = transact(login="alice@example.com", recipients=[("x@elsewhere.example", "250")])
    assert decide(Policy(old), logged_in) == ["250 relayed to elsewhere.example"]


def test_lines_that_are_no_envelopes(plans: tuple[Plan, Plan]) -> None:
    old, new = plans
    envelope = transact(client=LOOPBACK, recipients=[("alice@example.com", "250")]).record()
    lines = [
        "2026-12-07 04:00:00,000 mailplan.server INFO serving plan sha256:x\n",
        json.dumps({"level": "info", "message": "serving"}) + "\n",
        "<6>" + json.dumps({"message": "envelope", "envelope": envelope}) + "\n",
        json.dumps(envelope) + "\n",  # a file of envelopes
        json.dumps({"envelope": {"client": "x"}}) + "\n",
        "\n",
    ]
    report = replay(old, new, lines)
    assert (report.envelopes, report.changed_envelopes, report.not_json) == (2, 2, 1)
    assert [(u.line, u.why) for u in report.unreadable] == [(5, "an envelope without 'rcpt'")]
    text = render(report, "LOG", "text")
    assert text.splitlines() == [
        "replay: 2 of 2 envelope(s) in LOG change (2 of 2 recipient(s))",
        f"        2  250 to account alice@example.com -> {UNDECIDED}",
        "  line 5: an envelope without 'rcpt'",
        "  1 line(s) are not JSON: is the log --log-format json?",
    ]
    assert "| 2 | `250 to account alice@example.com` |" in render(report, "LOG", "markdown")


def test_a_log_that_cannot_be_read(tmp_path: Path) -> None:
    old = site(tmp_path / "old", 2525)
    done = mailplan("diff", old, old, "--replay", tmp_path / "missing.log")
    assert done.returncode == 2
    assert (
        done.stderr
        == f"mailplan: cannot read {tmp_path / 'missing.log'}: No such file or directory\n"
    )
