"""Where `mailplan serve` writes its log lines, and in what shape.

Lines are written by a thread of their own, never by the event loop. `text` is one
line per event with the time, the logger and the level; `json` is one JSON object per
line with the same, plus the facts a line carries (`extra=` in the runtime: the queue
id, the client, the listener, the deciding site file:line, the remote host, its
address and reply). Under systemd's journal (`JOURNAL_STREAM` names our standard
error) each line starts with its syslog priority, `<3>` for errors, so that
`journalctl -p err` finds them; the journal adds the time itself.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from queue import SimpleQueue
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
JOURNAL_FORMAT = "%(name)s %(levelname)s %(message)s"
LEVELS = ("debug", "info", "warning", "error")

# The facts a runtime log line may carry (`log.info(..., extra={...})`), in the order
# a JSON line shows them.
FACTS = (
    "queue_id",
    "client",
    "listener",
    "recipient",
    "source",
    "stage",
    "host",
    "address",
    "reply",
)

# syslog priorities (RFC 5424) by logging level
PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def under_journal(stream: TextIO = sys.stderr) -> bool:
    """Whether `stream` is the journal's (systemd sets JOURNAL_STREAM=DEVICE:INODE)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def priority(level: int) -> int:
    """The syslog priority of a logging level (levels between take the one below)."""
    for threshold in sorted(PRIORITIES, reverse=True):
        if level >= threshold:
            return PRIORITIES[threshold]
    return 7


class JournalFormatter(logging.Formatter):
    """Text lines with a `<N>` syslog priority in front."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>{super().format(record)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for fact in FACTS:
            value = getattr(record, fact, None)
            if value is not None and value != "":
                line[fact] = value
        if record.exc_text:
            line["exception"] = record.exc_text
        text = json.dumps(line, ensure_ascii=False, default=str)
        return f"<{priority(record.levelno)}>{text}" if self.journal else text


def formatter(shape: str, journal: bool) -> logging.Formatter:
    if shape == "json":
        return JsonFormatter(journal)
    if journal:
        return JournalFormatter(JOURNAL_FORMAT)
    return logging.Formatter(TEXT_FORMAT)


class Writer:
    """The thread that writes log lines; `stop()` writes what is left, then ends."""

    def __init__(self, shape: str = "text", level: str = "info") -> None:
        self.shape, self.level = shape, level
        lines: SimpleQueue[logging.LogRecord] = SimpleQueue()
        self.listener = logging.handlers.QueueListener(lines, _output(shape))
        _configure(level, _Enqueue(lines))
        self.listener.start()

    def stop(self) -> None:
        """Write what is left and end the thread; later lines are written as they come
        (a supervisor of workers must have no thread when it forks)."""
        if self.listener._thread is not None:
            self.listener.stop()
            _configure(self.level, _output(self.shape))


def _output(shape: str) -> logging.Handler:
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(formatter(shape, under_journal()))
    return output


def _configure(level: str, handler: logging.Handler) -> None:
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's own chatter


class _Enqueue(logging.handlers.QueueHandler):
    """Hands the record over as it is: the message merged with its arguments, the
    traceback as text, and the facts (`extra=`) kept for the JSON shape."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        prepared = logging.makeLogRecord(record.__dict__)
        prepared.msg = record.getMessage()
        prepared.args = None
        if record.exc_info:
            prepared.exc_text = logging.Formatter().formatException(record.exc_info)
            prepared.exc_info = None
        return prepared


def line(text: str) -> str:
    """A line for standard error outside the logger (a start-up error): with its
    priority when the journal reads it."""
    return f"<3>{text}" if under_journal() else text
