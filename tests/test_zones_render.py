"""Renderers: the zones of sites/example.com in every format, byte for byte against golden
files, and each accepted by the tools that read it (dnspython, BIND's named-checkzone,
octoDNS's YAML provider)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
from dnskit import zone_text
from interop import program
from octodns.provider.yaml import YamlProvider
from octodns.zone import Zone as OctoZone

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import Plan
from mailplan.zones.records import Record, Zone, zones
from mailplan.zones.render import FORMATS, files, policies, render, render_all
from tests.conftest import EXAMPLE, ROOT

GOLDEN = ROOT / "tests" / "golden" / "dns"


@pytest.fixture(scope="module")
def plan() -> Plan:
    unit = compile_site(EXAMPLE)
    assert unit.plan is not None
    return unit.plan


@pytest.fixture(scope="module")
def example_zones(plan: Plan) -> tuple[Zone, ...]:
    return zones(plan)


@pytest.mark.parametrize("form", FORMATS)
def test_golden_files(example_zones: tuple[Zone, ...], form: str) -> None:
    """Regenerate with `python tests/regen_golden_dns.py` and read the diff."""
    written = files(example_zones, form)  # type: ignore[arg-type]
    golden = {p.name: p.read_text(encoding="utf-8") for p in (GOLDEN / form).iterdir()}
    assert sorted(written) == sorted(golden)
    for name, text in written.items():
        assert text == golden[name], name


def test_stdout_is_every_zone_in_turn(example_zones: tuple[Zone, ...]) -> None:
    text = render_all(example_zones, "bind")
    assert text == "\n".join(render(zone, "bind") for zone in example_zones)
    document = json.loads(render_all(example_zones, "json"))
    assert [z["zone"] for z in document["zones"]] == [z.name for z in example_zones]


def test_every_zone_parses_with_dnspython(example_zones: tuple[Zone, ...]) -> None:
    for zone in example_zones:
        parsed = dns.zone.from_text(complete(zone), origin=zone.name, relativize=False)
        for record in zone.records:
            owner = zone.name if record.name == "@" else f"{record.name}.{zone.name}"
            rdataset = parsed.find_rdataset(owner + ".", record.type)
            assert rdataset.ttl == record.ttl
            assert published(record) in {text_of(rdata) for rdata in rdataset}, (owner, record)
        # nothing else: the SOA, NS and the name server's A that `complete` adds
        assert sum(len(rdataset) for _, rdataset in iter_sets(parsed)) == len(zone.records) + 3


@pytest.mark.interop("named-checkzone")
def test_every_zone_passes_named_checkzone(example_zones: tuple[Zone, ...], tmp_path: Path) -> None:
    for zone in example_zones:
        file = tmp_path / f"{zone.name}.zone"
        file.write_text(complete(zone))
        result = subprocess.run(
            [
                program("named-checkzone") or "named-checkzone",
                "-k",
                "fail",
                "-m",
                "fail",
                "-M",
                "fail",
                "-n",
                "fail",
                zone.name,
                str(file),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.rstrip().endswith("OK")


def test_octodns_yaml_provider_loads_every_zone(
    example_zones: tuple[Zone, ...], tmp_path: Path
) -> None:
    for name, text in files(example_zones, "octodns").items():
        (tmp_path / name).write_text(text)
    provider = YamlProvider("mailplan", str(tmp_path), enforce_order=False, escaped_semicolons=True)
    for zone in example_zones:
        loaded = OctoZone(zone.name + ".", [])
        provider.populate(loaded)
        values = {(r.name or "@", r._type, octo_text(v)) for r in loaded.records for v in r.values}
        mine = {(r.name, r.type, published(r)) for r in zone.records}
        assert values == mine, zone.name


def test_mta_sts_policies_are_printed_after_their_url(example_zones: tuple[Zone, ...]) -> None:
    text = policies(example_zones)
    assert text.startswith(
        "# https://mta-sts.example.com/.well-known/mta-sts.txt\nversion: STSv1\nmode: enforce\n"
        "mx: mx1.example.com\nmx: mx2.example.com\nmax_age: 604800\n"
    )
    assert text.count("# https://mta-sts.") == 3  # example.com and its two aliases


# helpers


def complete(zone: Zone) -> str:
    """The snippet made a whole zone: an SOA and NS first, as a zone file has them."""
    return zone_text(zone.name, render(zone, "bind"))


def iter_sets(parsed: dns.zone.Zone) -> list[tuple[object, dns.rdataset.Rdataset]]:
    return [(name, rdataset) for name, node in parsed.items() for rdataset in node]


def published(record: Record) -> str:
    """The value of a record as DNS carries it (TXT strings joined, names absolute)."""
    if record.type == "TXT":
        assert isinstance(record.value, str)
        return record.value
    return record.rdata()


def text_of(rdata: dns.rdata.Rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode()  # type: ignore[attr-defined]
    return rdata.to_text()


def octo_text(value: object) -> str:
    if isinstance(value, str):
        return value.replace("\\;", ";")
    if hasattr(value, "exchange"):
        return f"{value.preference} {value.exchange}"
    if hasattr(value, "target"):
        return f"{value.priority} {value.weight} {value.port} {value.target}"
    return str(value)
