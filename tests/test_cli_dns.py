"""`mailplan dns`, `mailplan dns check` and `mailplan dkim keygen`, as a user runs them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from dnskit import NameServer, zone_text

from mailplan.cli import main
from mailplan.compiler.pipeline import compile_site
from mailplan.zones.records import zones
from mailplan.zones.render import render
from tests.conftest import EXAMPLE, ROOT

GOLDEN = ROOT / "tests" / "golden" / "dns"
SITES = ROOT / "tests" / "sites"


def test_dns_prints_every_zone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns", str(EXAMPLE)]) == 0
    golden = sorted(GOLDEN.joinpath("bind").glob("*.zone"))
    assert capsys.readouterr().out == "\n".join(p.read_text() for p in golden)


def test_dns_one_domain_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns", str(EXAMPLE), "--domain", "Shop.Example.", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == {"zones": [json.loads((GOLDEN / "json/shop.example.json").read_text())]}


def test_dns_writes_one_file_per_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns", str(EXAMPLE), "--format", "octodns", "-o", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(p.name for p in (GOLDEN / "octodns").iterdir())
    assert capsys.readouterr().out.count("wrote ") == len(written)


def test_dns_mta_sts_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns", str(EXAMPLE), "--domain", "example.org", "--mta-sts"]) == 0
    assert capsys.readouterr().out == (
        "# https://mta-sts.example.org/.well-known/mta-sts.txt\n"
        + (GOLDEN / "bind/mta-sts.example.org.txt").read_text()
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["dns", "a", "b"], 2, "mailplan: usage: mailplan dns [check] SITE_DIR [options]\n"),
        (["dns", "check"], 2, "mailplan: usage: mailplan dns [check] SITE_DIR [options]\n"),
        (
            ["dns", str(EXAMPLE), "--domain", "no.test"],
            1,
            "mailplan: no.test is no domain of the site\n",
        ),
        (
            ["dns", "check", str(EXAMPLE), "--resolver", "ns1"],
            2,
            "mailplan: --resolver ns1: not IP[:PORT]\n",
        ),
    ],
)
def test_dns_refuses(
    args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == code
    assert capsys.readouterr().err == message


def test_dns_of_a_broken_site_prints_its_problems(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns", str(SITES / "bad-dkim-private-key")]) == 1
    assert "error MP502: dkim/ed2026.example.com.key is a private key" in capsys.readouterr().err


def test_dns_check_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = compile_site(EXAMPLE).plan
    assert plan is not None
    texts = {z.name: zone_text(z.name, render(z, "bind")) for z in zones(plan)}
    with NameServer(tmp_path / "good", texts) as server:
        assert main(["dns", "check", str(EXAMPLE), "--resolver", server.address]) == 0
    out = capsys.readouterr().out.splitlines()
    records = sum(len(z.records) for z in zones(plan))
    assert out[-1] == f"{records} present, 0 missing, 0 different"
    texts["parked.example"] = texts["parked.example"].replace(
        '"v=DMARC1; p=reject"', '"v=DMARC1; p=none"'
    )
    with NameServer(tmp_path / "bad", texts) as server:
        args = [
            "dns",
            "check",
            str(EXAMPLE),
            "--domain",
            "parked.example",
            "--resolver",
            server.address,
        ]
        assert main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "different  TXT   _dmarc.parked.example  v=DMARC1; p=reject  (found: v=DMARC1; p=none)",
        "3 present, 0 missing, 1 different",
    ]


def test_dkim_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["dkim", "keygen", "--domain", "Example.TEST", "--selector", "s1", "-o", str(tmp_path)]
    assert main(args) == 0
    private, public = tmp_path / "s1.example.test.key", tmp_path / "s1.example.test.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")
    assert (
        "dkim: [{selector: s1, public_key: PATH/s1.example.test.pub,\n"
        f"            private_key: {private.resolve()}}}]\n"
    ) in capsys.readouterr().out
    before = private.read_bytes()
    assert main(args) == 1  # never overwrites a key
    assert capsys.readouterr().err == f"mailplan: cannot write {private}: File exists\n"
    assert private.read_bytes() == before


def test_dkim_keygen_refuses_a_weak_rsa_size(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["dkim", "keygen", "--domain", "d.test", "--selector", "s", "--bits", "512"]
    assert main(args) == 2
    assert (
        capsys.readouterr().err == "mailplan: RSA keys for DKIM have 1024, 2048, 3072, 4096 bits\n"
    )
