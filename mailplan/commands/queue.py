"""`mailplan queue`: the logical queues of a server's queue directory, one message in
it (`show ID`), retrying now (`flush [DOMAIN]`), and Postfix's `postsuper -h/-H/-d`
(`hold ID|--domain D`, `release ID|--all`, `delete ID`), with or without a server running.

The command changes files of the queue (an `ID.hold` mark, the message's files) and
then sends the server that holds the queue SIGUSR1, as `flush` does: the server takes
held and deleted messages out of its queues, processes released ones again, and says
so in its log (docs/running.md, "Hold, release, delete")."""

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
        "queue",
        help="list the logical queues; flush [DOMAIN]; show ID; hold, release, delete",
    )
    queue.add_argument(
        "action",
        nargs="?",
        choices=("list", "flush", "show", "hold", "release", "delete"),
        default="list",
    )
    queue.add_argument("name", nargs="*", metavar="DOMAIN|ID")
    queue.add_argument("--domain", help="hold: every message waiting for this domain")
    queue.add_argument("--all", action="store_true", help="release: every message on hold")
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
    names: list[str] = arguments.name
    if arguments.action in ("hold", "release", "delete"):
        return _change(spool, plan, arguments)
    if len(names) > 1:
        print(f"mailplan: queue {arguments.action} takes one DOMAIN or ID", file=sys.stderr)
        return 2
    name = names[0] if names else None
    if arguments.action == "show":
        return _show(spool, plan, name)
    if arguments.action == "flush":
        return _flush(spool, plan, name)
    return _list(spool, plan)


def _list(spool: Spool, plan: Plan) -> int:
    from mailplan.runtime.queue.processor import pending
    from mailplan.runtime.store.spool import held

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
    on_hold = held(spool)
    if on_hold:
        print(f"{len(on_hold)} of them on hold: {' '.join(on_hold)}")
    return 0


def _waiting_for(spool: Spool, plan: Plan, domain: str | None) -> list[str]:
    """The ids of the messages with a recipient waiting for `domain` (None: any)."""
    from mailplan.runtime.decide.address import canonical_domain
    from mailplan.runtime.queue.processor import pending

    # A queue is named by its domain in A-labels: `bücher.example` is xn--bcher-kva.example.
    wanted = None if domain is None else canonical_domain(domain)
    return sorted(
        {
            entry.queue_id
            for entry in pending(spool, Router(plan))
            if wanted is None or entry.routing.queue.lower() == wanted
        }
    )


def _flush(spool: Spool, plan: Plan, domain: str | None) -> int:
    from mailplan.runtime.decide import retry

    chosen = _waiting_for(spool, plan, domain)
    now = time.time()
    for queue_id in chosen:
        spool.journal(queue_id, retry.event_line("F", now))
    print(f"{len(chosen)} message(s) to be tried again now")
    if not _tell_server(spool):
        print("no server is running on this queue: they are tried at its next start")
    return 0


def _tell_server(spool: Spool) -> bool:
    """SIGUSR1 to the server that holds the queue, if one does: it reads the queue's
    journals and marks again. Whether one was told."""
    from mailplan.runtime.serve.startup import holder_pid, queue_in_use

    pid = holder_pid(spool.directory) if queue_in_use(spool.directory) else None
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:  # it stopped meanwhile; its next start reads the files
        return False
    return True


def _change(spool: Spool, plan: Plan, arguments: argparse.Namespace) -> int:
    """hold ID...|--domain D, release ID...|--all, delete ID...: the files, then the server."""
    from mailplan.runtime.store.spool import held

    action, ids = arguments.action, list(arguments.name)
    if action == "hold" and arguments.domain is not None:
        ids += _waiting_for(spool, plan, arguments.domain)
    if action == "release" and arguments.all:
        ids += held(spool)
    if not ids and not (arguments.domain or arguments.all):
        usage = {"hold": "ID... or --domain D", "release": "ID... or --all", "delete": "ID..."}
        print(f"mailplan: queue {action} needs {usage[action]}", file=sys.stderr)
        return 2
    changed: list[str] = []
    missing: list[str] = []
    for queue_id in dict.fromkeys(ids):
        if not _queue_id(queue_id):
            missing.append(queue_id)
            continue
        done = {"hold": spool.hold, "release": spool.release, "delete": spool.delete}[action]
        (changed if done(queue_id) else missing).append(queue_id)
    said = {"hold": "on hold", "release": "released", "delete": "deleted"}[action]
    for queue_id in changed:
        print(f"{queue_id}: {said}")
    for queue_id in missing:
        why = "not on hold" if action == "release" and spool.exists(queue_id) else "no such message"
        print(f"mailplan: {queue_id}: {why}", file=sys.stderr)
    print(f"{len(changed)} message(s) {said}")
    if changed and not _tell_server(spool):
        print("no server is running on this queue: its next start reads the change")
    return 1 if missing else 0


def _queue_id(text: str) -> bool:
    """Whether `text` can be a queue id (hex digits): nothing else is a file name here."""
    return 0 < len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


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
    if spool.is_held(queue_id):
        print("held       on hold: not delivered until `mailplan queue release`")
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
