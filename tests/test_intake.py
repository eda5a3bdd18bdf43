"""The intake journal: its record format and epochs, what recovery finds in a segment,
group commit, segment rotation, spares written over and removal, and what a failed
write leaves behind."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailplan.runtime.store import intake
from mailplan.runtime.store.intake import (
    HEAD,
    MAGIC,
    MESSAGE,
    OPENED,
    SETTLED,
    Intake,
    Ticket,
    record,
    records,
)
from mailplan.runtime.store.spool import Envelope

BODY = b"Subject: hi\r\n\r\nhello\r\n"
BIG = b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n"  # a record of more than 200 bytes
EPOCH = 0x0123456789ABCDEF
OLD_EPOCH = 0x0FEDCBA987654321  # a segment's earlier use


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


def opened(epoch: int = EPOCH) -> bytes:
    return record(OPENED, b"", epoch)


def message_record(queue_id: str, body: bytes = BODY, epoch: int = EPOCH) -> bytes:
    return record(MESSAGE, envelope(queue_id).header() + body, epoch)


def settled_record(queue_id: str, epoch: int = EPOCH) -> bytes:
    return record(SETTLED, queue_id.encode("ascii"), epoch)


def segments(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def named(directory: Path, suffix: str) -> list[str]:
    return [name for name in segments(directory) if name.endswith(suffix)]


def ids(found: list[tuple[Envelope, bytes]]) -> list[str]:
    return [queued.id for queued, _ in found]


def kinds(data: bytes) -> list[int]:
    return [kind for kind, _ in records(data)]


def epochs(data: bytes) -> list[int]:
    """The epoch in the head of each record that `records` yields."""
    found = []
    at = 0
    for _kind, payload in records(data):
        found.append(HEAD.unpack_from(data, at)[2])
        at += HEAD.size + len(payload)
    return found


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
    data = record(SETTLED, b"abc", EPOCH)
    assert data[:4] == MAGIC
    assert data[4] == SETTLED  # the kind is the byte after the magic
    assert len(data) == HEAD.size + 3
    magic, kind, epoch, length, _crc = HEAD.unpack_from(data)
    assert (magic, kind, epoch, length) == (MAGIC, SETTLED, EPOCH, 3)
    assert data[HEAD.size :] == b"abc"


def test_records_round_trip() -> None:
    payloads = [
        (OPENED, b""),
        (MESSAGE, b"first"),
        (SETTLED, b""),
        (MESSAGE, b"\x00\xff" * 500),
        (7, b"x"),
    ]
    data = b"".join(record(kind, payload, EPOCH) for kind, payload in payloads)
    assert list(records(data)) == payloads
    assert epochs(data) == [EPOCH] * len(payloads)


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


def _flipped_epoch_byte(last: bytes) -> bytes:
    damaged = bytearray(last)
    damaged[6] ^= 0x10  # the epoch is bytes 5 to 12 of the head
    return bytes(damaged)


def _wrong_magic(last: bytes) -> bytes:
    return b"MPI2" + last[4:]


def _length_too_long(last: bytes) -> bytes:
    return HEAD.pack(MAGIC, MESSAGE, EPOCH, len(last), 0) + last[HEAD.size :]


@pytest.mark.parametrize(
    "tear",
    [
        _truncated_payload,
        _truncated_head,
        _flipped_payload_byte,
        _flipped_crc_byte,
        _flipped_epoch_byte,
        _wrong_magic,
        _length_too_long,
    ],
)
def test_records_stop_at_a_torn_tail_and_keep_what_is_before(
    tear: Callable[[bytes], bytes],
) -> None:
    whole = opened() + record(MESSAGE, b"one", EPOCH) + record(SETTLED, b"two", EPOCH)
    last = record(MESSAGE, b"three and more", EPOCH)
    assert list(records(whole + tear(last))) == [
        (OPENED, b""),
        (MESSAGE, b"one"),
        (SETTLED, b"two"),
    ]


def test_records_stop_at_a_damaged_record_even_with_good_ones_after_it() -> None:
    damaged = _flipped_payload_byte(record(MESSAGE, b"middle", EPOCH))
    data = opened() + record(MESSAGE, b"one", EPOCH) + damaged + record(MESSAGE, b"after", EPOCH)
    assert list(records(data)) == [(OPENED, b""), (MESSAGE, b"one")]


def test_records_stop_at_a_whole_record_of_another_epoch() -> None:
    # what a segment written over still holds of its earlier use: whole, its CRC right
    stale = record(MESSAGE, b"from the earlier use", OLD_EPOCH)
    assert list(records(stale)) == [(MESSAGE, b"from the earlier use")]
    data = (
        opened()
        + record(MESSAGE, b"one", EPOCH)
        + record(SETTLED, b"two", EPOCH)
        + stale
        + record(MESSAGE, b"after", EPOCH)  # not taken up again after the stale one
    )
    assert list(records(data)) == [(OPENED, b""), (MESSAGE, b"one"), (SETTLED, b"two")]
    assert epochs(data) == [EPOCH] * 3


def test_records_take_the_epoch_from_the_first_record() -> None:
    data = opened(OLD_EPOCH) + record(MESSAGE, b"one", OLD_EPOCH) + record(MESSAGE, b"x", EPOCH)
    assert list(records(data)) == [(OPENED, b""), (MESSAGE, b"one")]
    assert list(records(_flipped_crc_byte(opened()) + record(MESSAGE, b"one", EPOCH))) == []


# unsettled


def test_unsettled_is_messages_minus_settled_in_order() -> None:
    data = (
        opened()
        + message_record("m1")
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
    data = opened() + message_record("m1") + message_record("m2") + settled_record("m1")
    data += settled_record("m2")
    assert intake.unsettled(data) == []


def test_unsettled_ignores_a_torn_tail() -> None:
    data = opened() + message_record("m1") + message_record("m2")[:-5]
    assert ids(intake.unsettled(data)) == ["m1"]


def test_unsettled_ignores_the_records_of_an_earlier_use() -> None:
    data = (
        opened()
        + message_record("new")
        # the rest of the file as its earlier use left it: unsettled messages, and a
        # mark that would settle the new one
        + message_record("old1", epoch=OLD_EPOCH)
        + settled_record("new", epoch=OLD_EPOCH)
        + message_record("old2", epoch=OLD_EPOCH)
    )
    assert ids(intake.unsettled(data)) == ["new"]


def test_unsettled_skips_a_record_that_is_no_queue_file(caplog: pytest.LogCaptureFixture) -> None:
    data = (
        opened()
        + message_record("m1")
        + record(MESSAGE, b"not a queue file at all", EPOCH)
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
    found = intake.unsettled(opened() + record(MESSAGE, queued.header() + body, EPOCH))
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
        assert kinds(data) == [OPENED, MESSAGE]  # the segment opens with its epoch
        assert epochs(data) == [ticket.segment.epoch] * 2
        assert intake.unsettled(data) == [(envelope("m1"), BODY)]
        assert ticket.segment.size == len(data)
        journal.settle(ticket)
        await journal.close()

    asyncio.run(scenario())


def test_segments_get_epochs_of_their_own(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> None:
        journal = Intake(directory, limit=200)
        journal.open()
        tickets = [await journal.write(envelope(f"m{n}"), BIG) for n in range(3)]
        assert len({ticket.segment.path for ticket in tickets}) == 3
        found = {ticket.segment.epoch for ticket in tickets}
        assert len(found) == 3  # random: not the same for every segment
        for ticket in tickets:
            assert set(epochs(ticket.segment.path.read_bytes())) == {ticket.segment.epoch}
        for ticket in tickets:
            journal.settle(ticket)
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


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
        assert len(syncs) == 1  # the opening record is durable before the segment is named
        syncs.clear()
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
        assert len(named(directory, ".log")) == 1
        assert segments(directory) == named(directory, ".log")  # no `.new` left
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
        # the mark alone is not written yet
        assert kinds(first.segment.path.read_bytes()) == [OPENED, MESSAGE]
        second = await journal.write(envelope("m2"), BODY)
        data = second.segment.path.read_bytes()
        assert kinds(data) == [OPENED, MESSAGE, SETTLED, MESSAGE]
        assert epochs(data) == [second.segment.epoch] * 4
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
        assert kinds(path.read_bytes()) == [OPENED, MESSAGE, SETTLED]
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
    # kept: two of its messages are unsettled
    assert len(segments(directory)) == 1
    assert len(named(directory, ".log")) == 1
    store = Store()
    assert Intake(directory).recover(store) == 2
    assert store.stored == [(queued[0], bodies[0]), (queued[2], bodies[2])]
    assert [one.recipients for one, _ in store.stored] == [("b@y.test",), ("d@y.test", "e@z.test")]
    assert segments(directory) == []
    again = Store()
    assert Intake(directory).recover(again) == 0
    assert again.stored == []


def test_recover_keeps_a_segment_it_cannot_queue_and_goes_on(tmp_path: Path) -> None:
    """A full disk at start: the segment stays for the next start, the server starts."""
    directory = tmp_path / "intake"

    async def write(queue_id: str) -> None:
        journal = Intake(directory)
        journal.open()
        await journal.write(envelope(queue_id, "b@y.test"), BODY)
        await journal.close()  # unsettled: kept

    asyncio.run(write("m1"))
    asyncio.run(write("m2"))
    assert len(named(directory, ".log")) == 2
    stored: list[str] = []

    def full_for_m1(queued: Envelope, message: bytes) -> None:
        if queued.id == "m1":
            raise OSError(errno.ENOSPC, "No space left on device")
        stored.append(queued.id)

    assert Intake(directory).recover(full_for_m1) == 1
    assert stored == ["m2"]
    (kept,) = named(directory, ".log")
    assert ids(intake.unsettled((directory / kept).read_bytes())) == ["m1"]
    later = Store()
    assert Intake(directory).recover(later) == 1
    assert ids(later.stored) == ["m1"]
    assert segments(directory) == []


def test_recover_creates_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "queue" / "intake"
    assert Intake(directory).recover(Store()) == 0
    assert directory.is_dir()


def test_recover_removes_a_leftover_new_file_and_ignores_other_names(tmp_path: Path) -> None:
    directory = tmp_path / "intake"
    directory.mkdir()
    (directory / "4242.0.new").write_bytes(b"")
    (directory / "4242.1.new").write_bytes(opened() + message_record("m1"))  # never named .log
    (directory / "notes.txt").write_bytes(b"not a segment")
    store = Store()
    assert Intake(directory).recover(store) == 0
    assert store.stored == []
    assert segments(directory) == ["notes.txt"]


def test_recover_removes_a_leftover_spare_and_stores_nothing_from_it(tmp_path: Path) -> None:
    directory = tmp_path / "intake"
    directory.mkdir()
    # a spare's messages were all settled (even when the last mark never got written)
    spare = opened() + message_record("m1") + message_record("m2") + settled_record("m1")
    assert ids(intake.unsettled(spare)) == ["m2"]  # it looks unsettled
    (directory / "4242.3.spare").write_bytes(spare)
    (directory / "4242.4.spare").write_bytes(b"")
    (directory / "4242.5.log").write_bytes(opened() + message_record("m3"))
    store = Store()
    assert Intake(directory).recover(store) == 1
    assert ids(store.stored) == ["m3"]
    assert segments(directory) == []


def test_recover_of_a_segment_with_a_torn_tail(tmp_path: Path) -> None:
    directory = tmp_path / "intake"
    directory.mkdir()
    data = opened() + message_record("m1") + message_record("m2") + message_record("m3")[:-7]
    (directory / "4242.0.log").write_bytes(data)
    store = Store()
    assert Intake(directory).recover(store) == 2
    assert ids(store.stored) == ["m1", "m2"]
    assert segments(directory) == []


def test_recover_of_a_segment_written_over_stops_at_its_earlier_use(tmp_path: Path) -> None:
    directory = tmp_path / "intake"
    directory.mkdir()
    earlier = (
        opened(OLD_EPOCH)
        + message_record("old1", epoch=OLD_EPOCH)
        + message_record("old2", epoch=OLD_EPOCH)
        + settled_record("old1", epoch=OLD_EPOCH)
        + message_record("old3", epoch=OLD_EPOCH)
    )
    now = opened() + message_record("new1")
    # written over from the start: what follows is old2's record, whole, its CRC right
    assert len(now) == len(opened(OLD_EPOCH) + message_record("old1", epoch=OLD_EPOCH))
    data = now + earlier[len(now) :]
    assert next(records(earlier[len(now) :]))[0] == MESSAGE
    (directory / "4242.0.log").write_bytes(data)
    store = Store()
    assert Intake(directory).recover(store) == 1
    assert ids(store.stored) == ["new1"]
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


# Rotation and spares


def test_rotation_starts_new_segments_and_keeps_settled_ones_as_spares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    monkeypatch.setattr(intake, "SETTLE_DELAY", 0.01)  # settled marks alone go soon
    assert intake.SPARES == 2

    async def scenario() -> None:
        journal = Intake(directory, limit=200)
        journal.open()
        # so each write starts a new segment
        assert len(opened() + message_record("m0", BIG)) > 200
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
        assert len(named(directory, ".log")) == 3
        assert len(named(directory, ".spare")) == 2  # kept to be written over
        assert len(segments(directory)) == 5
        # the spares are held: another's recovery leaves them
        store = Store()
        assert Intake(directory).recover(store) == 0
        assert store.stored == []
        assert len(named(directory, ".spare")) == 2
        journal.settle(tickets[1])
        journal.settle(tickets[3])
        # only the one in use is left of the segments, and no more than SPARES spares
        await until(lambda: len(named(directory, ".log")) == 1)
        assert not any(path.exists() for path in paths)
        assert len(named(directory, ".spare")) == intake.SPARES
        assert len(segments(directory)) == 1 + intake.SPARES
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
    listed = segments(directory)
    assert len(listed) == 2  # no spare, no `.new`: only the two with unsettled messages
    assert all(name.endswith(".log") for name in listed)
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


def test_spares_are_written_over_and_the_files_stay_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    monkeypatch.setattr(intake, "SETTLE_DELAY", 0.01)

    async def scenario() -> None:
        journal = Intake(directory, limit=300)
        journal.open()
        one = len(message_record("m0"))
        assert len(opened()) + one < 300 <= len(opened()) + 2 * one  # two messages a segment
        seen: dict[int, set[int]] = {}  # id of each Segment: the epochs it was used with
        for turn in range(6):
            tickets = []
            for n in range(6):
                ticket = await journal.write(envelope(f"t{turn}m{n}"), BODY)
                tickets.append(ticket)
                seen.setdefault(id(ticket.segment), set()).add(ticket.segment.epoch)
                listed = segments(directory)
                assert all(name.endswith((".log", ".spare")) for name in listed), listed
                holding = len({id(ticket.segment) for ticket in tickets})
                assert len(named(directory, ".spare")) <= intake.SPARES, listed
                # the one in use, those with unsettled messages, and the spares
                assert len(listed) <= 1 + holding + intake.SPARES, listed
            for ticket in tickets:
                journal.settle(ticket)
            await until(lambda: len(named(directory, ".log")) == 1)
            assert len(named(directory, ".spare")) == intake.SPARES
            assert len(segments(directory)) == 1 + intake.SPARES
        # 18 rotations; spares were written over instead of new files made for each
        assert len(seen) < 18, f"{len(seen)} segments for 18 rotations"
        assert any(len(used) > 1 for used in seen.values()), "no segment was used again"
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


def test_a_spare_written_over_hands_over_only_its_new_messages(tmp_path: Path) -> None:
    directory = tmp_path / "intake"

    async def scenario() -> tuple[str, set[str]]:
        journal = Intake(directory, limit=300)  # two messages a segment
        journal.open()
        old = [await journal.write(envelope(f"old{n}"), BODY) for n in range(4)]
        old_segments = {id(ticket.segment): ticket.segment.epoch for ticket in old}
        assert len(old_segments) == 2
        for ticket in old:
            journal.settle(ticket)  # the marks go with the next message
        fresh = None
        settled = set()
        for n in range(10):
            ticket = await journal.write(envelope(f"new{n}"), BODY)
            if id(ticket.segment) in old_segments:
                fresh = ticket
                break
            journal.settle(ticket)
            settled.add(ticket.queue_id)
        assert fresh is not None, "no spare was used again"
        assert fresh.segment.epoch != old_segments[id(fresh.segment)]
        data = fresh.segment.path.read_bytes()
        # the file still holds its earlier use's records, after the new ones
        assert any(f"Id: {ticket.queue_id}\n".encode() in data for ticket in old)
        assert kinds(data) == [OPENED, MESSAGE]
        assert ids(intake.unsettled(data)) == [fresh.queue_id]
        await journal.close()  # the new message stays unsettled
        return fresh.queue_id, settled

    kept, settled = asyncio.run(scenario())
    assert settled  # some were settled in segments other than the one used again
    assert named(directory, ".spare") == []
    assert named(directory, ".new") == []
    assert len(named(directory, ".log")) == 1
    store = Store()
    assert Intake(directory).recover(store) == 1
    # none of the old ones (settled, or whose mark was never written), none of the others
    assert ids(store.stored) == [kept]
    assert store.stored == [(envelope(kept), BODY)]
    assert segments(directory) == []


# Failures


def test_failed_write_raises_and_the_next_goes_to_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    real_write = intake._write
    failures: list[bytes] = []

    def fail_once(segment: intake.Segment, data: bytes) -> None:
        if not failures:
            failures.append(data)
            # a torn record, then the error
            os.pwrite(segment.descriptor, data[: len(data) // 2], segment.size)
            raise OSError(errno.EIO, "injected")
        real_write(segment, data)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        good = await journal.write(envelope("m1"), BODY)
        monkeypatch.setattr(intake, "_write", fail_once)
        with pytest.raises(OSError, match="injected"):
            await journal.write(envelope("m2"), BODY)
        assert failures
        assert failures[0][:4] == MAGIC and failures[0][4] == MESSAGE
        # the torn record was cut off again
        assert good.segment.path.stat().st_size == good.segment.size
        assert ids(intake.unsettled(good.segment.path.read_bytes())) == ["m1"]
        after = await journal.write(envelope("m3"), BODY)
        assert after.segment.path != good.segment.path
        assert ids(intake.unsettled(after.segment.path.read_bytes())) == ["m3"]
        assert len(segments(directory)) == 2
        assert len(named(directory, ".log")) == 2
        await journal.close()  # nothing settled: both segments stay

    asyncio.run(scenario())
    store = Store()
    assert Intake(directory).recover(store) == 2
    assert sorted(ids(store.stored)) == ["m1", "m3"]
    assert segments(directory) == []


def test_failed_write_into_an_empty_segment_retires_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    real_write = intake._write

    def fail_messages(segment: intake.Segment, data: bytes) -> None:
        if data[:4] == MAGIC and data[4] == MESSAGE:
            raise OSError(errno.ENOSPC, "injected")
        real_write(segment, data)  # a new segment's opening record

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        (first,) = segments(directory)
        with monkeypatch.context() as patch:
            patch.setattr(intake, "_write", fail_messages)
            with pytest.raises(OSError, match="injected"):
                await journal.write(envelope("m1"), BODY)
        assert first not in segments(directory)  # nothing unsettled in it: a spare
        logs = named(directory, ".log")
        assert len(logs) == 1
        assert len(named(directory, ".spare")) <= 1
        assert named(directory, ".new") == []
        ticket = await journal.write(envelope("m2"), BODY)
        assert ticket.segment.path.name == logs[0]
        journal.settle(ticket)
        await journal.close()

    asyncio.run(scenario())
    assert segments(directory) == []


# Failures and races (regression tests for bugs found in review)


def test_settled_marks_in_a_batch_with_a_failed_write_are_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    real_write = intake._write

    def fail_for_m2(segment: intake.Segment, data: bytes) -> None:
        if b"Id: m2\n" in data:
            raise OSError(errno.EIO, "injected")
        real_write(segment, data)

    monkeypatch.setattr(intake, "_write", fail_for_m2)
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
    real_write = intake._write
    monkeypatch.setattr(intake, "SETTLE_DELAY", 60.0)

    def torn_marks(segment: intake.Segment, data: bytes) -> None:
        if data[:5] == MAGIC + bytes([SETTLED]):  # a short write, then the disk is full
            os.pwrite(segment.descriptor, data[: len(data) // 2], segment.size)
            raise OSError(errno.ENOSPC, "injected")
        real_write(segment, data)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        first = await journal.write(envelope("m1"), BODY)
        monkeypatch.setattr(intake, "_write", torn_marks)
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
    real_write = intake._write

    def failing_marks(segment: intake.Segment, data: bytes) -> None:
        if data[:5] == MAGIC + bytes([SETTLED]):
            raise OSError(errno.ENOSPC, "injected")
        real_write(segment, data)

    async def scenario() -> None:
        journal = Intake(directory)
        journal.open()
        ticket = await journal.write(envelope("m1"), BODY)
        monkeypatch.setattr(intake, "_write", failing_marks)
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
    real_write = intake._write
    monkeypatch.setattr(intake, "SETTLE_DELAY", 0.01)

    def slow(segment: intake.Segment, data: bytes) -> None:
        if b"Id: m2\n" in data:
            time.sleep(0.2)  # a slow disk: the settle timer fires meanwhile
        real_write(segment, data)

    monkeypatch.setattr(intake, "_write", slow)

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


def test_a_segment_that_cannot_be_opened_leaves_no_file_or_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"

    def full(segment: intake.Segment, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "injected")  # the disk is full: nothing is written

    async def scenario() -> tuple[list[str], int]:
        journal = Intake(directory)
        journal.open()
        descriptors = len(os.listdir("/proc/self/fd"))
        monkeypatch.setattr(intake, "_write", full)
        for n in range(3):  # each failed write tries to start a new segment, and cannot
            with pytest.raises(OSError, match="injected"):
                await journal.write(envelope(f"m{n}"), BODY)
        left = named(directory, ".new")
        grown = len(os.listdir("/proc/self/fd")) - descriptors
        monkeypatch.undo()
        await journal.close()
        return left, grown

    left, grown = asyncio.run(scenario())
    assert (left, grown) == ([], 0), (
        "a new segment whose opening record cannot be written (Intake._reopen raises "
        "anything but FileNotFoundError) must be removed and its descriptor closed, "
        f"not kept until close: {left} left, {grown} more descriptors open"
    )


def test_two_intakes_in_one_process_keep_their_spares_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "intake"
    monkeypatch.setattr(intake, "SETTLE_DELAY", 0.01)

    async def settle_all(journal: Intake, tickets: list[Ticket]) -> None:
        paths = [ticket.segment.path for ticket in tickets]
        for ticket in tickets:
            journal.settle(ticket)
        await until(lambda: not any(path.exists() for path in paths))  # now spares

    async def scenario() -> list[str]:
        first = Intake(directory, limit=1)  # every write starts a new segment
        second = Intake(directory, limit=1)
        first.open()
        second.open()  # same pid, and a sequence of its own
        await settle_all(second, [await second.write(envelope(f"b{n}"), BODY) for n in (1, 2)])
        await settle_all(first, [await first.write(envelope(f"a{n}"), BODY) for n in (1, 2)])
        kept = [await second.write(envelope(f"b{n}"), BODY) for n in (3, 4, 5)]
        await first.close()
        await second.close()
        return [ticket.queue_id for ticket in kept]

    kept = asyncio.run(scenario())
    store = Store()
    Intake(directory).recover(store)
    assert sorted(ids(store.stored)) == kept, (
        "two Intakes of one process must not take each other's files: Intake._retire "
        "renames a settled segment to PID.SEQ.spare from its own sequence without "
        "checking that the name is free, so the first Intake's spare replaced the "
        "second's; the second then renamed that file to its next .log while writing "
        "into its own, unlinked, file: its unsettled message was lost and a settled one "
        f"of the first came back; kept {kept}, recovered {sorted(ids(store.stored))}"
    )
