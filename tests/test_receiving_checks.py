"""The receiving checks' decisions, answered from zone texts in memory (`lookup.Zones`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import Plan
from mailplan.runtime.decide.policy import Client
from mailplan.runtime.decide.router import Router
from mailplan.runtime.dns.lookup import DnsTrouble, NoSuchDomain, Zones
from mailplan.runtime.smtp.receiving import Checks, Verdict, reverse_name

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
receiving:
  return_path: {scope: everybody-except-clients}
  spf: {scope: everybody-except-clients, action: reject-fail}
  reverse_connect: {scope: everybody-except-clients}
  rbl:
    scope: everybody
    zones: [{zone: heavy.test, weight: 3}, light.test]
    threshold: 3
domains:
  example.com:
    accounts:
      bob: {}
routing: router.cgr
"""

ROUTER = '<gone@example.com> = error "gone"\n*@partner.test = *@partner.test._via\n'

V6 = "2001:db8::1"
V6_NAME = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"

ZONES = {
    "heavy.test": (
        f'4.2.0.192 IN A 127.0.0.2\n4.2.0.192 IN TXT "see heavy"\n{V6_NAME} IN A 127.0.0.2\n'
    ),
    "light.test": (
        "5.2.0.192 IN A 127.0.0.3\n8.2.0.192 IN A 127.255.255.254\n9.2.0.192 IN A 192.0.2.1\n"
    ),
    "good.test": '@ IN MX 10 mx\nmx IN A 192.0.2.7\n@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n',
    "soft.test": '@ IN TXT "v=spf1 ~all"\n@ IN A 192.0.2.8\n',
    "nullmx.test": "@ IN MX 0 .\n",
    "bare.test": "sub IN A 192.0.2.9\n",
}


def zone(origin: str, records: str) -> str:
    return (
        f"$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns hostmaster 1 60 60 60 60\n@ IN NS ns\n{records}"
    )


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    directory = tmp_path_factory.mktemp("site")
    (directory / "site.yaml").write_text(SITE, encoding="utf-8")
    (directory / "router.cgr").write_text(ROUTER, encoding="utf-8")
    unit = compile_site(directory)
    assert unit.plan is not None, unit.diagnostics
    return unit.plan


@pytest.fixture(scope="module")
def checks(plan: Plan) -> Checks:
    answerer = Zones({name: zone(name, records) for name, records in ZONES.items()})
    return Checks(plan, Router(plan), answerer)


def run(coroutine: object) -> Verdict:
    result = asyncio.run(coroutine)  # type: ignore[arg-type]
    assert isinstance(result, Verdict)
    return result


STRANGER = Client("192.0.2.99", trusted=False, tls=False)


def test_reverse_names() -> None:
    assert reverse_name("192.0.2.4") == "4.2.0.192"
    assert reverse_name(V6) == V6_NAME
    assert reverse_name("4321:0:1:2:3:4:567:89ab") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4"
    )


def test_zones_answer_like_dns() -> None:
    answerer = Zones({"bare.test": zone("bare.test", ZONES["bare.test"])})
    assert [str(r) for r in answerer.query_blocking("sub.bare.test", "A")] == ["192.0.2.9"]
    assert answerer.query_blocking("sub.bare.test", "MX") == []
    with pytest.raises(NoSuchDomain):
        answerer.query_blocking("nothing.bare.test", "A")
    with pytest.raises(NoSuchDomain):
        answerer.query_blocking("elsewhere.test", "A")
    assert isinstance(DnsTrouble("x"), Exception)


def test_rbl_weights_against_the_threshold(checks: Checks) -> None:
    heavy = run(checks.rbl("192.0.2.4"))
    assert heavy.reply == (
        "550 5.7.1 Service unavailable; client [192.0.2.4] blocked using heavy.test: see heavy"
    )
    light = run(checks.rbl("192.0.2.5"))
    assert (light.reply, light.result) == (None, "listed 1/3")
    assert run(checks.rbl("192.0.2.6")).result == "pass"


def test_rbl_answers_that_are_no_listing(checks: Checks) -> None:
    """127.255.255.x says the query was refused (an open resolver); an answer outside
    127/8 is a zone gone wrong: neither lists the client."""
    assert run(checks.rbl("192.0.2.8")).result == "pass"
    assert run(checks.rbl("192.0.2.9")).result == "pass"


def test_rbl_of_an_ipv6_client(checks: Checks) -> None:
    verdict = run(checks.rbl(V6))
    assert verdict.reply is not None
    assert "heavy.test: listed (127.0.0.2)" in verdict.reply


@pytest.mark.parametrize(
    ("sender", "result", "reply"),
    [
        ("", "null", None),
        ("bob@example.com", "known", None),
        ("x@partner.test", "known", None),
        ("gone@example.com", "fail", "550 5.1.8 <gone@example.com>: sender address rejected: gone"),
        ("x@good.test", "pass", None),
        ("x@sub.bare.test", "pass", None),
        ("x@bare.test", "fail", "550 5.1.8 <x@bare.test>: the sender's domain bare.test has no"),
        (
            "x@nowhere.test",
            "fail",
            "550 5.1.8 <x@nowhere.test>: the sender's domain nowhere.test d",
        ),
        ("x@nullmx.test", "fail", "550 5.7.27 <x@nullmx.test>: the sender's domain nullmx.test"),
    ],
)
def test_return_path(checks: Checks, sender: str, result: str, reply: str | None) -> None:
    verdict = run(checks.return_path(sender))
    assert verdict.result == result
    assert (verdict.reply or "")[: len(reply or "")] == (reply or "")


@pytest.mark.parametrize(
    ("ip", "sender", "result", "refused"),
    [
        ("192.0.2.7", "x@good.test", "pass", False),
        ("198.51.100.1", "x@good.test", "fail", True),
        ("198.51.100.1", "x@soft.test", "softfail", False),
        ("198.51.100.1", "x@bare.test", "none", False),
    ],
)
def test_spf(checks: Checks, ip: str, sender: str, result: str, refused: bool) -> None:
    verdict = run(checks.spf(ip, "client.test", sender))
    assert verdict.result == result
    assert (verdict.reply is not None) == refused
    if not refused:
        assert verdict.header is not None and verdict.header.startswith("Received-SPF: ")
        assert f"client-ip={ip};" in verdict.header


def test_spf_of_the_null_sender_uses_the_helo(checks: Checks) -> None:
    verdict = run(checks.spf("198.51.100.1", "good.test", ""))
    assert verdict.result == "fail"
    assert verdict.reply == ("550 5.7.23 <good.test>: SPF fail: SPF fail - not authorized")


def test_reverse_connect_without_a_network_is_not_decided(checks: Checks) -> None:
    assert run(checks.reverse_connect("x@good.test")).result == "unchecked"
    assert run(checks.reverse_connect("bob@example.com")).result == "known"


def test_at_mail_stops_at_the_first_refusal_and_skips_out_of_scope(checks: Checks) -> None:
    listed = Client("192.0.2.4", trusted=False, tls=False)
    verdicts = asyncio.run(checks.at_mail(listed, "client.test", "x@good.test"))
    assert [v.check for v in verdicts] == ["rbl"]
    trusted = Client("192.0.2.4", trusted=True, tls=False)
    verdicts = asyncio.run(checks.at_mail(trusted, "client.test", "x@nowhere.test"))
    assert [v.check for v in verdicts] == ["rbl"]  # scope everybody; the rest skip clients
    logged_in = Client("198.51.100.1", trusted=False, tls=True, authenticated="bob@example.com")
    verdicts = asyncio.run(checks.at_mail(logged_in, "client.test", "x@nowhere.test"))
    assert [(v.check, v.reply) for v in verdicts] == [("rbl", None)]
    verdicts = asyncio.run(checks.at_mail(STRANGER, "client.test", "x@good.test"))
    assert [(v.check, v.result) for v in verdicts] == [
        ("rbl", "pass"),
        ("return-path", "pass"),
        ("spf", "pass"),
        ("reverse-connect", "unchecked"),
    ]


def test_header_actions(tmp_path: Path) -> None:
    directory = tmp_path / "site"
    directory.mkdir()
    text = SITE.replace("{scope: everybody-except-clients}", "{scope: everybody, action: header}")
    text = text.replace("action: reject-fail", "action: header")
    (directory / "site.yaml").write_text(text, encoding="utf-8")
    (directory / "router.cgr").write_text(ROUTER, encoding="utf-8")
    unit = compile_site(directory)
    assert unit.plan is not None, unit.diagnostics
    answerer = Zones({name: zone(name, records) for name, records in ZONES.items()})
    checks = Checks(unit.plan, Router(unit.plan), answerer)
    verdict = run(checks.return_path("x@nowhere.test"))
    assert verdict.reply is None
    assert verdict.header == (
        "X-Return-Path-Check: fail (<x@nowhere.test>: the sender's domain nowhere.test "
        "does not exist)"
    )
    spf = run(checks.spf("198.51.100.1", "client.test", "x@good.test"))
    assert (spf.reply, spf.result) == (None, "fail")
    assert spf.header is not None and spf.header.startswith("Received-SPF: Fail")
