"""Where a message's header ends (runtime/decide/message.py)."""

from __future__ import annotations

import random

import pytest

from mailplan.runtime.decide.message import header_block, split


def reference(message: bytes) -> tuple[bytes, bytes, bytes]:
    """The rule, spelled out: the first empty line, CRLF CRLF or LF LF, ends the header."""
    ends = [(message.find(s), s) for s in (b"\r\n\r\n", b"\n\n") if s in message]
    if not ends:
        return message, b"", b""
    at, separator = min(ends)
    half = len(separator) // 2
    return message[: at + half], separator[half:], message[at + len(separator) :]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", (b"A: 1\r\nB: 2\r\n", b"\r\n", b"body\r\n")),
        (b"A: 1\nB: 2\n\nbody\n", (b"A: 1\nB: 2\n", b"\n", b"body\n")),
        (b"A: 1\n\nbody\r\n\r\nmore", (b"A: 1\n", b"\n", b"body\r\n\r\nmore")),
        (b"A: 1\r\n\r\nbody\n\nmore", (b"A: 1\r\n", b"\r\n", b"body\n\nmore")),
        (b"A: 1\r\nB: 2\r\n", (b"A: 1\r\nB: 2\r\n", b"", b"")),
        (b"", (b"", b"", b"")),
        (b"\r\n\r\nbody", (b"\r\n", b"\r\n", b"body")),
        (b"\n\nbody", (b"\n", b"\n", b"body")),
        (b"A: 1\n\n\r\n\r\n", (b"A: 1\n", b"\n", b"\r\n\r\n")),
    ],
)
def test_split(message: bytes, expected: tuple[bytes, bytes, bytes]) -> None:
    assert split(message) == expected
    assert header_block(message) == expected[0]


def test_split_agrees_with_the_rule_on_random_messages() -> None:
    pieces = [b"\r", b"\n", b"\r\n", b"x", b"H: v", b"\n\n", b"\r\n\r\n", b"."]
    chooser = random.Random(1)
    for _ in range(5000):
        message = b"".join(chooser.choice(pieces) for _ in range(chooser.randrange(12)))
        assert split(message) == reference(message), message
        assert header_block(message) == reference(message)[0], message
