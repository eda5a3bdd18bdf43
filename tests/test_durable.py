"""Durable files: published whole, and concurrent writers sharing directory fsyncs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from runtime import durable


def test_publish_writes_all_parts_and_leaves_no_temporary(tmp_path: Path) -> None:
    durable.publish(tmp_path / "a.tmp", tmp_path / "a.msg", b"head\n", b"x" * 100_000)
    assert (tmp_path / "a.msg").read_bytes() == b"head\n" + b"x" * 100_000
    assert not (tmp_path / "a.tmp").exists()


def test_publish_refuses_to_overwrite_a_temporary(tmp_path: Path) -> None:
    (tmp_path / "a.tmp").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        durable.publish(tmp_path / "a.tmp", tmp_path / "a.msg", b"mine")
    assert (tmp_path / "a.tmp").read_bytes() == b"someone else's"


def test_concurrent_writers_share_directory_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[float] = []
    real = durable.sync_directory

    def slow_sync(path: Path) -> None:
        time.sleep(0.02)  # a sync long enough for other writers to queue up behind it
        real(path)
        syncs.append(time.monotonic())

    monkeypatch.setattr(durable, "sync_directory", slow_sync)
    folder = durable.DirectorySync(tmp_path)
    returned: dict[int, float] = {}

    def write(n: int) -> None:
        durable.publish(tmp_path / f"{n}.tmp", tmp_path / f"{n}.msg", b"m", folder=folder)
        returned[n] = time.monotonic()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.msg" for n in range(24))
    assert len(syncs) < 24  # writers waited for syncs under way instead of each syncing
    # and nobody returned before a sync that started after its rename had finished
    assert all(any(s <= returned[n] for s in syncs) for n in returned)
