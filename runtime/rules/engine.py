"""Rules at run time: the compiled rules of a plan, evaluated over the facts of one message.

Pure: `Rules(*rule_sets)` orders the rules (priority first, then the order of the sets,
then the order written) and compiles every condition into a predicate once; then
`evaluate(facts)` returns the `Outcome`: the actions to carry out, in order, each with
the rule that asked for it and where it is written. Nothing is parsed or compiled per
message except the message's own header block, once (`Headers.parse`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from mailplan.plan.model import Plan, Rule, RuleAction, RuleCondition, RuleSet, Source
from mailplan.runtime.decide.message import header_block
from mailplan.runtime.decide.picture import Picture
from mailplan.runtime.rules.index import RuleIndex

# Actions after which the message is not delivered where it was going.
DIVERTING = frozenset({"Store in", "Redirect to", "Forward to", "Discard", "Reject with"})
# Actions that end rule processing.
ENDING = frozenset({"Stop Processing", "Discard", "Reject with"})
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_PARSER = BytesHeaderParser(policy=compat32)
_SYSTEM_SENDERS = re.compile(
    r"(mailer-daemon|postmaster|listserv|majordomo|owner-.*|.*-request|.*-owner|.*-bounces?)@",
    re.IGNORECASE,
)


class Headers:
    """The header block of one message, parsed once; derived values are computed on demand."""

    __slots__ = ("_addresses", "_fields", "_lowered")

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields: dict[str, list[str]] = {}
        for name, value in fields:
            self._fields.setdefault(name.lower(), []).append(value)
        self._addresses: dict[str, tuple[tuple[str, str], ...]] = {}
        self._lowered: dict[tuple[str, ...], tuple[str, ...]] = {}

    @classmethod
    def parse(cls, message: bytes) -> Headers:
        """The headers of `message` (only its header block is read)."""
        parsed = _PARSER.parsebytes(header_block(message), headersonly=True)
        return cls((name, _unfold(value)) for name, value in parsed.raw_items())

    def names(self) -> Iterable[str]:
        return self._fields.keys()

    def all(self, name: str) -> list[str]:
        """Every value of the field `name` (case-insensitive), encoded words decoded."""
        return [_decoded(value) for value in self._fields.get(name.lower(), ())]

    def get(self, name: str) -> str | None:
        values = self._fields.get(name.lower())
        return _decoded(values[0]) if values else None

    def mailboxes(self, name: str) -> tuple[tuple[str, str], ...]:
        """(display name, address) of every address in the fields `name`."""
        key = name.lower()
        found = self._addresses.get(key)
        if found is None:
            pairs = getaddresses(self._fields.get(key, []))
            found = tuple((_decoded(n), a) for n, a in pairs if a)
            self._addresses[key] = found
        return found

    def addresses(self, *names: str) -> tuple[str, ...]:
        return tuple(address for name in names for _, address in self.mailboxes(name))

    def lowered(self, kind: str, *names: str) -> tuple[str, ...]:
        """What rules match pictures against, in lower case, computed once per message:
        the `addresses`, the display `names`, or the `values` of the fields `names`."""
        key = (kind, *names)
        found = self._lowered.get(key)
        if found is None:
            if kind == "addresses":
                found = tuple(a.lower() for a in self.addresses(*names))
            elif kind == "names":
                found = tuple(n.lower() for n, _ in self.mailboxes(names[0]) if n)
            elif kind == "ids":
                found = tuple(v.strip().strip("<>").lower() for v in self.all(names[0]))
            else:
                found = tuple(v.lower() for v in self.all(names[0]))
            self._lowered[key] = found
        return found


def _unfold(value: str) -> str:
    text = _FOLD.sub("", value).strip()
    if not text.isascii():  # raw UTF-8 (SMTPUTF8) arrives surrogate-escaped
        text = text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    return text


def _decoded(value: str) -> str:
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, ValueError):
        return value


def _no_mailboxes(name: str) -> bool:
    return False


@dataclass(frozen=True)
class Facts:
    """What rules may ask about one message: its headers, envelope, size and origin.

    `sender` is the envelope sender ("" is the null sender of bounces); `sources` holds
    `remote` or `local` (made inside the server), and `trusted` (a Client IP) and
    `authenticated` when they apply; `now` is the server's local time; `mailboxes`
    says whether the account being delivered to has a folder of that name.
    """

    headers: Headers
    sender: str
    recipients: tuple[str, ...]
    size: int
    sources: frozenset[str]
    tls: bool
    submit_address: str
    now: datetime
    mailboxes: Callable[[str], bool] = field(default=_no_mailboxes)


def automated(headers: Headers, sender: str) -> str | None:
    """Why a message was not written by a person (RFC 3834), or None when it was."""
    if not sender:
        return "a bounce (null sender)"
    if _SYSTEM_SENDERS.match(sender):
        return f"{sender} is a mail system or mailing list"
    submitted = headers.get("auto-submitted")
    if submitted is not None and submitted.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {submitted}"
    precedence = (headers.get("precedence") or "").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    listed = next((name for name in headers.names() if name.startswith("list-")), None)
    if listed is not None:
        return f"a mailing list message ({listed})"
    return None


@dataclass(frozen=True)
class Directive:
    """One action to carry out, the rule that asked for it, and where it is written."""

    rule: str
    action: RuleAction

    @property
    def source(self) -> Source:
        return self.action.source

    def __str__(self) -> str:
        return f"{self.action.source} rule {self.rule!r}: {self.action}"


@dataclass(frozen=True)
class Outcome:
    """What the rules decided: the actions in order, the rules that fired, and whether
    processing stopped (Stop Processing, Discard, Reject with)."""

    steps: tuple[Directive, ...]
    fired: tuple[Rule, ...]
    stopped: bool

    @property
    def keep(self) -> bool:
        """Whether the message still goes where it was going (no action diverted it)."""
        return not any(step.action.verb in DIVERTING for step in self.steps)

    @property
    def rejection(self) -> Directive | None:
        return next((s for s in self.steps if s.action.verb == "Reject with"), None)

    def actions(self) -> tuple[str, ...]:
        return tuple(str(step.action) for step in self.steps)

    def log(self) -> list[str]:
        """One line per decision, naming the rule and its place, for the server's log."""
        return [str(step) for step in self.steps]


Predicate = Callable[[Facts], bool]


class Rules:
    """Rule sets merged in the order they run: higher priority first, then the earlier
    set (domain rules before account rules), then the order written. Inactive rules
    are kept in the plan and never applied. `indexed` (the default) skips, per message,
    the rules that `RuleIndex` proves cannot fire."""

    def __init__(self, *sets: RuleSet | None, indexed: bool = True) -> None:
        ranked = [
            ((-rule.priority, rank, index), rule)
            for rank, rule_set in enumerate(s for s in sets if s is not None)
            for index, rule in enumerate(rule_set.rules)
            if not rule.inactive
        ]
        ranked.sort(key=lambda item: item[0])
        self.rules = tuple(rule for _, rule in ranked)
        self._compiled = tuple(
            (rule, tuple(predicate(condition) for condition in rule.conditions))
            for rule in self.rules
        )
        index = RuleIndex(self.rules, _subjects) if indexed else None
        self._index = index if index is not None and index.useful else None

    def evaluate(self, facts: Facts) -> Outcome:
        steps: list[Directive] = []
        fired: list[Rule] = []
        for rule, conditions in self._candidates(facts):
            if not all(holds(facts) for holds in conditions):
                continue
            fired.append(rule)
            for action in rule.actions:
                steps.append(Directive(rule.name, action))
                if action.verb in ENDING:
                    return Outcome(tuple(steps), tuple(fired), True)
        return Outcome(tuple(steps), tuple(fired), False)

    def candidates(self, facts: Facts) -> tuple[Rule, ...]:
        """The rules that could fire for this message (all, without an index), in order."""
        return tuple(rule for rule, _ in self._candidates(facts))

    def _candidates(self, facts: Facts) -> Sequence[tuple[Rule, tuple[Predicate, ...]]]:
        if self._index is None:
            return self._compiled
        return [self._compiled[i] for i in self._index.candidates(facts)]


class RuleBook:
    """The rules of a plan, compiled once: server rules, and per account the domain's
    rules with the account's."""

    def __init__(self, plan: Plan) -> None:
        self.server = Rules(plan.server_rules)
        self._local: dict[str, Rules] = {}
        for domain in plan.domains:
            for account in domain.accounts:
                if domain.rules is not None or account.rules is not None:
                    self._local[f"{account.name}@{domain.name}"] = Rules(
                        domain.rules, account.rules
                    )
        self._none = Rules()

    def local(self, account: str) -> Rules:
        """The rules LOCAL delivery runs for `account` (name@domain, as the router's queue)."""
        return self._local.get(account.lower(), self._none)


def predicate(condition: RuleCondition) -> Predicate:
    """The condition compiled: a function of the facts that says whether it holds."""
    field_name = condition.field
    operation = condition.operation
    number = condition.number
    values = condition.values
    if number is not None:
        measure = _MEASURES[field_name]
        if operation == "greater than":
            return lambda facts: measure(facts) > number
        return lambda facts: measure(facts) < number
    words = frozenset(v.lower() for v in values)
    negated = operation in ("is not", "not in")
    simple = _WORDS.get(field_name)
    if simple is not None:
        return lambda facts: (not words.isdisjoint(simple(facts))) != negated
    if field_name == "Human Generated":
        human = values[0] == "yes"
        return lambda facts: (automated(facts.headers, facts.sender) is None) == human
    if field_name == "Existing Mailbox":
        return lambda facts: any(facts.mailboxes(name) for name in values) != negated
    matches = _matcher(values)
    subjects = _subjects(condition)
    if field_name in ("Each To or Cc", "Each Recipient"):
        return lambda facts: (
            bool(found := subjects(facts)) and all(matches(s) != negated for s in found)
        )
    if field_name in ("Any To or Cc", "Any Recipient"):
        return lambda facts: any(matches(s) != negated for s in subjects(facts))
    if negated:
        return lambda facts: not any(map(matches, subjects(facts)))
    return lambda facts: any(map(matches, subjects(facts)))


def _matcher(values: Sequence[str]) -> Callable[[str], bool]:
    """Whether a lower-case subject matches one of the `*` pictures `values`."""
    tests = [_test(value.lower()) for value in values]
    if len(tests) == 1:
        return tests[0]
    return lambda subject: any(test(subject) for test in tests)


def _test(picture: str) -> Callable[[str], bool]:
    """One picture as the cheapest test that decides it (the common shapes have one)."""
    stars = picture.count("*")
    inner = picture.strip("*")
    if stars == 0:
        return picture.__eq__
    if "*" not in inner:
        if picture == "*" * stars:
            return lambda subject: True
        if stars == 2 and picture[0] == picture[-1] == "*":
            return lambda subject: inner in subject
        if stars == 1 and picture[-1] == "*":
            return lambda subject: subject.startswith(inner)
        if stars == 1 and picture[0] == "*":
            return lambda subject: subject.endswith(inner)
    compiled = Picture.of(picture)
    return lambda subject: compiled.match(subject) is not None


def _minutes(facts: Facts) -> int:
    return facts.now.hour * 60 + facts.now.minute


def _date(facts: Facts) -> int:
    return facts.now.year * 10000 + facts.now.month * 100 + facts.now.day


_MEASURES: dict[str, Callable[[Facts], int]] = {
    "Message Size": lambda facts: facts.size,
    "Time Of Day": _minutes,
    "Current Date": _date,
}
_WORDS: dict[str, Callable[[Facts], Iterable[str]]] = {
    "Source": lambda facts: facts.sources,
    "Security": lambda facts: ("tls",) if facts.tls else ("none",),
    "Current Day": lambda facts: (DAYS[facts.now.weekday()],),
}


def _subjects(condition: RuleCondition) -> Callable[[Facts], Sequence[str]]:
    """What a condition's pictures are matched against, in lower case (empty when the
    field is absent)."""
    name = condition.field
    if name in ("From", "Sender", "To", "Cc", "Reply-To"):
        header = name.lower()
        return lambda facts: facts.headers.lowered("addresses", header)
    if name in ("Any To or Cc", "Each To or Cc"):
        return lambda facts: facts.headers.lowered("addresses", "to", "cc")
    if name == "Return-Path":
        return lambda facts: (facts.sender.lower(),) if facts.sender else ()
    if name in ("Any Recipient", "Each Recipient"):
        return lambda facts: tuple(r.lower() for r in facts.recipients)
    if name == "'From' Name":
        return lambda facts: facts.headers.lowered("names", "from")
    if name == "Message-ID":
        return lambda facts: facts.headers.lowered("ids", "message-id")
    if name == "Submit Address":
        return lambda facts: (facts.submit_address.lower(),) if facts.submit_address else ()
    if name == "Current Date":
        return lambda facts: (facts.now.date().isoformat(),)
    field = condition.header if name == "Header Field" else "subject"
    assert field is not None
    return lambda facts: facts.headers.lowered("values", field)
