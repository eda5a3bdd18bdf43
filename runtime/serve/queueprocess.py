"""The queue in a process of its own: `serve` accepts mail in one process and processes
and delivers it in another, so that one server uses two cores.

One interpreter runs on one core at a time. The front (the process `serve` started)
runs the listeners and the SMTP and POP3 sessions, and makes each message durable in
its intake journal before the 250 (`runtime.store.intake`); then it hands the message
to the back, this module's `main`, over a socket pair. The back runs the queue
(`runtime.queue.processor`, `runtime.delivery.scheduler`): domain and account rules,
Maildir copies, queue files, relay, LMTP, lists, retries, DSNs, TLS reports. Once a
batch's files are durable it tells the front which messages are settled, and the
front writes their marks in the journal it owns. Postfix splits its work in the same
place: smtpd and cleanup accept, qmgr and its delivery agents deliver.

What the front holds until the back settles it is the backlog that slows accepting
(`processor.Backlog`). The back is a fresh interpreter (`python -m`, not a fork of a
process with threads); it gets the plan from the front, at start and at each reload
before any session uses it, and processes a message by the plan it was accepted under
(it keeps the routers of the last two). If the back dies, the front starts another
after a second and hands it again every message not settled: one whose batch was
committed (it has a queue file) is settled without being processed twice. The back
dies with the front (PR_SET_PDEATHSIG): killing the server kills both, and the
journal keeps what was not settled for the next start.

The wire: frames of a 4-byte length, a kind byte and a payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import uvloop

from mailplan.plan import codec, trusted
from mailplan.plan.model import Plan
from mailplan.runtime.base import metrics
from mailplan.runtime.decide.router import Router
from mailplan.runtime.delivery import pipe
from mailplan.runtime.delivery.scheduler import Delivery, Remote
from mailplan.runtime.queue.arrival import Arrival
from mailplan.runtime.queue.local import execute
from mailplan.runtime.queue.processor import Backlog, Processor
from mailplan.runtime.rules import enact
from mailplan.runtime.serve import logs
from mailplan.runtime.store.intake import Intake, Ticket
from mailplan.runtime.store.spool import BadQueueFile, Share, Spool, parse, work_as

log = logging.getLogger("mailplan.queue")

FRAME = struct.Struct(">IB")
SETUP = 1  # front -> back: JSON, what the back needs of the front's options
PLAN = 2  # front -> back: the plan, canonical JSON
MESSAGE = 3  # front -> back: a message just accepted (a queue file's content)
AGAIN = 4  # front -> back: a message handed to a back that died, perhaps processed
FLUSH = 5  # front -> back: `mailplan queue flush` (SIGUSR1)
SETTLED = 6  # back -> front: ids, one per line, whose processing is durable
READY = 7  # back -> front: the queue runs (the plan is loaded, the spool read)
ALIVE = 8  # back -> front: its event loop runs (every `Setup.alive` seconds)
RESTART_DELAY = 1.0  # seconds before a back that died is started again, doubled while
RESTART_LIMIT = 60.0  # it dies within STEADY seconds of its start, up to this
STEADY = 60.0
# seconds a stop waits for the back to process what it has (`processor.STOP_WAIT`), end
# its deliveries and exit, before it is killed
EXIT_WAIT = 45.0
# seconds a back may say nothing (it says ALIVE eight times in them) before it is taken
# for hung (stopped, or its event loop stuck), killed and started again; and seconds it
# may take to be ready
PATIENCE = 120.0
KEEP_PLANS = 2  # plans whose routers the back keeps (a big plan costs memory), by digest
PR_SET_PDEATHSIG = 1


def frame(kind: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(len(payload), kind) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next frame, or None at the end of the stream."""
    try:
        length, kind = FRAME.unpack(await reader.readexactly(FRAME.size))
        return kind, await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


@dataclass(frozen=True)
class Setup:
    """What the back is told of the front's options, as JSON. The queue and mail folders
    are the front's, as it started: a reload does not move them (`serve` takes a new
    `queue:` at its next start), so the back started again later uses them too."""

    queue: str
    mail: str
    remote: dict[str, Any]
    share: tuple[int, int]
    log: tuple[str, str]  # shape and level
    alive: float = PATIENCE / 8  # seconds between the back's ALIVE frames

    @classmethod
    def of(
        cls, queue: Path, mail: Path, remote: Remote, share: Share, log: tuple[str, str]
    ) -> Setup:
        remote_fields = asdict(remote) | {"root": str(remote.root)}
        return cls(str(queue), str(mail), remote_fields, (share.index, share.of), log)

    @classmethod
    def loads(cls, data: bytes) -> Setup:
        raw = json.loads(data)
        index, of = raw["share"]
        shape, level = raw["log"]
        return cls(
            raw["queue"], raw["mail"], raw["remote"], (index, of), (shape, level), raw["alive"]
        )

    def remote_options(self) -> Remote:
        return Remote(**(self.remote | {"root": Path(self.remote["root"])}))


@dataclass(eq=False)
class _Handed:
    """A message the back has, until it says it is settled."""

    ticket: Ticket
    payload: bytes
    size: int


@dataclass(eq=False)
class Feed:
    """The front's side: what sessions call to accept a message (as `Processor`'s
    `admit`, `accept` and `run`), and the back process that processes it."""

    intake: Intake
    setup: Setup
    plan: Plan
    backlog: Backlog = field(default_factory=Backlog)
    patience: float = PATIENCE
    stopping: bool = False
    _handed: dict[str, _Handed] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = None
    _writer: asyncio.StreamWriter | None = None
    _watch: asyncio.Task[None] | None = None
    _started: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _commands: set[asyncio.Task[None]] = field(default_factory=set)
    _heard: float = 0.0  # when the running back last said something (or was started)
    _ready: bool = False  # whether the running back said READY

    async def start(self) -> None:
        """Start the back; returns once it runs the queue (or could not be started)."""
        self._watch = asyncio.create_task(self._keep())
        await self._started.wait()

    async def admit(self) -> None:
        await self.backlog.admit()

    async def accept(self, arrival: Arrival) -> None:
        """Make a message durable before its 250, then hand it to the back."""
        await asyncio.shield(self._journal(arrival))

    async def _journal(self, arrival: Arrival) -> None:
        envelope = arrival.envelope
        payload = envelope.header() + arrival.message  # one copy, for the journal and the back
        ticket = await self.intake.append(envelope.id, payload)
        self._handed[envelope.id] = _Handed(ticket, payload, len(payload))
        self.backlog.add(len(payload))
        self._send(MESSAGE, payload)

    def run(self, execution: enact.Execution, handover: pipe.Handover) -> None:
        """Start the program of a server rule's Execute action (a stop waits for it)."""
        task = asyncio.create_task(execute(execution, handover))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def reload(self, plan: Plan) -> None:
        """Give the back the plan a reload made current (unless a later reload did)."""
        self.plan = plan
        data = await asyncio.to_thread(_plan_bytes, plan)
        if plan is self.plan:
            self._send(PLAN, data)

    def flush(self) -> None:
        """`mailplan queue flush`: the back reads the retry journals again."""
        self._send(FLUSH)

    def _send(self, kind: int, payload: bytes = b"") -> None:
        """To the back, if one runs (else it is handed again to the next, or is a plan
        or a flush that the next one does not need)."""
        if self._writer is not None and not self._writer.is_closing() and not self.stopping:
            self._writer.writelines((FRAME.pack(len(payload), kind), payload))  # no copy made

    async def _keep(self) -> None:
        """Run the back, and start it again when it dies, until the front stops."""
        delay = RESTART_DELAY
        while True:
            started = time.monotonic()
            try:
                ended = await self._serve_back()
            except OSError as exc:  # cannot start one (no memory, no pids)
                ended = f"could not be started: {exc}"
            except Exception as exc:  # a bug: said with its traceback, and tried again
                log.exception("the queue process failed")
                ended = f"failed: {exc}"
            self._started.set()  # a front whose back cannot start still accepts to the journal
            if self.stopping:
                return
            if time.monotonic() - started >= STEADY:
                delay = RESTART_DELAY  # it ran a while: not one that dies as it starts
            log.error("the queue process %s; started again in %.0f s", ended, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, RESTART_LIMIT)

    async def _serve_back(self) -> str:
        """Start a back, hand it the plan and what is not settled, then read what it
        settles until it ends; returns how it ended."""
        front, back = socket.socketpair()
        try:
            process = self._process = subprocess.Popen(
                # -P: not the working folder first on the path, only the installed code
                [sys.executable, "-P", "-m", __name__, str(back.fileno()), str(os.getpid())],
                pass_fds=[back.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            front.close()
            raise
        finally:
            back.close()
        writer = None
        self._heard, self._ready = time.monotonic(), False
        watchdog = asyncio.create_task(self._watch_over(process))
        try:
            reader, writer = await asyncio.open_connection(sock=front, limit=1 << 20)
            plan = None
            while plan is not self.plan:  # the latest, if a reload came meanwhile
                plan = self.plan
                data = await asyncio.to_thread(_plan_bytes, plan)
            # from here to `_writer`, no await: a message accepted meanwhile is either
            # handed again below or sent by `_journal` after the plan
            setup = asdict(replace(self.setup, alive=self.patience / 8))
            writer.write(frame(SETUP, json.dumps(setup).encode()) + frame(PLAN, data))
            for handed in self._handed.values():
                writer.writelines((FRAME.pack(len(handed.payload), AGAIN), handed.payload))
            self._writer = writer
            if self.stopping:  # a stop came while it started: it settles what it got, and ends
                writer.write_eof()
            log.info("the queue process (pid %d) started", process.pid)
            while (found := await read_frame(reader)) is not None:
                self._heard = time.monotonic()
                kind, payload = found
                if kind == SETTLED:
                    self._settle(payload.decode("ascii").split("\n"))
                elif kind == READY:
                    self._ready = True
                    self._started.set()
        finally:
            watchdog.cancel()
            if writer is not None:
                writer.close()
            else:
                front.close()
            status = await asyncio.to_thread(_ended, process, None if self.stopping else 5.0)
            metrics.forget(process.pid)
        return f"ended (exit status {status})" if status >= 0 else f"was killed (signal {-status})"

    async def _watch_over(self, process: subprocess.Popen[bytes]) -> None:
        """Kill a back that says nothing (not even ALIVE) for `patience` seconds, or is
        not ready after them: `_keep` starts another and hands it what is not settled.
        A front that was itself held up (stopped, its loop blocked) does not count the
        time it was away: the back's frames waited for it in the socket."""
        started = time.monotonic()
        tick = min(self.patience / 4, 10.0)
        while True:
            before = time.monotonic()
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - before > 2 * tick:  # this loop was away
                self._heard = max(self._heard, now)
                continue
            silent = now - self._heard
            late = not self._ready and now - started > self.patience
            if self.stopping or (silent < self.patience and not late):
                continue
            if late:
                log.error(
                    "the queue process (pid %d) was not ready %.0f s after its start: killed",
                    process.pid, now - started,
                )  # fmt: skip
            else:
                log.error(
                    "the queue process (pid %d) said nothing for %.0f s, %d message(s) waiting:"
                    " killed", process.pid, silent, len(self._handed),
                )  # fmt: skip
            process.kill()
            return

    def _settle(self, ids: list[str]) -> None:
        count = size = 0
        for queue_id in ids:
            handed = self._handed.pop(queue_id, None)
            if handed is None:
                continue
            self.intake.settle(handed.ticket)
            count, size = count + 1, size + handed.size
        self.intake.write_marks()
        self.backlog.remove(count, size)

    async def stop(self) -> None:
        """Tell the back that nothing more comes: it processes what it has (at most
        `processor.STOP_WAIT`), saying what is settled, ends its deliveries and exits;
        killed past `EXIT_WAIT`. What is not settled stays in the journal."""
        self.stopping = True
        self._stop.set()
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write_eof()  # half-closed: its SETTLED frames still come back
        watch = self._watch
        if watch is not None:
            try:
                await asyncio.wait_for(asyncio.shield(watch), EXIT_WAIT)
            except TimeoutError:
                log.error("the queue process did not stop in %.0f s: killed", EXIT_WAIT)
                if self._process is not None:
                    self._process.kill()
                await asyncio.gather(watch, return_exceptions=True)
        if self.backlog.count:
            log.warning("stopping with %d message(s) in the intake journal", self.backlog.count)
        await asyncio.gather(*self._commands, return_exceptions=True)


def _ended(process: subprocess.Popen[bytes], patience: float | None) -> int:
    """The exit status of a back whose input is gone: killed if it does not end within
    `patience` seconds (never two backs on one queue)."""
    try:
        return process.wait(patience)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _plan_bytes(plan: Plan) -> bytes:
    return codec.dumps(plan).encode()


class _Back:
    """The back's side: the queue, fed by the front."""

    def __init__(self, setup: Setup, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.setup = setup
        self.reader, self.writer = reader, writer
        self.remote = setup.remote_options()
        self.digest = ""
        self.router: Router | None = None
        # the routers of the latest plans, by digest: a message is processed by the plan
        # it was accepted under (a session keeps the plan it started with), if still here
        self.routers: dict[str, Router] = {}
        self.processor: Processor | None = None
        self.delivery: Delivery | None = None

    def _current(self) -> Router:
        assert self.router is not None
        return self.router

    async def run(self) -> None:
        beating = asyncio.create_task(self._beat())
        try:
            while (found := await read_frame(self.reader)) is not None:
                kind, payload = found
                if kind == MESSAGE:
                    self._process(payload, again=False)
                elif kind == AGAIN:
                    self._process(payload, again=True)
                elif kind == PLAN:
                    await self._plan(payload)
                elif kind == FLUSH and self.delivery is not None:
                    self.delivery.reschedule()
        finally:
            beating.cancel()
        await self._stop()

    async def _beat(self) -> None:
        """ALIVE every `Setup.alive` seconds: the front's watchdog hears that this loop runs."""
        while not self.writer.is_closing():
            await asyncio.sleep(self.setup.alive)
            if not self.writer.is_closing():
                self.writer.write(frame(ALIVE))

    async def _plan(self, payload: bytes) -> None:
        plan = await asyncio.to_thread(codec.loads, payload.decode(), "plan")
        router = await asyncio.to_thread(_router, plan)
        self.digest, self.router = codec.digest(plan), router
        self.routers.pop(self.digest, None)
        self.routers[self.digest] = router
        while len(self.routers) > KEEP_PLANS:
            del self.routers[next(iter(self.routers))]
        log.info("queue process on plan %s", self.digest)
        metrics.meters().reload_success.set(1)  # its minimum over the processes is shown
        if self.delivery is not None:
            self.delivery.reschedule()  # a new retry schedule applies to what waits already
            return
        spool = Spool(Path(self.setup.queue))
        self.delivery = Delivery(spool, self._current, self.remote, self._submit)
        self.processor = Processor(
            spool,
            lambda: (self.digest, self._current()),
            Path(self.setup.mail),
            self.delivery.add,
            None,
            self.delivery.park,
            self._settled,
        )
        self.delivery.start()
        self.processor.start()
        self.writer.write(frame(READY))

    def _submit(self, queue_id: str) -> None:
        assert self.processor is not None
        self.processor.submit(queue_id)

    def _process(self, payload: bytes, again: bool) -> None:
        assert self.processor is not None and self.router is not None, "a message before the plan"
        try:
            envelope, message = parse(payload)
        except (BadQueueFile, UnicodeError) as exc:  # the front wrote it: a bug, said once
            log.error("queue process: a message that cannot be read: %s", exc)
            return
        if again and self.processor.spool.exists(envelope.id):
            # its batch was committed before the last back died: the queue file holds what
            # still waits, its Maildir copies are in place
            self._settled([envelope.id])
            return
        router = self.routers.get(envelope.plan)
        if router is None:  # a plan older than those kept: the current one routes it
            arrival = Arrival(envelope, message, self.digest, self.router)
        else:
            arrival = Arrival(envelope, message, envelope.plan, router)
        self.processor.deliver_soon(arrival, None)

    def _settled(self, ids: list[str]) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(SETTLED, "\n".join(ids).encode("ascii")))

    async def _stop(self) -> None:
        if self.processor is not None:
            await self.processor.stop()
        if self.delivery is not None:
            await self.delivery.stop()
        self.writer.close()


def _router(plan: Plan) -> Router:
    with trusted.uncollected():
        return Router(plan)


async def _serve(descriptor: int) -> int:
    sock = socket.socket(fileno=descriptor)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    found = await read_frame(reader)
    if found is None or found[0] != SETUP:
        return 1
    setup = Setup.loads(found[1])
    writer_thread = logs.Writer(*setup.log)
    try:
        metrics.join()
        work_as(Share(*setup.share))
        loop = asyncio.get_running_loop()
        for number in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, lambda: None)  # the front decides; EOF stops
        await _Back(setup, reader, writer).run()
        return 0
    except OSError as exc:  # a folder it cannot use: one line
        log.error("the queue process cannot run: %s", exc)
        return 1
    except Exception:
        log.exception("the queue process stopped on an error")
        return 1
    finally:
        writer_thread.stop()


def main(arguments: list[str]) -> int:
    """`python -m mailplan.runtime.serve.queueprocess DESCRIPTOR FRONT-PID`."""
    descriptor, front = int(arguments[0]), int(arguments[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != front:  # the front died before the line above
        return 1
    return uvloop.run(_serve(descriptor))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
