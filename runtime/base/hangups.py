"""A client that goes away, and the one line the server logs about it.

A reset, a broken pipe, a TLS handshake the client gives up or cannot agree on, a
connection closed in the middle of a session: ordinary Internet traffic, logged at
INFO with the client's address and the stage the session was in, never as a
traceback. Anything else a session raises is a fault of ours and stays an error.

Stages: `banner` (before HELO/EHLO, or before the first POP3 command),
`tls-handshake`, `command`, `auth`, `data` (SMTP), `transaction` (POP3, logged in),
and `connection` where the event loop reports an error that no session saw.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl

# What a peer that vanished looks like from the socket (no reset ever arrives).
_UNREACHABLE = frozenset({errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH})


def client_went_away(error: BaseException | None) -> bool:
    """Whether `error` is the client's doing: it hung up, or failed the TLS handshake."""
    if isinstance(error, ConnectionError | ssl.SSLError | asyncio.IncompleteReadError):
        return True
    return isinstance(error, OSError) and error.errno in _UNREACHABLE


def reason(error: BaseException | None) -> str:
    """How the client went away, in a few words (None: it closed the connection)."""
    if error is None:
        return "closed the connection"
    text = str(error)
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


def went_away(log: logging.Logger, client: str, stage: str, error: BaseException | None) -> None:
    """The one line for a client that went away during `stage`."""
    log.info("%s went away during %s: %s", client or "a client", stage, reason(error))
