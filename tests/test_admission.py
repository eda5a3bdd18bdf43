"""runtime/decide/admission.py: connections per client and in all; end to end, a client
past its share gets 421 (SMTP) or -ERR [SYS/TEMP] (POP3) before anything else, and a
connection that ends frees its place. Also: what a client sends reaches the text log
with its control characters escaped."""

from __future__ import annotations

import poplib
import smtplib
import socket
from collections.abc import Iterator

import pytest
from serverkit import LOOPBACK, MailServer, free_ports, wait_until
from sitekit import listener, plain, write_site

from mailplan.runtime.decide import replies
from mailplan.runtime.decide.admission import Admission

TIMEOUT = 10.0


def test_a_client_gets_its_share_and_the_server_its_total() -> None:
    admission = Admission(total=3, per_client=2)
    assert admission.enter("192.0.2.1") is None
    assert admission.enter("192.0.2.1") is None
    assert admission.enter("192.0.2.1") == replies.reply(replies.CLIENT_BUSY, limit=2)
    assert admission.enter("192.0.2.2") is None
    assert admission.enter("192.0.2.3") == replies.reply(replies.SERVER_BUSY, limit=3)
    admission.leave("192.0.2.1")
    assert admission.enter("192.0.2.3") is None
    assert admission.held == 3


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    admission = Admission(total=100, per_client=1)
    assert admission.enter("2001:db8:1:2::10") is None
    assert admission.enter("2001:db8:1:2::99") == replies.reply(replies.CLIENT_BUSY, limit=1)
    assert admission.enter("2001:db8:1:3::10") is None


def test_a_client_ip_has_no_share_of_its_own_only_the_total() -> None:
    admission = Admission(total=3, per_client=1)
    assert admission.enter("192.0.2.1", trusted=True) is None
    assert admission.enter("192.0.2.1", trusted=True) is None
    assert admission.enter("192.0.2.1", trusted=False) == replies.reply(
        replies.CLIENT_BUSY, limit=1
    )
    assert admission.enter("192.0.2.1", trusted=True) is None
    assert admission.enter("192.0.2.1", trusted=True) == replies.reply(replies.SERVER_BUSY, limit=3)


def test_leaving_forgets_a_client() -> None:
    admission = Admission(total=10, per_client=5)
    admission.enter("192.0.2.1")
    admission.leave("192.0.2.1")
    assert admission.open == {} and admission.held == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MailServer, dict[str, int]]]:
    root = tmp_path_factory.mktemp("admission")
    ports = dict(zip(("smtp", "pop3"), free_ports(2), strict=True))
    listeners = {
        "smtp": plain(ports["smtp"]),
        "pop3": listener(ports["pop3"], tls="none", plaintext_auth=True),
    }
    site = write_site(
        root / "site",
        listeners=listeners,
        extra={"limits": {"max_connections_per_client": 2}},
    )
    with MailServer(site, root, ports.values()) as running:
        yield running, ports


def _greeting(port: int, source: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((LOOPBACK, port), TIMEOUT, source_address=(source, 0))
    return sock, sock.makefile("rb").readline()


@pytest.mark.parametrize(
    ("listener", "greeting", "refusal"),
    [
        ("smtp", b"220 ", b"421 4.7.0 Too many connections from your address (at most 2)"),
        ("pop3", b"+OK", b"-ERR [SYS/TEMP] Too many connections from your address (at most 2)"),
    ],
)
def test_past_its_share_a_client_is_refused_until_one_ends(
    server: tuple[MailServer, dict[str, int]], listener: str, greeting: bytes, refusal: bytes
) -> None:
    running, ports = server
    source = "127.0.0.77" if listener == "smtp" else "127.0.0.78"
    held = [_greeting(ports[listener], source) for _ in range(2)]
    try:
        assert all(first.startswith(greeting) for _, first in held)
        third, said = _greeting(ports[listener], source)
        third.close()
        assert said.startswith(refusal), said
        other, said = _greeting(ports[listener], "127.0.0.79")  # another client is not held up
        other.close()
        assert said.startswith(greeting)
    finally:
        held[0][0].close()
    assert running.wait_for_log(f"{source} refused at connect: ")

    def admitted() -> bool:
        again, said = _greeting(ports[listener], source)
        again.close()
        return said.startswith(greeting)

    assert wait_until(admitted, TIMEOUT)  # the place of the one that ended is free
    held[1][0].close()
    if listener == "smtp":
        with smtplib.SMTP(LOOPBACK, ports["smtp"], timeout=TIMEOUT) as client:
            assert client.noop()[0] == 250
    else:
        client = poplib.POP3(LOOPBACK, ports["pop3"], timeout=TIMEOUT)
        client.quit()


def test_control_characters_a_client_sends_are_escaped_in_the_log(
    server: tuple[MailServer, dict[str, int]],
) -> None:
    running, ports = server
    with socket.create_connection((LOOPBACK, ports["smtp"]), TIMEOUT) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"Y\x1b[2J\x1b[31MRED\r\nQUIT\r\n")
        assert reader.readline().startswith(b"500 ")
    assert running.wait_for_log("Y\\x1b[2J\\x1b[31MRED"), running.log()
    assert "\x1b" not in running.log()
