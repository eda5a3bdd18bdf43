"""Log lines for systemd's journal: syslog priorities as `<N>` prefixes.

When systemd connects a service's standard error to the journal, it sets
`JOURNAL_STREAM` to that stream's `DEVICE:INODE`. journald reads a `<N>` at the
start of each line as the line's priority (sd-daemon(3)), so with these prefixes
`journalctl -p err` shows the server's errors and nothing else.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

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
