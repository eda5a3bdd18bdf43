"""The site's own tests (`tests:` in site.yaml), judged by the decisions the server makes.

Each case is an SMTP transaction in brief (client IP, login, sender, recipient) or a
login name; its outcome is what the server's policy and router would do, written as
the case's `expect` is: `local ACCOUNT`, `smtp QUEUE`, `pipe NAME`, `list LIST`,
`discard`, or `reject CODE`. A case about rules (`expect: rule NAME`, `no rule`, or
`actions: [...]`) builds the message the case describes and runs it through the server
rules and, when it is delivered locally, the domain's and the account's rules, with the
same evaluator the server uses. A case that brings DNS (`dns:` zones) also runs the
receiving checks (DNSBL, Return-Path, SPF) on its client IP, HELO and sender, and
DKIM/DMARC on the message it describes, asking only those zones, so that it needs no
network: a DMARC refusal is its outcome, and the rules see its Authentication-Results.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP

from mailplan.plan.model import TestCase
from mailplan.runtime.decide.policy import Policy
from mailplan.runtime.dns.lookup import Zones, zone_of
from mailplan.runtime.rules.engine import Facts, Headers, Outcome, RuleBook
from mailplan.runtime.smtp.authentication import Authenticated, Authentication
from mailplan.runtime.smtp.receiving import Checks


@dataclass(frozen=True)
class Judgement:
    case: TestCase
    outcome: str
    actions: tuple[str, ...] | None = None

    @property
    def passed(self) -> bool:
        expected = self.case.expect
        wanted = self.case.message.actions
        if wanted is not None and (
            self.actions is None or [_plain(a) for a in self.actions] != [_plain(a) for a in wanted]
        ):
            return False
        if expected == "reject":
            return self.outcome.startswith("reject")
        return self.outcome == expected


def judge(policy: Policy, case: TestCase, book: RuleBook | None = None) -> Judgement:
    result = outcome(policy, case)
    about_rules = case.expect.startswith("rule ") or case.expect == "no rule"
    if not about_rules and case.message.actions is None:
        return Judgement(case, result)
    if result.startswith("reject") and about_rules:
        return Judgement(case, result, ())
    decided = rules(policy, book or RuleBook(policy.plan), case)
    names = [rule.name for rule in decided.fired]
    if about_rules:
        wanted = case.expect[len("rule ") :]
        if case.expect != "no rule" and wanted in names:
            result = case.expect
        else:
            result = "; ".join(f"rule {name}" for name in names) or "no rule"
    return Judgement(case, result, decided.actions())


def _plain(action: str) -> str:
    """An action's text compared loosely: case, quotes and runs of spaces do not matter."""
    return " ".join(action.replace('"', "").lower().split())


def rules(policy: Policy, book: RuleBook, case: TestCase) -> Outcome:
    """What the server rules, then (for local delivery) the domain's and the account's
    rules decide about the message the case describes."""
    return decide(policy, book, _facts(policy, case), case.to)


def decide(policy: Policy, book: RuleBook, facts: Facts, to: str) -> Outcome:
    """The server rules' outcome, followed (when `to` is delivered locally and the server
    rules did not stop) by that of the domain's and the account's rules."""
    server = book.server.evaluate(facts)
    routing = policy.router.route(to, "mail")
    if server.stopped or routing.module != "LOCAL":
        return server
    account = policy.accounts.get(routing.queue)
    if account is not None:
        folders = {folder.lower() for folder in account.folders}
        facts = replace(facts, mailboxes=lambda name: name.lower() in folders)
    local = book.local(routing.queue).evaluate(facts)
    return Outcome(server.steps + local.steps, server.fired + local.fired, local.stopped)


def _facts(policy: Policy, case: TestCase) -> Facts:
    described = case.message
    raw = _message(case)
    if case.dns:  # what the server adds on top: Authentication-Results, a quarantine mark
        added = "".join(f"{line}\r\n" for line in _authenticated(policy, case).headers)
        raw = added.encode("utf-8", "surrogateescape") + raw
    sources = {"remote"}
    if case.client is not None and case.client in policy.client_ips:
        sources.add("trusted")
    if case.authenticated is not None:
        sources.add("authenticated")
    now = datetime.fromisoformat(described.at) if described.at else datetime.now()
    return Facts(
        headers=Headers.parse(raw),
        sender=case.sender or "",
        recipients=(case.to,),
        size=described.size if described.size is not None else len(raw),
        sources=frozenset(sources),
        tls=described.tls,
        submit_address=case.client or "",
        now=now,
    )


def _message(case: TestCase) -> bytes:
    """The message the case describes, as a client would send it."""
    described = case.message
    message = EmailMessage()
    given = {header.name.lower() for header in described.headers}
    if case.sender and "from" not in given:
        message["From"] = case.sender
    if "to" not in given:
        message["To"] = case.to
    if described.subject is not None:
        message["Subject"] = described.subject
    for header in described.headers:
        message[header.name] = header.value
    message.set_content("A message described by a test case.\n")
    return message.as_bytes(policy=SMTP)


def _authenticated(policy: Policy, case: TestCase) -> Authenticated:
    """DKIM and DMARC of the case's message, with the DNS the case brings."""
    answerer = Zones({zone.origin: zone_of(zone.origin, zone.records) for zone in case.dns})
    client = policy.client(
        case.client or "192.0.2.0", tls=False, authenticated=_login(policy, case)
    )
    check = Authentication(policy.plan, answerer).check
    return asyncio.run(check(client, case.helo or "", case.sender or "", None, _message(case)))


def outcome(policy: Policy, case: TestCase) -> str:
    """What the server would do with the case, in the words of `expect`."""
    if case.kind == "access":
        routing = policy.router.route(case.to, "access")
        if routing.module == "LOCAL":
            return f"local {routing.queue}"
        return f"reject {routing.status or '5.7.8'}"
    refusal = _sender_refusal(policy, case)
    if refusal:
        return f"reject {_status(refusal)}"
    return _recipient(policy, case)


def _sender_refusal(policy: Policy, case: TestCase) -> str | None:
    """The reply refusing the case's sender: by the policy, or by the checks with its DNS."""
    if case.sender is not None:
        refusal = policy.sender(case.sender)
        if refusal:
            return refusal
    if case.dns:
        return _checks(policy, case) or _authenticated(policy, case).reply
    return None


def _recipient(policy: Policy, case: TestCase) -> str:
    """What RCPT TO comes to: a rejection, or the module and queue the mail goes to.

    A case without a client or a login is routed only; one with either is judged as the
    session would judge it (relaying, the client's limits).
    """
    if case.client is None and case.authenticated is None:
        routing = policy.router.route(case.to, case.kind)
        if routing.module == "ERROR":
            return f"reject {routing.status}"
    else:
        client = policy.client(case.client or "", tls=False, authenticated=_login(policy, case))
        reply, accepted = policy.recipient(client, case.to, 0)
        if accepted is None:
            return f"reject {_status(reply)}"
        routing = accepted
    if routing.module == "DISCARD":
        return "discard"
    return f"{routing.module.lower()} {routing.queue}"


def _checks(policy: Policy, case: TestCase) -> str | None:
    """The receiving checks' refusal of the case's MAIL FROM, with the DNS the case brings."""
    answerer = Zones({zone.origin: zone_of(zone.origin, zone.records) for zone in case.dns})
    checks = Checks(policy.plan, policy.router, answerer)
    client = policy.client(
        case.client or "192.0.2.0", tls=False, authenticated=_login(policy, case)
    )
    verdicts = asyncio.run(checks.at_mail(client, case.helo or "", case.sender or ""))
    return next((verdict.reply for verdict in verdicts if verdict.reply), None)


def _login(policy: Policy, case: TestCase) -> str | None:
    """The account the case's session logged in as, if it did."""
    if case.authenticated is None:
        return None
    account = policy.router.route(case.authenticated, "access")
    return account.queue if account.module == "LOCAL" else None


def _status(reply: str) -> str:
    """The enhanced status code of a reply line (`550 5.7.1 ...` gives `5.7.1`)."""
    words = reply.split()
    return words[1] if len(words) > 1 and words[1][:1].isdigit() else words[0]
