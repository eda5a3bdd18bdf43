"""Syntax trees of the site's line languages, built by lark transformers that check nothing.

Every node keeps its line and column, so that later passes can point at the exact
place where a problem was written.
"""

from __future__ import annotations

import msgspec
from lark import Token, Transformer, v_args


class Text(msgspec.Struct, frozen=True, gc=False):
    """A piece of source text and the column where it starts."""

    value: str
    column: int


class Record(msgspec.Struct, frozen=True, gc=False):
    """One routing-table record: `[prefixes] left = right [; allow-open-relay: why]`."""

    file: str
    line: int
    column: int
    prefixes: tuple[Text, ...]
    left_form: str
    left: Text
    right_form: str
    right: Text
    message: Text | None
    acknowledgement: Text | None


class Entry(msgspec.Struct, frozen=True, gc=False):
    """One address-list line: an address, a range, a network or an include, maybe excluded."""

    file: str
    line: int
    column: int
    exclude: bool
    form: str
    values: tuple[Text, ...]


def _text(token: Token) -> Text:
    return Text(str(token), token.column or 1)


class RecordBuilder(Transformer[Token, Record]):
    """Builds a `Record` from the parse tree of one line of `router.lark`."""

    def __init__(self, file: str, line: int) -> None:
        super().__init__()
        self.file = file
        self.line = line

    def prefix(self, children: list[Token]) -> Text:
        return _text(children[0])

    def angle(self, children: list[Token]) -> tuple[str, Text, Text | None]:
        return "angle", _text(children[0]), None

    def pipe(self, children: list[Token]) -> tuple[str, Text, Text | None]:
        return "pipe", _text(children[0]), None

    def word(self, children: list[Token]) -> tuple[str, Text, Text | None]:
        message = _text(children[1]) if len(children) > 1 else None
        return "word", _text(children[0]), message

    def record(self, children: list[object]) -> Record:
        prefixes = tuple(c for c in children if isinstance(c, Text))
        sides = [c for c in children if isinstance(c, tuple)]
        acks = [c for c in children if isinstance(c, Token) and c.type == "ACK"]
        (left_form, left, _), (right_form, right, message) = sides
        start = prefixes[0].column if prefixes else left.column
        return Record(
            self.file,
            self.line,
            start,
            prefixes,
            left_form,
            left,
            right_form,
            right,
            message,
            _text(acks[0]) if acks else None,
        )


@v_args(inline=True)
class EntryBuilder(Transformer[Token, Entry]):
    """Builds an `Entry` from the parse tree of one line of `addresslist.lark`."""

    def __init__(self, file: str, line: int, column: int, column_offset: int) -> None:
        super().__init__()
        self.file = file
        self.line = line
        self.column = column
        self.offset = column_offset

    def _shift(self, token: Token) -> Text:
        return Text(str(token), (token.column or 1) + self.offset)

    def single(self, address: Token) -> tuple[str, tuple[Text, ...]]:
        return "single", (self._shift(address),)

    def range(self, first: Token, last: Token) -> tuple[str, tuple[Text, ...]]:
        return "range", (self._shift(first), self._shift(last))

    def network(self, address: Token, bits: Token) -> tuple[str, tuple[Text, ...]]:
        return "network", (self._shift(address), self._shift(bits))

    def include(self, name: Token) -> tuple[str, tuple[Text, ...]]:
        return "include", (self._shift(name),)

    def entry(self, *children: object) -> Entry:
        exclude = any(isinstance(c, Token) and c.type == "EXCLUDE" for c in children)
        form, values = next(c for c in children if isinstance(c, tuple))
        return Entry(self.file, self.line, self.column, exclude, form, values)
