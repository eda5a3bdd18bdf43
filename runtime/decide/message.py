"""Where a message's header ends: one place that knows, for every module that looks.

The header block ends at the first empty line, written `CRLF CRLF` or, in mail that
was stored with bare line feeds, `LF LF`: whichever comes first.
"""

from __future__ import annotations


def split(message: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block with its last line end, the empty line, body); a message without an
    empty line is all header."""
    at, separator = _end(message)
    if at < 0:
        return message, b"", b""
    half = len(separator) // 2
    return message[: at + half], separator[half:], message[at + len(separator) :]


def header_block(message: bytes) -> bytes:
    """The header of a message, up to (not including) the empty line."""
    at, separator = _end(message)
    return message if at < 0 else message[: at + len(separator) // 2]


def _end(message: bytes) -> tuple[int, bytes]:
    """Where the empty line that ends the header starts, and how it is written; -1 if
    there is none. Only the header is searched for `LF LF` (a body can be long)."""
    crlf = message.find(b"\r\n\r\n")
    lf = message.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(message))
    if lf >= 0:
        return lf, b"\n\n"
    return crlf, b"\r\n\r\n"
