"""End to end: POP3 from a real `mailplan serve`, read with poplib (and raw sockets).

Mail arrives through the server's SMTP listener and is read back over POP3 on three
listeners: STLS (`pop3`), implicit TLS (`pop3s`) and a plain one where the site allows
plain-text logins (`pop3plain`). Each test reads its own account; tests that fail a
login connect from a loopback address of their own, since failures slow down the
client's IP for a while.
"""

from __future__ import annotations

import base64
import fcntl
import os
import poplib
import smtplib
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
import sitekit
from argon2 import PasswordHasher
from serverkit import LOOPBACK, MailServer, free_ports, wait_until

from mailplan.plan.model import Listener, Source
from mailplan.runtime.mailbox import pop3
from mailplan.runtime.mailbox.maildrop import LOCK_FILE
from mailplan.runtime.serve import devtls
from mailplan.runtime.store import maildir

HOSTNAME = "mail.example.com"
PASSWORD = "pop secret"  # a space in it: PASS takes the rest of the line
TIMEOUT = 10.0
ACCOUNTS = (
    "reader",
    "forms",
    "sasl",
    "plain",
    "wrong",
    "dropped",
    "busy",
    "moved",
    "dots",
    "digits",
    "piped",
    "flood",
    "hangup",
)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class POP3From(poplib.POP3):
    """poplib's client, connecting from a chosen loopback address."""

    def __init__(self, port: int, source: str = LOOPBACK) -> None:
        self.source = source
        super().__init__(LOOPBACK, port, timeout=TIMEOUT)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


class POP3SSLFrom(poplib.POP3_SSL):
    def __init__(self, port: int, source: str = LOOPBACK) -> None:
        self.source = source
        super().__init__(LOOPBACK, port, timeout=TIMEOUT, context=unverified())

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )
        return self.context.wrap_socket(sock, server_hostname=self.host)


@dataclass
class Site:
    root: Path
    ports: dict[str, int]
    server: MailServer

    def maildir(self, account: str) -> Path:
        return self.root / "var" / "mail" / "example.com" / account

    def deliver(self, account: str, *messages: bytes) -> None:
        """Send through the server's SMTP and wait until every message is in the Maildir."""
        before = len(self._files(account))
        with smtplib.SMTP(LOOPBACK, self.ports["smtp"], timeout=TIMEOUT) as client:
            for message in messages:
                client.sendmail("sender@remote.example", [f"{account}@example.com"], message)
        wanted = before + len(messages)
        assert wait_until(lambda: len(self._files(account)) >= wanted, TIMEOUT), self.server.log()

    def _files(self, account: str) -> list[Path]:
        folder = self.maildir(account)
        return [
            p for sub in ("new", "cur") if (folder / sub).is_dir() for p in (folder / sub).iterdir()
        ]

    def stls(self, source: str = LOOPBACK) -> POP3From:
        client = POP3From(self.ports["pop3"], source)
        client.stls(unverified())
        return client

    def login(self, account: str, source: str = LOOPBACK) -> poplib.POP3:
        client = POP3SSLFrom(self.ports["pop3s"], source)
        client.user(account)
        client.pass_(PASSWORD)
        return client


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("pop3")
    devtls.ensure(base / "tls", HOSTNAME)
    ports = dict(zip(("smtp", "pop3", "pop3s", "pop3plain"), free_ports(4), strict=True))
    password_hash = PasswordHasher().hash(PASSWORD)
    plaintext = sitekit.listener(
        ports["pop3plain"], protocol="pop3", tls="none", plaintext_auth=True
    )
    directory = sitekit.write_site(
        base / "site",
        hostname=HOSTNAME,
        listeners={**ports, "pop3plain": plaintext},
        tls=True,
        accounts={
            name: {"password": password_hash, "aliases": [f"{name}-alias"]} for name in ACCOUNTS
        },
        domains={"example.com": {"aliases": ["example.org"]}},
    )
    server = MailServer(directory, base, ports.values())
    server.start()
    try:
        yield Site(base, ports, server)
    finally:
        status = server.stop()
    assert status == 0, f"stopped with status {status}; the server log:\n{server.log()}"


def message(subject: str, body: str = "hello") -> bytes:
    return f"From: <sender@remote.example>\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


def error_of(call: object, *arguments: object) -> bytes:
    """The -ERR line a poplib call raised (the test fails if it succeeded)."""
    with pytest.raises(poplib.error_proto) as raised:
        call(*arguments)  # type: ignore[operator]
    text = raised.value.args[0]
    assert isinstance(text, bytes)
    return text


# -- reading -----------------------------------------------------------------------------


def test_list_retrieve_top_uidl_delete_over_stls(site: Site) -> None:
    site.deliver("reader", message("first", "one\r\ntwo\r\nthree"), message("second"))
    client = site.stls()
    assert client.user("reader") == b"+OK Send PASS"
    assert client.pass_(PASSWORD).startswith(b"+OK Logged in: 2 messages")
    count, octets = client.stat()
    _, listing, _ = client.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert count == 2 and octets == sum(sizes)
    _, uids, _ = client.uidl()
    names = [line.split()[1].decode() for line in uids]
    assert sorted(names) == sorted(p.name for p in (site.maildir("reader") / "new").iterdir())
    response, lines, _ = client.retr(1)
    assert response == f"+OK {sizes[0]} octets".encode()
    assert len(b"".join(line + b"\r\n" for line in lines)) == sizes[0]
    assert b"Subject: first" in lines and lines[-3:] == [b"one", b"two", b"three"]
    _, head, _ = client.top(1, 1)
    assert head[-2:] == [b"", b"one"] and b"Subject: first" in head
    assert client.dele(1) == b"+OK Message 1 deleted"
    assert b"No such message" in error_of(client.retr, 1)
    assert client.stat() == (1, sizes[1])
    assert client.quit().startswith(b"+OK")

    again = site.login("reader")
    assert again.stat() == (1, sizes[1])
    assert again.uidl(1).split()[2].decode() == names[1]  # the same UIDL in a new session
    assert again.uidl("01").split()[1] == b"1"  # the message's number, not the text typed
    again.quit()
    # RETR marked the message seen; what is left was never retrieved, so it stays new.
    assert [p.name for p in (site.maildir("reader") / "new").iterdir()] == [names[1]]


def test_dots_and_bare_line_ends_come_back_as_sent(site: Site) -> None:
    body = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nbare\nlf\r\nend\r\n"
    site.deliver("dots", body)
    client = site.login("dots")
    response, lines, _ = client.retr(1)
    size = int(response.split()[1])
    assert lines[-6:] == [b".leading dot", b"..two", b".", b"bare", b"lf", b"end"]
    assert len(b"".join(line + b"\r\n" for line in lines)) == size == client.stat()[1]
    client.quit()


@pytest.mark.parametrize(
    "name",
    [
        "forms",
        "forms@example.com",
        "forms%example.com",
        "forms-alias@example.org",
        "FORMS@Example.COM",
    ],
)
def test_login_forms_reach_one_account(site: Site, name: str) -> None:
    site.deliver("forms", message(f"for {name}"))
    client = POP3SSLFrom(site.ports["pop3s"])
    client.user(name)
    assert client.pass_(PASSWORD).startswith(b"+OK Logged in")
    assert client.stat()[0] >= 1
    client.quit()
    assert site.server.wait_for_log(f"logged in as forms@example.com ({name!r})")


def test_sasl_plain_with_and_without_initial_response(site: Site) -> None:
    client = POP3SSLFrom(site.ports["pop3s"])
    assert "SASL" in client.capa() and client.capa()["SASL"] == ["PLAIN"]
    token = base64.b64encode(f"\0sasl@example.com\0{PASSWORD}".encode()).decode()
    assert client._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK Logged in")
    client.quit()

    second = POP3SSLFrom(site.ports["pop3s"])
    second._putcmd("AUTH PLAIN")
    assert second._getline()[0] == b"+ "
    assert second._shortcmd(token).startswith(b"+OK Logged in")
    second.quit()


# -- who may log in, and where ------------------------------------------------------------


def test_plaintext_login_needs_tls_unless_the_listener_allows_it(site: Site) -> None:
    client = POP3From(site.ports["pop3"])
    capabilities = client.capa()
    assert "STLS" in capabilities and "USER" not in capabilities
    assert b"[AUTH] Plaintext login is only allowed over TLS" in error_of(client.user, "plain")
    client.stls(unverified())
    capabilities = client.capa()
    assert "STLS" not in capabilities and "USER" in capabilities
    client.quit()

    plain = POP3From(site.ports["pop3plain"])
    assert "USER" in plain.capa() and "STLS" not in plain.capa()
    plain.user("plain")
    assert plain.pass_(PASSWORD).startswith(b"+OK Logged in")
    plain.quit()


def test_wrong_passwords_are_refused_and_slow_down_the_client(site: Site) -> None:
    source = "127.0.0.31"
    client = POP3SSLFrom(site.ports["pop3s"], source)
    client.user("wrong")
    assert error_of(client.pass_, "not it") == b"-ERR [AUTH] Authentication failed"
    client.user("nobody@example.com")
    assert error_of(client.pass_, PASSWORD) == b"-ERR [AUTH] Authentication failed"
    client.user("wrong")
    assert b"Too many failed logins" in error_of(client.pass_, "still not")
    assert client.sock.recv(1) == b""  # closed after the third failure
    client.close()
    # each check waits for the client's delay, which doubles with each failure (a loaded
    # machine may add to a wait, never take from it); the log thread may lag behind
    assert wait_until(lambda: site.server.log().count(f"{source} failed to log in") == 3, TIMEOUT)
    failures = [
        line.split(f"{source} failed to log in as ", 1)[1]
        for line in site.server.log().splitlines()
        if f"{source} failed to log in as " in line
    ]
    names = [failure.split(" (after waiting ")[0] for failure in failures]
    waits = [
        int(failure.rsplit("after waiting ", 1)[1].removesuffix(" s)")) for failure in failures
    ]
    assert names == ["'wrong'", "'nobody@example.com'", "'wrong'"]
    assert all(wait >= least for wait, least in zip(waits, (0, 1, 2), strict=True)), waits
    right = site.login("wrong", source)  # the right password still works (after 4 s)
    right.quit()


def test_stls_drops_what_was_sent_before_the_handshake(site: Site) -> None:
    with socket.create_connection((LOOPBACK, site.ports["pop3"]), TIMEOUT) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"STLS\r\nCAPA\r\n")  # CAPA injected before TLS must not be answered
        assert reader.readline() == b"+OK Begin TLS negotiation\r\n"
        with unverified().wrap_socket(sock, server_hostname=HOSTNAME) as tls:
            tls.sendall(b"QUIT\r\n")
            assert tls.recv(1024) == b"+OK mailplan POP3 server signing off\r\n"


# -- the mailbox -------------------------------------------------------------------------


def test_a_dropped_connection_deletes_nothing(site: Site) -> None:
    site.deliver("dropped", message("keep me"))
    client = site.login("dropped")
    client.dele(1)
    client.file.close()
    client.sock.close()  # gone without QUIT

    def reopened() -> poplib.POP3 | None:
        try:
            return site.login("dropped")
        except poplib.error_proto as error:
            assert b"[IN-USE]" in error.args[0]
            return None

    again = wait_until(reopened, TIMEOUT)
    assert isinstance(again, poplib.POP3)
    assert again.stat()[0] == 1
    again.quit()


def test_a_second_session_is_refused_while_the_first_holds_the_mailbox(site: Site) -> None:
    site.deliver("busy", message("busy"))
    first = site.login("busy")
    second = POP3SSLFrom(site.ports["pop3s"])
    second.user("busy")
    assert error_of(second.pass_, PASSWORD).startswith(b"-ERR [IN-USE]")
    first.quit()
    second.user("busy")
    assert second.pass_(PASSWORD).startswith(b"+OK Logged in")
    second.quit()

    # Another process holding the lock file is respected the same way.
    descriptor = os.open(site.maildir("busy") / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        third = POP3SSLFrom(site.ports["pop3s"])
        third.user("busy")
        assert error_of(third.pass_, PASSWORD).startswith(b"-ERR [IN-USE]")
        third.quit()
    finally:
        os.close(descriptor)


def test_another_reader_moving_messages_changes_no_uidl(site: Site) -> None:
    """What Dovecot does to a Maildir: new/ to cur/ with flags, while a session is open."""
    site.deliver("moved", message("one"), message("two"))
    folder = site.maildir("moved")
    client = site.login("moved")
    _, before, _ = client.uidl()
    for path in (folder / "new").iterdir():
        path.rename(folder / "cur" / f"{path.name}:2,F")
    _, lines, _ = client.retr(2)
    assert b"Subject: two" in lines
    client.dele(1)
    client.quit()

    again = site.login("moved")
    _, after, _ = again.uidl()
    assert [line.split()[1] for line in after] == [before[1].split()[1]]
    again.quit()
    assert [p.name for p in (folder / "cur").iterdir()] == [f"{before[1].split()[1].decode()}:2,FS"]
    assert not list((folder / "new").iterdir())


# -- the pure parts ----------------------------------------------------------------------


def test_parse_keeps_the_raw_rest_for_pass() -> None:
    command = pop3.parse(b"pass  two  spaces \r\n")
    assert command.keyword == "PASS"
    assert command.arguments == ("two", "spaces")
    assert command.rest == " two  spaces "
    assert pop3.parse(b"\r\n").keyword == ""
    # `str.upper` makes STAT of a long s and LIST of a dotless i: such keywords are unknown
    assert pop3.parse("\u017ftat\r\n".encode()).keyword != "STAT"
    assert pop3.parse("l\u0131st 1\r\n".encode()).keyword != "LIST"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b".first\r\n", b"..first\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"", b".\r\n"),
    ],
    ids=["inner-dot", "first-line-dot", "lone-dot", "empty"],
)
def test_stuffed(content: bytes, expected: bytes) -> None:
    assert pop3.stuffed(content) == expected


def test_top_keeps_the_header_and_n_body_lines() -> None:
    content = b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree\r\n"
    assert pop3.top(content, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert pop3.top(content, 2) == b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\n"
    assert pop3.top(content, 9) == content
    assert pop3.top(b"A: 1\r\n", 3) == b"A: 1\r\n"
    assert pop3.top(b"\r\nbody only\r\nsecond\r\n", 1) == b"\r\nbody only\r\n"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (base64.b64encode(b"\0al\0pw").decode(), ("al", "pw")),
        (base64.b64encode(b"al\0al\0pw").decode(), ("al", "pw")),
        (base64.b64encode(b"root\0al\0pw").decode(), None),
        (base64.b64encode(b"\0\0pw").decode(), None),
        (base64.b64encode(b"only-one-part").decode(), None),
        ("not base64!", None),
        ("\u00e9", None),  # not ASCII: base64 itself refuses it (ValueError)
    ],
    ids=[
        "plain",
        "same-authzid",
        "other-authzid",
        "empty-login",
        "malformed",
        "not-base64",
        "not-ascii",
    ],
)
def test_sasl_plain(response: str, expected: tuple[str, str] | None) -> None:
    assert pop3.sasl_plain(response) == expected


def listener(tls: str, plaintext_auth: bool = False) -> Listener:
    source = Source("site.yaml", 1, 1)
    return Listener("pop3", source, "pop3", ("127.0.0.1",), 110, tls, "required", plaintext_auth)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tls", "plaintext", "encrypted", "logged_in", "expected"),
    [
        ("starttls", False, False, False, ["STLS"]),
        ("starttls", False, True, False, ["USER", "SASL PLAIN"]),
        ("starttls", True, False, False, ["USER", "SASL PLAIN", "STLS"]),
        ("implicit", False, True, False, ["USER", "SASL PLAIN"]),
        ("none", True, False, False, ["USER", "SASL PLAIN"]),
        ("implicit", False, True, True, []),
    ],
    ids=["before-stls", "after-stls", "plaintext-allowed", "implicit", "no-tls", "logged-in"],
)
def test_capabilities(
    tls: str, plaintext: bool, encrypted: bool, logged_in: bool, expected: list[str]
) -> None:
    found = pop3.capabilities(listener(tls, plaintext), encrypted, logged_in)
    common = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    assert found == [*common, *expected, "IMPLEMENTATION mailplan"]


def test_unknown_commands_misplaced_commands_and_long_lines(site: Site) -> None:
    with socket.create_connection((LOOPBACK, site.ports["pop3plain"]), TIMEOUT) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"HELO there\r\nSTAT\r\nPASS before user\r\n")
        assert reader.readline() == b"-ERR Unknown command\r\n"
        assert reader.readline() == b"-ERR Command not valid in this state\r\n"
        assert reader.readline() == b"-ERR [AUTH] Give USER first\r\n"
        sock.sendall(b"USER " + b"x" * 10_000 + b"\r\n")
        assert reader.readline() == b"-ERR Line too long; closing\r\n"
        assert reader.readline() == b""


def test_digits_that_are_not_ascii_are_no_message_number(site: Site) -> None:
    """`RETR ²`: Python calls "²" a digit, POP3 does not; an error reply, not a crash."""
    client = site.login("digits")
    try:
        for command in ("RETR \u00b2", "DELE \u0663", "TOP 1 \u00b2"):
            with pytest.raises(poplib.error_proto) as refused:
                client._shortcmd(command)
            assert refused.value.args[0] in (b"-ERR No such message", b"-ERR Syntax error")
        assert client.noop().startswith(b"+OK")  # the session goes on
    finally:
        client.quit()


# -- pipelining (RFC 2449) and clients that go away ----------------------------------------


def replies(reader: BinaryIO, count: int) -> list[bytes]:
    """`count` replies, a multi-line one (after +OK to LIST, UIDL, RETR, TOP, CAPA) as one
    item up to and including its ".\r\n"."""
    found: list[bytes] = []
    for _ in range(count):
        line = reader.readline()
        assert line, found
        found.append(line)
    return found


def test_pipelined_commands_are_answered_in_order(site: Site) -> None:
    site.deliver("piped", message("one", ".dot"), message("two"), message("three"))
    with socket.create_connection((LOOPBACK, site.ports["pop3plain"]), TIMEOUT) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"CAPA\r\n")
        capabilities = [reader.readline()]
        while capabilities[-1] not in (b".\r\n", b""):
            capabilities.append(reader.readline())
        assert b"PIPELINING\r\n" in capabilities
        # Everything in one write: login, listings, retrievals, errors, deletion, RSET.
        sock.sendall(
            f"USER piped\r\nPASS {PASSWORD}\r\nSTAT\r\nUIDL 2\r\nRETR 1\r\n"
            "RETR 9\r\nBOGUS\r\nTOP 2 0\r\nDELE 3\r\nRETR 3\r\nNOOP\r\nSTAT\r\n"
            "RSET\r\nSTAT\r\nLIST\r\nQUIT\r\n".encode()
        )
        assert reader.readline() == b"+OK Send PASS\r\n"
        assert reader.readline().startswith(b"+OK Logged in: 3 messages")
        count, total = reader.readline().split()[1:]
        assert count == b"3"
        assert reader.readline().startswith(b"+OK 2 ")
        first = reader.readline()
        assert first.startswith(b"+OK ") and first.endswith(b" octets\r\n")
        retrieved = b""
        while not retrieved.endswith(b"\r\n.\r\n"):
            retrieved += reader.readline()
        assert b"Subject: one\r\n" in retrieved and b"\r\n..dot\r\n" in retrieved
        assert len(retrieved) - 3 - 1 == int(first.split()[1])  # minus ".\r\n", one stuffed dot
        assert reader.readline() == b"-ERR No such message\r\n"
        assert reader.readline() == b"-ERR Unknown command\r\n"
        assert reader.readline() == b"+OK\r\n"
        head = b""
        while not head.endswith(b"\r\n.\r\n"):
            head += reader.readline()
        assert b"Subject: two\r\n" in head and head.endswith(b"\r\n\r\n.\r\n")
        assert reader.readline() == b"+OK Message 3 deleted\r\n"
        assert reader.readline() == b"-ERR No such message\r\n"
        assert reader.readline() == b"+OK\r\n"
        assert reader.readline().startswith(b"+OK 2 ")
        assert reader.readline() == b"+OK 3 messages\r\n"
        assert reader.readline() == f"+OK 3 {int(total)}\r\n".encode()
        listing = replies(reader, 5)
        assert listing[0] == b"+OK\r\n" and listing[-1] == b".\r\n"
        assert reader.readline().startswith(b"+OK mailplan POP3 server signing off")
        assert reader.readline() == b""
    # RSET undid the DELE: all three are still there, the one retrieved marked seen.
    client = site.login("piped")
    assert client.stat()[0] == 3
    client.quit()


def test_a_pipelined_flood_of_retrievals_reaches_a_slow_reader_whole(site: Site) -> None:
    """Hundreds of RETRs of a 200 KiB message sent at once, read only later: the server
    stops answering while the client does not read, and loses nothing."""
    body = b"".join(b"line %06d of the message\r\n" % n for n in range(8000))
    maildir.deliver(site.maildir("flood"), "sender@remote.example", b"Subject: big\r\n\r\n" + body)
    rounds = 300
    with socket.create_connection((LOOPBACK, site.ports["pop3plain"]), TIMEOUT) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER flood\r\nPASS {PASSWORD}\r\n".encode())
        assert reader.readline() == b"+OK Send PASS\r\n"
        assert reader.readline().startswith(b"+OK Logged in: 1 messages")
        sock.sendall(b"RETR 1\r\n" * rounds + b"QUIT\r\n")
        for _ in range(rounds):
            first = reader.readline()
            assert first.startswith(b"+OK ") and first.endswith(b" octets\r\n"), first
            size = int(first.split()[1])
            content = reader.read(size)
            assert content.endswith(b"line 007999 of the message\r\n")
            assert reader.readline() == b".\r\n"
        assert reader.readline().startswith(b"+OK mailplan POP3 server signing off")


def hang_up(sock: socket.socket) -> None:
    """Close with a reset, as a client that crashed or lost its network does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("size", [300_000, 2_000_000], ids=["read-here", "read-in-a-thread"])
def test_a_client_that_hangs_up_mid_retr_changes_nothing(site: Site, size: int) -> None:
    folder = site.maildir("hangup")
    body = b"x" * 998 + b"\r\n"
    maildir.deliver(folder, "s@remote.example", b"Subject: big\r\n\r\n" + body * (size // 1000))
    source = "127.0.0.57"  # its own address, to find its lines in the log
    before = len(site.server.log())
    sock = socket.create_connection(
        (LOOPBACK, site.ports["pop3plain"]), TIMEOUT, source_address=(source, 0)
    )
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"+OK")
    sock.sendall(f"USER hangup\r\nPASS {PASSWORD}\r\n".encode())
    assert reader.readline() == b"+OK Send PASS\r\n"
    count = int(reader.readline().split()[3])
    sock.sendall(b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1)) * 20)
    assert reader.readline().startswith(b"+OK ")
    reader.read(1000)  # the start of a message, and then the client is gone
    hang_up(sock)
    reader.close()
    assert site.server.wait_for_log(f"{source} went away during transaction", TIMEOUT, before)

    def reopened() -> poplib.POP3 | None:
        try:
            return site.login("hangup")
        except poplib.error_proto as error:
            assert b"[IN-USE]" in error.args[0]
            return None

    again = wait_until(reopened, TIMEOUT)
    assert isinstance(again, poplib.POP3)
    assert again.stat()[0] == count  # nothing deleted
    again.quit()  # (this QUIT marks nothing seen: it retrieved nothing)
    assert list((folder / "cur").iterdir()) == []  # the hang-up marked nothing seen
    mine = [line for line in site.server.log()[before:].splitlines() if source in line]
    assert not any("Traceback" in line or "ERROR" in line for line in mine), mine
    assert "Traceback" not in site.server.log()[before:]
