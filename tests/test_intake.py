"""The intake journal: its record format, what recovery finds in a segment, group commit,
segment rotation and removal, and what a failed write leaves behind."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime import intake
from runtime.intake import HEAD, MAGIC, MESSAGE, SETTLED, Intake, Ticket, record, records
from runtime.spool import Envelope

BODY = b"Subject: hi\r\n\r\nhello\r\n"
BIG = b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n"  # a record of more than 200 bytes


def envelope(queue_id: str, *recipients: str) -> Envelope:
    return Envelope(
        id=queue_id,
        arrived=1700000000.25,
        plan="sha256:x",
        listener="smtp",
        client="127.0.0.1",
        helo="h",
        tls="none",
        auth="-",
        sender="a@x.test",
        recipients=recipients or ("b@y.test",),
    )


def message_record(queue_id: str, body: bytes = BODY) -> bytes:
    return record(MESSAGE, envelope(queue_id).header() + body)


def settled_record(queue_id: str) -> bytes:
    return record(SETTLED, queue_id.encode("ascii"))


def segments(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def ids(found: list[tuple[Envelope, bytes]]) -> list[str]:
    return [queued.id for queued, _ in found]


class Store:
    """A `store` for `Intake.recover` that remembers what it was handed."""

    def __init__(self) -> None:
        self.stored: list[tuple[Envelope, bytes]] = []

    def __call__(self, queued: Envelope, message: bytes) -> None:
        self.stored.append((queued, message))


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait on the event loop (so the intake's flushes complete) until `condition` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


# The record format


def test_record_layout() -> None:
    data = record(SETTLED, b"abc")
    assert data[:4] == MAGIC
    assert len(data) == HEAD.size + 3
    magic, kind, length, _crc = HEAD.unpack_from(data)
    assert (magic, kind, length) == (MAGIC, SETTLED, 3)
    assert data[HEAD.size :] == b"abc"


def test_records_round_trip() -> None:
    payloads = [(MESSAGE, b"first"), (SETTLED, b""), (MESSAGE, b"\x00\xff" * 500), (7, b"x")]
    data = b"".join(record(kind, payload) for kind, payload in payloads)
    assert list(records(data)) == payloads


def test_records_of_nothing() -> None:
    assert list(records(b"")) == []


def _truncated_payload(last: bytes) -> bytes:
    return last[:-1]


def _truncated_head(last: bytes) -> bytes:
    return last[: HEAD.size - 3]


def _flipped_payload_byte(last: bytes) -> bytes:
    damaged = bytearray(last)
    damaged[HEAD.size + 2] ^= 0x01
    return bytes(damaged)


def _flipped_crc_byte(last: bytes) -> bytes:
    damaged = bytearray(last)
    damaged[HEAD.size - 1] ^= 0x80
    return bytes(damaged)


def _wrong_magic(last: bytes) -> bytes:
    return b"MPI2" + last[4:]


def _length_too_long(last: bytes) -> bytes:
    return HEAD.pack(MAGIC, MESSAGE, len(last), 0) + last[HEAD.size :]


@pytest.mark.parametrize(
    "tear",
    [
        _truncated_payload,
        _truncated_head,
        _flipped_payload_byte,
        _flipped_crc_byte,
        _wrong_magic,
        _length_too_long,
    ],
)
def test_records_stop_at_a_torn_tail_and_keep_what_is_before(
    tear: Callable[[bytes], bytes],
) -> None:
    whole = record(MESSAGE, b"one") + record(SETTLED, b"two")
    last = record(MESSAGE, b"three and more")
    assert list(records(whole + tear(last))) == [(MESSAGE, b"one"), (SETTLED, b"two")]


def test_records_stop_at_a_damaged_record_even_with_good_ones_after_it() -> None:
    damaged = _flipped_payload_byte(record(MESSAGE, b"middle"))
    data = record(MESSAGE, b"one") + damaged + record(MESSAGE, b"after")
    assert list(records(data)) == [(MESSAGE, b"one")]


# unsettled


def test_unsettled_is_messages_minus_settled_in_order() -> None:
    data = (
        message_record("m1")
        + message_record("m2", b"second\r\n")
        + message_record("m3", b"third\r\n")
        + settled_record("m2")
        + message_record("m4", b"fourth\r\n")
        + settled_record("nobody")  # a mark for a message not in this segment
    )
    found = intake.unsettled(data)
    assert ids(found) == ["m1", "m3", "m4"]
    assert found[0] == (envelope("m1"), BODY)
    assert found[1][1] == b"third\r\n"
    assert found[2][1] == b"fourth\r\n"


def test_unsettled_all_settled_is_empty() -> None:
    data = message_record("m1") + message_record("m2") + settled_record("m1")
    data += settled_record("m2")
    assert intake.unsettled(data) == []


def test_unsettled_ignores_a_torn_tail() -> None:
    data = message_record("m1") + message_record("m2")[:-5]
    assert ids(intake.unsettled(data)) == ["m1"]


def test_unsettled_skips_a_record_that_is_no_queue_file(caplog: pytest.LogCaptureFixture) -> None:
    data = (
        message_record("m1")
        + record(MESSAGE, b"not a queue file at all")
        + message_record("m2")
        + settled_record("m1")
        + message_record("m3")
    )
    with caplog.at_level("ERROR", logger="mailplan.queue"):
        found = intake.unsettled(data)
    assert ids(found) == ["m2", "m3"]  # the records after the bad one still count
    assert "a journal record that is no message" in caplog.text
    assert "not a mailplan queue file" in caplog.text


def test_unsettled_keeps_recipients_and_message_bytes() -> None:
    queued = envelope("m1", "b@y.test", "c@z.test")
    body = b"Subject: x\r\n\r\nbinary \x00\xff and a lone \n.\r\n"
    found = intake.unsettled(record(MESSAGE, queued.header() + body))
    assert found == [(queued, body)]
    assert found[0][0].recipients == ("b@y.test", "c@z.test")


# Writing


def test_write_returns_once_the_message_is_in_the_segment(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        ticket = await journal.write(envelope("m1"), BODY)
        assert isinstance(ticket, Ticket)
        assert ticket.queue_id == "m1"
        assert ticket.segment.path.parent == directory
        assert ticket.segment.path.suffix == ".log"
        assert segments(directory) == [ticket.segment.path.name]
        data = ticket.segment.path.read_bytes()
        assert intake.unsettled(data) == [(envelope("m1"), BODY)]
        assert ticket.segment.size == len(data)
        journal.settle(ticket)
        await journal.close()

    asyncio.run(scenario())


def test_concurrent_writes_all_succeed_and_share_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    syncs: list[int] = []
    real_fdatasync = os.fdatasync

    def counting(descriptor: int) -> None:
        syncs.append(descriptor)
        real_fdatasync(descriptor)

    monkeypatch.setattr(os, "fdatasync", counting)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        queued = [envelope(f"m{n:02}") for n in range(50)]
        tickets = await asyncio.gather(
            *(journal.write(one, BODY + str(n).encode()) for n, one in enumerate(queued))
        )
        assert [ticket.queue_id for ticket in tickets] == [one.id for one in queued]
        paths = {ticket.segment.path for ticket in tickets}
        assert len(paths) == 1
        found = intake.unsettled(paths.pop().read_bytes())
        assert found == [(one, BODY + str(n).encode()) for n, one in enumerate(queued)]
        # group commit: the first write's sync, then one for the 49 that waited for it
        assert len(syncs) <= 2, f"{len(syncs)} fdatasyncs for 50 concurrent writes"
        for ticket in tickets:
            journal.settle(ticket)
        await journal.close()
        assert segments(directory) == []

    asyncio.run(scenario())


def test_settle_then_close_removes_the_segment(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        first = await journal.write(envelope("m1"), BODY)
        second = await journal.write(envelope("m2"), BODY)
        journal.settle(first)
        journal.settle(second)
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []
    store = Store()
    assert Intake(directory).recover(store) == 0
    assert store.stored == []


def test_close_of_an_unused_journal_removes_its_segment(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        assert len(segments(directory)) == 1
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


def test_close_waits_for_settled_marks_still_pending(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        ticket = await journal.write(envelope("m1"), BODY)
        journal.settle(ticket)
        await journal.close()  # at once: the mark is not written yet

    asyncio.run(scenario())
    assert segments(directory) == []


def test_settled_marks_wait_to_go_with_the_next_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    monkeypatch.setattr(intake, "SETTLE_DELAY", 60.0)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        first = await journal.write(envelope("m1"), BODY)
        journal.settle(first)
        await asyncio.sleep(0.05)
        kinds = [kind for kind, _ in records(first.segment.path.read_bytes())]
        assert kinds == [MESSAGE]  # the mark alone is not written yet
        second = await journal.write(envelope("m2"), BODY)
        data = second.segment.path.read_bytes()
        assert [kind for kind, _ in records(data)] == [MESSAGE, SETTLED, MESSAGE]
        assert ids(intake.unsettled(data)) == ["m2"]
        journal.settle(second)
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


def test_settled_marks_alone_are_written_within_the_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    monkeypatch.setattr(intake, "SETTLE_DELAY", 0.01)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        ticket = await journal.write(envelope("m1"), BODY)
        journal.settle(ticket)
        path = ticket.segment.path
        await until(lambda: intake.unsettled(path.read_bytes()) == [])
        assert [kind for kind, _ in records(path.read_bytes())] == [MESSAGE, SETTLED]
        assert path.exists()  # the segment in use stays until close
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


# Recovery


def test_recover_hands_over_exactly_the_unsettled_messages(tmp_path: Path) -> None:
    directory = tmp_path / "intake"
    queued = [
        envelope("m1", "b@y.test"),
        envelope("m2", "c@y.test"),
        envelope("m3", "d@y.test", "e@z.test"),
    ]
    bodies = [b"one\r\n", b"two\r\n", b"three \x00\xff\r\n"]

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        tickets = [await journal.write(one, body) for one, body in zip(queued, bodies, strict=True)]
        journal.settle(tickets[1])
        await journal.close()

    asyncio.run(scenario())
    assert len(segments(directory)) == 1  # kept: two of its messages are unsettled
    store = Store()
    assert Intake(directory).recover(store) == 2
    assert store.stored == [(queued[0], bodies[0]), (queued[2], bodies[2])]
    assert [one.recipients for one, _ in store.stored] == [("b@y.test",), ("d@y.test", "e@z.test")]
    assert segments(directory) == []
    again = Store()
    assert Intake(directory).recover(again) == 0
    assert again.stored == []


def test_recover_creates_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "queue" / "intake"
    assert Intake(directory).recover(Store()) == 0
    assert directory.is_dir()


def test_recover_removes_a_leftover_new_file_and_ignores_other_names(tmp_path: Path) -> None:
    directory = tmp_path / "intake"
    directory.mkdir()
    (directory / "4242.0.new").write_bytes(b"")
    (directory / "notes.txt").write_bytes(b"not a segment")
    store = Store()
    assert Intake(directory).recover(store) == 0
    assert store.stored == []
    assert segments(directory) == ["notes.txt"]


def test_recover_of_a_segment_with_a_torn_tail(tmp_path: Path) -> None:
    directory = tmp_path / "intake"
    directory.mkdir()
    data = message_record("m1") + message_record("m2") + message_record("m3")[:-7]
    (directory / "4242.0.log").write_bytes(data)
    store = Store()
    assert Intake(directory).recover(store) == 2
    assert ids(store.stored) == ["m1", "m2"]
    assert segments(directory) == []


def test_recover_skips_a_segment_a_live_intake_holds(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        first = Intake(directory)
        first.open()
        ticket = await first.write(envelope("m1"), BODY)
        held = ticket.segment.path
        # flock is per open file description: a second Intake in the same process conflicts
        store = Store()
        assert Intake(directory).recover(store) == 0
        assert store.stored == []
        assert held.exists()
        assert intake.unsettled(held.read_bytes()) == [(envelope("m1"), BODY)]
        await first.close()  # leaves it unsettled, and unlocked
        assert held.exists()
        later = Store()
        assert Intake(directory).recover(later) == 1
        assert later.stored == [(envelope("m1"), BODY)]
        assert not held.exists()

    asyncio.run(scenario())
    assert segments(directory) == []


def test_a_second_intake_in_the_same_process_uses_its_own_segment(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        first = Intake(directory)
        first.open()
        second = Intake(directory)
        second.open()  # same pid, same sequence numbers: must not take the first's name
        one = await first.write(envelope("m1"), BODY)
        two = await second.write(envelope("m2"), BODY)
        assert one.segment.path != two.segment.path
        assert ids(intake.unsettled(one.segment.path.read_bytes())) == ["m1"]
        assert ids(intake.unsettled(two.segment.path.read_bytes())) == ["m2"]
        first.settle(one)
        second.settle(two)
        await first.close()
        await second.close()

    asyncio.run(scenario())
    assert segments(directory) == []


# Rotation


def test_rotation_starts_new_segments_and_removes_settled_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    monkeypatch.setattr(intake, "SETTLE_DELAY", 0.01)  # settled marks alone go soon

    async def scenario() -> None:
        journal = Intake(directory, limit=200)
        journal.open()
        assert len(message_record("m0", BIG)) > 200  # so each write starts a new segment
        tickets = [await journal.write(envelope(f"m{n}"), BIG) for n in range(4)]
        paths = [ticket.segment.path for ticket in tickets]
        assert len(set(paths)) == 4
        listed = segments(directory)
        assert len(listed) == 5  # four full ones and the one in use
        assert all(name.endswith(".log") for name in listed)
        for ticket in tickets:
            assert ids(intake.unsettled(ticket.segment.path.read_bytes())) == [ticket.queue_id]
        journal.settle(tickets[0])
        journal.settle(tickets[2])
        await until(lambda: not paths[0].exists() and not paths[2].exists())
        assert paths[1].exists() and paths[3].exists()
        assert len(segments(directory)) == 3
        journal.settle(tickets[1])
        journal.settle(tickets[3])
        await until(lambda: len(segments(directory)) == 1)  # only the one in use is left
        assert not any(path.exists() for path in paths)
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


def test_rotation_with_unsettled_messages_is_recovered_in_full(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        journal = Intake(directory, limit=200)
        journal.open()
        tickets = [await journal.write(envelope(f"m{n}"), BIG) for n in range(3)]
        journal.settle(tickets[1])
        await journal.close()

    asyncio.run(scenario())
    assert len(segments(directory)) == 2
    store = Store()
    assert Intake(directory).recover(store) == 2
    assert sorted(ids(store.stored)) == ["m0", "m2"]
    assert segments(directory) == []


def test_rotation_of_a_batch_keeps_it_in_one_segment(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        journal = Intake(directory, limit=200)
        journal.open()
        tickets = await asyncio.gather(*(journal.write(envelope(f"m{n}"), BIG) for n in range(6)))
        for ticket in tickets:
            found = ids(intake.unsettled(ticket.segment.path.read_bytes()))
            assert ticket.queue_id in found
        for ticket in tickets:
            journal.settle(ticket)
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


# Failures


def test_failed_write_raises_and_the_next_goes_to_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    real_append = intake._append
    failures: list[bytes] = []

    def fail_once(descriptor: int, data: bytes) -> None:
        if not failures:
            failures.append(data)
            os.write(descriptor, data[: len(data) // 2])  # a torn record, then the error
            raise OSError(errno.EIO, "injected")
        real_append(descriptor, data)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        good = await journal.write(envelope("m1"), BODY)
        monkeypatch.setattr(intake, "_append", fail_once)
        with pytest.raises(OSError, match="injected"):
            await journal.write(envelope("m2"), BODY)
        assert failures
        # the torn record was cut off again
        assert good.segment.path.stat().st_size == good.segment.size
        assert ids(intake.unsettled(good.segment.path.read_bytes())) == ["m1"]
        after = await journal.write(envelope("m3"), BODY)
        assert after.segment.path != good.segment.path
        assert ids(intake.unsettled(after.segment.path.read_bytes())) == ["m3"]
        assert len(segments(directory)) == 2
        await journal.close()  # nothing settled: both segments stay

    asyncio.run(scenario())
    store = Store()
    assert Intake(directory).recover(store) == 2
    assert sorted(ids(store.stored)) == ["m1", "m3"]
    assert segments(directory) == []


def test_failed_write_into_an_empty_segment_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"

    def fail(descriptor: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "injected")

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        (first,) = segments(directory)
        with monkeypatch.context() as patch:
            patch.setattr(intake, "_append", fail)
            with pytest.raises(OSError, match="injected"):
                await journal.write(envelope("m1"), BODY)
        listed = segments(directory)
        assert first not in listed  # nothing unsettled in it: gone
        assert len(listed) == 1
        ticket = await journal.write(envelope("m2"), BODY)
        assert ticket.segment.path.name == listed[0]
        journal.settle(ticket)
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


# Bugs (see the assertion messages)


def test_settled_marks_in_a_batch_with_a_failed_write_are_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    real_append = intake._append

    def fail_for_m2(descriptor: int, data: bytes) -> None:
        if b"Id: m2\n" in data:
            raise OSError(errno.EIO, "injected")
        real_append(descriptor, data)

    monkeypatch.setattr(intake, "_append", fail_for_m2)
    monkeypatch.setattr(intake, "SETTLE_DELAY", 60.0)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        delivered = await journal.write(envelope("m1"), BODY)
        journal.settle(delivered)  # m1 is in its Maildirs; the mark waits for a message
        with pytest.raises(OSError, match="injected"):
            await journal.write(envelope("m2"), BODY)  # the batch that carries m1's mark
        await journal.close()

    asyncio.run(scenario())
    store = Store()
    Intake(directory).recover(store)
    assert ids(store.stored) == [], (
        "the settled marks of a batch whose messages could not be written must still "
        f"count, or delivered mail is delivered again; recovered {ids(store.stored)}"
    )


def test_a_torn_settled_mark_does_not_hide_later_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    real_append = intake._append
    monkeypatch.setattr(intake, "SETTLE_DELAY", 60.0)

    def torn_marks(descriptor: int, data: bytes) -> None:
        if data[:5] == MAGIC + bytes([SETTLED]):  # a short write, then the disk is full
            os.write(descriptor, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "injected")
        real_append(descriptor, data)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        first = await journal.write(envelope("m1"), BODY)
        monkeypatch.setattr(intake, "_append", torn_marks)
        journal.settle(first)
        # m1's mark fails halfway ("only costs a copy"); then m2 and m3 get their 250
        second = await journal.write(envelope("m2"), BODY)
        third = await journal.write(envelope("m3"), BODY)
        assert second.segment is not first.segment  # the torn segment is left
        assert third.segment is second.segment
        await journal.close()  # m2 and m3 unsettled: kept for the next start

    asyncio.run(scenario())
    store = Store()
    Intake(directory).recover(store)
    # m1 was settled (its mark failed, but its copies are durable): its segment went
    assert sorted(ids(store.stored)) == ["m2", "m3"], (
        "a settled mark torn by a failed write must not hide the messages after it"
    )


def test_a_failed_settled_mark_is_logged_with_its_queue_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "intake"
    real_append = intake._append

    def failing_marks(descriptor: int, data: bytes) -> None:
        if data[:5] == MAGIC + bytes([SETTLED]):
            raise OSError(errno.ENOSPC, "injected")
        real_append(descriptor, data)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        ticket = await journal.write(envelope("m1"), BODY)
        monkeypatch.setattr(intake, "_append", failing_marks)
        journal.settle(ticket)
        await journal.close()

    with caplog.at_level("WARNING", logger="mailplan.queue"):
        asyncio.run(scenario())
    assert "cannot mark" in caplog.text
    assert "cannot mark m1 settled" in caplog.text, (
        f"the warning names the message: {caplog.text!r}"
    )


def test_settled_marks_are_written_within_the_delay_after_a_slow_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    real_append = intake._append
    monkeypatch.setattr(intake, "SETTLE_DELAY", 0.01)

    def slow(descriptor: int, data: bytes) -> None:
        if b"Id: m2\n" in data:
            time.sleep(0.2)  # a slow disk: the settle timer fires meanwhile
        real_append(descriptor, data)

    monkeypatch.setattr(intake, "_append", slow)

    async def scenario() -> list[str]:
        journal = Intake(directory)
        journal.open()
        first = await journal.write(envelope("m1"), BODY)
        second = asyncio.ensure_future(journal.write(envelope("m2"), BODY))
        await asyncio.sleep(0)  # m2's flush is under way
        journal.settle(first)  # its timer fires before that flush ends
        await second
        await asyncio.sleep(0.3)  # thirty times SETTLE_DELAY, and no message comes
        left = ids(intake.unsettled(first.segment.path.read_bytes()))
        await journal.close()
        return left

    left = asyncio.run(scenario())
    assert "m1" not in left, (
        "settled marks alone are written within SETTLE_DELAY even when the timer fires "
        f"during a write; still unsettled on disk: {left}"
    )


def test_write_does_not_fail_after_its_message_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"

    def no_segment() -> intake.Segment:
        raise OSError(errno.EMFILE, "injected")

    async def scenario() -> bool:
        journal = Intake(directory, limit=1)  # every write starts a new segment
        journal.open()
        monkeypatch.setattr(journal, "_segment", no_segment)
        try:
            await journal.write(envelope("m1"), BODY)
        except OSError:
            failed = True
        else:
            failed = False
        await journal.close()
        return failed

    failed = asyncio.run(scenario())
    store = Store()
    Intake(directory).recover(store)
    assert not (failed and ids(store.stored) == ["m1"]), (
        "a message that is durable must not be reported as failed because the next "
        "segment could not be started"
    )
