"""The queue directory: messages written durably before the client hears 250.

A message arrives into `Queue/ID.tmp`; once complete it is fsynced, renamed to
`ID.msg`, and the directory is fsynced; only then is it acknowledged. A queue file
is the envelope (text lines), a blank line, and the message as received.
Recipients that are done are appended, one line each, to `ID.done` (fsynced); when
every recipient is done the files go. Temporary failures go to `ID.tries`, the
retry journal (`runtime.decide.retry`). On start every `.msg` is queued again; a
file that cannot be read is moved aside as `.bad`. docs/running.md shows the format.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailplan.runtime.decide import retry
from mailplan.runtime.store import durable

log = logging.getLogger("mailplan.queue")

MAGIC = b"MAILPLAN-QUEUE 1\n"
_counter = itertools.count()


class BadQueueFile(Exception):
    """A queue file that does not hold an envelope and a message."""


@dataclass(frozen=True)
class Envelope:
    """Everything the server knew when it accepted a message."""

    id: str
    arrived: float
    plan: str
    listener: str
    client: str
    helo: str
    tls: str
    auth: str
    sender: str
    recipients: tuple[str, ...]
    relayable: frozenset[str] = field(default_factory=frozenset)

    def header(self) -> bytes:
        lines = [
            f"Id: {self.id}",
            f"Arrived: {self.arrived:.6f}",
            f"Plan: {self.plan}",
            f"Listener: {self.listener}",
            f"Client: {self.client}",
            f"Helo: {self.helo}",
            f"Tls: {self.tls}",
            f"Auth: {self.auth}",
            f"From: <{self.sender}>",
        ]
        for recipient in self.recipients:
            mark = " relay" if recipient in self.relayable else ""
            lines.append(f"To: <{recipient}>{mark}")
        text = "\n".join(lines) + "\n\n"
        return MAGIC + text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Share:
    """Which queue ids a worker process owns: those whose CRC-32 is `index` modulo `of`.

    With several workers (`mailplan serve --workers N`) each makes only ids it owns and
    recovers only those at start, so a message is never worked on by two processes,
    and a worker that is started again finds exactly what its predecessor left.
    """

    index: int = 0
    of: int = 1

    def owns(self, queue_id: str) -> bool:
        return self.of == 1 or zlib.crc32(queue_id.encode()) % self.of == self.index


_share = Share()


def work_as(share: Share) -> None:
    """Make this process a worker that owns `share` of the queue ids."""
    global _share
    _share = share


def owns(queue_id: str) -> bool:
    """Whether this worker process owns `queue_id` (`work_as`)."""
    return _share.owns(queue_id)


def new_id() -> str:
    """A queue id: sortable by arrival, unique within this process and across restarts,
    and owned by this worker process."""
    while True:
        now = time.time_ns() // 1000
        queue_id = f"{now:x}{os.getpid() % 0x10000:04x}{next(_counter) % 0x10000:04x}"
        if _share.owns(queue_id):
            return queue_id


def parse(data: bytes) -> tuple[Envelope, bytes]:
    """The envelope and the message of a queue file's content."""
    if not data.startswith(MAGIC):
        raise BadQueueFile("not a mailplan queue file")
    end = data.find(b"\n\n", len(MAGIC))
    if end < 0:
        raise BadQueueFile("the envelope does not end")
    fields: dict[str, str] = {}
    recipients: list[str] = []
    relayable: set[str] = set()
    for line in data[len(MAGIC) : end].decode("utf-8", "surrogateescape").split("\n"):
        key, sep, value = line.partition(": ")
        if not sep:
            raise BadQueueFile(f"bad envelope line: {line!r}")
        if key == "To":
            relay = value.endswith("> relay")
            address = value.removesuffix(" relay")
            if not (address.startswith("<") and address.endswith(">")):
                raise BadQueueFile(f"bad recipient line: {line!r}")
            recipients.append(address[1:-1])
            if relay:
                relayable.add(address[1:-1])
        else:
            fields[key] = value
    try:
        envelope = Envelope(
            id=fields["Id"],
            arrived=float(fields["Arrived"]),
            plan=fields["Plan"],
            listener=fields["Listener"],
            client=fields["Client"],
            helo=fields["Helo"],
            tls=fields["Tls"],
            auth=fields["Auth"],
            sender=fields["From"][1:-1],
            recipients=tuple(recipients),
            relayable=frozenset(relayable),
        )
    except (KeyError, ValueError) as exc:
        raise BadQueueFile(f"envelope field missing or bad: {exc}") from None
    if not recipients:
        raise BadQueueFile("the envelope has no recipient")
    return envelope, data[end + 2 :]


class Spool:
    """The queue directory. Its methods block (they fsync): call them off the event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def store(self, envelope: Envelope, message: bytes, *, again: bool = False) -> None:
        """Write a message durably: when this returns, it survives a crash. `again`: an
        earlier process may have died writing it (recovery), so its `.tmp` may be left."""
        temporary = self.directory / f"{envelope.id}.tmp"
        final = self.directory / f"{envelope.id}.msg"
        if again:
            temporary.unlink(missing_ok=True)
        durable.publish(temporary, final, envelope.header(), message)

    def stage(self, envelope: Envelope, message: bytes, batch: durable.Batch) -> None:
        """Write a message's queue file as part of `batch`: durable once the batch is
        committed, and named only after the batch's other files are (`last`), so a queue
        file found after a crash means its message's Maildir copies are in place too."""
        temporary = self.directory / f"{envelope.id}.tmp"
        final = self.directory / f"{envelope.id}.msg"
        batch.publish(temporary, final, envelope.header(), message, last=True)

    def done(self, queue_id: str, recipients: list[str]) -> None:
        """Record recipients as done (delivered, or given up) for good."""
        path = self.directory / f"{queue_id}.done"
        text = "".join(f"{recipient}\n" for recipient in recipients)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(descriptor, text.encode("utf-8", "surrogateescape"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def finished(self, queue_id: str) -> set[str]:
        path = self.directory / f"{queue_id}.done"
        try:
            text = path.read_bytes().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            return set()
        return {line for line in text.split("\n") if line}

    def journal(self, queue_id: str, lines: str) -> None:
        """Append events to the message's retry journal (`runtime.decide.retry`); not fsynced."""
        with (self.directory / f"{queue_id}.tries").open("a", encoding="utf-8") as journal:
            journal.write(lines)

    def history(self, queue_id: str) -> retry.History:
        try:
            text = (self.directory / f"{queue_id}.tries").read_text("utf-8", "replace")
        except FileNotFoundError:
            return retry.History()
        return retry.parse(text)

    def remove(self, queue_id: str) -> None:
        """Forget a message whose recipients are all done.

        Not synced: should a crash undo the removal, the message is delivered again,
        which is the safe way to fail.
        """
        (self.directory / f"{queue_id}.msg").unlink(missing_ok=True)
        (self.directory / f"{queue_id}.done").unlink(missing_ok=True)
        (self.directory / f"{queue_id}.tries").unlink(missing_ok=True)
        (self.directory / f"{queue_id}.hold").unlink(missing_ok=True)

    # -- hold, release, delete (`mailplan queue`, Postfix's postsuper -h/-H/-d) -----------

    def hold(self, queue_id: str) -> bool:
        """Put a queued message on hold: an `ID.hold` file, synced, that lasts until
        `release` (across restarts). False when there is no such message."""
        if not self.exists(queue_id):
            return False
        mark = self.directory / f"{queue_id}.hold"
        descriptor = os.open(mark, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(descriptor)
        durable.sync_directory(self.directory)
        if not self.exists(queue_id):  # finished meanwhile: no mark left behind
            mark.unlink(missing_ok=True)
            return False
        return True

    def release(self, queue_id: str) -> bool:
        """Take a message off hold; False when it was not on hold."""
        try:
            (self.directory / f"{queue_id}.hold").unlink()
        except FileNotFoundError:
            return False
        durable.sync_directory(self.directory)
        return True

    def is_held(self, queue_id: str) -> bool:
        return (self.directory / f"{queue_id}.hold").exists()

    def delete(self, queue_id: str) -> bool:
        """Remove a queued message, with no bounce; False when there is no such message."""
        if not self.exists(queue_id):
            return False
        self.remove(queue_id)
        durable.sync_directory(self.directory)
        return True

    def exists(self, queue_id: str) -> bool:
        return (self.directory / f"{queue_id}.msg").exists()

    def load(self, queue_id: str) -> tuple[Envelope, bytes]:
        return parse((self.directory / f"{queue_id}.msg").read_bytes())

    def ids(self) -> Iterator[str]:
        """The ids of the queued messages this worker owns, oldest first; its leftover
        `.tmp` files are removed (another worker's may be being written right now)."""
        for path in sorted(self.directory.glob("*.tmp")):
            if _share.owns(path.stem):
                log.info("removing %s: its message was never acknowledged", path.name)
                path.unlink(missing_ok=True)
        for path in sorted(self.directory.glob("*.msg")):
            if _share.owns(path.stem):
                yield path.stem

    def set_aside(self, queue_id: str, reason: str, why: str = "is unreadable") -> None:
        """Move a queue file that cannot be used out of the way as `.bad`, keeping its
        bytes (`why`: what is wrong with it, `reason`: the details)."""
        source = self.directory / f"{queue_id}.msg"
        source.rename(source.with_suffix(".bad"))
        durable.sync_directory(self.directory)
        log.error("%s.msg %s (%s): moved aside as %s.bad", queue_id, why, reason, queue_id)


def held(spool: Spool) -> list[str]:
    """The ids of the messages on hold, oldest first (marks left by finished ones are not)."""
    return sorted(p.stem for p in spool.directory.glob("*.hold") if spool.exists(p.stem))
