"""Rule sets: the rules of each rule file, turned from lines into the plan's `Rule`s.

Names of fields, operations and actions become their canonical CommuniGate spelling;
sizes, times and dates become numbers; every value that cannot mean anything is
reported here, at its column. Where a rule stands (server, domain, account) is
judged later, by `check_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import cast

from mailplan.compiler import defaults
from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.compiler.parse_rules import FIELDS, VERBS
from mailplan.compiler.rulesyntax import ActionLine, ConditionLine, RuleText
from mailplan.compiler.syntax import Text
from mailplan.plan.model import (
    Rule,
    RuleAction,
    RuleCondition,
    RuleField,
    RuleOperation,
    RuleSet,
    RuleVerb,
    Source,
)

ADDRESS_FIELDS = frozenset(
    {"From", "Sender", "Return-Path", "To", "Cc", "Any To or Cc", "Each To or Cc", "Reply-To"}
    | {"Any Recipient", "Each Recipient"}
)
TEXT_FIELDS = frozenset({"'From' Name", "Subject", "Message-ID", "Submit Address"})
PICTURE_OPS = ("is", "is not", "in", "not in")
COMPARE_OPS = ("greater than", "less than")
SINGLE_OPS = ("is", "is not", "greater than", "less than")
REPLY_VERBS = ("Reply with", "Reply to All with")
_OPERATIONS: dict[str, tuple[str, ...]] = {
    "Message Size": COMPARE_OPS,
    "Time Of Day": COMPARE_OPS,
    "Current Date": PICTURE_OPS + COMPARE_OPS,
    "Security": ("is", "is not"),
    "Human Generated": ("is", "is not"),
}
SOURCES = ("trusted", "authenticated", "local", "remote")
SECURITY = ("tls", "none")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
FLAGS = {
    "seen": "Seen",
    "read": "Seen",
    "flagged": "Flagged",
    "answered": "Answered",
    "draft": "Draft",
    "deleted": "Deleted",
}
_CANONICAL_FIELDS = {name.lower().replace("'", ""): name for name in FIELDS}
_CANONICAL_VERBS = {name.lower().replace("'", ""): name for name in VERBS}
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable, no colon
# Numbers in rules have at most ten digits: more means nothing here, and Python will
# not even turn a number of more than 4,300 digits into an int.
_SIZE = re.compile(r"([0-9]{1,10})([KMG]?)", re.IGNORECASE)
_TIME = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_DURATION = re.compile(r"[0-9]{1,10}[smhdw]")
_REPLY_CODE = re.compile(r"([0-9]{3})(?:[ -]|$)")

_Bad = Callable[[Text, str], None]
_BadCoded = Callable[[Text, str, str], None]
_ActionValues = Callable[[str, tuple[Text, ...], Text, _Bad], list[str]]


def rulesets(
    files: Mapping[str, tuple[RuleText, ...]],
) -> tuple[dict[str, RuleSet], list[Diagnostic]]:
    """The rule set of every parsed rule file, and the problems of its values."""
    found: dict[str, RuleSet] = {}
    problems: list[Diagnostic] = []
    for file, texts in files.items():
        rules = []
        seen: dict[str, int] = {}
        for text in texts:
            rule, trouble = _rule(text)
            problems += trouble
            key = rule.name.lower()
            if key in seen:
                message = f"duplicate rule name {rule.name!r} (also on line {seen[key]})"
                problems.append(_error(text.header.name, file, text.header.line, "MP607", message))
            else:
                seen[key] = text.header.line
            if text.complete:
                rules.append(rule)
        found[file] = RuleSet(file, tuple(rules))
    return found, problems


def _rule(text: RuleText) -> tuple[Rule, list[Diagnostic]]:
    header = text.header
    problems: list[Diagnostic] = []
    priority = 0
    if header.priority is not None:
        written = header.priority.value
        priority = int(written) if len(written) <= 10 else 10  # no int() of 5,000 digits
        if not 1 <= priority <= 9:
            shown = priority if len(written) <= 10 else written[:10] + "…"
            message = f"priority {shown} is not 1 to 9 (higher runs first; or write `inactive`)"
            problems.append(_error(header.priority, text.file, header.line, "MP606", message))
    conditions = []
    for line in text.conditions:
        condition, trouble = _condition(line, text.file)
        problems += trouble
        conditions.append(condition)
    actions = []
    for step in text.actions:
        action, trouble = _action(step, text.file)
        problems += trouble
        actions.append(action)
    source = Source(text.file, header.line, header.column)
    rule = Rule(
        header.name.value, source, priority, header.inactive, tuple(conditions), tuple(actions)
    )
    return rule, problems


def _condition(line: ConditionLine, file: str) -> tuple[RuleCondition, list[Diagnostic]]:
    field = cast(RuleField, _CANONICAL_FIELDS[_key(line.field.value)])
    source = Source(file, line.line, line.field.column)
    problems: list[Diagnostic] = []

    def bad(at: Text, message: str, code: str = "MP605") -> None:
        problems.append(_error(at, file, line.line, code, message))

    if line.operation is None:
        return _bare_condition(line, field, source, bad), problems
    operation = cast(RuleOperation, " ".join(line.operation.value.lower().split()))
    allowed = _OPERATIONS.get(field, PICTURE_OPS)
    if operation not in allowed:
        message = f"{field} cannot be compared with {operation!r}: use {' or '.join(allowed)}"
        bad(line.operation, message, "MP604")
        written = tuple(value.value for value in line.values)
        return RuleCondition(source, field, operation, written, None, None), problems
    values = line.values
    if operation in SINGLE_OPS and len(values) > 1:
        message = f"{operation!r} takes one value; for a list write `in` or `not in`"
        bad(values[1], message, "MP604")
    words, header, number = _condition_values(field, operation, values, bad)
    if field == "Human Generated" and words:
        operation, words = _human_generated(operation, words[0])
    return RuleCondition(source, field, operation, tuple(words), header, number), problems


def _bare_condition(
    line: ConditionLine, field: RuleField, source: Source, bad: _BadCoded
) -> RuleCondition:
    """A condition written without operation: only `Human Generated` means anything alone."""
    if field != "Human Generated":
        end = Text("", line.field.column + len(line.field.value))
        bad(end, f"{field} needs an operation and a value (e.g. `{field} is VALUE`)", "MP604")
    return RuleCondition(source, field, "is", ("yes",), None, None)


def _condition_values(
    field: str, operation: str, values: tuple[Text, ...], bad: _Bad
) -> tuple[list[str], str | None, int | None]:
    """A condition's values as compared: words or pictures, the header it reads, a number."""
    if operation in COMPARE_OPS:
        return [value.value for value in values], None, _number(field, values[0], bad)
    if field == "Header Field":
        words, header = _header_pictures(values, bad)
        return words, header, None
    return [_word(field, value, bad) for value in values], None, None


def _header_pictures(values: tuple[Text, ...], bad: _Bad) -> tuple[list[str], str | None]:
    """The pictures of `Header-Name: picture` values, and the one header they read."""
    names = set()
    words = []
    for value in values:
        name, colon, picture = value.value.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name.strip()) or "*" in name:
            bad(value, f"{value.value!r} is not `Header-Name: picture`")
        names.add(name.strip().lower())
        words.append(picture.strip())
    if len(names) > 1:
        bad(values[0], "one Header Field condition reads one header field")
    return words, min(names) if names else None


def _human_generated(operation: RuleOperation, word: str) -> tuple[RuleOperation, list[str]]:
    """`Human Generated is not yes` as `is no`: one operation, so one way to write each."""
    yes = word == "yes"
    return "is", ["yes" if yes == (operation == "is") else "no"]


def _word(field: str, value: Text, bad: _Bad) -> str:
    """A value in its canonical form, or as written (a picture) for fields of pictures."""
    word = value.value.strip().lower()
    options: tuple[str, ...] = ()
    if field == "Source":
        options = SOURCES
    elif field == "Security":
        options = SECURITY
    elif field == "Human Generated":
        options = ("yes", "no")
    elif field == "Current Day":
        found = [day for day in DAYS if len(word) >= 3 and day.startswith(word)]
        if found:
            return found[0]
        options = DAYS
    if options and word not in options:
        bad(value, f"{field} is one of: {', '.join(options)} (not {value.value!r})")
    return word if options else value.value


def _number(field: str, value: Text, bad: _Bad) -> int | None:
    text = value.value.strip()
    if field == "Message Size":
        size = _SIZE.fullmatch(text)
        if size:
            return int(size[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[size[2].lower()]
        bad(value, f"{text!r} is not a size (bytes, or a number followed by K, M or G)")
    elif field == "Time Of Day":
        time = _TIME.fullmatch(text)
        if time:
            return int(time[1]) * 60 + int(time[2])
        bad(value, f"{text!r} is not a time of day (HH:MM, 00:00 to 23:59)")
    else:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            bad(value, f"{text!r} is not a date (YYYY-MM-DD)")
        else:
            return day.year * 10000 + day.month * 100 + day.day
    return None


def _action(line: ActionLine, file: str) -> tuple[RuleAction, list[Diagnostic]]:
    verb = cast(RuleVerb, _CANONICAL_VERBS[_key(line.verb.value)])
    source = Source(file, line.line, line.lead.column)
    problems: list[Diagnostic] = []

    def bad(at: Text, message: str) -> None:
        problems.append(_error(at, file, line.line, "MP605", message))

    after = Text("", line.verb.column + len(line.verb.value))
    check = _ACTION_VALUES.get(verb, _ONE_VALUE)
    words = check(verb, line.values, after, bad)
    if verb not in REPLY_VERBS:
        _one_line(verb, line.values, bad)
    period = _period(verb, line.period, bad)
    return RuleAction(source, verb, tuple(words), period), problems


def _no_value(verb: str, values: tuple[Text, ...], after: Text, bad: _Bad) -> list[str]:
    if values:
        bad(values[0], f"{verb} takes no value")
    return [value.value for value in values]


def _addresses(verb: str, values: tuple[Text, ...], after: Text, bad: _Bad) -> list[str]:
    if not values:
        bad(after, f"{verb} needs one or more addresses")
    for value in values:
        if not re.fullmatch(r"[^\s@]+@[^\s@]+", value.value):
            bad(value, f"{value.value!r} is not a mail address (expected name@domain)")
    return [value.value for value in values]


def _flags(verb: str, values: tuple[Text, ...], after: Text, bad: _Bad) -> list[str]:
    """Mark's flags in their canonical names (`read` is `Seen`)."""
    names = ", ".join(sorted(set(FLAGS.values())))
    if not values:
        bad(after, f"Mark needs a flag: {names}")
    words = []
    for value in values:
        flag = FLAGS.get(value.value.lower())
        if flag is None:
            bad(value, f"{value.value!r} is not a flag ({names})")
        words.append(flag or value.value)
    return words


def _rejection(verb: str, values: tuple[Text, ...], after: Text, bad: _Bad) -> list[str]:
    if len(values) > 1:
        bad(values[1], "Reject with takes one message")
    words = [value.value for value in values]
    code = _REPLY_CODE.match(words[0]) if words else None
    if code and code[1][0] not in "45":
        bad(values[0], f"a rejection's reply code is 4xx or 5xx, not {code[1]}")
    return words


def _one_value(check: Callable[[str, Text, _Bad], None]) -> _ActionValues:
    """A check of an action that takes exactly one value, then `check` on that value."""

    def checked(verb: str, values: tuple[Text, ...], after: Text, bad: _Bad) -> list[str]:
        if len(values) != 1:
            bad(values[1] if values else after, f"{verb} takes one value")
        else:
            check(verb, values[0], bad)
        return [value.value for value in values]

    return checked


def _header_field(verb: str, value: Text, bad: _Bad) -> None:
    name, colon, text = value.value.partition(":")
    if not colon or not _HEADER_NAME.fullmatch(name) or "\n" in text:
        bad(value, f"{value.value!r} is not a header field (`Name: value` on one line)")


def _folder(verb: str, value: Text, bad: _Bad) -> None:
    problem = _folder_problem(value.value)
    if problem:
        bad(value, problem)


def _not_empty(verb: str, value: Text, bad: _Bad) -> None:
    if not value.value.strip():
        bad(value, f"{verb} needs a value that is not empty")


_ONE_VALUE = _one_value(_not_empty)  # what an action not named below takes
_ACTION_VALUES: dict[str, _ActionValues] = {
    "Discard": _no_value,
    "Stop Processing": _no_value,
    "Redirect to": _addresses,
    "Forward to": _addresses,
    "Mirror to": _addresses,
    "Mark": _flags,
    "Reject with": _rejection,
    "Add Header": _one_value(_header_field),
    "Store in": _one_value(_folder),
    "Copy Attachments into": _one_value(_folder),
}


def _one_line(verb: str, values: tuple[Text, ...], bad: _Bad) -> None:
    for value in values:
        if any(ord(c) < 32 or ord(c) == 127 for c in value.value):
            bad(value, f"{verb} takes a value on one line, without control characters")


def _period(verb: str, written: Text | None, bad: _Bad) -> int | None:
    """How often a Reply answers one sender (seconds); None for every other action."""
    if written is None:
        return defaults.seconds(defaults.REPLY_PERIOD) if verb in REPLY_VERBS else None
    if verb not in REPLY_VERBS:
        bad(written, "`once per` belongs to Reply with and Reply to All with")
    elif not _DURATION.fullmatch(written.value):
        bad(written, f"{written.value!r} is not a duration (5m, 4h, 1d, 1w)")
    else:
        return defaults.seconds(written.value)
    return None


def _folder_problem(name: str) -> str | None:
    parts = name.split("/")
    if not name or any(not part or part in (".", "..") or part.startswith(".") for part in parts):
        return (
            f"{name!r} is not a folder name (parts separated by /, none empty or starting with .)"
        )
    if any(ord(c) < 32 for c in name):
        return f"{name!r} is not a folder name (control characters)"
    return None


def _key(written: str) -> str:
    return " ".join(written.lower().replace("'", "").split())


def _error(at: Text, file: str, line: int, code: str, message: str) -> Diagnostic:
    return error(file, line, at.column, code, message)
