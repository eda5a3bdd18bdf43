"""End to end: `mailplan serve` as a subprocess, smtplib (and raw sockets) as the client.

Everything runs on loopback. The server listens on 127.0.0.1, which is the site's one
Client IP; an untrusted client is made by connecting *from* 127.0.0.9, and a blacklisted
one from 127.0.0.66 (the whole of 127.0.0.0/8 is local on Linux). One server serves the
module; each test writes to its own accounts so that tests do not see each other's mail.
Reload and stop have servers of their own.
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from interop import program
from serverkit import LOOPBACK, Maildir, MailServer, free_ports, mailplan, wait_until
from sitekit import NO_SENDER_CHECKS, site_yaml

from mailplan.runtime.decide import replies
from mailplan.runtime.serve import devtls

HOSTNAME = "mail.example.com"
PASSWORD = "secret"
UNTRUSTED = "127.0.0.9"
BLACKLISTED = "127.0.0.66"
MAX_SIZE = 65536
MAX_RECIPIENTS = 5
TIMEOUT = 10.0

QUEUED = re.compile(rb"^2\.0\.0 OK: queued as (\S+)$")


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- the site --------------------------------------------------------------------------

# Cases whose accounts the module site must have (one account per case keeps them apart).
SMUGGLING = {
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
}
DOTS = {
    "body-lines": b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n"
    b". dot space\r\nend\r\n",
    "first-line": b".first line starts with a dot\r\nsecond\r\n",
    "only-dots": b".\r\n..\r\n...\r\n",
    "eight-bit": b"Subject: 8bit\r\n\r\n" + bytes(range(128, 256)) + b"\r\n",
    "bare-lf-and-cr": b"Subject: bare\r\n\r\none\ntwo\rthree\r\n",
    "long-line": b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n",
}
BAD_COMMANDS = (
    "unknown-command",
    "rcpt-before-mail",
    "data-before-rcpt",
    "nested-mail",
    "empty-line",
    "sender-without-domain",
    "malformed-address",
)
BAD_UTF8 = (
    "sender-without-smtputf8",
    "recipient-without-smtputf8",
    "u-label-without-smtputf8",
    "sender-not-utf8",
    "recipient-not-utf8",
    "recipient-overlong-utf8",
    "helo-not-utf8",
    "vrfy-not-utf8",
    "bad-idn-domain",
)
SIZES = ("undeclared-over", "declared-small-sends-big", "far-over", "exactly-the-limit")


def accounts(password_hash: str, *more: str) -> dict[str, dict[str, object]]:
    """The accounts of example.com, and `more` (without settings)."""
    return {
        "alice": {"password": password_hash, "aliases": ["al", "alison"]},
        "printer": {},
        "dora": {},
        "carol": {"aliases": ["caro"]},
        "dave": {},
        "ellen": {"aliases": ["el"]},
        "erin": {"aliases": ["erin2"]},
        "frank": {},
        "fwdcopy": {},
        "nullsender": {},
        "crowd": {"aliases": [f"crowd{i}" for i in range(1, 8)]},
        "blk": {},
        "implicit": {},
        "stamp": {},
        "piped1": {},
        "piped2": {},
        "many": {},
        "helo": {},
        **{f"bare-cr-{case}": {} for case in ("helo", "quoted-sender")},
        **{f"big-{case}": {} for case in SIZES},
        **{f"dots-{case}": {} for case in DOTS},
        **{f"smuggle-{case}": {} for case in SMUGGLING},
        **{f"smuggled-{case}": {} for case in SMUGGLING},
        **{f"after-{case}": {} for case in BAD_COMMANDS},
        **{f"after-{case}": {} for case in BAD_UTF8},
        "zoë": {},
        "chloé": {},
        "émile": {},
        "zoe": {"aliases": ["ζωή"]},
        "ülrich": {},
        "rené": {},
        **{name: {} for name in more},
    }


def site_text(ports: dict[str, int], password_hash: str, *more_accounts: str) -> str:
    return site_yaml(
        hostname=HOSTNAME,
        listeners=ports,
        tls=True,
        accounts=accounts(password_hash, *more_accounts),
        domains={
            "example.com": {
                "aliases": ["example.org", "straße.example"],
                "forwarders": {"info": "sales@forward.example"},
            },
            "xn--bcher-kva.example": {"accounts": {"jörg": {}, "jürgen": {}}},  # bücher.example
        },
        extra={
            "server": {"blacklisted_ips": BLACKLISTED},
            "limits": {"max_message_size": MAX_SIZE, "max_recipients": MAX_RECIPIENTS},
            **NO_SENDER_CHECKS,  # not what these tests are about: tests/test_receiving.py is
            "routing": "router.cgr",
        },
    )


ROUTER = '<gone@example.com> = error "gone away; write to alice@example.com"\n'


@dataclass
class Site:
    """A site on disk and the server that serves it."""

    directory: Path
    root: Path
    ports: dict[str, int]
    server: MailServer
    password_hash: str

    def maildir(self, account: str, domain: str = "example.com") -> Maildir:
        return Maildir(self.root / "var" / "mail" / domain / account)

    def queue_file(self, queue_id: str) -> Path:
        return self.root / "var" / "queue" / f"{queue_id}.msg"

    def wait_processed(self, queue_id: str) -> None:
        """Wait until a message has left the queue (or the intake journal) and the log
        says what became of its recipients."""
        said = re.compile(rf"{queue_id} <[^>]*> (delivered|discarded|queued)")

        def processed() -> bool:
            return not self.queue_file(queue_id).exists() and bool(said.search(self.server.log()))

        assert wait_until(processed, TIMEOUT), f"{queue_id} not processed:\n{self.server.log()}"

    def queue(self) -> dict[str, int]:
        """`mailplan queue`: the number of recipients waiting in each logical queue."""
        result = mailplan("queue", "--site", self.directory, "--root", self.root)
        assert result.returncode == 0, result.stderr
        found = {}
        for line in result.stdout.splitlines()[1:]:
            match = re.match(r"^(\S+)\s+(\d+)\s+\S+$", line)
            if match:
                found[match.group(1)] = int(match.group(2))
        return found

    def write(self, text: str) -> None:
        (self.directory / "site.yaml").write_text(text, encoding="utf-8")


def make_site(base: Path, password_hash: str) -> Site:
    devtls.ensure(base / "tls", HOSTNAME)
    directory = base / "site"
    directory.mkdir()
    smtp, submission, smtps = free_ports(3)
    ports = {"smtp": smtp, "submission": submission, "smtps": smtps}
    (directory / "router.cgr").write_text(ROUTER, encoding="utf-8")
    site = Site(directory, base, ports, MailServer(directory, base, ports.values()), password_hash)
    site.write(site_text(ports, password_hash))
    return site


@pytest.fixture(scope="module")
def password_hash() -> str:
    return PasswordHasher().hash(PASSWORD)


@pytest.fixture(scope="module")
def module_site(tmp_path_factory: pytest.TempPathFactory, password_hash: str) -> Iterator[Site]:
    site = make_site(tmp_path_factory.mktemp("e2e"), password_hash)
    site.server.start()
    try:
        yield site
    finally:
        site.server.stop()


@pytest.fixture
def site(module_site: Site) -> Iterator[Site]:
    """The module's server, which must outlive each test."""
    yield module_site
    assert module_site.server.running, "the server died:\n" + module_site.server.log()


@pytest.fixture
def own_site(tmp_path: Path, password_hash: str) -> Iterator[Site]:
    """A site and server for one test (reload, stop); stopped afterwards whatever happens."""
    site = make_site(tmp_path, password_hash)
    site.server.start()
    try:
        yield site
    finally:
        site.server.stop()


# -- clients ---------------------------------------------------------------------------


def connect(site: Site, listener: str = "smtp", source: str = UNTRUSTED) -> smtplib.SMTP:
    """A session from `source`, greeted and past EHLO."""
    port = site.ports[listener]
    client: smtplib.SMTP
    if listener == "smtps":
        client = smtplib.SMTP_SSL(
            LOOPBACK, port, timeout=TIMEOUT, source_address=(source, 0), context=unverified()
        )
    else:
        client = smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT, source_address=(source, 0))
    code, _ = client.ehlo()
    assert code == 250
    return client


def login(
    client: smtplib.SMTP,
    user: str,
    password: str = PASSWORD,
    mechanism: str = "PLAIN",
    initial: bool = True,
) -> tuple[int, bytes]:
    """AUTH with one mechanism; returns the final reply instead of raising."""
    client.user, client.password = user, password
    handler = client.auth_plain if mechanism == "PLAIN" else client.auth_login
    try:
        return client.auth(mechanism, handler, initial_response_ok=initial)
    except smtplib.SMTPAuthenticationError as error:
        return error.smtp_code, error.smtp_error


def transaction(client: smtplib.SMTP, sender: str, recipients: list[str], message: bytes) -> str:
    """MAIL, RCPT (each must be accepted), DATA; returns the queue id."""
    assert client.mail(sender) == (250, b"2.1.0 Sender OK")
    for recipient in recipients:
        assert client.rcpt(recipient) == (250, b"2.1.5 Recipient OK"), recipient
    code, text = client.data(message)
    assert code == 250, (code, text)
    match = QUEUED.match(text)
    assert match, text
    return match.group(1).decode()


def message(subject: str, body: str = "hello") -> bytes:
    return f"From: <sender@remote.example>\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


def without_trace(delivered: bytes) -> bytes:
    """A delivered message without the Return-Path and Received lines the server put on top."""
    lines = delivered.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path: <"), lines[0]
    assert lines[1].startswith(b"Received: "), lines[1]
    rest = 2
    while lines[rest].startswith(b"\t"):
        rest += 1
    return b"\r\n".join(lines[rest:])


class Raw:
    """A byte-exact SMTP client on a plain socket, for what smtplib will not send."""

    def __init__(self, site: Site, listener: str = "smtp", source: str = UNTRUSTED) -> None:
        self.sock = socket.create_connection(
            (LOOPBACK, site.ports[listener]), timeout=TIMEOUT, source_address=(source, 0)
        )
        self.buffer = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server; unread: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> bytes:
        """One (possibly multi-line) reply; the lines joined with newlines."""
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\n".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def rest(self) -> list[bytes]:
        """Every reply line until the server closes the connection."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            self.buffer += chunk
        lines = self.buffer.split(b"\r\n")
        self.buffer = b""
        return [line for line in lines if line]


# -- delivery --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "account"),
    [
        ("dora@example.com", "dora"),
        ("caro@example.com", "carol"),
        ("dave@example.org", "dave"),
        ("el@example.org", "ellen"),
    ],
    ids=["account", "account-alias", "domain-alias", "domain-alias-and-account-alias"],
)
def test_local_delivery(site: Site, recipient: str, account: str) -> None:
    with connect(site) as client:
        queue_id = transaction(client, "sender@remote.example", [recipient], message(recipient))
    delivered = site.maildir(account).wait()
    assert len(delivered) == 1
    text = delivered[0]
    assert text.startswith(b"Return-Path: <sender@remote.example>\r\nReceived: from ")
    header = text.split(b"\r\n\r\n", 1)[0]
    assert f"([{UNTRUSTED}])".encode() in header
    assert f"by {HOSTNAME} (mailplan) with ESMTP id {queue_id}".encode() in header
    assert f"for <{recipient}>".encode() in header
    assert without_trace(text) == message(recipient)


def test_two_recipients_of_one_account_get_one_copy(site: Site) -> None:
    with connect(site) as client:
        queue_id = transaction(
            client,
            "sender@remote.example",
            ["erin@example.com", "erin2@example.com", "Erin@Example.ORG"],
            message("once"),
        )
    site.wait_processed(queue_id)
    assert len(site.maildir("erin").messages()) == 1


def test_unknown_recipient_refused_while_another_is_accepted(site: Site) -> None:
    with connect(site) as client:
        assert client.mail("sender@remote.example") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("frank@example.com") == (250, b"2.1.5 Recipient OK")
        code, text = client.rcpt("nobody@example.com")
        assert code == 550
        assert text.startswith(b"5.1.1 <nobody@example.com>: ")
        code, text = client.data(message("frank only"))
        assert code == 250, text
    delivered = site.maildir("frank").wait()
    assert len(delivered) == 1
    assert b"for <frank@example.com>" in delivered[0]
    assert not site.maildir("nobody").messages()


def test_forwarder_is_relayable_and_waits_in_the_smtp_queue(site: Site) -> None:
    with connect(site, source=UNTRUSTED) as client:
        queue_id = transaction(
            client,
            "sender@remote.example",
            ["info@example.com", "fwdcopy@example.com"],
            message("forward me"),
        )
    assert len(site.maildir("fwdcopy").wait()) == 1

    def local_copy_done() -> dict[str, int] | None:
        queues = site.queue()
        return None if "LOCAL(fwdcopy@example.com)" in queues else queues

    # once the local copy is done, the forwarded recipient is all that waits
    queues = wait_until(local_copy_done)
    assert isinstance(queues, dict), "the local recipient is never done"
    assert site.queue_file(queue_id).exists(), "the forwarded recipient was dropped"
    assert queues.get("SMTP(forward.example)") == 1


def test_routing_table_error_refused_at_rcpt(site: Site) -> None:
    with connect(site) as client:
        assert client.mail("sender@remote.example") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("gone@example.com") == (
            550,
            b"5.7.1 <gone@example.com>: gone away; write to alice@example.com",
        )
        assert client.noop()[0] == 250


def test_null_sender_accepted(site: Site) -> None:
    with connect(site) as client:
        assert client.mail("") == (250, b"2.1.0 Sender OK")  # smtplib sends MAIL FROM:<>
        assert client.rcpt("nullsender@example.com") == (250, b"2.1.5 Recipient OK")
        assert client.data(message("a bounce"))[0] == 250
    delivered = site.maildir("nullsender").wait()
    assert len(delivered) == 1
    assert delivered[0].startswith(b"Return-Path: <>\r\n")


@pytest.mark.parametrize("case", list(DOTS), ids=list(DOTS))
def test_dot_stuffing_round_trip(site: Site, case: str) -> None:
    original = DOTS[case]
    with connect(site) as client:
        transaction(client, "sender@remote.example", [f"dots-{case}@example.com"], original)
    delivered = site.maildir(f"dots-{case}").wait()
    assert len(delivered) == 1
    assert without_trace(delivered[0]) == original


@pytest.mark.parametrize("case", list(SMUGGLING), ids=list(SMUGGLING))
def test_smtp_smuggling_gives_one_message(site: Site, case: str) -> None:
    fake_end = SMUGGLING[case]
    smuggled = (
        b"MAIL FROM:<smuggler@remote.example>\r\n"
        b"RCPT TO:<smuggled-" + case.encode() + b"@example.com>\r\n"
        b"DATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled body\r\n"
    )
    data = b"Subject: outer\r\n\r\nouter body" + fake_end + smuggled + b".\r\n"
    with Raw(site) as raw:
        assert raw.reply().startswith(b"220 ")
        assert raw.command(b"EHLO client.example").startswith(b"250-")
        assert raw.command(b"MAIL FROM:<sender@remote.example>") == b"250 2.1.0 Sender OK"
        rcpt = b"RCPT TO:<smuggle-" + case.encode() + b"@example.com>"
        assert raw.command(rcpt) == b"250 2.1.5 Recipient OK"
        assert raw.command(b"DATA").startswith(b"354 ")
        raw.send(data + b"QUIT\r\n")
        replies = raw.rest()
    assert len(replies) == 2, replies
    match = QUEUED.match(replies[0][4:])
    assert replies[0].startswith(b"250 ") and match, replies
    assert replies[1].startswith(b"221 "), replies
    site.wait_processed(match.group(1).decode())
    delivered = site.maildir(f"smuggle-{case}").messages()
    assert len(delivered) == 1
    assert b"MAIL FROM:<smuggler@remote.example>" in delivered[0]
    assert b"smuggled body" in delivered[0]
    assert not site.maildir(f"smuggled-{case}").messages()


# -- policy: relaying, limits, blacklist -----------------------------------------------


RELAY_TRICKS = {
    "percent-hack": "someone%trick-relay.example@example.com",
    "source-route": "<@example.com:someone@trick-relay.example>",
    "bang-path": "trick-relay.example!someone",
    "ip-literal": "someone@[192.0.2.1]",
    "own-ip-literal-percent": "someone%trick-relay.example@[127.0.0.1]",
}


@pytest.mark.parametrize("address", RELAY_TRICKS.values(), ids=RELAY_TRICKS.keys())
def test_relay_tricks_refused_for_an_untrusted_client(site: Site, address: str) -> None:
    with Raw(site) as raw:
        raw.reply()
        raw.command(b"EHLO client.example")
        assert raw.command(b"MAIL FROM:<sender@remote.example>") == b"250 2.1.0 Sender OK"
        rcpt = address if address.startswith("<") else f"<{address}>"
        reply = raw.command(f"RCPT TO:{rcpt}".encode())
        assert reply.startswith(b"550 5.7.1 Relaying denied: "), reply
    queues = site.queue()
    assert "SMTP(trick-relay.example)" not in queues
    assert "SMTP([192.0.2.1])" not in queues


def test_relay_refused_for_an_untrusted_client(site: Site) -> None:
    with connect(site, "smtp", UNTRUSTED) as client:
        assert client.mail("sender@remote.example") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("someone@stranger-relay.example") == (
            550,
            b"5.7.1 Relaying denied: <someone@stranger-relay.example> is not a local address",
        )
        client.starttls(context=unverified())
        client.ehlo()
        assert client.mail("sender@remote.example") == (250, b"2.1.0 Sender OK")
        code, text = client.rcpt("someone@stranger-relay.example")
        assert (code, text[:6]) == (550, b"5.7.1 ")
    assert "SMTP(stranger-relay.example)" not in site.queue()


@pytest.mark.parametrize(
    ("listener", "source", "authenticate", "domain"),
    [
        ("smtp", LOOPBACK, False, "client-relay.example"),
        ("smtp", UNTRUSTED, True, "smtp-auth-relay.example"),
        ("submission", UNTRUSTED, True, "submission-relay.example"),
        ("smtps", UNTRUSTED, True, "smtps-relay.example"),
    ],
    ids=["client-ip", "auth-on-smtp", "auth-on-submission", "auth-on-smtps"],
)
def test_relay_accepted(
    site: Site, listener: str, source: str, authenticate: bool, domain: str
) -> None:
    with connect(site, listener, source) as client:
        if authenticate:
            if listener != "smtps":
                assert client.starttls(context=unverified())[0] == 220
                client.ehlo()
            assert login(client, "alice") == (235, b"2.7.0 Authentication successful")
        transaction(client, "alice@example.com", [f"someone@{domain}"], message("relay"))
    assert site.queue().get(f"SMTP({domain})") == 1


@pytest.mark.parametrize("starttls", [False, True], ids=["plain", "after-starttls"])
def test_submission_without_auth_refused_at_mail(site: Site, starttls: bool) -> None:
    with connect(site, "submission") as client:
        if starttls:
            client.starttls(context=unverified())
        client.ehlo()
        assert client.mail("alice@example.com") == (530, b"5.7.0 Authentication required")
        assert client.noop()[0] == 250


def test_authenticated_message_is_stamped(site: Site) -> None:
    with connect(site, "submission") as client:
        client.starttls(context=unverified())
        client.ehlo()
        assert login(client, "alice")[0] == 235
        queue_id = transaction(client, "alice@example.com", ["stamp@example.com"], message("x"))
    delivered = site.maildir("stamp").wait()
    assert len(delivered) == 1
    assert f"with ESMTPSA id {queue_id}".encode() in delivered[0]


@pytest.mark.parametrize("listener", ["smtp", "submission", "smtps"])
def test_blacklisted_client_refused_at_connect(site: Site, listener: str) -> None:
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        connect(site, listener, BLACKLISTED)
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error == b"5.7.1 Access denied: your address is blacklisted here"
    if listener == "smtp":
        with Raw(site, listener, BLACKLISTED) as raw:
            assert raw.reply().startswith(b"554 5.7.1 ")
            assert raw.rest() == [], "the connection stays open after the refusal"
    with connect(site) as client:  # the server keeps serving everybody else
        transaction(client, "sender@remote.example", ["blk@example.com"], message(listener))


def test_max_recipients(site: Site) -> None:
    with connect(site) as client:
        assert client.mail("sender@remote.example")[0] == 250
        for number in range(1, MAX_RECIPIENTS + 1):
            assert client.rcpt(f"crowd{number}@example.com") == (250, b"2.1.5 Recipient OK")
        assert client.rcpt(f"crowd{MAX_RECIPIENTS + 1}@example.com") == (
            452,
            f"4.5.3 Too many recipients (at most {MAX_RECIPIENTS} in one message)".encode(),
        )
        code, text = client.data(message("crowd"))
        assert code == 250, text
        queue_id = QUEUED.match(text)
        assert queue_id
    site.wait_processed(queue_id.group(1).decode())
    assert len(site.maildir("crowd").messages()) == 1


def test_size_advertised(site: Site) -> None:
    with connect(site) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == str(MAX_SIZE)


def _sized(size: int) -> bytes:
    head = b"Subject: big\r\n\r\n"
    line = b"x" * 78 + b"\r\n"
    body = (line * (size // len(line) + 1))[: size - len(head) - 2] + b"\r\n"
    assert len(head + body) == size
    return head + body


@pytest.mark.parametrize("case", SIZES, ids=SIZES)
def test_message_size(site: Site, case: str) -> None:
    size = {"far-over": 1024 * 1024, "exactly-the-limit": MAX_SIZE}.get(case, MAX_SIZE + 1)
    options = ["SIZE=100"] if case == "declared-small-sends-big" else []
    account = f"big-{case}@example.com"
    with connect(site) as client:
        assert client.mail("sender@remote.example", options) == (250, b"2.1.0 Sender OK")
        assert client.rcpt(account)[0] == 250
        code, text = client.data(_sized(size))
        if case == "exactly-the-limit":
            assert code == 250, text
            return
        assert (code, text) == (552, f"5.3.4 Message too big (at most {MAX_SIZE} bytes)".encode())
        # the session goes on
        transaction(client, "sender@remote.example", [account], message("small"))
    delivered = site.maildir(f"big-{case}").wait()
    assert len(delivered) == 1
    assert b"Subject: small" in delivered[0]


def test_declared_size_over_the_limit_refused_at_mail(site: Site) -> None:
    with connect(site) as client:
        code, text = client.mail("sender@remote.example", [f"SIZE={MAX_SIZE + 1}"])
        assert code == 552
        assert text.startswith(b"5.3.4 ")


def test_oversized_message_through_sendmail(site: Site) -> None:
    """smtplib declares SIZE itself: the message is refused, one way or the other, with 552."""
    with connect(site) as client, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail("sender@remote.example", ["big@example.com"], _sized(MAX_SIZE + 1))
    assert refused.value.smtp_code == 552


# -- AUTH ------------------------------------------------------------------------------


LOGIN_FORMS = [
    "alice",
    "alice@example.com",
    "alice%example.com",
    "al",
    "al@example.org",
    "ALICE@Example.COM",
]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("user", LOGIN_FORMS, ids=LOGIN_FORMS)
def test_auth_after_starttls(site: Site, user: str, mechanism: str) -> None:
    with connect(site, "submission") as client:
        client.ehlo()
        assert client.starttls(context=unverified())[0] == 220
        client.ehlo()
        assert login(client, user, mechanism=mechanism) == (235, b"2.7.0 Authentication successful")


@pytest.mark.parametrize(
    ("mechanism", "initial"),
    [("PLAIN", False), ("LOGIN", True)],
    ids=["PLAIN-challenge", "LOGIN-initial-response"],
)
def test_auth_exchange_variants(site: Site, mechanism: str, initial: bool) -> None:
    with connect(site, "smtp") as client:
        client.starttls(context=unverified())
        client.ehlo()
        assert login(client, "alice", mechanism=mechanism, initial=initial)[0] == 235


REFUSED = [
    ("alice", "wrong"),
    ("nobody", PASSWORD),
    ("printer", PASSWORD),  # an account without a password
    ("info", PASSWORD),  # a forwarder is no login
    ("alice@elsewhere.example", PASSWORD),
]


@pytest.mark.parametrize(
    ("user", "password"),
    REFUSED,
    ids=["wrong-password", "unknown-user", "no-password", "forwarder", "foreign-domain"],
)
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_refused(site: Site, user: str, password: str, mechanism: str) -> None:
    # each case from a client of its own: a success does not reset an IP's failure count
    case = REFUSED.index((user, password)) * 2 + (mechanism == "LOGIN")
    with connect(site, "submission", f"127.0.3.{10 + case}") as client:
        client.starttls(context=unverified())
        client.ehlo()
        assert login(client, user, password, mechanism) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
        # still not authenticated, and a second try may succeed
        assert client.mail("alice@example.com") == (530, b"5.7.0 Authentication required")
        assert login(client, "alice", mechanism=mechanism)[0] == 235
    assert site.server.wait_for_log(f"failed to log in as {user!r} (after waiting 0 s)")


def test_a_message_with_too_many_hops_is_refused(site: Site) -> None:
    """51 Received lines: a mail loop somewhere; refused at DATA (RFC 5321 6.3)."""
    hops = "".join(f"Received: from hop{n}.example by hop{n + 1}.example; x\r\n" for n in range(51))
    with connect(site) as client:
        client.mail("sender@remote.example")
        assert client.rcpt("alice@example.com")[0] == 250
        code, reply = client.data(f"{hops}Subject: loop\r\n\r\nround and round\r\n".encode())
    assert (code, reply) == (554, b"5.4.6 Too many hops: the message seems to be in a mail loop")


def test_failed_logins_slow_down_the_next_answer(site: Site) -> None:
    """Each failure from an IP doubles the wait before its next check (up to 30 s)."""
    source = "127.0.0.42"
    with connect(site, "submission", source) as client:
        client.starttls(context=unverified())
        client.ehlo()
        for _ in range(3):
            assert login(client, "alice", "wrong")[0] == 535
        assert login(client, "alice")[0] == 235
    # log lines are written by a thread of their own: wait for the last one
    assert site.server.wait_for_log(f"{source} logged in as alice@example.com")
    waits = [
        int(line.rsplit("after waiting ", 1)[1].removesuffix(" s)"))
        for line in site.server.log().splitlines()
        if source in line and "after waiting" in line
    ]
    # at least 0, 1 and 2 s (a loaded machine may add to a wait, never take from it)
    assert len(waits) == 3
    assert all(wait >= least for wait, least in zip(waits, (0, 1, 2), strict=True)), waits


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_auth_offered_only_after_starttls(site: Site, listener: str) -> None:
    with connect(site, listener) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN " + "AGFsaWNlAHNlY3JldA==")
        assert code == 538
        assert text.startswith(b"5.7.11 ")
        client.starttls(context=unverified())
        client.ehlo()
        assert not client.has_extn("starttls")
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]


def test_a_second_starttls_is_refused_and_the_session_goes_on(site: Site) -> None:
    with connect(site, "smtp") as client:
        client.starttls(context=unverified())
        client.ehlo()
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS is already active")
        assert client.noop()[0] == 250


def test_an_auth_line_past_the_limit_is_refused_without_an_error(site: Site) -> None:
    offset = len(site.server.log())
    with connect(site, "smtps") as client:
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        client.send(b"A" * 70_000 + b"\r\nNOOP\r\n")
        replies = [client.getreply()]
        while replies[-1][0] != 250:  # the rest of the line is read as a command, refused
            replies.append(client.getreply())
        assert replies[0] == (500, b"5.5.6 Authentication exchange line is too long")
        assert client.noop()[0] == 250
    log = site.server.log()[offset:]
    assert "Traceback" not in log and " ERROR " not in log, log


def test_implicit_tls(site: Site) -> None:
    with connect(site, "smtps") as client:
        client.ehlo()
        assert isinstance(client.sock, ssl.SSLSocket)
        assert not client.has_extn("starttls")
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        assert client.mail("alice@example.com") == (530, b"5.7.0 Authentication required")
        assert login(client, "alice@example.com") == (235, b"2.7.0 Authentication successful")
        queue_id = transaction(
            client, "alice@example.com", ["implicit@example.com"], message("tls")
        )
    delivered = site.maildir("implicit").wait()
    assert len(delivered) == 1
    assert f"with ESMTPSA id {queue_id}".encode() in delivered[0]


# -- robustness ------------------------------------------------------------------------


BAD = {
    "unknown-command": ([], b"FOO", 500),
    "rcpt-before-mail": ([], b"RCPT TO:<alice@example.com>", 503),
    "data-before-rcpt": ([b"MAIL FROM:<sender@remote.example>"], b"DATA", 503),
    "nested-mail": ([b"MAIL FROM:<sender@remote.example>"], b"MAIL FROM:<x@remote.example>", 503),
    "empty-line": ([], b"", 500),
    "sender-without-domain": ([], b"MAIL FROM:<nodomain>", 553),
    "malformed-address": ([b"MAIL FROM:<sender@remote.example>"], b"RCPT TO:<a b@@>", 553),
}
assert set(BAD) == set(BAD_COMMANDS)


@pytest.mark.parametrize("case", BAD_COMMANDS, ids=BAD_COMMANDS)
def test_bad_commands_get_5xx_and_the_session_goes_on(site: Site, case: str) -> None:
    before, bad, code = BAD[case]
    with Raw(site) as raw:
        assert raw.reply().startswith(b"220 ")
        assert raw.command(b"EHLO client.example").startswith(b"250")
        for line in before:
            assert raw.command(line).startswith(b"250 ")
        reply = raw.command(bad)
        assert int(reply[:3]) == code, reply
        if case == "sender-without-domain":
            assert reply == b"553 5.1.7 <nodomain>: the sender's domain is missing"
        if case == "data-before-rcpt":
            assert reply.startswith(b"503 5.5.1 ")
        assert raw.command(b"RSET").startswith(b"250 ")
        assert raw.command(b"MAIL FROM:<sender@remote.example>") == b"250 2.1.0 Sender OK"
        rcpt = f"RCPT TO:<after-{case}@example.com>".encode()
        assert raw.command(rcpt) == b"250 2.1.5 Recipient OK"
        assert raw.command(b"DATA").startswith(b"354 ")
        assert QUEUED.match(raw.command(b"Subject: after\r\n\r\nok\r\n.")[4:])
        assert raw.command(b"QUIT").startswith(b"221 ")
    assert len(site.maildir(f"after-{case}").wait()) == 1


def test_starttls_discards_the_transaction(site: Site) -> None:
    """RFC 3207 4.2: after STARTTLS the server forgets what the client said before it."""
    with connect(site) as client:
        assert client.mail("sender@remote.example")[0] == 250
        assert client.rcpt("dora@example.com")[0] == 250
        assert client.starttls(context=unverified())[0] == 220
        client.ehlo()
        code, text = client.docmd("DATA")
        assert code == 503, text


def test_commands_injected_before_tls_are_not_run(site: Site) -> None:
    """Plaintext sent in the same packet as STARTTLS must not run inside TLS (CVE-2011-0411)."""
    with Raw(site) as raw:
        raw.reply()
        raw.command(b"EHLO client.example")
        raw.send(b"STARTTLS\r\nMAIL FROM:<injected@remote.example>\r\n")
        assert raw.reply().startswith(b"220 ")
        assert raw.buffer == b""
        tls = unverified().wrap_socket(raw.sock, server_hostname=HOSTNAME)
        raw.sock = tls
        try:
            raw.command(b"EHLO client.example")
            assert raw.command(b"MAIL FROM:<sender@remote.example>") == b"250 2.1.0 Sender OK"
        except (ConnectionError, ssl.SSLError):
            pass  # dropping such a client is fine too
        finally:
            raw.sock.close()


def test_helo_session_is_stamped_smtp(site: Site) -> None:
    with smtplib.SMTP(
        LOOPBACK, site.ports["smtp"], timeout=TIMEOUT, source_address=(UNTRUSTED, 0)
    ) as client:
        assert client.helo("old.client.example")[0] == 250
        queue_id = transaction(
            client, "sender@remote.example", ["helo@example.com"], message("helo")
        )
    delivered = site.maildir("helo").wait()
    assert len(delivered) == 1
    assert b"Received: from old.client.example ([127.0.0.9])" in delivered[0]
    assert f"with SMTP id {queue_id}".encode() in delivered[0]


BARE_CR = {
    "helo": (b"EHLO evil.example\rX-Injected: yes", b"MAIL FROM:<sender@remote.example>"),
    "quoted-sender": (b"EHLO client.example", b'MAIL FROM:<"s\rX-Injected: yes"@remote.example>'),
}


@pytest.mark.parametrize("case", BARE_CR, ids=BARE_CR)
def test_bare_cr_from_the_client_never_reaches_the_headers(site: Site, case: str) -> None:
    """RFC 5321 allows no CR inside a command; RFC 5322 no bare CR in a header. The server
    may refuse the command, or clean what it copies, but a bare CR in a trace header lets
    a client inject header lines for any parser that takes CR as a line end."""
    helo, mail = BARE_CR[case]
    with Raw(site) as raw:
        raw.reply()
        if not raw.command(helo).startswith(b"250"):
            return  # refused: nothing can reach a header
        if not raw.command(mail).startswith(b"250"):
            return
        assert raw.command(f"RCPT TO:<bare-cr-{case}@example.com>".encode()).startswith(b"250")
        assert raw.command(b"DATA").startswith(b"354 ")
        assert QUEUED.match(raw.command(b"Subject: cr\r\n\r\nbody\r\n.")[4:])
    delivered = site.maildir(f"bare-cr-{case}").wait()
    assert len(delivered) == 1
    header = delivered[0].split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"\r(?!\n)", header) is None, header


def test_control_characters_are_refused_with_exact_replies(site: Site) -> None:
    with Raw(site) as raw:
        raw.reply()
        assert raw.command(b"EHLO evil.example\rX-Injected: yes") == (
            b"501 5.5.4 Syntax error: control characters in the host name"
        )
        assert raw.command(b"EHLO client.example").startswith(b"250")
        assert raw.command(b'MAIL FROM:<"s\rX-Injected: yes"@remote.example>') == (
            b'501 5.1.3 Bad address syntax: <"s\\rX-Injected: yes"@remote.example>'
        )
        assert raw.command(b"MAIL FROM:<sender@remote.example>") == b"250 2.1.0 Sender OK"
        assert raw.command(b"RCPT TO:<a\rb@example.com>") == (
            b"501 5.1.3 Bad address syntax: <a\\rb@example.com>"
        )


def test_postmaster_without_domain_accepted(site: Site) -> None:
    """RFC 5321 4.5.1: RCPT TO:<Postmaster> (no domain) must be accepted."""
    with Raw(site) as raw:
        raw.reply()
        raw.command(b"EHLO client.example")
        assert raw.command(b"MAIL FROM:<sender@remote.example>") == b"250 2.1.0 Sender OK"
        assert raw.command(b"RCPT TO:<Postmaster>") == b"250 2.1.5 Recipient OK"
        assert raw.command(b"DATA").startswith(b"354 ")
        reply = raw.command(b"Subject: to the postmaster\r\n\r\nhi\r\n.")
        assert QUEUED.match(reply[4:]), reply
    delivered = site.maildir("postmaster").wait()
    assert any(b"Subject: to the postmaster" in m for m in delivered)


# -- SMTPUTF8 (RFC 6531) ------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["smtp", "submission", "smtps"])
def test_smtputf8_is_advertised_on_every_listener(site: Site, listener: str) -> None:
    with connect(site, listener) as client:
        assert client.has_extn("smtputf8")


UTF8_RECIPIENTS = {
    "utf8-local-part": ("zoë@example.com", "zoë", "example.com"),
    "nfd-spelling": ("chloe\u0301@example.com", "chloé", "example.com"),
    "upper-case": ("ÉMILE@example.com", "émile", "example.com"),
    "utf8-alias": ("ζωή@example.com", "zoe", "example.com"),
    "u-labels-of-an-a-label-domain": ("jörg@bücher.example", "jörg", "xn--bcher-kva.example"),
    "a-labels": ("jürgen@xn--bcher-kva.example", "jürgen", "xn--bcher-kva.example"),
    "u-labels-of-a-domain-alias": ("ülrich@STRAßE.example", "ülrich", "example.com"),
}


@pytest.mark.parametrize("case", list(UTF8_RECIPIENTS), ids=list(UTF8_RECIPIENTS))
def test_utf8_recipient_reaches_its_maildir_as_sent(site: Site, case: str) -> None:
    recipient, account, domain = UTF8_RECIPIENTS[case]
    sent = (
        f"From: <rené@remote.example>\r\nTo: <{recipient}>\r\nSubject: grüße, {case}\r\n"
        "\r\nbody: ü\r\n"
    ).encode()
    with connect(site) as client:
        assert client.mail("rené@remote.example", ["SMTPUTF8"]) == (250, b"2.1.0 Sender OK")
        assert client.rcpt(recipient) == (250, b"2.1.5 Recipient OK")
        code, text = client.data(sent)
        assert code == 250, text
    delivered = site.maildir(account, domain).wait()
    assert len(delivered) == 1
    assert delivered[0].startswith("Return-Path: <rené@remote.example>\r\n".encode())
    assert re.search(rb" with UTF8SMTP id \S+\r\n\tfor <(.*)>;", delivered[0])[1] == (
        recipient.encode()
    )
    assert without_trace(delivered[0]) == sent


def test_unknown_utf8_recipient_is_refused_in_utf8(site: Site) -> None:
    with connect(site) as client:
        assert client.mail("sender@remote.example", ["SMTPUTF8"]) == (250, b"2.1.0 Sender OK")
        assert client.rcpt("nöbody@bücher.example") == (
            550,
            "5.1.1 <nöbody@bücher.example>: unknown user nöbody@xn--bcher-kva.example".encode(),
        )


def _refused(address: str) -> bytes:
    return replies.reply(replies.BAD_IDN, address=address).encode()


BAD_UTF8_CASES = {
    "sender-without-smtputf8": (
        [],
        "MAIL FROM:<rené@remote.example>".encode(),
        replies.NEEDS_SMTPUTF8.encode(),
    ),
    "recipient-without-smtputf8": (
        [b"MAIL FROM:<sender@remote.example>"],
        "RCPT TO:<zoë@example.com>".encode(),
        replies.NEEDS_SMTPUTF8.encode(),
    ),
    "u-label-without-smtputf8": (
        [b"MAIL FROM:<sender@remote.example>"],
        "RCPT TO:<dora@straße.example>".encode(),
        replies.NEEDS_SMTPUTF8.encode(),
    ),
    "sender-not-utf8": (
        [],
        b"MAIL FROM:<ren\xe9@remote.example> SMTPUTF8",
        replies.NOT_UTF8.encode(),
    ),
    "recipient-not-utf8": (
        [b"MAIL FROM:<sender@remote.example> SMTPUTF8"],
        b"RCPT TO:<zo\xeb@example.com>",
        replies.NOT_UTF8.encode(),
    ),
    "recipient-overlong-utf8": (
        [b"MAIL FROM:<sender@remote.example> SMTPUTF8"],
        b"RCPT TO:<zoe\xc0\xafx@example.com>",
        replies.NOT_UTF8.encode(),
    ),
    "helo-not-utf8": ([], b"EHLO caf\xe9.example", replies.NOT_UTF8.encode()),
    "vrfy-not-utf8": ([], b"VRFY <zo\xeb>", replies.NOT_UTF8.encode()),
    "bad-idn-domain": (
        [b"MAIL FROM:<sender@remote.example> SMTPUTF8"],
        "RCPT TO:<zoë@bü_cher.example>".encode(),
        _refused("zoë@bü_cher.example"),
    ),
}
assert set(BAD_UTF8_CASES) == set(BAD_UTF8)


@pytest.mark.parametrize("case", BAD_UTF8, ids=BAD_UTF8)
def test_bad_utf8_gets_its_exact_refusal_and_the_session_goes_on(site: Site, case: str) -> None:
    before, bad, expected = BAD_UTF8_CASES[case]
    with Raw(site) as raw:
        assert raw.reply().startswith(b"220 ")
        assert raw.command(b"EHLO client.example").startswith(b"250")
        for line in before:
            assert raw.command(line) == b"250 2.1.0 Sender OK"
        assert raw.command(bad) == expected
        assert raw.command(b"RSET").startswith(b"250 ")
        assert raw.command(b"MAIL FROM:<sender@remote.example>") == b"250 2.1.0 Sender OK"
        rcpt = f"RCPT TO:<after-{case}@example.com>".encode()
        assert raw.command(rcpt) == b"250 2.1.5 Recipient OK"
        assert raw.command(b"DATA").startswith(b"354 ")
        assert QUEUED.match(raw.command(b"Subject: after\r\n\r\nok\r\n.")[4:])
        assert raw.command(b"QUIT").startswith(b"221 ")
    delivered = site.maildir(f"after-{case}").wait()
    assert len(delivered) == 1
    assert b" with ESMTP id " in delivered[0]


def test_pipelined_transactions(site: Site) -> None:
    """RFC 2920: commands, data and a second transaction in one write give two messages."""
    with Raw(site) as raw:
        raw.reply()
        assert b"PIPELINING" in raw.command(b"EHLO client.example")
        raw.send(
            b"MAIL FROM:<sender@remote.example>\r\n"
            b"RCPT TO:<piped1@example.com>\r\n"
            b"RCPT TO:<nobody-piped@example.com>\r\n"
            b"DATA\r\n"
            b"Subject: first\r\n\r\none\r\n.\r\n"
            b"MAIL FROM:<sender@remote.example>\r\n"
            b"RCPT TO:<piped2@example.com>\r\n"
            b"DATA\r\n"
            b"Subject: second\r\n\r\ntwo\r\n.\r\n"
            b"QUIT\r\n"
        )
        replies = raw.rest()
    codes = [line[:9] for line in replies]
    assert codes == [
        b"250 2.1.0",
        b"250 2.1.5",
        b"550 5.1.1",
        b"354 End d",
        b"250 2.0.0",
        b"250 2.1.0",
        b"250 2.1.5",
        b"354 End d",
        b"250 2.0.0",
        b"221 Bye",
    ], replies
    first = site.maildir("piped1").wait()
    second = site.maildir("piped2").wait()
    assert [without_trace(m) for m in first] == [b"Subject: first\r\n\r\none\r\n"]
    assert [without_trace(m) for m in second] == [b"Subject: second\r\n\r\ntwo\r\n"]


def test_concurrent_sessions(site: Site) -> None:
    count = 20

    def send(number: int) -> None:
        with connect(site) as client:
            transaction(
                client,
                "sender@remote.example",
                ["many@example.com"],
                message(f"concurrent {number}"),
            )

    with ThreadPoolExecutor(max_workers=count) as pool:
        list(pool.map(send, range(count)))
    delivered = site.maildir("many").wait(count)
    subjects = sorted(int(m.split(b"Subject: concurrent ")[1].split(b"\r\n")[0]) for m in delivered)
    assert subjects == list(range(count))


def test_client_that_vanishes_mid_data_does_not_hurt(site: Site) -> None:
    with Raw(site) as raw:
        raw.reply()
        raw.command(b"EHLO client.example")
        raw.command(b"MAIL FROM:<sender@remote.example>")
        raw.command(b"RCPT TO:<dora@example.com>")
        assert raw.command(b"DATA").startswith(b"354 ")
        raw.send(b"Subject: cut\r\n\r\nhalf a messa")
    with connect(site) as client:
        assert client.noop()[0] == 250
    time.sleep(0.2)
    assert all(b"Subject: cut" not in m for m in site.maildir("dora").messages())


@pytest.mark.interop("swaks")
def test_swaks_delivers(site: Site) -> None:
    result = subprocess.run(
        [
            program("swaks") or "swaks",
            "--server",
            LOOPBACK,
            "--port",
            str(site.ports["smtp"]),
            "--from",
            "sender@remote.example",
            "--to",
            "dave@example.com",
            "--header",
            "Subject: swaks",
            "--tls",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(b"Subject: swaks" in m for m in site.maildir("dave").wait(2))


# -- reload and stop ---------------------------------------------------------------------


def test_sighup_reload_adds_an_account(own_site: Site) -> None:
    site = own_site
    with connect(site) as early:
        assert early.mail("sender@remote.example")[0] == 250
        code, text = early.rcpt("newcomer@example.com")
        assert (code, text[:6]) == (550, b"5.1.1 ")

        offset = len(site.server.log())
        site.write(site_text(site.ports, site.password_hash, "newcomer"))
        site.server.reload()
        assert site.server.wait_for_log("reloaded: serving plan", after=offset), site.server.log()

        # a session keeps the plan it started with
        code, text = early.rcpt("newcomer@example.com")
        assert (code, text[:6]) == (550, b"5.1.1 ")

    with connect(site) as client:
        transaction(client, "sender@remote.example", ["newcomer@example.com"], message("new"))
    assert len(site.maildir("newcomer").wait()) == 1


def test_sighup_with_a_broken_site_keeps_the_old_plan(own_site: Site) -> None:
    site = own_site
    with_newcomer = site_text(site.ports, site.password_hash, "newcomer")
    offset = len(site.server.log())
    site.write(with_newcomer + "bogus_key: true\n")  # an unknown key: the site does not compile
    site.server.reload()
    assert site.server.wait_for_log("reload refused", after=offset), site.server.log()
    assert site.server.running
    with connect(site) as client:
        transaction(client, "sender@remote.example", ["dora@example.com"], message("old plan"))
        assert client.mail("sender@remote.example")[0] == 250
        code, text = client.rcpt("newcomer@example.com")
        assert (code, text[:6]) == (550, b"5.1.1 ")
        code, text = client.rcpt("gone@example.com")
        assert (code, text[:21]) == (550, b"5.7.1 <gone@example.c")
    assert len(site.maildir("dora").wait()) == 1

    # once the site is fixed, the next reload takes it
    offset = len(site.server.log())
    site.write(with_newcomer)
    site.server.reload()
    assert site.server.wait_for_log("reloaded: serving plan", after=offset), site.server.log()
    with connect(site) as client:
        transaction(client, "sender@remote.example", ["newcomer@example.com"], message("fixed"))
    assert len(site.maildir("newcomer").wait()) == 1


@pytest.mark.parametrize("state", ["idle", "open-session", "mid-data"])
def test_sigterm_exits_cleanly(own_site: Site, state: str) -> None:
    site = own_site
    raw = None
    try:
        if state != "idle":
            raw = Raw(site)
            raw.reply()
            assert raw.command(b"EHLO client.example").startswith(b"250")
        if state == "mid-data":
            assert raw is not None
            raw.command(b"MAIL FROM:<sender@remote.example>")
            raw.command(b"RCPT TO:<dora@example.com>")
            assert raw.command(b"DATA").startswith(b"354 ")
            raw.send(b"Subject: during stop\r\n\r\nfirst half\r\n")
        started = time.monotonic()
        site.server.signal(signal.SIGTERM)
        if state == "mid-data":
            assert raw is not None
            time.sleep(0.3)
            raw.send(b"second half\r\n.\r\n")
            assert QUEUED.match(raw.reply()[4:]), "the DATA under way was not finished"
        # an idle stop takes a moment; the bound is only for a server that hangs
        status = site.server.terminate(timeout=30)
        assert status == 0, f"exit status {status} after {time.monotonic() - started:.1f}s"
        if state == "mid-data":
            queued = list((site.root / "var" / "queue").glob("*.msg"))
            delivered = site.maildir("dora").messages()
            assert queued or delivered, "the message accepted during the stop is lost"
    finally:
        if raw is not None:
            raw.sock.close()


def test_waiting_mail_survives_a_restart(own_site: Site) -> None:
    site = own_site
    recipients = ["info@example.com", '"odd>name"@quoted-relay.example']
    with connect(site, source=LOOPBACK) as client:  # a Client IP: it may relay
        queue_id = transaction(client, "sender@remote.example", recipients, message("keep me"))
    assert site.server.stop() == 0
    expected = {"SMTP(forward.example)": 1, "SMTP(quoted-relay.example)": 1}
    assert site.queue() == expected
    site.server.start()
    with connect(site) as client:  # serving again
        assert client.noop()[0] == 250
    assert site.queue_file(queue_id).exists()
    assert not list((site.root / "var" / "queue").glob("*.bad")), site.server.log()
    assert site.queue() == expected
