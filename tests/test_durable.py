"""Durable files: `publish` of one file, a `Batch` of many with two syncs, and `sync`
with syncfs(2) and without it."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from mailplan.runtime.store import durable

needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def path_of(descriptor: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{descriptor}"))


# publish


def test_publish_writes_the_parts_under_the_final_name(tmp_path: Path) -> None:
    temporary, final = tmp_path / "x.tmp", tmp_path / "x.msg"
    durable.publish(temporary, final, b"head\n", b"", b"body \x00\xff\n")
    assert final.read_bytes() == b"head\n" + b"body \x00\xff\n"
    assert not temporary.exists()
    assert names(tmp_path) == ["x.msg"]
    assert final.stat().st_mode & 0o777 == 0o600


def test_publish_into_another_folder(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "new").mkdir()
    temporary, final = tmp_path / "tmp" / "1", tmp_path / "new" / "1"
    durable.publish(temporary, final, b"mail")
    assert final.read_bytes() == b"mail"
    assert names(tmp_path / "tmp") == []


def test_publish_replaces_a_final_file(tmp_path: Path) -> None:
    final = tmp_path / "x.msg"
    final.write_bytes(b"old")
    durable.publish(tmp_path / "x.tmp", final, b"new")
    assert final.read_bytes() == b"new"
    assert names(tmp_path) == ["x.msg"]


def test_publish_refuses_an_existing_temporary_and_leaves_it(tmp_path: Path) -> None:
    temporary, final = tmp_path / "x.tmp", tmp_path / "x.msg"
    temporary.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        durable.publish(temporary, final, b"mine")
    assert temporary.read_bytes() == b"someone else's"
    assert not final.exists()


def test_publish_removes_the_temporary_when_fsync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(descriptor: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fsync", failing)
    temporary, final = tmp_path / "x.tmp", tmp_path / "x.msg"
    with pytest.raises(OSError, match="injected"):
        durable.publish(temporary, final, b"data")
    assert names(tmp_path) == []


def test_sync_directory(tmp_path: Path) -> None:
    durable.sync_directory(tmp_path)  # no error
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        durable.sync_directory(tmp_path / "file")


# Batch


def test_batch_keeps_temporary_names_until_commit(tmp_path: Path) -> None:
    tmp, new = tmp_path / "tmp", tmp_path / "new"
    tmp.mkdir()
    new.mkdir()
    contents = {f"m{n}": f"message {n}\n".encode() * (n + 1) for n in range(5)}
    batch = durable.Batch()
    for name, content in contents.items():
        batch.publish(tmp / name, new / name, content[:3], content[3:])
    assert names(tmp) == sorted(contents)
    assert names(new) == []
    for name, content in contents.items():
        assert (tmp / name).read_bytes() == content
    batch.commit()
    assert names(tmp) == []
    assert names(new) == sorted(contents)
    for name, content in contents.items():
        assert (new / name).read_bytes() == content
    assert batch.moves == []


def test_batch_can_be_used_again_after_commit(tmp_path: Path) -> None:
    batch = durable.Batch()
    batch.publish(tmp_path / "a.tmp", tmp_path / "a", b"a")
    batch.commit()
    batch.publish(tmp_path / "b.tmp", tmp_path / "b", b"b")
    assert names(tmp_path) == ["a", "b.tmp"]
    batch.commit()
    assert names(tmp_path) == ["a", "b"]
    assert (tmp_path / "b").read_bytes() == b"b"


def test_batch_abandon_removes_the_temporaries(tmp_path: Path) -> None:
    batch = durable.Batch()
    for name in ("a", "b", "c"):
        batch.publish(tmp_path / f"{name}.tmp", tmp_path / name, name.encode())
    (tmp_path / "b.tmp").unlink()  # one already gone: no error
    batch.abandon()
    assert names(tmp_path) == []
    assert batch.moves == []
    batch.commit()  # nothing left to commit
    assert names(tmp_path) == []


def test_commit_of_an_empty_batch_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[Path]] = []

    def recording(paths: Iterable[Path]) -> None:
        calls.append(list(paths))

    monkeypatch.setattr(durable, "sync", recording)
    batch = durable.Batch()
    batch.commit()
    assert calls == []
    assert batch.moves == []
    assert names(tmp_path) == []


def test_batch_publish_of_an_existing_temporary_is_not_committed(tmp_path: Path) -> None:
    (tmp_path / "a.tmp").write_bytes(b"someone else's")
    batch = durable.Batch()
    with pytest.raises(FileExistsError):
        batch.publish(tmp_path / "a.tmp", tmp_path / "a", b"mine")
    batch.publish(tmp_path / "b.tmp", tmp_path / "b", b"b")
    batch.commit()
    assert names(tmp_path) == ["a.tmp", "b"]
    assert (tmp_path / "a.tmp").read_bytes() == b"someone else's"


@needs_proc
def test_batch_commit_syncs_once_before_and_once_after_the_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = durable._syncfs
    if real is None:
        pytest.skip("no syncfs on this system")
    tmp, new = tmp_path / "tmp", tmp_path / "new"
    tmp.mkdir()
    new.mkdir()
    finals = [new / f"m{n}" for n in range(4)]
    seen: list[tuple[Path, list[bool]]] = []

    def recording(descriptor: int) -> int:
        seen.append((path_of(descriptor), [final.exists() for final in finals]))
        return real(descriptor)

    monkeypatch.setattr(durable, "_syncfs", recording)
    batch = durable.Batch()
    for final in finals:
        batch.publish(tmp / final.name, final, b"x")
    batch.commit()
    # one file system: one syncfs per phase, not one per file or folder
    assert len(seen) == 2
    (before_folder, before), (after_folder, after) = seen
    assert before_folder == tmp
    assert before == [False] * 4  # the contents are synced before any final name shows
    # both through the descriptor opened before the batch wrote there (write-back
    # errors are reported only to descriptors that were open when they happened)
    assert after_folder == tmp
    assert after == [True] * 4
    assert names(new) == [final.name for final in finals]


def test_batch_commit_when_syncfs_fails_keeps_the_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "_syncfs", lambda descriptor: -1)
    batch = durable.Batch()
    batch.publish(tmp_path / "a.tmp", tmp_path / "a", b"a")
    with pytest.raises(OSError):
        batch.commit()
    assert names(tmp_path) == ["a.tmp"]  # no final name for content that may be lost
    assert len(batch.moves) == 1
    batch.abandon()
    assert names(tmp_path) == []


def test_batch_commit_without_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "_syncfs", None)
    batch = durable.Batch()
    batch.publish(tmp_path / "a.tmp", tmp_path / "a", b"a")
    batch.publish(tmp_path / "b.tmp", tmp_path / "b", b"b")
    batch.commit()
    assert names(tmp_path) == ["a", "b"]
    assert (tmp_path / "a").read_bytes() == b"a"
    assert (tmp_path / "b").read_bytes() == b"b"


# sync


@needs_proc
def test_sync_with_syncfs_once_per_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = durable._syncfs
    if real is None:
        pytest.skip("no syncfs on this system")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "f").write_bytes(b"x")
    synced: list[Path] = []

    def recording(descriptor: int) -> int:
        synced.append(path_of(descriptor))
        return real(descriptor)

    monkeypatch.setattr(durable, "_syncfs", recording)
    before = open_descriptors()
    durable.sync([tmp_path / "a" / "f", tmp_path / "b" / "f"])
    assert len(synced) == 1  # both folders are on one file system
    assert synced[0] in (tmp_path / "a", tmp_path / "b")
    assert open_descriptors() == before


def test_sync_with_the_real_syncfs(tmp_path: Path) -> None:
    if durable._syncfs is None:
        pytest.skip("no syncfs on this system")
    (tmp_path / "f").write_bytes(b"x")
    durable.sync([tmp_path / "f"])  # no error
    assert (tmp_path / "f").read_bytes() == b"x"


@needs_proc
def test_sync_without_syncfs_fsyncs_every_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "_syncfs", None)
    files = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for name in ("1", "2"):
            (tmp_path / folder / name).write_bytes(b"x")
            files.append(tmp_path / folder / name)
    real_fsync = os.fsync
    synced: list[Path] = []

    def recording(descriptor: int) -> None:
        synced.append(path_of(descriptor))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    before = open_descriptors()
    durable.sync(iter(files))  # any iterable, consumed once
    assert sorted(synced) == sorted([*files, tmp_path / "a", tmp_path / "b"])
    assert open_descriptors() == before


def test_sync_of_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def recording(descriptor: int) -> int:
        calls.append(descriptor)
        return 0

    monkeypatch.setattr(durable, "_syncfs", recording)
    durable.sync([])
    assert calls == []
    monkeypatch.setattr(durable, "_syncfs", None)
    durable.sync([])  # no folder, no error


@needs_proc
def test_sync_raises_when_syncfs_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"x")
    monkeypatch.setattr(durable, "_syncfs", lambda descriptor: -1)
    before = open_descriptors()
    with pytest.raises(OSError) as caught:
        durable.sync([tmp_path / "f"])
    assert caught.value.filename == str(tmp_path)
    assert open_descriptors() == before  # the folder's descriptor is closed


def test_sync_reports_the_errno_of_a_failed_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(descriptor: int) -> int:
        ctypes.set_errno(errno.EIO)  # what a CDLL(use_errno=True) call leaves behind
        return -1

    (tmp_path / "f").write_bytes(b"x")
    monkeypatch.setattr(durable, "_syncfs", failing)
    try:
        with pytest.raises(OSError) as caught:
            durable.sync([tmp_path / "f"])
    finally:
        ctypes.set_errno(0)
    assert caught.value.errno == errno.EIO
    assert caught.value.strerror == os.strerror(errno.EIO)
