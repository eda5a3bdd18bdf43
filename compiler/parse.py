"""Parse pass: the routing table and the address lists, read line by line with lark.

A line that does not parse becomes a diagnostic with its line and column, and
reading carries on at the next line, so one run reports every broken line.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from mailplan.compiler import apart, linescan
from mailplan.compiler.addresslists import addresslists
from mailplan.compiler.diagnostics import Diagnostic, error, split_lines
from mailplan.compiler.syntax import Entry, EntryBuilder, Record, RecordBuilder
from mailplan.compiler.unit import ListSource, Unit
from mailplan.compiler.yamlpos import Document
from mailplan.compiler.yamlpos import Path as DataPath
from mailplan.grammar import parser
from mailplan.plan.model import AddressList, Source

_WORDS = {
    "EQUAL": "'='",
    "WORD": "an address or a domain",
    "ANGLE": "an <address>",
    "PIPE": 'a "program"@pipe',
    "PREFIX": "a prefix (Relay:, Mail:, Access:, Signal:)",
    "STRING": 'a "message"',
    "ACK": "a comment",
    "ADDRESS": "an IP address",
    "BITS": "a number of bits",
    "NAME": "a list name",
    "MINUS": "'-'",
    "SLASH": "'/'",
    "HASH": "'#'",
    "EXCLUDE": "'!'",
    "$END": "the end of the line",
}


def parse(unit: Unit) -> Unit:
    """Parse the routing table and every address list the site defines.

    The address lists of a big site are read, and compiled, in a second process while
    this one parses the routing table (`apart`): the unit then holds, in `lists_later`,
    the call that gives them with their problems, which the resolve pass makes."""
    document = unit.document
    if document is None or not isinstance(document.data, dict):
        return unit
    written = list(_written(unit, document))
    lists_later = None
    if not unit.shapeless:  # else resolving, which takes the lists, does not run
        size = sum(_lines(w.text) for w in written if isinstance(w, _Written))
        lists_later = apart.begin(functools.partial(_lists, written), _LISTS, size)
    problems: list[Diagnostic] = []
    found: tuple[Record, ...] = ()
    routing = document.data.get("routing")
    if isinstance(routing, str) and routing in unit.texts:
        found, problems = _records(unit.texts[routing], routing)
    lists: tuple[ListSource, ...] = ()
    if lists_later is None:
        lists, trouble = _list_sources(written)
        problems += trouble
    return replace(unit, records=found, lists=lists, lists_later=lists_later).report(*problems)


@dataclass(frozen=True)
class _Written:
    """An address list as it is written: its text, from `line`, `column` of `file`."""

    name: str
    defined: Source
    text: str
    file: str
    line: int
    column: int


def _written(unit: Unit, document: Document) -> Iterator[_Written | Diagnostic]:
    """Each address list the site defines, in order, or why it cannot be read."""
    for name, path in _list_paths(document.data):
        value = document.data_at(path)
        if isinstance(value, str) and document.at(path).style == ">":
            where = document.at(path)
            message = "write an address list as a literal block (|), not a folded one (>)"
            yield error(document.file, where.line, where.column, "MP105", message)
            continue
        if isinstance(value, str):
            file = document.file
            line, column = document.text_origin(path)
            text = value
        elif isinstance(value, dict) and value.get("file") in unit.texts:
            file, line, column = value["file"], 1, 1
            text = unit.texts[file]
        else:
            continue
        defined = document.key_at(path)
        yield _Written(
            name, Source(document.file, defined.line, defined.column), text, file, line, column
        )


def _lines(text: str) -> int:
    """About how many lines `text` has, ended by LF, CRLF or CR (counted in C)."""
    return max(text.count("\n"), text.count("\r"))


def _list_sources(
    written: list[_Written | Diagnostic],
) -> tuple[tuple[ListSource, ...], list[Diagnostic]]:
    """The entries of each address list, and the problems of the lists, in order."""
    lists = []
    problems: list[Diagnostic] = []
    for item in written:
        if isinstance(item, Diagnostic):
            problems.append(item)
            continue
        entries, trouble = _entries(item.text, item.file, item.line, item.column)
        problems += trouble
        where = item.defined
        lists.append(ListSource(item.name, where.file, where.line, where.column, entries))
    return tuple(lists), problems


_LISTS = tuple[tuple[AddressList, ...], list[Diagnostic]]


def _lists(written: list[_Written | Diagnostic]) -> _LISTS:
    """The address lists compiled, with every problem in them: what parse and resolve
    find in the lists, all at once (the work done in a second process)."""
    sources, problems = _list_sources(written)
    lists, trouble = addresslists(sources)
    return lists, problems + trouble


def _list_paths(data: dict[str, Any]) -> Iterator[tuple[str, DataPath]]:
    server = data.get("server")
    for key in ("client_ips", "blacklisted_ips"):
        if isinstance(server, dict) and key in server:
            yield key, ("server", key)
    lists = data.get("address_lists")
    for name in lists if isinstance(lists, dict) else ():
        yield name, ("address_lists", name)


def _records(text: str, file: str) -> tuple[tuple[Record, ...], list[Diagnostic]]:
    """The records of a routing table, and a diagnostic for each line that does not parse."""
    found: list[Record] = []
    problems: list[Diagnostic] = []
    lark = parser("router", "record")
    for number, line in enumerate(split_lines(text), start=1):
        if _blank(line):
            continue
        quick = linescan.record(line, file, number)
        if quick is not None:
            found.append(quick)
            continue
        try:
            tree = lark.parse(line)
        except UnexpectedInput as exc:
            column, message = _explain(exc, line)
            problems.append(error(file, number, column, "MP104", message))
            continue
        found.append(RecordBuilder(file, number).transform(tree))
    return tuple(found), problems


def _entries(
    text: str, file: str, first_line: int, column: int
) -> tuple[tuple[Entry, ...], list[Diagnostic]]:
    """The entries of an address list whose text starts at `first_line`, `column` of `file`."""
    found: list[Entry] = []
    problems: list[Diagnostic] = []
    lark = parser("addresslist", "entry")
    for number, line in enumerate(split_lines(text), start=1):
        if _blank(line):
            continue
        where = first_line + number - 1
        quick = linescan.entry(line, file, where, column)
        if quick is not None:
            found.append(quick)
            continue
        start = len(line) - len(line.lstrip()) + column
        try:
            tree = lark.parse(line)
        except UnexpectedInput as exc:
            at, message = _explain(exc, line)
            problems.append(error(file, where, at + column - 1, "MP105", message))
            continue
        found.append(EntryBuilder(file, where, start, column - 1).transform(tree))
    return tuple(found), problems


def _blank(line: str) -> bool:
    """Whether a line holds nothing but white space and a comment."""
    content = line.strip()
    return not content or content[0] == ";"


def _explain(exc: UnexpectedInput, line: str) -> tuple[int, str]:
    if isinstance(exc, UnexpectedCharacters):
        character = line[exc.column - 1]
        if character == "<" and ">" not in line[exc.column :]:
            return exc.column, "'<' is not closed: an address in angle brackets ends with '>'"
        return exc.column, f"unexpected character {character!r}"
    if isinstance(exc, UnexpectedEOF):
        return len(line.rstrip()) + 1, f"line ends too early: expected {_expected(exc.expected)}"
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        expected = set(exc.expected)
        if token.type == "$END":
            return len(line.rstrip()) + 1, f"line ends too early: expected {_expected(expected)}"
        if "ACK" in expected:  # the record is complete: it could end here
            expected.add("$END")
        return token.column or 1, f"unexpected {str(token)!r}: expected {_expected(expected)}"
    return 1, str(exc)  # pragma: no cover - lark raises only the three above


def _expected(names: Iterable[object]) -> str:
    words = sorted({_WORDS.get(str(name), str(name)) for name in names})
    return " or ".join(words)
