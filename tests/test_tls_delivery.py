"""Outbound TLS that is verified, end to end: a real `mailplan serve` relays to SMTP sinks
on loopback that present a good certificate, a wrong-name one, a self-signed one, or no
STARTTLS at all; MX, TLSA, `_mta-sts` and `_smtp._tls` records come from tests/dnskit.py
(the `dane-*` zones answered with the AD bit, as a validating resolver on loopback
answers for a signed zone); MTA-STS policies from an HTTPS server on loopback with a
certificate from the test's CA (tests/tlskit.py), which the site trusts through
`outbound.tls.ca_file`. Deliveries, deferrals with their status and reason (in the log,
`mailplan queue show` and the delay DSN), the durable policy cache and TLS-RPT counts,
and the daily report (by mail to a sink, and POSTed) are asserted.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import jsonschema
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope as SinkEnvelope
from aiosmtpd.smtp import Session as SinkSession
from dnskit import NameServer, zone_text
from namedkit import Named, Validator, sign
from serverkit import LOOPBACK, Maildir, MailServer, free_port, free_ports, mailplan, wait_until
from sitekit import NO_SENDER_CHECKS, plain, write_site
from tlskit import REPORT_SCHEMA, Authority, PolicyServer, tlsa_data

TIMEOUT = 20.0
POLICY_HOST = "127.0.0.20"
SECURE = (
    "dane-ee.test",
    "dane-bad.test",
    "dane-ta.test",
    "dane-stripped.test",
    "dane-nomx.test",
    "dane-nomx-bad.test",
)
NO_MX = ("dane-nomx.test", "dane-nomx-bad.test")  # their own exchangers (RFC 7672 §2.2.1)
# domain -> (sink address, what its sink presents)
SINKS = {
    "enforce.test": ("127.0.0.2", "wrong-name"),
    "testing.test": ("127.0.0.3", "wrong-name"),
    "good.test": ("127.0.0.4", "good"),
    "stripped.test": ("127.0.0.5", "none"),
    "dane-ee.test": ("127.0.0.6", "self-signed"),
    "dane-bad.test": ("127.0.0.7", "self-signed"),
    "dane-ta.test": ("127.0.0.8", "good"),
    "dane-stripped.test": ("127.0.0.9", "none"),
    "reports.test": ("127.0.0.10", "none"),
    "dane-nomx.test": ("127.0.0.11", "self-signed"),
    "dane-nomx-bad.test": ("127.0.0.12", "self-signed"),
}
POLICY = "version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n"
POLICIES = {
    "enforce.test": POLICY.format(mode="enforce", mx="mx.enforce.test"),
    "testing.test": POLICY.format(mode="testing", mx="mx.testing.test"),
    "good.test": POLICY.format(mode="enforce", mx="*.good.test"),
    "stripped.test": POLICY.format(mode="enforce", mx="mx.stripped.test"),
}


@dataclass
class Sink:
    """What one loopback SMTP server received."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: list[tuple[list[str], bytes, bool]] = field(default_factory=list)

    async def handle_DATA(
        self, server: SMTPServer, session: SinkSession, envelope: SinkEnvelope
    ) -> str:
        with self.lock:
            self.messages.append(
                (list(envelope.rcpt_tos), envelope.original_content or b"", session.ssl is not None)
            )
        return "250 2.0.0 queued"

    def received(self, count: int = 1) -> list[tuple[list[str], bytes, bool]]:
        assert wait_until(lambda: len(self.messages) >= count, TIMEOUT)
        with self.lock:
            return list(self.messages)


@dataclass
class World:
    folder: Path
    authority: Authority
    dns: NameServer
    port: int
    sinks: dict[str, Sink]
    policies: PolicyServer
    presented: dict[str, Any]  # domain -> the Issued its sink presents (or None)


def _zones(authority: Authority, presented: dict[str, Any], policy_port: int) -> dict[str, str]:
    zones = {}
    for domain, (address, _) in SINKS.items():
        records = f"@ IN MX 10 mx\nmx IN A {address}\nmta-sts IN A {POLICY_HOST}\n"
        if domain in NO_MX:
            records = f"@ IN A {address}\n"
        if domain in POLICIES:
            records += '_mta-sts IN TXT "v=STSv1; id=20261207a"\n'
        zones[domain] = records
    ee = tlsa_data(presented["dane-ee.test"].certificate)
    zones["dane-ee.test"] += f"_25._tcp.mx IN TLSA 3 1 1 {ee}\n"
    other = tlsa_data(authority.self_signed("someone.else", label="other").certificate)
    zones["dane-bad.test"] += f"_25._tcp.mx IN TLSA 3 1 1 {other}\n"
    anchor = tlsa_data(authority.intermediate)
    zones["dane-ta.test"] += f"_25._tcp.mx IN TLSA 2 1 1 {anchor}\n"
    zones["dane-stripped.test"] += f"_25._tcp.mx IN TLSA 3 1 1 {ee}\n"
    nomx = tlsa_data(presented["dane-nomx.test"].certificate)
    zones["dane-nomx.test"] += f"_25._tcp IN TLSA 3 1 1 {nomx}\n"
    zones["dane-nomx-bad.test"] += f"_25._tcp IN TLSA 3 1 1 {other}\n"
    zones["testing.test"] += '_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test"\n'
    zones["posted.test"] = (
        f'_smtp._tls IN TXT "v=TLSRPTv1; rua=https://{POLICY_HOST}:{policy_port}/report"\n'
    )
    zones["quiet.test"] = ""  # publishes no _smtp._tls: gets no report
    return {name: zone_text(name, records) for name, records in zones.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("world")
    authority = Authority(folder / "ca")
    presented = {
        domain: {
            "wrong-name": lambda d=domain: authority.issue("wrong.example", label=f"wrong-{d}"),
            "good": lambda d=domain: authority.issue(f"mx.{d}"),
            "self-signed": lambda d=domain: authority.self_signed(f"mx.{d}"),
            "none": lambda: None,
        }[kind]()
        for domain, (_, kind) in SINKS.items()
    }
    names = [f"mta-sts.{domain}" for domain in POLICIES] + [POLICY_HOST]
    policies = PolicyServer(POLICY_HOST, authority.issue(*names, label="policies"))
    policies.policies = {f"mta-sts.{d}": text for d, text in POLICIES.items()}
    port = free_port()
    sinks = {domain: Sink() for domain in SINKS}
    controllers = []
    for domain, (address, _) in SINKS.items():
        issued = presented[domain]
        extra: dict[str, Any] = {}
        if issued is not None:
            extra = {"tls_context": issued.server_context(), "require_starttls": False}
        controllers.append(
            Controller(sinks[domain], hostname=address, port=port, ready_timeout=10, **extra)
        )
    zones = _zones(authority, presented, policies.port)
    with NameServer(tmp_path_factory.mktemp("dns"), zones, secure=SECURE) as dns:
        for controller in controllers:
            controller.start()
        try:
            yield World(folder, authority, dns, port, sinks, policies, presented)
        finally:
            for controller in controllers:
                controller.stop()
            policies.close()


@dataclass
class Relay:
    directory: Path
    root: Path
    port: int
    server: MailServer

    def send(self, recipients: list[str], subject: str = "hello") -> str:
        message = EmailMessage()
        message["From"] = "alice@example.com"
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message.set_content(f"{subject}\n")
        with smtplib.SMTP(LOOPBACK, self.port, timeout=TIMEOUT) as client:
            client.ehlo("client.example.com")
            client.mail("alice@example.com")
            for recipient in recipients:
                assert client.rcpt(recipient)[0] == 250
            code, reply = client.data(message.as_bytes())
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]

    @property
    def queue(self) -> Path:
        return self.root / "var" / "queue"

    def show(self, queue_id: str) -> str:
        result = mailplan("queue", "show", queue_id, "--site", self.directory, "--root", self.root)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def waits_with(self, queue_id: str, text: str) -> bool:
        return wait_until(lambda: text in self.show(queue_id), TIMEOUT)


@pytest.fixture
def make_relay(world: World, tmp_path: Path) -> Iterator[Any]:
    started: list[MailServer] = []

    def make(
        tls: dict[str, Any] | None = None,
        require_tls: tuple[str, ...] = (),
        resolver: str | None = None,
    ) -> Relay:
        (port,) = free_ports(1)
        outbound: dict[str, Any] = {"tls": {"ca_file": str(world.authority.ca_file), **(tls or {})}}
        if require_tls:
            outbound["require_tls"] = list(require_tls)
        directory = write_site(
            tmp_path / "site",
            listeners={"smtp": plain(port)},
            queue={"retry": ["1s"], "warn_after": "1s", "give_up_after": "1h"},
            extra={**NO_SENDER_CHECKS, "outbound": outbound},
        )
        server = MailServer(
            directory,
            tmp_path,
            [port],
            resolver=resolver or world.dns.address,
            smtp_port=world.port,
            extra_arguments=["--mta-sts-port", str(world.policies.port)],
        )
        server.start()
        started.append(server)
        return Relay(directory, tmp_path, port, server)

    yield make
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def _fresh(world: World) -> None:
    for sink in world.sinks.values():
        sink.messages.clear()
    world.policies.policies = {f"mta-sts.{d}": text for d, text in POLICIES.items()}
    world.policies.reports.clear()


def _delay_notice(root: Path) -> EmailMessage:
    (raw,) = Maildir(root / "var" / "mail" / "example.com" / "alice").wait(1, TIMEOUT)
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


# --- MTA-STS -----------------------------------------------------------------------------


def test_mta_sts_enforce_testing_and_good_certificates(make_relay: Any, world: World) -> None:
    relay = make_relay()
    queue_id = relay.send(["x@enforce.test", "y@testing.test", "z@good.test"], "sts")
    # testing: the wrong-name certificate is reported, and the mail delivered (over TLS)
    ((recipients, _, encrypted),) = world.sinks["testing.test"].received()
    assert (recipients, encrypted) == (["y@testing.test"], True)
    ((recipients, _, encrypted),) = world.sinks["good.test"].received()
    assert (recipients, encrypted) == (["z@good.test"], True)
    # enforce: the wrong-name certificate defers, with the reason
    reason = (
        "mx.enforce.test[127.0.0.2]: certificate not verified for mx.enforce.test: "
        "Hostname mismatch, certificate is not valid for 'mx.enforce.test'."
    )
    assert relay.waits_with(queue_id, reason), relay.server.log()
    assert world.sinks["enforce.test"].messages == []
    assert "MTA-STS policy id 20261207a in enforce mode" in relay.show(queue_id)
    log = relay.server.log()
    assert f"<x@enforce.test> deferred ({reason}; TLS policy: MTA-STS policy id" in log
    notice = _delay_notice(relay.root)
    assert "4.7.5" in notice.as_string() and "Hostname mismatch" in notice.as_string()
    relay.server.stop()
    # the policies and the counts are on disk
    cached = json.loads((relay.queue / "mta-sts.json").read_text())
    assert sorted(cached) == ["enforce.test", "good.test", "testing.test"]
    assert cached["enforce.test"]["mx"] == ["mx.enforce.test"]
    counts = json.loads((relay.queue / "tls-rpt.json").read_text())
    (today,) = counts.values()
    assert today["testing.test"]["policy-type"] == "sts"
    assert today["testing.test"]["failures"][0][0] == "certificate-host-mismatch"
    assert today["good.test"]["success"] >= 1
    assert today["enforce.test"]["success"] == 0
    assert today["enforce.test"]["failures"][0][:4] == [
        "certificate-host-mismatch",
        "127.0.0.1",
        "mx.enforce.test",
        "127.0.0.2",
    ]


def test_policies_survive_a_restart(make_relay: Any, world: World) -> None:
    relay = make_relay()
    first = relay.send(["x@enforce.test"], "first")
    assert relay.server.wait_for_log("enforce.test: MTA-STS policy id 20261207a fetched")
    assert relay.waits_with(first, "MTA-STS policy id 20261207a in enforce mode")
    relay.server.stop()
    fetched = len(world.policies.fetches)
    world.policies.policies = {}  # the policy server is gone: a fetch would fail
    relay.server.start()
    second = relay.send(["x@enforce.test"], "second")
    assert relay.waits_with(second, "MTA-STS policy id 20261207a in enforce mode (cached)")
    assert len(world.policies.fetches) == fetched  # the same id: not fetched again
    assert world.sinks["enforce.test"].messages == []


def test_a_downgrade_to_an_enforce_domain_is_deferred(make_relay: Any, world: World) -> None:
    relay = make_relay()
    queue_id = relay.send(["x@stripped.test"], "stripped")
    assert relay.waits_with(
        queue_id, "mx.stripped.test[127.0.0.5]: TLS is required, but was not offered"
    )
    assert "4.7.4" in relay.show(queue_id)
    assert world.sinks["stripped.test"].messages == []


def test_mta_sts_off_delivers_opportunistically(make_relay: Any, world: World) -> None:
    relay = make_relay(tls={"mta_sts": False})
    relay.send(["x@enforce.test"], "off")
    ((recipients, _, encrypted),) = world.sinks["enforce.test"].received()
    assert (recipients, encrypted) == (["x@enforce.test"], True)


# --- DANE --------------------------------------------------------------------------------


def test_dane(make_relay: Any, world: World) -> None:
    relay = make_relay()
    queue_id = relay.send(
        ["a@dane-ee.test", "b@dane-bad.test", "c@dane-ta.test", "d@dane-stripped.test"], "dane"
    )
    # DANE-EE: a self-signed certificate whose key the TLSA record names is good
    ((recipients, _, encrypted),) = world.sinks["dane-ee.test"].received()
    assert (recipients, encrypted) == (["a@dane-ee.test"], True)
    # DANE-TA: a chain to the intermediate the TLSA record names, for the MX name
    ((recipients, _, encrypted),) = world.sinks["dane-ta.test"].received()
    assert (recipients, encrypted) == (["c@dane-ta.test"], True)
    assert relay.waits_with(
        queue_id,
        "mx.dane-bad.test[127.0.0.7]: DANE: no certificate of the chain matches "
        "the TLSA records of mx.dane-bad.test",
    )
    assert relay.waits_with(
        queue_id, "mx.dane-stripped.test[127.0.0.9]: TLS is required, but was not offered"
    )
    assert world.sinks["dane-bad.test"].messages == []
    assert world.sinks["dane-stripped.test"].messages == []


def test_dane_for_a_domain_without_mx(make_relay: Any, world: World) -> None:
    """No MX: the domain is its own exchanger, and its TLSA records are at
    `_25._tcp.DOMAIN` (RFC 7672 §2.2.1) when the denial of MX and its address are secure."""
    relay = make_relay()
    queue_id = relay.send(["e@dane-nomx.test", "f@dane-nomx-bad.test"], "dane without mx")
    ((recipients, _, encrypted),) = world.sinks["dane-nomx.test"].received()
    assert (recipients, encrypted) == (["e@dane-nomx.test"], True)
    assert relay.waits_with(
        queue_id,
        "dane-nomx-bad.test[127.0.0.12]: DANE: no certificate of the chain matches "
        "the TLSA records of dane-nomx-bad.test",
    )
    assert world.sinks["dane-nomx-bad.test"].messages == []


def test_dane_needs_a_resolver_it_can_trust(make_relay: Any, world: World) -> None:
    relay = make_relay(tls={"dane": False})
    relay.send(["b@dane-bad.test"], "no dane")
    ((recipients, _, _),) = world.sinks["dane-bad.test"].received()
    assert recipients == ["b@dane-bad.test"]


def _tampered(signed: str, origin: str, data: str) -> str:
    """A signed zone whose TLSA record of `mx` says `data`, its signature left as it was."""
    zone = dns.zone.from_text(signed, origin=origin, relativize=False)
    name = dns.name.from_text(f"_25._tcp.mx.{origin}")
    node = zone.find_node(name)
    tlsa = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.TLSA)
    tlsa.clear()
    tlsa.add(dns.rdata.from_text("IN", "TLSA", f"3 1 1 {data}"), 300)
    return zone.to_text()


@pytest.mark.interop("named")
def test_dane_through_bind_as_the_validating_resolver(
    make_relay: Any, world: World, tmp_path: Path
) -> None:
    # Zones signed with BIND's tools, served by one named and validated by another on
    # loopback (the only kind of resolver whose AD bit the server believes by default).
    # bind-bogus.test's TLSA record is changed after signing: the validator answers
    # SERVFAIL, and the server defers rather than deliver without DANE.
    ee = tlsa_data(world.presented["dane-ee.test"].certificate)
    other = tlsa_data(world.authority.self_signed("x.example", label="bind-other").certificate)
    texts = {
        "bind-ok.test": f"@ IN MX 10 mx\nmx IN A 127.0.0.6\n_25._tcp.mx IN TLSA 3 1 1 {ee}\n",
        "bind-bad.test": f"@ IN MX 10 mx\nmx IN A 127.0.0.7\n_25._tcp.mx IN TLSA 3 1 1 {other}\n",
        "bind-bogus.test": f"@ IN MX 10 mx\nmx IN A 127.0.0.6\n_25._tcp.mx IN TLSA 3 1 1 {ee}\n",
    }
    zones, anchors = {}, {}
    for name, records in texts.items():
        signed, anchors[name] = sign(tmp_path / "keys" / name, name, zone_text(name, records))
        zones[name] = signed
    zones["bind-bogus.test"] = _tampered(zones["bind-bogus.test"], "bind-bogus.test", other)
    with (
        Named(tmp_path / "auth", zones) as authoritative,
        Validator(tmp_path / "validator", authoritative.address, anchors) as validator,
    ):
        relay = make_relay(resolver=validator.address)
        queue_id = relay.send(["a@bind-ok.test", "b@bind-bad.test", "c@bind-bogus.test"], "bind")
        ((recipients, _, encrypted),) = world.sinks["dane-ee.test"].received()
        assert (recipients, encrypted) == (["a@bind-ok.test"], True)
        assert relay.waits_with(
            queue_id,
            "mx.bind-bad.test[127.0.0.7]: DANE: no certificate of the chain matches "
            "the TLSA records of mx.bind-bad.test",
        ), relay.server.log()
        assert relay.waits_with(
            queue_id, "mx.bind-bogus.test: TLSA look-up failed: _25._tcp.mx.bind-bogus.test TLSA"
        ), relay.server.log()
        relay.server.stop()
    assert world.sinks["dane-bad.test"].messages == []
    assert len(world.sinks["dane-ee.test"].messages) == 1


# --- require_tls -------------------------------------------------------------------------


def test_require_tls_defers_an_unverifiable_certificate(make_relay: Any, world: World) -> None:
    relay = make_relay(tls={"mta_sts": False}, require_tls=("dane-ee.test", "good.test"))
    queue_id = relay.send(["a@dane-ee.test", "z@good.test"], "required")
    ((recipients, _, _),) = world.sinks["good.test"].received()
    assert recipients == ["z@good.test"]
    # DANE-EE authenticates the self-signed certificate: required TLS is satisfied
    ((recipients, _, _),) = world.sinks["dane-ee.test"].received()
    assert recipients == ["a@dane-ee.test"]
    relay.server.stop()
    relay2 = make_relay(tls={"mta_sts": False, "dane": False}, require_tls=("dane-ee.test",))
    queue_id = relay2.send(["a@dane-ee.test"], "required, no dane")
    assert relay2.waits_with(
        queue_id,
        "mx.dane-ee.test[127.0.0.6]: certificate not verified for mx.dane-ee.test: "
        "self-signed certificate",
    )


def test_a_ca_file_that_cannot_be_read_is_one_line_at_start(
    make_relay: Any, world: World, tmp_path: Path
) -> None:
    relay = make_relay(tls={"ca_file": "no/such/ca.pem"}, require_tls=("good.test",))
    assert relay.server.wait_for_log("outbound.tls.ca_file")
    lines = [line for line in relay.server.log().splitlines() if "ca_file" in line]
    assert len(lines) == 1
    assert lines[0].endswith(
        f"ERROR outbound.tls.ca_file {tmp_path}/no/such/ca.pem cannot be used: "
        "[Errno 2] No such file or directory"
    )
    assert "Traceback" not in relay.server.log()
    # the system's CA store still verifies: the test CA's certificate is not trusted
    queue_id = relay.send(["z@good.test"], "no ca")
    assert relay.waits_with(queue_id, "certificate not verified for mx.good.test")


# --- TLS-RPT -----------------------------------------------------------------------------


def test_the_daily_report_is_mailed_and_posted(
    make_relay: Any, world: World, tmp_path: Path
) -> None:
    # The counts of a day that is over, as yesterday's server left them in the queue folder.
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    queue = tmp_path / "var" / "queue"
    queue.mkdir(parents=True)
    entry = {
        "policy-type": "sts",
        "policy-string": POLICIES["testing.test"].strip().split("\n"),
        "mx-host": ["mx.testing.test"],
        "success": 3,
        "failures": [["certificate-host-mismatch", "", "mx.testing.test", "127.0.0.3", 2]],
    }
    counts = {yesterday: {"testing.test": entry, "posted.test": entry, "quiet.test": entry}}
    (queue / "tls-rpt.json").write_text(json.dumps(counts))
    relay = make_relay()
    ((recipients, content, _),) = world.sinks["reports.test"].received()
    assert recipients == ["tlsrpt@reports.test"]
    report = email.message_from_bytes(content, policy=email.policy.default)
    assert report["TLS-Report-Domain"] == "testing.test"
    assert report["TLS-Report-Submitter"] == "mail.example.com"
    assert report["Subject"].startswith("Report Domain: testing.test Submitter: mail.example.com")
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "tlsrpt"
    (attachment,) = [p for p in report.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert attachment.get_filename().startswith("mail.example.com!testing.test!")
    document = json.loads(gzip.decompress(attachment.get_content()))
    jsonschema.validate(document, REPORT_SCHEMA)
    (policy,) = document["policies"]
    assert policy["policy"]["policy-domain"] == "testing.test"
    assert policy["policy"]["mx-host"] == ["mx.testing.test"]
    assert policy["summary"] == {
        "total-successful-session-count": 3,
        "total-failure-session-count": 2,
    }
    assert policy["failure-details"] == [
        {
            "result-type": "certificate-host-mismatch",
            "receiving-mx-hostname": "mx.testing.test",
            "receiving-ip": "127.0.0.3",
            "failed-session-count": 2,
        }
    ]
    assert document["date-range"]["start-datetime"] == f"{yesterday}T00:00:00Z"
    assert document["contact-info"] == "mailto:postmaster@example.com"
    # the https rua got the same report, gzip JSON, POSTed
    assert wait_until(lambda: world.policies.reports, TIMEOUT)
    posted = json.loads(gzip.decompress(world.policies.reports[0]))
    jsonschema.validate(posted, REPORT_SCHEMA)
    assert posted["policies"][0]["policy"]["policy-domain"] == "posted.test"
    # the day is reported: gone from the counts (a domain without a rua gets none)
    assert relay.server.wait_for_log("TLS report for")
    relay.server.stop()
    assert yesterday not in json.loads((queue / "tls-rpt.json").read_text())


# --- mailplan tls ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        (
            "enforce.test",
            [
                "enforce.test: mta-sts",
                "  why: MTA-STS policy id 20261207a in enforce mode (fetched), mx mx.enforce.test",
                "  mx.enforce.test [127.0.0.2]: pkix: a certificate valid for its name, "
                "from a trusted CA",
            ],
        ),
        (
            "dane-ee.test",
            [
                "dane-ee.test: dane",
                "  why: DANE: the MX records are DNSSEC-signed and mx.dane-ee.test publish(es) "
                "TLSA records (or their look-up failed)",
                "  mx.dane-ee.test [127.0.0.6]: dane: the chain must match its TLSA records",
            ],
        ),
        (
            "reports.test",
            [
                "reports.test: opportunistic",
                "  why: no policy (DANE not used: the MX records are not DNSSEC-validated; "
                "MTA-STS not published (_mta-sts.reports.test: no v=STSv1 record)): "
                "STARTTLS when offered",
                "  mx.reports.test [127.0.0.10]: opportunistic: STARTTLS when offered, "
                "the certificate unchecked",
            ],
        ),
    ],
)
def test_mailplan_tls_says_what_is_required_and_why(
    world: World, tmp_path: Path, domain: str, expected: list[str]
) -> None:
    site = write_site(
        tmp_path / "site",
        listeners={"smtp": plain(free_port())},
        extra={"outbound": {"tls": {"ca_file": str(world.authority.ca_file)}}},
    )
    result = mailplan(
        "tls",
        domain,
        "--site",
        site,
        "--root",
        tmp_path,
        "--resolver",
        world.dns.address,
        "--mta-sts-port",
        str(world.policies.port),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected
    assert not (tmp_path / "var" / "queue" / "mta-sts.json").exists()  # never written


@pytest.mark.parametrize(
    ("domain", "code", "message"),
    [
        ("", 2, "mailplan: not a domain: ''"),
        ("a@b.test", 2, "mailplan: not a domain: 'a@b.test'"),
        ("a..b", 1, "mailplan: a..b: not a valid domain name (A DNS label is empty.)"),
        ("nowhere.test", 1, "mailplan: nowhere.test: DNS failure (server failure)"),
    ],
)
def test_mailplan_tls_says_what_is_wrong_in_one_line(
    world: World, tmp_path: Path, domain: str, code: int, message: str
) -> None:
    site = write_site(tmp_path / "site", listeners={"smtp": plain(free_port())})
    result = mailplan("tls", domain, "--site", site, "--resolver", world.dns.address)
    assert (result.returncode, result.stderr.strip()) == (code, message)


def test_mailplan_tls_json(world: World, tmp_path: Path) -> None:
    site = write_site(
        tmp_path / "site",
        listeners={"smtp": plain(free_port())},
        extra={"outbound": {"tls": {"ca_file": str(world.authority.ca_file)}}},
    )
    result = mailplan(
        "tls", "dane-bad.test", "--site", site, "--resolver", world.dns.address,
        "--mta-sts-port", str(world.policies.port), "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert (found["domain"], found["level"]) == ("dane-bad.test", "dane")
    (host,) = found["hosts"]
    assert (host["name"], host["addresses"], host["check"]) == (
        "mx.dane-bad.test",
        ["127.0.0.7"],
        "dane",
    )
    assert len(host["tlsa"]) == 1 and host["tlsa"][0].startswith("3 1 1 ")
