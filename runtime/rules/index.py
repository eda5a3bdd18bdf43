"""An index that tells, for one message, which rules could fire, so that a thousand
rules cost little more than the few that concern the message.

A rule is indexed by one of its conditions that must match a picture (`is` or `in`
on a field of text or addresses, where every picture has a run of three or more
characters without `*`): the message can satisfy it only if the field contains one
of those runs, and so contains each of their trigrams. The index maps the least
common trigram of each run to the rules that need it; a message's candidates are
the rules whose trigram occurs in the field, plus every rule that has no such
condition. Candidates are then evaluated in full, in order: the index only skips
rules that cannot fire, never decides one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mailplan.plan.model import Rule, RuleCondition

if TYPE_CHECKING:
    from mailplan.runtime.rules.engine import Facts

Subjects = Callable[["Facts"], Sequence[str]]
SubjectsOf = Callable[[RuleCondition], Subjects]
INDEXED = frozenset(
    {"From", "Sender", "Return-Path", "To", "Cc", "Any To or Cc", "Each To or Cc", "Reply-To"}
    | {"'From' Name", "Subject", "Message-ID", "Header Field", "Any Recipient"}
    | {"Each Recipient", "Submit Address"}
)


def _runs(condition: RuleCondition) -> list[str] | None:
    """The longest literal run of each picture, or None when one has none of 3 characters."""
    if condition.field not in INDEXED or condition.operation not in ("is", "in"):
        return None
    runs = [max(value.lower().split("*"), key=len) for value in condition.values]
    return runs if runs and all(len(run) >= 3 for run in runs) else None


class RuleIndex:
    def __init__(self, rules: Sequence[Rule], subjects_of: SubjectsOf) -> None:
        keyed: list[tuple[int, RuleCondition, list[str]]] = []
        always: list[int] = []
        for position, rule in enumerate(rules):
            found = next(
                ((c, runs) for c in rule.conditions if (runs := _runs(c)) is not None), None
            )
            if found is None:
                always.append(position)
            else:
                keyed.append((position, *found))
        counts = Counter(
            run[i : i + 3] for _, _, runs in keyed for run in runs for i in range(len(run) - 2)
        )
        tables: dict[tuple[str, str | None], tuple[Subjects, dict[str, list[int]]]] = {}
        for position, condition, runs in keyed:
            key = (condition.field, condition.header)
            if key not in tables:
                tables[key] = (subjects_of(condition), {})
            table = tables[key][1]
            for run in runs:
                trigram = min((run[i : i + 3] for i in range(len(run) - 2)), key=counts.__getitem__)
                table.setdefault(trigram, []).append(position)
        self.always = frozenset(always)
        self.tables = tuple(tables.values())
        self.useful = bool(keyed)

    def candidates(self, facts: Facts) -> list[int]:
        """The positions of the rules that could fire for this message, in order."""
        found = set(self.always)
        for subjects, table in self.tables:
            for subject in subjects(facts):
                for i in range(len(subject) - 2):
                    hit = table.get(subject[i : i + 3])
                    if hit is not None:
                        found.update(hit)
        return sorted(found)
