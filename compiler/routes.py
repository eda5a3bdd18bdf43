"""Routing records to plan routes: prefixes, the pictures on the left, the targets on the right.

Each route gets a canonical text (`Relay:Mail: <*@old.dom> = *@new.dom`) that traces
and logs print, and keeps the file, line and column where it was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.compiler.syntax import Record, Text
from mailplan.plan.model import KINDS, Kind, Pattern, Route, Source, Target
from mailplan.runtime.decide.address import canonical_domain, parse

ACKNOWLEDGE = "allow-open-relay"


def routes(
    records: Sequence[Record], main_domain: str
) -> tuple[tuple[Route, ...], list[Diagnostic]]:
    built: list[Route] = []
    problems: list[Diagnostic] = []
    targets: dict[tuple[str, str, str | None], Target] = {}  # one for all records naming it
    for record in records:
        trouble: list[Diagnostic] = []
        route = _route(record, main_domain, trouble, targets)
        if trouble:
            problems += trouble
        elif route is not None:
            built.append(route)
    return tuple(built), problems


def _route(
    record: Record,
    main_domain: str,
    problems: list[Diagnostic],
    targets: dict[tuple[str, str, str | None], Target],
) -> Route | None:
    relay, kinds = _prefixes(record, problems) if record.prefixes else (False, [])
    left = _left(record, main_domain, problems)
    said = record.message.value if record.message is not None else None
    written = (record.right_form, record.right.value, said)
    right = targets.get(written)
    if right is None:
        right = _right(record, problems)  # a target is either made or refused, and only then
        if right is not None:
            targets[written] = right
    if left is None or right is None:
        return None
    stars = left.picture.count("*")
    used = right.value.count("*")
    if right.kind == "pipe" and right.message:
        used += right.message.count("*")
    if used > stars:
        message = f"the right side uses {used} '*' but the left side has {stars}"
        problems.append(_error(record, record.right, "MP109", message))
    acknowledged = None
    if record.acknowledgement is not None:
        acknowledged = record.acknowledgement.value.split(":", 1)[1].strip()
        if not acknowledged:
            message = f"'; {ACKNOWLEDGE}:' needs a reason after the colon"
            problems.append(_error(record, record.acknowledgement, "MP104", message))
    if kinds:
        kinds = [kind for kind in KINDS if kind in kinds]
    text = _canonical(relay, kinds, left, right)
    source = Source(record.file, record.line, record.column)
    right_source = Source(record.file, record.line, record.right.column)
    return Route(
        source, right_source, text, relay, tuple(kinds) or KINDS, left, right, acknowledged
    )


def _prefixes(record: Record, problems: list[Diagnostic]) -> tuple[bool, list[Kind]]:
    """Whether the record says `Relay:`, and the kinds of address it restricts itself to."""
    relay = False
    kinds: list[Kind] = []
    for prefix in record.prefixes:
        word = prefix.value.rstrip(":").strip().lower()
        if (word == "relay" and relay) or word in kinds:
            problems.append(
                _error(record, prefix, "MP104", f"prefix {word.capitalize()}: given twice")
            )
        if word == "relay":
            relay = True
        elif word in get_args(Kind):
            kinds.append(word)  # type: ignore[arg-type]
    return relay, kinds


def _left(record: Record, main_domain: str, problems: list[Diagnostic]) -> Pattern | None:
    text: str | None = record.left.value
    if record.left_form == "angle":
        text = _inside_angle(record, record.left, problems)
    if text is None:
        return None
    if "@" in text or "!" in text:
        address = parse(text, main_domain)
        return Pattern("address", f"{address.local}@{address.domain}".lower())
    return Pattern("domain", canonical_domain(text.rstrip(".")))


def _right(record: Record, problems: list[Diagnostic]) -> Target | None:
    value = record.right.value
    if record.right_form == "pipe":
        words = value[1 : value.rindex('"')].split(None, 1)
        if not words:
            problems.append(_error(record, record.right, "MP104", "a pipe target names a program"))
            return None
        return Target("pipe", words[0], words[1].strip() if len(words) > 1 else None)
    if record.right_form == "angle":
        inside = _inside_angle(record, record.right, problems)
        if inside is None:
            return None
        value = inside
    keyword = value.lower()
    message = record.message.value[1:-1] if record.message else None
    if record.message is not None and keyword != "error":
        problems.append(_error(record, record.message, "MP104", "only 'error' takes a message"))
        return None
    if record.right_form == "word" and keyword == "error":
        return Target("error", "error", message)
    if record.right_form == "word" and keyword == "null":
        return Target("discard", "null", None)
    if "@" in value or "!" in value:
        return Target("address", value, None)
    return Target("domain", value, None)


def _inside_angle(record: Record, side: Text, problems: list[Diagnostic]) -> str | None:
    """The address inside `<...>`, or None (and a problem) when it is empty or has no domain."""
    text = side.value[1:-1]
    if not text:
        problems.append(_error(record, side, "MP104", "<> is an empty address"))
        return None
    if "@" not in text:
        message = f"<{text}> needs a domain: write <{text}@domain>, or {text} for a domain"
        problems.append(_error(record, side, "MP104", message))
        return None
    return text


def _canonical(relay: bool, kinds: list[Kind], left: Pattern, right: Target) -> str:
    if not relay and not kinds and right.kind in ("address", "domain", "discard"):
        return f"{left} = {right.value}"
    prefix = ("Relay:" if relay else "") + "".join(f"{kind.capitalize()}:" for kind in kinds)
    if right.kind == "error":
        target = f'error "{right.message}"' if right.message else "error"
    elif right.kind == "pipe":
        target = '"' + " ".join(filter(None, [right.value, right.message])) + '"@pipe'
    else:
        target = right.value
    return f"{prefix}{' ' if prefix else ''}{left} = {target}"


def _error(record: Record, text: Text, code: str, message: str) -> Diagnostic:
    return error(record.file, record.line, text.column, code, message)
