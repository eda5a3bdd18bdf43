"""Routing check: cycles of rewrites that can be found statically, and records that never fire.

A loop is found by routing a witness of every record, forwarder and mail-to-unknown
route with the runtime's router. A record never fires when an earlier record, for
every kind of address it serves, matches everything it matches: tested by matching
the earlier picture against the later one with each `*` as a symbol no picture holds.
"""

from __future__ import annotations

from mailplan.compiler.diagnostics import Diagnostic, error, warning
from mailplan.plan.model import Pattern, Plan, Route, Source
from mailplan.runtime.decide.address import Address, parse
from mailplan.runtime.decide.router import MAX_REWRITES, Decision, Router

FRESH = "\x00"


def check_routing(plan: Plan, router: Router) -> list[Diagnostic]:
    return _loops(plan, router) + _shadowed(plan, router)


def witness(pattern: Pattern, star: str = "x", domain_star: str | None = None) -> Address:
    """An address that `pattern` matches: each `*` becomes `star` (`domain_star` in the domain)."""
    if pattern.kind == "domain":
        return Address(star, pattern.picture.replace("*", domain_star or star))
    local, _, domain = pattern.picture.rpartition("@")
    return Address(local.replace("*", star), domain.replace("*", domain_star or star))


def _witness_text(pattern: Pattern) -> str:
    """`str(witness(pattern))`, without making the address (an `x` adds no `@`)."""
    if pattern.kind == "domain":
        return "x@" + pattern.picture.replace("*", "x")
    return pattern.picture.replace("*", "x")


def _loops(plan: Plan, router: Router) -> list[Diagnostic]:
    starts: list[tuple[Source, str]] = [(r.source, _witness_text(r.left)) for r in plan.routes]
    for domain in plan.domains:
        starts += [(f.source, f"{f.name}@{domain.name}") for f in domain.forwarders]
        if domain.unknown.action == "route":
            starts.append((domain.unknown.source, f"any-unknown-name@{domain.name}"))
    reported: set[frozenset[Source]] = set()
    problems = []
    ends = _Ends(router)
    for source, address in starts:
        if ends.surely(address):
            continue
        routing = router.route(address)
        if routing.status != "5.4.6":
            continue
        places = frozenset(step.source for step in routing.steps if step.source is not None)
        if places in reported:
            continue
        reported.add(places)
        first = min(places, key=lambda s: (s.file, s.line)) if places else source
        lines = ", ".join(str(p) for p in sorted(places, key=lambda s: (s.file, s.line)))
        message = f"{routing.reason} ({lines})"
        problems.append(error(first.file, first.line, first.column, "MP301", message))
    return problems


class _Ends:
    """The addresses whose routing surely ends without a loop, worked out step by step and
    remembered. The witnesses of a big table mostly rewrite to a few addresses (an
    account, a domain), whose own routing is then followed once rather than once per
    record. It is never wrong the other way: an address it is not sure of is routed in
    full by `Router.route`, and only that reports a loop, in its words."""

    def __init__(self, router: Router) -> None:
        self.router = router
        # text -> its end: (its key, the end of the address it rewrites to, steps), for
        # routings that end without a loop; nothing is remembered of the others, which
        # are rare and routed in full. The keys on the way are linked, not copied into a
        # set for every address: a chain has at most MAX_REWRITES + 1 of them.
        self.known: dict[str, _End] = {}

    def surely(self, text: str) -> bool:
        return self._chain(text, set()) is not None

    def _chain(self, text: str, under_way: set[str]) -> _End | None:
        known = self.known.get(text)
        if known is not None:
            return known
        if text in under_way or len(under_way) > MAX_REWRITES:
            return None  # a loop, or too many rewrites to follow here
        under_way.add(text)
        address = parse(text, self.router.main_domain)
        outcome = self.router.step(address, "mail")
        key = address.key
        if isinstance(outcome, Decision):
            result: _End = (key, None, 1)
        else:
            after = outcome.step.after
            rest = self.known.get(after) or self._chain(after, under_way)
            # Router.route refuses a step once more than MAX_REWRITES came before it
            if rest is None or rest[2] > MAX_REWRITES or _passes(rest, key):
                return None
            result = (key, rest, rest[2] + 1)
        self.known[text] = result
        return result


# How the routing of an address ends: its key, the end of the next address, the steps.
_End = tuple[str, "_End | None", int]


def _passes(end: _End | None, key: str) -> bool:
    """Whether the routing that ends so passes through the address `key`."""
    while end is not None:
        if end[0] == key:
            return True
        end = end[1]
    return False


def _shadowed(plan: Plan, router: Router) -> list[Diagnostic]:
    problems = []
    index = router.index
    for j, route in enumerate(plan.routes):
        probe = witness(route.left, FRESH)
        kinds = set(route.kinds)
        covering = [i for i in index.matching(probe, j) if kinds <= set(plan.routes[i].kinds)]
        if covering:
            earlier: Route = plan.routes[min(covering)]
            message = (
                f"this record can never fire: {earlier.source} `{earlier.text}` comes first "
                "and matches every address that this one matches"
            )
            problems.append(
                warning(route.source.file, route.source.line, route.source.column, "MP302", message)
            )
    return problems
