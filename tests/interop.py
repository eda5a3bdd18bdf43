"""Interop tests: the few tests whose point is a real program from Debian
(BIND, Dovecot and its LMTP server, rspamd, swaks, sslscan, systemd, Postfix's
smtp-sink).

A test says what it runs with `@pytest.mark.interop("named")`; `conftest.py` hands
each test to `skip_if_missing` and `fail_if_required`. When a program is missing the
test is skipped with a reason that names the Debian package to install; with
`MAILPLAN_INTEROP=require` in the environment (`.ci/run` sets it) a missing program
fails the test instead, so CI cannot lose these tests without a word. `make interop`
runs only them (`pytest -m interop`). Tests find a program's path with `program(name)`.
"""

from __future__ import annotations

import os
import shutil

import pytest

# program -> the Debian package that installs it
PACKAGES = {
    "named": "bind9",
    "named-checkzone": "bind9-utils",
    "dovecot": "dovecot-imapd",
    "lmtp": "dovecot-lmtpd",  # Dovecot's LMTP server, in /usr/lib/dovecot
    "rspamd": "rspamd",
    "swaks": "swaks",
    "sslscan": "sslscan",
    "systemd-analyze": "systemd",
    "smtp-sink": "postfix",  # Postfix's test server: the outbound client's pipelining
}
# Daemons live in sbin, which a normal user's PATH may leave out.
SEARCHED = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/lib/dovecot")
REQUIRE = "MAILPLAN_INTEROP"


def program(name: str) -> str | None:
    """The path of `name` on this machine (PATH, then sbin), or None."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SEARCHED])
    return shutil.which(name, path=path)


def missing(item: pytest.Item) -> str | None:
    """Why `item` cannot run here ("needs PACKAGE (PROGRAM)"), or None if it can."""
    for marker in item.iter_markers("interop"):
        for name in marker.args:
            if name not in PACKAGES:
                raise ValueError(f"interop marker: unknown program {name!r} (add it to PACKAGES)")
            if program(name) is None:
                return f"needs {PACKAGES[name]} ({name})"
    return None


def skip_if_missing(item: pytest.Item) -> None:
    """At collection: a skip mark on a test whose program is missing (unless required)."""
    reason = missing(item)
    if reason is not None and os.environ.get(REQUIRE) != "require":
        item.add_marker(pytest.mark.skip(reason=reason))


def fail_if_required(item: pytest.Item) -> None:
    """Before the test runs: under MAILPLAN_INTEROP=require, a missing program fails it."""
    reason = missing(item)
    if reason is not None and os.environ.get(REQUIRE) == "require":
        pytest.fail(f"{reason}: missing, and {REQUIRE}=require", pytrace=False)
