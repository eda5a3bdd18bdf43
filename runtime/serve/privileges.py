"""Whom the server runs as: the user it becomes once its ports are bound, the folders
it writes made for that user, and a check, as that user, of what it writes and reads."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailplan.runtime.serve.startup import StartupError, why


@dataclass(frozen=True)
class Identity:
    """Whom the server runs as once its sockets are bound."""

    user: str
    uid: int
    gid: int


def identity(user: str | None, group: str | None, allow_root: bool) -> Identity | None:
    """Whom to become (None: stay who we are), or why this cannot be."""
    root = os.geteuid() == 0
    if user is None:
        if root and not allow_root:
            raise StartupError(
                "refusing to serve as root: give --user NAME (or server.user in site.yaml) "
                "to serve as that user once the ports are bound, or --allow-root"
            )
        if group is not None:
            raise StartupError("--group needs --user (or server.user in site.yaml)")
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"no such user: {user} (create it: adduser --system {user})") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StartupError(f"no such group: {group}") from None
    if entry.pw_uid == 0:
        raise StartupError(f"--user {user} is root: name an unprivileged user")
    if not root:
        if entry.pw_uid == os.geteuid() and gid == os.getegid():
            return None  # already that user
        raise StartupError(
            f"--user {user} needs the server to start as root; it runs as uid {os.geteuid()}"
        )
    return Identity(entry.pw_name, entry.pw_uid, gid)


def prepare_directories(folders: Iterable[Path], who: Identity | None) -> None:
    """Create the folders the server writes (0700), owned by whom it serves as; a folder
    that exists and belongs to someone else is the admin's to give (named, not changed)."""
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise StartupError(f"{folder} is not a directory")
        try:
            made = _made(folder)
            if made and who is not None:
                os.chown(folder, who.uid, who.gid)
            elif who is not None and folder.stat().st_uid != who.uid:
                raise StartupError(
                    f"{folder} belongs to uid {folder.stat().st_uid}, not to {who.user}, "
                    f"who serves: chown -R {who.user}: {folder}"
                )
        except OSError as exc:
            raise StartupError(f"cannot create {folder}: {why(exc)}") from exc


def _made(folder: Path) -> bool:
    """Make `folder` (0700) unless it is there; whether this call made it (two servers
    started at once both get here before one of them has the queue's lock)."""
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise StartupError(f"{folder} is not a directory") from None
        return False
    return True


def become(who: Identity) -> None:
    """Give up root for good: groups, then group, then user."""
    os.initgroups(who.user, who.gid)
    os.setgid(who.gid)
    os.setuid(who.uid)
    with contextlib.suppress(PermissionError):
        os.setuid(0)
        raise StartupError("root could be taken back after dropping it; refusing to serve")


def check_writable(folders: Iterable[Path], readable: Iterable[Path]) -> None:
    """As the serving user: the folders it writes are writable, and what it reads later
    (the Python installation, the site for reloads) is readable."""
    for folder in folders:
        if _read_only(folder):
            raise StartupError(f"{folder} is on a read-only file system")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StartupError(
                f"{folder} is not writable by uid {os.geteuid()}, who serves; fix its owner or mode"
            )
    for path in (Path(os.__file__).parent, *readable):  # the standard library first
        try:
            mode = os.R_OK | os.X_OK if path.is_dir() else os.R_OK
        except OSError:
            mode = os.R_OK | os.X_OK
        if not os.access(path, mode):
            raise StartupError(
                f"{path} is not readable by uid {os.geteuid()}, who serves; "
                "install where that user can read (docs/deploy.md)"
            )


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
