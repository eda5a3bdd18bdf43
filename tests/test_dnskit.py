"""The test DNS server itself: it answers from the zones it was given as BIND does.

The first tests ask the in-process server (dnskit.NameServer) over UDP and TCP; the
interop test asks BIND the same questions about the same zones and compares the answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from dnskit import NameServer, Silent, zone_text
from namedkit import Named

RECORDS = """\
@          IN MX 10 mx
mx         IN A 127.0.0.2
mx         IN AAAA ::2
www        IN CNAME mx
away       IN CNAME mx.other.test.
loop       IN CNAME www
gone       IN CNAME nothing
*.wild     IN TXT "any name under wild"
exact.wild IN TXT "only this one"
a.b.deep   IN A 127.0.0.3
key        IN TXT "first string" "second string"
"""
ZONES = {
    "example.test": zone_text("example.test", RECORDS),
    "sub.example.test": zone_text("sub.example.test", "@ IN A 127.0.0.4\n"),
    "broken.test": "this is not a zone file\n",
}
QUESTIONS = [
    pytest.param("example.test", "MX", id="mx"),
    pytest.param("mx.example.test", "AAAA", id="aaaa"),
    pytest.param("MX.Example.TEST", "A", id="any-case"),
    pytest.param("www.example.test", "A", id="cname"),
    pytest.param("www.example.test", "CNAME", id="cname-itself"),
    pytest.param("loop.example.test", "AAAA", id="cname-chain"),
    pytest.param("away.example.test", "A", id="cname-out-of-zone"),
    pytest.param("gone.example.test", "A", id="cname-to-nxdomain"),
    pytest.param("x.wild.example.test", "TXT", id="wildcard"),
    pytest.param("y.x.wild.example.test", "TXT", id="wildcard-deeper"),
    pytest.param("exact.wild.example.test", "TXT", id="wildcard-not-over-a-name"),
    pytest.param("x.wild.example.test", "A", id="wildcard-nodata"),
    pytest.param("deep.example.test", "A", id="empty-non-terminal"),
    pytest.param("b.deep.example.test", "A", id="empty-non-terminal-below"),
    pytest.param("mx.example.test", "TXT", id="nodata"),
    pytest.param("nothing.example.test", "A", id="nxdomain"),
    pytest.param("key.example.test", "TXT", id="txt-strings"),
    pytest.param("sub.example.test", "A", id="child-zone"),
    pytest.param("mail.broken.test", "MX", id="servfail"),
    pytest.param("elsewhere.test", "A", id="refused"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NameServer]:
    with NameServer(tmp_path_factory.mktemp("dns"), ZONES) as running:
        yield running


def ask(server: NameServer, name: str, kind: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, kind)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, server.host, port=server.port, timeout=2.0)


def summary(response: dns.message.Message) -> tuple[str, bool, list[str], list[str]]:
    """What an authoritative answer says: rcode, AA, the answer, and the SOA of a negative."""
    answer = sorted(line for rrset in response.answer for line in rrset.to_text().splitlines())
    negative = sorted(
        rrset.to_text() for rrset in response.authority if rrset.rdtype == dns.rdatatype.SOA
    )
    aa = bool(response.flags & dns.flags.AA)
    return dns.rcode.to_text(response.rcode()), aa, answer, negative


def test_the_given_zone_is_served(server: NameServer) -> None:
    resolver = server.resolver()
    assert [str(r) for r in resolver.resolve("example.test", "MX")] == ["10 mx.example.test."]
    assert [str(r) for r in resolver.resolve("www.example.test", "A")] == ["127.0.0.2"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nothing.example.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("mx.example.test", "TXT")


def test_udp_and_tcp_give_the_same_answer(server: NameServer) -> None:
    udp, tcp = ask(server, "example.test", "MX"), ask(server, "example.test", "MX", tcp=True)
    assert (
        summary(udp)
        == summary(tcp)
        == (
            "NOERROR",
            True,
            ["example.test. 300 IN MX 10 mx.example.test."],
            [],
        )
    )


def test_negative_answers_carry_the_soa(server: NameServer) -> None:
    rcode, aa, answer, negative = summary(ask(server, "nothing.example.test", "A"))
    assert (rcode, aa, answer) == ("NXDOMAIN", True, [])
    assert negative == [
        "example.test. 300 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 300"
    ]


def test_wildcard_answers_under_the_asked_name(server: NameServer) -> None:
    _, _, answer, _ = summary(ask(server, "x.wild.example.test", "TXT"))
    assert answer == ['x.wild.example.test. 300 IN TXT "any name under wild"']


def test_a_zone_that_does_not_load_fails_and_others_refuse(server: NameServer) -> None:
    assert summary(ask(server, "mail.broken.test", "MX"))[:2] == ("SERVFAIL", False)
    assert summary(ask(server, "elsewhere.test", "A"))[:2] == ("REFUSED", False)
    assert "zone broken.test. not loaded (SERVFAIL)" in server.log()


def test_an_answer_too_big_for_udp_comes_over_tcp(tmp_path: Path) -> None:
    records = "".join(f'big IN TXT "{n:03d} {"x" * 200}"\n' for n in range(20))
    with NameServer(tmp_path, {"big.test": zone_text("big.test", records)}) as big:
        query = dns.message.make_query("big.big.test", "TXT")  # no EDNS: 512 bytes over UDP
        truncated = dns.query.udp(query, big.host, port=big.port, timeout=2.0)
        assert truncated.flags & dns.flags.TC and not truncated.answer
        (rrset,) = big.resolver().resolve("big.big.test", "TXT").response.answer
    assert len(rrset) == 20


def test_silent_server_times_out() -> None:
    with Silent() as silent:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [silent.host]
        resolver.port = silent.port
        resolver.lifetime = 0.3
        with pytest.raises(dns.exception.Timeout):
            resolver.resolve("example.test", "A")


@pytest.mark.interop("named")
def test_bind_gives_the_same_answers(server: NameServer, tmp_path: Path) -> None:
    with Named(tmp_path, ZONES) as bind:
        for param in QUESTIONS:
            name, kind = param.values
            assert isinstance(name, str) and isinstance(kind, str)
            ours, theirs = summary(ask(server, name, kind)), summary(ask(bind, name, kind))
            assert str(ours).lower() == str(theirs).lower(), param.id  # BIND: the zone's case
