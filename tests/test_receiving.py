"""Receiving checks over real SMTP sessions: DNSBL, Return-Path verification, SPF and
reverse connect, with the server's resolver pointed at a DNS server on loopback serving the
fixture zones below, and an aiosmtpd server on 127.0.0.7 playing the senders' MX.

Clients connect from 127.0.0.9 (a stranger; 127.0.0.1 is the site's Client IP), so
every check whose scope excludes clients applies to them.
"""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope as SinkEnvelope
from aiosmtpd.smtp import Session as SinkSession
from dnskit import NameServer, Silent, zone_text
from serverkit import LOOPBACK, Maildir, MailServer, free_port
from sitekit import plain, write_site

STRANGER = "127.0.0.9"
LISTED_TWICE = "127.0.0.10"  # in both DNSBL zones
LISTED_LIGHTLY = "127.0.0.11"  # only in the light zone
TIMEOUT = 15.0

ZONES = {
    "good.test": ('@ IN MX 10 mx\nmx IN A 127.0.0.7\n@ IN TXT "v=spf1 ip4:127.0.0.0/24 -all"\n'),
    "spf-fail.test": '@ IN MX 10 mx.good.test.\n@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n',
    "spf-soft.test": '@ IN MX 10 mx.good.test.\n@ IN TXT "v=spf1 ip4:192.0.2.1 ~all"\n',
    "spf-temp.test": (
        '@ IN MX 10 mx.good.test.\n@ IN TXT "v=spf1 include:_spf.elsewhere.invalid -all"\n'
    ),
    "address-only.test": "@ IN A 127.0.0.7\n",
    "nullmx.test": "@ IN MX 0 .\n",
    "example.com": '@ IN MX 10 mail\nmail IN A 127.0.0.1\n@ IN TXT "v=spf1 ip4:127.0.0.1 -all"\n',
    "dead-mx.test": "@ IN MX 10 mx\nmx IN A 127.0.0.8\n",  # nothing listens there
    "slow-mx.test": "@ IN MX 10 mx\nmx IN A 127.0.0.12\n",  # takes connections, never greets
    "bl.test": (
        f'10.0.0.127 IN A 127.0.0.2\n10.0.0.127 IN TXT "{LISTED_TWICE} sent spam to our traps"\n'
    ),
    "light.test": "10.0.0.127 IN A 127.0.0.4\n11.0.0.127 IN A 127.0.0.4\n",
}


@dataclass
class Callbacks:
    """The senders' MX: knows alice@good.test, refuses other local parts."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    asked: list[tuple[str, str]] = field(default_factory=list)
    silent: bool = False

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: SinkSession,
        envelope: SinkEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        with self.lock:
            self.asked.append((envelope.mail_from or "", address))
        if address.startswith("alice@"):
            return "250 2.1.5 OK"
        return "550 5.1.1 no such mailbox"

    async def handle_DATA(
        self, server: SMTPServer, session: SinkSession, envelope: SinkEnvelope
    ) -> str:
        raise AssertionError("a reverse connect never sends DATA")


@dataclass
class World:
    dns: NameServer
    port: int
    callbacks: Callbacks


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    zones = {name: zone_text(name, records) for name, records in ZONES.items()}
    port = free_port()
    callbacks = Callbacks()
    controller = Controller(callbacks, hostname="127.0.0.7", port=port, ready_timeout=10)
    with NameServer(tmp_path_factory.mktemp("dns"), zones) as dns:
        controller.start()
        try:
            yield World(dns, port, callbacks)
        finally:
            controller.stop()


RECEIVING = """\
receiving:
  return_path: {scope: everybody-except-clients, action: reject}
  spf: {scope: everybody-except-clients, action: reject-fail}
  reverse_connect: {scope: nobody}
  rbl:
    scope: everybody-except-clients
    zones: [{zone: bl.test, weight: 2}, light.test]
    threshold: 2
"""


@dataclass
class Site:
    port: int
    root: Path
    server: MailServer

    def send(
        self, sender: str, source: str = STRANGER, recipient: str = "bob@example.com"
    ) -> tuple[int, str]:
        """MAIL FROM (and, when accepted, the whole message); the MAIL reply."""
        with smtplib.SMTP(LOOPBACK, self.port, timeout=TIMEOUT, source_address=(source, 0)) as c:
            c.ehlo("client.good.test")
            code, reply = c.mail(sender)
            if code != 250:
                return code, reply.decode()
            assert c.rcpt(recipient)[0] == 250
            message = EmailMessage()
            message["Subject"] = f"from {sender}"
            message.set_content("hello\n")
            assert c.data(message.as_bytes())[0] == 250
        return code, reply.decode()

    def delivered(self, count: int = 1) -> list[bytes]:
        return Maildir(self.root / "var" / "mail" / "example.com" / "bob").wait(count, TIMEOUT)


@pytest.fixture
def make_site(world: World, tmp_path: Path) -> Iterator[Any]:
    servers: list[MailServer] = []

    def make(receiving: str = RECEIVING, resolver: str | None = None) -> Site:
        port = free_port()
        root = tmp_path / f"root{len(servers)}"
        directory = write_site(
            root / "site", listeners={"smtp": plain(port)}, accounts=["bob"], extra=receiving
        )
        server = MailServer(
            directory,
            root,
            [port],
            resolver=resolver or world.dns.address,
            smtp_port=world.port,
            extra_arguments=["--dns-timeout", "1"],
        )
        server.start()
        servers.append(server)
        return Site(port, root, server)

    yield make
    for server in servers:
        server.stop()


# --- DNSBL -------------------------------------------------------------------------


def test_dnsbl_refuses_with_the_zone_and_its_reason(make_site: Any) -> None:
    site = make_site()
    code, reply = site.send("alice@good.test", source=LISTED_TWICE)
    assert code == 550
    assert reply.startswith(f"5.7.1 Service unavailable; client [{LISTED_TWICE}] blocked using ")
    assert f"bl.test: {LISTED_TWICE} sent spam to our traps" in reply
    assert "light.test: listed (127.0.0.4)" in reply


def test_dnsbl_weights_below_the_threshold_accept(make_site: Any) -> None:
    site = make_site()
    assert site.send("alice@good.test", source=LISTED_LIGHTLY)[0] == 250
    assert site.send("alice@good.test", source=STRANGER)[0] == 250


def test_client_ips_are_not_checked(make_site: Any) -> None:
    site = make_site()
    assert site.send("someone@spf-fail.test", source=LOOPBACK)[0] == 250
    assert site.send("x@nowhere.good.test", source=LOOPBACK)[0] == 250


# --- Return-Path ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "code", "text"),
    [
        ("x@nowhere.good.test", 550, "5.1.8 <x@nowhere.good.test>: the sender's domain "),
        ("x@nullmx.test", 550, "5.7.27 <x@nullmx.test>: the sender's domain nullmx.test sends no"),
        ("x@address-only.test", 250, "2.1.0 Sender OK"),
        ("alice@good.test", 250, "2.1.0 Sender OK"),
        ("nobody@example.com", 550, "5.1.8 <nobody@example.com>: sender address rejected"),
        ("bob@example.com", 250, "2.1.0 Sender OK"),
        ("", 250, "2.1.0 Sender OK"),
    ],
    ids=["no-domain", "null-mx", "address-only", "mx", "unknown-local", "local", "null-sender"],
)
def test_return_path_verification(make_site: Any, sender: str, code: int, text: str) -> None:
    site = make_site(
        RECEIVING.replace("spf: {scope: everybody-except-clients", "spf: {scope: nobody")
    )
    got_code, reply = site.send(sender)
    assert (got_code, reply[: len(text)]) == (code, text)


def test_a_dns_time_out_is_temporary(make_site: Any) -> None:
    with Silent() as silent:
        site = make_site(resolver=silent.address)
        code, reply = site.send("alice@good.test")
    assert code == 451
    assert reply.startswith("4.4.3 <alice@good.test>: cannot verify the sender's domain now")


def test_return_path_header_only(make_site: Any) -> None:
    site = make_site(RECEIVING.replace("action: reject}", "action: header}"))
    assert site.send("x@nowhere.good.test")[0] == 250
    (message,) = site.delivered()
    assert b"\r\nX-Return-Path-Check: fail (" in message


# --- SPF -----------------------------------------------------------------------------


def test_spf_pass_is_recorded(make_site: Any) -> None:
    site = make_site()
    assert site.send("alice@good.test")[0] == 250
    (message,) = site.delivered()
    header = message.split(b"\r\n")[1]  # below Return-Path, above our Received
    assert header.startswith(b"Received-SPF: Pass (mail.example.com: domain of good.test")
    assert f"client-ip={STRANGER};".encode() in message


def test_a_stranger_forging_a_local_sender_fails_spf(make_site: Any) -> None:
    code, reply = make_site().send("bob@example.com")
    assert code == 550
    assert reply.startswith("5.7.23 <bob@example.com>: SPF fail")


def test_spf_fail_refuses(make_site: Any) -> None:
    code, reply = make_site().send("someone@spf-fail.test")
    assert code == 550
    assert reply.startswith("5.7.23 <someone@spf-fail.test>: SPF fail")


def test_spf_softfail_accepted_or_refused_as_the_site_says(make_site: Any) -> None:
    lenient = make_site()
    assert lenient.send("someone@spf-soft.test")[0] == 250
    assert b"Received-SPF: SoftFail" in lenient.delivered()[0]
    strict = make_site(RECEIVING.replace("reject-fail", "reject-softfail"))
    code, reply = strict.send("someone@spf-soft.test")
    assert (code, reply[:6]) == (550, "5.7.23")


def test_spf_temperror_is_temporary(make_site: Any) -> None:
    code, reply = make_site().send("someone@spf-temp.test")
    assert code == 451
    assert reply.startswith("4.7.24 SPF temporary error")


def test_spf_header_only(make_site: Any) -> None:
    site = make_site(RECEIVING.replace("reject-fail", "header"))
    assert site.send("someone@spf-fail.test")[0] == 250
    assert b"Received-SPF: Fail" in site.delivered()[0]


# --- reverse connect -----------------------------------------------------------------

CALLBACKS = RECEIVING.replace(
    "reverse_connect: {scope: nobody}",
    "reverse_connect: {scope: everybody-except-clients, cache: 1h, timeout: 2s}",
)


def test_reverse_connect_asks_the_senders_mx_and_caches(make_site: Any, world: World) -> None:
    world.callbacks.asked.clear()
    site = make_site(CALLBACKS)
    assert site.send("alice@good.test")[0] == 250
    code, reply = site.send("mallory@good.test")
    assert code == 550
    assert reply.startswith(
        "5.1.8 <mallory@good.test>: sender address rejected: mx.good.test said 550"
    )
    assert world.callbacks.asked == [("<>", "alice@good.test"), ("<>", "mallory@good.test")]
    # Both answers are cached: asking again does not call back.
    assert site.send("alice@good.test")[0] == 250
    assert site.send("mallory@good.test")[0] == 550
    assert len(world.callbacks.asked) == 2


def test_reverse_connect_to_a_dead_mx_is_temporary(make_site: Any) -> None:
    code, reply = make_site(CALLBACKS).send("x@dead-mx.test")
    assert code == 451
    assert reply.startswith("4.4.1 <x@dead-mx.test>: cannot verify the sender now (mx.dead-mx.test")


def test_reverse_connect_time_out_is_temporary(make_site: Any, world: World) -> None:
    """An MX that takes the connection and never greets: the site's time-out ends it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.12", world.port))
        silent.listen()
        code, reply = make_site(CALLBACKS).send("x@slow-mx.test")
    assert code == 451
    assert reply.startswith("4.4.1 <x@slow-mx.test>: cannot verify the sender now")
