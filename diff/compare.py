"""`compare(old, new)`: every change between two plans, grouped, unsafe ones named."""

from __future__ import annotations

from mailplan.diff import behaviour, records, server, settings, table
from mailplan.diff.change import Change, ordered
from mailplan.plan import codec
from mailplan.plan.model import Plan


def compare(old: Plan, new: Plan) -> tuple[Change, ...]:
    """The changes from `old` to `new`, in the order of `change.GROUPS`; none if the two
    plans have the same digest."""
    a, b = codec.digest(old), codec.digest(new)
    if a == b:
        return ()
    return ordered(
        [
            *server.server(old, new),
            *settings.settings(old, new),
            *table.routes(old, new),
            *table.rules(old, new),
            *behaviour.behaviour(old, new),
            *records.dns(old, new),
            Change("digests", f"plan digest {a} -> {b}"),
        ]
    )
