"""Test-case check: the DNS a `tests:` case brings must be zone-file text that parses."""

from __future__ import annotations

import dns.exception
import dns.zone

from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.plan.model import Plan
from mailplan.runtime.decide.router import Router
from mailplan.runtime.dns.lookup import zone_of


def check_tests(plan: Plan, router: Router) -> list[Diagnostic]:
    problems = []
    for case in plan.tests:
        for zone in case.dns:
            try:
                dns.zone.from_text(zone_of(zone.origin, zone.records), relativize=False)
            except (dns.exception.DNSException, ValueError) as exc:
                where = case.source
                message = f"test {case.name!r}: the records of {zone.origin} do not parse: {exc}"
                problems.append(error(where.file, where.line, where.column, "MP110", message))
    return problems
