"""POP3 (RFC 1939, CAPA per RFC 2449, STLS per RFC 2595, SASL PLAIN per RFC 5034).

`Pop3` serves one connection (`runtime.mailbox.connection`: a protocol that hands the
session whole lines, and answers pipelined commands without waiting on the event loop
for each); what it says is decided by pure functions of the listener and the session
(`capabilities`, `plaintext_allowed`, `parse`, `stuffed`, `top`). A login name goes
through the router as an Access address (`Policy.login`, argon2id off the event loop),
so `user`, `user@domain`, `user%domain` and aliases reach the same account; every
failed login waits as long as the client's IP has earned (`runtime.decide.throttle`).
The maildrop (`runtime.mailbox.maildrop`) is locked for the whole session and changed
at QUIT only: a dropped connection deletes nothing. A client that goes away is one
line at INFO, with the stage it left in (`runtime.base.hangups`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from mailplan.plan.model import Listener
from mailplan.runtime.base import hangups
from mailplan.runtime.base.threads import checking
from mailplan.runtime.decide.policy import Policy
from mailplan.runtime.decide.throttle import Throttle
from mailplan.runtime.mailbox.connection import Connection, LineTooLong
from mailplan.runtime.mailbox.maildrop import Locked, Maildrop, Message
from mailplan.runtime.store import maildir

log = logging.getLogger("mailplan.pop3")

IDLE_TIMEOUT = 600.0  # RFC 1939: an autologout timer of at least 10 minutes
LINE_LIMIT = 4096  # command lines (RFC 2449 allows 255 octets; SASL responses need more)
MAX_FAILURES = 3  # failed logins before the session is closed
MAX_ERRORS = 20  # unknown or malformed commands before the session is closed
# Messages smaller than this are read on the event loop: reading a few kilobytes costs
# less than the hop to a thread and back (about 0.5 ms: bench/pop3_read.py).
INLINE_READ = 1024 * 1024

GREETING = "+OK mailplan POP3 server ready"
CAPA_OK = "+OK Capability list follows"
BAD_COMMAND = "-ERR Unknown command"
BAD_SYNTAX = "-ERR Syntax error"
BAD_STATE = "-ERR Command not valid in this state"
NO_USER = "-ERR [AUTH] Give USER first"
AUTH_FAILED = "-ERR [AUTH] Authentication failed"
PLAINTEXT_REFUSED = "-ERR [AUTH] Plaintext login is only allowed over TLS: use STLS first"
MECHANISM_UNKNOWN = "-ERR [AUTH] Unsupported mechanism (only PLAIN)"
AUTH_CANCELLED = "-ERR [AUTH] Authentication cancelled"
IN_USE = "-ERR [IN-USE] The mailbox is in use by another session; try again later"
MAILBOX_FAILED = "-ERR [SYS/TEMP] The mailbox cannot be opened; try again later"
TOO_MANY_FAILURES = "-ERR [AUTH] Too many failed logins; closing"
TOO_MANY_ERRORS = "-ERR Too many errors; closing"
NO_MESSAGE = "-ERR No such message"
MESSAGE_GONE = "-ERR [SYS/TEMP] The message was removed by another reader"
STLS_OK = "+OK Begin TLS negotiation"
STLS_REFUSED = "-ERR STLS not available here"
LINE_TOO_LONG = "-ERR Line too long; closing"
TIMED_OUT = "-ERR Idle for too long; closing"
BYE = "+OK mailplan POP3 server signing off"
UPDATE_FAILED = "-ERR [SYS/TEMP] Some messages could not be changed; they are still there"


class Request(NamedTuple):  # a tuple: made for every command, cheaper than a dataclass
    keyword: str  # upper case; "" for an empty line
    arguments: tuple[str, ...]
    rest: str  # everything after the keyword and one space (PASS allows spaces)


def parse(line: bytes) -> Request:
    """A command line: its keyword, its arguments and the raw rest of the line."""
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    keyword, _, rest = text.partition(" ")
    if not keyword.isascii():  # `str.upper` folds some letters to ASCII (long s, dotless i)
        keyword = "?"
    return Request(keyword.upper(), tuple(filter(None, rest.split(" "))), rest)


def plaintext_allowed(listener: Listener, tls: bool) -> bool:
    """Whether USER/PASS and AUTH PLAIN may be used now (over TLS, or where the site allows)."""
    return tls or listener.plaintext_auth


def capabilities(listener: Listener, tls: bool, logged_in: bool) -> list[str]:
    """What CAPA lists (RFC 2449), for this listener and this moment of the session."""
    found = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    if not logged_in:
        if plaintext_allowed(listener, tls):
            found += ["USER", "SASL PLAIN"]
        if listener.tls == "starttls" and not tls:
            found.append("STLS")
    return [*found, "IMPLEMENTATION mailplan"]


_DOT_LINE = re.compile(rb"\r\n\.")


def stuffed(content: bytes) -> bytes:
    """A message in network form, dot-stuffed and terminated for a multi-line reply."""
    return b"".join(stuffed_pieces(content))


def stuffed_pieces(content: bytes) -> tuple[bytes, ...]:
    """`stuffed` in pieces to send as they are (no copy of a message without dots)."""
    # Most messages have no such line: the regular expression finds that in a third of the
    # time `bytes.find` or `bytes.replace` take (3 µs for 8 KiB, bench/pop3_read.py).
    body = content if _DOT_LINE.search(content) is None else _DOT_LINE.sub(b"\r\n..", content)
    if content.startswith(b"."):
        return b".", body, b".\r\n"
    return body, b".\r\n"


def top(content: bytes, lines: int) -> bytes:
    """The header, the blank line and the first `lines` lines of the body (network form)."""
    if content.startswith(b"\r\n"):  # no header at all
        head, separator, body = b"", b"", content[2:]
    else:
        head, separator, body = content.partition(b"\r\n\r\n")
        if not separator:
            return content
    kept = body.split(b"\r\n")[:-1][:lines]
    blank = b"\r\n\r\n" if separator else b"\r\n"
    return head + blank + b"".join(line + b"\r\n" for line in kept)


def sasl_plain(response: str) -> tuple[str, str] | None:
    """(login, password) from a SASL PLAIN response (RFC 4616); None if malformed."""
    try:
        decoded = base64.b64decode(response, validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text
        return None
    parts = decoded.split("\0")
    if len(parts) != 3 or not parts[1]:
        return None
    authorize, login, password = parts
    if authorize and authorize != login:
        return None  # acting as someone else is not offered
    return login, password


@dataclass
class _State:
    user: str | None = None
    account: str | None = None
    maildrop: Maildrop | None = None
    deleted: set[Message] = field(default_factory=set)
    retrieved: set[Message] = field(default_factory=set)
    failures: int = 0
    errors: int = 0


class Pop3:
    """One POP3 connection, from greeting to QUIT (or to the client going away)."""

    def __init__(
        self,
        policy: Policy,
        listener: Listener,
        context: ssl.SSLContext | None,
        mail_directory: Path,
        throttle: Throttle,
        connection: Connection,
    ) -> None:
        self.policy = policy
        self.listener = listener
        self.context = context
        self.mail_directory = mail_directory
        self.throttle = throttle
        self.connection = connection
        connection.at_once = self.at_once
        peer = connection.extra("peername")
        self.ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.state = _State()
        self.rest = ""
        self.stage = "banner"  # banner, command, tls-handshake, auth, transaction

    @property
    def tls(self) -> bool:
        return self.connection.extra("ssl_object") is not None

    async def serve(self) -> None:
        try:
            self._send(GREETING)
            while await self._command():
                pass
        except Exception as exc:
            if not hangups.client_went_away(exc):  # resets, TLS failures
                log.exception("%s: POP3 session failed", self.ip)
            else:
                hangups.went_away(log, self.ip, self.stage, exc)
        finally:
            if self.state.maildrop is not None:
                self.state.maildrop.close()  # nothing changes without QUIT
            self.connection.close()

    def _send(self, *lines: str) -> None:
        """Say `lines` (they go out when the session next waits, or drains)."""
        self.connection.write("".join(line + "\r\n" for line in lines).encode("utf-8"))

    async def _line(self) -> bytes | None:
        """The next line, or None when the session must end (after saying why)."""
        connection = self.connection
        try:
            line = await connection.readline()
        except TimeoutError:
            log.info("%s idle for too long during %s: closed", self.ip or "a client", self.stage)
            self._send(TIMED_OUT)
            return None
        except LineTooLong:
            self._send(LINE_TOO_LONG)
            return None
        if line.endswith(b"\n"):
            return line
        if not connection.aborted:  # not the server stopping
            hangups.went_away(log, self.ip, self.stage, connection.lost)
        return None

    async def _command(self) -> bool:
        """Read and answer one command; False when the session is over."""
        line = await self._line()
        if line is None:
            return False
        going_on = self._dispatch(parse(line))
        if not isinstance(going_on, bool):
            going_on = await going_on
        self._settle()
        if not going_on:  # what is left to send goes with the close (and a reset said so)
            return False
        self.connection.active()
        await self.connection.drain()
        return True

    def _dispatch(self, command: Request) -> bool | Awaitable[bool]:
        keyword = command.keyword
        self.rest = command.rest
        self._settle()
        if self.state.maildrop is None:
            handler = _AUTHORIZATION.get(keyword)
        else:
            handler = _TRANSACTION.get(keyword)
        if handler is None:
            known = keyword in _AUTHORIZATION or keyword in _TRANSACTION
            return self._error(BAD_STATE if known else BAD_COMMAND)
        return handler(self, command.arguments)

    def at_once(self, line: bytes) -> bool:
        """Answer `line` now, inside the connection's `data_received`, if it is a command
        that needs no waiting (a logged-in session's listings, small RETR and TOP, DELE,
        NOOP, RSET, CAPA): no wake-up of the session's task for it. False: the line is
        for the task (anything else, or a command that could end the session)."""
        state = self.state
        if state.maildrop is None or state.errors >= MAX_ERRORS:
            return False
        command = parse(line)
        if command.keyword not in _AT_ONCE:
            return False
        if command.keyword in ("RETR", "TOP") and command.arguments:
            message = self._message(command.arguments[0])
            if message is not None and message.size >= INLINE_READ:
                return False  # read in a thread, by the task
        going_on = self._dispatch(command)
        assert going_on is True  # none of these ends a session with errors < MAX_ERRORS
        return True

    def _settle(self) -> None:
        """The stage between commands: before login, or logged in."""
        self.stage = "command" if self.state.maildrop is None else "transaction"

    def _error(self, reply: str) -> bool:
        self.state.errors += 1
        if self.state.errors > MAX_ERRORS:
            self._send(TOO_MANY_ERRORS)
            return False
        self._send(reply)
        return True

    # -- AUTHORIZATION ----------------------------------------------------------------

    def capa(self, arguments: tuple[str, ...]) -> bool:
        found = capabilities(self.listener, self.tls, self.state.maildrop is not None)
        self._send(CAPA_OK, *found, ".")
        return True

    async def stls(self, arguments: tuple[str, ...]) -> bool:
        if self.listener.tls != "starttls" or self.tls or self.context is None:
            return self._error(STLS_REFUSED)
        # Whatever the client sent after STLS, before the handshake, is discarded: it
        # must not be read as if it had come inside TLS (RFC 2595 section 4). Reading
        # stops first, so nothing more comes in the clear while the answer goes out;
        # start_tls reads again, through TLS.
        self.connection.pause()
        self.connection.discard()
        self._send(STLS_OK)
        self.stage = "tls-handshake"
        await self.connection.start_tls(self.context)
        self.state.user = None
        return True

    def user(self, arguments: tuple[str, ...]) -> bool:
        if not plaintext_allowed(self.listener, self.tls):
            return self._error(PLAINTEXT_REFUSED)
        if len(arguments) != 1:
            return self._error(BAD_SYNTAX)
        self.state.user = arguments[0]
        self._send("+OK Send PASS")
        return True

    async def pass_(self, arguments: tuple[str, ...]) -> bool:
        if not plaintext_allowed(self.listener, self.tls):
            return self._error(PLAINTEXT_REFUSED)
        if self.state.user is None:
            return self._error(NO_USER)
        name, self.state.user = self.state.user, None
        return await self._login(name, self.rest)

    async def auth(self, arguments: tuple[str, ...]) -> bool:
        if not arguments:
            self._send("+OK Mechanisms follow", "PLAIN", ".")
            return True
        if arguments[0].upper() != "PLAIN":
            return self._error(MECHANISM_UNKNOWN)
        if not plaintext_allowed(self.listener, self.tls):
            return self._error(PLAINTEXT_REFUSED)
        if len(arguments) > 2:
            return self._error(BAD_SYNTAX)
        response = arguments[1] if len(arguments) == 2 else None
        self.stage = "auth"
        if response is None:
            self._send("+ ")
            line = await self._line()
            if line is None:
                return False
            response = line.decode("ascii", "replace").strip()
            if response == "*":
                self._send(AUTH_CANCELLED)
                return True
        credentials = sasl_plain("" if response == "=" else response)
        if credentials is None:
            self.throttle.failed(self.ip)
            return self._refuse("(malformed PLAIN response)", 0.0)
        return await self._login(*credentials)

    async def _login(self, name: str, password: str) -> bool:
        self.stage = "auth"
        self.connection.flush()  # what pipelined commands before were answered
        async with self.throttle.turn(self.ip) as waited:
            account = await checking(self.policy.login, name, password)
            if account is None:
                self.throttle.failed(self.ip)
        if account is None:
            return self._refuse(repr(name), waited)
        folder = maildir.mailbox(self.mail_directory, account)
        try:
            drop = await asyncio.to_thread(Maildrop.open, folder)
        except Locked:
            log.info("%s logged in as %s (%r): mailbox in use", self.ip, account, name)
            self._send(IN_USE)
            return True
        except OSError as exc:
            log.error("%s: cannot open the mailbox of %s: %s", self.ip, account, exc)
            self._send(MAILBOX_FAILED)
            return True
        self.state.account, self.state.maildrop = account, drop
        log.info("%s logged in as %s (%r), %d messages", self.ip, account, name, len(drop.messages))
        octets = sum(message.size for message in drop.messages)
        self._send(f"+OK Logged in: {len(drop.messages)} messages ({octets} octets)")
        return True

    def _refuse(self, what: str, waited: float) -> bool:
        self.state.failures += 1
        log.info("%s failed to log in as %s (after waiting %.0f s)", self.ip, what, waited)
        if self.state.failures >= MAX_FAILURES:
            self._send(TOO_MANY_FAILURES)
            return False
        self._send(AUTH_FAILED)
        return True

    async def quit(self, arguments: tuple[str, ...]) -> bool:
        drop = self.state.maildrop
        if drop is None:
            self._send(BYE)
            return False
        deleted, retrieved = set(self.state.deleted), set(self.state.retrieved)
        try:
            missing = await asyncio.to_thread(drop.commit, deleted, retrieved)
        except OSError as exc:
            log.error("%s: updating the mailbox of %s failed: %s", self.ip, self.state.account, exc)
            self._send(UPDATE_FAILED)
            return False
        log.info(
            "%s quit %s: %d deleted, %d retrieved",
            self.ip,
            self.state.account,
            len(deleted) - missing,
            len(retrieved),
        )
        self._send(f"{BYE} ({len(deleted)} messages deleted)")
        return False

    # -- TRANSACTION ------------------------------------------------------------------

    def _message(self, argument: str) -> Message | None:
        drop = self.state.maildrop
        if drop is None or not (argument.isascii() and argument.isdigit()):
            return None
        number = int(argument)
        if not 1 <= number <= len(drop.messages):
            return None
        message = drop.messages[number - 1]
        return None if message in self.state.deleted else message

    def _listed(self) -> list[tuple[int, Message]]:
        drop = self.state.maildrop
        assert drop is not None
        return [
            (number, message)
            for number, message in enumerate(drop.messages, start=1)
            if message not in self.state.deleted
        ]

    def stat(self, arguments: tuple[str, ...]) -> bool:
        listed = self._listed()
        self._send(f"+OK {len(listed)} {sum(m.size for _, m in listed)}")
        return True

    def list_(self, arguments: tuple[str, ...]) -> bool:
        return self._scan_listing(arguments, lambda m: str(m.size))

    def uidl(self, arguments: tuple[str, ...]) -> bool:
        return self._scan_listing(arguments, lambda m: m.uid)

    def _scan_listing(self, arguments: tuple[str, ...], value: Callable[[Message], str]) -> bool:
        if len(arguments) > 1:
            return self._error(BAD_SYNTAX)
        if arguments:
            message = self._message(arguments[0])
            if message is None:
                return self._error(NO_MESSAGE)
            self._send(f"+OK {int(arguments[0])} {value(message)}")  # `LIST 01` is message 1
            return True
        lines = [f"{number} {value(message)}" for number, message in self._listed()]
        self._send("+OK", *lines, ".")
        return True

    def retr(self, arguments: tuple[str, ...]) -> bool | Awaitable[bool]:
        message = self._message(arguments[0]) if len(arguments) == 1 else None
        if message is None:
            return self._error(NO_MESSAGE if arguments else BAD_SYNTAX)
        if message.size >= INLINE_READ:
            return self._retr_later(message)
        return self._retrieved(message, self._read(message))

    async def _retr_later(self, message: Message) -> bool:
        return self._retrieved(message, await self._read_later(message))

    def _retrieved(self, message: Message, content: bytes | None) -> bool:
        if content is not None:
            self.state.retrieved.add(message)
            self._multiline(f"+OK {len(content)} octets", content)
        return True

    def top(self, arguments: tuple[str, ...]) -> bool | Awaitable[bool]:
        if len(arguments) != 2 or not (arguments[1].isascii() and arguments[1].isdigit()):
            return self._error(BAD_SYNTAX)
        message = self._message(arguments[0])
        if message is None:
            return self._error(NO_MESSAGE)
        lines = int(arguments[1])
        if message.size >= INLINE_READ:
            return self._top_later(message, lines)
        return self._topped(self._read(message), lines)

    async def _top_later(self, message: Message, lines: int) -> bool:
        return self._topped(await self._read_later(message), lines)

    def _topped(self, content: bytes | None, lines: int) -> bool:
        if content is not None:
            self._multiline("+OK", top(content, lines))
        return True

    def _read(self, message: Message) -> bytes | None:
        """The message, read here: a few kilobytes cost less than a hop to a thread."""
        drop = self.state.maildrop
        assert drop is not None
        try:
            return drop.read(message)
        except FileNotFoundError:
            self._send(MESSAGE_GONE)
            return None

    async def _read_later(self, message: Message) -> bytes | None:
        """The message, read in a thread (a large one)."""
        drop = self.state.maildrop
        assert drop is not None
        try:
            return await asyncio.to_thread(drop.read, message)
        except FileNotFoundError:
            self._send(MESSAGE_GONE)
            return None

    def _multiline(self, first: str, content: bytes) -> None:
        self.connection.write(first.encode() + b"\r\n", *stuffed_pieces(content))

    def dele(self, arguments: tuple[str, ...]) -> bool:
        message = self._message(arguments[0]) if len(arguments) == 1 else None
        if message is None:
            return self._error(NO_MESSAGE if arguments else BAD_SYNTAX)
        self.state.deleted.add(message)
        self._send(f"+OK Message {int(arguments[0])} deleted")
        return True

    def noop(self, arguments: tuple[str, ...]) -> bool:
        self._send("+OK")
        return True

    def rset(self, arguments: tuple[str, ...]) -> bool:
        self.state.deleted.clear()
        self._send(f"+OK {len(self._listed())} messages")
        return True


_Handler = Callable[[Pop3, tuple[str, ...]], bool | Awaitable[bool]]
_AUTHORIZATION: dict[str, _Handler] = {
    "CAPA": Pop3.capa,
    "STLS": Pop3.stls,
    "USER": Pop3.user,
    "PASS": Pop3.pass_,
    "AUTH": Pop3.auth,
    "QUIT": Pop3.quit,
}
_TRANSACTION: dict[str, _Handler] = {
    "CAPA": Pop3.capa,
    "STAT": Pop3.stat,
    "LIST": Pop3.list_,
    "UIDL": Pop3.uidl,
    "RETR": Pop3.retr,
    "TOP": Pop3.top,
    "DELE": Pop3.dele,
    "NOOP": Pop3.noop,
    "RSET": Pop3.rset,
    "QUIT": Pop3.quit,
}
# What `Pop3.at_once` answers from the connection (never a command that waits or ends)
_AT_ONCE = frozenset({"CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET"})
