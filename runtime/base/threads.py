"""Where blocking work runs: two thread pools, so that slow checks never hold up the queue.

Queue and mailbox I/O (the fsyncs a 250 waits for) use asyncio's default pool.
Password checks (argon2id, slow by design), SPF evaluations (pyspf, which may wait
for DNS for seconds) and DKIM/ARC/DMARC verification (dkimpy, DNS too) run in a pool
of their own: a burst of either can then fill only
that pool, and the queue keeps writing. DKIM signing (CPU, a millisecond or less a
message) has a small pool of its own, so that it never waits behind either.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

CHECKS = 8  # threads for password and SPF checks
SIGNERS = 2  # threads for DKIM signing

_pool = ThreadPoolExecutor(max_workers=CHECKS, thread_name_prefix="mailplan-check")
_signers = ThreadPoolExecutor(max_workers=SIGNERS, thread_name_prefix="mailplan-sign")

P = ParamSpec("P")
R = TypeVar("R")


async def checking(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a slow check off the event loop, in the checks' own pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool, functools.partial(function, *args, **kwargs))


async def signing(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run DKIM signing off the event loop, in the signers' own pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_signers, functools.partial(function, *args, **kwargs))
