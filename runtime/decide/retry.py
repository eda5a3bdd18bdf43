"""When to try a waiting recipient again, when to warn, when to give up: pure.

Each queued message has a journal, `ID.tries` next to `ID.msg`: one line per event,
appended, never rewritten.

    T <time> <status> <recipient> <reason>   a temporary failure of one recipient
                                              (in the recipient, `%` is `%25`, a space `%20`)
    W <time>                                  the delay warning was sent
    F <time>                                  `mailplan queue flush`: try now

The decisions read the journal with the *current* plan's schedule, so a new retry
schedule or limit applies at once to messages already queued. Losing the last
lines (they are not fsynced) only makes a retry come early or a warning twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """What a message's journal says."""

    attempts: dict[str, int] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, tuple[str, str]] = field(default_factory=dict)  # status, reason
    warned: bool = False
    flushed: float = 0.0


def parse(text: str) -> History:
    """The history in a journal's text; lines that do not parse (a torn write) are skipped."""
    history = History()
    for line in text.split("\n"):
        kind, _, rest = line.partition(" ")
        moment, _, rest = rest.partition(" ")
        try:
            when = float(moment)
        except ValueError:
            continue
        if kind == "T":
            status, _, rest = rest.partition(" ")
            recipient, _, reason = rest.partition(" ")
            recipient = recipient.replace("%20", " ").replace("%25", "%")
            if recipient:
                history.attempts[recipient] = history.attempts.get(recipient, 0) + 1
                history.last[recipient] = when
                history.reasons[recipient] = (status, reason)
        elif kind == "W":
            history.warned = True
        elif kind == "F":
            history.flushed = max(history.flushed, when)
    return history


def failure_line(when: float, status: str, recipient: str, reason: str) -> str:
    field = recipient.replace("%", "%25").replace(" ", "%20")
    return f"T {when:.3f} {status} {field} {' '.join(reason.split())}\n"


def event_line(kind: str, when: float) -> str:
    return f"{kind} {when:.3f}\n"


def due(history: History, recipient: str, arrived: float, schedule: tuple[int, ...]) -> float:
    """When `recipient` should be tried next: now for a fresh one, else after its interval."""
    attempts = history.attempts.get(recipient, 0)
    if attempts == 0:
        return arrived
    last = history.last[recipient]
    if history.flushed > last:
        return history.flushed
    interval = schedule[min(attempts, len(schedule)) - 1] if schedule else 0
    return last + interval


def expired(arrived: float, now: float, give_up_after: int) -> bool:
    """Whether a message has been queued for longer than the site lets it be."""
    return now - arrived >= give_up_after


def should_warn(history: History, arrived: float, now: float, warn_after: int) -> bool:
    """Whether the sender should now hear that the message is delayed (once per message)."""
    return not history.warned and warn_after > 0 and now - arrived >= warn_after
