"""Names check: every account, list, pipe and domain that the site refers to exists, once.

References are resolved with the runtime's own router, so a forwarder, a list
member or a routing target is judged exactly as the server will treat it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.plan.model import Domain, Kind, Plan, Route, Source, TestCase
from mailplan.runtime.decide.address import idn_problem
from mailplan.runtime.decide.router import Router, Routing

RouteOf = Callable[[str, Kind], Routing]


def check_names(plan: Plan, router: Router) -> list[Diagnostic]:
    # each address routed once, however many times the site names it: the records of a
    # big table mostly rewrite to a few accounts
    route: RouteOf = functools.cache(router.route)
    problems = _main_domain(plan)
    problems += _domain_names(plan)
    problems += _domain_aliases(plan)
    for domain in plan.domains:
        problems += _clashes(domain)
        problems += _domain_references(domain, route)
    for record in plan.routes:
        problems += _route_target(record, router, route)
    for case in plan.tests:
        problems += _test_login(case, router)
    return problems


def _main_domain(plan: Plan) -> list[Diagnostic]:
    if plan.server.main_domain in {domain.name for domain in plan.domains}:
        return []
    message = f"main domain {plan.server.main_domain} is not one of the site's domains"
    return [_at(plan.server.source, "MP202", message)]


def _domain_references(domain: Domain, route: RouteOf) -> list[Diagnostic]:
    """Forwarder targets, list owners and list members of one domain that name nothing."""
    problems: list[Diagnostic] = []
    for forwarder in domain.forwarders:
        problems += _reference(route, forwarder.target, forwarder.source)
    for mailing_list in domain.lists:
        problems += _reference(route, mailing_list.owner, mailing_list.source)
        for member in mailing_list.members:
            problems += _reference(route, member.address, member.source)
    return problems


def _route_target(record: Route, router: Router, route: RouteOf) -> list[Diagnostic]:
    """A pipe or an address (without `*`) on the right of a routing record that is not there."""
    right = record.right
    if right.kind == "pipe" and right.value not in router.pipes:
        return [_at(record.right_source, "MP203", f"no such pipe: {right.value}")]
    if right.kind == "address" and "*" not in right.value:
        kind = "mail" if "mail" in record.kinds else record.kinds[0]
        return _reference(route, right.value, record.right_source, kind)
    return []


def _test_login(case: TestCase, router: Router) -> list[Diagnostic]:
    """A test that logs in (`authenticated:`) as something that is no account."""
    if case.authenticated is None or router.route(case.authenticated, "access").module == "LOCAL":
        return []
    message = f"no such account: {case.authenticated} (test {case.name!r} logs in with it)"
    return [_at(case.source, "MP201", message)]


def _reference(
    route: RouteOf, address: str, source: Source, kind: Kind = "mail"
) -> list[Diagnostic]:
    """A problem when `address`, in one of the site's domains, names nothing there."""
    routing = route(address, kind)
    if routing.module != "ERROR" or routing.status != "5.1.1":
        return []
    reason = routing.reason or ""
    if reason.startswith("no such list"):
        return [_at(source, "MP204", reason)]
    final = routing.steps[-1].before if routing.steps else address
    return [_at(source, "MP201", f"no such account: {final}")]


def _clashes(domain: Domain) -> list[Diagnostic]:
    """Two objects of one domain with one name, or an alias hiding another object."""
    problems: list[Diagnostic] = []
    seen: dict[str, tuple[str, Source]] = {}
    objects: list[tuple[str, str, Source]] = [
        ("account", a.name, a.source) for a in domain.accounts
    ]
    objects += [("forwarder", f.name, f.source) for f in domain.forwarders]
    objects += [("mailing list", m.name, m.source) for m in domain.lists]
    for role, name, source in objects:
        if name in seen:
            other, where = seen[name]
            message = (
                f"duplicate name: {name}@{domain.name} is also {_a(other)} (line {where.line})"
            )
            problems.append(_at(source, "MP205", message))
        else:
            seen[name] = (role, source)
    for account in domain.accounts:
        for alias in account.aliases:
            if alias in seen:
                other, where = seen[alias]
                message = (
                    f"alias {alias}@{domain.name} of {account.name} shadows {_a(other)} "
                    f"{alias}@{domain.name} (line {where.line})"
                )
                problems.append(_at(account.source, "MP206", message))
            else:
                seen[alias] = (f"alias of {account.name}", account.source)
    return problems


def _domain_names(plan: Plan) -> list[Diagnostic]:
    """Domains that are no valid IDN, and one domain written twice (in U-labels and A-labels)."""
    problems = []
    named = [(plan.server.main_domain, plan.server.source)]
    named += [(name, d.source) for d in plan.domains for name in (d.name, *d.aliases)]
    for name, source in dict.fromkeys(named):
        if (problem := idn_problem(name)) is not None:
            message = f"not a valid internationalized domain name: {name} ({problem})"
            problems.append(_at(source, "MP209", message))
    seen: dict[str, Source] = {}
    for domain in plan.domains:
        if domain.name in seen:
            message = (
                f"duplicate domain: {domain.name} is also the domain of line "
                f"{seen[domain.name].line} (its U-labels and A-labels name one domain)"
            )
            problems.append(_at(domain.source, "MP209", message))
        else:
            seen[domain.name] = domain.source
    return problems


def _domain_aliases(plan: Plan) -> list[Diagnostic]:
    problems = []
    owners: dict[str, str] = {domain.name: "a domain" for domain in plan.domains}
    for domain in plan.domains:
        for alias in domain.aliases:
            if alias in owners:
                message = f"domain alias {alias} of {domain.name} is already {owners[alias]}"
                problems.append(_at(domain.source, "MP208", message))
            else:
                owners[alias] = f"an alias of {domain.name}"
    return problems


def _at(source: Source, code: str, message: str) -> Diagnostic:
    return error(source.file, source.line, source.column, code, message)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun
