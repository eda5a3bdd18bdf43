"""MX look-up against a real DNS server on loopback (runtime/dns/mx.py, RFC 5321 5.1, RFC 7505)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import dns.asyncresolver
import pytest
from dnskit import NameServer, Silent, zone_text

from mailplan.runtime.dns import mx

RECORDS = """\
; preference order, with two exchangers of equal preference
@          IN MX 20 backup
@          IN MX 10 first
@          IN MX 10 second
first      IN A 127.0.0.2
second     IN A 127.0.0.3
backup     IN A 127.0.0.4
backup     IN AAAA ::1
; a domain without MX: its own addresses
nomx       IN A 127.0.0.5
nomx       IN AAAA ::1
; a name that exists but has neither MX nor address
bare       IN TXT "nothing here"
; null MX (RFC 7505)
nullmx     IN MX 0 .
; a null MX beside a real one (RFC 7505 forbids it; the real one is used)
mixed      IN MX 0 .
mixed      IN MX 10 first
; exchangers that have no address, or whose address look-up fails
dead       IN MX 10 nowhere
dead       IN MX 20 bare
flaky      IN MX 10 mx.broken.test.
flaky      IN MX 20 backup
lame       IN MX 10 mx.broken.test.
; a relay host that also has an MX: the MX is not used for it
relay      IN MX 10 first
relay      IN A 127.0.0.6
"""

BROKEN = "broken.test"


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NameServer]:
    # broken.test does not load: questions about it get SERVFAIL.
    zones = {"mx.test": zone_text("mx.test", RECORDS), BROKEN: "this is not a zone file\n"}
    with NameServer(tmp_path_factory.mktemp("dns"), zones) as server:
        yield server


def destinations(server: str, queue: str, domain: str | None = None) -> list[mx.Host]:
    async def look() -> list[mx.Host]:
        return await mx.destinations(queue, domain or queue, mx.resolver(server, 1.0))

    return asyncio.run(look())


def failure(server: str, queue: str, domain: str | None = None) -> mx.LookupFailed:
    with pytest.raises(mx.LookupFailed) as caught:
        destinations(server, queue, domain)
    return caught.value


# --- MX records ---------------------------------------------------------------------------------


def test_exchangers_in_preference_order(dns_server: NameServer) -> None:
    hosts = destinations(dns_server.address, "mx.test")
    assert {host.name for host in hosts[:2]} == {"first.mx.test", "second.mx.test"}
    assert hosts[2] == mx.Host("backup.mx.test", ("127.0.0.4", "::1"))
    assert len(hosts) == 3
    by_name = {host.name: host.addresses for host in hosts}
    assert by_name["first.mx.test"] == ("127.0.0.2",)
    assert by_name["second.mx.test"] == ("127.0.0.3",)


def test_equal_preferences_are_shuffled(dns_server: NameServer) -> None:
    async def orders() -> set[tuple[str, ...]]:
        resolve = mx.resolver(dns_server.address, 1.0)
        seen = set()
        for _ in range(40):
            hosts = await mx.destinations("mx.test", "mx.test", resolve)
            seen.add(tuple(host.name for host in hosts))
        return seen

    assert asyncio.run(orders()) == {
        ("first.mx.test", "second.mx.test", "backup.mx.test"),
        ("second.mx.test", "first.mx.test", "backup.mx.test"),
    }


def test_exchanger_whose_lookup_fails_is_skipped(dns_server: NameServer) -> None:
    assert destinations(dns_server.address, "flaky.mx.test") == [
        mx.Host("backup.mx.test", ("127.0.0.4", "::1"))
    ]


def test_mixed_null_and_real_mx_uses_the_real_one(dns_server: NameServer) -> None:
    assert destinations(dns_server.address, "mixed.mx.test") == [
        mx.Host("first.mx.test", ("127.0.0.2",))
    ]


# --- no MX ---------------------------------------------------------------------------------------


def test_domain_without_mx_falls_back_to_its_addresses(dns_server: NameServer) -> None:
    assert destinations(dns_server.address, "nomx.mx.test") == [
        mx.Host("nomx.mx.test", ("127.0.0.5", "::1"))
    ]


def test_domain_without_mx_or_address_is_permanent(dns_server: NameServer) -> None:
    refused = failure(dns_server.address, "bare.mx.test")
    assert refused.status == "5.1.2"
    assert refused.permanent
    assert refused.reason == "bare.mx.test: no address"


# --- failures ------------------------------------------------------------------------------------


def test_null_mx_is_permanent(dns_server: NameServer) -> None:
    refused = failure(dns_server.address, "nullmx.mx.test")
    assert refused.status == "5.1.10"
    assert refused.permanent
    assert refused.reason == "nullmx.mx.test accepts no mail (null MX)"


def test_nxdomain_is_permanent(dns_server: NameServer) -> None:
    refused = failure(dns_server.address, "nosuch.mx.test")
    assert refused.status == "5.1.2"
    assert refused.permanent
    assert refused.reason == "nosuch.mx.test: no such domain"
    assert str(refused) == "nosuch.mx.test: no such domain"


def test_servfail_is_temporary(dns_server: NameServer) -> None:
    refused = failure(dns_server.address, "mail.broken.test")
    assert refused.status == "4.4.3"
    assert not refused.permanent
    assert refused.reason == "mail.broken.test: DNS failure (server failure)"


def test_refused_query_is_temporary(dns_server: NameServer) -> None:
    # The server is not authoritative for this domain and does not recurse.
    refused = failure(dns_server.address, "elsewhere.test")
    assert refused.status == "4.4.3"
    assert not refused.permanent


def test_time_out_is_temporary() -> None:
    with Silent() as silent:
        refused = failure(silent.address, "mx.test")
    assert refused.status == "4.4.3"
    assert not refused.permanent
    assert refused.reason == "mx.test: DNS failure (time-out)"


def test_no_exchanger_with_an_address_is_permanent(dns_server: NameServer) -> None:
    """Every exchanger answered "no such name" or "no address": that will not change soon."""
    refused = failure(dns_server.address, "dead.mx.test")
    assert refused.status == "5.4.4"
    assert refused.permanent
    assert refused.reason == "dead.mx.test: none of its exchangers has an address"


def test_only_exchanger_failing_is_temporary(dns_server: NameServer) -> None:
    assert not failure(dns_server.address, "lame.mx.test").permanent


@pytest.mark.parametrize(
    "domain",
    [
        pytest.param("a" * 64 + ".mx.test", id="label-too-long"),
        pytest.param("a..mx.test", id="empty-label"),
    ],
)
def test_domain_that_cannot_exist_is_permanent(dns_server: NameServer, domain: str) -> None:
    # A recipient domain DNS cannot even ask about is a bad destination, for good: it
    # must be a LookupFailed (the SMTP client turns that into a bounce), not a crash.
    assert failure(dns_server.address, domain).permanent


# --- relay hosts and IP literals -----------------------------------------------------------


def test_relay_host_is_looked_up_by_address_not_mx(dns_server: NameServer) -> None:
    assert destinations(dns_server.address, "relay.mx.test", "remote.example") == [
        mx.Host("relay.mx.test", ("127.0.0.6",))
    ]


def test_relay_host_that_does_not_exist_is_permanent(dns_server: NameServer) -> None:
    refused = failure(dns_server.address, "norelay.mx.test", "remote.example")
    assert refused.status == "5.1.2"
    assert refused.reason == "norelay.mx.test: no such domain"


def test_relay_host_without_address_is_permanent(dns_server: NameServer) -> None:
    refused = failure(dns_server.address, "mx.test", "remote.example")
    assert refused.status == "5.1.2"
    assert refused.reason == "mx.test: no address"


def test_relay_host_with_servfail_is_temporary(dns_server: NameServer) -> None:
    refused = failure(dns_server.address, "relay.broken.test", "remote.example")
    assert refused.status == "4.4.3"
    assert refused.reason == "relay.broken.test: DNS failure (server failure)"


def test_relay_host_time_out_is_temporary() -> None:
    with Silent() as silent:
        refused = failure(silent.address, "relay.mx.test", "remote.example")
    assert refused.status == "4.4.3"
    assert refused.reason == "relay.mx.test: DNS failure (time-out)"


@pytest.mark.parametrize(
    ("queue", "address"),
    [
        pytest.param("[127.0.0.9]", "127.0.0.9", id="ipv4"),
        pytest.param("[IPv6:2001:db8::1]", "2001:db8::1", id="ipv6"),
    ],
)
def test_ip_literal_needs_no_lookup(queue: str, address: str) -> None:
    with Silent() as silent:  # any question would time out
        hosts = destinations(silent.address, queue, "remote.example")
    assert hosts == [mx.Host(queue, (address,))]


# --- the resolver -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5300", ("::1", 5300)),
        ("[::1]", ("::1", 53)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
    ],
)
def test_split_server(text: str, expected: tuple[str, int]) -> None:
    assert mx.split_server(text) == expected


def test_resolver_asks_only_the_given_server() -> None:
    chosen = mx.resolver("127.0.0.1:5353", 3.0)
    assert isinstance(chosen, dns.asyncresolver.Resolver)
    assert [str(server) for server in chosen.nameservers] == ["127.0.0.1"]
    assert chosen.port == 5353
    assert chosen.timeout == chosen.lifetime == 3.0


def test_resolver_really_answers(dns_server: NameServer) -> None:
    async def ask() -> list[str]:
        answer = await mx.resolver(dns_server.address, 1.0).resolve("first.mx.test", "A")
        return [rdata.address for rdata in answer]

    assert asyncio.run(ask()) == ["127.0.0.2"]
