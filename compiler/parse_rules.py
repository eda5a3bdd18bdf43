"""Parse pass for rule files: every file the site names as rules, read line by line.

A rule starts with its `rule` line; `if`/`and` lines before the first `then` are its
conditions, `then`/`and` lines its actions. A line that does not parse, or stands
where it cannot, becomes a diagnostic and reading carries on at the next line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import get_args

from lark import Lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from mailplan.compiler.diagnostics import Diagnostic, error, split_lines
from mailplan.compiler.load import references
from mailplan.compiler.rulesyntax import (
    ActionLine,
    ConditionLine,
    Header,
    RuleLineBuilder,
    RuleText,
)
from mailplan.compiler.syntax import Text
from mailplan.compiler.unit import Unit
from mailplan.grammar import parser
from mailplan.plan.model import RuleField, RuleVerb

FIELDS: list[str] = list(get_args(RuleField))  # the plan's enumerations are the language's
VERBS: list[str] = list(get_args(RuleVerb))

_WORDS = {
    "RULE": "'rule'",
    "PRIORITY": "'priority'",
    "INACTIVE": "'inactive'",
    "NUMBER": "a priority (1 to 9)",
    "ONCE_PER": "'once per'",
    "OPERATION": "an operation (is, is not, in, not in, greater than, less than)",
    "STRING": 'a "quoted value"',
    "WORD": "a value",
    "COMMA": "','",
    "FIELD": "a condition field",
    "ACTION": "an action",
    "$END": "the end of the line",
}
_OPERATION_AHEAD = re.compile(r"\s+(is|in|not|greater|less)(?![\w'-])", re.IGNORECASE)


def parse_rules(unit: Unit) -> Unit:
    """Parse every rule file that site.yaml names (each once, however often it is named)."""
    document = unit.document
    if document is None:
        return unit
    found: dict[str, tuple[RuleText, ...]] = {}
    problems: list[Diagnostic] = []
    for path in references(document.data):
        if path[-1] not in ("rules", "server_rules"):
            continue
        name = document.data_at(path)
        if name in unit.texts and name not in found:
            found[name], trouble = rule_file(unit.texts[name], name)
            problems += trouble
    return replace(unit, rulefiles=found).report(*problems)


@dataclass
class _Reading:
    """The rule being read, while its lines come in."""

    header: Header
    conditions: list[ConditionLine] = field(default_factory=list)
    actions: list[ActionLine] = field(default_factory=list)
    complete: bool = True
    tried_acting: bool = False
    broken: bool = False  # its `rule` line did not parse: its lines are checked, then dropped

    def add(self, node: object | None, acting: bool) -> None:
        """Take a condition or action line; one that did not parse leaves its mark."""
        if isinstance(node, ActionLine):
            self.actions.append(node)
        elif isinstance(node, ConditionLine):
            self.conditions.append(node)
        elif not acting:
            self.complete = False
        else:
            self.tried_acting = True

    def text(self, file: str) -> RuleText:
        conditions, actions = tuple(self.conditions), tuple(self.actions)
        return RuleText(file, self.header, conditions, actions, self.complete)


@dataclass
class _RuleFile:
    """One rule file being read: the rules read so far, the one being read, the problems."""

    file: str
    rules: list[RuleText] = field(default_factory=list)
    problems: list[Diagnostic] = field(default_factory=list)
    current: _Reading | None = None

    def read(self, number: int, line: str) -> None:
        """Take one line that is not blank, by the word it starts with."""
        start = len(line) - len(line.lstrip()) + 1
        first = line.split(None, 1)[0].lower()
        if first == "rule":
            self.start_rule(number, line, start)
        elif first not in ("if", "and", "then"):
            self.report(number, start, "a line of a rule file starts with rule, if, and or then")
        elif self.current is None:
            message = f"{first!r} outside a rule: a rule starts with `rule NAME priority N`"
            self.report(number, start, message)
        else:
            self.read_step(self.current, first, number, line, start)

    def start_rule(self, number: int, line: str, start: int) -> None:
        node = _parse(line, "header", self.file, number, self.problems)
        self.close()
        if isinstance(node, Header):
            self.current = _Reading(node)
        else:
            self.current = _Reading(Header(number, start, Text("", start), None, False))
            self.current.broken = True

    def read_step(self, current: _Reading, first: str, number: int, line: str, start: int) -> None:
        """A condition or action line of the current rule (`if`, `and` or `then`)."""
        acting = first == "then" or (first == "and" and bool(current.actions))
        misplaced = _misplaced(first, current)
        if misplaced:
            self.report(number, start, misplaced)
            current.complete = current.complete and acting
        elif acting and first == "and" and _parses(line, "condition"):
            message = "conditions come before the actions: move this line above the `then`"
            self.report(number, start, message)
            current.complete = False
        else:
            node = _parse(
                line, "action" if acting else "condition", self.file, number, self.problems
            )
            current.add(node, acting)

    def close(self) -> None:
        """The current rule is read: keep it, unless its `rule` line did not parse."""
        current = self.current
        if current is None or current.broken:
            return
        header = current.header
        if not current.actions and not current.tried_acting:
            message = f"rule {header.name.value!r} has no actions: add a line `then ACTION`"
            self.report(header.line, header.column, message)
        self.rules.append(current.text(self.file))

    def report(self, number: int, column: int, message: str) -> None:
        self.problems.append(error(self.file, number, column, "MP601", message))


def rule_file(text: str, file: str) -> tuple[tuple[RuleText, ...], list[Diagnostic]]:
    """The rules of one rule file, and a diagnostic for each line that is wrong."""
    reading = _RuleFile(file)
    for number, line in _lines(text):
        reading.read(number, line)
    reading.close()
    return tuple(reading.rules), reading.problems


def _misplaced(first: str, current: _Reading) -> str | None:
    if first == "if" and current.actions:
        return "conditions come before the actions: move this `if` above the `then`"
    if first == "if" and current.conditions:
        return "a rule has one `if`; its other conditions start with `and`"
    if first == "then" and current.actions:
        return "a rule has one `then`; its other actions start with `and`"
    if first == "and" and not current.conditions and not current.actions:
        return "`and` with nothing before it: the first condition starts with `if`"
    return None


def _parse(
    line: str, start: str, file: str, number: int, problems: list[Diagnostic]
) -> object | None:
    lark: Lark = parser("rules", start)
    try:
        tree = lark.parse(line)
    except UnexpectedInput as exc:
        code, column, message = _explain(exc, line)
        problems.append(error(file, number, column, code, message))
        return None
    node: object = RuleLineBuilder(number).transform(tree)
    return node


def _parses(line: str, start: str) -> bool:
    try:
        parser("rules", start).parse(line)
    except UnexpectedInput:
        return False
    return True


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines that hold more than white space and a comment."""
    for number, line in enumerate(split_lines(text), start=1):
        content = line.strip()
        if content and not content.startswith("#"):
            yield number, line


def _explain(exc: UnexpectedInput, line: str) -> tuple[str, int, str]:
    """A diagnostic code, column and message for a line that does not parse."""
    if isinstance(exc, UnexpectedEOF):
        return "MP601", _end(line), f"line ends too early: expected {_expected(exc.expected)}"
    column = exc.column if isinstance(exc.column, int) and exc.column > 0 else 1
    if isinstance(exc, UnexpectedToken):
        expected = set(exc.expected)
        if exc.token.type == "$END":
            return "MP601", _end(line), f"line ends too early: expected {_expected(expected)}"
    elif isinstance(exc, UnexpectedCharacters):
        expected = set(exc.allowed or ())
    else:  # pragma: no cover - lark raises only the three above
        return "MP601", 1, str(exc)
    rest = line[column - 1 :]
    if "FIELD" in expected:
        written = _OPERATION_AHEAD.split(rest, maxsplit=1)[0].strip()
        return "MP602", column, f"unknown condition field {written!r}{_hint(written, FIELDS)}"
    if "ACTION" in expected:
        written = re.split(r'[",]', rest, maxsplit=1)[0].strip()
        return "MP603", column, f"unknown action {written!r}{_hint(written, VERBS)}"
    if isinstance(exc, UnexpectedCharacters):
        if line[column - 1] == '"':
            return "MP601", column, 'a quoted value is not closed: it ends with "'
        return "MP601", column, f"unexpected character {line[column - 1]!r}"
    assert isinstance(exc, UnexpectedToken)
    return "MP601", column, f"unexpected {str(exc.token)!r}: expected {_expected(expected)}"


def _hint(written: str, known: list[str]) -> str:
    """`: did you mean 'X'?` for the known name closest to the start of what was written."""
    words = written.split()
    candidates = {" ".join(words[:n]).lower(): n for n in range(1, min(len(words), 4) + 1) if words}
    best: tuple[float, str] | None = None
    for name in known:
        for prefix in candidates:
            score = difflib.SequenceMatcher(None, prefix, name.lower()).ratio()
            if score >= 0.75 and (best is None or score > best[0]):
                best = (score, name)
    return f": did you mean {best[1]!r}?" if best else ""


def _end(line: str) -> int:
    return len(line.rstrip()) + 1


def _expected(names: Iterable[object]) -> str:
    return " or ".join(sorted({_WORDS.get(str(name), str(name)) for name in names}))
