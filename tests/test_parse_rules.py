"""compiler/parse_rules.py and compiler/rulesets.py: rule files into the plan's rules."""

from __future__ import annotations

import pytest

from mailplan.compiler.diagnostics import Diagnostic
from mailplan.compiler.parse_rules import rule_file
from mailplan.compiler.rulesets import rulesets
from mailplan.plan.model import RuleSet
from tests.rulekit import compiled

EVERYTHING = """\
# every condition and every action, as an administrator might write them
rule "All conditions" priority 9
  if   From is *@remote.test            # a comment after a value
  AND  sender is not agent@*
  and  Return-Path in a@b.test, "c@d.test"
  and  To not in *@x.test
  and  Cc is *
  and  Any To or Cc is *@example.com
  and  each to or cc is *
  and  Reply-To is *
  and  'From' Name is "Bob *"
  and  Subject is "*\\"quoted\\"*"
  and  Message-ID is *@remote.test
  and  Message Size greater than 10K
  and  Header Field is "X-Spam-Flag: YES*"
  and  Any Recipient is alice@*
  and  Each Recipient is *@example.com
  and  Source in Trusted, authenticated
  and  Security is TLS
  and  Submit Address is 192.0.2.*
  and  Time Of Day less than 9:30
  and  Current Date greater than 2026-01-31
  and  Current Day in mon, TUE, Wednesday
  and  Existing Mailbox is Archive
  and  Human Generated
then   Store in Archive/2026
  and  Redirect to a@b.test, c@d.test
  and  Forward to e@f.test
  and  Mirror to g@h.test
  and  Mark read, Flagged
  and  Add Header "X-Rule: all"
  and  Tag Subject "[rule]"
  and  Reply with "Away.\\nBack soon." once per 12h
  and  Reply to All with "Away."
  and  Execute "spam-report --quiet"
  and  Remember 'From' in Friends
  and  Copy Attachments into Files
  and  Reject with "550 5.7.1 no"
  and  Discard
  and  Stop Processing
rule Plain priority 1 inactive
  then discard
rule "Off" inactive
  then stop processing
"""


def test_every_condition_and_action_compiles_to_its_canonical_form() -> None:
    rules = compiled(EVERYTHING).rules
    first = rules[0]
    assert [str(c) for c in first.conditions] == [
        "From is *@remote.test",
        "Sender is not agent@*",
        "Return-Path in a@b.test, c@d.test",
        "To not in *@x.test",
        "Cc is *",
        "Any To or Cc is *@example.com",
        "Each To or Cc is *",
        "Reply-To is *",
        "'From' Name is \"Bob *\"",
        'Subject is "*\\"quoted\\"*"',
        "Message-ID is *@remote.test",
        "Message Size greater than 10K",
        'Header Field is "x-spam-flag: YES*"',
        "Any Recipient is alice@*",
        "Each Recipient is *@example.com",
        "Source in trusted, authenticated",
        "Security is tls",
        "Submit Address is 192.0.2.*",
        "Time Of Day less than 9:30",
        "Current Date greater than 2026-01-31",
        "Current Day in monday, tuesday, wednesday",
        "Existing Mailbox is Archive",
        "Human Generated is yes",
    ]
    numbers = {c.field: c.number for c in first.conditions if c.number is not None}
    assert numbers == {"Message Size": 10240, "Time Of Day": 570, "Current Date": 20260131}
    header = next(c for c in first.conditions if c.field == "Header Field")
    assert header.header == "x-spam-flag"
    assert [str(a) for a in first.actions] == [
        "Store in Archive/2026",
        "Redirect to a@b.test, c@d.test",
        "Forward to e@f.test",
        "Mirror to g@h.test",
        "Mark Seen, Flagged",
        'Add Header "X-Rule: all"',
        "Tag Subject [rule]",
        'Reply with "Away.\\nBack soon."',
        "Reply to All with Away.",
        'Execute "spam-report --quiet"',
        "Remember 'From' in Friends",
        "Copy Attachments into Files",
        'Reject with "550 5.7.1 no"',
        "Discard",
        "Stop Processing",
    ]
    periods = [a.period for a in first.actions if a.verb.startswith("Reply")]
    assert periods == [12 * 3600, 7 * 86400]
    assert first.actions[7].values == ("Away.\nBack soon.",)


def test_priorities_and_inactive_rules_are_kept() -> None:
    rules = compiled(EVERYTHING).rules
    assert [(r.name, r.priority, r.inactive) for r in rules] == [
        ("All conditions", 9, False),
        ("Plain", 1, True),
        ("Off", 0, True),
    ]
    assert rules[0].source.line == 2 and rules[0].actions[0].source.line == 26


def _problems(text: str) -> list[Diagnostic]:
    parsed, problems = rule_file(text, "t.rules")
    _, trouble = rulesets({"t.rules": parsed})
    return problems + trouble


@pytest.mark.parametrize(
    ("line", "code", "column", "message"),
    [
        ("  if Colour is red", "MP602", 6, "unknown condition field 'Colour'"),
        (
            "  if Subjekt is red",
            "MP602",
            6,
            "unknown condition field 'Subjekt': did you mean 'Subject'?",
        ),
        (
            "  if Subject equals x",
            "MP601",
            14,
            "unexpected 'equals': expected an operation "
            "(is, is not, in, not in, greater than, less than)",
        ),
        (
            "  if Subject is",
            "MP601",
            16,
            'line ends too early: expected a "quoted value" or a value',
        ),
        (
            "  if Subject is a, ",
            "MP601",
            19,
            'line ends too early: expected a "quoted value" or a value',
        ),
        (
            "  if Subject",
            "MP604",
            13,
            "Subject needs an operation and a value (e.g. `Subject is VALUE`)",
        ),
        (
            "  if Subject is a, b",
            "MP604",
            20,
            "'is' takes one value; for a list write `in` or `not in`",
        ),
        (
            "  if Current Day greater than 3",
            "MP604",
            18,
            "Current Day cannot be compared with 'greater than': use is or is not or in or not in",
        ),
        (
            "  if Current Day is Funday",
            "MP605",
            21,
            "Current Day is one of: monday, tuesday, wednesday, thursday, friday, saturday, "
            "sunday (not 'Funday')",
        ),
        (
            "  if Current Date less than 2026-02-30",
            "MP605",
            29,
            "'2026-02-30' is not a date (YYYY-MM-DD)",
        ),
        ("  if Security is ssl", "MP605", 18, "Security is one of: tls, none (not 'ssl')"),
        (
            "  if Human Generated is maybe",
            "MP605",
            25,
            "Human Generated is one of: yes, no (not 'maybe')",
        ),
        (
            '  if Header Field in "A: x", "B: y"',
            "MP605",
            22,
            "one Header Field condition reads one header field",
        ),
    ],
)
def test_condition_problems(line: str, code: str, column: int, message: str) -> None:
    text = f'rule "R" priority 5\n{line}\n  then Discard\n'
    assert [(d.code, d.line, d.column, d.message) for d in _problems(text)] == [
        (code, 2, column, message)
    ]


@pytest.mark.parametrize(
    ("line", "code", "column", "message"),
    [
        ("  then Frobnicate", "MP603", 8, "unknown action 'Frobnicate'"),
        (
            "  then Store into Junk",
            "MP603",
            8,
            "unknown action 'Store into Junk': did you mean 'Store in'?",
        ),
        ("  then Discard now", "MP605", 16, "Discard takes no value"),
        ("  then Store in", "MP605", 16, "Store in takes one value"),
        ("  then Store in a, b", "MP605", 20, "Store in takes one value"),
        (
            "  then Store in ../etc",
            "MP605",
            17,
            "'../etc' is not a folder name (parts separated by /, none empty or starting with .)",
        ),
        ("  then Redirect to", "MP605", 19, "Redirect to needs one or more addresses"),
        (
            "  then Forward to bob",
            "MP605",
            19,
            "'bob' is not a mail address (expected name@domain)",
        ),
        ("  then Mark", "MP605", 12, "Mark needs a flag: Answered, Deleted, Draft, Flagged, Seen"),
        (
            '  then Reject with "220 hello"',
            "MP605",
            20,
            "a rejection's reply code is 4xx or 5xx, not 220",
        ),
        (
            '  then Add Header "no colon"',
            "MP605",
            19,
            "'no colon' is not a header field (`Name: value` on one line)",
        ),
        ('  then Tag Subject ""', "MP605", 20, "Tag Subject needs a value that is not empty"),
        (
            '  then Tag Subject "[x]\\nBcc: all@example.com"',
            "MP605",
            20,
            "Tag Subject takes a value on one line, without control characters",
        ),
        (
            '  then Reject with "550 no\\r\\n250 ok"',
            "MP605",
            20,
            "Reject with takes a value on one line, without control characters",
        ),
        (
            "  then Discard once per 1d",
            "MP605",
            25,
            "`once per` belongs to Reply with and Reply to All with",
        ),
        (
            '  then Reply with "x" once per ever',
            "MP605",
            32,
            "'ever' is not a duration (5m, 4h, 1d, 1w)",
        ),
    ],
)
def test_action_problems(line: str, code: str, column: int, message: str) -> None:
    text = f'rule "R" priority 5\n{line}\n'
    assert [(d.code, d.line, d.column, d.message) for d in _problems(text)] == [
        (code, 2, column, message)
    ]


def test_structure_problems_are_each_reported() -> None:
    text = """\
then Discard
rule "A" priority 5
  and Subject is x
  if Subject is y
  if Subject is z
  then Discard
  then Stop Processing
  if From is q
  and Subject is late
whatever
rule "B" priority 0
rule "a" priority 5
  then Discard
"""
    assert [(d.line, d.code, d.message) for d in _problems(text)] == [
        (1, "MP601", "'then' outside a rule: a rule starts with `rule NAME priority N`"),
        (3, "MP601", "`and` with nothing before it: the first condition starts with `if`"),
        (5, "MP601", "a rule has one `if`; its other conditions start with `and`"),
        (7, "MP601", "a rule has one `then`; its other actions start with `and`"),
        (8, "MP601", "conditions come before the actions: move this `if` above the `then`"),
        (9, "MP601", "conditions come before the actions: move this line above the `then`"),
        (10, "MP601", "a line of a rule file starts with rule, if, and or then"),
        (11, "MP601", "rule 'B' has no actions: add a line `then ACTION`"),
        (11, "MP606", "priority 0 is not 1 to 9 (higher runs first; or write `inactive`)"),
        (12, "MP607", "duplicate rule name 'a' (also on line 2)"),
    ]


def test_a_rule_whose_condition_did_not_parse_is_left_out() -> None:
    parsed, problems = rule_file('rule "R" priority 5\n  if Subject is "x\n  then Discard\n', "t")
    sets, _ = rulesets({"t": parsed})
    assert [d.message for d in problems] == ['a quoted value is not closed: it ends with "']
    assert sets["t"] == RuleSet("t", ())


def test_the_lines_of_a_rule_whose_header_is_broken_join_no_other_rule() -> None:
    text = (
        'rule "A" priority 5\n  then Mark Seen\n'
        'rule "B" priority\n  if Subject is x\n  then Discard\n  and Frob\n'
    )
    parsed, problems = rule_file(text, "t")
    assert [(d.line, d.code) for d in problems] == [(3, "MP601"), (6, "MP603")]
    assert [(r.header.name.value, len(r.actions)) for r in parsed] == [("A", 1)]


@pytest.mark.parametrize("separator", ["\f", "\x85", "\u2028", "\x1c", "\v"])
def test_lines_are_counted_as_editors_count_them(separator: str) -> None:
    """Only LF, CRLF and CR end a line; a form feed, NEL or U+2028 inside one does not."""
    text = f'rule "a" priority 5\n  if Subject is "x{separator}y"\n  then Discard\n  and Bogus\n'
    assert [(p.line, p.message) for p in _problems(text)] == [(4, "unknown action 'Bogus'")]


@pytest.mark.parametrize(
    ("line", "code", "column", "message"),
    [
        (
            "  then Di\u017fcard",
            "MP603",
            8,
            "unknown action 'Di\u017fcard': did you mean 'Discard'?",
        ),
        (
            "  and Ex\u0131st\u0131ng Mailbox is yes",
            "MP602",
            7,
            "unknown condition field 'Ex\u0131st\u0131ng Mailbox': "
            "did you mean 'Existing Mailbox'?",
        ),
    ],
)
def test_keywords_are_case_insensitive_in_ascii_only(
    line: str, code: str, column: int, message: str
) -> None:
    """U+017F (long s) and U+0131 (dotless i) fold to `s` and `i` in Unicode, not in keywords."""
    text = f'rule "a" priority 5\n  if Subject is "x"\n{line}\n'
    problems = _problems(text)
    assert [(p.code, p.line, p.column, p.message) for p in problems][:1] == [
        (code, 3, column, message)
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('rule "a" priority ' + "9" * 5000, "priority 9999999999… is not 1 to 9"),
        ('rule "a" priority 0012', "priority 12 is not 1 to 9"),
    ],
)
def test_priorities_of_any_length_are_reported(header: str, message: str) -> None:
    problems = _problems(f'{header}\n  if Subject is "x"\n  then Discard\n')
    assert [(p.code, p.message.split(" (")[0]) for p in problems] == [("MP606", message)]


def test_a_size_of_thousands_of_digits_is_no_size() -> None:
    digits = "9" * 5000
    problems = _problems(
        f'rule "a" priority 5\n  if Message Size greater than {digits}\n  then Discard\n'
    )
    assert [(p.code, p.column) for p in problems] == [("MP605", 32)]
    assert problems[0].message.endswith("is not a size (bytes, or a number followed by K, M or G)")
