"""Diagnostics for CI tools: GitHub Actions workflow commands (`check --format github`),
which show each finding on its line of a pull request, and SARIF 2.1.0 (`--format
sarif`), which code-scanning tools read. docs/ci.md shows both in a workflow."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from mailplan.compiler.diagnostics import Diagnostic, ordered

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def render_github(diagnostics: Iterable[Diagnostic], prefix: str = "") -> str:
    """One workflow command a diagnostic: `::error file=F,line=L,col=C,title=MP201::text`."""
    lines = []
    for d in ordered(diagnostics):
        where = {"file": f"{prefix}{d.file}", "line": str(d.line), "col": str(d.column)}
        properties = ",".join(
            f"{key}={_property(value)}"
            for key, value in (*where.items(), ("title", d.code))
            if key not in ("line", "col") or int(value) > 0
        )
        lines.append(f"::{d.severity} {properties}::{_data(d.message)}")
    return "\n".join(lines)


def _data(text: str) -> str:
    """A workflow command's message, escaped as the runner unescapes it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def render_sarif(diagnostics: Iterable[Diagnostic], prefix: str = "") -> str:
    """A SARIF 2.1.0 log of one run of mailplan, a result per diagnostic, paths relative
    to the repository's top (`%SRCROOT%`) when `prefix` is."""
    items = ordered(diagnostics)
    codes = sorted({d.code for d in items})
    rules = [{"id": code, "name": code} for code in codes]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "mailplan",
                        "version": _version(),
                        "rules": rules,
                    }
                },
                "results": [_result(d, codes.index(d.code), prefix) for d in items],
                "columnKind": "unicodeCodePoints",
            }
        ],
    }
    return json.dumps(log, indent=2, ensure_ascii=False)


def _result(d: Diagnostic, index: int, prefix: str) -> dict[str, Any]:
    location: dict[str, Any] = {
        "artifactLocation": {"uri": f"{prefix}{d.file}", "uriBaseId": "%SRCROOT%"}
    }
    if d.line > 0:
        location["region"] = {"startLine": d.line, "startColumn": max(d.column, 1)}
    return {
        "ruleId": d.code,
        "ruleIndex": index,
        "level": d.severity,
        "message": {"text": d.message},
        "locations": [{"physicalLocation": location}],
    }


def _version() -> str:
    try:
        return metadata.version("mailplan")
    except metadata.PackageNotFoundError:
        return "unknown"
