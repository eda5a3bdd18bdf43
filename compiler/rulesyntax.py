"""Syntax of rule files: one node per line of `grammar/rules.lark`, and the rules they form.

The transformer builds nodes and checks nothing; `compiler/parse_rules.py` groups the
lines into rules, and `compiler/rulesets.py` turns them into the plan's rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lark import Token, Transformer

from mailplan.compiler.syntax import Text

_ESCAPES = {"n": "\n", "t": "\t"}


@dataclass(frozen=True)
class Header:
    """`rule NAME priority N [inactive]` or `rule NAME inactive`."""

    line: int
    column: int
    name: Text
    priority: Text | None
    inactive: bool


@dataclass(frozen=True)
class ConditionLine:
    """`if|and FIELD [OPERATION VALUE, ...]`."""

    line: int
    lead: Text
    field: Text
    operation: Text | None
    values: tuple[Text, ...]


@dataclass(frozen=True)
class ActionLine:
    """`then|and ACTION [VALUE, ...] [once per DURATION]`."""

    line: int
    lead: Text
    verb: Text
    values: tuple[Text, ...]
    period: Text | None


@dataclass(frozen=True)
class RuleText:
    """A rule as written: its header line, then its condition and action lines.

    A rule one of whose conditions did not parse is not `complete`: it would match
    more than was written, so no later pass may reason about what it matches."""

    file: str
    header: Header
    conditions: tuple[ConditionLine, ...]
    actions: tuple[ActionLine, ...]
    complete: bool


def _text(token: Token) -> Text:
    return Text(str(token), token.column or 1)


def _value(token: Token) -> Text:
    """A value as meant: a quoted string loses its quotes and escapes (`\\n`, `\\"`)."""
    if token.type != "STRING":
        return _text(token)
    inner = str(token)[1:-1]
    return Text(re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), inner), token.column or 1)


class RuleLineBuilder(Transformer[Token, object]):
    """Builds the node of one line of a rule file (`header`, `condition` or `action`)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line

    def value(self, children: list[Token]) -> Text:
        return _value(children[0])

    def name(self, children: list[Token]) -> Text:
        return _value(children[0])

    def values(self, children: list[Text]) -> tuple[Text, ...]:
        return tuple(children)

    def period(self, children: list[Token]) -> tuple[str, Text]:
        return "period", _text(children[1])

    def ranked(self, children: list[Token]) -> tuple[Text | None, bool]:
        return _text(children[1]), len(children) > 2

    def unranked(self, children: list[Token]) -> tuple[Text | None, bool]:
        return None, True

    def header(self, children: list[Any]) -> Header:
        rule, name, (priority, inactive) = children
        return Header(self.line, rule.column or 1, name, priority, inactive)

    def condition(self, children: list[Any]) -> ConditionLine:
        lead, field = children[0], children[1]
        operation = _text(children[2]) if len(children) > 2 else None
        values = children[3] if len(children) > 3 else ()
        return ConditionLine(self.line, _text(lead), _text(field), operation, values)

    def action(self, children: list[Any]) -> ActionLine:
        lead, verb = children[0], children[1]
        values: tuple[Text, ...] = ()
        period = None
        for child in children[2:]:
            if isinstance(child, tuple) and child[:1] == ("period",):
                period = child[1]
            elif isinstance(child, tuple):
                values = child
        return ActionLine(self.line, _text(lead), _text(verb), values, period)
