"""The SMTP client against real aiosmtpd servers on loopback (runtime/delivery/outbound.py).

Each test runs its own servers on 127.0.0.2, 127.0.0.3, ... sharing one free port (the
client uses one port for every host), and a module-wide DNS server (tests/dnskit.py)
serves the MX records that point at them. A server's handler replies to each sender,
recipient and DATA as the test says, and records every connection and transaction it
sees. Every test that uses `servers` runs twice: against servers that offer PIPELINING
(RFC 2920; the client then writes each message's commands in one go) and against
servers that do not (aiosmtpd's own EHLO, one command at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from dnskit import NameServer, Silent, zone_text
from serverkit import free_port
from tlskit import Authority

from mailplan.runtime.decide import tlsneed, tlsrpt
from mailplan.runtime.decide.mtasts import StsPolicy
from mailplan.runtime.delivery import outbound
from mailplan.runtime.delivery.outbound import Fate, Parcel, Settings
from mailplan.runtime.delivery.smtpclient import SmtpClient
from mailplan.runtime.dns import mx
from mailplan.runtime.serve import devtls

HELO = "mail.example.test"
DROP = "drop the connection"
ACCEPTED = "250 2.0.0 Message accepted"

RECORDS = """\
one      IN MX 10 mx1
two      IN MX 10 mx1
two      IN MX 20 mx2
down     IN MX 10 dead
down     IN MX 20 mx2
grumpy   IN MX 10 greeter
grumpy   IN MX 20 mx2
nullmx   IN MX 0 .
mx1      IN A 127.0.0.2
mx2      IN A 127.0.0.3
dead     IN A 127.0.0.4
greeter  IN A 127.0.0.5
relay    IN A 127.0.0.3
"""


# --- servers -------------------------------------------------------------------------------------


@dataclass
class Transaction:
    peer: tuple[str, int]
    helo: str
    sender: str
    options: tuple[str, ...]
    recipients: tuple[str, ...]
    content: bytes
    tls: bool


@dataclass
class Mailbox:
    """An aiosmtpd handler: replies as told (by sender, by recipient, to DATA), records all."""

    mail: dict[str, str] = field(default_factory=dict)
    rcpt: dict[str, str] = field(default_factory=dict)
    data: str | None = None
    ehlo: bool = True
    pipelining: bool = False  # offered in the EHLO reply (set by `Servers.smtp`)
    transactions: list[Transaction] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.peers.add(session.peer)
        if not self.ehlo:
            return ["502 5.5.1 EHLO not implemented"]
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads pipelined commands, but does not say so
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        self.peers.add(session.peer)
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.mail.get(address)
        if reply is not None:
            return await self._answer(server, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt.get(address)
        if reply is not None:
            return await self._answer(server, reply)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data is not None:
            return await self._answer(server, self.data)
        self.transactions.append(
            Transaction(
                session.peer,
                session.host_name,
                envelope.mail_from,
                tuple(envelope.mail_options),
                tuple(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
            )
        )
        return ACCEPTED

    @staticmethod
    async def _answer(server: Any, reply: str) -> str:
        if reply == DROP:
            server.transport.abort()
            await asyncio.sleep(0)
            return "421 4.4.2 dropped"  # never reaches the client
        return reply


class Greeter:
    """A host that answers every connection with one reply line (or none) and hangs up."""

    def __init__(self, address: str, port: int, reply: str | None) -> None:
        self.reply = reply.encode() + b"\r\n" if reply is not None else b""
        self.connections = 0
        self.sock = socket.create_server((address, port))
        self.sock.settimeout(0.05)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self.connections += 1
                conn.sendall(self.reply)
                conn.settimeout(10.0)
                with contextlib.suppress(OSError):
                    conn.recv(1024)  # QUIT, or the client hanging up

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


class Servers:
    """The SMTP servers of one test, on 127.0.0.x and one shared port."""

    def __init__(self, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        self.port = free_port("127.0.0.2")
        self.controllers: list[Controller] = []
        self.greeters: list[Greeter] = []

    def smtp(
        self,
        address: str,
        handler: Mailbox | None = None,
        tls: ssl.SSLContext | None = None,
        smtputf8: bool = True,  # as aiosmtpd's Controller offers by default
    ) -> Mailbox:
        handler = handler or Mailbox()
        handler.pipelining = self.pipelining
        extra: dict[str, Any] = {"tls_context": tls, "require_starttls": False} if tls else {}
        extra["enable_SMTPUTF8"] = smtputf8
        controller = Controller(
            handler,
            hostname=address,
            port=self.port,
            server_hostname=f"server-{address}",
            ready_timeout=5.0,
            **extra,
        )
        controller.start()
        self.controllers.append(controller)
        return handler

    def greeter(self, address: str, reply: str | None) -> Greeter:
        greeter = Greeter(address, self.port, reply)
        self.greeters.append(greeter)
        return greeter

    def close(self) -> None:
        for controller in self.controllers:
            controller.stop()
        for greeter in self.greeters:
            greeter.close()


TRUST: ssl.SSLContext | None = None  # what `deliver` verifies certificates with: the test CA


@pytest.fixture(autouse=True)
def _trust_the_test_ca(authority: Authority) -> Iterator[None]:
    global TRUST
    TRUST = authority.client_context()
    yield
    TRUST = None


@pytest.fixture(params=["pipelining", "stepwise"])
def servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    running = Servers(pipelining=request.param == "pipelining")
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NameServer]:
    zones = {"out.test": zone_text("out.test", RECORDS)}
    with NameServer(tmp_path_factory.mktemp("dns"), zones) as server:
        yield server


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return devtls.ensure(tmp_path_factory.mktemp("tls"), "mx1.out.test")


@pytest.fixture
def tls(authority: Authority) -> ssl.SSLContext:
    """A certificate for both MX hosts, from the test CA that `deliver` trusts."""
    return authority.issue("mx1.out.test", "mx2.out.test", label="good").server_context()


@pytest.fixture
def self_signed(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def broken_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A server context whose handshake always fails: it wants a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(certificate[0])
    return context


# --- the client ---------------------------------------------------------------------------------


def parcel(queue_id: str, *recipients: str, sender: str = "alice@example.test") -> Parcel:
    message = (
        f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {queue_id}\r\n"
        f"Message-ID: <{queue_id}@example.test>\r\n\r\nHello from {queue_id}.\r\n"
    ).encode()
    return Parcel(queue_id, sender, recipients, message)


def deliver(
    queue: str,
    parcels: list[Parcel],
    port: int,
    nameserver: str = "127.0.0.1:9",  # never asked: IP literals need no look-up
    *,
    domain: str | None = None,
    require_tls: bool = False,
    timeout: float = 5.0,
    trust: ssl.SSLContext | None = None,
) -> list[Fate]:
    settings = Settings(
        helo=HELO, port=port, require_tls=require_tls, timeout=timeout, trust=trust or TRUST
    )

    async def run() -> list[Fate]:
        resolve = mx.resolver(nameserver, 1.0)
        outcomes = await outbound.deliver(queue, domain or queue, parcels, settings, resolve)
        await closed()
        return outcomes

    return asyncio.run(run())


async def closed(patience: float = 5.0) -> None:
    """Let this loop's connections finish closing (TLS sends close_notify and waits for
    the server's) before `asyncio.run` ends; one still open after that is a leak, and
    pytest reports it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while loop.time() < deadline and any(
        isinstance(thing, asyncio.Transport)
        and getattr(thing, "_loop", None) is loop
        and not thing.is_closing()
        for thing in gc.get_objects()
    ):
        await asyncio.sleep(0.01)


def by_recipient(outcomes: list[Fate]) -> dict[tuple[str, str], Fate]:
    found = {(o.queue_id, o.recipient): o for o in outcomes}
    assert len(found) == len(outcomes), "one outcome per recipient"
    return found


def kinds(outcomes: list[Fate]) -> dict[tuple[str, str], str]:
    return {key: outcome.kind for key, outcome in by_recipient(outcomes).items()}


# --- many messages, one connection ----------------------------------------------------------


def test_many_messages_go_over_one_connection(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")
    parcels = [parcel(f"Q{n}", f"user{n}@remote.test") for n in range(5)]
    outcomes = deliver("[127.0.0.2]", parcels, servers.port, domain="remote.test")
    assert len(mailbox.peers) == 1
    assert len(mailbox.transactions) == 5
    assert {t.peer for t in mailbox.transactions} == mailbox.peers
    assert [t.recipients for t in mailbox.transactions] == [p.recipients for p in parcels]
    assert [t.content for t in mailbox.transactions] == [p.message for p in parcels]
    assert all(t.helo == HELO for t in mailbox.transactions)
    assert all(t.sender == "alice@example.test" for t in mailbox.transactions)
    assert [(o.queue_id, o.recipient, o.kind, o.status) for o in outcomes] == [
        (f"Q{n}", f"user{n}@remote.test", "delivered", "2.0.0") for n in range(5)
    ]
    assert all(o.text == ACCEPTED and o.smtp and o.final for o in outcomes)


def test_a_kept_connection_serves_the_next_batch_of_any_domain(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")

    async def run() -> list[Fate]:
        kept = outbound.Connections()
        settings = Settings(helo=HELO, port=servers.port, timeout=5.0, connections=kept)
        resolve = mx.resolver("127.0.0.1:9", 1.0)
        outcomes = []
        for n, domain in enumerate(("one.test", "two.test", "one.test")):
            batch = [parcel(f"Q{n}", f"user@{domain}")]
            outcomes += await outbound.deliver("[127.0.0.2]", domain, batch, settings, resolve)
        await kept.sweep(everything=True)
        await closed()
        return outcomes

    outcomes = asyncio.run(run())
    assert [o.kind for o in outcomes] == ["delivered"] * 3
    assert len(mailbox.transactions) == 3
    assert len(mailbox.peers) == 1  # one connection for the three batches


def test_a_kept_connection_the_server_closed_is_replaced(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")

    async def run() -> list[Fate]:
        kept = outbound.Connections()
        settings = Settings(helo=HELO, port=servers.port, timeout=5.0, connections=kept)
        resolve = mx.resolver("127.0.0.1:9", 1.0)
        first = await outbound.deliver(
            "[127.0.0.2]", "a.test", [parcel("Q1", "x@a.test")], settings, resolve
        )
        for free in kept._free.values():  # the server went away meanwhile
            for _, client, _ in free:
                client.close()
        second = await outbound.deliver(
            "[127.0.0.2]", "a.test", [parcel("Q2", "y@a.test")], settings, resolve
        )
        await kept.sweep(everything=True)
        await closed()
        return first + second

    outcomes = asyncio.run(run())
    assert [o.kind for o in outcomes] == ["delivered", "delivered"]
    assert len(mailbox.peers) == 2


def test_a_sweep_never_puts_back_a_connection_taken_meanwhile(servers: Servers) -> None:
    """The sweep says QUIT to old connections; a worker that takes a fresh one while it
    waits for the QUIT must keep it for itself (two users of one connection would
    interleave their transactions)."""
    servers.smtp("127.0.0.2")

    async def run() -> tuple[object, object]:
        kept = outbound.Connections(idle=0.5)
        clients = []
        for _ in range(2):
            client = SmtpClient("127.0.0.2", servers.port, HELO, timeout=5.0)
            await client.connect()
            clients.append(client)
        old, fresh = clients
        kept.give("127.0.0.2", servers.port, old, "plain")
        kept._free[("127.0.0.2", servers.port)][0] = (0.0, old, "plain")  # long expired
        kept.give("127.0.0.2", servers.port, fresh, "plain")
        sweeping = asyncio.create_task(kept.sweep())
        await asyncio.sleep(0)  # the sweep is now waiting for the old one's QUIT
        taken = kept.take("127.0.0.2", servers.port, "plain")
        await sweeping
        again = kept.take("127.0.0.2", servers.port, "plain")
        await fresh.quit()
        await closed()
        return taken, again

    taken, again = asyncio.run(run())
    assert taken is not None
    assert again is None


def test_more_messages_than_one_connection_carries(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")
    count = outbound.MAX_PER_CONNECTION + 3
    parcels = [parcel(f"Q{n}", "bob@remote.test") for n in range(count)]
    outcomes = deliver("[127.0.0.2]", parcels, servers.port, domain="remote.test")
    assert len(mailbox.transactions) == count
    assert len(mailbox.peers) == 2
    assert len(outcomes) == count
    assert {o.kind for o in outcomes} == {"delivered"}


def test_message_with_all_its_recipients_in_one_transaction(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")
    outcomes = deliver(
        "[127.0.0.2]",
        [parcel("Q1", "a@remote.test", "b@remote.test", "c@remote.test")],
        servers.port,
        domain="remote.test",
    )
    assert [t.recipients for t in mailbox.transactions] == [
        ("a@remote.test", "b@remote.test", "c@remote.test")
    ]
    assert [o.recipient for o in outcomes] == ["a@remote.test", "b@remote.test", "c@remote.test"]
    assert {o.kind for o in outcomes} == {"delivered"}


def test_size_and_body_options(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")
    ascii_parcel = parcel("Q1", "bob@remote.test")
    eight_bit = Parcel(
        "Q2",
        "alice@example.test",
        ("bob@remote.test",),
        b"Subject: caf\xc3\xa9\r\n\r\n\xc3\xa9\r\n",
    )
    deliver("[127.0.0.2]", [ascii_parcel, eight_bit], servers.port, domain="remote.test")
    first, second = mailbox.transactions
    assert first.options == (f"SIZE={len(ascii_parcel.message)}",)
    assert set(second.options) == {f"SIZE={len(eight_bit.message)}", "BODY=8BITMIME"}
    assert second.content == eight_bit.message


def test_lines_starting_with_a_dot_arrive_intact(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")
    message = b"Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nend\r\n"
    deliver(
        "[127.0.0.2]",
        [Parcel("Q1", "alice@example.test", ("bob@remote.test",), message)],
        servers.port,
        domain="remote.test",
    )
    assert [t.content for t in mailbox.transactions] == [message]


def test_null_return_path(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")
    outcomes = deliver(
        "[127.0.0.2]",
        [parcel("Q1", "bob@remote.test", sender="")],
        servers.port,
        domain="remote.test",
    )
    assert [t.sender for t in mailbox.transactions] == ["<>"]  # MAIL FROM:<>
    assert outcomes[0].kind == "delivered"


def test_falls_back_to_helo(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2", Mailbox(ehlo=False))
    outcomes = deliver(
        "[127.0.0.2]", [parcel("Q1", "bob@remote.test")], servers.port, domain="remote.test"
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [(t.helo, t.options) for t in mailbox.transactions] == [(HELO, ())]


# --- replies per recipient ----------------------------------------------------------------------


def test_each_recipient_gets_the_outcome_of_its_own_rcpt_reply(
    servers: Servers, dns_server: NameServer
) -> None:
    mailbox = servers.smtp(
        "127.0.0.2",
        Mailbox(
            rcpt={
                "busy@remote.test": "451 4.2.1 Mailbox busy, try later",
                "nobody@remote.test": "550 5.1.1 <nobody@remote.test>: no such user",
                "plain@remote.test": "553 Mailbox name not allowed",
                "full@remote.test": "552 5.2.2 Mailbox full",
            }
        ),
    )
    outcomes = deliver(
        "one.out.test",
        [
            parcel(
                "Q1",
                "ok@remote.test",
                "busy@remote.test",
                "nobody@remote.test",
                "plain@remote.test",
                "full@remote.test",
            )
        ],
        servers.port,
        dns_server.address,
    )
    found = by_recipient(outcomes)
    assert found["Q1", "ok@remote.test"] == Fate(
        "Q1", "ok@remote.test", "delivered", "2.0.0", ACCEPTED, "mx1.out.test", True
    )
    assert found["Q1", "busy@remote.test"] == Fate(
        "Q1",
        "busy@remote.test",
        "temporary",
        "4.2.1",
        "451 4.2.1 Mailbox busy, try later",
        "mx1.out.test",
        True,
    )
    assert found["Q1", "nobody@remote.test"] == Fate(
        "Q1",
        "nobody@remote.test",
        "permanent",
        "5.1.1",
        "550 5.1.1 <nobody@remote.test>: no such user",
        "mx1.out.test",
        True,
    )
    assert found["Q1", "plain@remote.test"].status == "5.0.0"  # no enhanced code: from 553
    assert found["Q1", "plain@remote.test"].kind == "permanent"
    full = found["Q1", "full@remote.test"]  # 552 at RCPT is temporary (RFC 5321 4.5.3.1.10)
    assert (full.kind, full.status, full.text) == ("temporary", "4.2.2", "552 5.2.2 Mailbox full")
    assert not found["Q1", "busy@remote.test"].final
    assert found["Q1", "nobody@remote.test"].final
    assert [t.recipients for t in mailbox.transactions] == [("ok@remote.test",)]


def test_message_whose_recipients_are_all_refused_is_not_sent(servers: Servers) -> None:
    mailbox = servers.smtp(
        "127.0.0.2",
        Mailbox(
            rcpt={
                "nobody@remote.test": "550 5.1.1 no such user",
                "busy@remote.test": "450 4.2.1 busy",
            }
        ),
    )
    outcomes = deliver(
        "[127.0.0.2]",
        [parcel("Q1", "nobody@remote.test", "busy@remote.test"), parcel("Q2", "ok@remote.test")],
        servers.port,
        domain="remote.test",
    )
    assert kinds(outcomes) == {
        ("Q1", "nobody@remote.test"): "permanent",
        ("Q1", "busy@remote.test"): "temporary",
        ("Q2", "ok@remote.test"): "delivered",
    }
    # Q1 never reached DATA; Q2 followed it over the same connection.
    assert [(t.sender, t.recipients) for t in mailbox.transactions] == [
        ("alice@example.test", ("ok@remote.test",))
    ]
    assert len(mailbox.peers) == 1


@pytest.mark.parametrize(
    ("reply", "kind", "status"),
    [
        ("550 5.7.1 Sender refused", "permanent", "5.7.1"),
        ("451 4.3.0 Try again later", "temporary", "4.3.0"),
        ("553 sender domain unknown", "permanent", "5.0.0"),
    ],
    ids=["5xx", "4xx", "5xx-without-enhanced-code"],
)
def test_refusal_at_mail_from_applies_to_every_recipient(
    servers: Servers, reply: str, kind: str, status: str
) -> None:
    mailbox = servers.smtp("127.0.0.2", Mailbox(mail={"spammer@example.test": reply}))
    outcomes = deliver(
        "[127.0.0.2]",
        [
            parcel("Q1", "a@remote.test", "b@remote.test", sender="spammer@example.test"),
            parcel("Q2", "c@remote.test"),
        ],
        servers.port,
        domain="remote.test",
    )
    found = by_recipient(outcomes)
    for recipient in ("a@remote.test", "b@remote.test"):
        assert found["Q1", recipient].kind == kind
        assert found["Q1", recipient].status == status
        assert found["Q1", recipient].text == reply
        assert found["Q1", recipient].smtp
    assert found["Q2", "c@remote.test"].kind == "delivered"
    assert [t.recipients for t in mailbox.transactions] == [("c@remote.test",)]
    assert len(mailbox.peers) == 1


@pytest.mark.parametrize(
    ("reply", "kind", "status"),
    [
        ("554 5.6.0 Message content refused", "permanent", "5.6.0"),
        ("451 4.3.0 Queue full", "temporary", "4.3.0"),
    ],
    ids=["5xx", "4xx"],
)
def test_refusal_at_data_applies_to_the_accepted_recipients(
    servers: Servers, reply: str, kind: str, status: str
) -> None:
    servers.smtp(
        "127.0.0.2", Mailbox(rcpt={"nobody@remote.test": "550 5.1.1 no such user"}, data=reply)
    )
    outcomes = deliver(
        "[127.0.0.2]",
        [parcel("Q1", "a@remote.test", "nobody@remote.test", "b@remote.test")],
        servers.port,
        domain="remote.test",
    )
    found = by_recipient(outcomes)
    assert found["Q1", "nobody@remote.test"].status == "5.1.1"
    for recipient in ("a@remote.test", "b@remote.test"):
        assert (found["Q1", recipient].kind, found["Q1", recipient].status) == (kind, status)
        assert found["Q1", recipient].text == reply


# --- 421 and dropped connections ------------------------------------------------------------


def test_421_at_rcpt_sends_the_rest_to_the_next_host(
    servers: Servers, dns_server: NameServer
) -> None:
    first = servers.smtp("127.0.0.2", Mailbox(rcpt={"late@remote.test": "421 4.3.2 Shutting down"}))
    second = servers.smtp("127.0.0.3")
    outcomes = deliver(
        "two.out.test",
        [parcel("Q1", "early@remote.test"), parcel("Q2", "late@remote.test")],
        servers.port,
        dns_server.address,
    )
    found = by_recipient(outcomes)
    assert found["Q1", "early@remote.test"].kind == "delivered"
    assert found["Q1", "early@remote.test"].remote == "mx1.out.test"
    assert found["Q2", "late@remote.test"].kind == "delivered"
    assert found["Q2", "late@remote.test"].remote == "mx2.out.test"
    assert [t.recipients for t in first.transactions] == [("early@remote.test",)]
    assert [t.recipients for t in second.transactions] == [("late@remote.test",)]


def test_421_at_data_with_no_other_host_is_temporary(
    servers: Servers, dns_server: NameServer
) -> None:
    servers.smtp("127.0.0.2", Mailbox(data="421 4.3.2 Shutting down"))
    outcomes = deliver(
        "one.out.test",
        [parcel("Q1", "a@remote.test", "b@remote.test")],
        servers.port,
        dns_server.address,
    )
    assert {(o.recipient, o.kind, o.status) for o in outcomes} == {
        ("a@remote.test", "temporary", "4.4.2"),
        ("b@remote.test", "temporary", "4.4.2"),
    }
    assert all(o.text.startswith("mx1.out.test[127.0.0.2]: ") for o in outcomes)


def test_421_at_mail_from_is_temporary_not_a_refusal(servers: Servers) -> None:
    servers.smtp("127.0.0.2", Mailbox(mail={"alice@example.test": "421 4.7.0 Too many"}))
    outcomes = deliver(
        "[127.0.0.2]", [parcel("Q1", "a@remote.test")], servers.port, domain="remote.test"
    )
    assert [(o.kind, o.status) for o in outcomes] == [("temporary", "4.4.2")]


def test_dropped_connection_sends_what_is_left_to_the_next_host(
    servers: Servers, dns_server: NameServer
) -> None:
    first = servers.smtp("127.0.0.2", Mailbox(rcpt={"cut@remote.test": DROP}))
    second = servers.smtp("127.0.0.3")
    outcomes = deliver(
        "two.out.test",
        [
            parcel("Q1", "a@remote.test"),
            parcel("Q2", "b@remote.test", "cut@remote.test"),
            parcel("Q3", "c@remote.test"),
        ],
        servers.port,
        dns_server.address,
    )
    assert kinds(outcomes) == {
        ("Q1", "a@remote.test"): "delivered",
        ("Q2", "b@remote.test"): "delivered",
        ("Q2", "cut@remote.test"): "delivered",
        ("Q3", "c@remote.test"): "delivered",
    }
    assert [t.recipients for t in first.transactions] == [("a@remote.test",)]
    assert [t.recipients for t in second.transactions] == [
        ("b@remote.test", "cut@remote.test"),
        ("c@remote.test",),
    ]
    assert len(second.peers) == 1


def test_dropped_connection_at_data_with_no_other_host_is_temporary(
    servers: Servers, dns_server: NameServer
) -> None:
    mailbox = servers.smtp("127.0.0.2", Mailbox(data=DROP))
    outcomes = deliver(
        "one.out.test",
        [parcel("Q1", "a@remote.test"), parcel("Q2", "b@remote.test")],
        servers.port,
        dns_server.address,
    )
    assert kinds(outcomes) == {
        ("Q1", "a@remote.test"): "temporary",
        ("Q2", "b@remote.test"): "temporary",
    }
    assert {o.status for o in outcomes} == {"4.4.2"}
    assert all(not o.smtp for o in outcomes)
    assert mailbox.transactions == []


# --- hosts that do not take the connection ------------------------------------------------------


def test_host_that_refuses_connections_is_skipped(servers: Servers, dns_server: NameServer) -> None:
    second = servers.smtp("127.0.0.3")  # nothing listens on 127.0.0.4, the first exchanger
    outcomes = deliver(
        "down.out.test", [parcel("Q1", "a@remote.test")], servers.port, dns_server.address
    )
    assert [(o.kind, o.remote) for o in outcomes] == [("delivered", "mx2.out.test")]
    assert len(second.transactions) == 1


@pytest.mark.parametrize(
    "greeting", ["421 4.3.2 Too busy", "554 5.7.1 No SMTP service here"], ids=["421", "554"]
)
def test_host_that_refuses_at_the_greeting_is_skipped(
    servers: Servers, dns_server: NameServer, greeting: str
) -> None:
    grumpy = servers.greeter("127.0.0.5", greeting)
    second = servers.smtp("127.0.0.3")
    outcomes = deliver(
        "grumpy.out.test", [parcel("Q1", "a@remote.test")], servers.port, dns_server.address
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert grumpy.connections == 1
    assert len(second.transactions) == 1


def test_host_that_never_greets_is_given_up_after_the_time_out(
    servers: Servers, dns_server: NameServer
) -> None:
    mute = servers.greeter("127.0.0.5", None)
    second = servers.smtp("127.0.0.3")
    outcomes = deliver(
        "grumpy.out.test",
        [parcel("Q1", "a@remote.test")],
        servers.port,
        dns_server.address,
        timeout=1.0,
    )
    assert [(o.kind, o.remote) for o in outcomes] == [("delivered", "mx2.out.test")]
    assert mute.connections == 1
    assert len(second.transactions) == 1


def test_no_host_takes_the_connection(servers: Servers, dns_server: NameServer) -> None:
    servers.greeter("127.0.0.5", "421 4.3.2 Too busy")  # and nothing listens on 127.0.0.3
    outcomes = deliver(
        "grumpy.out.test",
        [parcel("Q1", "a@remote.test", "b@remote.test")],
        servers.port,
        dns_server.address,
    )
    assert [(o.recipient, o.kind, o.status) for o in outcomes] == [
        ("a@remote.test", "temporary", "4.4.1"),
        ("b@remote.test", "temporary", "4.4.1"),
    ]
    assert all(o.text.startswith("mx2.out.test[127.0.0.3]: ") for o in outcomes)
    assert all(o.remote is None for o in outcomes)


def test_relay_host_is_used_without_mx(servers: Servers, dns_server: NameServer) -> None:
    relay = servers.smtp("127.0.0.3")
    outcomes = deliver(
        "relay.out.test",
        [parcel("Q1", "a@remote.test")],
        servers.port,
        dns_server.address,
        domain="remote.test",
    )
    assert [(o.kind, o.remote) for o in outcomes] == [("delivered", "relay.out.test")]
    assert len(relay.transactions) == 1


# --- DNS failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queue", "status"),
    [("nosuch.out.test", "5.1.2"), ("nullmx.out.test", "5.1.10")],
    ids=["nxdomain", "null-mx"],
)
def test_permanent_dns_failure_fails_every_recipient(
    dns_server: NameServer, queue: str, status: str
) -> None:
    outcomes = deliver(
        queue,
        [parcel("Q1", "a@x.test", "b@x.test"), parcel("Q2", "c@x.test")],
        25,
        dns_server.address,
    )
    assert [(o.queue_id, o.recipient, o.kind, o.status) for o in outcomes] == [
        ("Q1", "a@x.test", "permanent", status),
        ("Q1", "b@x.test", "permanent", status),
        ("Q2", "c@x.test", "permanent", status),
    ]
    assert all(o.remote is None and not o.smtp for o in outcomes)


def test_dns_time_out_is_temporary() -> None:
    with Silent() as silent:
        outcomes = deliver("remote.test", [parcel("Q1", "a@remote.test")], 25, silent.address)
    assert [(o.kind, o.status, o.text) for o in outcomes] == [
        ("temporary", "4.4.3", "remote.test: DNS failure (time-out)")
    ]


# --- TLS ---------------------------------------------------------------------------------------


def test_starttls_is_used_when_offered(
    servers: Servers, dns_server: NameServer, tls: ssl.SSLContext
) -> None:
    mailbox = servers.smtp("127.0.0.2", tls=tls)
    outcomes = deliver(
        "one.out.test",
        [parcel("Q1", "a@remote.test"), parcel("Q2", "b@remote.test")],
        servers.port,
        dns_server.address,
    )
    assert {o.kind for o in outcomes} == {"delivered"}
    assert [t.tls for t in mailbox.transactions] == [True, True]
    assert len(mailbox.peers) == 1


def test_starttls_to_an_ip_literal(servers: Servers, tls: ssl.SSLContext) -> None:
    mailbox = servers.smtp("127.0.0.2", tls=tls)
    outcomes = deliver(
        "[127.0.0.2]", [parcel("Q1", "a@remote.test")], servers.port, domain="remote.test"
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [t.tls for t in mailbox.transactions] == [True]


def test_plain_delivery_when_tls_is_not_offered(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")
    outcomes = deliver(
        "[127.0.0.2]", [parcel("Q1", "a@remote.test")], servers.port, domain="remote.test"
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [t.tls for t in mailbox.transactions] == [False]


def test_required_tls_is_used(
    servers: Servers, dns_server: NameServer, tls: ssl.SSLContext
) -> None:
    mailbox = servers.smtp("127.0.0.2", tls=tls)
    outcomes = deliver(
        "one.out.test",
        [parcel("Q1", "a@remote.test")],
        servers.port,
        dns_server.address,
        require_tls=True,
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [t.tls for t in mailbox.transactions] == [True]


def test_required_tls_not_offered_is_temporary(servers: Servers, dns_server: NameServer) -> None:
    mailbox = servers.smtp("127.0.0.2")
    outcomes = deliver(
        "one.out.test",
        [parcel("Q1", "a@remote.test", "b@remote.test")],
        servers.port,
        dns_server.address,
        require_tls=True,
    )
    assert [(o.kind, o.status, o.text) for o in outcomes] == [
        (
            "temporary",
            "4.7.4",
            "mx1.out.test[127.0.0.2]: TLS is required, but was not offered; "
            "TLS policy: one.out.test is in outbound.require_tls",
        ),
    ] * 2
    assert mailbox.transactions == []


def test_required_tls_goes_to_the_host_that_offers_it(
    servers: Servers, dns_server: NameServer, tls: ssl.SSLContext
) -> None:
    plain = servers.smtp("127.0.0.2")
    secure = servers.smtp("127.0.0.3", tls=tls)
    outcomes = deliver(
        "two.out.test",
        [parcel("Q1", "a@remote.test")],
        servers.port,
        dns_server.address,
        require_tls=True,
    )
    assert [(o.kind, o.remote) for o in outcomes] == [("delivered", "mx2.out.test")]
    assert plain.transactions == []
    assert [t.tls for t in secure.transactions] == [True]


def test_required_tls_whose_handshake_fails_is_temporary(
    servers: Servers, dns_server: NameServer, broken_tls: ssl.SSLContext
) -> None:
    mailbox = servers.smtp("127.0.0.2", tls=broken_tls)
    outcomes = deliver(
        "one.out.test",
        [parcel("Q1", "a@remote.test")],
        servers.port,
        dns_server.address,
        require_tls=True,
    )
    assert [(o.kind, o.status) for o in outcomes] == [("temporary", "4.7.5")]
    assert mailbox.transactions == []


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("self-signed", "self-signed certificate"),
        ("wrong-name", "Hostname mismatch, certificate is not valid for 'mx1.out.test'."),
        ("expired", "certificate has expired"),
    ],
)
def test_required_tls_with_an_unverifiable_certificate_is_deferred(
    servers: Servers, dns_server: NameServer, authority: Authority, kind: str, reason: str
) -> None:
    # `require_tls` means a certificate verified for the MX host's name: an attacker
    # in the path can present any certificate to a client that does not check it.
    issued = {
        "self-signed": lambda: authority.self_signed("mx1.out.test"),
        "wrong-name": lambda: authority.issue("other.out.test"),
        "expired": lambda: authority.issue("mx1.out.test", expired=True, label="old"),
    }[kind]()
    mailbox = servers.smtp("127.0.0.2", tls=issued.server_context())
    outcomes = deliver(
        "one.out.test",
        [parcel("Q1", "a@remote.test")],
        servers.port,
        dns_server.address,
        require_tls=True,
    )
    assert [(o.kind, o.status, o.text) for o in outcomes] == [
        (
            "temporary",
            "4.7.5",
            f"mx1.out.test[127.0.0.2]: certificate not verified for mx1.out.test: {reason}; "
            "TLS policy: one.out.test is in outbound.require_tls",
        )
    ]
    assert mailbox.transactions == []


def test_opportunistic_tls_takes_any_certificate(
    servers: Servers, dns_server: NameServer, self_signed: ssl.SSLContext
) -> None:
    mailbox = servers.smtp("127.0.0.2", tls=self_signed)
    outcomes = deliver(
        "one.out.test", [parcel("Q1", "a@remote.test")], servers.port, dns_server.address
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [t.tls for t in mailbox.transactions] == [True]


def test_opportunistic_tls_whose_handshake_fails_falls_back_to_plain_text(
    servers: Servers, dns_server: NameServer, broken_tls: ssl.SSLContext
) -> None:
    # Opportunistic TLS (RFC 7435): encryption when it works, clear text when it does
    # not. Only a site that requires TLS for a domain turns a failed handshake into
    # a delay; otherwise a host with a broken TLS set-up would never get its mail.
    mailbox = servers.smtp("127.0.0.2", tls=broken_tls)
    outcomes = deliver(
        "one.out.test", [parcel("Q1", "a@remote.test")], servers.port, dns_server.address
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [t.tls for t in mailbox.transactions] == [False]


# --- addresses the client cannot encode -------------------------------------------------------


def test_utf8_addresses_never_reach_a_server_without_smtputf8(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2", smtputf8=False)
    parcels = [
        parcel("Q1", "jörg@remote.test"),
        parcel("Q2", "ok@remote.test", sender="rené@example.test"),
        parcel("Q3", "ok@remote.test"),
    ]
    outcomes = deliver("[127.0.0.2]", parcels, servers.port, domain="remote.test")
    found = by_recipient(outcomes)
    for key in (("Q1", "jörg@remote.test"), ("Q2", "ok@remote.test")):
        assert (found[key].kind, found[key].status) == ("permanent", "5.6.7")
    assert found["Q3", "ok@remote.test"].kind == "delivered"
    assert [(t.sender, t.recipients) for t in mailbox.transactions] == [
        ("alice@example.test", ("ok@remote.test",))
    ]


def test_utf8_addresses_go_with_smtputf8_to_a_server_that_offers_it(servers: Servers) -> None:
    mailbox = servers.smtp("127.0.0.2")
    sent = Parcel("Q1", "rené@example.test", ("jörg@remote.test",), "S: grüße\r\n".encode())
    outcomes = deliver("[127.0.0.2]", [sent], servers.port, domain="remote.test")
    assert [o.kind for o in outcomes] == ["delivered"]
    (transaction,) = mailbox.transactions
    assert (transaction.sender, transaction.recipients) == (
        "rené@example.test",
        ("jörg@remote.test",),
    )
    assert "SMTPUTF8" in transaction.options
    assert transaction.content == sent.message


def test_non_ascii_recipient_does_not_stop_the_queue(servers: Servers) -> None:
    # The server offers SMTPUTF8 (RFC 6531). Whether the client uses it or fails that
    # recipient, deliver() must give an outcome for every recipient and not raise:
    # an exception here leaves every message of the batch waiting until a restart.
    mailbox = servers.smtp("127.0.0.2")
    parcels = [
        Parcel("Q1", "alice@example.test", ("ok@remote.test", "jörg@remote.test"), b"S: x\r\n"),
        parcel("Q2", "other@remote.test"),
    ]
    outcomes = deliver("[127.0.0.2]", parcels, servers.port, domain="remote.test")
    found = by_recipient(outcomes)
    assert set(found) == {
        ("Q1", "ok@remote.test"),
        ("Q1", "jörg@remote.test"),
        ("Q2", "other@remote.test"),
    }
    assert found["Q1", "ok@remote.test"].kind == "delivered"
    assert found["Q2", "other@remote.test"].kind == "delivered"
    assert found["Q1", "jörg@remote.test"].kind in ("delivered", "permanent")
    assert ("other@remote.test",) in [t.recipients for t in mailbox.transactions]


# --- what a domain's TLS policy asks of each host ---------------------------------------


def _with_policy(
    queue: str,
    parcels: list[Parcel],
    port: int,
    nameserver: str,
    needed: tlsneed.Need,
    connections: outbound.Connections | None = None,
) -> tuple[list[Fate], list[tlsrpt.TlsSession]]:
    seen: list[tlsrpt.TlsSession] = []

    async def policy(domain: str, hosts: list[mx.Host]) -> tlsneed.Need:
        return needed

    settings = Settings(
        helo=HELO,
        port=port,
        timeout=5.0,
        trust=TRUST,
        policy=policy,
        observe=seen.append,
        connections=connections,
    )

    async def run() -> list[Fate]:
        outcomes = await outbound.deliver(
            queue, queue, parcels, settings, mx.resolver(nameserver, 1.0)
        )
        if connections is not None:
            await connections.sweep(everything=True)
        await closed()
        return outcomes

    return asyncio.run(run()), seen


def _sts(mode: str, *patterns: str) -> tlsneed.Need:
    policy = StsPolicy(mode, patterns, 86400, "p1", 0.0)  # type: ignore[arg-type]
    return tlsneed.need(tlsneed.TlsFacts("one.out.test", sts=policy, sts_note="fetched"))


def test_a_testing_policy_delivers_without_starttls_and_reports_it(
    servers: Servers, dns_server: NameServer
) -> None:
    mailbox = servers.smtp("127.0.0.2")
    outcomes, seen = _with_policy(
        "one.out.test",
        [parcel("Q1", "a@one.out.test")],
        servers.port,
        dns_server.address,
        _sts("testing", "mx1.out.test"),
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [t.tls for t in mailbox.transactions] == [False]
    assert [(s.success, s.result, s.mx, s.ip, s.sending_ip) for s in seen] == [
        (False, "starttls-not-supported", "mx1.out.test", "127.0.0.2", "127.0.0.1")
    ]


def test_a_testing_policy_delivers_to_a_wrong_certificate_over_tls(
    servers: Servers, dns_server: NameServer, self_signed: ssl.SSLContext
) -> None:
    mailbox = servers.smtp("127.0.0.2", tls=self_signed)
    outcomes, seen = _with_policy(
        "one.out.test",
        [parcel("Q1", "a@one.out.test")],
        servers.port,
        dns_server.address,
        _sts("testing", "mx1.out.test"),
    )
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [t.tls for t in mailbox.transactions] == [True]
    assert [(s.success, s.result, s.sending_ip) for s in seen] == [
        (False, "certificate-not-trusted", "127.0.0.1")
    ]


def test_an_enforce_policy_passes_over_hosts_it_does_not_name(
    servers: Servers, dns_server: NameServer, tls: ssl.SSLContext
) -> None:
    first = servers.smtp("127.0.0.2", tls=tls)
    second = servers.smtp("127.0.0.3", tls=tls)
    outcomes, seen = _with_policy(
        "two.out.test",
        [parcel("Q1", "a@two.out.test")],
        servers.port,
        dns_server.address,
        _sts("enforce", "mx2.out.test"),
    )
    assert [(o.kind, o.remote) for o in outcomes] == [("delivered", "mx2.out.test")]
    assert first.transactions == [] and first.peers == set()  # never even connected
    assert len(second.transactions) == 1
    assert [(s.success, s.result, s.mx) for s in seen] == [
        (False, "validation-failure", "mx1.out.test"),
        (True, "", "mx2.out.test"),
    ]
    outcomes, _ = _with_policy(
        "one.out.test",
        [parcel("Q2", "a@one.out.test")],
        servers.port,
        dns_server.address,
        _sts("enforce", "mx2.out.test"),
    )
    assert [(o.kind, o.status) for o in outcomes] == [("temporary", "4.7.5")]
    assert outcomes[0].text.startswith(
        "mx1.out.test: not an MX host the MTA-STS policy allows (MTA-STS policy id p1"
    )


def test_required_tls_to_an_ip_literal_checks_the_address(
    servers: Servers, authority: Authority
) -> None:
    mailbox = servers.smtp("127.0.0.2", tls=authority.issue("127.0.0.2").server_context())
    outcomes = deliver(
        "[127.0.0.2]", [parcel("Q1", "a@remote.test")], servers.port, domain="remote.test",
        require_tls=True,
    )  # fmt: skip
    assert [o.kind for o in outcomes] == ["delivered"]
    assert [t.tls for t in mailbox.transactions] == [True]


def test_an_unverified_kept_connection_never_serves_a_verified_delivery(
    servers: Servers, dns_server: NameServer, self_signed: ssl.SSLContext
) -> None:
    mailbox = servers.smtp("127.0.0.2", tls=self_signed)
    kept = outbound.Connections()

    async def run() -> list[Fate]:
        resolve = mx.resolver(dns_server.address, 1.0)
        opportunistic = Settings(
            helo=HELO, port=servers.port, timeout=5.0, connections=kept, trust=TRUST
        )
        required = replace(opportunistic, require_tls=True)
        outcomes = await outbound.deliver(
            "[127.0.0.2]", "remote.test", [parcel("Q1", "a@remote.test")], opportunistic, resolve
        )
        outcomes += await outbound.deliver(
            "[127.0.0.2]", "remote.test", [parcel("Q2", "b@remote.test")], required, resolve
        )
        await kept.sweep(everything=True)
        await closed()
        return outcomes

    outcomes = asyncio.run(run())
    assert [(o.kind, o.status) for o in outcomes] == [
        ("delivered", "2.0.0"),
        ("temporary", "4.7.5"),
    ]
    assert outcomes[1].text == (
        "[127.0.0.2][127.0.0.2]: certificate not verified for [127.0.0.2]: "
        "self-signed certificate; TLS policy: remote.test is in outbound.require_tls"
    )
    assert len(mailbox.transactions) == 1


# --- what recent batches found ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kept", "failure", "asks"),
    [(True, "", 1), (False, "", 3), (True, "sts-webpki-invalid", 3)],
    ids=["kept", "not-kept", "failed-fetch-not-kept"],
)
def test_batches_in_quick_succession_share_their_look_ups(
    servers: Servers, dns_server: NameServer, kept: bool, failure: str, asks: int
) -> None:
    """Within `Destinations.keep` seconds the next batch to a domain reuses the hosts and
    TLS need the last one found; without the memo, or when the MTA-STS policy could not
    be fetched (reported for each batch), each batch asks again."""
    mailbox = servers.smtp("127.0.0.2")
    asked: list[str] = []

    async def policy(domain: str, hosts: list[mx.Host]) -> tlsneed.Need:
        asked.append(domain)
        facts = tlsneed.TlsFacts(domain, sts_note="fetch failed", sts_failure=failure)
        return tlsneed.need(facts)

    memo = outbound.Destinations(keep=60.0) if kept else None
    settings = Settings(helo=HELO, port=servers.port, timeout=5.0, policy=policy, destinations=memo)

    async def run() -> list[Fate]:
        resolve = mx.resolver(dns_server.address, 1.0)
        outcomes = []
        for n in range(3):
            batch = [parcel(f"Q{n}", "bob@one.out.test")]
            outcomes += await outbound.deliver(
                "one.out.test", "one.out.test", batch, settings, resolve
            )
        await closed()
        return outcomes

    outcomes = asyncio.run(run())
    assert [o.kind for o in outcomes] == ["delivered"] * 3
    assert len(mailbox.transactions) == 3
    assert asked == ["one.out.test"] * asks


def test_a_kept_destination_expires() -> None:
    memo = outbound.Destinations(keep=0.0)
    hosts = [mx.Host("mx1.out.test", ("127.0.0.2",))]
    memo.put(("a.test", "a.test", False), hosts, tlsneed.plain("a.test", False))
    assert memo.get(("a.test", "a.test", False)) is None  # kept for no time at all
    memo = outbound.Destinations(keep=60.0)
    memo.put(("a.test", "a.test", False), hosts, tlsneed.plain("a.test", False))
    assert memo.get(("a.test", "a.test", False)) == (hosts, tlsneed.plain("a.test", False))
    assert memo.get(("a.test", "a.test", True)) is None  # require_tls is part of the key
