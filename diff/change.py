"""One change between two plans, the groups changes are shown in, and the exit code."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The groups in the order they are shown; `unsafe` changes are listed once more, first.
GROUPS = {
    "server": "server",
    "domains": "domains and aliases",
    "accounts": "accounts",
    "forwarders": "forwarders",
    "lists": "lists and members",
    "listeners": "listeners",
    "scopes": "relaying and receiving scopes",
    "limits": "limits",
    "routes": "routing table",
    "behaviour": "behaviour (proved with the router)",
    "rules": "rules",
    "pipes": "pipes",
    "dns": "DNS records",
    "digests": "digests",
}

NO_CHANGE, SAFE, ERRORS, UNSAFE = 0, 1, 2, 3


@dataclass(frozen=True)
class Change:
    """One line of the diff; `unsafe` says why it is unsafe (None: it is safe)."""

    group: str
    text: str
    unsafe: str | None = None

    def line(self) -> str:
        return f"{self.text}  [unsafe: {self.unsafe}]" if self.unsafe else self.text


def ordered(changes: Iterable[Change]) -> tuple[Change, ...]:
    """The changes grouped in the order of `GROUPS`, each group as it was found."""
    found = list(changes)
    return tuple(c for group in GROUPS for c in found if c.group == group)


def exit_code(changes: Iterable[Change], allow_unsafe: bool = False) -> int:
    """0 no change, 1 safe changes only (or unsafe ones allowed), 3 unsafe."""
    found = list(changes)
    if not found:
        return NO_CHANGE
    if any(c.unsafe for c in found) and not allow_unsafe:
        return UNSAFE
    return SAFE
