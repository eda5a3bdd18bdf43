"""The LMTP client (RFC 2033): LOCAL mail handed over to a mailbox server (Dovecot).

One connection carries every message waiting for an `LMTP(SERVERS)` queue; the servers
(`host:port`, `[v6]:port`, `unix:/path`) are tried in the site's order until one greets
and answers LHLO. Each message is one transaction: MAIL, one RCPT per recipient, DATA,
and then, as LMTP differs from SMTP, **one reply per accepted recipient**, in the order
of the RCPTs: each recipient gets its own outcome (a 4xx for one mailbox retries that
mailbox only, a 5xx bounces only it). A connection that ends before a recipient's reply
leaves that recipient temporary: it is tried again (at least once, never lost).

aiosmtplib speaks no LMTP (no LHLO, one reply after DATA), so this is a small client
over asyncio streams; what a reply means is decided as for SMTP (`outbound`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailplan.runtime.delivery.outbound import Fate, Kind, Parcel

log = logging.getLogger("mailplan.lmtp")

DATA_DONE_TIMEOUT = 600.0  # the replies after the data: a slow mailbox server (RFC 5321 4.5.3.2.6)
MAX_REPLY = 64 * 1024  # bytes of one reply (its lines together) that we read
_LINE = re.compile(rb"([2-5]\d\d)([ -])(.*?)\r?\n", re.DOTALL)


class Lost(Exception):
    """The connection ended, timed out, or the server spoke no LMTP."""


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # the lines after the code, joined by spaces

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()

    @property
    def kind(self) -> Kind:
        return "delivered" if self.code < 400 else "temporary" if self.code < 500 else "permanent"

    @property
    def status(self) -> str:
        """The enhanced status (RFC 3463) it gives, or one made from its basic code."""
        first = self.text.split(" ", 1)[0]
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(self.code)[0]:
            return first
        return f"{self.code // 100}.0.0"


@dataclass(frozen=True)
class LmtpSettings:
    helo: str
    timeout: float = 60.0  # connecting, and each command


class _Connection:
    def __init__(self, server: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.extensions: set[str] = set()

    async def reply(self, timeout: float) -> Reply:
        try:
            return await asyncio.wait_for(self._reply(), timeout)
        except TimeoutError:
            raise Lost(f"no reply within {timeout:.0f} s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise Lost(str(exc) or type(exc).__name__) from None

    async def _reply(self) -> Reply:
        texts: list[str] = []
        size = 0
        while True:
            line = await self.reader.readline()
            if not line:
                raise Lost("the server closed the connection")
            size += len(line)
            found = _LINE.fullmatch(line)
            if found is None or size > MAX_REPLY:
                raise Lost(f"not an LMTP reply: {line[:80]!r}")
            texts.append(found[3].decode("utf-8", "replace").strip())
            if found[2] == b" ":
                return Reply(int(found[1]), " ".join(t for t in texts if t))

    async def command(self, line: str, timeout: float, encoding: str = "ascii") -> Reply:
        await self.send(line.encode(encoding) + b"\r\n")
        return await self.reply(timeout)

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as exc:
            raise Lost(str(exc) or type(exc).__name__) from None

    def close(self) -> None:
        self.writer.close()


async def _open(server: str, settings: LmtpSettings) -> _Connection:
    """Connect, read the greeting, say LHLO; raises Lost (or OSError) when that fails."""
    if server.startswith("unix:"):
        opening = asyncio.open_unix_connection(server.removeprefix("unix:"))
    else:
        host, _, port = server.rpartition(":")
        opening = asyncio.open_connection(host.strip("[]"), int(port))
    try:
        reader, writer = await asyncio.wait_for(opening, settings.timeout)
    except TimeoutError:
        raise Lost(f"no connection within {settings.timeout:.0f} s") from None
    connection = _Connection(server, reader, writer)
    try:
        greeting = await connection.reply(settings.timeout)
        if greeting.code != 220:
            raise Lost(f"greeting {greeting}")
        hello = await connection.command(f"LHLO {settings.helo}", settings.timeout)
        if hello.code != 250:
            raise Lost(f"LHLO answered {hello}")
    except BaseException:
        connection.close()
        raise
    connection.extensions = {word.upper() for word in hello.text.split()}
    return connection


Settled = Callable[[list[Fate]], Awaitable[None]]


async def deliver(
    servers: tuple[str, ...],
    parcels: list[Parcel],
    settings: LmtpSettings,
    settled: Settled | None = None,
) -> list[Fate]:
    """Hand `parcels` over to the first of `servers` that takes the connection; an outcome
    for every recipient of every parcel (as the parcel names it). With `settled`, each
    parcel's outcomes are handed to it as soon as they are known, before the next parcel
    goes (so that a crash delivers as little as possible twice), and are not returned."""
    connection = None
    failures = []
    for server in servers:
        try:
            connection = await _open(server, settings)
            break
        except (Lost, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            failures.append(f"{server}: {reason}")
    if connection is None:
        text = "no LMTP server took the connection (" + "; ".join(failures) + ")"
        return _everyone(parcels, "4.4.1", text)
    outcomes: list[Fate] = []
    try:
        for index, parcel in enumerate(parcels):
            try:
                await _transaction(connection, parcel, settings, outcomes)
                if settled is not None:
                    await settled(outcomes)
                    outcomes = []
            except Lost as exc:
                log.info("LMTP %s: connection ended: %s", connection.server, exc)
                text = f"connection to LMTP server {connection.server} lost: {exc}"
                left = _undecided(parcels[index:], outcomes)
                return outcomes + _everyone(left, "4.4.2", text, connection.server)
        with contextlib.suppress(Lost):
            await connection.command("QUIT", settings.timeout)
    finally:
        connection.close()
    return outcomes


async def _transaction(
    connection: _Connection, parcel: Parcel, settings: LmtpSettings, outcomes: list[Fate]
) -> None:
    """MAIL, one RCPT each, DATA, then one reply per accepted recipient: each outcome is
    added to `outcomes` as soon as it is known (a connection lost later keeps them)."""
    server, timeout = connection.server, settings.timeout
    international = not all(a.isascii() for a in (parcel.sender, *parcel.recipients))
    if international and "SMTPUTF8" not in connection.extensions:
        reason = "a non-ASCII address, and the LMTP server does not offer SMTPUTF8"
        outcomes += _everyone([parcel], "5.6.7", reason, server)
        return
    encoding = "utf-8" if international else "ascii"
    options = _options(connection, parcel, international)
    mail = await connection.command(f"MAIL FROM:<{parcel.sender}>{options}", timeout, encoding)
    if mail.code != 250:
        outcomes += [_outcome(parcel, r, mail, server) for r in parcel.recipients]
        await connection.command("RSET", timeout)
        return
    accepted: list[str] = []
    for recipient in parcel.recipients:
        reply = await connection.command(f"RCPT TO:<{recipient}>", timeout, encoding)
        if reply.code in (250, 251):
            accepted.append(recipient)
        else:
            outcomes.append(_outcome(parcel, recipient, reply, server))
    if not accepted:
        await connection.command("RSET", timeout)
        return
    start = await connection.command("DATA", timeout)
    if start.code != 354:
        outcomes += [_outcome(parcel, r, start, server) for r in accepted]
        await connection.command("RSET", timeout)
        return
    await connection.send(stuffed(parcel.message) + b".\r\n")
    for recipient in accepted:  # RFC 2033 4.2: one reply per accepted RCPT, in order
        reply = await connection.reply(DATA_DONE_TIMEOUT)
        outcomes.append(_outcome(parcel, recipient, reply, server))


def _options(connection: _Connection, parcel: Parcel, international: bool) -> str:
    options = ""
    if "SIZE" in connection.extensions:
        options += f" SIZE={len(parcel.message)}"
    if "8BITMIME" in connection.extensions and not parcel.message.isascii():
        options += " BODY=8BITMIME"
    if international:
        options += " SMTPUTF8"
    return options


def stuffed(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, a leading dot doubled, a final CRLF."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def _outcome(parcel: Parcel, recipient: str, reply: Reply, server: str) -> Fate:
    return Fate(
        parcel.queue_id, recipient, reply.kind, reply.status, str(reply), server, True, server
    )


def _undecided(parcels: list[Parcel], outcomes: list[Fate]) -> list[Parcel]:
    """The parcels with only the recipients that have no outcome yet."""
    decided = {(outcome.queue_id, outcome.recipient) for outcome in outcomes}
    return [
        Parcel(
            p.queue_id,
            p.sender,
            tuple(r for r in p.recipients if (p.queue_id, r) not in decided),
            p.message,
        )
        for p in parcels
    ]


def _everyone(
    parcels: list[Parcel], status: str, text: str, server: str | None = None
) -> list[Fate]:
    kind: Kind = "permanent" if status.startswith("5") else "temporary"
    return [Fate(p.queue_id, r, kind, status, text, server) for p in parcels for r in p.recipients]
