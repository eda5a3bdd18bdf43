"""The last line of defence of every command: an exception nobody expected is one line
on standard error and exit status 70 (EX_SOFTWARE), its traceback only with `--debug`.

It is no substitute for diagnostics: the fuzz suite (tests/test_fuzz.py) fails on it.
"""

from __future__ import annotations

import traceback

EXIT = 70  # EX_SOFTWARE, sysexits.h


def line(exc: BaseException) -> str:
    """One line that names the exception, for the operator to report."""
    what = " ".join(str(exc).split())
    what = f"{type(exc).__name__}: {what[:300]}" if what else type(exc).__name__
    return f"mailplan: internal error: {what}; please report it with this site"


def where(exc: BaseException) -> str:
    """The traceback of `exc`, for `--debug`."""
    return "".join(traceback.format_exception(exc)).rstrip("\n")
