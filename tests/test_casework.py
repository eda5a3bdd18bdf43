"""`mailplan test`: the site's own tests, judged by the server's own decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailplan.cli import main
from mailplan.runtime.dns.lookup import zone_of
from tests.conftest import EXAMPLE, resealed

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
  client_ips: |
    10.0.0.0/8
domains:
  example.com:
    accounts:
      alice: {}
routing: router.cgr
tests:
  - {name: local, client: 203.0.113.5, to: alice@example.com, expect: local alice@example.com}
  - {name: wrong module, to: alice@example.com, expect: smtp example.com}
  - {name: relay refused, client: 203.0.113.5, to: x@elsewhere.test, expect: reject 5.7.1}
  - {name: any reject, client: 203.0.113.5, to: bob@example.com, expect: reject}
  - {name: wrong code, client: 203.0.113.5, to: bob@example.com, expect: reject 5.7.1}
  - {name: client relays, client: 10.1.2.3, to: x@elsewhere.test, expect: smtp elsewhere.test}
  - {name: bad sender, from: x@bad.test, to: alice@example.com, expect: reject 5.7.1}
  - {name: login, kind: access, to: "alice%example.com", expect: local alice@example.com}
  - {name: no login, kind: access, to: nobody, expect: reject 5.1.1}
"""

ROUTER = "<*@bad.test> = error\n"


def test_every_case_is_judged_and_failures_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "site.yaml").write_text(SITE)
    (tmp_path / "router.cgr").write_text(ROUTER)
    assert main(["test", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "ok    site.yaml:12  local: local alice@example.com",
        "FAIL  site.yaml:13  wrong module: expected smtp example.com, got local alice@example.com",
        "ok    site.yaml:14  relay refused: reject 5.7.1",
        "ok    site.yaml:15  any reject: reject 5.1.1",
        "FAIL  site.yaml:16  wrong code: expected reject 5.7.1, got reject 5.1.1",
        "ok    site.yaml:17  client relays: smtp elsewhere.test",
        "ok    site.yaml:18  bad sender: reject 5.7.1",
        "ok    site.yaml:19  login: local alice@example.com",
        "ok    site.yaml:20  no login: reject 5.1.1",
        "7 passed, 2 failed",
    ]


def test_the_example_site_proves_its_tests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{len(out) - 1} passed, 0 failed"


def test_a_broken_site_is_not_tested(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "site.yaml").write_text("server: {}\n")
    assert main(["test", str(tmp_path)]) == 1
    assert "MP103" in capsys.readouterr().err


RULES_SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
  client_ips: |
    10.0.0.0/8
domains:
  example.com:
    rules: domain.rules
    accounts:
      alice:
        folders: [Archive]
        rules: alice.rules
server_rules: server.rules
tests:
  - name: spam
    from: x@remote.test
    to: alice@example.com
    headers: {X-Spam: "yes"}
    expect: rule Spam
    actions: [Store in Junk, stop processing]
  - name: outgoing
    client: 10.1.2.3
    from: alice@example.com
    to: x@elsewhere.test
    expect: rule Outgoing
  - name: archive exists
    from: x@remote.test
    to: alice@example.com
    subject: keep this
    expect: rule Keep
  - name: wrong rule
    from: x@remote.test
    to: alice@example.com
    subject: keep this
    expect: rule Spam
  - name: nothing
    from: x@remote.test
    to: alice@example.com
    at: "2026-11-28 09:00"
    expect: no rule
  - name: wrong actions
    from: x@remote.test
    to: alice@example.com
    headers: {X-Spam: "yes"}
    expect: local alice@example.com
    actions: [Discard]
  - name: refused before any rule
    from: x@remote.test
    to: nobody@example.com
    expect: rule Spam
"""
RULES = {
    "server.rules": 'rule "Outgoing" priority 5\n  if Source is trusted\n'
    '  then Add Header "X-Out: 1"\n',
    "domain.rules": 'rule "Spam" priority 5\n  if Header Field is "X-Spam: yes"\n'
    "  then Store in Junk\n  and Stop Processing\n",
    "alice.rules": 'rule "Keep" priority 4\n  if Existing Mailbox is archive\n'
    "  and Subject is keep*\n"
    "  then Store in Archive\n",
}


def test_cases_assert_rule_outcomes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "site.yaml").write_text(RULES_SITE)
    for name, text in RULES.items():
        (tmp_path / name).write_text(text)
    assert main(["test", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "ok    site.yaml:15  spam: rule Spam [Store in Junk; Stop Processing]",
        'ok    site.yaml:21  outgoing: rule Outgoing [Add Header "X-Out: 1"]',
        "ok    site.yaml:26  archive exists: rule Keep [Store in Archive]",
        "FAIL  site.yaml:31  wrong rule: expected rule Spam, got rule Keep [Store in Archive]",
        "ok    site.yaml:36  nothing: no rule []",
        "FAIL  site.yaml:41  wrong actions: expected local alice@example.com [Discard], "
        "got local alice@example.com [Store in Junk; Stop Processing]",
        "FAIL  site.yaml:47  refused before any rule: expected rule Spam, got reject 5.1.1 []",
        "4 passed, 3 failed",
    ]


def test_mailplan_rules_shows_what_the_rules_do_with_a_message_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(
        b"Return-Path: <boss@example.net>\r\nFrom: boss@example.net\r\n"
        b"To: alice@example.com\r\nCc: partner@example.net\r\nSubject: now\r\n\r\nhi\r\n"
    )
    arguments = ["rules", str(message), "--to", "alice@example.com", "--site", str(EXAMPLE)]
    arguments += ["--at", "2026-11-26 12:00"]  # a Thursday, before the evening
    assert main(arguments) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["rules fired: none", "stopped: no; the message goes on: yes"]
    message.write_bytes(message.read_bytes().replace(b"Subject", b"X-Spam-Flag: YES\r\nSubject"))
    assert main([*arguments, "--from", "someone@remote.test"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "rules/example.com.rules:6 rule 'Spam to Junk': Store in Junk",
        "rules/example.com.rules:7 rule 'Spam to Junk': Stop Processing",
        "rules fired: Spam to Junk",
        "stopped: yes; the message goes on: no",
    ]


CHECKS_SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
  client_ips: |
    10.0.0.0/8
receiving:
  spf: {scope: everybody-except-clients, action: reject-softfail}
  rbl: {scope: everybody-except-clients, zones: [bl.test]}
domains:
  example.com:
    accounts:
      alice: {}
tests:
  - name: softfail refused
    client: 203.0.113.5
    from: x@soft.test
    to: alice@example.com
    dns: {soft.test: "@ IN A 203.0.113.80\\n@ IN TXT \\"v=spf1 a ~all\\"\\n"}
    expect: reject 5.7.23
  - name: the same sender from its own address
    client: 203.0.113.80
    from: x@soft.test
    to: alice@example.com
    dns: {soft.test: "@ IN A 203.0.113.80\\n@ IN TXT \\"v=spf1 a ~all\\"\\n"}
    expect: local alice@example.com
  - name: listed
    client: 203.0.113.7
    from: x@soft.test
    to: alice@example.com
    dns: {bl.test: "7.113.0.203 IN A 127.0.0.2\\n"}
    expect: reject 5.7.1
  - name: a client is not checked
    client: 10.0.0.7
    from: x@nowhere.test
    to: alice@example.com
    dns: {bl.test: "7.0.0.10 IN A 127.0.0.2\\n"}
    expect: local alice@example.com
  - name: an unknown domain, temporary helo
    client: 203.0.113.5
    helo: client.test
    from: x@nowhere.test
    to: alice@example.com
    dns: {bl.test: ""}
    expect: reject 5.1.8
"""


def test_cases_with_dns_run_the_receiving_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "site.yaml").write_text(CHECKS_SITE)
    assert main(["test", str(tmp_path)]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.splitlines()[-1] == "5 passed, 0 failed"


DMARC_SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
receiving:
  return_path: {scope: nobody}
domains:
  example.com:
    rules: domain.rules
    accounts:
      alice: {}
tests:
  - name: a forged From of a p=reject domain
    client: 203.0.113.5
    from: x@elsewhere.test
    to: alice@example.com
    headers: {From: ceo@bank.test}
    dns:
      bank.test: '_dmarc IN TXT "v=DMARC1; p=reject"'
    expect: reject 5.7.1
  - name: p=quarantine goes to Junk
    client: 203.0.113.5
    from: x@elsewhere.test
    to: alice@example.com
    headers: {From: news@shop.test}
    dns:
      shop.test: '_dmarc IN TXT "v=DMARC1; p=quarantine"'
    expect: rule Quarantine
  - name: aligned SPF passes DMARC
    client: 203.0.113.80
    from: x@bank.test
    to: alice@example.com
    headers: {From: ceo@bank.test}
    dns:
      bank.test: |
        _dmarc IN TXT "v=DMARC1; p=reject"
        @ IN TXT "v=spf1 ip4:203.0.113.80 -all"
    expect: rule Passed
"""
DMARC_RULES = """\
rule "Quarantine" priority 5
  if   Header Field is "X-DMARC-Quarantine: shop.test*"
  then Store in Junk

rule "Passed" priority 4
  if   Header Field is "Authentication-Results: mail.example.com;*dmarc=pass*"
  then Mark Flagged
"""


def test_cases_with_dns_are_judged_by_dmarc_and_rules_see_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "site.yaml").write_text(DMARC_SITE)
    (tmp_path / "domain.rules").write_text(DMARC_RULES)
    assert main(["test", str(tmp_path)]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.splitlines()[-1] == "3 passed, 0 failed"


def test_dns_of_a_case_that_does_not_parse_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = CHECKS_SITE.replace(
        '"7.113.0.203 IN A 127.0.0.2\\n"', '"7.113.0.203 IN A not-an-ip\\n"'
    )
    (tmp_path / "site.yaml").write_text(broken)
    assert main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "error MP110: test 'listed': the records of bl.test do not parse" in out


GENERATE_SITE = """\
server: {hostname: mail.example.com, main_domain: example.com}
domains:
  example.com:
    accounts: {alice: {}}
tests:
  - name: generated
    from: x@example.org
    to: alice@example.com
    expect: local alice
    dns:
      example.org: |
        $GENERATE 1-10000000 host$ A 192.0.2.1
"""


def test_a_generated_zone_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`$GENERATE 1-10000000` made dnspython expand ten million records: `check` hung."""
    (tmp_path / "site.yaml").write_text(GENERATE_SITE)
    assert main(["check", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{tmp_path}/site.yaml:6:5: error MP110: test 'generated': the records of example.org "
        "do not parse: more than 10000 records ($GENERATE ranges counted)"
    )


@pytest.mark.parametrize(
    ("records", "fits"),
    [
        ("$GENERATE 1-9990 h$ A 192.0.2.1", True),
        ("$generate 1-19000/2 h$ A 192.0.2.1", True),
        ("$GENERATE 1-10000 h$ A 192.0.2.1", False),
        ("$GENERATE 1-" + "9" * 5000 + " h$ A 192.0.2.1", False),
        ("a A 192.0.2.1\n" * 10001, False),
    ],
)
def test_zone_size_counts_generated_records(records: str, fits: bool) -> None:
    if fits:
        assert zone_of("example.org", records).startswith("$ORIGIN example.org.")
    else:
        with pytest.raises(ValueError, match="more than 10000 records"):
            zone_of("example.org", records)


def test_a_plan_with_a_generated_zone_is_a_diagnostic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plan file is not compiled again by `test --plan`: its test zones are checked there,
    so a plan whose case holds `$GENERATE 1-10000000` gets MP110, not an internal error."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(GENERATE_SITE.replace("1-10000000", "1-10"))
    plan = tmp_path / "plan.json"
    assert main(["build", str(site), "-o", str(plan)]) == 0
    document = json.loads(plan.read_text())
    case = document["tests"][0]["dns"][0]
    case["records"] = case["records"].replace("1-10", "1-10000000")
    plan.write_text(resealed(document))
    capsys.readouterr()
    assert main(["test", "--plan", str(plan)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "site.yaml:6:5: error MP110: test 'generated': the records of example.org "
        "do not parse: more than 10000 records ($GENERATE ranges counted)"
    )
