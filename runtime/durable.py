"""Durable files: written in full, fsynced, renamed into place, and their folder fsynced."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class DirectorySync:
    """Group commit for one folder: concurrent writers share directory fsyncs.

    Each writer renames its file into place, then calls `after_rename`; one fsync of
    the folder covers every rename made before it started, so with many sessions at
    once most writers wait for a sync already under way instead of issuing their own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._changed = threading.Condition()
        self._renamed = 0
        self._synced = 0
        self._syncing = False

    def after_rename(self) -> None:
        """Return once the folder is synced with (at least) this caller's rename in it."""
        with self._changed:
            self._renamed += 1
            ticket = self._renamed
            while self._synced < ticket:
                if self._syncing:
                    self._changed.wait()
                    continue
                self._syncing = True
                covered = self._renamed
                self._changed.release()
                try:
                    sync_directory(self.path)
                finally:
                    self._changed.acquire()
                    self._syncing = False
                    self._changed.notify_all()
                self._synced = max(self._synced, covered)


def publish(
    temporary: Path, final: Path, *parts: bytes, folder: DirectorySync | None = None
) -> None:
    """Write `parts` to `temporary`, then rename it `final`; on return it survives a crash."""
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    os.rename(temporary, final)
    if folder is not None:
        folder.after_rename()
    else:
        sync_directory(final.parent)


def sync_directory(path: Path) -> None:
    """fsync a folder, so that the names created or renamed in it last."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
