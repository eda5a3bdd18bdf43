"""`mailplan diff OLD NEW --replay LOG`: the envelopes a server recorded, decided again under
each plan by the runtime's own pure functions, and what would change.

Each envelope (`runtime.decide.transaction`, from a JSON log line's `"envelope"` or a
file of them) is decided as the server decides it: the client's address against the
Client IPs and the blacklist, MAIL FROM by the router, the receiving checks whose scope
covers the client (their verdicts are the recorded ones: no DNS is asked), then each
RCPT TO by the router and the relaying scope, with the recipient limit. The outcome of a
recipient is the reply and, when accepted, where it goes. A check the new plan runs
and the recorded session did not (its scope was narrower, or an earlier check refused
first) has no verdict: its recipients are counted apart, as undecided.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from mailplan.plan.model import Plan, Scope
from mailplan.runtime.decide.policy import Client, Policy, in_scope
from mailplan.runtime.decide.router import Routing
from mailplan.runtime.decide.transaction import Transaction, parse

UNDECIDED = "undecided: a check ran that the log has no verdict of"


@dataclass(frozen=True)
class Unreadable:
    line: int
    why: str


@dataclass
class Replay:
    envelopes: int = 0
    recipients: int = 0
    changed_envelopes: int = 0
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (old, new) → count
    senders: int = 0  # envelopes without RCPT (MAIL was refused) whose MAIL would change
    unreadable: list[Unreadable] = field(default_factory=list)
    not_json: int = 0  # lines of text: a log not written with --log-format json

    @property
    def changed(self) -> int:
        """Recipients whose outcome changes."""
        return sum(self.changes.values()) - self.senders


def read(lines: Iterable[str]) -> Iterator[Transaction | Unreadable | None]:
    """The envelopes of a log: JSON lines with `"envelope"` (other lines are skipped), or
    lines that are envelopes themselves; what cannot be read, by line number; None for a
    line that is no JSON at all. A syslog priority before a line (`<6>`, under the
    journal) is skipped."""
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("<") and ">" in text[:5]:
            text = text.partition(">")[2]
        if not text:
            continue
        try:
            data = json.loads(text)
        except ValueError:
            yield None
            continue
        if isinstance(data, dict) and "envelope" in data:
            data = data["envelope"]
        elif not (isinstance(data, dict) and "rcpt" in data):
            continue  # another line of the log
        try:
            yield parse(data)
        except ValueError as exc:
            yield Unreadable(number, str(exc))


def replay(old: Plan, new: Plan, lines: Iterable[str]) -> Replay:
    before, after = Policy(old), Policy(new)
    report = Replay()
    for found in read(lines):
        if found is None:
            report.not_json += 1
            continue
        if isinstance(found, Unreadable):
            report.unreadable.append(found)
            continue
        report.envelopes += 1
        report.recipients += len(found.recipients)
        was, now = decide(before, found), decide(after, found)
        if not found.recipients:  # MAIL was refused, or the client sent no RCPT
            was, now = [at_mail(before, found)], [at_mail(after, found)]
            report.senders += was != now
        changed = [(a, b) for a, b in zip(was, now, strict=True) if a != b]
        if changed:
            report.changed_envelopes += 1
            report.changes.update(changed)
    return report


def decide(policy: Policy, transaction: Transaction) -> list[str]:
    """The outcome of each recipient of `transaction` under `policy`'s plan."""
    client = policy.client(transaction.client, transaction.tls, transaction.login)
    greeting = policy.refuse_connection(client)
    refused = f"connect {_short(greeting)}" if greeting else _mail(policy, client, transaction)
    if refused is not None:
        return [refused] * len(transaction.recipients)
    outcomes, accepted = [], 0
    for address, _ in transaction.recipients:
        reply, routing = policy.recipient(client, address, accepted)
        if routing is None:
            outcomes.append(_short(reply))
            continue
        accepted += 1
        outcomes.append(f"{reply[:3]} {_where(routing)}")
    return outcomes


def at_mail(policy: Policy, transaction: Transaction) -> str:
    """The outcome of MAIL FROM alone, for an envelope with no recipient recorded."""
    client = policy.client(transaction.client, transaction.tls, transaction.login)
    greeting = policy.refuse_connection(client)
    if greeting:
        return f"connect {_short(greeting)}"
    return _mail(policy, client, transaction) or "MAIL 250 (no RCPT recorded)"


def _mail(policy: Policy, client: Client, transaction: Transaction) -> str | None:
    """What refuses MAIL FROM: the router, or a receiving check (by its recorded verdict)."""
    refusal = policy.sender(transaction.sender)
    if refusal is not None:
        return f"MAIL {_short(refusal)}"
    verdicts = {verdict.check: verdict for verdict in transaction.verdicts}
    checked = client.trusted or client.authenticated is not None
    for check, scope in _checks(policy.plan):
        if not in_scope(scope, checked):
            continue
        verdict = verdicts.get(check)
        if verdict is None:
            return UNDECIDED
        if verdict.reply:
            return f"MAIL {_short(verdict.reply)} ({check})"
    return None


def _checks(plan: Plan) -> tuple[tuple[str, Scope], ...]:
    """The receiving checks in the order the server runs them (`smtp.receiving.at_mail`),
    with their scopes (a DNSBL check without zones decides nothing)."""
    receiving = plan.receiving
    return (
        ("rbl", receiving.rbl.scope if receiving.rbl.zones else "nobody"),  # none to ask
        ("return-path", receiving.return_path.scope),
        ("spf", receiving.spf.scope),
        ("reverse-connect", receiving.reverse_connect.scope),
    )


def _short(reply: str) -> str:
    """A reply's code and enhanced status code: `550 5.7.1`."""
    code, _, rest = reply.partition(" ")
    status = rest.split(" ", 1)[0]
    return f"{code} {status}" if status[:1].isdigit() and "." in status else code


def _where(routing: Routing) -> str:
    if routing.module == "SMTP":
        return f"relayed to {routing.queue}"
    if routing.module == "LOCAL":
        return f"to account {routing.queue}"
    return f"{routing.module}({routing.queue})" if routing.queue else routing.module


def render(report: Replay, source: str, form: str) -> str:
    """The replay in `form` (text, json, markdown)."""
    rows = sorted(report.changes.items(), key=lambda item: (-item[1], item[0]))
    if form == "json":
        document = {
            "log": source,
            "envelopes": report.envelopes,
            "recipients": report.recipients,
            "changed_envelopes": report.changed_envelopes,
            "changed_recipients": report.changed,
            "changed_senders": report.senders,
            "changes": [{"old": a, "new": b, "count": n} for (a, b), n in rows],
            "unreadable": [{"line": u.line, "why": u.why} for u in report.unreadable],
            "not_json": report.not_json,
        }
        return json.dumps(document, indent=2) + "\n"
    head = (
        f"{report.changed_envelopes:,} of {report.envelopes:,} envelope(s) in {source} change"
        f" ({report.changed:,} of {report.recipients:,} recipient(s)"
        + (f", {report.senders:,} MAIL FROM without RCPT" if report.senders else "")
        + ")"
    )
    bad = [f"line {u.line}: {u.why}" for u in report.unreadable]
    if report.not_json:
        bad.append(f"{report.not_json} line(s) are not JSON: is the log --log-format json?")
    if form == "markdown":
        lines = ["#### Replay", "", f"**{head}**", ""]
        if rows:
            lines += ["| recipients | was | would be |", "|---:|---|---|"]
            lines += [f"| {n:,} | `{a}` | `{b}` |" for (a, b), n in rows]
            lines.append("")
        lines += [f"- {line}" for line in bad]
        return "\n".join(lines) + "\n"
    lines = [f"replay: {head}"]
    lines += [f"  {n:>7,}  {a} -> {b}" for (a, b), n in rows]
    lines += [f"  {line}" for line in bad]
    return "\n".join(lines) + "\n"
