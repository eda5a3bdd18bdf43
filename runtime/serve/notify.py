"""Telling systemd how the server is doing: the notify protocol of sd_notify(3).

With `Type=notify` systemd puts the path of a datagram socket in `NOTIFY_SOCKET`
and waits for `READY=1` before it calls the service started. A message is one
datagram of `KEY=VALUE` lines. The address is a file system path, or, when it
starts with `@`, a name in Linux's abstract namespace (the `@` stands for a NUL
byte). Without `NOTIFY_SOCKET` (not started by systemd, or `Type=simple`) every
function here does nothing and returns False.

Only the main process's messages count with `NotifyAccess=main`; under
`serve --workers N` that is the supervisor. A forked worker inherits
`NOTIFY_SOCKET`: it should not send (systemd logs every message it ignores), so
take the variable out of a worker's environment.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("mailplan.notify")

VARIABLE = "NOTIFY_SOCKET"


def address(value: str) -> str | bytes | None:
    """The socket address `NOTIFY_SOCKET` names, or None for one this module cannot use
    (empty, relative, or another kind such as systemd's `vsock:`)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def message(fields: Mapping[str, str]) -> bytes:
    """The datagram: one `KEY=VALUE` line per field. A newline inside a value would
    start a field of its own, so it becomes a space."""
    lines = (f"{key}={' '.join(value.splitlines())}" for key, value in fields.items())
    return "\n".join(lines).encode()


def notify(fields: Mapping[str, str], environ: Mapping[str, str] | None = None) -> bool:
    """Send `fields` to systemd; True once sent. Without `NOTIFY_SOCKET`, nothing is sent.
    A socket that cannot be reached is a log line, never an exception: the server
    serves whether or not systemd hears about it."""
    value = (os.environ if environ is None else environ).get(VARIABLE, "")
    if not value:
        return False
    target = address(value)
    if target is None:
        log.warning("%s=%s: not a socket path or @name; systemd is not told", VARIABLE, value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message(fields), target)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", value, exc)
        return False
    return True


def ready(text: str | None = None) -> bool:
    """Serving: `READY=1` (also the end of a reload that `reloading` announced)."""
    return notify(_with_status({"READY": "1"}, text))


def reloading(text: str | None = None) -> bool:
    """Loading the plan again: `RELOADING=1` with `MONOTONIC_USEC` (the time the reload
    began, which systemd 253 and later ask of `Type=notify-reload`). Send `ready` when
    the reload is over, whether it succeeded or was refused."""
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = {"RELOADING": "1", "MONOTONIC_USEC": str(now)}
    return notify(_with_status(fields, text))


def stopping(text: str | None = None) -> bool:
    """Stopping: `STOPPING=1`."""
    return notify(_with_status({"STOPPING": "1"}, text))


def status(text: str) -> bool:
    """A line for `systemctl status` (`STATUS=`), such as the plan being served."""
    return notify({"STATUS": text})


def _with_status(fields: dict[str, str], text: str | None) -> dict[str, str]:
    return fields if text is None else {**fields, "STATUS": text}
