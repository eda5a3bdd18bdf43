"""Where a message's header ends: one place that knows, for every module that looks.

The header block ends at the first empty line, written `CRLF CRLF` or, in mail that
was stored with bare line feeds, `LF LF`: whichever comes first.
"""

from __future__ import annotations


def split(message: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block with its last line end, the empty line, body); a message without an
    empty line is all header."""
    ends = [
        (at, separator)
        for separator in (b"\r\n\r\n", b"\n\n")
        if (at := message.find(separator)) >= 0
    ]
    if not ends:
        return message, b"", b""
    at, separator = min(ends)
    half = len(separator) // 2
    return message[: at + half], separator[half:], message[at + len(separator) :]


def header_block(message: bytes) -> bytes:
    """The header of a message, up to (not including) the empty line."""
    return split(message)[0]
