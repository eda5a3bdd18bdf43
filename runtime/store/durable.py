"""Durable files: written in full, fsynced, renamed into place, and their folder fsynced.

`publish` does that for one file. A `Batch` does it for many at once, with two syncs
for the whole batch instead of two per file: every file is written under its
temporary name, their file systems are synced (`syncfs`, Linux 5.8 and later;
elsewhere each file and folder is fsynced), the files are renamed, and the file
systems are synced again.
So a final name never shows a file whose content could still be lost. Files published
`last` (the queue files of a batch) are renamed only after the others' names are
durable, with one more sync: a `last` file that exists after a crash means that every
other file of its batch is in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path


def publish(temporary: Path, final: Path, *parts: bytes) -> None:
    """Write `parts` to `temporary`, then rename it `final`; on return it survives a crash."""
    descriptor = _write(temporary, parts)
    try:
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    os.rename(temporary, final)
    sync_directory(final.parent)


def sync_directory(path: Path) -> None:
    """fsync a folder, so that the names created or renamed in it last."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Batch:
    """Files published together (see the module's text); not thread-safe.

    Where `syncfs` is used, a descriptor of each file system is opened before the batch
    writes its first file there, and both syncs go through it: the kernel reports a
    write-back error to a descriptor only if it was open when the error happened (and
    only once), so a descriptor opened at commit time could be told all is well about
    this batch's own lost pages."""

    def __init__(self) -> None:
        self.moves: list[tuple[Path, Path]] = []
        self.lasts: list[tuple[Path, Path]] = []  # renamed once `moves` are durable
        self._anchors: dict[int, int] = {}  # file system (st_dev) -> a folder's descriptor
        self._folders: set[Path] = set()

    def publish(self, temporary: Path, final: Path, *parts: bytes, last: bool = False) -> None:
        """Write `parts` to `temporary`; `commit` makes it durable and names it `final`
        (`last`: after the other files of the batch are durable under their names)."""
        self._anchor(temporary.parent)
        os.close(_write(temporary, parts))
        (self.lasts if last else self.moves).append((temporary, final))

    def commit(self) -> None:
        """Make every file durable under its final name; blocking."""
        try:
            steps = [step for step in (self.moves, self.lasts) if step]
            if steps:
                self._sync(temporary for temporary, _ in self.moves + self.lasts)
            for step in steps:
                for temporary, final in step:
                    os.rename(temporary, final)
                self._sync(final for _, final in step)
            self.moves, self.lasts = [], []
        finally:
            self._release()

    def mark(self) -> tuple[int, int]:
        """Where the batch is now, for `undo`."""
        return len(self.moves), len(self.lasts)

    def undo(self, mark: tuple[int, int]) -> None:
        """Remove the files published since `mark` (one message's, when its processing
        failed), keeping the others for the commit."""
        moves, lasts = mark
        for temporary, _ in self.moves[moves:] + self.lasts[lasts:]:
            temporary.unlink(missing_ok=True)
        del self.moves[moves:], self.lasts[lasts:]

    def abandon(self) -> None:
        """Remove the files not yet committed."""
        for temporary, _ in self.moves + self.lasts:
            temporary.unlink(missing_ok=True)
        self.moves, self.lasts = [], []
        self._release()

    def _anchor(self, folder: Path) -> None:
        if _syncfs is None or folder in self._folders:
            return
        device = os.stat(folder).st_dev
        if device not in self._anchors:
            self._anchors[device] = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self._folders.add(folder)

    def _sync(self, paths: Iterable[Path]) -> None:
        if _syncfs is None:
            sync(paths)
            return
        for descriptor in self._anchors.values():
            _check(_syncfs(descriptor), descriptor)

    def _release(self) -> None:
        for descriptor in self._anchors.values():
            os.close(descriptor)
        self._anchors.clear()
        self._folders.clear()


def sync(paths: Iterable[Path]) -> None:
    """Make the files `paths` and their names durable: one `syncfs` per file system where
    the system has it, or an fsync of each file and each folder. (A `Batch` syncs
    through descriptors it opened before writing; this opens them now.)"""
    files = list(paths)
    folders = {path.parent for path in files}
    if _syncfs is not None:
        devices: dict[int, Path] = {}
        for folder in folders:
            devices.setdefault(os.stat(folder).st_dev, folder)
        for folder in devices.values():
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _check(_syncfs(descriptor), descriptor, folder)
            finally:
                os.close(descriptor)
        return
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    for folder in folders:
        sync_directory(folder)


def _check(result: int, descriptor: int, folder: Path | None = None) -> None:
    if result != 0:
        error = ctypes.get_errno()
        where = str(folder) if folder is not None else f"file system of descriptor {descriptor}"
        raise OSError(error, os.strerror(error), where)


def _write(path: Path, parts: Iterable[bytes]) -> int:
    """A new file `path` holding `parts`, still open; removed again if writing fails."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(descriptor, view) :]
    except BaseException:
        os.close(descriptor)
        path.unlink(missing_ok=True)
        raise
    return descriptor


def _find_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), where it reports write-back errors (Linux 5.8 and later; before,
    it said nothing of them, and each file is fsynced instead)."""
    if not _linux_at_least(5, 8):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return function


def _linux_at_least(major: int, minor: int) -> bool:
    system = os.uname()
    found = re.match(r"(\d+)\.(\d+)", system.release)
    if system.sysname != "Linux" or found is None:
        return False
    return (int(found[1]), int(found[2])) >= (major, minor)


_syncfs = _find_syncfs()
