"""LOCAL delivery into Maildir: tmp/ then new/, Return-Path on top, unique names."""

from __future__ import annotations

import mailbox
import threading
from pathlib import Path

from mailplan.runtime.store import maildir

MESSAGE = b"Subject: hi\r\nMessage-ID: <1@test>\r\n\r\nhello\r\n"


def test_mailbox_path(tmp_path: Path) -> None:
    assert maildir.mailbox(tmp_path, "alice@example.com") == tmp_path / "example.com" / "alice"


def test_deliver_creates_the_maildir_and_a_file_in_new(tmp_path: Path) -> None:
    folder = maildir.mailbox(tmp_path / "mail", "alice@example.com")
    path = maildir.deliver(folder, "someone@remote.test", MESSAGE)
    for sub in ("tmp", "new", "cur"):
        assert (folder / sub).is_dir()
    assert path.parent == folder / "new"
    assert list((folder / "new").iterdir()) == [path]
    assert list((folder / "tmp").iterdir()) == []
    assert list((folder / "cur").iterdir()) == []
    assert path.read_bytes() == b"Return-Path: <someone@remote.test>\r\n" + MESSAGE
    assert path.stat().st_mode & 0o777 == 0o600


def test_deliver_empty_sender(tmp_path: Path) -> None:
    path = maildir.deliver(tmp_path / "box", "", MESSAGE)
    assert path.read_bytes().startswith(b"Return-Path: <>\r\n")


def test_deliver_utf8_sender(tmp_path: Path) -> None:
    path = maildir.deliver(tmp_path / "box", "jürgen@bücher.example", MESSAGE)
    assert path.read_bytes().startswith("Return-Path: <jürgen@bücher.example>\r\n".encode())


def test_deliver_keeps_the_message_bytes(tmp_path: Path) -> None:
    message = MESSAGE + bytes(range(256)) * 1000
    path = maildir.deliver(tmp_path / "box", "a@b.test", message)
    assert path.read_bytes() == b"Return-Path: <a@b.test>\r\n" + message


def test_many_deliveries_get_unique_names(tmp_path: Path) -> None:
    folder = tmp_path / "box"
    paths = [maildir.deliver(folder, "a@b.test", MESSAGE + str(i).encode()) for i in range(300)]
    assert len({path.name for path in paths}) == 300
    assert len(list((folder / "new").iterdir())) == 300
    assert list((folder / "tmp").iterdir()) == []
    bodies = sorted(path.read_bytes() for path in paths)
    assert bodies == sorted(
        b"Return-Path: <a@b.test>\r\n" + MESSAGE + str(i).encode() for i in range(300)
    )


def test_deliveries_from_threads_get_unique_names(tmp_path: Path) -> None:
    folder = tmp_path / "box"
    names: list[str] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                path = maildir.deliver(folder, "a@b.test", f"{n}-{i}".encode())
                with lock:
                    names.append(path.name)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(set(names)) == 400
    assert len(list((folder / "new").iterdir())) == 400
    assert list((folder / "tmp").iterdir()) == []


def test_python_reads_the_maildir(tmp_path: Path) -> None:
    folder = tmp_path / "box"
    maildir.deliver(folder, "a@b.test", MESSAGE)
    box = mailbox.Maildir(folder, create=False)
    (message,) = list(box)
    assert message["Return-Path"] == "<a@b.test>"
    assert message["Subject"] == "hi"
    box.close()


def test_maildir_name_has_no_slash_or_colon(tmp_path: Path) -> None:
    path = maildir.deliver(tmp_path / "box", "a@b.test", MESSAGE)
    assert "/" not in path.name
    assert ":" not in path.name


def test_a_file_name_carries_its_sizes_as_dovecot_writes_them(tmp_path: Path) -> None:
    """`,S=` the octets in the file, `,W=` with every line end CRLF (Dovecot's
    `maildir_size` names): readers list a mailbox without opening each message."""
    message = b"Subject: bare\nline ends\n\r\nand one CRLF\r\nno end"
    path = maildir.deliver(tmp_path / "box", "a@b.test", message)
    content = path.read_bytes()
    wire = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
    assert path.name.endswith(f",S={len(content)},W={len(wire)}")
    assert maildir.named_size(path.name) == len(wire)
    assert maildir.named_size(path.name + ":2,S") == len(wire)
    assert maildir.named_size("1733560000.M1P2Q3.host") is None
    assert maildir.named_size("1733560000.M1P2Q3.host,W=12x") is None
