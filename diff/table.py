"""Changes in the routing table (records by canonical text and position) and in the rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mailplan.diff.change import Change
from mailplan.plan.model import Plan, Route, Rule, RuleSet

RELAY_WHY = "a Relay: record makes what it produces relayable for any sender"


def routes(old: Plan, new: Plan) -> Iterator[Change]:
    """Records removed (where they were), added (where they are), and moved: the ones both
    tables have whose order among themselves changed."""
    before, after = [r.text for r in old.routes], [r.text for r in new.routes]
    for route in old.routes:
        if route.text not in after:
            yield Change("routes", f"removed {route.source} `{route.text}`")
    for route in new.routes:
        if route.text not in before:
            unsafe = RELAY_WHY if route.relay else None
            yield Change("routes", f"added {route.source} `{route.text}`", unsafe)
    yield from _moved(old.routes, new.routes)


def _moved(old: tuple[Route, ...], new: tuple[Route, ...]) -> Iterator[Change]:
    kept = {r.text for r in old} & {r.text for r in new}
    was = [r for r in old if r.text in kept]
    now = [r for r in new if r.text in kept]
    places = {r.text: i for i, r in enumerate(was)}
    for i, route in enumerate(now):
        if places.get(route.text) != i and route.text in places:
            before = was[places[route.text]].source
            yield Change(
                "routes", f"moved {before} -> {route.source} `{route.text}` (order changed)"
            )


def _rule_sets(plan: Plan) -> dict[str, RuleSet]:
    found: dict[str, RuleSet] = {}
    if plan.server_rules:
        found["server rules"] = plan.server_rules
    for domain in plan.domains:
        if domain.rules:
            found[f"rules of {domain.name}"] = domain.rules
        for account in domain.accounts:
            if account.rules:
                found[f"rules of {account.name}@{domain.name}"] = account.rules
    return found


def _shape(rule: Rule) -> tuple[Any, ...]:
    return (
        rule.priority,
        rule.inactive,
        tuple(str(c) for c in rule.conditions),
        tuple(str(a) for a in rule.actions),
    )


def rules(old: Plan, new: Plan) -> Iterator[Change]:
    """Rules added, removed or changed, by owner and name (a rule's file may move)."""
    before, after = _rule_sets(old), _rule_sets(new)
    for owner in sorted(before.keys() | after.keys()):
        was = {r.name: r for r in before[owner].rules} if owner in before else {}
        now = {r.name: r for r in after[owner].rules} if owner in after else {}
        for name in sorted(was.keys() | now.keys()):
            if name not in now:
                yield Change("rules", f"{owner}: rule {name!r} removed")
            elif name not in was:
                yield Change("rules", f"{owner}: rule {name!r} added ({now[name].source})")
            elif _shape(was[name]) != _shape(now[name]):
                yield Change("rules", f"{owner}: rule {name!r} changed ({now[name].source})")
