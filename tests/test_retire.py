"""A plan a reload replaced is freed in a thread, once its last session has ended.

The unit tests hold the reaper to its promise on plain objects; the last one runs a
server in this process (`serve.server.Daemon`) on a site with more routing records than
`retire.BIG`, reloads it while an SMTP session that started on the old plan is still
open, and watches the old plan's routes: alive while the session lasts, freed once it
has ended, and the reaper left with nothing.
"""

from __future__ import annotations

import asyncio
import gc
import smtplib
import weakref
from pathlib import Path

from serverkit import LOOPBACK, free_port
from sitekit import alice_plan

from mailplan.runtime.serve import startup
from mailplan.runtime.serve.retire import BIG, Reaper, held
from mailplan.runtime.serve.server import Daemon, Options

TIMEOUT = 15.0


class Leaf:
    pass


class Root:
    def __init__(self, leaves: int) -> None:
        self.index = {"small": (Leaf(),), "big": tuple(Leaf() for _ in range(leaves))}


def test_the_items_of_big_containers_are_held_and_small_ones_walked_into() -> None:
    root = Root(BIG + 1)
    taken = held((root,))
    assert [len(items) for items in taken] == [BIG + 1]
    assert all(isinstance(item, Leaf) for item in taken[0])
    assert held((Root(BIG),)) == []  # no container big enough: nothing held


def test_nothing_is_freed_while_a_root_lives_and_all_of_it_once_none_does() -> None:
    root = Root(BIG * 4)
    leaf = weakref.ref(root.index["big"][0])
    reaper = Reaper()
    reaper.retire(root)
    assert reaper.reap() == 0 and leaf() is not None  # still in use
    del root  # its last user lets go: the tuple goes, its items stay held
    assert leaf() is not None
    assert reaper.reap() == 1
    assert leaf() is None and reaper.waiting == []
    assert reaper.reap() == 0


def test_roots_that_cannot_be_watched_are_not_retired() -> None:
    reaper = Reaper()
    reaper.retire(Root(BIG * 2), (1, 2))  # a tuple takes no weak reference
    assert reaper.waiting == []


def routes(count: int) -> str:
    return "".join(f"<user{n}@old{n}.test> = alice@example.com\n" for n in range(count))


def test_a_reloaded_plan_is_freed_once_the_session_that_used_it_ends(tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "site"
    plans = [
        alice_plan(folder, port, routes(BIG * 2)),
        alice_plan(folder, port, routes(BIG * 2 + 1)),
    ]
    options = Options(tmp_path, sockets=startup.bind(startup.served(plans[0], False)))

    async def scenario() -> None:
        daemon = Daemon(lambda: plans[-1], options, plans[0])
        serving = asyncio.create_task(daemon.run())
        while not daemon.servers:
            await asyncio.sleep(0.01)
        plan = weakref.ref(daemon.current.policy.plan)  # its routes take no weak reference
        client = await asyncio.to_thread(smtplib.SMTP, LOOPBACK, port, timeout=TIMEOUT)
        await asyncio.to_thread(client.ehlo)  # a session on the first plan
        await daemon.reload()
        assert daemon.current.policy.plan is plans[-1]
        del plans[0]  # the test's own reference
        await asyncio.to_thread(daemon.reaper.reap)
        assert plan() is not None and daemon.reaper.waiting  # the session still uses it
        await asyncio.to_thread(client.quit)
        for _ in range(int(TIMEOUT / 0.05)):
            if plan() is None and not daemon.reaper.waiting:
                break
            gc.collect()  # a session and its handler hold each other: the collector frees them
            await asyncio.sleep(0.05)
        assert plan() is None and daemon.reaper.waiting == []
        daemon.stopping.set()
        await asyncio.wait_for(serving, TIMEOUT)

    asyncio.run(scenario())
