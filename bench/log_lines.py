"""What a log line costs the server: CPU a line through `serve`'s own log writer,
against the standard library's queue handler and listener in the same run.

A message makes three or four lines (accepted; a rule's line; delivered), so their
cost is part of the accept rate (docs/benchmarks.md, *Cheaper log lines*). Each
variant logs the same `accepted` line, with its facts (`extra=`), from one thread
while a thread of its own writes the lines to /dev/null; the CPU counted is the
whole process's (both threads), from the first line until every line is written.

    .venv/bin/python bench/log_lines.py              # 100,000 lines, best of 5 runs
    .venv/bin/python bench/log_lines.py --lines 20000 --repeats 3

Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
import time
from collections.abc import Callable
from queue import SimpleQueue

from mailplan.runtime.serve import logs

FLAGS = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
DEFAULTS = {name: getattr(logging, name) for name in FLAGS}  # before `serve`'s writer ran


def _lines(count: int) -> None:
    log = logging.getLogger("mailplan.smtp")
    facts = {"queue_id": "6620e13088462094f0000", "client": "192.0.2.7", "listener": "smtp"}
    for _ in range(count):
        log.info(
            "%s accepted from %s <%s> for %s (%d bytes, plan %s)",
            "6620e13088462094f0000", "192.0.2.7", "someone@remote.test",
            "<alice@example.com>", 2048, "sha256:28a3294e71b5", extra=facts,
        )  # fmt: skip


def standard(count: int) -> None:
    """The standard library's way: QueueHandler, QueueListener, a line a write."""
    saved = {name: getattr(logging, name) for name in FLAGS}
    try:
        for name, value in DEFAULTS.items():
            setattr(logging, name, value)
        lines: SimpleQueue[logging.LogRecord] = SimpleQueue()
        output = logging.StreamHandler(sys.stderr)
        output.setFormatter(logs.formatter("text", False))
        listener = logging.handlers.QueueListener(lines, output)
        logging.basicConfig(
            level="INFO", handlers=[logging.handlers.QueueHandler(lines)], force=True
        )
        listener.start()
        _lines(count)
        listener.stop()
    finally:
        for name, value in saved.items():
            setattr(logging, name, value)


def server(count: int) -> None:
    """`serve`'s writer (`runtime/serve/logs.py`)."""
    writer = logs.Writer("text", "info")
    _lines(count)
    writer.stop()


def cpu_per_line(run: Callable[[int], None], count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run(count)
        best = min(best, time.process_time() - start)
    return best / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    stderr, sys.stderr = sys.stderr, open("/dev/null", "w")  # noqa: SIM115 - the lines go here
    try:
        figures = {
            name: cpu_per_line(run, arguments.lines, arguments.repeats)
            for name, run in (("standard library", standard), ("mailplan serve", server))
        }
    finally:
        sys.stderr.close()
        sys.stderr = stderr
    print(f"{arguments.lines:,} lines, best of {arguments.repeats} runs, CPU of both threads")
    for name, micros in figures.items():
        print(f"  {name:18} {micros:6.1f} µs a line")
    ratio = figures["mailplan serve"] / figures["standard library"]
    print(f"  mailplan serve / standard library: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
