"""The pipelining SMTP client (runtime/delivery/smtpclient.py), through `outbound.deliver`.

A scripted server on loopback answers nothing to MAIL, RCPT or DATA until the whole
group has arrived: a client that waited for each reply would stall there, so a
delivered message proves the commands came together. Postfix's smtp-sink (which offers
PIPELINING) is the interop test.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from interop import program
from serverkit import free_port, wait_until

from mailplan.runtime.delivery import outbound
from mailplan.runtime.delivery.outbound import Fate, Parcel, Settings
from mailplan.runtime.delivery.smtpclient import SmtpClient, SmtpLost, address, data_block
from mailplan.runtime.dns import mx

HELO = "mail.example.test"
REPLIES = {"RSET": "250 2.0.0 reset\r\n", "QUIT": "221 2.0.0 bye\r\n", "EHLO": ""}


def test_data_block_ends_lines_with_crlf_and_doubles_leading_dots() -> None:
    assert data_block(b"a\r\n.b\r\n..c\r\n") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert data_block(b".first\nlone LF\rlone CR") == b"..first\r\nlone LF\r\nlone CR\r\n.\r\n"
    assert data_block(b"no end") == b"no end\r\n.\r\n"
    assert data_block(b"") == b"\r\n.\r\n"


def test_an_address_with_a_line_break_is_refused() -> None:
    assert address("") == "<>"
    assert address("bob@example.test") == "<bob@example.test>"
    with pytest.raises(ValueError, match="control character"):
        address("bob@example.test>\r\nRCPT TO:<eve@evil.test")


@dataclass
class Scripted:
    """A one-connection-at-a-time SMTP server that replies to MAIL, RCPT and DATA only
    once DATA has arrived, and records each group of commands it got together."""

    rcpt: dict[str, str] = field(default_factory=dict)
    ehlo: str = "250-scripted\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
    groups: list[list[str]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    port: int = 0
    buffer: bytes = b""
    refuse_data: str | None = None  # the reply to the first DATA; the envelope is kept
    pause: float = 0.0  # seconds between the replies of a group
    kept: bool = False  # an envelope kept after a refused DATA, until RSET

    def __post_init__(self) -> None:
        self.port = free_port("127.0.0.2")
        self.sock = socket.create_server(("127.0.0.2", self.port))
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
                conn.settimeout(10.0)
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.sendall(b"220 scripted ESMTP\r\n")
        self.buffer, group = b"", []
        while (line := self._line(conn)) is not None:
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb in ("MAIL", "RCPT", "DATA"):
                group.append(line)
            if verb == "DATA":
                self.groups.append(group)
                if self.refuse_data is not None:
                    replies = ["250 2.1.0 ok", *map(self._rcpt, group[1:-1]), self.refuse_data]
                    conn.sendall("".join(f"{r}\r\n" for r in replies).encode())
                    self.refuse_data, self.kept = None, True
                else:
                    self._send(conn, self._replies(group))
                    if any(self._rcpt(c).startswith("250") for c in group[1:-1]):
                        self._message(conn)
                group = []
            elif verb == "RSET":
                self.kept = False
                conn.sendall(b"250 2.0.0 ok\r\n")
            elif verb in REPLIES:
                conn.sendall(REPLIES[verb].encode())
                if verb == "QUIT":
                    return
            elif verb not in ("MAIL", "RCPT"):
                conn.sendall(b"502 5.5.1 unknown\r\n")

    def _line(self, conn: socket.socket) -> str | None:
        while b"\r\n" not in self.buffer:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        if line.upper().startswith(b"EHLO"):
            conn.sendall(self.ehlo.encode())
        return line.decode()

    def _message(self, conn: socket.socket) -> None:
        while b"\r\n.\r\n" not in self.buffer:
            self.buffer += conn.recv(65536)
        message, _, self.buffer = self.buffer.partition(b"\r\n.\r\n")
        self.messages.append(message + b"\r\n")
        conn.sendall(b"250 2.0.0 queued\r\n")

    def _rcpt(self, command: str) -> str:
        found = re.search(r"<(.*)>", command)
        return self.rcpt.get(found[1] if found else "", "250 2.1.5 ok")

    def _replies(self, group: list[str]) -> list[bytes]:
        rcpts = [self._rcpt(c) for c in group[1:-1]]
        data = "354 go ahead" if any(r.startswith("250") for r in rcpts) else "554 5.5.1 no rcpt"
        mail = "503 5.5.1 nested MAIL" if self.kept else "250 2.1.0 ok"
        return [f"{r}\r\n".encode() for r in [mail, *rcpts, data]]

    def _send(self, conn: socket.socket, replies: list[bytes]) -> None:
        if not self.pause:
            conn.sendall(b"".join(replies))
            return
        for reply in replies:
            time.sleep(self.pause)
            conn.sendall(reply)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    try:
        yield server
    finally:
        server.close()


def parcel(queue_id: str, *recipients: str) -> Parcel:
    message = f"Subject: {queue_id}\r\n\r\n.a line with a dot\r\nbye\r\n".encode()
    return Parcel(queue_id, "alice@example.test", recipients, message)


def deliver(address: str, port: int, parcels: list[Parcel], timeout: float = 5.0) -> list[Fate]:
    settings = Settings(helo=HELO, port=port, timeout=timeout)

    async def run() -> list[Fate]:
        resolve = mx.resolver("127.0.0.1:9", 1.0)  # never asked: an IP literal
        return await outbound.deliver(f"[{address}]", "remote.test", parcels, settings, resolve)

    return asyncio.run(run())


def test_commands_of_a_message_go_as_one_group(scripted: Scripted) -> None:
    outcomes = deliver("127.0.0.2", scripted.port, [parcel("Q1", "a@r.test", "b@r.test")])
    assert [(o.recipient, o.kind, o.text) for o in outcomes] == [
        ("a@r.test", "delivered", "250 2.0.0 queued"),
        ("b@r.test", "delivered", "250 2.0.0 queued"),
    ]
    assert scripted.groups == [
        [
            "MAIL FROM:<alice@example.test> SIZE=40",
            "RCPT TO:<a@r.test>",
            "RCPT TO:<b@r.test>",
            "DATA",
        ]
    ]
    assert scripted.messages == [b"Subject: Q1\r\n\r\n..a line with a dot\r\nbye\r\n"]


def test_refused_recipients_of_a_pipelined_group_get_their_own_outcomes(
    scripted: Scripted,
) -> None:
    scripted.rcpt = {"gone@r.test": "550 5.1.1 no such user", "full@r.test": "452 4.2.2 full"}
    parcels = [
        parcel("Q1", "a@r.test", "gone@r.test", "full@r.test"),
        parcel("Q2", "gone@r.test"),  # nobody left: DATA is refused, then RSET
        parcel("Q3", "c@r.test"),
    ]
    outcomes = deliver("127.0.0.2", scripted.port, parcels)
    assert sorted((o.queue_id, o.recipient, o.kind, o.status) for o in outcomes) == [
        ("Q1", "a@r.test", "delivered", "2.0.0"),
        ("Q1", "full@r.test", "temporary", "4.2.2"),
        ("Q1", "gone@r.test", "permanent", "5.1.1"),
        ("Q2", "gone@r.test", "permanent", "5.1.1"),
        ("Q3", "c@r.test", "delivered", "2.0.0"),
    ]
    assert [len(group) for group in scripted.groups] == [5, 3, 3]  # MAIL, RCPTs, DATA
    assert len(scripted.messages) == 2  # Q1 to its one recipient left, and Q3


def test_after_a_refused_data_the_envelope_is_reset_before_the_next_message(
    scripted: Scripted,
) -> None:
    """A server may keep the envelope when it refuses DATA; without RSET the next MAIL
    would be a nested one, and its recipients would join the refused message."""
    scripted.refuse_data = "451 4.7.1 try again later"
    outcomes = deliver(
        "127.0.0.2", scripted.port, [parcel("Q1", "a@r.test"), parcel("Q2", "b@r.test")]
    )
    assert sorted((o.queue_id, o.kind, o.status) for o in outcomes) == [
        ("Q1", "temporary", "4.7.1"),
        ("Q2", "delivered", "2.0.0"),
    ]
    assert scripted.messages == [b"Subject: Q2\r\n\r\n..a line with a dot\r\nbye\r\n"]


def test_each_reply_of_a_pipelined_group_has_its_own_time(scripted: Scripted) -> None:
    """Ten recipients answered a third of the time-out apart: the group takes more than
    the time-out in all, and no reply takes longer than it after the one before."""
    scripted.pause = 0.3
    recipients = [f"r{n}@r.test" for n in range(10)]
    outcomes = deliver("127.0.0.2", scripted.port, [parcel("Q1", *recipients)], timeout=1.0)
    assert {o.kind for o in outcomes} == {"delivered"} and len(outcomes) == 10


def test_a_server_that_says_what_is_not_smtp_ends_the_batch_temporarily(
    scripted: Scripted,
) -> None:
    scripted.ehlo = "250-scripted\r\nhello there\r\n"
    outcomes = deliver("127.0.0.2", scripted.port, [parcel("Q1", "a@r.test")])
    assert [(o.kind, o.status) for o in outcomes] == [("temporary", "4.4.1")]
    assert "not an SMTP reply" in outcomes[0].text


@pytest.mark.interop("smtp-sink")
def test_many_messages_pipelined_to_postfix_smtp_sink() -> None:
    sink = program("smtp-sink")
    assert sink is not None
    port = free_port("127.0.0.2")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # as root, it wants a user
    process = subprocess.Popen(
        [sink, "-c", *user, f"127.0.0.2:{port}", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: _listening("127.0.0.2", port), 10.0)
        parcels = [parcel(f"Q{n}", f"user{n}@r.test", "other@r.test") for n in range(30)]
        outcomes = deliver("127.0.0.2", port, parcels)
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    assert len(outcomes) == 60
    assert {(o.kind, o.status) for o in outcomes} == {("delivered", "2.0.0")}
    counts = re.findall(rb"mesg=(\d+)", out)
    assert counts and int(counts[-1]) == 30


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_what_a_server_says_between_commands_is_not_taken_for_a_reply() -> None:
    """A kept connection may hear a line nobody asked for: a 421 ends it (the next
    command is not sent), anything else is dropped, never taken as the next reply."""
    server = socket.create_server(("127.0.0.2", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"220 hi\r\n")
            conn.recv(1024)  # EHLO
            conn.sendall(b"250 hi\r\n")
            conn.sendall(b"250 nobody asked\r\n")
            conn.recv(1024)  # NOOP
            conn.sendall(b"252 the real reply\r\n421 4.4.2 idle too long\r\n")
            conn.recv(1024)  # the client hangs up: no command follows

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def run() -> tuple[list[int], str]:
        client = SmtpClient("127.0.0.2", port, HELO, timeout=5.0)
        await client.connect()
        await client.hello()
        await asyncio.sleep(0.2)  # the unasked line arrives
        codes = [reply.code for reply in await client.exchange(b"NOOP\r\n", 1)]
        await asyncio.sleep(0.2)
        with pytest.raises(SmtpLost) as lost:
            await client.exchange(b"NOOP\r\n", 1)
        return codes, str(lost.value)

    try:
        codes, why = asyncio.run(run())
    finally:
        thread.join(5)
        server.close()
    assert codes == [252]
    assert why == "421 4.4.2 idle too long"
