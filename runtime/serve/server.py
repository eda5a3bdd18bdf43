"""The server: listeners from the plan, the queue, reload on SIGHUP, clean stop on SIGTERM,
the retry journals read again on SIGUSR1 (`mailplan queue flush`).

Every session is bound to the plan that was current when it connected; a reload
only changes what new sessions get. A plan that fails to load is refused with a log
line and the old one stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mailplan.plan import codec, trusted
from mailplan.plan.model import Listener, Plan
from mailplan.runtime.base import hangups, metrics
from mailplan.runtime.decide.admission import Admission
from mailplan.runtime.decide.policy import Policy
from mailplan.runtime.decide.router import Router
from mailplan.runtime.decide.throttle import Throttle
from mailplan.runtime.delivery.scheduler import Delivery, Remote
from mailplan.runtime.dns.lookup import Answerer, Dns
from mailplan.runtime.mailbox.connection import Connection
from mailplan.runtime.mailbox.pop3 import IDLE_TIMEOUT, LINE_LIMIT, Pop3
from mailplan.runtime.queue.processor import Accepts, Processor
from mailplan.runtime.rules.engine import Rules
from mailplan.runtime.serve import admin, notify, retire, tls
from mailplan.runtime.serve.queueprocess import Feed, Setup
from mailplan.runtime.serve.startup import (
    BACKLOG,
    POP3_PROTOCOLS,
    SMTP_PROTOCOLS,
    Sockets,
    dkim_keys,
    release_signals,
    served,
)
from mailplan.runtime.smtp.contentfilter import Rspamd
from mailplan.runtime.smtp.receiving import CallbackCache, Checks
from mailplan.runtime.smtp.session import Handler, Session, Snapshot
from mailplan.runtime.smtp.signing import Keyring, Signer
from mailplan.runtime.store.intake import Intake
from mailplan.runtime.store.spool import Envelope, Share, Spool, new_id, owns

log = logging.getLogger("mailplan.server")

STOP_GRACE = 60.0
REAP_EVERY = 1.0  # seconds between looks at the snapshots reloads replaced


@dataclass(frozen=True)
class Options:
    root: Path
    dev: bool = False
    remote: Remote = field(default_factory=Remote)
    # The listening sockets, bound before the server starts (`runtime.serve.startup`), and the
    # listeners' TLS context. With `--workers N`, the queue ids this worker owns
    # (`runtime.serve.workers`); a lone server owns them all.
    sockets: Sockets = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    share: Share = field(default_factory=Share)
    # The DKIM private keys, read at start-up (as root, before the server gives it up).
    dkim: Keyring = field(default_factory=dict)
    bind: tuple[str, ...] = ()  # `serve --bind`: these addresses, not the listeners' own
    # The admin listener's socket (`runtime.serve.admin`): a lone server answers on it; the
    # supervisor of workers gives it to a process of its own.
    admin: socket.socket | None = None
    # What changed between two plans, line by line, for the log of a reload (the `diff`
    # package, given by the command line: the runtime does not import it).
    describe: Callable[[Plan, Plan], list[str]] | None = None
    # The log's shape and level, for the queue's own process (`runtime.serve.queueprocess`);
    # None: the queue runs in this process (tests that drive a Daemon in theirs).
    queue_process: tuple[str, str] | None = None


def snapshot(
    plan: Plan,
    answerer: Answerer | None = None,
    cache: CallbackCache | None = None,
    smtp_port: int = 25,
    keys: Keyring | None = None,
) -> Snapshot:
    """A plan ready to serve; with `answerer` (DNS), its receiving checks run too; with
    `keys`, the mail of its hosted domains is DKIM-signed.

    Built with the cyclic collector off (`trusted.uncollected`): the indexes of a big plan
    are a million objects that all live, and a pass over them would hold up the event loop
    that a reload in a thread leaves serving."""
    with trusted.uncollected():
        router = Router(plan)
        checks = None
        if answerer is not None:
            checks = Checks(plan, router, answerer, cache, smtp_port)
        rules = Rules(plan.server_rules) if plan.server_rules is not None else None
        signer = Signer(plan, keys) if keys else None
        content = plan.receiving.content_filter
        rspamd = Rspamd(content, plan.server.hostname) if content is not None else None
        policy = Policy(plan, router)
        return Snapshot(codec.digest(plan), policy, checks, rules, signer, rspamd)


class Daemon:
    def __init__(
        self, load: Callable[[], Plan], options: Options, first: Plan | None = None
    ) -> None:
        """`load` gives the plan now (at start, unless `first` is given, and at each reload)."""
        self.load = load
        self.options = options
        self.answerer = Dns(options.remote.resolver, timeout=options.remote.dns_timeout)
        self.callbacks = CallbackCache()
        self.keys = options.dkim
        self.current = self._snapshot(first if first is not None else load())
        plan = self.current.policy.plan
        self.spool = Spool(self._path(plan.queue.directory))
        self.intake = Intake(self.spool.directory / "intake")
        self.processor: Processor | None = None
        self.delivery: Delivery | None = None
        self.feed: Feed | None = None
        self.queue: Accepts
        if options.queue_process is None:
            self.queue = self.processor = self._processor(plan)
        else:
            setup = Setup.of(
                self.spool.directory,
                self._path(plan.queue.mail_directory),
                options.remote,
                options.share,
                options.queue_process,
            )
            self.queue = self.feed = Feed(self.intake, setup, plan)
        self.sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self.pop3_sessions: set[Connection] = set()
        self.throttle = Throttle()  # failed logins per client IP, shared by POP3 and SMTP AUTH
        limits = plan.limits
        # connections per client and in all, shared by SMTP and POP3
        self.admission = Admission(limits.max_connections, limits.max_connections_per_client)
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()
        self.listeners: list[Listener] = []
        self.admin: ThreadingHTTPServer | None = None
        share = options.share
        self.serving = admin.Serving(share.index, os.getpid(), self.current.digest, time.time())
        self.reaper = retire.Reaper()  # the snapshots reloads replaced, freed off the loop
        self.reaping: asyncio.Task[None] | None = None

    def _processor(self, plan: Plan) -> Processor:
        """The queue in this process: the processor and the delivery wing."""
        delivery = self.delivery = Delivery(
            self.spool,
            lambda: self.current.policy.router,
            self.options.remote,
            lambda queue_id: processor.submit(queue_id),
        )
        processor = Processor(
            self.spool,
            lambda: (self.current.digest, self.current.policy.router),
            self._path(plan.queue.mail_directory),
            delivery.add,
            self.intake,
            delivery.park,
        )
        return processor

    def _flush(self) -> None:
        """`mailplan queue flush` (SIGUSR1): the retry journals are read again."""
        if self.delivery is not None:
            self.delivery.reschedule()
        if self.feed is not None:
            self.feed.flush()

    def _snapshot(self, plan: Plan) -> Snapshot:
        remote = self.options.remote
        return snapshot(plan, self.answerer, self.callbacks, remote.port, self.keys)

    def _keys(self, plan: Plan) -> Keyring:
        return reread_keys(plan, self.options, self.keys)

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.options.root / path

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGUSR1, self._flush)
        release_signals()  # a reload or flush asked for while the server started comes now
        loop.set_exception_handler(self.loop_exception)
        await asyncio.to_thread(self._recover)
        if self.delivery is not None and self.processor is not None:
            self.delivery.start()
            self.processor.start()
        if self.feed is not None:  # after the recovery: the back reads the queue as it starts
            await self.feed.start()
        await self.start_listeners()
        self._start_admin()
        share = self.options.share
        worker = "" if share.of == 1 else f" (worker {share.index} of {share.of})"
        log.info("serving plan %s%s", self.current.digest, worker)
        if share.of == 1:  # a supervisor of workers speaks to systemd for them
            notify.ready(f"serving plan {self.current.digest}")
        await self.stopping.wait()
        if share.of == 1:
            notify.stopping()
        await self.stop()

    def _start_admin(self) -> None:
        """Say what this process serves (with an admin listener), and answer on it when
        alone (a supervisor of workers answers for them)."""
        metrics.meters().reload_success.set(1)
        if metrics.shared() is None:
            return
        self._announce()
        sock = self.options.admin
        if sock is not None and self.options.share.of == 1:
            node = admin.Node(lambda: self.current.policy.plan, self.spool.directory, 1)
            self.admin = admin.in_thread(sock, node)
            host, port = sock.getsockname()[:2]
            log.info("admin listener on %s port %d (/healthz, /plan, /metrics)", host, port)

    def _announce(self) -> None:
        if metrics.shared() is None:
            return
        try:
            admin.announce(admin.folder(self.spool.directory), self.serving)
        except OSError as exc:
            log.error("admin: cannot say which plan this process serves: %s", exc)

    @staticmethod
    def loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """What the event loop reports outside any session: a client's reset or failed TLS
        handshake is one line at INFO; anything else goes to the default handler."""
        error = context.get("exception")
        if not hangups.client_went_away(error):
            loop.default_exception_handler(context)
            return
        transport = context.get("transport")
        peer = transport.get_extra_info("peername") if transport is not None else None
        stage = "tls-handshake" if "handshake" in context.get("message", "") else "connection"
        hangups.went_away(log, str(peer[0]) if peer else "", stage, error)

    async def start_listeners(self) -> None:
        plan = self.current.policy.plan
        dovecot = [
            x for x in plan.listeners if x.protocol not in (*SMTP_PROTOCOLS, *POP3_PROTOCOLS)
        ]
        for listener in dovecot:
            log.info(
                "listener %s (%s) is served by Dovecot (see `mailplan dovecot`), not here",
                listener.name,
                listener.protocol,
            )
        for listener in served(plan, self.options.dev, self.options.bind):
            for address in listener.bind:
                sock = self.options.sockets.get((listener.name, address))
                if sock is None:
                    log.warning(
                        "listener %s on %s is new: it is served from the next start",
                        listener.name,
                        address,
                    )
                    continue
                self.servers.append(await self._listen(listener, sock))
                log.info(
                    "listener %s (%s) on %s port %d",
                    listener.name,
                    listener.protocol,
                    address,
                    listener.port,
                )
            self.listeners.append(listener)

    async def _listen(self, listener: Listener, sock: socket.socket) -> asyncio.AbstractServer:
        context = self.options.tls
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            if listener.protocol not in POP3_PROTOCOLS:
                return self._session(listener, context)
            return Connection(
                lambda connection: self._pop3(listener, context, connection),
                LINE_LIMIT,
                IDLE_TIMEOUT,
            )

        if listener.tls == "implicit" and context is not None:
            return await loop.create_server(
                tls.implicit(factory, context), sock=sock, backlog=BACKLOG
            )
        return await loop.create_server(factory, sock=sock, backlog=BACKLOG)

    def _session(self, listener: Listener, context: ssl.SSLContext | None) -> Session:
        current = self.current
        plan = current.policy.plan
        implicit = listener.tls == "implicit"
        session = Session(
            Handler(current, listener, self.queue),
            implicit_tls=implicit,
            hostname=plan.server.hostname,
            ident="mailplan",
            data_size_limit=plan.limits.max_message_size,
            tls_context=context if listener.tls == "starttls" else None,
            auth_required=listener.auth == "required",
            auth_without_starttls=implicit or listener.plaintext_auth,
            auth_exclude_mechanism=[] if listener.auth != "none" else ["PLAIN", "LOGIN"],
            throttle=self.throttle,
            admission=self.admission,
            timeout=300,
        )
        self.sessions.add(session)
        metrics.meters().connections.labels(protocol=listener.protocol).inc()
        return session

    async def _pop3(
        self,
        listener: Listener,
        context: ssl.SSLContext | None,
        connection: Connection,
    ) -> None:
        policy = self.current.policy
        metrics.meters().connections.labels(protocol=listener.protocol).inc()
        peer = connection.extra("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refused = self.admission.enter(ip, policy.client(ip, False).trusted)
        if refused is not None:  # POP3 has no 421: -ERR with RFC 2449's SYS/TEMP code
            log.info("%s refused at connect: %s", ip, refused)
            connection.write(f"-ERR [SYS/TEMP] {refused[10:]}\r\n".encode())
            connection.close()
            return
        mail_directory = self._path(policy.plan.queue.mail_directory)
        session = Pop3(policy, listener, context, mail_directory, self.throttle, connection)
        self.pop3_sessions.add(connection)
        try:
            await session.serve()
        finally:
            self.pop3_sessions.discard(connection)
            self.admission.leave(ip)

    def _recover(self) -> None:
        """Queue what the intake journals of dead processes hold unsettled, then start
        this process's own journal."""

        def store(envelope: Envelope, message: bytes) -> bool:
            if self.spool.exists(envelope.id):  # its batch was committed: the queue file
                return False  # holds what still waits, its Maildir copies are in place
            if not owns(envelope.id):  # another worker's id: this one makes its own
                envelope = replace(envelope, id=new_id())
            self.spool.store(envelope, message, again=True)
            return True

        self.intake.recover(store)
        self.intake.open()

    async def reload(self) -> None:
        """Load the plan again; sessions already open finish on the plan they started with."""
        alone = self.options.share.of == 1
        if alone:
            notify.reloading()
        try:
            plan = await asyncio.to_thread(self.load)
            # the key files again (rotated keys): a bad one refuses the reload, old keys stay
            keys = await asyncio.to_thread(self._keys, plan)
            fresh = await asyncio.to_thread(
                snapshot, plan, self.answerer, self.callbacks, self.options.remote.port, keys
            )
        except Exception as exc:
            log.error("reload refused, still serving plan %s: %s", self.current.digest, exc)
            self._reloaded(f"refused: {exc}")
            if alone:
                notify.ready(f"reload refused; serving plan {self.current.digest}")
            return
        if fresh.policy.plan.listeners != self.current.policy.plan.listeners:
            log.warning("reload: listeners changed; they take effect at the next start")
        await self._changes(self.current, fresh)
        if self.feed is not None:  # before any message accepted under it goes there
            await self.feed.reload(fresh.policy.plan)
        old, self.current, self.keys = self.current, fresh, keys
        self.reaper.retire(old, old.policy, old.policy.plan, old.policy.router)
        del old  # sessions that started on it may still use it; the reaper frees it after
        if self.reaping is None or self.reaping.done():
            self.reaping = asyncio.ensure_future(self._reap())
        limits = fresh.policy.plan.limits  # the next connections count against these
        self.admission.total = limits.max_connections
        self.admission.per_client = limits.max_connections_per_client
        if self.delivery is not None:
            self.delivery.reschedule()  # a new retry schedule applies to what waits already
        log.info("reloaded: serving plan %s", fresh.digest)
        self._reloaded("ok")
        if alone:
            notify.ready(f"serving plan {fresh.digest}")

    async def _reap(self) -> None:
        """Free the snapshots that reloads replaced, in a thread, once their last session
        has ended (`retire`): every REAP_EVERY seconds while any waits."""
        while True:
            await asyncio.to_thread(self.reaper.reap)
            if not self.reaper.waiting or self.stopping.is_set():
                return
            await asyncio.sleep(REAP_EVERY)

    async def _changes(self, old: Snapshot, new: Snapshot) -> None:
        """What a reload changes, one line each (nothing when the plan is the same). The
        diff proves behaviour with the router: off the loop, as the plan was loaded."""
        describe = self.options.describe
        if describe is None:
            return
        if old.digest == new.digest:
            log.info("reload: the plan is unchanged")
            return
        try:
            lines = await asyncio.to_thread(describe, old.policy.plan, new.policy.plan)
        except Exception as exc:  # the reload goes on: the diff is for the reader
            log.error("reload: cannot tell what changed: %s", exc)
            return
        for line in lines:
            log.info("reload: %s", line)

    def _reloaded(self, result: str) -> None:
        """Count a reload, and say what this process serves now."""
        now = time.time()
        meters = metrics.meters()
        meters.reloads.labels(result=result.partition(":")[0]).inc()
        meters.reload_success.set(1 if result == "ok" else 0)
        meters.reload_time.set(now)
        self.serving = replace(
            self.serving,
            digest=self.current.digest,
            reloads=self.serving.reloads + 1,
            last_reload=result,
            last_reload_at=now,
        )
        self._announce()

    async def stop(self) -> None:
        """Stop accepting, let the DATA phases under way finish, then stop."""
        log.info("stopping: no new connections")
        if self.admin is not None:
            await asyncio.to_thread(self.admin.shutdown)
            self.admin.server_close()
        for server in self.servers:
            server.close()
        deadline = asyncio.get_running_loop().time() + STOP_GRACE
        while (
            any(s.data_active for s in self.sessions)
            and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()
        for connection in list(self.pop3_sessions):
            connection.abort()  # a POP3 session that did not QUIT changes nothing
        deadline = asyncio.get_running_loop().time() + 5.0
        while self.pop3_sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # each session sees its connection end, and unlocks
        await self._stop_queue()
        if self.reaping is not None:
            self.reaping.cancel()  # what waits is freed as the process ends
        log.info("stopped")

    async def _stop_queue(self) -> None:
        """What was accepted is processed (or stays in the journal), then deliveries end."""
        if self.processor is not None:
            await self.processor.stop()
        if self.feed is not None:
            await self.feed.stop()
        await self.intake.close()
        if self.delivery is not None:
            await self.delivery.stop()


def reread_keys(plan: Plan, options: Options, previous: Keyring) -> Keyring:
    """The DKIM keys of a plan being reloaded, read again as at start-up (the warnings of
    `--dev` logged); StartupError, saying why, when one is not right."""
    keys, warnings = dkim_keys(plan, options.root, None, options.dev, previous)
    for warning in warnings:
        log.warning("%s", warning)
    return keys
