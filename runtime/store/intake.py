"""The intake journal: where every message received over SMTP becomes durable before its 250.

A message is appended to a journal segment and the segment is fdatasynced; then the
client hears 250, and the message is processed in batches afterwards
(`runtime.queue.processor`): its domain and account rules run, its Maildir copies are
written and what still waits (relay, LMTP, lists, pipes) becomes a queue file.
Sessions that finish DATA while a sync is under way share the next one (group
commit): one fdatasync makes many messages durable.

A segment is `QUEUE/intake/PID-RANDOM.SEQ.log`, owned by the process that holds its
`flock`. It is a run of records, each a head (`MPI1`, kind, the segment's epoch, payload
length, CRC-32 of those and the payload) and a payload. The first record opens the
segment and gives its epoch (random); then come messages (the queue file's format,
`spool.parse`) and the ids of messages that are settled (what their processing made,
Maildir copies and queue files, is durable). A crash in the middle of a write leaves a
torn last record, which recovery ignores: its client never heard 250.

A segment whose messages are all settled, once a newer one is in use, is kept as a
spare (`.spare`) and used again: writing over blocks a file already has needs no
change to the file system's metadata, so its fdatasync is a data write and a cache
flush (no inode, allocation or journal write). Records of the segment's earlier use, beyond what
is written now, carry another epoch, and recovery stops at the first of them. On
start, every segment that no live process holds is recovered: its messages that
were never settled are written to the queue as ordinary queue files, and it is
removed.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mailplan.runtime.base import metrics
from mailplan.runtime.store import durable
from mailplan.runtime.store.spool import BadQueueFile, Envelope, parse

log = logging.getLogger("mailplan.queue")

# magic, kind, epoch, payload length, CRC-32 of kind, epoch, length and payload
HEAD = struct.Struct(">4sBQII")
_FIELDS = struct.Struct(">BQI")
MAGIC = b"MPI1"
OPENED = 0
MESSAGE = 1
SETTLED = 2
SEGMENT_LIMIT = 8 << 20  # bytes; a new segment is started past this size
SPARES = 2  # settled segments kept to be written over
SETTLE_DELAY = 1.0  # seconds a settled mark may wait for a message to go with
_sequence = itertools.count()  # file names: one count for all the journals of a process
_tokens: dict[int, str] = {}


def _process() -> str:
    """This process in file names: its pid and a random part, since two live processes
    in different pid namespaces (containers) sharing a queue can have the same pid."""
    pid = os.getpid()
    if pid not in _tokens:  # a forked worker gets its own
        _tokens[pid] = f"{pid}-{os.urandom(4).hex()}"
    return _tokens[pid]


def record(kind: int, payload: bytes, epoch: int) -> bytes:
    return HEAD.pack(MAGIC, kind, epoch, len(payload), _crc(kind, epoch, payload)) + payload


def _crc(kind: int, epoch: int, payload: bytes) -> int:
    """The CRC-32 of the head's fields and the payload: a damaged kind or length is
    caught too."""
    return zlib.crc32(payload, zlib.crc32(_FIELDS.pack(kind, epoch, len(payload))))


def records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The whole records of a segment's content that belong to its epoch (the first
    record's), up to the first torn, damaged or older one."""
    at = 0
    epoch = None
    while at + HEAD.size <= len(data):
        magic, kind, found, length, crc = HEAD.unpack_from(data, at)
        payload = data[at + HEAD.size : at + HEAD.size + length]
        if magic != MAGIC or len(payload) != length or _crc(kind, found, payload) != crc:
            return
        if epoch is None:
            epoch = found
        elif found != epoch:
            return
        yield kind, payload
        at += HEAD.size + length


def unsettled(data: bytes) -> list[tuple[Envelope, bytes]]:
    """The messages of a segment's content that were never settled, in order."""
    messages: dict[str, tuple[Envelope, bytes]] = {}
    for kind, payload in records(data):
        if kind == MESSAGE:
            try:
                envelope, message = parse(payload)
            except BadQueueFile as exc:  # its CRC matched: written so by a bug, not a crash
                log.error("intake: a journal record that is no message: %s", exc)
                continue
            messages[envelope.id] = (envelope, message)
        elif kind == SETTLED:
            messages.pop(payload.decode("ascii", "replace"), None)
    return list(messages.values())


@dataclass(eq=False)
class Segment:
    path: Path
    descriptor: int
    epoch: int = 0
    size: int = 0  # where the next record goes
    unsettled: int = 0


@dataclass(frozen=True)
class Ticket:
    """A message made durable in a segment; `Intake.settle` it once delivered."""

    queue_id: str
    segment: Segment


@dataclass(eq=False)
class _Pending:
    data: bytes
    segment: Segment | None  # None: a message, for the segment in use
    waiter: asyncio.Future[Ticket] | None
    queue_id: str = ""


@dataclass(eq=False)
class Intake:
    """This process's journal segments; `write` and `settle` are called on the event loop,
    and the files are written by one thread of the intake's own."""

    directory: Path
    limit: int = SEGMENT_LIMIT
    _active: Segment | None = None
    _segments: set[Segment] = field(default_factory=set)
    _spares: list[Segment] = field(default_factory=list)
    _pending: list[_Pending] = field(default_factory=list)
    _flushing: bool = False
    _closing: bool = False
    _overdue: bool = False  # settled marks have waited `SETTLE_DELAY`
    _timer: asyncio.TimerHandle | None = None
    _idle: asyncio.Event | None = None
    _thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="intake")
    )

    def recover(self, store: Callable[[Envelope, bytes], bool | None]) -> int:
        """Hand every unsettled message of the segments no live process holds to `store`
        (which must make it durable, or return False when it is already: its queue file
        exists), then remove those segments; returns how many were stored. Blocking."""
        self.directory.mkdir(parents=True, exist_ok=True)
        count = 0
        for path in sorted(self.directory.glob("*.*")):
            if path.suffix not in (".log", ".new", ".spare"):
                continue
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # recovered by another worker meanwhile
            try:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process writes it
                if not path.exists():
                    continue
                with os.fdopen(os.dup(descriptor), "rb") as file:
                    data = file.read()
                left = unsettled(data) if path.suffix == ".log" else []
                try:
                    stored = sum(
                        store(envelope, message) is not False for envelope, message in left
                    )
                except OSError as exc:  # kept for the next start; this one goes on
                    log.error("intake: cannot queue the messages of %s: %s", path.name, exc)
                    continue
                if stored:
                    log.info("intake: %d message(s) of %s queued again", stored, path.name)
                if len(left) > stored:
                    log.info(
                        "intake: %d message(s) of %s were queued already",
                        len(left) - stored, path.name,
                    )  # fmt: skip
                path.unlink()
                count += stored
            finally:
                os.close(descriptor)
        durable.sync_directory(self.directory)
        return count

    def open(self) -> None:
        """Start this process's first segment. Blocking."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._active = self._segment()

    async def write(self, envelope: Envelope, message: bytes) -> Ticket:
        """Append the message; returns once it is on disk (and fails if it could not be)."""
        return await self.append(envelope.id, envelope.header() + message)

    async def append(self, queue_id: str, payload: bytes) -> Ticket:
        """`write`, of a message already in the queue file's form (`spool.parse` reads it)."""
        waiter: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        # its record's head is made when its segment is known
        self._pending.append(_Pending(payload, None, waiter, queue_id))
        self._kick()
        return await waiter

    def settle(self, ticket: Ticket) -> None:
        """Record that a message is delivered durably elsewhere. The mark goes with the
        next message's write, or within `SETTLE_DELAY` (it need not be durable: a lost
        one only costs a second copy after a crash)."""
        data = record(SETTLED, ticket.queue_id.encode("ascii"), ticket.segment.epoch)
        self._pending.append(_Pending(data, ticket.segment, None, ticket.queue_id))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._settle_due)

    def write_marks(self) -> None:
        """Write the settled marks now rather than with the next message (a batch's marks
        at once: after a crash of the process, fewer messages are delivered twice)."""
        self._overdue = True
        self._kick()

    async def close(self) -> None:
        """Write what is pending; remove the segments whose messages are all settled."""
        self._closing = True
        while self._pending or self._flushing:
            self._idle = asyncio.Event()
            self._kick()
            await self._idle.wait()
        if self._timer is not None:
            self._timer.cancel()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown()

    def _settle_due(self) -> None:
        self._timer = None
        self._overdue = True
        self._kick()

    def _kick(self) -> None:
        """Start writing what is pending, unless a write is under way (its end kicks again);
        settled marks alone wait to go with a message, unless overdue or closing."""
        if self._flushing:
            return
        force = self._closing or self._overdue
        if not self._pending or not (force or any(p.segment is None for p in self._pending)):
            if self._idle is not None and not self._pending:
                self._idle.set()
            return
        self._flushing = True
        self._overdue = False
        batch, self._pending = self._pending, []
        done = asyncio.get_running_loop().run_in_executor(self._thread, self._flush, batch)
        done.add_done_callback(lambda future: self._flushed(batch, future))

    def _flushed(self, batch: list[_Pending], future: asyncio.Future[Segment]) -> None:
        self._flushing = False
        error = future.exception()
        for pending in batch:
            if pending.waiter is None or pending.waiter.done():
                continue
            if error is not None:
                pending.waiter.set_exception(error)
            else:
                pending.waiter.set_result(Ticket(pending.queue_id, future.result()))
        self._kick()

    def _flush(self, batch: list[_Pending]) -> Segment:
        """In the intake thread: settled marks to their messages' segments (unsynced), then
        the messages to the segment in use and one fdatasync. Returns that segment."""
        for pending in batch:
            if pending.segment is not None:
                self._mark(pending.segment, pending)
        active = self._active
        assert active is not None, "Intake.open first"
        messages = [record(MESSAGE, p.data, active.epoch) for p in batch if p.segment is None]
        if not messages:
            return active
        data = b"".join(messages)
        try:
            _write(active, data)
            with metrics.meters().journal_sync.time():
                os.fdatasync(active.descriptor)
        except OSError:
            self._cut(active)  # its tail is unknown: continue in a fresh segment
            raise
        active.size += len(data)
        active.unsettled += len(messages)
        if active.size >= self.limit:
            try:
                self._active = self._segment()
            except OSError as exc:  # the messages are durable: only the next segment waits
                log.error("intake: cannot start a new segment: %s", exc)
            else:
                if active.unsettled == 0:
                    self._retire(active)
        return active

    def _mark(self, segment: Segment, pending: _Pending) -> None:
        """Settle one message of `segment`; the segment goes when its last one is."""
        segment.unsettled -= 1
        if segment.unsettled == 0 and segment is not self._active:
            self._retire(segment)
            return
        try:
            _write(segment, pending.data)
        except OSError as exc:  # only costs a second copy after a crash
            log.warning("intake: cannot mark %s settled: %s", pending.queue_id, exc)
            self._cut(segment)
            return
        segment.size += len(pending.data)

    def _segment(self) -> Segment:
        """The next segment: a spare written over, or a new file; its opening record is
        durable before its name is one that recovery reads."""
        while self._spares:
            spare = self._spares.pop()
            try:
                return self._reopen(spare)
            except OSError as exc:
                log.warning("intake: cannot use %s again: %s", spare.path.name, exc)
                self._remove(spare)
        for _ in range(100):
            fresh = self._name(".new")
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
                descriptor = os.open(fresh, flags, 0o600)
            except FileExistsError:
                continue
            segment = Segment(fresh, descriptor)
            self._segments.add(segment)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)  # before recovery could take it
                return self._reopen(segment)
            except FileNotFoundError:  # another process's recovery took it
                self._remove(segment)
            except OSError:
                self._remove(segment)
                raise
        raise OSError(f"cannot make a journal segment in {self.directory}")

    def _reopen(self, segment: Segment) -> Segment:
        """Open `segment` for a new epoch under a `.log` name."""
        segment.epoch = int.from_bytes(os.urandom(8), "big")
        segment.size = segment.unsettled = 0
        opened = record(OPENED, b"", segment.epoch)
        _write(segment, opened)
        os.fdatasync(segment.descriptor)
        segment.size = len(opened)
        path = self._name(".log")
        while path.exists():  # a dead process's, with the same pid: recovered at start
            path = self._name(".log")
        os.rename(segment.path, path)
        segment.path = path
        durable.sync_directory(self.directory)
        return segment

    def _name(self, suffix: str) -> Path:
        return self.directory / f"{_process()}.{next(_sequence)}{suffix}"

    def _retire(self, segment: Segment) -> None:
        """A segment whose messages are all settled: kept as a spare, or removed."""
        if len(self._spares) >= SPARES:
            self._remove(segment)
            return
        spare = self._name(".spare")
        try:
            os.rename(segment.path, spare)
        except OSError:
            self._remove(segment)
            return
        segment.path = spare
        self._spares.append(segment)

    def _cut(self, segment: Segment) -> None:
        """After a failed write: cut the segment back to its last whole record, so that
        what is appended later is not hidden behind a torn one; the segment in use is
        left for a fresh one (a failed sync leaves its state unknown)."""
        try:
            os.ftruncate(segment.descriptor, segment.size)
        except OSError as exc:
            log.error("intake: cannot cut %s back after a failed write: %s", segment.path, exc)
        if segment is not self._active:
            return
        try:
            self._active = self._segment()
        except OSError as exc:
            log.error("intake: cannot start a new segment: %s", exc)
            return
        if segment.unsettled == 0:
            self._retire(segment)

    def _remove(self, segment: Segment) -> None:
        try:
            segment.path.unlink(missing_ok=True)  # before the lock goes with the descriptor
        except OSError as exc:  # left for the next start's recovery, which finds it settled
            log.warning("intake: cannot remove %s: %s", segment.path.name, exc)
        os.close(segment.descriptor)
        self._segments.discard(segment)

    def _close(self) -> None:
        self._spares = []
        for segment in list(self._segments):
            if segment.unsettled == 0:
                self._remove(segment)
            else:  # recovered at the next start
                log.warning("intake: %s keeps %d unsettled", segment.path.name, segment.unsettled)
                os.close(segment.descriptor)
                self._segments.discard(segment)
        self._active = None


def _write(segment: Segment, data: bytes) -> None:
    """Write `data` where the segment's next record goes (`size` is not moved)."""
    view = memoryview(data)
    at = segment.size
    while view:
        written = os.pwrite(segment.descriptor, view, at)
        view, at = view[written:], at + written
