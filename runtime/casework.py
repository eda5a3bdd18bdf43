"""The site's own tests (`tests:` in site.yaml), judged by the decisions the server makes.

Each case is an SMTP transaction in brief (client IP, login, sender, recipient) or a
login name; its outcome is what the server's policy and router would do, written as
the case's `expect` is: `local ACCOUNT`, `smtp QUEUE`, `pipe NAME`, `list LIST`,
`discard`, or `reject CODE`.
"""

from __future__ import annotations

from dataclasses import dataclass

from plan.model import TestCase
from runtime.policy import Policy


@dataclass(frozen=True)
class Verdict:
    case: TestCase
    outcome: str

    @property
    def passed(self) -> bool:
        expected = self.case.expect
        if expected == "reject":
            return self.outcome.startswith("reject")
        return self.outcome == expected


def judge(policy: Policy, case: TestCase) -> Verdict:
    return Verdict(case, outcome(policy, case))


def outcome(policy: Policy, case: TestCase) -> str:
    """What the server would do with the case, in the words of `expect`."""
    router = policy.router
    if case.kind == "access":
        routing = router.route(case.to, "access")
        if routing.module == "LOCAL":
            return f"local {routing.queue}"
        return f"reject {routing.status or '5.7.8'}"
    if case.sender is not None:
        refusal = policy.sender(case.sender)
        if refusal:
            return f"reject {_status(refusal)}"
    if case.client is None and case.authenticated is None:
        routing = router.route(case.to, case.kind)
        if routing.module == "ERROR":
            return f"reject {routing.status}"
    else:
        login = None
        if case.authenticated is not None:
            account = router.route(case.authenticated, "access")
            login = account.queue if account.module == "LOCAL" else None
        client = policy.client(case.client or "", tls=False, authenticated=login)
        reply, accepted = policy.recipient(client, case.to, 0)
        if accepted is None:
            return f"reject {_status(reply)}"
        routing = accepted
    if routing.module == "DISCARD":
        return "discard"
    return f"{routing.module.lower()} {routing.queue}"


def _status(reply: str) -> str:
    """The enhanced status code of a reply line (`550 5.7.1 ...` gives `5.7.1`)."""
    words = reply.split()
    return words[1] if len(words) > 1 and words[1][:1].isdigit() else words[0]
