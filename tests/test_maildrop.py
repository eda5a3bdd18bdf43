"""The POP3 maildrop: locking, listing in delivery order, stable UIDLs, changes at commit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailplan.runtime.mailbox.maildrop import Locked, Maildrop, network_form, uidl
from mailplan.runtime.store import maildir
from mailplan.runtime.store.maildir import network_size


def delivered(folder: Path, *bodies: bytes) -> list[Path]:
    return [maildir.deliver(folder, "sender@remote.example", body) for body in bodies]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n"),
        (b"a\rb\r\n", b"a\rb\r\n"),  # a lone CR ends no line
        (b"", b""),
    ],
    ids=["crlf", "bare-lf", "no-final-line-end", "lone-cr", "empty"],
)
def test_network_form(content: bytes, expected: bytes) -> None:
    assert network_form(content) == expected
    assert network_size(content) == len(expected)


def test_uidl_is_the_base_name_when_it_can_be() -> None:
    assert uidl("1700000000.M1P2Q3.host") == "1700000000.M1P2Q3.host"
    long = "x" * 71
    assert len(uidl(long)) == 40 and uidl(long) == uidl(long)
    assert uidl("with space").isalnum()


def test_messages_in_delivery_order_with_sizes(tmp_path: Path) -> None:
    folder = tmp_path / "alice"
    first, second = delivered(folder, b"Subject: 1\r\n\r\none\r\n", b"Subject: 2\n\ntwo\n")
    drop = Maildrop.open(folder)
    try:
        assert [m.name for m in drop.messages] == [first.name, second.name]
        assert [m.size for m in drop.messages] == [
            len(network_form(first.read_bytes())),
            len(network_form(second.read_bytes())),
        ]
        assert drop.read(drop.messages[1]).endswith(b"\r\n\r\ntwo\r\n")
    finally:
        drop.close()


def test_a_missing_maildir_is_an_empty_one(tmp_path: Path) -> None:
    drop = Maildrop.open(tmp_path / "new-account")
    assert drop.messages == ()
    drop.close()
    assert (tmp_path / "new-account" / "cur").is_dir()


def test_one_session_at_a_time(tmp_path: Path) -> None:
    first = Maildrop.open(tmp_path / "bob")
    with pytest.raises(Locked):
        Maildrop.open(tmp_path / "bob")
    first.close()
    first.close()  # twice is harmless
    Maildrop.open(tmp_path / "bob").close()


def test_commit_deletes_and_marks_seen(tmp_path: Path) -> None:
    folder = tmp_path / "carol"
    kept, gone, untouched = delivered(folder, b"a\r\n", b"b\r\n", b"c\r\n")
    drop = Maildrop.open(folder)
    by_name = {m.name: m for m in drop.messages}
    assert drop.commit({by_name[gone.name]}, {by_name[kept.name], by_name[gone.name]}) == 0
    drop.close()
    assert sorted(p.name for p in (folder / "cur").iterdir()) == [f"{kept.name}:2,S"]
    assert [p.name for p in (folder / "new").iterdir()] == [untouched.name]


def test_a_message_moved_by_another_reader_is_found_by_its_base_name(tmp_path: Path) -> None:
    folder = tmp_path / "dave"
    (path,) = delivered(folder, b"Subject: moved\r\n\r\nbody\r\n")
    drop = Maildrop.open(folder)
    (message,) = drop.messages
    path.rename(folder / "cur" / f"{path.name}:2,RS")
    assert drop.read(message).startswith(b"Return-Path:")
    assert drop.commit({message}, set()) == 0
    assert not list((folder / "cur").iterdir())
    drop.close()


def test_a_message_removed_by_another_reader_is_counted(tmp_path: Path) -> None:
    folder = tmp_path / "erin"
    (path,) = delivered(folder, b"x\r\n")
    drop = Maildrop.open(folder)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        drop.read(drop.messages[0])
    assert drop.commit(set(drop.messages), set()) == 1
    drop.close()


def test_a_message_moved_while_it_is_deleted_is_deleted_where_it_went(tmp_path: Path) -> None:
    """Another reader (Dovecot) renames the file between finding it and deleting it."""
    folder = tmp_path / "alice"
    (first,) = delivered(folder, b"Subject: 1\r\n\r\none\r\n")
    drop = Maildrop.open(folder)
    moved = folder / "cur" / f"{first.name}:2,S"
    calls: list[Path] = []

    def delete_after_a_rename(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            path.rename(moved)  # what the other reader did just before us
            raise FileNotFoundError(path)
        path.unlink()

    try:
        assert drop._change(drop.messages[0], delete_after_a_rename)
    finally:
        drop.close()
    assert calls == [first, moved]
    assert not moved.exists() and not first.exists()


def test_sizes_come_from_the_name_when_it_gives_them(tmp_path: Path) -> None:
    """A mailbox is listed from its file names (Dovecot's `,W=`), without reading the
    messages; a name without sizes is read and counted."""
    folder = tmp_path / "box"
    named = maildir.deliver(folder, "a@b.test", b"Subject: one\r\n\r\nhi\r\n")
    plain = folder / "new" / "1.M1P1Q1.other"
    plain.write_bytes(b"Subject: two\n\nbare\n")
    moved = named.with_name(named.name.replace(",W=", ",W=9999,X="))  # what the name says wins
    named.rename(moved)
    drop = Maildrop.open(folder)
    try:
        sizes = {os.path.basename(message.path): message.size for message in drop.messages}
    finally:
        drop.close()
    assert sizes == {plain.name: len(b"Subject: two\r\n\r\nbare\r\n"), moved.name: 9999}
