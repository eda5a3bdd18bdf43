"""An account's Maildir as a POP3 maildrop: locked, listed, read, and changed at QUIT only.

One session at a time: `open` takes an exclusive `flock` on `mailplan-pop3.lock` in the
Maildir (a second session, in this process or another, gets `Locked`). The listing is
`new/` and `cur/` in delivery order; a message's UIDL is its Maildir base name (the part
before `:2,`), so it stays the same across sessions and when a reader such as Dovecot
moves it from `new/` to `cur/` or changes its flags. Because other readers may rename a
file at any time, a message is found again by its base name whenever its path is gone.
Changes wait for `commit` (QUIT): deleted messages are removed, retrieved ones are
marked seen (`:2,S` in `cur/`, as any Maildir reader understands).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailplan.runtime.store import durable
from mailplan.runtime.store.maildir import named_size, network_size

LOCK_FILE = "mailplan-pop3.lock"
RACES = 3  # times a message moved by another reader is looked for again
UIDL_LIMIT = 70  # RFC 1939: at most 70 characters, each 0x21 to 0x7E
_UIDL_SAFE = re.compile(r"[\x21-\x7e]{1,70}")
_LINE_END = re.compile(rb"\r?\n")


class Locked(Exception):
    """Another session holds the maildrop."""


@dataclass(frozen=True, eq=False)  # one object per message and session: compared by identity
class Message:
    name: str  # the Maildir base name (without `:2,FLAGS`)
    uid: str  # what UIDL says: the base name, or its digest when that is no valid UIDL
    path: str  # where it was when the maildrop was opened (no Path: 1,000 cost 2 ms)
    size: int  # octets as POP3 sends it (CRLF line ends)


def base_name(file_name: str) -> str:
    return file_name.split(":", 1)[0]


def uidl(name: str) -> str:
    """The UIDL of a message with this base name (RFC 1939: 1 to 70 of 0x21-0x7E)."""
    if _UIDL_SAFE.fullmatch(name):
        return name
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def network_form(content: bytes, named: int | None = None) -> bytes:
    """A message with CRLF line ends, ending in CRLF: what RETR sends, before dot-stuffing.

    `named` is the size with CRLF line ends that the file's name gives (`,W=`): a file of
    exactly that size that ends in CRLF has no bare LF (each would have made the named
    size larger), so it is sent as it is, without counting its line ends.
    """
    if len(content) == named and content.endswith(b"\r\n"):
        return content
    if content.count(b"\n") != content.count(b"\r\n"):  # bare LFs (rare: we write CRLF)
        content = _LINE_END.sub(b"\r\n", content)
    return content if content.endswith(b"\r\n") or not content else content + b"\r\n"


def _read(path: str | Path, size: int) -> bytes:
    """A whole file whose size is probably `size` or less: one read, and one to see the end
    (no `stat`, no buffered file object: this is most of what a RETR costs)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(descriptor, size + 1)]
        while chunks[-1]:
            chunks.append(os.read(descriptor, 1 << 16))
    finally:
        os.close(descriptor)
    return chunks[0] if len(chunks) == 2 else b"".join(chunks)


def _order(file_name: str) -> tuple[int, str]:
    """Delivery order: Maildir names start with the delivery time in seconds."""
    head = file_name.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, file_name)


class Maildrop:
    """A locked Maildir and the messages it held when it was opened."""

    def __init__(self, folder: Path, lock: int, messages: tuple[Message, ...]) -> None:
        self.folder = folder
        self._lock = lock
        self.messages = messages

    @classmethod
    def open(cls, folder: Path) -> Maildrop:
        """Lock and list the Maildir `folder` (made when missing). Blocking: run in a thread."""
        for sub in ("tmp", "new", "cur"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        lock = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise Locked(str(folder)) from None
        try:
            return cls(folder, lock, _scan(folder))
        except BaseException:
            os.close(lock)
            raise

    def close(self) -> None:
        """Release the lock (without changing anything). Safe to call twice."""
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def read(self, message: Message) -> bytes:
        """The message in network form; FileNotFoundError if no reader has it any more."""
        try:
            return network_form(_read(message.path, message.size), message.size)
        except FileNotFoundError:
            pass
        for path in self._where(message.name):  # only when another reader moved it
            with contextlib.suppress(FileNotFoundError):
                return network_form(_read(path, message.size), message.size)
        raise FileNotFoundError(message.name)

    def commit(self, deleted: set[Message], seen: set[Message]) -> int:
        """Remove `deleted`, mark `seen` as seen; the number of deleted messages not found."""
        missing = 0
        for message in deleted:
            if not self._change(message, Path.unlink):
                missing += 1
        for message in seen - deleted:
            self._change(message, lambda path: _mark_seen(self.folder, path))
        for sub in ("new", "cur"):
            durable.sync_directory(self.folder / sub)
        return missing

    def _change(self, message: Message, change: Callable[[Path], object]) -> bool:
        """Apply `change` to the message's file wherever it is now; False if it is gone.
        Another reader (Dovecot) may rename it between finding it and changing it."""
        for _ in range(RACES):
            path = self._current(message)
            if path is None:
                return False
            try:
                change(path)
            except FileNotFoundError:
                continue
            return True
        return False

    def _current(self, message: Message) -> Path | None:
        if os.path.exists(message.path):
            return Path(message.path)
        return next(iter(self._where(message.name)), None)

    def _where(self, name: str) -> list[Path]:
        """Where a message with this base name is now (another reader may have moved it)."""
        found = []
        for sub in ("cur", "new"):
            with os.scandir(self.folder / sub) as entries:
                found += [Path(e.path) for e in entries if base_name(e.name) == name]
        return found


def _scan(folder: Path) -> tuple[Message, ...]:
    files: list[tuple[str, str]] = []
    for sub in ("new", "cur"):
        with os.scandir(folder / sub) as entries:
            files += [(e.name, e.path) for e in entries if not e.name.startswith(".")]
    messages = []
    seen_names: set[str] = set()
    for file_name, path in sorted(files, key=lambda item: _order(item[0])):
        name = base_name(file_name)
        if name in seen_names:  # a copy left by an interrupted rename: list it once
            continue
        size = named_size(file_name)
        if size is None:  # a file of a writer that does not name sizes: read to count
            try:
                size = network_size(Path(path).read_bytes())
            except (FileNotFoundError, IsADirectoryError):
                continue
        seen_names.add(name)
        messages.append(Message(name, uidl(name), path, size))
    return tuple(messages)


def _mark_seen(folder: Path, path: Path) -> None:
    name, _, info = path.name.partition(":")
    flags = info[2:] if info.startswith("2,") else ""
    if path.parent.name == "cur" and "S" in flags:
        return
    target = folder / "cur" / f"{name}:2,{''.join(sorted(set(flags) | {'S'}))}"
    os.rename(path, target)
