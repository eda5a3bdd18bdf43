"""Where blocking work runs: two thread pools, so that slow checks never hold up the queue.

Queue and mailbox I/O (the fsyncs a 250 waits for) use asyncio's default pool.
Password checks (argon2id, slow by design) and SPF evaluations (pyspf, which may wait
for DNS for seconds) run in a pool of their own: a burst of either can then fill only
that pool, and the queue keeps writing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

CHECKS = 8  # threads for password and SPF checks

_pool = ThreadPoolExecutor(max_workers=CHECKS, thread_name_prefix="mailplan-check")

P = ParamSpec("P")
R = TypeVar("R")


async def checking(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a slow check off the event loop, in the checks' own pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool, functools.partial(function, *args, **kwargs))
