"""Test helpers for rules: compile a rule file's text, and describe a message's facts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mailplan.compiler.parse_rules import rule_file
from mailplan.compiler.rulesets import rulesets
from mailplan.plan.model import RuleSet
from mailplan.runtime.rules.engine import Facts, Headers

MESSAGE = (
    "From: Bob Smith <bob@remote.test>\r\n"
    "To: alice@example.com, carol@example.com\r\n"
    "Cc: dave@other.test\r\n"
    "Reply-To: list@remote.test\r\n"
    "Sender: agent@remote.test\r\n"
    "Subject: Cheap watches =?utf-8?q?caf=C3=A9?=\r\n"
    "Message-ID: <abc123@remote.test>\r\n"
    "X-Spam-Flag: YES\r\n"
    "\r\n"
    "Hello.\r\n"
)
THURSDAY = datetime(2026, 11, 26, 14, 30)


def compiled(text: str, file: str = "t.rules") -> RuleSet:
    """The rule set of `text`, which must compile without a problem."""
    parsed, problems = rule_file(text, file)
    sets, trouble = rulesets({file: parsed})
    assert problems + trouble == []
    return sets[file]


def facts(message: str = MESSAGE, **overrides: Any) -> Facts:
    raw = message.encode()
    values: dict[str, Any] = {
        "headers": Headers.parse(raw),
        "sender": "bob@remote.test",
        "recipients": ("alice@example.com", "bob@example.com"),
        "size": len(raw),
        "sources": frozenset({"remote"}),
        "tls": False,
        "submit_address": "203.0.113.5",
        "now": THURSDAY,
    }
    return Facts(**(values | overrides))
