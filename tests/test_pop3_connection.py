"""`runtime.mailbox.connection`: lines in, bytes out, over real loopback sockets.

In-process: a server on a kernel-chosen port whose session is a small coroutine, and a
plain socket as the client. The idle limit is set short (a fraction of a second) so
that the tests can wait for it; nothing is asserted about how long anything took
except that the idle limit was not cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from serverkit import LOOPBACK

from mailplan.runtime.mailbox.connection import Connection, LineTooLong

IDLE = 0.3


async def serving(
    session: Callable[[Connection], Awaitable[None]],
    client: Callable[[int], None],
    limit: int = 100,
    at_once: Callable[[bytes], bool] | None = None,
) -> None:
    """Run `session` for one connection while `client(port)` runs in a thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    async def started(connection: Connection) -> None:
        connection.at_once = at_once
        try:
            await session(connection)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        finally:
            connection.close()

    server = await loop.create_server(
        lambda: Connection(started, limit, IDLE), LOOPBACK, 0, family=socket.AF_INET
    )
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.gather(asyncio.to_thread(client, port), asyncio.wait_for(done, 10))
    finally:
        server.close()


def test_lines_pipelined_in_one_write_come_one_by_one_with_a_partial_last() -> None:
    got: list[bytes] = []

    async def session(connection: Connection) -> None:
        while line := await connection.readline():
            got.append(line)

    def client(port: int) -> None:
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(b"ONE\r\nTWO 2\r\n\r\nTHR")
            sock.sendall(b"EE\r\nno end")

    asyncio.run(serving(session, client))
    assert got == [b"ONE\r\n", b"TWO 2\r\n", b"\r\n", b"THREE\r\n", b"no end"]


def test_a_line_past_the_limit_is_refused() -> None:
    async def session(connection: Connection) -> None:
        assert await connection.readline() == b"short\r\n"
        with pytest.raises(LineTooLong):
            await connection.readline()

    def client(port: int) -> None:
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(b"short\r\n" + b"x" * 500)
            sock.recv(1)  # until the server closes

    asyncio.run(serving(session, client))


def test_an_idle_client_times_out_after_the_idle_limit() -> None:
    waited: list[float] = []

    async def session(connection: Connection) -> None:
        assert await connection.readline() == b"HELLO\r\n"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await connection.readline()
        waited.append(time.monotonic() - started)
        connection.write(b"-ERR idle\r\n")

    def client(port: int) -> None:
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(b"HELLO\r\n")
            assert sock.makefile("rb").readline() == b"-ERR idle\r\n"

    asyncio.run(serving(session, client))
    assert waited[0] >= IDLE * 0.9  # a lower bound only


def test_a_client_that_does_not_read_is_cut_off_after_the_idle_limit() -> None:
    async def session(connection: Connection) -> None:
        await connection.readline()
        with pytest.raises(ConnectionResetError):
            while True:  # far more than any socket buffer holds
                connection.write(b"x" * 65536)
                await connection.drain()

    def client(port: int) -> None:
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(b"SEND\r\n")
            sock.settimeout(10)
            time.sleep(IDLE * 3)  # reads nothing meanwhile
            # What was sent before the cut, then the end (or a reset): had the server
            # not hung up, recv would wait past the timeout and raise TimeoutError.
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass

    asyncio.run(serving(session, client))


def test_lines_answered_at_once_and_those_left_for_the_session_keep_their_order() -> None:
    """What `at_once` answers is answered where it arrives; the first line it leaves
    goes to the session, and nothing after it is answered before the session has it."""
    at_once_saw: list[bytes] = []

    def at_once(line: bytes) -> bool:
        if line.startswith(b"SLOW"):
            return False
        at_once_saw.append(line)
        connection_of[0].write(b"fast " + line)
        return True

    connection_of: list[Connection] = []

    async def session(connection: Connection) -> None:
        connection_of.append(connection)
        connection.at_once = at_once
        while line := await connection.readline():
            await asyncio.sleep(0.01)  # the session's own work takes a while
            connection.write(b"slow " + line)

    def client(port: int) -> None:
        with socket.create_connection((LOOPBACK, port)) as sock:
            reader = sock.makefile("rb")
            sock.sendall(b"A\r\n")
            assert reader.readline() == b"fast A\r\n"
            sock.sendall(b"B\r\nSLOW 1\r\nC\r\n")
            sock.sendall(b"D\r\n")
            assert [reader.readline() for _ in range(4)] == [
                b"fast B\r\n",
                b"slow SLOW 1\r\n",
                b"slow C\r\n",
                b"slow D\r\n",
            ]

    asyncio.run(serving(session, client))
    assert at_once_saw == [b"A\r\n", b"B\r\n"]


def test_a_client_that_pipelines_and_does_not_read_stops_being_answered_at_once() -> None:
    """Answers made inside `data_received` go to the transport as they pile up, so a
    client that sends thousands of commands and reads nothing makes the transport pause
    writing, and the rest wait for the session's task (which waits for the client)."""
    answered: list[int] = []
    sent = 4000
    reply = b"+OK " + b"x" * 16384 + b"\r\n"

    def at_once(line: bytes) -> bool:
        answered.append(1)
        connection_of[0].write(reply)
        return True

    connection_of: list[Connection] = []

    async def session(connection: Connection) -> None:
        connection_of.append(connection)
        connection.at_once = at_once
        with pytest.raises((TimeoutError, ConnectionResetError)):
            while await connection.readline():
                connection.write(reply)
                await connection.drain()

    def client(port: int) -> None:
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(b"RETR 1\r\n" * sent)  # 32 KB of commands, 64 MB of answers
            time.sleep(IDLE * 3)  # reads nothing

    asyncio.run(serving(session, client))
    assert 0 < len(answered) < sent // 4  # held back, not answered into memory


def test_bytes_without_a_line_end_are_no_activity() -> None:
    """A byte now and then, never a whole line, does not keep a session from its idle
    limit."""

    async def session(connection: Connection) -> None:
        with pytest.raises(TimeoutError):
            await connection.readline()
        connection.write(b"-ERR idle\r\n")

    def client(port: int) -> None:
        with socket.create_connection((LOOPBACK, port)) as sock:
            answered = False
            for _ in range(20):  # ten times the idle limit, a byte every half of it
                sock.sendall(b"x")
                time.sleep(IDLE / 2)
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    answered = True
                    break
            assert answered, "the drip kept the session alive"
            sock.settimeout(10)
            assert sock.makefile("rb").readline() == b"-ERR idle\r\n"

    asyncio.run(serving(session, client))
