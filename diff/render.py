"""The changes as text, JSON or markdown (a pull-request comment); unsafe ones first."""

from __future__ import annotations

import json
from collections.abc import Sequence

from mailplan.diff.change import GROUPS, Change

FORMATS = ("text", "json", "markdown")
MARKUP = set("\\`*_[]<>|#")


def summary(changes: Sequence[Change]) -> str:
    unsafe = sum(1 for c in changes if c.unsafe)
    if not changes:
        return "no change"
    return f"{len(changes)} changes, {unsafe} unsafe"


def text(changes: Sequence[Change]) -> str:
    lines = [f"UNSAFE {c.group}: {c.text} ({c.unsafe})" for c in changes if c.unsafe]
    if lines:
        lines.append("")
    for group, title in GROUPS.items():
        found = [c for c in changes if c.group == group]
        if found:
            lines += [f"{title}:", *(f"  {c.line()}" for c in found)]
    lines.append(summary(changes))
    return "\n".join(lines) + "\n"


def markdown(changes: Sequence[Change]) -> str:
    lines = ["### mailplan diff", "", f"**{summary(changes)}**", ""]
    unsafe = [c for c in changes if c.unsafe]
    if unsafe:
        lines.append("#### ⚠ Unsafe")
        lines += [f"- **{c.group}**: {_escaped(c.text)} — _{c.unsafe}_" for c in unsafe]
        lines.append("")
    for group, title in GROUPS.items():
        found = [c for c in changes if c.group == group]
        if found:
            lines += [f"#### {title}", *(f"- {_escaped(c.text)}" for c in found), ""]
    return "\n".join(lines)


def _escaped(line: str) -> str:
    """`line` for markdown: what is outside backticks has its markup characters escaped
    (`_dmarc`, `*@domain`), what is inside is code already."""
    parts = line.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = "".join(f"\\{c}" if c in MARKUP else c for c in parts[i])
    return "`".join(parts)


def as_json(changes: Sequence[Change], code: int) -> str:
    report = {
        "changes": [{"group": c.group, "text": c.text, "unsafe": c.unsafe} for c in changes],
        "unsafe": sum(1 for c in changes if c.unsafe),
        "exit": code,
    }
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render(changes: Sequence[Change], form: str, code: int) -> str:
    if form == "json":
        return as_json(changes, code)
    if form == "markdown":
        return markdown(changes)
    return text(changes)
