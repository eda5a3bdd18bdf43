"""Compiler work done in a second process while this one goes on with the rest.

A big site's address lists are read and compiled in a forked child while this process
parses and resolves the routing table (100,000 lines of each: ~0.6 s of the one beside
~0.7 s of the other, on two cores). The child hands its result back as msgpack, which
msgspec encodes and decodes in C and checks against the type it must have, so that the
intervals of a list cost next to nothing to carry over.

The result is the same either way. Where a child cannot help or cannot be had, the
caller does the work itself, as it would without this module: for a small site (a fork
costs more than it saves), on a platform without `fork`, and in a process that runs
other threads (a lock that one of them holds at the fork stays held in the child). A
child that hands back no result, or only part of one, has failed: the work is then done
here, when its result is asked for, and fails the same way in this process, where the
error is seen. A child outlives its parent by its work's time at most (well under a
second): its write fails once the parent is gone, and it ends.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

LINES = 20_000  # lines of work from which a child pays for itself
# Signals a parent may have handlers for (a server: stop, reload, reopen its logs)
OWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def begin(work: Callable[[], T], shape: Any, lines: int) -> Callable[[], T] | None:
    """`work` begun in a child, as the call that waits for its result (a value of type
    `shape`); None when the work has fewer than LINES lines or no child can be had: the
    caller then does the work itself."""
    if lines < LINES or not _can_fork():
        return None
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, sending, receiving), daemon=True)
    child.start()
    sending.close()

    @functools.cache  # the child's result is read once
    def result() -> T:
        try:
            data = receiving.recv_bytes()
        except (EOFError, OSError):  # the child ended without a result, or in the middle of it
            data = None
        finally:
            receiving.close()
            child.join()
        if data is None:
            return work()
        decoded: T = msgspec.msgpack.decode(data, type=shape)
        return decoded

    return result


def _can_fork() -> bool:
    return hasattr(os, "fork") and threading.active_count() == 1


def _child(work: Callable[[], Any], sending: Connection, receiving: Connection) -> None:
    """Do the work and hand its result over; end quietly, whatever happens. With only the
    parent holding the pipe's reading end, the child's write fails, and the child ends,
    once the parent is gone. Signals do what they do to any process, not what the parent
    asked of them (a server's handlers would stop its workers, or reload)."""
    try:
        receiving.close()
        signal.set_wakeup_fd(-1)
        for number in OWN_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        sending.send_bytes(msgspec.msgpack.encode(work()))
        sending.close()
    except BaseException:
        os._exit(1)  # the parent does the work again, and sees why it fails
