"""`mailplan queue`: the logical queues of a server's queue directory, one message in
it (`show ID`), and retrying now (`flush [DOMAIN]`), with or without a server running."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mailplan.commands.origin import add_origin, load_plan
from mailplan.plan.model import Plan
from mailplan.runtime.decide.router import Router

if TYPE_CHECKING:
    from mailplan.commands.origin import Subcommands
    from mailplan.runtime.store.spool import Spool


def add_parser(subcommands: Subcommands) -> None:
    queue = subcommands.add_parser(
        "queue", help="list the logical queues; flush [DOMAIN] retries now; show ID"
    )
    queue.add_argument("action", nargs="?", choices=("list", "flush", "show"), default="list")
    queue.add_argument("name", nargs="?", metavar="DOMAIN|ID")
    add_origin(queue, positional=False)
    queue.add_argument("--root", type=Path, default=Path("."), help="base of relative paths")
    queue.set_defaults(run=_queue)


def _queue(arguments: argparse.Namespace) -> int:
    from mailplan.runtime.store.spool import Spool

    plan = load_plan(arguments)
    if plan is None:
        return 1
    directory = Path(plan.queue.directory)
    spool = Spool(directory if directory.is_absolute() else arguments.root / directory)
    if arguments.action == "show":
        return _show(spool, plan, arguments.name)
    if arguments.action == "flush":
        return _flush(spool, plan, arguments.name)
    return _list(spool, plan)


def _list(spool: Spool, plan: Plan) -> int:
    from mailplan.runtime.queue.processor import pending

    waiting = pending(spool, Router(plan))
    now = time.time()
    queues: dict[str, list[float]] = {}
    for entry in waiting:
        queues.setdefault(entry.queue, []).append(entry.arrived)
    print(f"{'queue':<40} {'recipients':>10} {'oldest':>10}")
    for name, arrivals in sorted(queues.items()):
        print(f"{name:<40} {len(arrivals):>10} {_age(now - min(arrivals)):>10}")
    messages = len({entry.queue_id for entry in waiting})
    print(f"{messages} message(s), {len(waiting)} recipient(s) waiting")
    return 0


def _flush(spool: Spool, plan: Plan, domain: str | None) -> int:
    from mailplan.runtime.decide import retry
    from mailplan.runtime.decide.address import canonical_domain
    from mailplan.runtime.queue.processor import pending
    from mailplan.runtime.serve.startup import holder_pid, queue_in_use

    # A queue is named by its domain in A-labels: `bücher.example` is xn--bcher-kva.example.
    wanted = None if domain is None else canonical_domain(domain)
    chosen = sorted(
        {
            entry.queue_id
            for entry in pending(spool, Router(plan))
            if wanted is None or entry.routing.queue.lower() == wanted
        }
    )
    now = time.time()
    for queue_id in chosen:
        spool.journal(queue_id, retry.event_line("F", now))
    print(f"{len(chosen)} message(s) to be tried again now")
    pid = holder_pid(spool.directory) if queue_in_use(spool.directory) else None
    if pid is None:
        print("no server is running on this queue: they are tried at its next start")
    else:
        os.kill(pid, signal.SIGUSR1)
    return 0


def _show(spool: Spool, plan: Plan, queue_id: str | None) -> int:
    from mailplan.runtime.decide import retry
    from mailplan.runtime.store.spool import BadQueueFile

    if not queue_id:
        print("mailplan: queue show needs a queue id", file=sys.stderr)
        return 2
    try:
        envelope, message = spool.load(queue_id)
    except (OSError, BadQueueFile, ValueError) as exc:
        print(f"mailplan: no queued message {queue_id}: {exc}", file=sys.stderr)
        return 1
    history = spool.history(queue_id)
    finished = spool.finished(queue_id)
    router = Router(plan)
    arrived = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(envelope.arrived))
    print(f"id         {envelope.id}")
    print(f"arrived    {arrived} ({_age(time.time() - envelope.arrived)} ago)")
    print(f"from       <{envelope.sender}>")
    print(f"client     {envelope.client} helo {envelope.helo} tls {envelope.tls}")
    print(f"auth       {envelope.auth or '-'}")
    print(f"listener   {envelope.listener}, plan {envelope.plan[:19]}")
    print(f"size       {len(message)} bytes")
    for recipient in envelope.recipients:
        if recipient in finished:
            print(f"to         <{recipient}>  done")
            continue
        routing = router.route(recipient)
        state = f"waits in {routing.module}({routing.queue})"
        tries = history.attempts.get(recipient, 0)
        if tries:
            status, reason = history.reasons[recipient]
            due = retry.due(history, recipient, envelope.arrived, plan.queue.retry)
            state += f", {tries} failed attempt(s), last: {status} {reason}"
            state += f", next try in {_age(max(0.0, due - time.time()))}"
        print(f"to         <{recipient}>  {state}")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
