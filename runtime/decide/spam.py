"""What rspamd's answer means for a message at the end of DATA (pure).

rspamd's `/checkv2` answers JSON with an `action`; it maps to the reply as Postfix's
and Exim's rspamd integrations do:

| action | reply | the message |
|---|---|---|
| `reject` | `550 5.7.1` | refused |
| `soft reject`, `greylist` | `451 4.7.1` | refused for now (the client tries again) |
| `rewrite subject` | accepted | `X-Spam-*` headers, Subject as rspamd wrote it |
| `add header` | accepted | `X-Spam-*` headers with `X-Spam-Flag: YES` |
| `no action` | accepted | `X-Spam-*` headers with `X-Spam-Flag: NO` |

`X-Spam-*` fields that came with the message are removed before rspamd's are added,
so a sender cannot pass its own verdict to the rules; rules (docs/rules.md) act on
these headers (`Header Field is "X-Spam-Flag: YES*"`). Headers that rspamd asks for
(`milter.add_headers`) are added too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header
from typing import Any

from mailplan.runtime.decide import replies
from mailplan.runtime.decide.message import split

SPAM_HEADERS = (b"x-spam-flag", b"x-spam-score", b"x-spam-action", b"x-spam-status")
SYMBOLS_SHOWN = 30  # symbols named in X-Spam-Status, the heaviest first
_FIELD = re.compile(rb"[!-9;-~]+:")  # a header field name (RFC 5322 ftext) and its colon
_SUBJECT = re.compile(rb"subject:", re.IGNORECASE)


@dataclass(frozen=True)
class SpamVerdict:
    """What to do with the message: `reply` refuses it (None: accepted with `headers`
    on top, and `subject` for its Subject when rspamd rewrote it)."""

    action: str
    score: float
    reply: str | None
    headers: tuple[tuple[str, str], ...]
    subject: str | None = None

    def log(self) -> str:
        return f"rspamd: {self.action} (score {self.score:.2f})"


class Unreadable(ValueError):
    """rspamd answered something that is not a `/checkv2` result."""


def verdict(result: Mapping[str, Any]) -> SpamVerdict:
    """rspamd's `/checkv2` JSON as a verdict; raises `Unreadable` for anything else."""
    action = result.get("action")
    score = result.get("score", 0.0)
    if not isinstance(action, str) or not isinstance(score, int | float):
        raise Unreadable(f"no action and score in rspamd's answer: {str(result)[:200]}")
    if action == "reject":
        return SpamVerdict(action, score, _reply(result, replies.SPAM_REJECTED), ())
    if action in ("soft reject", "greylist"):
        reply = replies.GREYLISTED if action == "greylist" else replies.SPAM_TRY_LATER
        return SpamVerdict(action, score, _reply(result, reply), ())
    spam = action in ("add header", "rewrite subject")
    required = result.get("required_score")
    status = f"{'Yes' if spam else 'No'}, score={score:.2f}"
    if isinstance(required, int | float):
        status += f" required={required:.2f}"
    symbols = result.get("symbols")
    if isinstance(symbols, Mapping) and symbols:
        status += " tests=" + ",".join(_heaviest(symbols))
    headers = [
        ("X-Spam-Flag", "YES" if spam else "NO"),
        ("X-Spam-Score", f"{score:.2f}"),
        ("X-Spam-Action", action),
        ("X-Spam-Status", status),
        *_asked(result),
    ]
    subject = result.get("subject") if action == "rewrite subject" else None
    return SpamVerdict(
        action, score, None, tuple(headers), subject if isinstance(subject, str) else None
    )


def _reply(result: Mapping[str, Any], default: str) -> str:
    """The reply: rspamd's own SMTP message when it gives one, under our codes."""
    messages = result.get("messages")
    text = messages.get("smtp_message") if isinstance(messages, Mapping) else None
    if not isinstance(text, str) or not text.strip() or not text.isprintable():
        return default
    code, status, _ = default.split(" ", 2)
    return f"{code} {status} {' '.join(text.split())[:200]}"  # our codes, rspamd's words


def _heaviest(symbols: Mapping[str, Any]) -> list[str]:
    def weight(name: str) -> float:
        found = symbols[name]
        score = found.get("score", 0.0) if isinstance(found, Mapping) else 0.0
        return -abs(score) if isinstance(score, int | float) else 0.0

    named = [name for name in symbols if isinstance(name, str) and name.isprintable()]
    return sorted(named, key=lambda name: (weight(name), name))[:SYMBOLS_SHOWN]


def _asked(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Headers rspamd asks the MTA to add (`milter.add_headers`), printable ones only."""
    milter = result.get("milter")
    asked = milter.get("add_headers") if isinstance(milter, Mapping) else None
    if not isinstance(asked, Mapping):
        return []
    found = []
    for name, value in asked.items():
        text = value.get("value") if isinstance(value, Mapping) else value
        printable = isinstance(text, str) and text.isprintable()
        if printable and isinstance(name, str) and _FIELD.fullmatch(name.encode() + b":"):
            found.append((name, str(text)))
    return found


def apply(message: bytes, verdict: SpamVerdict) -> bytes:
    """The message as it is accepted: its own `X-Spam-*` fields out, the verdict's
    headers on top, the Subject rspamd rewrote."""
    head, blank, body = split(message)
    newline = b"\r\n" if b"\r\n" in head[:1000] or not head else b"\n"
    fields = _fields(head)
    kept = [f for f in fields if f.split(b":", 1)[0].strip().lower() not in SPAM_HEADERS]
    if verdict.subject is not None:
        words = " ".join(verdict.subject.split())
        subject = f"Subject: {Header(words, 'utf-8').encode() if not words.isascii() else words}"
        subject_line = subject.encode() + newline
        at = next((i for i, f in enumerate(kept) if _SUBJECT.match(f)), None)
        if at is None:
            kept.append(subject_line)
        else:
            kept[at] = subject_line
    top = b"".join(f"{name}: {value}".encode() + newline for name, value in verdict.headers)
    return top + b"".join(kept) + blank + body


def _fields(head: bytes) -> list[bytes]:
    """The header block as fields, each with its folded lines and line ends."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields
