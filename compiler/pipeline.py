"""The compiler's pipeline: the passes in order, and the checks run over the plan.

    load -> schema -> parse -> parse_rules -> resolve -> resolve_dns -> resolve_engines -> checks
    (then plan.codec freezes the plan)

The order of these tuples is the order in which the compiler works.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mailplan.compiler.check_dns import check_dns
from mailplan.compiler.check_listeners import check_listeners
from mailplan.compiler.check_names import check_names
from mailplan.compiler.check_relay import check_relay
from mailplan.compiler.check_routing import check_routing
from mailplan.compiler.check_rules import check_rules
from mailplan.compiler.check_tests import check_tests
from mailplan.compiler.diagnostics import Diagnostic, has_errors
from mailplan.compiler.load import load
from mailplan.compiler.parse import parse
from mailplan.compiler.parse_rules import parse_rules
from mailplan.compiler.resolve import resolve
from mailplan.compiler.resolve_dns import resolve_dns
from mailplan.compiler.resolve_engines import resolve_engines
from mailplan.compiler.schema import schema
from mailplan.compiler.unit import Unit
from mailplan.plan.model import Plan
from mailplan.runtime.decide.router import Router

Check = Callable[[Plan, Router], list[Diagnostic]]

CHECKS: tuple[Check, ...] = (
    check_names,
    check_routing,
    check_relay,
    check_listeners,
    check_rules,
    check_dns,
    check_tests,
)


def checks(unit: Unit) -> Unit:
    """Run every check over the resolved plan; a plan with errors is not handed on."""
    if unit.plan is None:
        return unit
    router = Router(unit.plan)
    problems = [problem for check in CHECKS for problem in check(unit.plan, router)]
    unit = unit.report(*problems)
    return replace(unit, plan=None) if has_errors(unit.diagnostics) else unit


PASSES: tuple[Callable[[Unit], Unit], ...] = (
    schema,
    parse,
    parse_rules,
    resolve,
    resolve_dns,
    resolve_engines,
    checks,
)


def compile_site(site_dir: Path) -> Unit:
    """Compile the site in `site_dir`: a unit with a plan, or with the reasons there is none."""
    collecting = gc.isenabled()
    gc.disable()  # a big site makes millions of objects that live to the end: no garbage
    try:
        unit = load(site_dir)
        for step in PASSES:
            unit = step(unit)
    finally:
        if collecting:
            gc.enable()
    return unit
