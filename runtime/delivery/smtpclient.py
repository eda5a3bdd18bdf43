"""A small SMTP client on an asyncio Protocol that pipelines (RFC 2920).

`runtime.delivery.outbound` decides what to send and what each reply means; this module
only moves lines: connect and read the greeting, EHLO (or HELO) and the extensions it
lists, STARTTLS (`loop.start_tls` on the same protocol), and `exchange`, which writes
any number of commands (and a message's data) in one `send` and waits once for all their
replies. aiosmtplib waits for a reply after every command, and its protocol keeps only
one reply per read, so it cannot pipeline: a relayed message cost four writes and four
wake-ups of the waiting task; pipelined, one of each.

Every wait has a time-out (one timer per wait, not a task); a connection that ends, times
out or answers what is not SMTP raises `SmtpLost`, and is closed.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast

MAX_LINE = 8192  # bytes of one reply line we read (RFC 5321 4.5.3.1.5 says 512)
MAX_REPLY = 64 * 1024  # bytes of one reply, its lines together
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SmtpLost(Exception):
    """The connection ended, timed out, or the server said what is not SMTP."""


@dataclass(frozen=True)
class SmtpReply:
    code: int
    text: str  # its lines after the code, joined by newlines (as aiosmtplib gives them)


def data_block(message: bytes) -> bytes:
    """A message as it goes after DATA: CRLF line endings, leading dots doubled, and the
    line with one dot that ends it."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:  # a lone CR or LF
        message = _LINE_ENDINGS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = _LEADING_DOT.sub(b"..", message)
    return message + b".\r\n"


def address(path: str) -> str:
    """`<path>` for MAIL FROM and RCPT TO; a control character (CR, LF) is refused,
    so no address can add a command of its own."""
    if _CONTROL.search(path):
        raise ValueError(f"a control character in the address {path!r}")
    return f"<{path}>"


class _Protocol(asyncio.Protocol):
    """Reads replies as they come; wakes the waiting client once it has all it wants."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.replies: deque[SmtpReply] = deque()
        self.wanted = 0
        self.waiter: asyncio.Future[None] | None = None
        self.failure: SmtpLost | None = None
        self._lines: list[bytes] = []
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are no subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        start = 0
        buffer = self.buffer
        while (end := buffer.find(b"\n", start)) != -1:
            line = bytes(buffer[start : end + 1])
            start = end + 1
            if not self._line(line):
                break
        del buffer[:start]
        if len(buffer) > MAX_LINE and self.failure is None:
            self._fail(SmtpLost("a reply line too long"))
        self._wake()

    def _line(self, line: bytes) -> bool:
        code = line[:3]
        separator = line[3:4]
        if len(line) > MAX_LINE or not code.isdigit() or separator not in b" -\r\n":
            self._fail(SmtpLost(f"not an SMTP reply: {line[:80]!r}"))
            return False
        self._size += len(line)
        if self._size > MAX_REPLY:
            self._fail(SmtpLost("a reply too long"))
            return False
        self._lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] == b"-":
            return True
        text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
        self.replies.append(SmtpReply(int(code), text))
        self._lines, self._size = [], 0
        return True

    def _fail(self, failure: SmtpLost) -> None:
        self.failure = failure
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.failure is not None or len(self.replies) >= self.wanted:
            waiter.set_result(None)

    def eof_received(self) -> bool:
        if self.failure is None:
            self.failure = SmtpLost("the server closed the connection")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            reason = f"the connection was lost: {exc}" if exc else "the connection was closed"
            self.failure = SmtpLost(reason)
        self.transport = None
        self._wake()


class SmtpClient:
    """One SMTP connection. Use `connect`, `hello`, `starttls`, `exchange`, `quit`."""

    def __init__(self, host: str, port: int, helo: str, timeout: float) -> None:
        self.host = host
        self.port = port
        self.helo = helo
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self._protocol: _Protocol | None = None
        self.transport: asyncio.Transport | None = None

    @property
    def is_connected(self) -> bool:
        protocol = self._protocol
        return (
            protocol is not None
            and protocol.failure is None
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def supports_extension(self, name: str) -> bool:
        return name.lower() in self.extensions

    async def connect(self) -> SmtpReply:
        """Connect and read the greeting; SmtpLost unless it is 220 (the connection closed)."""
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(loop), self.host, self.port),
                self.timeout,
            )
        except TimeoutError:
            raise SmtpLost(f"no connection within {self.timeout:.0f} s") from None
        self._protocol, self.transport = protocol, transport
        (greeting,) = await self._replies(1, self.timeout)
        if greeting.code != 220:
            self.close()
            raise SmtpLost(f"greeting {greeting.code} {' '.join(greeting.text.split())}")
        return greeting

    async def hello(self) -> SmtpReply:
        """EHLO, or HELO if EHLO is refused; the extensions EHLO listed."""
        (reply,) = await self.exchange(f"EHLO {self.helo}\r\n".encode(), 1)
        self.extensions = {}
        if reply.code == 250:
            for line in reply.text.split("\n")[1:]:
                keyword, _, value = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.lower()] = value
            return reply
        if reply.code == 421:
            raise SmtpLost(f"EHLO: {reply.code} {reply.text}")
        (reply,) = await self.exchange(f"HELO {self.helo}\r\n".encode(), 1)
        if reply.code != 250:
            raise SmtpLost(f"HELO: {reply.code} {' '.join(reply.text.split())}")
        return reply

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """STARTTLS and the handshake (whose errors, ssl.SSLError among them, propagate);
        what was read before the handshake is dropped (RFC 3207 4.2: it may be injected)."""
        (reply,) = await self.exchange(b"STARTTLS\r\n", 1)
        if reply.code != 220:
            raise SmtpLost(f"STARTTLS: {reply.code} {' '.join(reply.text.split())}")
        protocol, transport = self._protocol, self.transport
        assert protocol is not None and transport is not None
        protocol.buffer.clear()
        protocol.replies.clear()
        loop = asyncio.get_running_loop()
        try:
            upgraded = await loop.start_tls(
                transport,
                protocol,
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=self.timeout,
            )
        except (TimeoutError, ConnectionError) as exc:
            self.close()
            raise SmtpLost(f"TLS handshake: {exc or type(exc).__name__}") from None
        except BaseException:
            self.close()
            raise
        if upgraded is None:
            raise SmtpLost("the connection ended during the TLS handshake")
        self.transport = upgraded
        protocol.transport = upgraded

    async def exchange(
        self, data: bytes, replies: int, timeout: float | None = None
    ) -> list[SmtpReply]:
        """Write `data` (commands, and maybe a message's data) in one send, then wait for
        `replies` replies; SmtpLost (the connection closed) if they do not all come."""
        if self.transport is None or not self.is_connected:
            raise SmtpLost("not connected")
        unasked = self._protocol.replies if self._protocol is not None else None
        if unasked:  # said between commands (a kept connection): only a 421 means anything
            closing = [reply for reply in unasked if reply.code == 421]
            unasked.clear()
            if closing:
                self.close()
                raise SmtpLost(f"421 {' '.join(closing[0].text.split())}")
        self.transport.write(data)
        return await self._replies(replies, self.timeout if timeout is None else timeout)

    async def _replies(self, count: int, timeout: float) -> list[SmtpReply]:
        protocol = self._protocol
        assert protocol is not None
        if len(protocol.replies) < count and protocol.failure is None:
            loop = protocol.loop
            waiter = protocol.waiter = loop.create_future()
            protocol.wanted = count
            # Each reply has `timeout` after the one before it (RFC 5321 4.5.3.2 times
            # each command): a group of a hundred RCPTs to a slow server is not one
            # command's time. The timer looks again while replies are coming.
            seen = len(protocol.replies)
            timer: asyncio.TimerHandle

            def check() -> None:
                nonlocal seen, timer
                if len(protocol.replies) > seen:
                    seen = len(protocol.replies)
                    timer = loop.call_later(timeout, check)
                else:
                    _expire(waiter)

            timer = loop.call_later(timeout, check)
            try:
                await waiter
            finally:
                timer.cancel()
                protocol.waiter = None
            if len(protocol.replies) < count and protocol.failure is None:
                protocol.failure = SmtpLost(f"no reply within {timeout:.0f} s")
        if len(protocol.replies) < count:
            failure = protocol.failure or SmtpLost("the connection ended")
            self.close()
            raise failure
        return [protocol.replies.popleft() for _ in range(count)]

    async def quit(self, timeout: float = 5.0) -> None:
        """QUIT, its reply awaited for a moment, and the connection closed."""
        try:
            if self.is_connected:
                await self.exchange(b"QUIT\r\n", 1, timeout)
        except SmtpLost:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
