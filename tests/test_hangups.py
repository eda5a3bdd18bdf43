"""Clients that hang up at every stage, and the server that carries on.

Each case is a hostile client on a raw socket (with `ssl` where TLS is spoken) that
closes or resets the connection at one stage of an SMTP or POP3 session: before and
after the banner, after EHLO, with pipelined commands unread, in the middle of a
command, of DATA and of AUTH, after DATA, during and after a TLS handshake (STARTTLS
and implicit TLS), POP3 before and after login and in the middle of a RETR. Afterwards
the server must still accept a message over SMTP and deliver it into a Maildir, and
its log must have no traceback and no ERROR line: a client that goes away is one INFO
line with its address and the stage (asserted where the stage is certain; where it
races with the server's reading, only the absence of errors is). Every case runs
against one server process and against `--workers 2`: one server for each, started
once for the whole module. sslscan, where it is installed, scans every TLS listener.

Each case connects from a loopback address of its own (127.0.1.N), so the log line it
causes can be told from the others'.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import smtplib
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from interop import program
from serverkit import LOOPBACK, Maildir, MailServer, free_ports, wait_until
from sitekit import NO_SENDER_CHECKS, write_site

from mailplan.runtime.base import hangups
from mailplan.runtime.serve import devtls
from mailplan.runtime.serve.server import Daemon

HOSTNAME = "mail.example.com"
PASSWORD = "hang up"
TIMEOUT = 10.0
PIPELINED_NOOPS = 200
PIPELINED_CAPAS = 300
BIG = 2 * 1024 * 1024  # a message RETR cannot finish writing before the reset arrives
MODES = {"one-process": [], "two-workers": ["--workers", "2"]}


@dataclass
class Site:
    root: Path
    ports: dict[str, int]
    server: MailServer
    mode: str

    def maildir(self, account: str) -> Path:
        return self.root / "var" / "mail" / "example.com" / account

    def delivers(self, token: str) -> bool:
        """Whether a message sent now with smtplib arrives in alice's Maildir."""
        with smtplib.SMTP(LOOPBACK, self.ports["smtp"], timeout=TIMEOUT) as client:
            client.sendmail(
                "someone@remote.test",
                ["alice@example.com"],
                f"Subject: {token}\r\n\r\n{token}\r\n".encode(),
            )
        inbox = Maildir(self.maildir("alice"))
        subject = f"Subject: {token}\r\n".encode()
        return bool(wait_until(lambda: any(subject in m for m in inbox.messages()), TIMEOUT))


def errors(log: str) -> list[str]:
    """The lines of a log that an operator would be alarmed by."""
    return [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line]


# -- which errors are the client's doing, and the line that says so ----------------------


@pytest.mark.parametrize(
    ("error", "went_away"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (BrokenPipeError(32, "Broken pipe"), True),
        (ssl.SSLError(1, "[SSL: NO_SHARED_CIPHER] no shared cipher"), True),
        (asyncio.IncompleteReadError(b"MAIL", None), True),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), True),
        (TimeoutError(), False),  # asyncio.timeout's: the server's own time limit
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (ValueError("a bug"), False),
        (None, False),
    ],
    ids=[
        "reset",
        "broken-pipe",
        "tls-error",
        "incomplete-read",
        "unreachable",
        "our-time-out",
        "disk-full",
        "permission",
        "bug",
        "nothing",
    ],
)
def test_client_went_away(error: BaseException | None, went_away: bool) -> None:
    assert hangups.client_went_away(error) is went_away


def test_reason_names_the_error_or_the_close() -> None:
    assert hangups.reason(None) == "closed the connection"
    assert hangups.reason(ConnectionResetError()) == "ConnectionResetError"
    assert (
        hangups.reason(BrokenPipeError(32, "Broken pipe"))
        == "BrokenPipeError: [Errno 32] Broken pipe"
    )


class _Transport:
    def get_extra_info(self, name: str) -> object:
        return ("192.0.2.7", 40000) if name == "peername" else None


@pytest.mark.parametrize(
    ("message", "error", "expected"),
    [
        (
            "SSL handshake failed",
            ConnectionResetError(104, "Connection reset by peer"),
            ("mailplan.server", logging.INFO, "192.0.2.7 went away during tls-handshake: "),
        ),
        (
            "Fatal error on transport",
            BrokenPipeError(32, "Broken pipe"),
            ("mailplan.server", logging.INFO, "192.0.2.7 went away during connection: "),
        ),
        (
            "Exception in callback",
            ValueError("a bug"),
            ("asyncio", logging.ERROR, "Exception in callback"),
        ),
    ],
    ids=["handshake-reset", "broken-pipe", "anything-else"],
)
def test_the_loop_exception_handler(
    caplog: pytest.LogCaptureFixture, message: str, error: Exception, expected: tuple[str, int, str]
) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.INFO):
            context = {"message": message, "exception": error, "transport": _Transport()}
            Daemon.loop_exception(loop, context)
    finally:
        loop.close()
    [record] = caplog.records
    logger, level, start = expected
    assert (record.name, record.levelno) == (logger, level)
    assert record.getMessage().startswith(start)


@pytest.fixture(scope="module", params=list(MODES))
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    mode: str = request.param
    base = tmp_path_factory.mktemp(f"hangups-{mode}")
    devtls.ensure(base / "tls", HOSTNAME)
    ports = dict(zip(("smtp", "smtps", "pop3", "pop3s"), free_ports(4), strict=True))
    directory = write_site(
        base / "site",
        hostname=HOSTNAME,
        listeners=ports,
        tls=True,
        accounts={
            "alice": {},
            "hangup": {},
            "reader": {"password": PasswordHasher().hash(PASSWORD)},
        },
        extra=NO_SENDER_CHECKS,  # not what these tests are about
    )
    server = MailServer(directory, base, ports.values(), extra_arguments=MODES[mode])
    made = Site(base, ports, server, mode)
    big = made.maildir("reader") / "new"
    big.mkdir(parents=True)
    (big / "1.big.example").write_bytes(
        b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * (BIG // 80)
    )
    server.start()
    try:
        yield made
    finally:
        status = server.stop()
    assert status == 0, f"stopped with status {status}; the server log:\n{server.log()}"
    assert errors(server.log()) == [], server.log()


# -- hostile clients ---------------------------------------------------------------------


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def client_hello() -> bytes:
    """The first flight of a TLS client, to send by hand and then walk away."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = unverified().wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class Raw:
    """A client on a raw socket that reads exactly what it is told to, then hangs up."""

    def __init__(self, port: int, source: str, tls: bool = False) -> None:
        self.sock: socket.socket = socket.create_connection(
            (LOOPBACK, port), TIMEOUT, source_address=(source, 0)
        )
        self.buffer = b""
        if tls:
            self.start_tls()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def reply(self) -> bytes:
        """One SMTP reply, all its lines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"".join(lines)

    def start_tls(self) -> None:
        self.sock = unverified().wrap_socket(self.sock, server_hostname=HOSTNAME)

    def close(self) -> None:
        """A FIN: the client closes its end."""
        self.sock.close()

    def reset(self) -> None:
        """An RST: the connection is torn down at once (SO_LINGER with a zero timeout)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def ehlo(site: Site, source: str, listener: str = "smtp") -> Raw:
    client = Raw(site.ports[listener], source, tls=listener == "smtps")
    assert client.reply().startswith(b"220 ")
    client.send(b"EHLO x\r\n")
    assert client.reply().startswith(b"250")
    return client


def starttls(site: Site, source: str) -> Raw:
    """An SMTP session that has said STARTTLS and read the 220, not yet shaken hands."""
    client = ehlo(site, source)
    client.send(b"STARTTLS\r\n")
    assert client.reply().startswith(b"220 ")
    return client


def in_data(client: Raw) -> Raw:
    client.send(b"MAIL FROM:<someone@remote.test>\r\nRCPT TO:<hangup@example.com>\r\nDATA\r\n")
    assert client.reply().startswith(b"250")
    assert client.reply().startswith(b"250")
    assert client.reply().startswith(b"354")
    client.send(b"Subject: cut short\r\n\r\n" + b"part of a message\r\n" * 100)
    return client


def smtp_before_banner(site: Site, source: str) -> None:
    Raw(site.ports["smtp"], source).reset()


def smtp_after_banner(site: Site, source: str) -> None:
    client = Raw(site.ports["smtp"], source)
    assert client.reply().startswith(b"220 ")
    client.close()


def smtp_after_ehlo(site: Site, source: str) -> None:
    ehlo(site, source).close()


def smtp_pipelined_noops(site: Site, source: str) -> None:
    """The issue's reproducer: banner read, EHLO and 200 NOOPs sent, closed at once."""
    client = Raw(site.ports["smtp"], source)
    assert client.reply().startswith(b"220 ")
    client.send(b"EHLO x\r\n" + b"NOOP\r\n" * PIPELINED_NOOPS)
    client.close()


def smtp_pipelined_noops_reset(site: Site, source: str) -> None:
    client = ehlo(site, source)
    client.send(b"NOOP\r\n" * PIPELINED_NOOPS)
    client.reset()


def smtp_mid_command(site: Site, source: str) -> None:
    client = ehlo(site, source)
    client.send(b"MAIL FROM:<someone@remo")
    client.close()


def smtp_mid_data(site: Site, source: str) -> None:
    in_data(ehlo(site, source)).close()


def smtp_mid_data_reset(site: Site, source: str) -> None:
    in_data(ehlo(site, source)).reset()


def smtp_after_data(site: Site, source: str) -> None:
    """The whole message sent, the connection closed before the 250 could be read."""
    client = in_data(ehlo(site, source))
    client.send(b"the end\r\n.\r\n")
    client.close()


def starttls_before_handshake(site: Site, source: str) -> None:
    starttls(site, source).close()


def starttls_handshake_reset(site: Site, source: str) -> None:
    client = starttls(site, source)
    client.send(client_hello())
    client.reset()


def starttls_not_tls(site: Site, source: str) -> None:
    """What a scanner does: something other than TLS where the handshake should be."""
    client = starttls(site, source)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    with contextlib.suppress(OSError):
        client.sock.recv(1024)  # the server's alert, or the end of the connection
    client.close()


def starttls_quit_unread(site: Site, source: str) -> None:
    """The issue's reproducer: QUIT inside TLS, closed without reading the 221."""
    client = starttls(site, source)
    client.start_tls()
    client.send(b"EHLO x\r\n")
    assert client.reply().startswith(b"250")
    client.send(b"QUIT\r\n")
    client.close()


def starttls_mid_data_reset(site: Site, source: str) -> None:
    client = starttls(site, source)
    client.start_tls()
    client.send(b"EHLO x\r\n")
    assert client.reply().startswith(b"250")
    in_data(client).reset()


def smtps_before_handshake(site: Site, source: str) -> None:
    Raw(site.ports["smtps"], source).close()


def smtps_handshake_reset(site: Site, source: str) -> None:
    client = Raw(site.ports["smtps"], source)
    client.send(client_hello())
    client.reset()


def smtps_not_tls(site: Site, source: str) -> None:
    """A client that speaks plain SMTP to the implicit-TLS port."""
    client = Raw(site.ports["smtps"], source)
    client.send(b"EHLO plain.example\r\n")
    with contextlib.suppress(OSError):
        client.sock.recv(1024)  # the server's alert, or the end of the connection
    client.close()


def smtps_mid_auth_reset(site: Site, source: str) -> None:
    client = ehlo(site, source, "smtps")
    client.send(b"AUTH LOGIN\r\n")
    assert client.reply().startswith(b"334 ")
    client.reset()


def smtps_after_ehlo(site: Site, source: str) -> None:
    ehlo(site, source, "smtps").close()


def pop3_after_banner(site: Site, source: str) -> None:
    client = Raw(site.ports["pop3"], source)
    assert client.line().startswith(b"+OK")
    client.close()


def pop3_pipelined_capas(site: Site, source: str) -> None:
    """The issue's reproducer: 300 pipelined CAPA, closed at once."""
    client = Raw(site.ports["pop3"], source)
    assert client.line().startswith(b"+OK")
    client.send(b"CAPA\r\n" * PIPELINED_CAPAS)
    client.close()


def pop3_stls_handshake_reset(site: Site, source: str) -> None:
    client = Raw(site.ports["pop3"], source)
    assert client.line().startswith(b"+OK")
    client.send(b"STLS\r\n")
    assert client.line().startswith(b"+OK")
    client.send(client_hello())
    client.reset()


def pop3s_handshake_reset(site: Site, source: str) -> None:
    client = Raw(site.ports["pop3s"], source)
    client.send(client_hello())
    client.reset()


def pop3s_mid_auth_reset(site: Site, source: str) -> None:
    client = Raw(site.ports["pop3s"], source, tls=True)
    assert client.line().startswith(b"+OK")
    client.send(b"AUTH PLAIN\r\n")
    assert client.line().startswith(b"+ ")
    client.reset()


def pop3s_after_login(site: Site, source: str) -> Raw:
    client = Raw(site.ports["pop3s"], source, tls=True)
    assert client.line().startswith(b"+OK")
    client.send(f"USER reader\r\nPASS {PASSWORD}\r\n".encode())
    assert client.line().startswith(b"+OK")
    assert client.line().startswith(b"+OK Logged in"), "the maildrop is locked or missing"
    return client


def pop3s_logged_in_close(site: Site, source: str) -> None:
    pop3s_after_login(site, source).close()


def pop3s_logged_in_reset(site: Site, source: str) -> None:
    pop3s_after_login(site, source).reset()


def pop3_before_login(site: Site, source: str) -> None:
    client = Raw(site.ports["pop3"], source)
    assert client.line().startswith(b"+OK")
    client.send(b"CAPA\r\n")
    while client.line() != b".\r\n":
        pass
    client.close()


def pop3s_retr_unread(site: Site, source: str) -> None:
    """A big RETR asked for and never read: the server writes to a connection reset."""
    client = pop3s_after_login(site, source)
    client.send(b"RETR 1\r\n")
    client.reset()


Hostile = Callable[[Site, str], object]

# (id, client, the stage the server's INFO line must name with the client's address;
# None where the stage races with the server's reading, where a reset comes before the
# address could be known, and where a client closes a TLS connection without TLS's own
# close: that looks the same as the server closing it, and gets no line)
CASES: list[tuple[str, Hostile, str | None]] = [
    ("smtp-before-banner-reset", smtp_before_banner, None),
    ("smtp-after-banner", smtp_after_banner, "banner"),
    ("smtp-after-ehlo", smtp_after_ehlo, "command"),
    ("smtp-pipelined-noops", smtp_pipelined_noops, None),
    ("smtp-pipelined-noops-reset", smtp_pipelined_noops_reset, None),
    ("smtp-mid-command", smtp_mid_command, "command"),
    ("smtp-mid-data", smtp_mid_data, "data"),
    ("smtp-mid-data-reset", smtp_mid_data_reset, "data"),
    ("smtp-after-data", smtp_after_data, None),
    ("starttls-before-handshake", starttls_before_handshake, "tls-handshake"),
    ("starttls-handshake-reset", starttls_handshake_reset, "tls-handshake"),
    ("starttls-not-tls", starttls_not_tls, "tls-handshake"),
    ("starttls-quit-unread", starttls_quit_unread, None),
    ("starttls-mid-data-reset", starttls_mid_data_reset, "data"),
    ("smtps-before-handshake", smtps_before_handshake, "tls-handshake"),
    ("smtps-handshake-reset", smtps_handshake_reset, "tls-handshake"),
    ("smtps-not-tls", smtps_not_tls, "tls-handshake"),
    ("smtps-mid-auth-reset", smtps_mid_auth_reset, "auth"),
    ("smtps-after-ehlo", smtps_after_ehlo, None),
    ("pop3-after-banner", pop3_after_banner, "banner"),
    ("pop3-before-login", pop3_before_login, "command"),
    ("pop3-pipelined-capas", pop3_pipelined_capas, None),
    ("pop3-stls-handshake-reset", pop3_stls_handshake_reset, "tls-handshake"),
    ("pop3s-handshake-reset", pop3s_handshake_reset, "tls-handshake"),
    ("pop3s-mid-auth-reset", pop3s_mid_auth_reset, "auth"),
    ("pop3s-logged-in-close", pop3s_logged_in_close, None),
    ("pop3s-logged-in-reset", pop3s_logged_in_reset, "transaction"),
    ("pop3s-retr-unread", pop3s_retr_unread, "transaction"),
]
SOURCES = {name: f"127.0.1.{number}" for number, (name, _, _) in enumerate(CASES, start=1)}


class TestHangUps:
    @pytest.mark.parametrize(("name", "hostile", "stage"), CASES, ids=[c[0] for c in CASES])
    def test_the_server_carries_on(
        self, site: Site, name: str, hostile: Hostile, stage: str | None
    ) -> None:
        source = SOURCES[name]
        start = len(site.server.log())
        hostile(site, source)
        if stage is not None:
            line = f"{source} went away during {stage}: "
            assert site.server.wait_for_log(line, TIMEOUT, after=start), (
                f"no {line!r} in:\n{site.server.log()[start:]}"
            )
        assert site.delivers(f"{site.mode} after {name}"), site.server.log()[start:]
        assert site.server.running, site.server.log()
        assert errors(site.server.log()[start:]) == [], site.server.log()[start:]


@pytest.mark.interop("sslscan")
@pytest.mark.parametrize(
    ("listener", "arguments"),
    [
        ("smtp", ["--starttls-smtp"]),
        ("smtps", []),
        ("pop3", ["--starttls-pop3"]),
        ("pop3s", []),
    ],
    ids=["smtp-starttls", "smtps", "pop3-stls", "pop3s"],
)
def test_sslscan(site: Site, listener: str, arguments: list[str]) -> None:
    """A TLS scanner: dozens of handshakes refused or dropped, then the server serves on."""
    start = len(site.server.log())
    scan = subprocess.run(
        [str(program("sslscan")), "--no-colour", *arguments, f"{LOOPBACK}:{site.ports[listener]}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert scan.returncode == 0, scan.stdout + scan.stderr
    assert "Accepted  TLSv1.3" in scan.stdout, scan.stdout + scan.stderr  # it got to TLS
    assert site.delivers(f"{site.mode} after sslscan {listener}"), site.server.log()[start:]
    assert site.server.running, site.server.log()
    assert errors(site.server.log()[start:]) == [], site.server.log()[start:]
    # every listener tells of the handshakes that failed, implicit TLS as STARTTLS
    assert f"{LOOPBACK} went away during tls-handshake: " in site.server.log()[start:]
