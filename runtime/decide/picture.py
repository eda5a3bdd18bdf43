"""`*` pictures, as CommuniGate Pro writes them: `*` matches any run of characters.

Matching ignores case, as addresses do; the text each `*` matched is captured from
the subject as written, so substitution keeps the sender's spelling. When several
`*` could split a subject in more than one way, each `*` takes as little as it can,
from the left.
"""

from __future__ import annotations

import msgspec


class Picture(msgspec.Struct, frozen=True, gc=False):
    text: str
    segments: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> Picture:
        lowered = text.lower()
        return cls(lowered, tuple(lowered.split("*")))

    @property
    def stars(self) -> int:
        return len(self.segments) - 1

    def match(self, subject: str) -> tuple[str, ...] | None:
        """What each `*` matched in `subject`, or None when the picture does not match."""
        low = subject.lower()
        if len(low) != len(subject):
            subject = low
        segments = self.segments
        if len(segments) == 1:
            return () if low == segments[0] else None
        first, last = segments[0], segments[-1]
        end = len(low) - len(last)
        if end < len(first) or not low.startswith(first) or not low.endswith(last):
            return None
        position = len(first)
        captures = []
        for segment in segments[1:-1]:
            found = low.find(segment, position, end)
            if found < 0:
                return None
            captures.append(subject[position:found])
            position = found + len(segment)
        captures.append(subject[position:end])
        return tuple(captures)


def substitute(template: str, captures: tuple[str, ...]) -> str:
    """`template` with its `*`, in order, replaced by `captures` (a missing one by nothing)."""
    if "*" not in template:
        return template
    parts = template.split("*")
    out = [parts[0]]
    for i, part in enumerate(parts[1:]):
        out.append(captures[i] if i < len(captures) else "")
        out.append(part)
    return "".join(out)
