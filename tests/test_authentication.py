"""DKIM, DMARC and ARC on the way in (runtime/smtp/authentication.py), end to end: messages
signed and sealed with dkimpy, sent with smtplib from a stranger (127.0.0.9) to a real
`mailplan serve`, whose resolver is the tests' DNS server (dnskit) serving the senders'
keys, DMARC and SPF records; the verdicts read from the Maildir files it delivers.
The site's `receiving.dmarc.action` and scopes are also checked against in-memory zones.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import authres
import dkim
import nacl.signing
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope as SinkEnvelope
from aiosmtpd.smtp import Session as SinkSession
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dnskit import NameServer, Silent, zone_text
from serverkit import LOOPBACK, Maildir, MailServer, free_port, wait_until
from sitekit import plain, write_site

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import Plan
from mailplan.runtime.decide.policy import Client
from mailplan.runtime.dns.lookup import Budget, Dns, DnsTrouble, Zones, zone_of
from mailplan.runtime.smtp import authentication
from mailplan.runtime.smtp.authentication import Authentication
from mailplan.zones.dkim import key_pair

STRANGER = "127.0.0.9"
HOST = "mail.example.com"
TIMEOUT = 15.0

ED25519 = nacl.signing.SigningKey.generate()
ED_SEED = base64.b64encode(bytes(ED25519))
ED_PUBLIC = base64.b64encode(bytes(ED25519.verify_key)).decode()
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = _RSA.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL,
    serialization.NoEncryption(),
)
RSA_PUBLIC = base64.b64encode(
    _RSA.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


def _keys(*names: str) -> str:
    """ed25519 keys at `NAME._domainkey` and an RSA key at `rsa._domainkey`."""
    lines = [f'{name}._domainkey IN TXT "v=DKIM1; k=ed25519; p={ED_PUBLIC}"' for name in names]
    half = len(RSA_PUBLIC) // 2  # one TXT string holds 255 bytes at most
    lines.append(
        f'rsa._domainkey IN TXT "v=DKIM1; k=rsa; p={RSA_PUBLIC[:half]}" "{RSA_PUBLIC[half:]}"'
    )
    return "\n".join(lines) + "\n"


SOFT = '@ IN TXT "v=spf1 ip4:192.0.2.1 ~all"\n'  # a stranger gets softfail: accepted, no pass
ZONES = {
    "sender.test": _keys("ed") + SOFT + '_dmarc IN TXT "v=DMARC1; p=reject"\n',
    "quarantine.test": _keys("ed") + SOFT + '_dmarc IN TXT "v=DMARC1; p=quarantine"\n',
    "lenient.test": _keys("ed") + SOFT + '_dmarc IN TXT "v=DMARC1; p=none"\n',
    "org.test": _keys("ed") + SOFT + '_dmarc IN TXT "v=DMARC1; p=none; sp=reject"\n',
    "sampled.test": _keys("ed") + SOFT + '_dmarc IN TXT "v=DMARC1; p=reject; pct=0"\n',
    "strict.test": _keys("ed") + SOFT + '_dmarc IN TXT "v=DMARC1; p=reject; adkim=s"\n',
    "spfpass.test": f'@ IN TXT "v=spf1 ip4:{STRANGER} -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
    "forwarder.test": f'@ IN TXT "v=spf1 ip4:{STRANGER} -all"\n',
    "list.test": _keys() + f'@ IN TXT "v=spf1 ip4:{STRANGER} -all"\n',
    "nodmarc.test": _keys("ed") + SOFT,
}

DOMAIN_RULES = """\
rule "DMARC quarantine to Junk" priority 7
  if   Header Field is "X-DMARC-Quarantine: *"
  then Store in Junk
  and  Stop Processing
"""
SERVER_RULES = """\
rule "Failed signatures" priority 5
  if   Header Field is "Authentication-Results: mail.example.com;*dkim=fail*"
  then Tag Subject "[dkim failed]"
"""


def message(author: str, subject: str = "hello", body: str = "Hello Bob.\r\n") -> bytes:
    return (
        f"From: Sender <{author}>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n"
        f"Date: Mon, 07 Dec 2026 04:00:00 +0000\r\n\r\n{body}"
    ).encode()


def signed(raw: bytes, domain: str, selector: str = "ed") -> bytes:
    algorithm = b"rsa-sha256" if selector == "rsa" else b"ed25519-sha256"
    secret = RSA_PEM if selector == "rsa" else ED_SEED
    field = dkim.sign(
        raw,
        selector.encode(),
        domain.encode(),
        secret,
        signature_algorithm=algorithm,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"],
    )
    return bytes(field) + raw


def sealed(raw: bytes, results: str) -> bytes:
    """The message as list.test passes it on: its own Authentication-Results, sealed."""
    stamped = f"Authentication-Results: list.test; {results}\r\n".encode() + raw
    fields = dkim.arc_sign(
        stamped,
        b"rsa",
        b"list.test",
        RSA_PEM,
        b"list.test",
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"],
    )
    return b"".join(fields) + stamped


@dataclass
class Site:
    port: int
    root: Path
    server: MailServer

    def send(self, raw: bytes, sender: str, source: str = STRANGER) -> tuple[int, bytes]:
        with smtplib.SMTP(LOOPBACK, self.port, timeout=TIMEOUT, source_address=(source, 0)) as c:
            c.ehlo("client.sender.test")
            c.mail(sender)
            code, said = c.rcpt("bob@example.com")
            assert code == 250, said
            try:
                code, said = c.data(raw)
            except smtplib.SMTPDataError as refused:
                return refused.smtp_code, refused.smtp_error
        return code, said

    def box(self, folder: str = "") -> Maildir:
        path = self.root / "var" / "mail" / "example.com" / "bob"
        return Maildir(path / f".{folder}" if folder else path)

    def delivered(self, subject: str, folder: str = "") -> bytes:
        """The message with this subject, once it is in the folder."""
        box = self.box(folder)
        found: list[bytes] = []

        def arrived() -> bool:
            found[:] = [m for m in box.messages() if f"{subject}\r\n".encode() in m]
            return bool(found)

        wait_until(arrived, TIMEOUT)
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("authentication")
    zones = {name: zone_text(name, records) for name, records in ZONES.items()}
    port = free_port()
    folder = root / "site"
    folder.mkdir()
    (folder / "rules").mkdir()
    (folder / "rules" / "domain.rules").write_text(DOMAIN_RULES, encoding="utf-8")
    (folder / "rules" / "server.rules").write_text(SERVER_RULES, encoding="utf-8")
    write_site(
        folder,
        listeners={"smtp": plain(port)},
        accounts=["bob"],
        domains={"example.com": {"rules": "rules/domain.rules"}},
        extra={
            "server_rules": "rules/server.rules",
            "receiving": {"return_path": {"scope": "nobody"}},
        },
    )
    with NameServer(root / "dns", zones) as names:
        server = MailServer(folder, root, [port], resolver=names.address)
        with server:
            yield Site(port, root, server)


def results(raw: bytes) -> list[tuple[str, str]]:
    """(method, result) of the one Authentication-Results field of ours in the message."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ").split("\r\n")
    ours = [line for line in unfolded if line.lower().startswith("authentication-results:")]
    ours = [line for line in ours if f": {HOST};" in line]
    assert len(ours) == 1, ours
    parsed = authres.all_features().parse(ours[0])
    return [(r.method, r.result) for r in parsed.results]


def verdict(raw: bytes, method: str) -> list[str]:
    return [result for m, result in results(raw) if m == method]


# -- DKIM ------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", ["ed", "rsa"])
def test_a_good_signature_passes_dkim_and_dmarc(site: Site, selector: str) -> None:
    subject = f"good {selector}"
    code, _ = site.send(
        signed(message("a@sender.test", subject), "sender.test", selector), "a@sender.test"
    )
    assert code == 250
    raw = site.delivered(subject)
    assert verdict(raw, "dkim") == ["pass"]
    assert verdict(raw, "spf") == ["softfail"]
    assert verdict(raw, "dmarc") == ["pass"]
    assert verdict(raw, "arc") == ["none"]
    assert b"header.d=sender.test" in raw and f"header.s={selector}".encode() in raw
    assert raw.index(b"Authentication-Results:") < raw.index(b"Received: from")


def test_a_body_changed_in_transit_fails_and_p_reject_refuses(site: Site) -> None:
    raw = signed(message("a@sender.test", "changed body"), "sender.test")
    code, said = site.send(raw.replace(b"Hello Bob.", b"Hello Eve."), "a@sender.test")
    assert code == 550
    assert said == (
        b"5.7.1 Mail from sender.test fails DMARC: no aligned SPF or DKIM pass "
        b"(p=reject at sender.test)"
    )


def test_a_failed_signature_is_told_to_rules_and_p_none_delivers(site: Site) -> None:
    raw = signed(message("a@lenient.test", "lenient change"), "lenient.test")
    code, _ = site.send(raw.replace(b"Hello Bob.", b"Hello Eve."), "a@lenient.test")
    assert code == 250
    delivered = site.delivered("[dkim failed] lenient change")
    assert verdict(delivered, "dkim") == ["fail"]
    assert verdict(delivered, "dmarc") == ["fail"]
    assert b"(body changed)" in delivered
    assert b"X-DMARC-Quarantine" not in delivered


def test_a_key_missing_from_dns_is_a_permerror(site: Site) -> None:
    raw = signed(message("a@lenient.test", "no such key"), "lenient.test", "gone")
    assert site.send(raw, "a@lenient.test")[0] == 250
    delivered = site.delivered("no such key")
    assert verdict(delivered, "dkim") == ["permerror"]
    assert b"no key at gone._domainkey.lenient.test" in delivered


def test_every_signature_is_verified(site: Site) -> None:
    raw = signed(message("a@lenient.test", "two signatures"), "lenient.test")
    raw = signed(raw, "nodmarc.test", "rsa")
    raw = signed(raw, "lenient.test", "gone")
    assert site.send(raw, "a@lenient.test")[0] == 250
    assert verdict(site.delivered("two signatures"), "dkim") == ["permerror", "pass", "pass"]


# -- DMARC -----------------------------------------------------------------------------


def test_an_unaligned_signature_fails_and_p_quarantine_goes_to_junk(site: Site) -> None:
    raw = signed(message("a@quarantine.test", "not aligned"), "nodmarc.test")
    assert site.send(raw, "a@quarantine.test")[0] == 250
    delivered = site.delivered("not aligned", "Junk")
    assert verdict(delivered, "dkim") == ["pass"]
    assert verdict(delivered, "dmarc") == ["fail"]
    assert b"X-DMARC-Quarantine: quarantine.test (no aligned SPF or DKIM pass" in delivered


def test_unsigned_mail_under_p_reject_is_refused(site: Site) -> None:
    code, said = site.send(message("ceo@sender.test", "forged ceo"), "ceo@sender.test")
    assert (code, said.split()[0]) == (550, b"5.7.1")


def test_an_aligned_spf_pass_is_enough(site: Site) -> None:
    code, _ = site.send(message("a@spfpass.test", "spf aligned"), "a@spfpass.test")
    assert code == 250
    delivered = site.delivered("spf aligned")
    assert verdict(delivered, "spf") == ["pass"]
    assert verdict(delivered, "dmarc") == ["pass"]


def test_p_reject_with_an_aligned_signature_through_a_forwarder(site: Site) -> None:
    raw = signed(message("a@sender.test", "forwarded"), "sender.test")
    code, _ = site.send(raw, "bounces@forwarder.test")  # SPF passes for the forwarder only
    assert code == 250
    delivered = site.delivered("forwarded")
    assert verdict(delivered, "spf") == ["pass"]
    assert verdict(delivered, "dkim") == ["pass"]
    assert verdict(delivered, "dmarc") == ["pass"]


def test_a_subdomain_gets_the_organisational_domains_sp(site: Site) -> None:
    code, said = site.send(message("a@news.org.test", "subdomain"), "a@news.org.test")
    assert code == 550 and said.endswith(b"(p=reject at org.test)")
    code, _ = site.send(message("a@org.test", "organisational"), "a@org.test")
    assert code == 250  # p=none at the domain itself


def test_a_relaxed_signature_of_the_parent_domain_aligns(site: Site) -> None:
    raw = signed(message("a@news.sender.test", "relaxed parent"), "sender.test")
    assert site.send(raw, "a@news.sender.test")[0] == 250
    assert verdict(site.delivered("relaxed parent"), "dmarc") == ["pass"]


def test_strict_alignment_refuses_the_parent_domains_signature(site: Site) -> None:
    raw = signed(message("a@news.strict.test", "strict parent"), "strict.test")
    assert site.send(raw, "a@news.strict.test")[0] == 550


def test_pct_0_quarantines_instead_of_refusing(site: Site) -> None:
    assert site.send(message("a@sampled.test", "sampled out"), "a@sampled.test")[0] == 250
    delivered = site.delivered("sampled out", "Junk")
    assert b"pct=0 not sampled" in delivered


def test_no_dmarc_record_is_dmarc_none(site: Site) -> None:
    assert site.send(message("a@nodmarc.test", "no policy"), "a@nodmarc.test")[0] == 250
    assert verdict(site.delivered("no policy"), "dmarc") == ["none"]


# -- ARC -------------------------------------------------------------------------------


def test_an_arc_chain_from_a_list_passes(site: Site) -> None:
    raw = sealed(signed(message("a@lenient.test", "arc chain"), "lenient.test"), "dkim=pass")
    assert site.send(raw, "owner@list.test")[0] == 250
    delivered = site.delivered("arc chain")
    assert verdict(delivered, "arc") == ["pass"]


def test_a_message_changed_after_sealing_fails_arc(site: Site) -> None:
    raw = sealed(signed(message("a@lenient.test", "arc broken"), "lenient.test"), "dkim=pass")
    assert site.send(raw.replace(b"Hello Bob.", b"Hello Eve."), "owner@list.test")[0] == 250
    delivered = site.delivered("arc broken")
    assert verdict(delivered, "arc") == ["fail"]


# -- forged results, scope ---------------------------------------------------------------


def test_forged_results_in_our_name_are_removed(site: Site) -> None:
    forged = (
        f"Authentication-Results: {HOST}; dkim=pass header.d=bank.test; dmarc=pass\r\n"
        "Authentication-Results: mx.elsewhere.test; spf=pass\r\n"
        "X-DMARC-Quarantine: no\r\n"
    ).encode()
    raw = forged + message("a@nodmarc.test", "forged results")
    assert site.send(raw, "a@nodmarc.test")[0] == 250
    delivered = site.delivered("forged results")
    assert verdict(delivered, "dkim") == ["none"]  # and only one of ours (`results`)
    assert b"Authentication-Results: mx.elsewhere.test; spf=pass\r\n" in delivered
    assert b"X-DMARC-Quarantine" not in delivered
    wait_until(lambda: "removed 2 header field(s)" in site.server.log(), TIMEOUT)


def test_clients_are_not_checked(site: Site) -> None:
    raw = message("ceo@sender.test", "from a client")
    assert site.send(raw, "ceo@sender.test", source=LOOPBACK)[0] == 250
    assert b"Authentication-Results" not in site.delivered("from a client")


# -- the site's action, with the zones in memory --------------------------------------------


def plan_with(tmp_path: Path, receiving: str) -> Plan:
    (tmp_path / "site.yaml").write_text(
        f"server: {{hostname: {HOST}, main_domain: example.com, client_ips: '127.0.0.1'}}\n"
        f"receiving:\n{receiving}"
        "domains:\n  example.com:\n    accounts: {bob: {}}\n",
        encoding="utf-8",
    )
    unit = compile_site(tmp_path)
    assert unit.plan is not None, unit.diagnostics
    return unit.plan


def check(
    plan: Plan, raw: bytes, sender: str, ip: str = STRANGER
) -> tuple[tuple[str, ...], str | None]:
    zones = Zones({name: zone_of(name, records) for name, records in ZONES.items()})
    client = Client(ip, trusted=ip == LOOPBACK, tls=False)
    found = asyncio.run(Authentication(plan, zones).check(client, "client.test", sender, None, raw))
    return found.headers, found.reply


def test_action_quarantine_never_refuses(tmp_path: Path) -> None:
    plan = plan_with(tmp_path, "  dmarc: {action: quarantine}\n")
    headers, reply = check(plan, message("ceo@sender.test"), "ceo@sender.test")
    assert reply is None
    assert headers[1].startswith("X-DMARC-Quarantine: sender.test")


def test_action_none_only_reports(tmp_path: Path) -> None:
    plan = plan_with(tmp_path, "  dmarc: {action: none}\n")
    headers, reply = check(plan, message("ceo@sender.test"), "ceo@sender.test")
    assert reply is None and len(headers) == 1 and "dmarc=fail" in headers[0]


def test_dkim_scope_without_dmarc_reports_no_dmarc(tmp_path: Path) -> None:
    plan = plan_with(tmp_path, "  dmarc: {scope: nobody}\n")
    headers, reply = check(plan, message("ceo@sender.test"), "ceo@sender.test")
    assert reply is None and "dmarc=" not in headers[0] and "dkim=none" in headers[0]


def test_scope_everybody_checks_clients_too(tmp_path: Path) -> None:
    plan = plan_with(tmp_path, "  dkim: {scope: everybody}\n  dmarc: {scope: everybody}\n")
    _, reply = check(plan, message("ceo@sender.test"), "ceo@sender.test", ip=LOOPBACK)
    assert reply is not None and reply.startswith("550 5.7.1")


def test_nothing_in_scope_still_removes_forgeries(tmp_path: Path) -> None:
    plan = plan_with(tmp_path, "  dkim: {scope: nobody}\n  dmarc: {scope: nobody}\n")
    raw = f"Authentication-Results: {HOST}; dkim=pass\r\n".encode() + message("a@b.test")
    zones = Zones({})
    found = asyncio.run(
        Authentication(plan, zones).check(
            Client(STRANGER, trusted=False, tls=False), "h", "a@b.test", None, raw
        )
    )
    assert found.headers == () and found.message == message("a@b.test")


def test_a_silent_resolver_spends_the_budget_not_every_time_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three signatures, SPF and DMARC, each asking a name server that never answers: once
    the checks' DNS budget is spent, every look-up left is a temperror at once (each would
    otherwise wait the resolver's own time-out, one after another), and DNS trouble never
    refuses the message."""
    plan = plan_with(tmp_path, "  dmarc: {action: reject}\n")
    raw = message("ceo@sender.test")
    for domain in ("a.test", "b.test", "sender.test"):
        raw = signed(raw, domain)
    monkeypatch.setattr(authentication, "DNS_BUDGET", 0.5)
    with Silent() as silent:
        resolver = Dns(silent.address, timeout=60)
        client = Client(STRANGER, trusted=False, tls=False)
        found = asyncio.run(
            Authentication(plan, resolver).check(
                client, "client.test", "ceo@sender.test", None, raw
            )
        )
    assert found.reply is None
    parsed = authres.parse(found.headers[0])
    methods = [(r.method, r.result) for r in parsed.results]
    assert methods.count(("dkim", "temperror")) == 3
    assert ("spf", "temperror") in methods and ("dmarc", "temperror") in methods
    assert "the 0.5 s for DNS are spent" in found.headers[0]


def test_a_budget_gives_each_look_up_what_is_left() -> None:
    zones = Zones({"ok.test": zone_of("ok.test", "@ IN TXT hello")})
    budget = Budget(zones, 60)
    assert [r.to_text() for r in budget.query_blocking("ok.test", "TXT")] == ['"hello"']
    with Silent() as silent:
        spent = Budget(Dns(silent.address, timeout=60), 0.2)
        with pytest.raises(DnsTrouble, match="time-out"):
            spent.query_blocking("ok.test", "TXT")  # waits what is left, not 60 s
        with pytest.raises(DnsTrouble, match="spent"):
            spent.query_blocking("ok.test", "TXT")


# -- ARC sealing of mail that leaves again -------------------------------------------------

SINK = "127.0.0.2"


class Sink:
    """The next server: keeps what it is sent."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(
        self, server: SMTPServer, session: SinkSession, envelope: SinkEnvelope
    ) -> str:
        self.messages.append(envelope.original_content or b"")
        return "250 2.0.0 queued"


@dataclass
class Forwarding:
    port: int
    sink: Sink
    names: NameServer
    root: Path


@pytest.fixture(scope="module")
def forwarding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forwarding]:
    root = tmp_path_factory.mktemp("sealing")
    private, public = key_pair("rsa")
    (root / "keys").mkdir()
    (root / "keys" / "rsa.key").write_bytes(private)
    (root / "keys" / "rsa.key").chmod(0o600)
    folder = root / "site"
    (folder / "dkim").mkdir(parents=True)
    (folder / "dkim" / "rsa.pub").write_bytes(public)
    port, sink_port = free_port(), free_port(SINK)
    key = {
        "selector": "rsa",
        "public_key": "dkim/rsa.pub",
        "private_key": str(root / "keys" / "rsa.key"),
    }
    write_site(
        folder,
        listeners={"smtp": plain(port)},
        accounts=["bob"],
        domains={"example.com": {"dkim": [key], "forwarders": {"fwd": "carol@accept.test"}}},
        extra={"receiving": {"return_path": {"scope": "nobody"}, "arc": {"seal": True}}},
    )
    unit = compile_site(folder)
    assert unit.plan is not None, unit.diagnostics
    published = unit.plan.domains[0].dns.dkim[0].public_key  # type: ignore[union-attr]
    half = len(published) // 2
    zones = {name: zone_text(name, records) for name, records in ZONES.items()}
    zones["accept.test"] = zone_text("accept.test", f"@ IN MX 10 mx\nmx IN A {SINK}\n")
    zones["example.com"] = zone_text(
        "example.com",
        f'rsa._domainkey IN TXT "v=DKIM1; k=rsa; p={published[:half]}" "{published[half:]}"\n',
    )
    sink = Sink()
    controller = Controller(sink, hostname=SINK, port=sink_port, ready_timeout=10)
    controller.start()
    try:
        with NameServer(root / "dns", zones) as names:
            server = MailServer(folder, root, [port], resolver=names.address, smtp_port=sink_port)
            with server:
                yield Forwarding(port, sink, names, root)
    finally:
        controller.stop()


def test_forwarded_mail_is_arc_sealed_and_the_chain_verifies_downstream(
    forwarding: Forwarding,
) -> None:
    raw = signed(message("a@sender.test", "sealed forward"), "sender.test")
    with smtplib.SMTP(
        LOOPBACK, forwarding.port, timeout=TIMEOUT, source_address=(STRANGER, 0)
    ) as c:
        c.ehlo("client.sender.test")
        c.mail("a@sender.test")
        assert c.rcpt("fwd@example.com")[0] == 250
        assert c.data(raw)[0] == 250
    assert wait_until(lambda: forwarding.sink.messages, TIMEOUT)
    arrived = forwarding.sink.messages[0]
    assert arrived.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.com; s=rsa;")
    resolver = forwarding.names.resolver()

    def txt(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(record.strings) for record in answer)

    chain, _, reason = dkim.arc_verify(arrived, dnsfunc=txt)
    assert chain == dkim.CV_Pass, reason
    assert dkim.verify(arrived, dnsfunc=txt)  # the author's signature survives the forward
    head = arrived.split(b"\r\n\r\n", 1)[0]
    assert b"ARC-Authentication-Results: i=1; mail.example.com;" in head
    assert b"dkim=pass header.d=sender.test" in head


# -- hostile messages: a verdict, never an exception ----------------------------------------

HOSTILE = {
    "tags-garbage": b"DKIM-Signature: garbage\r\nFrom: x@sender.test\r\n\r\nhi\r\n",
    "bad-base64": b"DKIM-Signature: v=1; a=ed25519-sha256; d=..; s=\xff\xfe; h=from; bh=!!; "
    b"b=??\r\nFrom: x@sender.test\r\n\r\nhi\r\n",
    "long-selector": b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=" + b"x" * 300 + b"; "
    b"h=from; bh=AAAA; b=AAAA\r\nFrom: x@sender.test\r\n\r\nhi\r\n",
    "future": b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=rsa; h=from; bh=AAAA; b=AAAA; "
    b"t=999999999999999999999999\r\nFrom: x@sender.test\r\n\r\nhi\r\n",
    "canonicalisation": b"DKIM-Signature: v=1; a=rsa-sha256; c=bogus/bogus; d=sender.test; s=rsa; "
    b"h=from; bh=AAAA; b=AAAA\r\nFrom: x@sender.test\r\n\r\nhi\r\n",
    "arc-incomplete": b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=list.test; s=rsa; b=AAAA\r\n"
    b"ARC-Message-Signature: i=2; a=rsa-sha256; d=list.test; s=rsa; h=from; bh=AA; b=AA\r\n"
    b"From: x@sender.test\r\n\r\nhi\r\n",
    "arc-huge-instance": b"ARC-Seal: i=99999999999999999999; cv=none\r\n"
    b"From: x@sender.test\r\n\r\nhi\r\n",
    "arc-signs-its-seal": b"ARC-Seal: i=1; cv=bogus; a=rsa-sha256; d=list.test; s=rsa; b=AAAA\r\n"
    b"ARC-Message-Signature: i=1; a=rsa-sha256; d=list.test; s=rsa; h=arc-seal; bh=AA; b=AA\r\n"
    b"ARC-Authentication-Results: i=1; x\r\nFrom: x@sender.test\r\n\r\nhi\r\n",
    "two-from-domains": b"From: x@sender.test\r\nFrom: y@other.test\r\n\r\nhi\r\n",
    "from-not-a-domain": b"From: x@\xff\xfe.test\r\n\r\nhi\r\n",
    "no-colon": b"From: x@sender.test\r\nbroken header line\r\n\r\nhi\r\n",
    "empty": b"",
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_messages_get_a_verdict(tmp_path: Path, raw: bytes) -> None:
    plan = plan_with(tmp_path, "  dmarc: {action: none}\n")
    headers, reply = check(plan, raw, "x@sender.test")
    assert reply is None
    found = authres.all_features().parse(" ".join(headers[0].split()))
    methods = [r.method for r in found.results]
    assert methods[0] == "spf" and "dkim" in methods and methods[-2:] == ["dmarc", "arc"]
