"""Relay check: prove the site is not an open relay, and name what every `Relay:` record opens.

A `Relay:` record makes what it produces relayable for any sender. When its left
side can match an address in a domain the site does not host, and the address it
produces leaves through SMTP, strangers can relay through the site: an error,
unless the record says `; allow-open-relay: REASON`. Every other `Relay:` record
gets a warning that says what it opens.
"""

from __future__ import annotations

from mailplan.compiler.check_routing import witness
from mailplan.compiler.diagnostics import Diagnostic, error, warning
from mailplan.plan.model import Plan, Route
from mailplan.runtime.decide.router import Decision, Router

PROBE_DOMAIN = "relay-probe.invalid"
HOW = "end the line with '; allow-open-relay: REASON' if that is intended"


def check_relay(plan: Plan, router: Router) -> list[Diagnostic]:
    problems = []
    relaying = plan.relaying
    if relaying.scope == "everybody":
        where = relaying.source
        if relaying.open_relay_acknowledged:
            reason = relaying.open_relay_acknowledged
            message = f"relaying scope 'everybody' relays for anyone (acknowledged: {reason})"
            problems.append(warning(where.file, where.line, where.column, "MP305", message))
        else:
            message = (
                "relaying scope 'everybody' makes the site an open relay; set "
                "relaying.acknowledge_open_relay to a reason if that is intended"
            )
            problems.append(error(where.file, where.line, where.column, "MP305", message))
    for i, route in enumerate(plan.routes):
        if route.relay:
            problems.append(_relay_record(i, route, router))
    return problems


def _relay_record(i: int, route: Route, router: Router) -> Diagnostic:
    probe = witness(route.left, "x", PROBE_DOMAIN)
    foreign = not router.hosts(probe.domain)
    outcome = router.apply(route, probe, router.index.match(i, probe) or ())
    if isinstance(outcome, Decision):
        result = str(outcome.module)
        leaves = False
    else:
        routing = router.route(outcome.step.after)
        result = str(routing)
        leaves = routing.module == "SMTP"
    shown = str(route.left)
    where = route.source
    if foreign and leaves and not route.open_relay_acknowledged:
        message = (
            f"open relay: this Relay: record relays mail for {shown}, outside the site's "
            f"domains, to the Internet for any sender (e.g. {probe} -> {result}); {HOW}"
        )
        return error(where.file, where.line, where.column, "MP303", message)
    message = (
        f"Relay: makes what this record produces relayable for any sender: {shown} "
        f"(for example {probe} -> {result})"
    )
    if route.open_relay_acknowledged:
        message += f" (open relay acknowledged: {route.open_relay_acknowledged})"
    return warning(where.file, where.line, where.column, "MP304", message)
