"""Queue processing: LOCAL into Maildir once per mailbox, DISCARD done, the rest waits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailplan.compiler.pipeline import compile_site
from mailplan.runtime.decide.router import Router
from mailplan.runtime.delivery.scheduler import Waiting
from mailplan.runtime.queue import processor
from mailplan.runtime.queue.arrival import Arrival
from mailplan.runtime.queue.processor import Processor, _Soon, pending, process
from mailplan.runtime.store import durable
from mailplan.runtime.store.intake import Intake, Segment, Ticket
from mailplan.runtime.store.spool import Envelope, Spool, new_id

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
domains:
  example.com:
    aliases: [example.org]
    accounts:
      alice:
        aliases: [al]
      bob: {}
    forwarders:
      info: sales@example.net
    lists:
      staff:
        owner: alice
        members: [alice@example.com, bob@example.com]
routing: router.cgr
"""

ROUTER = """\
<noreply@example.com> = null
<carol@example.com> = error "carol has left"
<spam@example.com> = "spam-report"@pipe
"""

PIPES = """\
pipes:
  spam-report:
    program: /usr/local/bin/spam-report
"""

MESSAGE = b"Subject: hi\r\nMessage-ID: <m1@test>\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Router:
    directory = tmp_path_factory.mktemp("site")
    (directory / "site.yaml").write_text(SITE + PIPES, encoding="utf-8")
    (directory / "router.cgr").write_text(ROUTER, encoding="utf-8")
    unit = compile_site(directory)
    assert unit.plan is not None, unit.diagnostics
    return Router(unit.plan)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "queue")


@pytest.fixture
def mail(tmp_path: Path) -> Path:
    return tmp_path / "mail"


def queue(spool: Spool, *recipients: str, sender: str = "someone@remote.test") -> str:
    queued = Envelope(
        id=new_id(),
        arrived=1700000000.5,
        plan="sha256:test",
        listener="smtp",
        client="192.0.2.7",
        helo="client.test",
        tls="none",
        auth="-",
        sender=sender,
        recipients=recipients,
    )
    spool.store(queued, MESSAGE)
    return queued.id


def delivered(mail: Path, account: str) -> list[bytes]:
    name, _, domain = account.partition("@")
    new = mail / domain / name / "new"
    return [path.read_bytes() for path in sorted(new.iterdir())] if new.is_dir() else []


def names(spool: Spool) -> list[str]:
    return sorted(path.name for path in spool.directory.iterdir())


def test_local_delivered_and_queue_file_removed(spool: Spool, router: Router, mail: Path) -> None:
    queue_id = queue(spool, "alice@example.com")
    assert process(spool, queue_id, router, mail) == []
    assert delivered(mail, "alice@example.com") == [
        b"Return-Path: <someone@remote.test>\r\n" + MESSAGE
    ]
    assert names(spool) == []


def test_empty_sender_gets_empty_return_path(spool: Spool, router: Router, mail: Path) -> None:
    queue_id = queue(spool, "alice@example.com", sender="")
    process(spool, queue_id, router, mail)
    (only,) = delivered(mail, "alice@example.com")
    assert only.startswith(b"Return-Path: <>\r\n")


def test_one_copy_per_mailbox(spool: Spool, router: Router, mail: Path) -> None:
    queue_id = queue(
        spool, "alice@example.com", "al@example.com", "ALICE@example.org", "bob@example.com"
    )
    assert process(spool, queue_id, router, mail) == []
    assert len(delivered(mail, "alice@example.com")) == 1
    assert len(delivered(mail, "bob@example.com")) == 1
    assert names(spool) == []


def test_discard_is_done(spool: Spool, router: Router, mail: Path) -> None:
    queue_id = queue(spool, "noreply@example.com")
    assert process(spool, queue_id, router, mail) == []
    assert names(spool) == []
    assert not mail.exists() or not any(mail.rglob("new/*"))


def test_smtp_recipients_wait_and_done_lists_the_delivered(
    spool: Spool, router: Router, mail: Path
) -> None:
    queue_id = queue(
        spool,
        "alice@example.com",
        "someone@elsewhere.test",
        "al@example.com",
        "info@example.com",
        "noreply@example.com",
    )
    waiting = process(spool, queue_id, router, mail)
    assert [entry.recipient for entry in waiting] == ["someone@elsewhere.test", "info@example.com"]
    assert [entry.queue for entry in waiting] == ["SMTP(elsewhere.test)", "SMTP(example.net)"]
    assert all(entry.queue_id == queue_id for entry in waiting)
    assert all(entry.arrived == 1700000000.5 for entry in waiting)
    assert waiting[1].routing.relayable
    assert names(spool) == [f"{queue_id}.done", f"{queue_id}.msg"]
    assert spool.finished(queue_id) == {
        "alice@example.com",
        "al@example.com",
        "noreply@example.com",
    }
    assert len(delivered(mail, "alice@example.com")) == 1


def test_reprocessing_after_a_partial_done_does_not_deliver_twice(
    spool: Spool, router: Router, mail: Path
) -> None:
    queue_id = queue(spool, "alice@example.com", "bob@example.com", "someone@elsewhere.test")
    first = process(spool, queue_id, router, mail)
    second = process(spool, queue_id, router, mail)  # a restart queues the .msg again
    assert [entry.recipient for entry in first] == ["someone@elsewhere.test"]
    assert [entry.recipient for entry in second] == ["someone@elsewhere.test"]
    assert len(delivered(mail, "alice@example.com")) == 1
    assert len(delivered(mail, "bob@example.com")) == 1
    assert spool.finished(queue_id) == {"alice@example.com", "bob@example.com"}


def test_a_crash_after_some_recipients_were_recorded(
    spool: Spool, router: Router, mail: Path
) -> None:
    """`.done` from an earlier run names alice: only bob is delivered now."""
    queue_id = queue(spool, "alice@example.com", "bob@example.com")
    spool.done(queue_id, ["alice@example.com"])
    assert process(spool, queue_id, router, mail) == []
    assert delivered(mail, "alice@example.com") == []
    assert len(delivered(mail, "bob@example.com")) == 1
    assert names(spool) == []


def test_all_done_but_not_removed_is_removed(spool: Spool, router: Router, mail: Path) -> None:
    """A crash between `.done` and the removal: nothing is delivered again."""
    queue_id = queue(spool, "alice@example.com", "noreply@example.com")
    spool.done(queue_id, ["alice@example.com", "noreply@example.com"])
    assert process(spool, queue_id, router, mail) == []
    assert delivered(mail, "alice@example.com") == []
    assert names(spool) == []


def test_rejected_pipe_and_list_recipients_are_handed_over(
    spool: Spool, router: Router, mail: Path
) -> None:
    """What the plan now rejects goes to delivery (which bounces it), as do PIPE and LIST."""
    queue_id = queue(
        spool, "carol@example.com", "spam@example.com", "staff@example.com", "nobody@example.com"
    )
    waiting = process(spool, queue_id, router, mail)
    modules = {entry.recipient: entry.routing.module for entry in waiting}
    assert modules == {
        "carol@example.com": "ERROR",
        "spam@example.com": "PIPE",
        "staff@example.com": "LIST",
        "nobody@example.com": "ERROR",
    }
    assert names(spool) == [f"{queue_id}.msg"]


def test_corrupt_queue_file_is_set_aside(spool: Spool, router: Router, mail: Path) -> None:
    garbage = b"\xffnot a queue file\n\n"
    (spool.directory / "XYZ.msg").write_bytes(garbage)
    assert process(spool, "XYZ", router, mail) == []
    assert names(spool) == ["XYZ.bad"]
    assert (spool.directory / "XYZ.bad").read_bytes() == garbage


def test_queue_file_without_recipients_is_set_aside(
    spool: Spool, router: Router, mail: Path
) -> None:
    queue_id = queue(spool, "alice@example.com")
    path = spool.directory / f"{queue_id}.msg"
    path.write_bytes(path.read_bytes().replace(b"To: <alice@example.com>\n", b""))
    assert process(spool, queue_id, router, mail) == []
    assert names(spool) == [f"{queue_id}.bad"]
    assert delivered(mail, "alice@example.com") == []


def test_pending_lists_waiting_recipients(spool: Spool, router: Router, mail: Path) -> None:
    first = queue(spool, "alice@example.com", "someone@elsewhere.test", "info@example.com")
    second = queue(spool, "bob@example.com")
    (spool.directory / "XYZ.msg").write_bytes(b"garbage")  # skipped, not fatal
    process(spool, first, router, mail)
    found = pending(spool, router)
    assert all(isinstance(entry, Waiting) for entry in found)
    listed = [(entry.queue_id, entry.recipient, entry.queue) for entry in found]
    assert listed == [
        (first, "someone@elsewhere.test", "SMTP(elsewhere.test)"),
        (first, "info@example.com", "SMTP(example.net)"),
        (second, "bob@example.com", "LOCAL(bob@example.com)"),
    ]
    process(spool, second, router, mail)
    assert [entry.queue_id for entry in pending(spool, router)] == [first, first]


def test_pending_of_an_empty_queue(spool: Spool, router: Router) -> None:
    assert pending(spool, router) == []


def test_processor_start_delivers_everything_queued(
    spool: Spool, router: Router, mail: Path
) -> None:
    ids = [queue(spool, "alice@example.com") for _ in range(10)]
    waiting_id = queue(spool, "bob@example.com", "someone@elsewhere.test")
    (spool.directory / "left.tmp").write_bytes(b"never acknowledged")
    (spool.directory / "XYZ.msg").write_bytes(b"garbage")

    handed: list[Waiting] = []

    async def run() -> None:
        intake = Intake(spool.directory.parent / "intake")
        intake.open()
        processor = Processor(spool, lambda: ("sha256:test", router), mail, handed.extend, intake)
        processor.start()
        await asyncio.wait_for(processor.drain(), 10)
        await processor.stop()

    asyncio.run(run())
    assert len(ids) == 10
    assert len(delivered(mail, "alice@example.com")) == 10
    assert len(delivered(mail, "bob@example.com")) == 1
    assert [(entry.queue, entry.recipient) for entry in handed] == [
        ("SMTP(elsewhere.test)", "someone@elsewhere.test")
    ]
    assert set(names(spool)) == {"XYZ.bad", f"{waiting_id}.done", f"{waiting_id}.msg"}


def test_a_batch_that_fails_part_way_marks_nothing_done(
    spool: Spool, router: Router, mail: Path
) -> None:
    """In a batch nothing is delivered until the commit: a failure at bob must not record
    alice as done, even when a queue file of the message exists (an earlier attempt to
    queue the batch stored it), or alice would never get her copy."""
    queue_id = queue(spool, "alice@example.com", "bob@example.com")
    envelope, message = spool.load(queue_id)
    (mail / "example.com").mkdir(parents=True)
    (mail / "example.com" / "bob").write_text("not a Maildir")  # bob's delivery fails
    files = durable.Batch()
    with pytest.raises(OSError):
        process(
            spool, queue_id, router, mail, fresh=Arrival(envelope, message, "", router), batch=files
        )
    files.abandon()
    assert not (spool.directory / f"{queue_id}.done").exists()
    assert delivered(mail, "alice@example.com") == []
    assert list((mail / "example.com" / "alice" / "tmp").iterdir()) == []


def test_a_batch_delivers_nothing_before_its_commit(
    spool: Spool, router: Router, mail: Path
) -> None:
    queue_id = queue(spool, "alice@example.com", "al@example.org", "bob@example.com")
    envelope, message = spool.load(queue_id)
    files = durable.Batch()
    lines: list[tuple[object, ...]] = []
    waiting = process(
        spool, queue_id, router, mail, fresh=Arrival(envelope, message, "", router), batch=files,
        say=lambda *line, **facts: lines.append(line),
    )  # fmt: skip
    assert waiting == []
    assert delivered(mail, "alice@example.com") == delivered(mail, "bob@example.com") == []
    files.commit()
    assert len(delivered(mail, "alice@example.com")) == 1  # al is alice: one copy
    assert len(delivered(mail, "bob@example.com")) == 1
    assert spool.exists(queue_id)  # a batch leaves the queue file to its caller
    assert [line[2] for line in lines] == ["alice@example.com", "al@example.org", "bob@example.com"]


def test_past_the_soft_limit_a_250_waits_and_past_the_hard_one_mail_is_refused(
    spool: Spool, router: Router, mail: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What waits for `deliver_soon` is held in memory: past the soft limits `admit`
    waits (for a settle, or `FLOW_DELAY` at most), past the hard ones it raises `Full`."""
    monkeypatch.setattr(processor, "SOFT_LIMIT", 2)
    monkeypatch.setattr(processor, "HARD_LIMIT", 3)
    monkeypatch.setattr(processor, "SOFT_BYTES", 500)
    monkeypatch.setattr(processor, "HARD_BYTES", 1000)
    monkeypatch.setattr(processor, "FLOW_DELAY", 0.05)
    envelope, _ = spool.load(queue(spool, "alice@example.com"))
    ticket = Ticket(envelope.id, Segment(spool.directory / "none.log", -1))
    current = ("sha256:test", router)

    async def run() -> list[str]:
        seen = []
        batches = Processor(spool, lambda: current, mail, list, Intake(spool.directory / "in"))
        arrival = Arrival(envelope, b"x" * 10, "sha256:test", router)
        batches.deliver_soon(arrival, ticket)
        await batches.admit()  # one waits: no delay
        seen.append("free")
        batches.deliver_soon(arrival, ticket)
        started = asyncio.get_running_loop().time()
        await batches.admit()  # two: at the soft limit, it waits out FLOW_DELAY
        seen.append(f"delayed {asyncio.get_running_loop().time() - started >= 0.04}")
        waiter = asyncio.ensure_future(batches.admit())
        await asyncio.sleep(0)
        assert not waiter.done()
        batches._settle([_Soon(arrival, ticket)])  # one settled: below the soft limit
        await asyncio.wait_for(waiter, 5)
        seen.append("woken by a settle")
        batches.deliver_soon(arrival, ticket)
        batches.deliver_soon(arrival, ticket)  # three: the hard limit
        with pytest.raises(processor.Full):
            await batches.admit()
        seen.append("full")
        by_size = Processor(spool, lambda: current, mail, list, Intake(spool.directory / "in"))
        by_size.deliver_soon(Arrival(envelope, b"x" * 1000, "sha256:test", router), ticket)
        with pytest.raises(processor.Full):
            await by_size.admit()
        seen.append("full by size")
        return seen

    assert asyncio.run(run()) == [
        "free", "delayed True", "woken by a settle", "full", "full by size"
    ]  # fmt: skip


def test_every_message_goes_through_the_journal_and_what_waits_gets_a_queue_file(
    spool: Spool, router: Router, mail: Path
) -> None:
    """Local copies, a remote recipient and a list: one journal record each, processed
    in a batch; the queue file holds only what waits, and the journal is settled."""
    handed: list[Waiting] = []
    intake = Intake(spool.directory / "intake")
    intake.open()
    current = ("sha256:test", router)
    batches = Processor(spool, lambda: current, mail, handed.extend, intake)
    envelope, _ = spool.load(
        queue(spool, "alice@example.com", "someone@elsewhere.test", "staff@example.com")
    )
    spool.remove(envelope.id)  # it arrives over SMTP: no queue file

    async def run() -> None:
        batches.start()
        await batches.accept(Arrival(envelope, MESSAGE, "sha256:test", router))
        assert not spool.exists(envelope.id)  # durable in the journal, processed later
        await asyncio.wait_for(batches.drain(), 10)
        await batches.stop()
        await intake.close()

    asyncio.run(run())
    assert len(delivered(mail, "alice@example.com")) == 1
    staged, message = spool.load(envelope.id)
    assert staged.recipients == ("someone@elsewhere.test", "staff@example.com")
    assert message == MESSAGE
    assert sorted((entry.queue, entry.recipient) for entry in handed) == [
        ("LIST(staff@example.com)", "staff@example.com"),
        ("SMTP(elsewhere.test)", "someone@elsewhere.test"),
    ]
    assert all(entry.envelope == staged for entry in handed)
    assert list(intake.directory.iterdir()) == []  # settled: closed without a segment left
