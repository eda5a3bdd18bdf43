"""Durable files: written in full, fsynced, renamed into place, and their folder fsynced."""

from __future__ import annotations

import os
from pathlib import Path


def publish(temporary: Path, final: Path, *parts: bytes) -> None:
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
    sync_directory(final.parent)


def sync_directory(path: Path) -> None:
    """fsync a folder, so that the names created or renamed in it last."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
