"""Delivery in processes of their own, so that accepting mail keeps a core to itself.

Python runs one thread at a time; a server that accepts and delivers in one process
shares one core between the two. The pool's workers are started with the plan (as
its verified JSON), process queued messages exactly as `processor.process` does,
and die with the server. A reload with a new plan starts new workers; the old ones
finish what they hold.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from plan import codec
from runtime.processor import Waiting, process
from runtime.router import Router
from runtime.spool import Envelope, Spool

WORKERS = 2
_PR_SET_PDEATHSIG = 1

_worker: dict[str, object] = {}


def _start(server: int, plan_text: str, queue_directory: str, mail_directory: str) -> None:
    """In a new worker: ignore Ctrl-C (the server stops us), die with the server, load the plan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server:  # the server died before we could ask to die with it
        os._exit(0)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    plan = codec.loads(plan_text)
    _worker.update(
        digest=codec.digest(plan),
        router=Router(plan),
        spool=Spool(Path(queue_directory)),
        mail=Path(mail_directory),
    )


def _deliver(queue_id: str, fresh: tuple[Envelope, bytes] | None) -> list[Waiting]:
    router = _worker["router"]
    spool = _worker["spool"]
    mail = _worker["mail"]
    assert isinstance(router, Router) and isinstance(spool, Spool) and isinstance(mail, Path)
    return process(spool, queue_id, router, mail, str(_worker["digest"]), fresh)


class DeliveryPool:
    """Worker processes that deliver queued messages by the current plan."""

    def __init__(self, queue_directory: Path, mail_directory: Path) -> None:
        self.queue_directory = queue_directory
        self.mail_directory = mail_directory
        self.digest = ""
        self._pool: ProcessPoolExecutor | None = None

    def use(self, digest: str, plan_text: str) -> None:
        """Deliver by this plan from now on (workers start when the first message comes)."""
        if digest == self.digest:
            return
        old, self._pool = (
            self._pool,
            ProcessPoolExecutor(
                WORKERS,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(
                    os.getpid(),
                    plan_text,
                    str(self.queue_directory),
                    str(self.mail_directory),
                ),
            ),
        )
        self.digest = digest
        if old is not None:
            old.shutdown(wait=False)

    async def run(self, queue_id: str, fresh: tuple[Envelope, bytes] | None) -> list[Waiting]:
        assert self._pool is not None, "use() a plan first"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _deliver, queue_id, fresh)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
