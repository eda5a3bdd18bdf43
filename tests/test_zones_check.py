"""`dns check` against a real DNS server on loopback (tests/dnskit.py) loaded with the
generated zones (everything present) and with zones edited to drop or change records (each
reported). SPF is judged by what the published record authorises, evaluated by pyspf
through the same server. The interop test runs the same check against BIND."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dnskit import NameServer, Silent, zone_text
from namedkit import Named

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import Plan
from mailplan.zones.check import Finding, check, resolver_for
from mailplan.zones.records import Zone, zones
from mailplan.zones.render import render
from tests.conftest import EXAMPLE
from tests.test_zones_records import plan_of


@pytest.fixture(scope="module")
def plan() -> Plan:
    unit = compile_site(EXAMPLE)
    assert unit.plan is not None
    return unit.plan


@pytest.fixture(scope="module")
def example_zones(plan: Plan) -> tuple[Zone, ...]:
    return zones(plan)


def serve(root: Path, example_zones: tuple[Zone, ...], **edits: str) -> NameServer:
    """A server with every zone; `edits` replaces the snippet of a zone (dots as _)."""
    texts = {}
    for zone in example_zones:
        snippet = edits.get(zone.name.replace(".", "_"), render(zone, "bind"))
        texts[zone.name] = zone_text(zone.name, snippet)
    return NameServer(root, texts)


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory, example_zones: tuple[Zone, ...]
) -> Iterator[NameServer]:
    with serve(tmp_path_factory.mktemp("dns"), example_zones) as server:
        yield server


def is_spf(finding: Finding) -> bool:
    return finding.expected.startswith("v=spf1")


def lines(findings: list[Finding], status: str) -> list[str]:
    return [f.line() for f in findings if f.status == status]


def test_everything_present(
    plan: Plan, example_zones: tuple[Zone, ...], published: NameServer
) -> None:
    findings = check(plan, example_zones, resolver_for(published.address))
    assert lines(findings, "missing") == lines(findings, "different") == []
    spf = [f for f in findings if is_spf(f)]
    assert len(spf) == 5  # example.com, its two aliases, shop.example and parked.example
    assert spf[0].note == (
        "192.0.2.10 pass, 2001:db8::10 pass, 192.0.2.20 pass, 198.51.100.254 fail; 1 DNS look-up"
    )
    parked = [f for f in findings if f.name == "parked.example"]
    assert [f.line() for f in parked] == [
        "present    MX    parked.example  0 .",
        "present    TXT   parked.example  v=spf1 -all  [198.51.100.254 fail; 0 DNS look-ups]",
    ]
    records = sum(len(z.records) for z in example_zones)
    assert len(findings) == records


@pytest.mark.interop("named")
def test_bind_serving_the_zones_finds_the_same(
    plan: Plan, example_zones: tuple[Zone, ...], published: NameServer, tmp_path: Path
) -> None:
    """The zones `mailplan dns` prints, loaded by BIND: `dns check` finds all of them
    present, with the same notes as from the test server."""
    texts = {z.name: zone_text(z.name, render(z, "bind")) for z in example_zones}
    with Named(tmp_path, texts) as bind:
        found = [f.line() for f in check(plan, example_zones, resolver_for(bind.address))]
    assert found == [f.line() for f in check(plan, example_zones, resolver_for(published.address))]
    assert all(line.startswith("present ") for line in found)


def test_dropped_and_changed_records_are_each_reported(
    plan: Plan, example_zones: tuple[Zone, ...], tmp_path: Path
) -> None:
    (example,) = [z for z in example_zones if z.name == "example.com"]
    text = render(example, "bind")
    edited = (
        text.replace("@                    IN MX    20 mx2", "@ IN MX 30 mx2")
        .replace('_dmarc               IN TXT   "v=DMARC1', '; _dmarc IN TXT "v=DMARC1')
        .replace("mx1                  IN AAAA  2001:db8::10", "mx1 IN AAAA 2001:db8::11")
        .replace("_submission._tcp     IN SRV   0 1 587", "_submission._tcp IN SRV 0 1 2587")
        + "@ IN MX 5 mx9.example.com.\nmx9 IN A 192.0.2.99\n"
    )
    with serve(tmp_path, example_zones, example_com=edited) as server:
        findings = check(plan, (example,), resolver_for(server.address))
    assert lines(findings, "missing") == [
        "missing    TXT   _dmarc.example.com  v=DMARC1; p=quarantine; "
        "rua=mailto:dmarc-reports@example.com  [no TXT record]"
    ]
    assert lines(findings, "different") == [
        "different  MX    example.com  20 mx2.example.com.  "
        "(found: 30 mx2.example.com. | 5 mx9.example.com.)",
        "different  AAAA  mx1.example.com  2001:db8::10  (found: 2001:db8::11)",
        "different  SRV   _submission._tcp.example.com  0 1 587 mail.example.com.  "
        "(found: 0 1 2587 mail.example.com.)",
    ]


def test_an_extra_record_is_reported(
    plan: Plan, example_zones: tuple[Zone, ...], tmp_path: Path
) -> None:
    (shop,) = [z for z in example_zones if z.name == "shop.example"]
    edited = render(shop, "bind") + "@ IN MX 20 backup.elsewhere.test.\n"
    with serve(tmp_path, example_zones, shop_example=edited) as server:
        findings = check(plan, (shop,), resolver_for(server.address))
    assert [line for line in lines(findings, "different") if " MX " in line] == [
        "different  MX    shop.example  no other records  (found: 20 backup.elsewhere.test.)"
        "  [not in the plan]"
    ]


def test_tag_records_are_compared_by_their_tags(
    plan: Plan, example_zones: tuple[Zone, ...], tmp_path: Path
) -> None:
    """DKIM and DMARC published with their tags in another order, other spaces, and a key
    split by spaces (as many DNS panels store it) are present; a changed tag is not."""
    (example,) = [z for z in example_zones if z.name == "example.com"]
    text = render(example, "bind")
    dmarc = '"v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@example.com"'
    ed25519 = '"v=DKIM1; k=ed25519; p=UXH6x0ewKP8Zlu9W5spD85UdOife7lXQrwSIRAx5OU0="'
    assert dmarc in text and ed25519 in text
    edited = text.replace(
        dmarc, '"v=DMARC1;rua=mailto:dmarc-reports@example.com ;  p=quarantine;"'
    ).replace(ed25519, '"v=DKIM1; p=UXH6x0ewKP8Zlu9W5spD85U dOife7lXQrwSIRAx5OU0=; k=ed25519"')
    with serve(tmp_path / "same", example_zones, example_com=edited) as server:
        findings = check(plan, (example,), resolver_for(server.address))
    assert lines(findings, "different") == lines(findings, "missing") == []
    changed = text.replace(dmarc, '"v=DMARC1; rua=mailto:dmarc-reports@example.com; p=none"')
    with serve(tmp_path / "changed", example_zones, example_com=changed) as server:
        findings = check(plan, (example,), resolver_for(server.address))
    assert lines(findings, "different") == [
        "different  TXT   _dmarc.example.com  v=DMARC1; p=quarantine; "
        "rua=mailto:dmarc-reports@example.com  "
        "(found: v=DMARC1; rua=mailto:dmarc-reports@example.com; p=none)"
    ]


def test_spf_is_judged_by_what_it_authorises_not_by_its_text(
    plan: Plan, example_zones: tuple[Zone, ...], tmp_path: Path
) -> None:
    (shop,) = [z for z in example_zones if z.name == "shop.example"]
    ours = '"v=spf1 mx ip4:192.0.2.10 ip6:2001:db8::10 -all"'
    same = '"v=spf1 ip4:192.0.2.10" " ip6:2001:db8::10 a:mx1.example.com -all"'
    with serve(tmp_path, example_zones, shop_example=render(shop, "bind").replace(ours, same)) as s:
        (spf,) = [f for f in check(plan, (shop,), resolver_for(s.address)) if is_spf(f)]
    assert spf.status == "present"
    assert spf.found == ("v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 a:mx1.example.com -all",)


def test_spf_that_authorises_too_little_or_too_much(
    plan: Plan, example_zones: tuple[Zone, ...], tmp_path: Path
) -> None:
    (example,) = [z for z in example_zones if z.name == "example.com"]
    (alias,) = [z for z in example_zones if z.name == "example.org"]
    ours = '"v=spf1 mx ip4:192.0.2.10 ip6:2001:db8::10 -all"'
    edits = {
        "example_com": render(example, "bind").replace(ours, '"v=spf1 ip4:192.0.2.10 ~all"'),
        "example_org": render(alias, "bind").replace(ours, '"v=spf1 mx ip4:0.0.0.0/0 ~all"'),
    }
    with serve(tmp_path, example_zones, **edits) as server:
        findings = check(plan, (example, alias), resolver_for(server.address))
    assert [f.note for f in findings if is_spf(f) and f.status == "different"] == [
        "2001:db8::10 softfail (should pass); 192.0.2.20 softfail (should pass); "
        "198.51.100.254 softfail (should fail)",
        "198.51.100.254 pass (should fail)",
    ]


def test_spf_over_the_lookup_limit_counted_live(
    plan: Plan, example_zones: tuple[Zone, ...], tmp_path: Path
) -> None:
    (shop,) = [z for z in example_zones if z.name == "shop.example"]
    chain = "".join(f'i{n} IN TXT "v=spf1 include:i{n + 1}.shop.example -all"\n' for n in range(11))
    ours = '"v=spf1 mx ip4:192.0.2.10 ip6:2001:db8::10 -all"'
    ringed = '"v=spf1 mx ip4:192.0.2.10 ip6:2001:db8::10 include:i0.shop.example -all"'
    edited = render(shop, "bind").replace(ours, ringed) + chain + 'i11 IN TXT "v=spf1 -all"\n'
    with serve(tmp_path, example_zones, shop_example=edited) as server:
        (spf,) = [f for f in check(plan, (shop,), resolver_for(server.address)) if is_spf(f)]
    assert spf.status == "different"
    assert (
        spf.note
        == "198.51.100.254 permerror: SPF Permanent Error: Too many DNS lookups (should fail)"
    )


def test_a_server_that_does_not_answer(plan: Plan, example_zones: tuple[Zone, ...]) -> None:
    (parked,) = [z for z in example_zones if z.name == "parked.example"]
    with Silent() as silent:
        findings = check(plan, (parked,), resolver_for(silent.address, timeout=0.1))
    assert {f.status for f in findings} == {"missing"}
    assert all(f.note.startswith("no answer: ") for f in findings)


@pytest.mark.parametrize(
    ("given", "host", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("::1", "::1", 53),
        ("[::1]:5353", "::1", 5353),
    ],
)
def test_resolver_address(given: str, host: str, port: int) -> None:
    resolver = resolver_for(given)
    assert (resolver.nameservers, resolver.port) == ([host], port)


@pytest.mark.parametrize("given", ["ns.example.test", "127.0.0.1:dns", "127.0.0.1:70000", "[::1"])
def test_resolver_address_refused(given: str) -> None:
    with pytest.raises(ValueError, match="not IP\\[:PORT\\]"):
        resolver_for(given)


def test_the_address_that_may_not_send_is_outside_every_authorised_network(
    tmp_path: Path,
) -> None:
    (tmp_path / "site").mkdir()
    plan = plan_of(tmp_path / "site", "spf: {ip4: [198.51.100.0/24, 203.0.113.0/25]}\n")
    found = zones(plan)
    texts = {z.name: zone_text(z.name, render(z, "bind")) for z in found}
    with NameServer(tmp_path / "named", texts) as server:
        findings = check(plan, found, resolver_for(server.address))
    (spf,) = [f for f in findings if is_spf(f)]
    assert spf.status == "present"
    assert spf.note == (
        "192.0.2.10 pass, 2001:db8::10 pass, 198.51.100.0 pass, 203.0.113.0 pass, "
        "203.0.113.254 fail; 1 DNS look-up"
    )
