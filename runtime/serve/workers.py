"""Several worker processes on one site: `mailplan serve --workers N`.

One event loop runs on one core; Postfix runs a process per job and uses them all. Here
the supervisor, which holds the sockets `runtime.serve.startup` bound, forks N workers,
each a whole server (`runtime.serve.server.Daemon`) accepting on the same sockets (the
kernel spreads the connections) and delivering what it accepted. The queue is shared,
its ids are not: each worker makes and recovers only the ids it owns (`spool.Share`), so
no message is worked on twice and a worker started again finds exactly what its
predecessor left.

The supervisor forwards SIGHUP (reload) and SIGUSR1 (`mailplan queue flush`) to the
workers, stops them on SIGTERM or SIGINT, and starts again, after a second, a
worker that died. A worker dies with its supervisor (PR_SET_PDEATHSIG), so killing
the supervisor stops the whole server, as killing a single process would.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from mailplan.plan import codec
from mailplan.plan.model import Plan
from mailplan.runtime.serve import notify
from mailplan.runtime.serve.server import Options
from mailplan.runtime.serve.startup import release_signals
from mailplan.runtime.store.spool import Share, work_as

log = logging.getLogger("mailplan.workers")

PR_SET_PDEATHSIG = 1
SIGNALS = {signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}
RESTART_DELAY = 1.0


def supervise(
    load: Callable[[], Plan],
    plan: Plan,
    options: Options,
    workers: int,
    run_worker: Callable[[Callable[[], Plan], Plan, Options], int],
) -> int:
    """Run `workers` copies of the server on `plan` (reloads call `load`); returns when
    they have all stopped."""
    children: dict[int, int] = {}  # pid → worker index
    stopping = False

    def start(index: int) -> None:
        share = Share(index, workers)
        supervisor = os.getpid()
        # No signal may reach the child while it still has the supervisor's handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                _die_with_parent(supervisor)
                # Until the worker's loop takes them: a reload or flush that comes while
                # it starts is moot (it reads the plan and the queue as it starts).
                for number in (signal.SIGHUP, signal.SIGUSR1):
                    signal.signal(number, signal.SIG_IGN)
                for number in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(number, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                os.environ.pop("NOTIFY_SOCKET", None)  # systemd hears the supervisor only
                work_as(share)
                serving = replace(options, share=share)
                status = run_worker(load, _plan_now(load, plan), serving)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        children[pid] = index
        log.info("worker %d of %d started (pid %d)", index, workers, pid)

    def forward(number: int, _: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)

    def stop(number: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            notify.stopping()
        stopping = True
        forward(signal.SIGTERM, frame)

    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGUSR1, forward)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    release_signals()
    for index in range(workers):
        start(index)
    notify.ready(f"{workers} workers serving plan {codec.digest(plan)}")
    status = 0
    try:
        while children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            index = children.pop(pid)
            if stopping:
                status = status or os.waitstatus_to_exitcode(code)
                continue
            log.error(
                "worker %d (pid %d) ended with status %d; starting it again",
                index,
                pid,
                os.waitstatus_to_exitcode(code),
            )
            time.sleep(RESTART_DELAY)
            if not stopping:
                start(index)
    finally:
        for sock in options.sockets.values():
            sock.close()
    return status


def _plan_now(load: Callable[[], Plan], started: Plan) -> Plan:
    """The site as it is now, or, when it no longer compiles, the plan the supervisor
    started with: a worker started again must serve, not fail every second."""
    try:
        return load()
    except Exception as exc:
        log.error("the site does not load (%s); serving the plan the server started with", exc)
        return started


def _die_with_parent(supervisor: int) -> None:
    """Ask Linux to kill this process when its parent (the supervisor) dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:  # it died before the request was made
        os._exit(1)
