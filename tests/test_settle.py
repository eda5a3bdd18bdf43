"""`delivery.settle`: what each outcome does to the queue, in the order that loses nothing."""

from __future__ import annotations

import email
import email.policy
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import Plan
from mailplan.runtime.decide.router import Router
from mailplan.runtime.delivery.outbound import Fate
from mailplan.runtime.delivery.scheduler import Waiting, settle
from mailplan.runtime.store.spool import Envelope, Spool, new_id

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
queue: {retry: [1m, 10m], warn_after: 1h, give_up_after: 1d}
domains:
  example.com:
    accounts:
      alice: {}
"""

ARRIVED = 1_700_000_000.0
MESSAGE = b"Subject: hi\r\nFrom: alice@example.com\r\n\r\nthe body\r\n"


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    directory = tmp_path_factory.mktemp("site")
    (directory / "site.yaml").write_text(SITE, encoding="utf-8")
    unit = compile_site(directory)
    assert unit.plan is not None, unit.diagnostics
    return unit.plan


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "queue")


def queued(
    spool: Spool, plan: Plan, *recipients: str, sender: str = "alice@example.com"
) -> list[Waiting]:
    envelope = Envelope(
        id=new_id(),
        arrived=ARRIVED,
        plan="sha256:test",
        listener="smtp",
        client="127.0.0.1",
        helo="client.test",
        tls="none",
        auth="-",
        sender=sender,
        recipients=recipients,
    )
    spool.store(envelope, MESSAGE)
    router = Router(plan)
    return [
        Waiting(envelope.id, r, router.route(r), ARRIVED, envelope=envelope, message=MESSAGE)
        for r in recipients
    ]


def outcome(entry: Waiting, kind: str, status: str, text: str) -> Fate:
    return Fate(entry.queue_id, entry.recipient, kind, status, text, "mx.remote.test", True)  # type: ignore[arg-type]


def files(spool: Spool) -> list[str]:
    return sorted(path.suffix for path in spool.directory.iterdir())


def report_of(spool: Spool, queue_id: str) -> email.message.EmailMessage:
    envelope, message = spool.load(queue_id)
    assert envelope.sender == ""
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def status_fields(report: email.message.EmailMessage) -> list[dict[str, str]]:
    return [dict(block.items()) for block in list(report.iter_parts())[1].get_payload()]


def test_delivered_everywhere_removes_the_message(spool: Spool, plan: Plan) -> None:
    entries = queued(spool, plan, "a@remote.test", "b@remote.test")
    again, new = settle(
        spool, plan, entries, [outcome(e, "delivered", "2.0.0", "250 ok") for e in entries], ARRIVED
    )
    assert (again, new) == ([], [])
    assert files(spool) == []


def test_a_permanent_failure_queues_a_bounce_then_marks_done(spool: Spool, plan: Plan) -> None:
    good, bad, waits = queued(spool, plan, "a@remote.test", "b@remote.test", "c@other.test")
    again, new = settle(
        spool,
        plan,
        [good, bad],
        [
            outcome(good, "delivered", "2.0.0", "250 ok"),
            outcome(bad, "permanent", "5.1.1", "550 5.1.1 unknown"),
        ],
        ARRIVED + 5,
    )
    assert again == []
    (bounce,) = new
    assert spool.finished(good.queue_id) == {"a@remote.test", "b@remote.test"}
    assert spool.load(bounce)[0].recipients == ("alice@example.com",)
    (_, failed) = status_fields(report_of(spool, bounce))
    assert (failed["Final-Recipient"], failed["Status"]) == ("rfc822; b@remote.test", "5.1.1")
    assert failed["Diagnostic-Code"] == "smtp; 550 5.1.1 unknown"
    assert waits.recipient not in spool.finished(good.queue_id)


def test_a_temporary_failure_waits_on_the_schedule(spool: Spool, plan: Plan) -> None:
    (entry,) = queued(spool, plan, "a@remote.test")
    now = ARRIVED + 30
    again, new = settle(
        spool, plan, [entry], [outcome(entry, "temporary", "4.3.0", "451 later")], now
    )
    assert new == []
    (waiting,) = again
    assert (waiting.attempts, waiting.due, waiting.message) == (1, now + 60, None)
    history = spool.history(entry.queue_id)
    assert history.attempts == {"a@remote.test": 1}
    assert history.reasons["a@remote.test"] == ("4.3.0", "451 later")
    # The second failure waits for the second interval, and the last one repeats.
    again, _ = settle(spool, plan, [waiting], [outcome(waiting, "temporary", "4.3.0", "x")], now)
    assert again[0].due == now + 600
    again, _ = settle(spool, plan, again, [outcome(again[0], "temporary", "4.3.0", "x")], now)
    assert again[0].due == now + 600


def test_the_delay_warning_goes_once(spool: Spool, plan: Plan) -> None:
    (entry,) = queued(spool, plan, "a@remote.test")
    late = ARRIVED + 2 * 3600
    _, first = settle(spool, plan, [entry], [outcome(entry, "temporary", "4.4.1", "no")], late)
    _, second = settle(spool, plan, [entry], [outcome(entry, "temporary", "4.4.1", "no")], late)
    (warning,) = first
    assert second == []
    (_, delayed) = status_fields(report_of(spool, warning))
    assert (delayed["Action"], delayed["Status"]) == ("delayed", "4.4.1")


def test_the_delay_warning_goes_once_when_queues_settle_at_the_same_time(
    spool: Spool, plan: Plan
) -> None:
    """Two recipients in two domains, settled by two queues' workers at the same moment:
    one warning (a race, so it is run on 20 messages)."""
    late = ARRIVED + 2 * 3600
    for _ in range(20):
        entries = queued(spool, plan, "a@remote.test", "b@other.test")
        start = threading.Barrier(len(entries))

        def one(entry: Waiting, start: threading.Barrier = start) -> list[str]:
            start.wait()
            failed = [outcome(entry, "temporary", "4.4.1", "no")]
            return settle(spool, plan, [entry], failed, late)[1]

        with ThreadPoolExecutor(len(entries)) as pool:
            made = [queue_id for new in pool.map(one, entries) for queue_id in new]
        assert len(made) == 1, made


def test_giving_up_bounces_with_4_4_7(spool: Spool, plan: Plan) -> None:
    (entry,) = queued(spool, plan, "a@remote.test")
    again, (bounce,) = settle(
        spool, plan, [entry], [outcome(entry, "temporary", "4.4.1", "refused")], ARRIVED + 86400
    )
    assert again == []
    (_, failed) = status_fields(report_of(spool, bounce))
    assert (failed["Action"], failed["Status"]) == ("failed", "4.4.7")
    assert failed["Diagnostic-Code"] == "smtp; gave up after 1d: refused"
    assert [p.stem for p in spool.directory.glob("*.msg")] == [bounce]


def test_no_bounce_for_the_null_sender(spool: Spool, plan: Plan) -> None:
    (entry,) = queued(spool, plan, "a@remote.test", sender="")
    again, new = settle(spool, plan, [entry], [outcome(entry, "permanent", "5.1.1", "no")], ARRIVED)
    assert (again, new) == ([], [])
    assert files(spool) == []


def test_a_message_read_back_from_the_queue(spool: Spool, plan: Plan) -> None:
    """After a restart an entry has no bytes at hand: settle reads the queue file."""
    (entry,) = queued(spool, plan, "a@remote.test")
    cold = replace(entry, envelope=None, message=None)
    _, (bounce,) = settle(spool, plan, [cold], [outcome(cold, "permanent", "5.7.1", "no")], ARRIVED)
    headers = list(report_of(spool, bounce).iter_parts())[2].get_payload()
    assert "Subject: hi" in headers and "the body" not in headers
