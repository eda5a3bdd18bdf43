"""The SMTP client's own thread and event loop, beside the one that accepts mail.

Relaying a message costs its sockets twice: the session that accepts it and the
connection that sends it on. On one event loop both wait for each other's turns; with
the outbound connections on a loop of their own, in a thread, the waits, reads and
handshakes of one side (done by the loop without the GIL) overlap the other side's
Python work. What runs there is `runtime.delivery.outbound.deliver` and the kept
connections it uses (`outbound.Connections`); everything else stays on the main loop:
`Courier.run` hands a coroutine over and awaits its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Courier:
    """An event loop in a thread of its own, for outbound SMTP."""

    def __init__(
        self, factory: Callable[[], asyncio.AbstractEventLoop], name: str = "mailplan-courier"
    ) -> None:
        self._factory = factory  # the main loop's kind: uvloop's under `serve`
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        loop = self._factory()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the courier's loop; its result (or exception) here. Cancelling
        the caller cancels it there."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    async def close(self) -> None:
        """Cancel what still runs there, then stop the loop and the thread."""
        if self._loop is None or self._loop.is_closed() or not self._thread.is_alive():
            return
        await self.run(_cancel_the_rest())
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)


async def _cancel_the_rest() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
