"""Where `mailplan serve` writes its log lines, and in what shape.

Lines are written by a thread of their own (`Writer`), never by the event loop.
`text` is one line per event with the time, the logger and the level; `json` is one
JSON object per line with the same, plus the facts a line carries (`extra=` in the
runtime: the queue id, the client, the listener, the deciding site file:line, the
remote host, its address and reply).

When systemd connects a service's standard error to the journal, it sets
`JOURNAL_STREAM` to that stream's `DEVICE:INODE`. journald reads a `<N>` at the
start of each line as the line's priority (sd-daemon(3)), so with these prefixes
`journalctl -p err` shows the server's errors and nothing else.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections.abc import Mapping
from queue import SimpleQueue
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
JOURNAL_FORMAT = "%(name)s %(levelname)s %(message)s"  # the journal adds the time
LEVELS = ("debug", "info", "warning", "error")
GATHER = 0.02  # seconds a line waits for others to be written with it

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
    "envelope",  # one SMTP transaction (runtime.decide.transaction), for `diff --replay`
)

# sd-daemon(3) / syslog(3): the priority of each logging level.
PRIORITIES = (
    (logging.CRITICAL, 2),  # SD_CRIT
    (logging.ERROR, 3),  # SD_ERR
    (logging.WARNING, 4),  # SD_WARNING
    (logging.INFO, 6),  # SD_INFO
)
DEBUG_PRIORITY = 7  # SD_DEBUG


def priority(level: int) -> int:
    """The syslog priority of a logging level; a level between the standard ones takes
    the priority of the highest standard level it reaches (35 is a warning)."""
    return next((p for floor, p in PRIORITIES if level >= floor), DEBUG_PRIORITY)


def journal_stream(value: str | None, device: int, inode: int) -> bool:
    """Whether `JOURNAL_STREAM`'s value names the file with this device and inode number."""
    if not value:
        return False
    named_device, _, named_inode = value.partition(":")
    try:
        return (int(named_device), int(named_inode)) == (device, inode)
    except ValueError:
        return False


def to_journal(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` (standard error by default) goes to systemd's journal. A child
    whose standard error was redirected elsewhere inherits `JOURNAL_STREAM`; comparing
    the stream itself tells the two apart."""
    stream = sys.stderr if stream is None else stream
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no descriptor (closed, or a StringIO)
        return False
    return journal_stream(value, status.st_dev, status.st_ino)


class PriorityFormatter(logging.Formatter):
    """Each line prefixed with its record's syslog priority, `<3>` for an error.

    Every line of a record gets the prefix, so a traceback's lines are errors too
    (journald reads each line as an entry of its own). With `inner`, the text comes
    from that formatter (a JSON one, say); otherwise from this one's `fmt`.
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        *,
        inner: logging.Formatter | None = None,
    ) -> None:
        super().__init__(fmt, datefmt)
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record) if self.inner is not None else super().format(record)
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

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
        return json.dumps(line, ensure_ascii=False, default=str)


_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def printable(text: str) -> str:
    """`text` with control characters written as `\\xNN`: what a client sends (a command
    word, an address) cannot move the cursor, clear a terminal or start a false line."""
    return text.translate(_CONTROL) if not text.isprintable() else text


def formatter(shape: str, journal: bool) -> logging.Formatter:
    """The formatter for `--log-format`; under the journal, with priorities."""
    if shape == "json":
        return PriorityFormatter(inner=JsonFormatter()) if journal else JsonFormatter()
    return PriorityFormatter(JOURNAL_FORMAT) if journal else logging.Formatter(TEXT_FORMAT)


class Writer:
    """The thread that writes log lines; `stop()` writes what is left, then ends.

    The thread wakes for a line, lets the lines of the next `GATHER` seconds join it,
    and writes them all with one `write`: under load a wake-up (and a system call)
    serves many lines, not one, and a line costs the thread that logs it no wake-up.
    """

    def __init__(self, shape: str = "text", level: str = "info") -> None:
        self.shape, self.level = shape, level
        self.lines: SimpleQueue[logging.LogRecord | None] = SimpleQueue()
        self.output = _output(shape)
        _configure(level, _Enqueue(self.lines))
        self.thread: threading.Thread | None = threading.Thread(
            target=self._write, name="log writer", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Write what is left and end the thread; later lines are written as they come
        (a supervisor of workers must have no thread when it forks)."""
        if self.thread is not None:
            self.lines.put(None)
            self.thread.join()
            self.thread = None
            _configure(self.level, self.output)

    def _write(self) -> None:
        output, lines = self.output, self.lines
        while True:
            batch = [lines.get()]
            if batch[0] is not None:
                time.sleep(GATHER)
            while not lines.empty():
                batch.append(lines.get_nowait())
            records = [record for record in batch if record is not None]
            if records:
                text = "".join(_formatted(output, record) for record in records)
                try:
                    output.stream.write(text)
                    output.flush()
                except Exception:  # a closed or full standard error: the lines are lost
                    output.handleError(records[0])
            if len(records) < len(batch):
                return


def _formatted(output: logging.Handler, record: logging.LogRecord) -> str:
    """A record's line(s); a record that cannot be formatted is reported (as the logging
    module reports one) and loses only its own line."""
    try:
        return output.format(record) + "\n"
    except Exception:
        output.handleError(record)
        return ""


def _output(shape: str) -> logging.StreamHandler[TextIO]:
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(formatter(shape, to_journal()))
    return output


def _configure(level: str, handler: logging.Handler) -> None:
    # A record needs none of the caller's frame, thread or process (no format shows
    # them): leaving them out saves a third of a line's cost (logging's "Optimization").
    # This holds for the whole process: its records say `(unknown file)`, line 0.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's own chatter


class _Enqueue(logging.handlers.QueueHandler):
    """Hands the record over as it is: the message merged with its arguments, the
    traceback as text, and the facts (`extra=`) kept for the JSON shape. The record is
    changed in place when this is the root logger's only handler (as `serve` sets it
    up), and copied first when another handler may see it after this one."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if len(logging.root.handlers) > 1:
            record = logging.makeLogRecord(record.__dict__)
        record.msg = printable(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def line(text: str) -> str:
    """A line for standard error outside the logger (a start-up error): with its
    priority when the journal reads it."""
    return f"<3>{text}" if to_journal() else text
