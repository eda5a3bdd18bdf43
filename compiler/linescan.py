"""One regular expression per line language, built from its lark grammar's own terminals.

Parsing a line with lark costs ~40 µs (a lexer and parser state, tokens, a tree, a
transformer); matching one regular expression costs ~2. For a line that the expression
matches, the node built from its groups is exactly the one lark's parse and transformer
build (`tests/test_linescan.py` compares the two on every line it can think of); a line
it does not match (a broken line, or a blank other than space and tab) goes to lark,
which builds the node or words the diagnostic as it always has.

The expressions are made of the grammar's terminal patterns (`Lark.terminals`), so a
change to a terminal in `router.lark` or `addresslist.lark` changes them too. What they
encode by hand is the shape of the rules and what lark's contextual lexer does on a
well-formed line: between tokens only blanks (`[ \\t]`); a comment (`;` to the end) only
after the last token; at the start of a record, a prefix before a word (its priority);
after a record's right side, the acknowledgement before a plain comment (its priority).
Possessive quantifiers keep the expression from backtracking into a tokenisation lark
would not choose: when lark's lexer takes a prefix, so does the expression, and if the
rest does not fit, the line is lark's.
"""

from __future__ import annotations

import functools
import re

from mailplan.compiler.syntax import Entry, Record, Text
from mailplan.grammar import parser

_BLANK = r"[ \t]*+"


@functools.cache
def _terminals(grammar: str, start: str) -> dict[str, str]:
    """Each terminal's pattern as an atomic group: it matches what lark's lexer would take
    there, and the expression never backtracks into it (which would also make a long
    run of `[0-9A-Fa-f:.]` before a bad character cost quadratic time)."""
    return {t.name: f"(?>{t.pattern.to_regexp()})" for t in parser(grammar, start).terminals}


@functools.cache
def _record() -> re.Pattern[str]:
    t = _terminals("router", "record")
    return re.compile(
        f"{_BLANK}(?P<prefixes>(?:{t['PREFIX']}{_BLANK})*+)"
        f"(?:(?P<langle>{t['ANGLE']})|(?P<lword>{t['WORD']})){_BLANK}={_BLANK}"
        f"(?:(?P<rangle>{t['ANGLE']})|(?P<rpipe>{t['PIPE']})"
        f"|(?P<rword>{t['WORD']})(?:{_BLANK}(?P<string>{t['STRING']}))?){_BLANK}"
        f"(?:(?P<ack>{t['ACK']})|{t['COMMENT']})?\\Z"
    )


@functools.cache
def _prefix() -> re.Pattern[str]:
    return re.compile(f"(?P<prefix>{_terminals('router', 'record')['PREFIX']}){_BLANK}")


@functools.cache
def _entry() -> re.Pattern[str]:
    t = _terminals("addresslist", "entry")
    return re.compile(
        f"{_BLANK}(?P<exclude>{t['EXCLUDE']})?{_BLANK}"
        f"(?:(?P<first>{t['ADDRESS']}){_BLANK}"
        f"(?:{t['MINUS']}{_BLANK}(?P<last>{t['ADDRESS']})|{t['SLASH']}{_BLANK}(?P<bits>{t['BITS']}))?"
        f"|{t['HASH']}{_BLANK}(?P<name>{t['NAME']})){_BLANK}(?:{t['__IGNORE_1']})?\\Z"
    )


def record(line: str, file: str, number: int) -> Record | None:
    """The record on `line`, as lark would build it; None when lark must decide."""
    found = _record().match(line)
    if found is None:
        return None
    prefixes: tuple[Text, ...] = ()
    if found.end("prefixes") > found.start("prefixes"):
        prefixes = tuple(
            Text(m.group("prefix"), m.start() + 1)
            for m in _prefix().finditer(line, found.start("prefixes"), found.end("prefixes"))
        )
    langle, lword, rangle, rpipe, rword, string, acknowledged = found.group(
        "langle", "lword", "rangle", "rpipe", "rword", "string", "ack"
    )
    if langle is not None:
        left_form, left = "angle", Text(langle, found.start("langle") + 1)
    else:
        left_form, left = "word", Text(lword, found.start("lword") + 1)
    message = None
    if rangle is not None:
        right_form, right = "angle", Text(rangle, found.start("rangle") + 1)
    elif rpipe is not None:
        right_form, right = "pipe", Text(rpipe, found.start("rpipe") + 1)
    else:
        right_form, right = "word", Text(rword, found.start("rword") + 1)
        if string is not None:
            message = Text(string, found.start("string") + 1)
    ack = None
    if acknowledged is not None:
        ack = Text(acknowledged, found.start("ack") + 1)
    start = prefixes[0].column if prefixes else left.column
    return Record(file, number, start, prefixes, left_form, left, right_form, right, message, ack)


def entry(line: str, file: str, number: int, column: int) -> Entry | None:
    """The address-list entry on `line`, as lark would build it (its text starting at
    `column` of the file's line `number`); None when lark must decide."""
    found = _entry().match(line)
    if found is None:
        return None
    start = len(line) - len(line.lstrip(" \t")) + column
    exclude = found.start("exclude") >= 0
    first, last, bits, name = found.group("first", "last", "bits", "name")
    if name is not None:
        named = (Text(name, found.start("name") + column),)
        return Entry(file, number, start, exclude, "include", named)
    address = Text(first, found.start("first") + column)
    if last is not None:
        values = (address, Text(last, found.start("last") + column))
        return Entry(file, number, start, exclude, "range", values)
    if bits is not None:
        values = (address, Text(bits, found.start("bits") + column))
        return Entry(file, number, start, exclude, "network", values)
    return Entry(file, number, start, exclude, "single", (address,))
