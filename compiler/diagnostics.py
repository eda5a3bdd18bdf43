"""Diagnostics: the one shape in which every compiler problem is reported.

`FILE:LINE:COL: error|warning CODE: message`, then the source line and a caret
under the column. Codes are stable and documented in docs/diagnostics.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, order=True)
class Diagnostic:
    file: str
    line: int
    column: int
    severity: Severity
    code: str
    message: str

    def headline(self, prefix: str = "") -> str:
        place = f"{prefix}{self.file}:{self.line}:{self.column}"
        return f"{place}: {self.severity} {self.code}: {self.message}"


def error(file: str, line: int, column: int, code: str, message: str) -> Diagnostic:
    return Diagnostic(file, line, column, "error", code, message)


def warning(file: str, line: int, column: int, code: str, message: str) -> Diagnostic:
    return Diagnostic(file, line, column, "warning", code, message)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def ordered(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Sorted by file, line and column, each reported once."""
    return sorted(set(diagnostics))


def split_lines(text: str) -> list[str]:
    """The lines of a text as editors count them: ended by LF, CRLF or CR, nothing else.

    (`str.splitlines` also ends lines at form feeds, NEL, U+2028 and others, which would
    put every later diagnostic on the wrong line.)
    """
    return (
        re.split(r"\r\n|\r|\n", text.removesuffix("\r\n").removesuffix("\n").removesuffix("\r"))
        if text
        else []
    )


def render_text(
    diagnostics: Iterable[Diagnostic], texts: Mapping[str, str], prefix: str = ""
) -> str:
    """Each diagnostic with its source line and a caret, then a count."""
    out: list[str] = []
    items = ordered(diagnostics)
    for d in items:
        out.append(d.headline(prefix))
        lines = split_lines(texts.get(d.file, ""))
        if 0 < d.line <= len(lines):
            source = lines[d.line - 1].expandtabs(1)
            out.append(f"    {source}")
            out.append("    " + " " * (max(d.column, 1) - 1) + "^")
    errors = sum(1 for d in items if d.severity == "error")
    warnings = len(items) - errors
    if items:
        out.append(f"{_count(errors, 'error')}, {_count(warnings, 'warning')}")
    return "\n".join(out)


def render_json(diagnostics: Iterable[Diagnostic], prefix: str = "") -> str:
    items = [
        {
            "file": f"{prefix}{d.file}",
            "line": d.line,
            "column": d.column,
            "severity": d.severity,
            "code": d.code,
            "message": d.message,
        }
        for d in ordered(diagnostics)
    ]
    return json.dumps(items, indent=2)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
