"""runtime/rules/engine.py: every condition, operation, priority, inactive rules, stop
processing."""

from __future__ import annotations

from typing import Any

import pytest

from mailplan.compiler.pipeline import compile_site
from mailplan.runtime.rules.engine import Headers, RuleBook, Rules
from tests.conftest import EXAMPLE
from tests.rulekit import MESSAGE, compiled, facts

NO_FROM = MESSAGE.replace("From: Bob Smith <bob@remote.test>\r\n", "")

# (condition, expected, message, fact overrides)
CONDITIONS: list[tuple[str, bool, str, dict[str, Any]]] = [
    ("From is *@remote.test", True, MESSAGE, {}),
    ("From is BOB@REMOTE.TEST", True, MESSAGE, {}),
    ("From is not *@remote.test", False, MESSAGE, {}),
    ('From in "*@a.test", *@remote.test', True, MESSAGE, {}),
    ("From not in *@a.test", True, MESSAGE, {}),
    ("From is *", False, NO_FROM, {}),
    ("From in *", False, NO_FROM, {}),
    ("From is not *", True, NO_FROM, {}),
    ("From not in *@remote.test", True, NO_FROM, {}),
    ("Sender is agent@*", True, MESSAGE, {}),
    ("Sender is *", False, NO_FROM, {"headers": Headers.parse(b"To: a@b\r\n\r\n")}),
    ("Return-Path is bob@remote.test", True, MESSAGE, {}),
    ("Return-Path is *", False, MESSAGE, {"sender": ""}),
    ("Return-Path is not *", True, MESSAGE, {"sender": ""}),
    ("To is carol@example.com", True, MESSAGE, {}),
    ("To is not carol@example.com", False, MESSAGE, {}),
    ("Cc is *@other.test", True, MESSAGE, {}),
    ("Any To or Cc is *@other.test", True, MESSAGE, {}),
    ("Any To or Cc is not *@example.com", True, MESSAGE, {}),
    ("Each To or Cc is *@example.com", False, MESSAGE, {}),
    ("Each To or Cc is *", True, MESSAGE, {}),
    ("Each To or Cc is not *@nowhere.test", True, MESSAGE, {}),
    ("Each To or Cc in *@example.com, *@other.test", True, MESSAGE, {}),
    ("Reply-To is list@*", True, MESSAGE, {}),
    ("'From' Name is Bob*", True, MESSAGE, {}),
    ('From Name is "bob smith"', True, MESSAGE, {}),
    ("'From' Name is *", False, "From: bob@remote.test\r\n\r\n", {}),
    ('Subject is "*café*"', True, MESSAGE, {}),
    ("Subject is cheap*", True, MESSAGE, {}),
    ("Subject is not cheap*", False, MESSAGE, {}),
    ("Subject in *rolex*, *watches*", True, MESSAGE, {}),
    ("Message-ID is abc123@remote.test", True, MESSAGE, {}),
    ("Message Size greater than 1K", True, MESSAGE, {"size": 2048}),
    ("Message Size less than 1K", False, MESSAGE, {"size": 2048}),
    ("Message Size greater than 2M", False, MESSAGE, {"size": 2048}),
    ('Header Field is "X-Spam-Flag: yes"', True, MESSAGE, {}),
    ('Header Field is "X-Other: *"', False, MESSAGE, {}),
    ('Header Field is not "X-Other: *"', True, MESSAGE, {}),
    ('Header Field in "x-spam-flag: no", "X-Spam-Flag: y*"', True, MESSAGE, {}),
    ("Any Recipient is alice@*", True, MESSAGE, {}),
    ("Each Recipient is *@example.com", True, MESSAGE, {}),
    ("Each Recipient is alice@*", False, MESSAGE, {}),
    ("Each Recipient is *", False, MESSAGE, {"recipients": ()}),
    ("Source is trusted", True, MESSAGE, {"sources": frozenset({"remote", "trusted"})}),
    ("Source is authenticated", False, MESSAGE, {}),
    ("Source in authenticated, trusted", True, MESSAGE, {"sources": frozenset({"trusted"})}),
    ("Source is local", False, MESSAGE, {}),
    ("Source is not local", True, MESSAGE, {}),
    ("Source is remote", True, MESSAGE, {}),
    ("Security is tls", True, MESSAGE, {"tls": True}),
    ("Security is none", False, MESSAGE, {"tls": True}),
    ("Security is not tls", True, MESSAGE, {}),
    ("Submit Address is 203.0.113.*", True, MESSAGE, {}),
    ("Submit Address not in 203.0.113.*", False, MESSAGE, {}),
    ("Time Of Day greater than 14:00", True, MESSAGE, {}),
    ("Time Of Day less than 14:00", False, MESSAGE, {}),
    ("Current Date is 2026-11-*", True, MESSAGE, {}),
    ("Current Date greater than 2026-12-01", False, MESSAGE, {}),
    ("Current Date less than 2026-12-01", True, MESSAGE, {}),
    ("Current Day is Thursday", True, MESSAGE, {}),
    ("Current Day in Sat, Sun", False, MESSAGE, {}),
    ("Current Day not in sat, sunday", True, MESSAGE, {}),
    ("Existing Mailbox is Archive", True, MESSAGE, {"mailboxes": {"Archive"}.__contains__}),
    ("Existing Mailbox is not Archive", False, MESSAGE, {"mailboxes": {"Archive"}.__contains__}),
    ("Existing Mailbox is Archive", False, MESSAGE, {}),
    ("Human Generated", True, MESSAGE, {}),
    ("Human Generated is no", False, MESSAGE, {}),
    ("Human Generated is not yes", False, MESSAGE, {}),
    ("Human Generated", False, "Precedence: bulk\r\n" + MESSAGE, {}),
    ("Human Generated", False, "Auto-Submitted: auto-replied\r\n" + MESSAGE, {}),
    ("Human Generated", True, "Auto-Submitted: no\r\n" + MESSAGE, {}),
    ("Human Generated", False, "List-Id: <x.example>\r\n" + MESSAGE, {}),
    ("Human Generated", False, MESSAGE, {"sender": ""}),
    ("Human Generated", False, MESSAGE, {"sender": "MAILER-DAEMON@remote.test"}),
    ("Human Generated", False, MESSAGE, {"sender": "owner-staff@lists.test"}),
]


@pytest.mark.parametrize(
    ("condition", "expected", "message", "overrides"),
    CONDITIONS,
    ids=[f"{c[0]}-{c[1]}" for c in CONDITIONS],
)
def test_each_condition_and_operation(
    condition: str, expected: bool, message: str, overrides: dict[str, Any]
) -> None:
    rules = Rules(compiled(f'rule "T" priority 5\n  if {condition}\n  then Discard\n'))
    outcome = rules.evaluate(facts(message, **overrides))
    assert bool(outcome.fired) is expected


def test_all_conditions_must_hold() -> None:
    text = (
        'rule "Both" priority 5\n  if From is *@remote.test\n  and Subject is nope\n'
        "  then Discard\n"
    )
    assert Rules(compiled(text)).evaluate(facts()).fired == ()


def test_a_rule_without_conditions_always_fires() -> None:
    outcome = Rules(compiled('rule "Always" priority 1\n  then Mark Seen\n')).evaluate(facts())
    assert [rule.name for rule in outcome.fired] == ["Always"]


RANKED = """\
rule "Low" priority 2
  then Add Header "X-Low: 1"
rule "High" priority 8
  then Add Header "X-High: 1"
rule "Off" priority 9 inactive
  then Discard
rule "Also off" inactive
  then Discard
rule "Middle" priority 5
  then Tag Subject [m]
"""


def test_higher_priority_first_and_inactive_rules_never_apply() -> None:
    outcome = Rules(compiled(RANKED)).evaluate(facts())
    assert [rule.name for rule in outcome.fired] == ["High", "Middle", "Low"]
    assert outcome.actions() == (
        'Add Header "X-High: 1"',
        "Tag Subject [m]",
        'Add Header "X-Low: 1"',
    )
    assert outcome.stopped is False


STOPPING = """\
rule "Spam" priority 7
  if Header Field is "X-Spam-Flag: YES"
  then Store in Junk
  and Stop Processing
  and Mark Seen
rule "Later" priority 3
  then Mark Flagged
"""


def test_stop_processing_ends_the_rules() -> None:
    outcome = Rules(compiled(STOPPING)).evaluate(facts())
    assert outcome.actions() == ("Store in Junk", "Stop Processing")
    assert outcome.stopped is True
    assert outcome.keep is False
    clean = facts(MESSAGE.replace("X-Spam-Flag: YES\r\n", ""))
    assert Rules(compiled(STOPPING)).evaluate(clean).actions() == ("Mark Flagged",)


@pytest.mark.parametrize("verb", ["Discard", 'Reject with "550 5.7.1 no thanks"'])
def test_discard_and_reject_end_the_rules(verb: str) -> None:
    text = f'rule "End" priority 5\n  then {verb}\nrule "After" priority 1\n  then Mark Seen\n'
    outcome = Rules(compiled(text)).evaluate(facts())
    assert outcome.stopped and outcome.keep is False
    assert [rule.name for rule in outcome.fired] == ["End"]


def test_rejection_is_found() -> None:
    text = 'rule "No" priority 5\n  then Reject with "550 5.7.1 no thanks"\n'
    step = Rules(compiled(text)).evaluate(facts()).rejection
    assert step is not None and step.action.values == ("550 5.7.1 no thanks",)


@pytest.mark.parametrize(
    ("verb", "keep"),
    [
        ("Store in Junk", False),
        ("Redirect to a@b.test", False),
        ("Forward to a@b.test", False),
        ("Mirror to a@b.test", True),
        ('Add Header "X-A: b"', True),
        ("Tag Subject [x]", True),
        ("Mark Flagged", True),
        ('Reply with "away"', True),
        ("Execute spam-report", True),
        ("Remember 'From' in Friends", True),
        ("Copy Attachments into Archive", True),
    ],
)
def test_which_actions_divert_the_message(verb: str, keep: bool) -> None:
    outcome = Rules(compiled(f'rule "A" priority 5\n  then {verb}\n')).evaluate(facts())
    assert outcome.keep is keep


def test_domain_rules_run_before_account_rules_at_equal_priority() -> None:
    domain = compiled(
        'rule "Domain five" priority 5\n  then Mark Seen\n'
        'rule "Domain two" priority 2\n  then Mark Draft\n',
        "domain.rules",
    )
    account = compiled(
        'rule "Account five" priority 5\n  then Mark Flagged\n'
        'rule "Account nine" priority 9\n  then Mark Answered\n',
        "alice.rules",
    )
    outcome = Rules(domain, account).evaluate(facts())
    names = [rule.name for rule in outcome.fired]
    assert names == ["Account nine", "Domain five", "Account five", "Domain two"]


def test_a_domain_rule_stops_the_account_rules() -> None:
    domain = compiled('rule "Stop" priority 5\n  then Stop Processing\n', "d.rules")
    account = compiled('rule "Mine" priority 4\n  then Mark Seen\n', "a.rules")
    outcome = Rules(domain, account).evaluate(facts())
    assert [rule.name for rule in outcome.fired] == ["Stop"]


def test_every_decision_names_its_rule_and_line() -> None:
    outcome = Rules(compiled(STOPPING, "rules/alice.rules")).evaluate(facts())
    assert outcome.log() == [
        "rules/alice.rules:3 rule 'Spam': Store in Junk",
        "rules/alice.rules:4 rule 'Spam': Stop Processing",
    ]


def test_the_rule_book_of_the_example_site() -> None:
    unit = compile_site(EXAMPLE)
    assert unit.plan is not None
    book = RuleBook(unit.plan)
    assert book.server.rules
    assert book.local("Recipient@example.com").rules
    assert book.local("nobody@example.com").rules == ()


def test_headers_are_parsed_from_the_header_block_only() -> None:
    headers = Headers.parse(b"Subject: one\r\n two\r\n\r\nSubject: not a header\r\n")
    assert headers.all("subject") == ["one two"]
    assert Headers.parse(b"Subject: caf\xc3\xa9\n\nbody").get("SUBJECT") == "café"


INDEXED = """\
rule "invoice" priority 5
  if Subject is "*invoice*"
  then Store in Invoices
rule "domain" priority 5
  if From in *@billing.example.net, *@bills.example.org
  then Mark Seen
rule "list" priority 4
  if Header Field is "X-List: weekly*"
  and Subject is not "*urgent*"
  then Tag Subject [weekly]
rule "everyone" priority 4
  if Each To or Cc is *@example.com
  then Mark Flagged
rule "short picture" priority 3
  if Subject is "*ab*"
  then Mark Draft
rule "negative" priority 3
  if From is not *@billing.example.net
  then Add Header "X-Outside: 1"
rule "always" priority 1
  then Mark Answered
"""


def _message(subject: str, sender: str, to: str, extra: str = "") -> str:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\r\nbody\r\n"


@pytest.mark.parametrize(
    "message",
    [
        _message("Your INVOICE 42", "a@billing.example.net", "alice@example.com"),
        _message("hello", "a@bills.example.org", "alice@example.com, b@else.test"),
        _message("about abba", "x@y.test", "alice@example.com", "X-List: Weekly news\r\n"),
        _message("urgent weekly", "x@y.test", "a@b.test", "X-List: weekly\r\n"),
        _message("", "", ""),
        "Subject: inv\r\n\r\n",
    ],
)
def test_the_index_never_changes_an_outcome(message: str) -> None:
    rule_set = compiled(INDEXED)
    about = facts(message)
    assert Rules(rule_set).evaluate(about) == Rules(rule_set, indexed=False).evaluate(about)


def test_the_index_skips_rules_that_cannot_fire() -> None:
    rules = Rules(compiled(INDEXED))
    about = facts(_message("hello", "x@y.test", "a@b.test"))
    names = [rule.name for rule in rules.candidates(about)]
    assert names == ["short picture", "negative", "always"]
    every = Rules(compiled(INDEXED), indexed=False).candidates(about)
    assert len(every) == 7
