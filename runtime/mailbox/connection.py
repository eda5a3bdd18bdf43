"""A client's socket as lines in and bytes out: an `asyncio.Protocol`, no streams.

POP3 spends its time in small commands, and asyncio's streams cost more per command
than the command itself (a `StreamReader.readline`, a `timeout` scope and a `drain`
each time). `Connection` keeps what the client sent in one buffer: a session asks it
for the next line and waits only when no whole line is there yet, so commands a client
pipelines (RFC 2449 PIPELINING) are answered without a trip through the event loop
each. Writes go straight to the transport; `drain` waits only while the transport's
buffer is over its high-water mark (a client that does not read).

Limits against hostile clients: a line longer than `limit` ends the session
(`LineTooLong`), reading stops while more than `BACKLOG` bytes wait unanswered, and one
timer (not one per command) ends a session that is idle for `idle` seconds, waiting
for a command (bytes without a line end are no activity) or for a client that does not
read what it asked for; replies answered at once go to the transport as they pile up,
so a client that pipelines and does not read stops being answered; and a connection
closed with replies its client never read is cut off `idle` seconds later.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

BACKLOG = 64 * 1024  # bytes of unanswered commands before reading stops
FLUSH = 64 * 1024  # bytes of replies kept before they go to the transport


class LineTooLong(Exception):
    """The client sent a line longer than the limit."""


class Connection(asyncio.Protocol):
    """One connection; `started` runs the session once the connection is made."""

    def __init__(
        self, started: Callable[[Connection], Coroutine[Any, Any, None]], limit: int, idle: float
    ) -> None:
        self.started = started
        self.limit = limit
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.aborted = False  # the server ended the connection (stopping)
        # Answers a line right where it arrives, while the session waits for one; False:
        # the line is left for the session's task (see Pop3.at_once).
        self.at_once: Callable[[bytes], bool] | None = None
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no line end
        self._ended = False  # no more data will come (EOF, or the connection is lost)
        self._lost: BaseException | None = None
        self._error: BaseException | None = None  # what connection_lost was given
        self._waiter: asyncio.Future[None] | None = None
        self._draining: asyncio.Future[None] | None = None
        self._reading = True
        self._writing = True
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False
        self._failed: Exception | None = None  # what answering at once raised
        self._pending: list[bytes] = []  # replies not yet handed to the transport
        self._pending_size = 0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._timer = self._loop.call_later(self.idle, self._check_idle)
        self.task = self._loop.create_task(self.started(self))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > BACKLOG and self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()
        waiting = self._waiter is not None and not self._waiter.done()
        if waiting and self.at_once is not None:
            self._answer_at_once(self.at_once)
        if self._buffer:
            self._wake(self._waiter)

    def eof_received(self) -> bool:
        self._ended = True
        self._wake(self._waiter)
        # Half-closed: the commands before the EOF are still answered (over TLS the
        # transport closes, whatever this returns).
        return self.extra("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._lost = exc if exc is not None else ConnectionResetError("connection closed")
        self._error = exc
        if self._timer is not None:
            self._timer.cancel()
        self._wake(self._waiter)
        self._wake(self._draining)

    def pause_writing(self) -> None:
        self._writing = False

    def resume_writing(self) -> None:
        self._writing = True
        self._last = self._loop.time()
        self._wake(self._draining)

    # -- for the session ---------------------------------------------------------------

    def line(self) -> bytes | None:
        """The next whole line if one is buffered (LineTooLong past the limit)."""
        buffer = self._buffer
        end = buffer.find(b"\n", self._searched)
        if end < 0:
            self._searched = len(buffer)
            if len(buffer) > self.limit:
                raise LineTooLong
            return None
        if end >= self.limit:
            raise LineTooLong
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        self._searched = 0
        self._last = self._loop.time()  # a whole line, not a byte now and then, is activity
        if not self._reading and len(buffer) < BACKLOG // 2 and self.transport is not None:
            self._reading = True
            self.transport.resume_reading()
        return line

    async def readline(self) -> bytes:
        """The next line with its line end; what is left without one (maybe b"") when the
        client has stopped sending. TimeoutError when it has been idle for too long."""
        while True:
            if self._failed is not None:
                failed, self._failed = self._failed, None
                raise failed
            found = self.line()
            if found is not None:
                return found
            if self._ended:
                rest = bytes(self._buffer)
                self._buffer.clear()
                return rest
            if self._timed_out:
                raise TimeoutError
            self.flush()  # the replies so far, in one write, before waiting
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def discard(self) -> None:
        """Forget what the client sent and nobody read (before a TLS handshake)."""
        self._buffer.clear()
        self._searched = 0

    def write(self, *pieces: bytes) -> None:
        """Send `pieces`: kept until the session waits for the client (so that the
        replies to pipelined commands go out together) or until they are many.
        ConnectionResetError once the connection is gone."""
        if self._lost is not None:
            raise ConnectionResetError("the client went away") from self._lost
        self._pending += pieces
        self._pending_size += sum(map(len, pieces))

    def flush(self) -> None:
        """Hand what was written to the transport."""
        pending, transport = self._pending, self.transport
        if not pending or transport is None or transport.is_closing():
            return
        if len(pending) == 1:
            transport.write(pending[0])
        else:
            transport.writelines(pending)
        self._pending = []
        self._pending_size = 0

    async def drain(self) -> None:
        """Wait while the client is not reading what it was sent."""
        if self._pending_size >= FLUSH:
            self.flush()
        while not self._writing:
            if self._lost is not None:
                raise ConnectionResetError("the client went away") from self._lost
            self._draining = self._loop.create_future()
            try:
                await self._draining
            finally:
                self._draining = None
        if self._lost is not None:
            raise ConnectionResetError("the client went away") from self._lost

    @property
    def lost(self) -> BaseException | None:
        """Why the connection was lost (None: not lost, or closed in order)."""
        return self._error

    def active(self) -> None:
        """Count now as activity (a command that took long is no idleness)."""
        self._last = self._loop.time()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Turn the connection into TLS (server side), after what was written is sent."""
        transport = self.transport
        assert transport is not None
        self.flush()
        await self.drain()
        secured = await self._loop.start_tls(transport, self, context, server_side=True)
        if secured is None or self.aborted:  # gone during the handshake, or the server stops
            if secured is not None:
                secured.abort()
            raise ConnectionResetError("the client went away during the TLS handshake")
        self.transport = secured
        self._reading = True  # start_tls reads again, through TLS

    def extra(self, name: str) -> object:
        return None if self.transport is None else self.transport.get_extra_info(name)

    def pause(self) -> None:
        """Stop reading from the client (until the next `line` that finds room)."""
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def abort(self) -> None:
        """End the connection at once (the server is stopping)."""
        self.aborted = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Send what is left to send, then close."""
        self.at_once = None
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        unsent = transport.get_write_buffer_size()  # (a closed TLS transport cannot say)
        transport.close()
        if unsent:  # a client that does not read is not waited for forever
            self._loop.call_later(self.idle, transport.abort)

    # -- inside --------------------------------------------------------------------------

    def _answer_at_once(self, at_once: Callable[[bytes], bool]) -> None:
        """The whole lines that `at_once` answers, while the client reads the answers."""
        answered = False
        while self._writing and self._lost is None:
            try:
                line = self.line()
            except LineTooLong:
                break  # the task says so
            if line is None:
                break
            try:
                done = at_once(line)
            except Exception as exc:  # raised again in the task, which logs it
                self._failed = exc
                self._wake(self._waiter)
                break
            if not done:
                self._buffer[:0] = line  # for the task, first
                self._searched = 0
                break
            answered = True
            if self._pending_size >= FLUSH:
                self.flush()  # the transport says pause_writing when the client is not reading
        if answered:
            self.flush()

    def _check_idle(self) -> None:
        """Runs every `idle` seconds at most: ends a session idle since the last check."""
        left = self._last + self.idle - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check_idle)
            return
        if self._waiter is not None:  # waiting for a command
            self._timed_out = True
            self._wake(self._waiter)
        elif self._draining is not None and self.transport is not None:  # not reading
            self.transport.abort()
        else:  # busy with a command of its own (a password check, a large read)
            self._timer = self._loop.call_later(self.idle, self._check_idle)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
