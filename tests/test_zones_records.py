"""Records: what each kind of domain publishes, derived from the plan alone."""

from __future__ import annotations

import textwrap
from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import Plan
from mailplan.zones.records import Mx, Record, Srv, txt_strings, zones

SITE = """\
server:
  hostname: mail.example.test
  main_domain: example.test
  addresses: [192.0.2.10, "2001:db8::10"]
listeners:
  smtp: {port: 25, tls: none, auth: none}
  submission: {port: 587, tls: none, auth: required, plaintext_auth: true}
domains:
  example.test:
{domain}
"""


def plan_of(tmp_path: Path, domain: str = "", **files: str) -> Plan:
    (tmp_path / "site.yaml").write_text(SITE.replace("{domain}", textwrap.indent(domain, "    ")))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    unit = compile_site(tmp_path)
    assert unit.plan is not None, unit.diagnostics
    return unit.plan


def records(plan: Plan, zone: str) -> list[tuple[str, str, str]]:
    (found,) = [z for z in zones(plan) if z.name == zone]
    return [(r.name, r.type, r.rdata()) for r in found.records]


def test_a_domain_without_mx_is_received_by_the_server_itself(tmp_path: Path) -> None:
    found = records(plan_of(tmp_path), "example.test")
    assert found[:3] == [
        ("@", "MX", "10 mail.example.test."),
        ("mail", "A", "192.0.2.10"),
        ("mail", "AAAA", "2001:db8::10"),
    ]
    assert ("@", "TXT", '"v=spf1 mx ip4:192.0.2.10 ip6:2001:db8::10 -all"') in found
    assert ("_dmarc", "TXT", '"v=DMARC1; p=quarantine"') in found


def test_report_addresses_that_are_not_ascii_are_percent_encoded(tmp_path: Path) -> None:
    """A URI is ASCII (RFC 3986): the local part as UTF-8 percent-encoded, the domain in
    A-labels; the `_report._dmarc` authorisation goes to that domain."""
    domain = (
        'dmarc: {rua: ["j\u00f6rg@ex\u00e4mple.test", "d@example.test"]}\n'
        'tls_rpt: {rua: ["s\u00f8ren@example.test"]}\n'
    )
    found = records(plan_of(tmp_path, domain), "example.test")
    assert (
        "_dmarc",
        "TXT",
        '"v=DMARC1; p=quarantine; rua=mailto:j%C3%B6rg@xn--exmple-cua.test,mailto:d@example.test"',
    ) in found
    assert ("_smtp._tls", "TXT", '"v=TLSRPTv1; rua=mailto:s%C3%B8ren@example.test"') in found


def test_srv_records_for_the_listeners_clients_use_and_none_for_the_rest(tmp_path: Path) -> None:
    srv = [r for r in records(plan_of(tmp_path), "example.test") if r[1] == "SRV"]
    assert srv == [
        ("_submissions._tcp", "SRV", "0 0 0 ."),
        ("_submission._tcp", "SRV", "0 1 587 mail.example.test."),
        ("_imaps._tcp", "SRV", "0 0 0 ."),
        ("_imap._tcp", "SRV", "0 0 0 ."),
        ("_pop3s._tcp", "SRV", "0 0 0 ."),
        ("_pop3._tcp", "SRV", "0 0 0 ."),
    ]


def test_a_domain_that_sends_no_mail(tmp_path: Path) -> None:
    assert records(plan_of(tmp_path, "sends_mail: false\n"), "example.test") == [
        ("@", "MX", "0 ."),
        ("mail", "A", "192.0.2.10"),  # the server's own name is still a host
        ("mail", "AAAA", "2001:db8::10"),
        ("@", "TXT", '"v=spf1 -all"'),
        ("*._domainkey", "TXT", '"v=DKIM1; p="'),
        ("_dmarc", "TXT", '"v=DMARC1; p=reject"'),
    ]


def test_spf_policy_includes_and_networks(tmp_path: Path) -> None:
    domain = "spf: {policy: ~all, include: [spf.mailer.test], ip4: [198.51.100.0/24]}\n"
    found = records(plan_of(tmp_path, domain), "example.test")
    spf = (
        '"v=spf1 mx ip4:192.0.2.10 ip4:198.51.100.0/24 ip6:2001:db8::10'
        ' include:spf.mailer.test ~all"'
    )
    assert ("@", "TXT", spf) in found


def test_dmarc_tags(tmp_path: Path) -> None:
    domain = (
        "dmarc: {policy: reject, subdomain_policy: none, rua: [d@example.test],"
        " ruf: [mailto:f@example.test], adkim: strict, aspf: strict, percent: 50}\n"
    )
    found = records(plan_of(tmp_path, domain), "example.test")
    text = (
        '"v=DMARC1; p=reject; sp=none; rua=mailto:d@example.test; ruf=mailto:f@example.test;'
        ' adkim=s; aspf=s; pct=50"'
    )
    assert ("_dmarc", "TXT", text) in found


def test_an_alias_gets_the_records_its_mail_needs(tmp_path: Path) -> None:
    domain = "aliases: [example.net]\ndmarc: {rua: [reports@example.test]}\ntls_rpt: {rua: [https://tls.example.test/r]}\n"
    plan = plan_of(tmp_path, domain)
    alias = records(plan, "example.net")
    assert alias[0] == ("@", "MX", "10 mail.example.test.")
    assert ("_smtp._tls", "TXT", '"v=TLSRPTv1; rua=https://tls.example.test/r"') in alias
    assert ("_dmarc", "TXT", '"v=DMARC1; p=quarantine; rua=mailto:reports@example.test"') in alias
    # RFC 7489 §7.1: example.test says it takes the reports of example.net
    assert records(plan, "example.test")[-1] == (
        "example.net._report._dmarc",
        "TXT",
        '"v=DMARC1"',
    )


def test_mta_sts_id_changes_when_the_policy_changes(tmp_path: Path) -> None:
    def zone(mode: str) -> tuple[str | None, str]:
        (found,) = [
            z for z in zones(plan_of(tmp_path, f"mta_sts: {{mode: {mode}}}\n")) if z.mta_sts_policy
        ]
        (ident,) = [r.rdata() for r in found.records if r.name == "_mta-sts"]
        return found.mta_sts_policy, ident

    enforce, testing = zone("enforce"), zone("testing")
    assert enforce[0] == ("version: STSv1\nmode: enforce\nmx: mail.example.test\nmax_age: 604800\n")
    assert enforce[1] != testing[1]
    assert enforce == zone("enforce")  # and only then


def test_dkim_keys_rsa_and_ed25519(tmp_path: Path) -> None:
    from mailplan.zones.dkim import key_pair

    _, rsa = key_pair("rsa", 2048)
    _, ed = key_pair("ed25519")
    domain = (
        "dkim:\n  - {selector: r1, public_key: r1.pub}\n  - {selector: e1, public_key: e1.pub}\n"
    )
    plan = plan_of(tmp_path, domain, **{"r1.pub": rsa.decode(), "e1.pub": ed.decode()})
    (zone,) = [z for z in zones(plan) if z.name == "example.test"]
    (r1,) = [r for r in zone.records if r.name == "r1._domainkey"]
    (e1,) = [r for r in zone.records if r.name == "e1._domainkey"]
    assert isinstance(r1.value, str) and r1.value.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")
    assert len(r1.value) > 255 and r1.rdata().count('" "') == 1  # two strings
    assert isinstance(e1.value, str) and e1.value.startswith("v=DKIM1; k=ed25519; p=")
    assert len(e1.value) == len("v=DKIM1; k=ed25519; p=") + 44
    assert "r1.pub" in {source.path for source in plan.sources}  # hashed into the plan


def test_txt_strings_are_cut_at_255_octets() -> None:
    text = "v=spf1 " + " ".join(f"ip4:198.51.{i}.0/24" for i in range(40)) + " -all"
    assert len(text) > 600
    chunks = txt_strings(text)
    assert [len(c) for c in chunks[:-1]] == [255] * (len(chunks) - 1)
    assert "".join(chunks) == text
    record = Record("@", "TXT", 300, text, "test")
    parsed = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, record.rdata())
    assert [len(s) for s in parsed.strings] == [len(c) for c in chunks]  # type: ignore[attr-defined]
    assert b"".join(parsed.strings).decode() == text  # type: ignore[attr-defined]


def test_quotes_and_backslashes_survive_a_zone_file() -> None:
    text = 'say "hi" \\ ' + "x" * 300
    parsed = dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.TXT, Record("@", "TXT", 300, text, "t").rdata()
    )
    assert b"".join(parsed.strings).decode() == text  # type: ignore[attr-defined]


def test_record_values_in_zone_file_form() -> None:
    assert Record("@", "MX", 1, Mx(0, "."), "").rdata() == "0 ."
    assert Record("_imap._tcp", "SRV", 1, Srv(0, 1, 143, "h."), "").rdata() == "0 1 143 h."


def test_srv_follows_the_tls_mode_and_leaves_out_loopback_listeners(tmp_path: Path) -> None:
    site = SITE.replace(
        "  submission: {port: 587, tls: none, auth: required, plaintext_auth: true}\n",
        "  submission: {port: 587, tls: none, auth: required, plaintext_auth: true,"
        " bind: [127.0.0.1]}\n"
        "  mailbox: {protocol: pop3, port: 1995, tls: implicit}\n"
        "tls: {certificate: tls/mail.crt, key: tls/mail.key}\n",
    )
    (tmp_path / "site.yaml").write_text(site.replace("{domain}", ""))
    unit = compile_site(tmp_path)
    assert unit.plan is not None, unit.diagnostics
    srv = {r[0]: r[2] for r in records(unit.plan, "example.test") if r[1] == "SRV"}
    assert srv["_pop3s._tcp"] == "0 1 1995 mail.example.test."  # implicit TLS: pop3s
    assert srv["_pop3._tcp"] == "0 0 0 ."
    assert srv["_submission._tcp"] == "0 0 0 ."  # only loopback can reach it
