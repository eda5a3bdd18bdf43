"""Durable files: written in full, fsynced, renamed into place, and their folder fsynced.

`publish` does that for one file. A `Batch` does it for many at once, with two syncs
for the whole batch instead of two per file: every file is written under its
temporary name, their file systems are synced (`syncfs`, Linux; elsewhere each file
and folder is fsynced), the files are renamed, and the file systems are synced again.
So a final name never shows a file whose content could still be lost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
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
    """Files published together (see the module's text); not thread-safe."""

    def __init__(self) -> None:
        self.moves: list[tuple[Path, Path]] = []

    def publish(self, temporary: Path, final: Path, *parts: bytes) -> None:
        """Write `parts` to `temporary`; `commit` makes it durable and names it `final`."""
        os.close(_write(temporary, parts))
        self.moves.append((temporary, final))

    def commit(self) -> None:
        """Make every file durable under its final name; blocking."""
        if not self.moves:
            return
        sync(temporary for temporary, _ in self.moves)
        for temporary, final in self.moves:
            os.rename(temporary, final)
        sync(final for _, final in self.moves)
        self.moves = []

    def abandon(self) -> None:
        """Remove the files not yet committed."""
        for temporary, _ in self.moves:
            temporary.unlink(missing_ok=True)
        self.moves = []


def sync(paths: Iterable[Path]) -> None:
    """Make the files `paths` and their names durable: one `syncfs` per file system where
    the system has it, or an fsync of each file and each folder."""
    files = list(paths)
    folders = {path.parent for path in files}
    if _syncfs is not None:
        devices: dict[int, Path] = {}
        for folder in folders:
            devices.setdefault(os.stat(folder).st_dev, folder)
        for folder in devices.values():
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _syncfs(descriptor) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, os.strerror(error), str(folder))
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
    """libc's syncfs(2), when this system has it."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return function


_syncfs = _find_syncfs()
