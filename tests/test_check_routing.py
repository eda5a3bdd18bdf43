"""compiler/check_routing.py: the remembered walk that spares most witnesses a full routing
is sure of an end only where `Router.route` finds one, and sure of most of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailplan.compiler.check_routing import _Ends, witness
from mailplan.compiler.pipeline import compile_site
from mailplan.runtime.decide.router import MAX_REWRITES, Router
from tests.conftest import EXAMPLE
from tests.test_router import TABLE_YAML, chain_table, loop_router

TABLES = {
    "cycle": "<a@x.example> = b@x.example\n<b@x.example> = a@x.example",
    "lead-in": "<a@x.example> = b@x.example\n<b@x.example> = c@x.example\n"
    "<c@x.example> = b@x.example",
    "itself": "<loop@x.example> = LOOP@x.example",
    "alias": "<u@example.com> = u@example.org",
    "growing": "<*@grow.example> = x*@grow.example",
    "shared-end": "<a@x.example> = alice@example.com\n<b@x.example> = alice@example.com\n"
    "<c@x.example> = a@x.example\n<*@y.example> = *@example.com",
    **{f"chain-{n}": chain_table(n) for n in (1, MAX_REWRITES - 1, MAX_REWRITES, MAX_REWRITES + 1)},
}


def starts(router: Router) -> list[str]:
    return [str(witness(route.left)) for route in router.plan.routes] + [
        "a0@x.example",
        "alice@example.com",
        "nobody@example.com",
        "x@elsewhere.test",
    ]


@pytest.mark.parametrize("table", TABLES.values(), ids=list(TABLES))
def test_sure_only_of_what_routing_ends(tmp_path: Path, table: str) -> None:
    router = loop_router(tmp_path, table, TABLE_YAML)
    ends = _Ends(router)
    for address in starts(router) + starts(router):  # twice: from memory the second time
        routing = router.route(address)
        if ends.surely(address):
            assert routing.status != "5.4.6", address
        else:  # unsure of an end only when there is none, or when it is far
            assert routing.status == "5.4.6" or len(routing.steps) > MAX_REWRITES // 2, address


def test_sure_of_every_end_in_the_example() -> None:
    unit = compile_site(EXAMPLE)
    assert unit.plan is not None
    router = Router(unit.plan)
    ends = _Ends(router)
    for address in starts(router):
        assert ends.surely(address) == (router.route(address).status != "5.4.6"), address
