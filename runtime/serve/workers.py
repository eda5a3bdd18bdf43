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
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import NoReturn

from mailplan.plan import codec
from mailplan.plan.model import Plan
from mailplan.runtime.base import metrics
from mailplan.runtime.serve import notify
from mailplan.runtime.serve.server import Options, reread_keys
from mailplan.runtime.serve.startup import release_signals
from mailplan.runtime.store.spool import Share, work_as

log = logging.getLogger("mailplan.workers")

PR_SET_PDEATHSIG = 1
SIGNALS = {signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}
RESTART_DELAY = 1.0
ADMIN = -1  # the index of the admin listener's process among the children


def supervise(
    load: Callable[[], Plan],
    plan: Plan,
    options: Options,
    workers: int,
    run_worker: Callable[[Callable[[], Plan], Plan, Options], int],
    run_admin: Callable[[Callable[[], Plan], Plan, Options], int] | None = None,
) -> int:
    """Run `workers` copies of the server on `plan` (reloads call `load`), and with
    `run_admin` a process for the admin listener; returns when they have all stopped."""
    supervisor = _Supervisor(load, plan, options, workers, run_worker)
    supervisor.run_admin = run_admin
    supervisor.take_signals()
    release_signals()  # a stop asked for while the server started: no worker is started
    for index in range(workers if not supervisor.stopping else 0):
        supervisor.start(index)
    if run_admin is not None and not supervisor.stopping:
        supervisor.start(ADMIN)
    notify.ready(f"{workers} workers serving plan {codec.digest(plan)}")
    try:
        return supervisor.watch()
    finally:
        for sock in options.sockets.values():
            sock.close()


class _Supervisor:
    """The supervisor's side: its workers by pid, what starts one, and whether it is stopping."""

    def __init__(
        self,
        load: Callable[[], Plan],
        plan: Plan,
        options: Options,
        workers: int,
        run_worker: Callable[[Callable[[], Plan], Plan, Options], int],
    ) -> None:
        self.load = load
        self.plan = plan
        self.options = options
        self.workers = workers
        self.run_worker = run_worker
        self.children: dict[int, int] = {}  # pid → worker index (ADMIN: the admin listener)
        self.stopping = False
        self.run_admin: Callable[[Callable[[], Plan], Plan, Options], int] | None = None

    def take_signals(self) -> None:
        """Reload and flush go on to the workers; SIGTERM and SIGINT stop them all."""
        signal.signal(signal.SIGHUP, self.reload)
        signal.signal(signal.SIGUSR1, self.forward)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def reload(self, number: int, frame: object) -> None:
        """Load the plan too, for the workers started after this (a worker that died is
        started on the plan the others serve, never on an edit nobody reloaded), then
        pass the signal on."""
        try:
            plan = self.load()
            # and its keys: a worker restarted later signs with what the others sign with
            keys = reread_keys(plan, self.options, self.options.dkim)
            self.plan, self.options = plan, replace(self.options, dkim=keys)
        except Exception as exc:
            log.error("reload refused, workers started from now on serve the plan before: %s", exc)
        self.forward(number, frame)

    def forward(self, number: int, _: object) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)

    def stop(self, number: int, frame: object) -> None:
        if not self.stopping:
            notify.stopping()
        self.stopping = True
        self.forward(signal.SIGTERM, frame)

    def start(self, index: int) -> None:
        """Fork worker `index`; the child runs the server and never comes back here."""
        share = Share(index, self.workers)
        supervisor = os.getpid()
        # No signal may reach the child while it still has the supervisor's handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        pid = os.fork()
        if pid == 0:
            self._work(share, supervisor, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.children[pid] = index
        if index == ADMIN:
            log.info("admin listener started (pid %d)", pid)
        else:
            log.info("worker %d of %d started (pid %d)", index, self.workers, pid)

    def _work(self, share: Share, supervisor: int, mask: Iterable[int]) -> NoReturn:
        """The worker, in the forked child: a server on its share of the queue, then exit."""
        status = 1
        try:
            _die_with_parent(supervisor)
            _worker_signals(mask)
            os.environ.pop("NOTIFY_SOCKET", None)  # systemd hears the supervisor only
            if share.index == ADMIN and self.run_admin is not None:
                status = self.run_admin(self.load, self.plan, self.options)
            else:
                if self.options.admin is not None:
                    self.options.admin.close()  # the admin process answers on it
                work_as(share)
                serving = replace(self.options, share=share, admin=None)
                status = self.run_worker(self.load, self.plan, serving)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

    def watch(self) -> int:
        """Wait for the workers, starting again each that dies unless stopping; the status."""
        status = 0
        while self.children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            index = self.children.pop(pid, None)
            if index is None:
                continue  # not a worker: a child the compiler forked (compiler/apart.py)
            metrics.forget(pid)
            if self.stopping:
                status = status or os.waitstatus_to_exitcode(code)
            else:
                self._restart(index, pid, os.waitstatus_to_exitcode(code))
        return status

    def _restart(self, index: int, pid: int, status: int) -> None:
        what = "the admin listener" if index == ADMIN else f"worker {index}"
        log.error("%s (pid %d) ended with status %d; starting it again", what, pid, status)
        time.sleep(RESTART_DELAY)
        if not self.stopping:
            self.start(index)


def _worker_signals(mask: Iterable[int]) -> None:
    """The worker's signals until its loop takes them, then the mask from before the fork.

    A reload or flush that comes while it starts is moot (it reads the plan and the queue
    as it starts); SIGTERM and SIGINT kill it.
    """
    for number in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(number, signal.SIG_IGN)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _die_with_parent(supervisor: int) -> None:
    """Ask Linux to kill this process when its parent (the supervisor) dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:  # it died before the request was made
        os._exit(1)
