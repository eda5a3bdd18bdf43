"""compiler/linescan.py: a line the regular expression takes is built exactly as lark builds
it, and a line lark refuses is never taken (so its diagnostic is still lark's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lark.exceptions import UnexpectedInput

from mailplan.compiler import linescan
from mailplan.compiler.diagnostics import split_lines
from mailplan.compiler.syntax import Entry, EntryBuilder, Record, RecordBuilder
from mailplan.grammar import parser
from tests.conftest import ROOT


def lark_record(line: str) -> Record | None:
    try:
        tree = parser("router", "record").parse(line)
    except UnexpectedInput:
        return None
    return RecordBuilder("r.cgr", 7).transform(tree)


def lark_entry(line: str, column: int) -> Entry | None:
    try:
        tree = parser("addresslist", "entry").parse(line)
    except UnexpectedInput:
        return None
    start = len(line) - len(line.lstrip()) + column
    return EntryBuilder("l.txt", 3, start, column - 1).transform(tree)


def same_record(line: str) -> Record | None:
    quick = linescan.record(line, "r.cgr", 7)
    if quick is not None:
        assert quick == lark_record(line), line
    return quick


def same_entry(line: str, column: int = 1) -> Entry | None:
    quick = linescan.entry(line, "l.txt", 3, column)
    if quick is not None:
        assert quick == lark_entry(line, column), line
    return quick


# Lines the expression takes: the shapes a routing table is made of.
RECORDS = [
    "<user@ex.test> = alice@example.com",
    "  <*@pat.test>=*@example.com   ; a comment",
    "dom.test = example.com",
    "*.sub.corp.example = example.com",
    "Relay: <*@relay.test> = *@[192.0.2.7] ; allow-open-relay: our backup MX",
    "Mail:Relay :x@y = z",
    "mail: relay: signal:\t<a@b> = <c@d>",
    "ACCESS: bob = bob@example.com",
    'fax@example.com = "fax-send --to *"@pipe',
    'fax@example.com = "x"@PIPE;note',
    'old@example.com = error "gone, write to new@example.com"',
    'old@example.com = error"no space" ; ALLOW-OPEN-RELAY : why',
    "mailbox@x = y",  # a word that starts like a prefix
    "relay:mail:x = y",  # two prefixes then a word
    "a\t=\tb\t",
    "a = b;",
]

# Lines lark refuses: never taken.
REFUSED = [
    "mail: = x",
    "relay:relay: = x",  # both are prefixes: no left side
    "<a = b",
    "a = b c",
    "a b = c",
    "a = ",
    "= b",
    'a = "x"@pipe "m"',
    'a = b "m" "n"',
    '"p"@pipe = b',
    "a ; c = d",
    "a\f= b",
    "\u017fignal: a = b",
    "a = <b> <c>",
    "a = b\u00a0",
    'a = "x"@pipes',
]

ENTRIES = [
    "192.0.2.7",
    "  192.0.2.10-192.0.2.99",
    "198.51.100.0/24 ; office",
    "!192.0.2.66",
    "! 2001:db8::/32",
    "#office",
    "!# other-list",
    "10.0.0.1 - 10.0.0.9\t",
    "deadbeef",
]

REFUSED_ENTRIES = [
    "192.0.2.0/24x",
    "192.0.2.0/",
    "!!1.2.3.4",
    "1.2.3.4 5.6.7.8",
    "#",
    "1.2.3.4/2.3",
    "- 1.2.3.4",
    "x.y",
    "9" * 20_000 + "::1::1" + "9" * 20_000 + "\u00da",  # found by make fuzz: was quadratic
]


@pytest.mark.parametrize("line", RECORDS)
def test_takes_what_lark_builds(line: str) -> None:
    assert same_record(line) is not None


@pytest.mark.parametrize("line", REFUSED)
def test_leaves_lark_its_refusals(line: str) -> None:
    assert lark_record(line) is None
    assert linescan.record(line, "r.cgr", 7) is None


@pytest.mark.parametrize("line", ENTRIES)
@pytest.mark.parametrize("column", [1, 5])
def test_takes_the_entries_lark_builds(line: str, column: int) -> None:
    assert same_entry(line, column) is not None


@pytest.mark.parametrize("line", REFUSED_ENTRIES)
def test_leaves_lark_its_entry_refusals(line: str) -> None:
    assert lark_entry(line, 1) is None
    assert linescan.entry(line, "l.txt", 3, 1) is None


def test_every_line_of_the_fixture_sites() -> None:
    """Every routing line and address-list file in the repository's sites."""
    files = sorted(ROOT.glob("sites/**/*.cgr")) + sorted(ROOT.glob("tests/sites/**/*.cgr"))
    lists = sorted(ROOT.glob("sites/**/*.txt")) + sorted(ROOT.glob("tests/sites/**/*.txt"))
    assert files
    for path in files:
        for line in _lines(path):
            same_record(line)
    for path in lists:
        for line in _lines(path):
            same_entry(line)


def _lines(path: Path) -> list[str]:
    return [line for line in split_lines(path.read_text(encoding="utf-8")) if line.strip()]


ROUTER_PIECES = [
    *"<>=;\"@*.:!-/# \t\f\u00a0",
    "Relay:", "mail:", "ACCESS :", "signal", "\u017fignal:", "relay", "@pipe", "@PIPE", "pipe",
    "; allow-open-relay: x", ";ALLOW-OPEN-RELAY:", "; allow-open-relay", "error", "null",
    "user", "ex.test", "<a@b>", '"prog x"', '"msg"', "[192.0.2.1]", "%", "é", "\u0130",
]  # fmt: skip

LIST_PIECES = [
    *"!-/#;. \t:\f\u00a0", "192.0.2.7", "10", "24", "2001:db8::", "ff", "office", "x", "0x",
    "; comment", "٣",
]  # fmt: skip


@given(st.lists(st.sampled_from(ROUTER_PIECES), max_size=12).map("".join))
def test_records_agree_with_lark(line: str) -> None:
    same_record(line)


@given(st.lists(st.sampled_from(LIST_PIECES), max_size=10).map("".join), st.integers(1, 9))
def test_entries_agree_with_lark(line: str, column: int) -> None:
    same_entry(line, column)
