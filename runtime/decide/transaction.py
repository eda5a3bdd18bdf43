"""The envelope of one SMTP transaction as the log records it, for `mailplan diff --replay`.

`serve` logs one line per transaction (at the end of DATA, at the next MAIL, or when the
client goes): who the client was (address, TLS, HELO, login), MAIL FROM and its reply,
the receiving checks' verdicts (so a replay asks no DNS), and each RCPT TO with its
reply. In the JSON log the line carries it as `"envelope": {...}` (`record`); a file of
these objects, one a line, is read the same (`parse`). docs/diff.md shows the shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recorded:
    check: str  # rbl, return-path, spf, reverse-connect
    result: str
    reply: str | None = None  # the refusal, when the check refused


@dataclass
class Transaction:
    client: str
    tls: bool
    helo: str
    login: str | None
    sender: str  # as MAIL FROM gave it, without <>; "" for the null sender
    mail: str = ""  # the reply to MAIL FROM
    verdicts: list[Recorded] = field(default_factory=list)
    recipients: list[tuple[str, str]] = field(default_factory=list)  # (address, reply)
    data: str | None = None  # the reply to DATA, if it came to that

    def record(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "tls": self.tls,
            "helo": self.helo,
            "login": self.login,
            "from": self.sender,
            "mail": self.mail,
            "verdicts": [
                {"check": v.check, "result": v.result, **({"reply": v.reply} if v.reply else {})}
                for v in self.verdicts
            ],
            "rcpt": [{"to": address, "reply": reply} for address, reply in self.recipients],
            **({"data": self.data} if self.data is not None else {}),
        }


def parse(data: Any) -> Transaction:
    """A transaction from its record; ValueError names what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("an envelope is a JSON object")
    try:
        verdicts = [
            Recorded(_text(v["check"]), _text(v["result"]), _optional(v.get("reply")))
            for v in data.get("verdicts", [])
        ]
        recipients = [(_text(r["to"]), _text(r.get("reply", ""))) for r in data["rcpt"]]
        return Transaction(
            client=_text(data["client"]),
            tls=bool(data.get("tls", False)),
            helo=_text(data.get("helo", "")),
            login=_optional(data.get("login")),
            sender=_text(data["from"]),
            mail=_text(data.get("mail", "")),
            verdicts=verdicts,
            recipients=recipients,
            data=_optional(data.get("data")),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"an envelope without {exc}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not text: {value!r}")
    return value


def _optional(value: Any) -> str | None:
    return None if value is None else _text(value)
