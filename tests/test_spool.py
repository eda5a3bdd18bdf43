"""The queue directory: the file format, durable storage, and what a start finds in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailplan.runtime.store.spool import MAGIC, BadQueueFile, Envelope, Spool, new_id, parse

MESSAGE = b"Subject: hello\r\nMessage-ID: <1@test>\r\n\r\nhello\r\n"


def envelope(**changes: object) -> Envelope:
    values: dict[str, object] = {
        "id": new_id(),
        "arrived": 1700000000.123456,
        "plan": "sha256:" + "ab" * 32,
        "listener": "smtp",
        "client": "192.0.2.7",
        "helo": "client.example.net",
        "tls": "TLSv1.3",
        "auth": "-",
        "sender": "someone@remote.test",
        "recipients": ("alice@example.com", "info@example.com"),
        "relayable": frozenset({"info@example.com"}),
    }
    values.update(changes)
    return Envelope(**values)  # type: ignore[arg-type]


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# The format


def test_header_layout() -> None:
    queued = envelope(id="abc", recipients=("a@x.test", "b@y.test"), relayable={"b@y.test"})
    assert queued.header() == MAGIC + (
        b"Id: abc\n"
        b"Arrived: 1700000000.123456\n"
        b"Plan: sha256:" + b"ab" * 32 + b"\n"
        b"Listener: smtp\n"
        b"Client: 192.0.2.7\n"
        b"Helo: client.example.net\n"
        b"Tls: TLSv1.3\n"
        b"Auth: -\n"
        b"From: <someone@remote.test>\n"
        b"To: <a@x.test>\n"
        b"To: <b@y.test> relay\n"
        b"\n"
    )


def test_round_trip_keeps_every_field_and_the_message_bytes() -> None:
    queued = envelope()
    message = MESSAGE + b"\r\n\r\nbinary \x00\xff\xfe and a lone \n and \r\n.\r\n"
    parsed, body = parse(queued.header() + message)
    assert parsed == queued
    assert body == message


def test_round_trip_relay_marks() -> None:
    queued = envelope(
        recipients=("a@x.test", "b@y.test", "c@z.test"),
        relayable=frozenset({"a@x.test", "c@z.test"}),
    )
    parsed, _ = parse(queued.header() + MESSAGE)
    assert parsed.recipients == ("a@x.test", "b@y.test", "c@z.test")
    assert parsed.relayable == frozenset({"a@x.test", "c@z.test"})


def test_round_trip_utf8_addresses() -> None:
    queued = envelope(
        sender="jürgen@bücher.example",
        recipients=("用户@例子.测试", "alice@example.com"),
        relayable=frozenset({"用户@例子.测试"}),
        helo="hôte.example",
        auth="jürgen@bücher.example",
    )
    data = queued.header() + MESSAGE
    assert "From: <jürgen@bücher.example>".encode() in data
    parsed, body = parse(data)
    assert parsed == queued
    assert body == MESSAGE


def test_round_trip_undecodable_bytes() -> None:
    """An address with bytes that are not UTF-8 (SMTPUTF8 gone wrong) survives as it came."""
    odd = b"caf\xe9@example.com".decode("utf-8", "surrogateescape")
    queued = envelope(recipients=(odd,), relayable=frozenset())
    parsed, _ = parse(queued.header() + MESSAGE)
    assert parsed.recipients == (odd,)


def test_round_trip_empty_sender_and_empty_helo() -> None:
    queued = envelope(sender="", helo="")
    data = queued.header()
    assert b"From: <>\n" in data
    parsed, _ = parse(data + MESSAGE)
    assert parsed.sender == ""
    assert parsed.helo == ""
    assert parsed == queued


def test_round_trip_empty_message() -> None:
    queued = envelope()
    parsed, body = parse(queued.header())
    assert parsed == queued
    assert body == b""


def test_new_ids_are_unique_and_sort_by_arrival() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids


# Parse errors


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a mailplan queue file"),
        (b"garbage\x00\xff" * 10, "not a mailplan queue file"),
        (b"MAILPLAN-QUEUE 2\nId: x\n\n", "not a mailplan queue file"),
        (MAGIC + b"Id: x\nArrived: 1.0\nPlan: p", "the envelope does not end"),
        (MAGIC, "the envelope does not end"),
        (MAGIC + b"Id: x\nthis line has no colon\n\n", "bad envelope line"),
        (MAGIC + b"Id: x\nTo: <a@b.test>\n\n", "envelope field missing or bad"),
    ],
    ids=["empty", "garbage", "other-magic", "truncated", "magic-only", "bad-line", "missing"],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(BadQueueFile, match=message):
        parse(data)


def test_parse_error_bad_arrival() -> None:
    data = envelope().header().replace(b"Arrived: 1700000000.123456", b"Arrived: yesterday")
    with pytest.raises(BadQueueFile, match="envelope field missing or bad"):
        parse(data + MESSAGE)


@pytest.mark.parametrize("field", [b"Id", b"Arrived", b"Plan", b"Client", b"From"])
def test_parse_error_each_missing_field(field: bytes) -> None:
    lines = envelope().header().split(b"\n")
    data = b"\n".join(line for line in lines if not line.startswith(field + b": "))
    with pytest.raises(BadQueueFile, match="envelope field missing or bad"):
        parse(data + MESSAGE)


def test_parse_error_no_recipients() -> None:
    data = envelope(recipients=(), relayable=frozenset()).header()
    with pytest.raises(BadQueueFile, match="the envelope has no recipient"):
        parse(data + MESSAGE)


def test_parse_error_truncated_copy_of_a_real_file() -> None:
    data = envelope().header() + MESSAGE
    cut = data.index(b"To: ")
    with pytest.raises(BadQueueFile):
        parse(data[:cut])


# The directory


def test_store_leaves_only_the_msg_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    queued = envelope()
    spool.store(queued, MESSAGE)
    assert files(spool.directory) == [f"{queued.id}.msg"]
    content = (spool.directory / f"{queued.id}.msg").read_bytes()
    assert content == queued.header() + MESSAGE
    assert spool.load(queued.id) == (queued, MESSAGE)
    assert (spool.directory / f"{queued.id}.msg").stat().st_mode & 0o777 == 0o600


def test_store_a_large_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    queued = envelope()
    message = os.urandom(3 * 1024 * 1024)
    spool.store(queued, message)
    assert spool.load(queued.id) == (queued, message)


def test_store_refuses_an_id_in_use(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    queued = envelope()
    spool.store(queued, MESSAGE)
    (spool.directory / f"{queued.id}.tmp").write_bytes(b"half")
    with pytest.raises(FileExistsError):
        spool.store(queued, b"other")
    assert spool.load(queued.id) == (queued, MESSAGE)


def test_spool_creates_its_directory(tmp_path: Path) -> None:
    Spool(tmp_path / "a" / "b" / "queue")
    assert (tmp_path / "a" / "b" / "queue").is_dir()


def test_done_finished_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    queued = envelope(recipients=("a@x.test", "b@x.test", "c@x.test"))
    spool.store(queued, MESSAGE)
    assert spool.finished(queued.id) == set()
    spool.done(queued.id, ["a@x.test"])
    assert spool.finished(queued.id) == {"a@x.test"}
    spool.done(queued.id, ["b@x.test", "jürgen@bücher.example"])
    assert spool.finished(queued.id) == {"a@x.test", "b@x.test", "jürgen@bücher.example"}
    done = spool.directory / f"{queued.id}.done"
    assert done.read_bytes() == "a@x.test\nb@x.test\njürgen@bücher.example\n".encode()
    assert files(spool.directory) == [f"{queued.id}.done", f"{queued.id}.msg"]
    spool.remove(queued.id)
    assert files(spool.directory) == []
    assert spool.finished(queued.id) == set()


def test_done_with_no_recipients_writes_nothing_harmful(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    queued = envelope()
    spool.store(queued, MESSAGE)
    spool.done(queued.id, [])
    assert spool.finished(queued.id) == set()


def test_finished_ignores_a_torn_last_line(tmp_path: Path) -> None:
    """A crash in the middle of appending leaves a partial line: it names nobody wrongly."""
    spool = Spool(tmp_path / "queue")
    queued = envelope(recipients=("alice@example.com", "bob@example.com"))
    spool.store(queued, MESSAGE)
    (spool.directory / f"{queued.id}.done").write_bytes(b"alice@example.com\nbob@exa")
    finished = spool.finished(queued.id)
    assert "alice@example.com" in finished
    assert "bob@example.com" not in finished


def test_remove_without_done_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    queued = envelope()
    spool.store(queued, MESSAGE)
    spool.remove(queued.id)
    spool.remove(queued.id)  # twice is harmless
    assert files(spool.directory) == []


def test_ids_oldest_first_and_tmp_files_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    queued = [envelope() for _ in range(5)]
    for one in reversed(queued):  # stored newest first: the order comes from the ids
        spool.store(one, MESSAGE)
    (spool.directory / "0000dead.tmp").write_bytes(b"never acknowledged")
    (spool.directory / f"{new_id()}.tmp").write_bytes(MAGIC)
    spool.done(queued[0].id, ["alice@example.com"])
    (spool.directory / "old.bad").write_bytes(b"set aside")
    assert list(spool.ids()) == [one.id for one in queued]
    remaining = files(spool.directory)
    assert not [name for name in remaining if name.endswith(".tmp")]
    assert "old.bad" in remaining
    assert f"{queued[0].id}.done" in remaining


def test_ids_of_an_empty_queue(tmp_path: Path) -> None:
    assert list(Spool(tmp_path / "queue").ids()) == []


def test_set_aside_keeps_the_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    garbage = b"\x00garbage\xff" * 100
    (spool.directory / "XYZ.msg").write_bytes(garbage)
    with pytest.raises(BadQueueFile):
        spool.load("XYZ")
    spool.set_aside("XYZ", "not a mailplan queue file")
    assert files(spool.directory) == ["XYZ.bad"]
    assert (spool.directory / "XYZ.bad").read_bytes() == garbage
    assert list(spool.ids()) == []


def test_set_aside_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "queue")
    (spool.directory / "XYZ.msg").write_bytes(b"garbage")
    with caplog.at_level("ERROR", logger="mailplan.queue"):
        spool.set_aside("XYZ", "not a mailplan queue file")
    assert "XYZ.msg is unreadable (not a mailplan queue file)" in caplog.text


def test_round_trip_quoted_local_part_with_angle_bracket() -> None:
    queued = envelope(
        recipients=('"john> doe"@remote.test', "alice@example.com"),
        relayable=frozenset({'"john> doe"@remote.test'}),
    )
    parsed, _ = parse(queued.header() + MESSAGE)
    assert parsed.recipients == queued.recipients
    assert parsed.relayable == queued.relayable


def test_store_again_replaces_what_a_dead_writer_left(tmp_path: Path) -> None:
    """Recovery writes a message whose earlier write a crash cut short: its `.tmp` is left."""
    spool = Spool(tmp_path / "queue")
    queued = envelope()
    (spool.directory / f"{queued.id}.tmp").write_bytes(b"half a message")
    with pytest.raises(FileExistsError):
        spool.store(queued, b"the message\r\n")
    spool.store(queued, b"the message\r\n", again=True)
    assert spool.load(queued.id) == (queued, b"the message\r\n")
    assert files(spool.directory) == [f"{queued.id}.msg"]
