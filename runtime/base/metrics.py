"""What the server counts, for `GET /metrics` (runtime/serve/admin.py, docs/admin.md).

The meters are prometheus-client's. Every wing counts through `meters()`; the admin
listener serves what they hold. With an admin listener, `serve` calls `share(directory)`
before the first meter is made: prometheus-client's multiprocess mode then keeps each
process's values in files of that folder, so the supervisor of `serve --workers N` (or a
lone server) reads every worker's counts at a scrape, and a worker started again keeps
adding to the totals of the one before. Without it, the meters are plain memory.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, multiprocess, values

# fdatasync of the intake journal: fast disks take well under a millisecond, slow ones tens.
SYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Meters:
    connections: Counter
    messages: Counter
    recipients: Counter
    senders: Counter
    deliveries: Counter
    bounces: Counter
    checks: Counter
    reloads: Counter
    reload_success: Gauge
    reload_time: Gauge
    journal_sync: Histogram
    flow_delays: Counter


def share(directory: Path) -> None:
    """Keep this process's meters (and its children's) in `directory`, emptied first (the
    counts of a server start at zero, and what the processes of the last run said is
    gone). Call it before the first `meters()`."""
    if meters.cache_info().currsize:
        raise RuntimeError("metrics.share() after the first meter was made")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in directory.iterdir():
        if stale.is_file():
            stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def join() -> None:
    """In a process started (not forked) by a server whose meters are shared: count into
    the same folder, without emptying it."""
    if shared() is not None and not meters.cache_info().currsize:
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def forget(pid: int) -> None:
    """A process that died: its live gauges no longer count (its counters still do)."""
    if shared() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def shared() -> Path | None:
    """The folder `share` chose, if any."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(folder) if folder else None


@functools.cache
def meters() -> Meters:
    """The server's meters, made once per process."""
    return Meters(
        connections=Counter(
            "mailplan_connections", "Connections accepted, by listener protocol", ["protocol"]
        ),
        messages=Counter(
            "mailplan_messages", "Messages ended by DATA, by the reply code to it", ["reply"]
        ),
        recipients=Counter("mailplan_recipients", "RCPT TO commands, by reply code", ["reply"]),
        senders=Counter("mailplan_senders", "MAIL FROM commands, by reply code", ["reply"]),
        deliveries=Counter(
            "mailplan_deliveries",
            "Recipients delivered, failed, deferred (a retry) or expired, by module",
            ["module", "outcome"],
        ),
        bounces=Counter(
            "mailplan_bounces", "DSNs queued: failed (a bounce) or delayed (a warning)", ["action"]
        ),
        checks=Counter(
            "mailplan_receiving_checks",
            "Receiving-check verdicts at MAIL FROM: check, result, and whether it refused",
            ["check", "result", "action"],
        ),
        reloads=Counter("mailplan_reloads", "Reloads (SIGHUP), by result", ["result"]),
        reload_success=Gauge(
            "mailplan_reload_last_success",
            "1 if the last reload was served, 0 if it was refused",
            multiprocess_mode="livemin",
        ),
        reload_time=Gauge(
            "mailplan_reload_last_time_seconds",
            "When the last reload was tried (Unix time)",
            multiprocess_mode="livemax",
        ),
        journal_sync=Histogram(
            "mailplan_journal_sync_seconds",
            "fdatasync of the intake journal (one per group of messages)",
            buckets=SYNC_BUCKETS,
        ),
        flow_delays=Counter(
            "mailplan_flow_delays",
            "250 replies held back while accepted mail waited to be processed (in_flow_delay)",
        ),
    )


def reply_code(reply: str) -> str:
    """The three digits of an SMTP reply, for a label."""
    code = reply[:3]
    return code if code.isdigit() else "other"
