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
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from plan import codec
from plan.model import Listener, Plan
from runtime import devtls, hangups
from runtime.delivery import Delivery, Remote
from runtime.intake import Intake
from runtime.lookup import Answerer, Dns
from runtime.policy import Policy
from runtime.pop3 import LINE_LIMIT, Pop3
from runtime.processor import Processor
from runtime.receiving import CallbackCache, Checks
from runtime.router import Router
from runtime.rules import Rules
from runtime.smtp import Handler, Session, Snapshot
from runtime.spool import Envelope, Share, Spool, new_id, owns
from runtime.throttle import Throttle

log = logging.getLogger("mailplan.server")

# `make run`: every listener moves to 127.0.0.1, on a fixed high port.
DEV_PORTS = {25: 2525, 587: 2587, 465: 2465, 110: 2110, 995: 2995, 143: 2143, 993: 2993}
SMTP_PROTOCOLS = ("smtp", "submission", "smtps")
POP3_PROTOCOLS = ("pop3", "pop3s")
STOP_GRACE = 60.0
PIDFILE = "mailplan.pid"


@dataclass(frozen=True)
class Options:
    root: Path
    dev: bool = False
    remote: Remote = field(default_factory=Remote)
    # With `--workers N`: the sockets the supervisor bound, and the queue ids this
    # worker owns (`runtime.workers`). A lone server binds its own and owns them all.
    sockets: dict[tuple[str, str], socket.socket] | None = None
    share: Share = field(default_factory=Share)


def snapshot(
    plan: Plan,
    answerer: Answerer | None = None,
    cache: CallbackCache | None = None,
    smtp_port: int = 25,
) -> Snapshot:
    """A plan ready to serve; with `answerer` (DNS), its receiving checks run too."""
    router = Router(plan)
    checks = Checks(plan, router, answerer, cache, smtp_port) if answerer is not None else None
    rules = Rules(plan.server_rules) if plan.server_rules is not None else None
    return Snapshot(codec.digest(plan), Policy(plan, router), checks, rules)


def listening(address: str, port: int) -> socket.socket:
    """A TCP socket bound to address:port (IPv6 sockets take IPv6 only)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    return sock


def development(listener: Listener) -> Listener:
    """A listener moved to loopback and a high port, for `make run`."""
    port = DEV_PORTS.get(
        listener.port, listener.port + 2000 if listener.port < 1024 else listener.port
    )
    return replace(listener, bind=("127.0.0.1",), port=port)


class Server:
    def __init__(
        self, load: Callable[[], Plan], options: Options, first: Plan | None = None
    ) -> None:
        """`load` gives the plan now (at start, unless `first` is given, and at each reload)."""
        self.load = load
        self.options = options
        self.answerer = Dns(options.remote.resolver, timeout=options.remote.dns_timeout)
        self.callbacks = CallbackCache()
        self.current = self._snapshot(first if first is not None else load())
        plan = self.current.policy.plan
        self.spool = Spool(self._path(plan.queue.directory))
        self.intake = Intake(self.spool.directory / "intake")
        self.delivery = Delivery(
            self.spool,
            lambda: self.current.policy.router,
            options.remote,
            lambda queue_id: self.processor.submit(queue_id),
        )
        self.processor = Processor(
            self.spool,
            lambda: (self.current.digest, self.current.policy.router),
            self._path(plan.queue.mail_directory),
            self.delivery.add,
            self.intake,
        )
        self.sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self.pop3_sessions: set[asyncio.StreamWriter] = set()
        self.throttle = Throttle()  # failed logins per client IP, shared by POP3 and SMTP AUTH
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()
        self.listeners: list[Listener] = []

    def _snapshot(self, plan: Plan) -> Snapshot:
        return snapshot(plan, self.answerer, self.callbacks, self.options.remote.port)

    @property
    def pidfile(self) -> Path:
        """Where `mailplan queue flush` finds the server to signal (SIGUSR1)."""
        return self.spool.directory / PIDFILE

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.options.root / path

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGUSR1, self.delivery.reschedule)
        loop.set_exception_handler(self.loop_exception)
        alone = self.options.sockets is None
        if alone:  # a supervisor writes its own
            self.pidfile.write_text(f"{os.getpid()}\n")
        await asyncio.to_thread(self._recover)
        self.delivery.start()
        self.processor.start()
        await self.start_listeners()
        share = self.options.share
        worker = "" if share.of == 1 else f" (worker {share.index} of {share.of})"
        log.info("serving plan %s%s", self.current.digest, worker)
        await self.stopping.wait()
        await self.stop()
        if alone:
            self.pidfile.unlink(missing_ok=True)

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
        context = self._tls_context(plan)
        for configured in plan.listeners:
            listener = development(configured) if self.options.dev else configured
            if listener.protocol not in (*SMTP_PROTOCOLS, *POP3_PROTOCOLS):
                log.info(
                    "listener %s (%s) is served by Dovecot (see `mailplan dovecot`), not here",
                    listener.name,
                    listener.protocol,
                )
                continue
            for address in listener.bind:
                bound = self.options.sockets
                if bound is not None and (listener.name, address) not in bound:
                    log.warning(
                        "listener %s on %s is new: it is served from the next start",
                        listener.name,
                        address,
                    )
                    continue
                server = await self._listen(listener, address, context)
                self.servers.append(server)
                log.info(
                    "listener %s (%s) on %s port %d",
                    listener.name,
                    listener.protocol,
                    address,
                    listener.port,
                )
            self.listeners.append(listener)

    async def _listen(
        self, listener: Listener, address: str, context: ssl.SSLContext | None
    ) -> asyncio.AbstractServer:
        bound = self.options.sockets
        sock = bound[(listener.name, address)] if bound else listening(address, listener.port)
        implicit = listener.tls == "implicit"
        if listener.protocol in POP3_PROTOCOLS:
            return await asyncio.start_server(
                lambda reader, writer: self._pop3(listener, context, reader, writer),
                sock=sock,
                ssl=context if implicit else None,
                backlog=512,
                limit=LINE_LIMIT,
            )
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: self._session(listener, context),
            sock=sock,
            ssl=context if implicit else None,
            backlog=512,
        )

    def _session(self, listener: Listener, context: ssl.SSLContext | None) -> Session:
        current = self.current
        plan = current.policy.plan
        implicit = listener.tls == "implicit"
        session = Session(
            Handler(current, listener, self.store),
            implicit_tls=implicit,
            hostname=plan.server.hostname,
            ident="mailplan",
            data_size_limit=plan.limits.max_message_size,
            tls_context=context if listener.tls == "starttls" else None,
            auth_required=listener.auth == "required",
            auth_without_starttls=implicit or listener.plaintext_auth,
            auth_exclude_mechanism=[] if listener.auth != "none" else ["PLAIN", "LOGIN"],
            throttle=self.throttle,
            timeout=300,
        )
        self.sessions.add(session)
        return session

    async def _pop3(
        self,
        listener: Listener,
        context: ssl.SSLContext | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        policy = self.current.policy
        mail_directory = self._path(policy.plan.queue.mail_directory)
        session = Pop3(policy, listener, context, mail_directory, self.throttle, reader, writer)
        self.pop3_sessions.add(writer)
        try:
            await session.serve()
        finally:
            self.pop3_sessions.discard(writer)

    def _recover(self) -> None:
        """Queue what the intake journals of dead processes hold unsettled, then start
        this process's own journal."""

        def store(envelope: Envelope, message: bytes) -> None:
            if not owns(envelope.id):  # another worker's id: this one makes its own
                envelope = replace(envelope, id=new_id())
            self.spool.store(envelope, message, again=True)

        self.intake.recover(store)
        self.intake.open()

    async def store(self, envelope: Envelope, message: bytes) -> None:
        """Make a message durable before its 250: queue it, or, when every recipient is a
        local account without rules, write it to the intake journal, to be delivered
        into the Maildirs in the next batch (`runtime.intake`)."""
        digest, router = self.current.digest, self.current.policy.router
        if not self.processor.backlogged and self.processor.delivers_at_once(router, envelope):
            # shielded: a client gone before its 250 cannot leave a record unsettled
            await asyncio.shield(self._journal(router, digest, envelope, message))
            return
        await asyncio.to_thread(self.spool.store, envelope, message)
        self.processor.submit(envelope.id, (envelope, message))

    async def _journal(
        self, router: Router, digest: str, envelope: Envelope, message: bytes
    ) -> None:
        ticket = await self.intake.write(envelope, message)
        self.processor.deliver_soon(router, digest, envelope, message, ticket)

    def _tls_context(self, plan: Plan) -> ssl.SSLContext | None:
        if not any(listener.tls != "none" for listener in plan.listeners):
            return None
        if self.options.dev:
            certificate, key = devtls.ensure(
                self.options.root / "var" / "tls", plan.server.hostname
            )
        else:
            certificate = self._path(plan.tls.certificate or "")
            key = self._path(plan.tls.key or "")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, key)
        return context

    async def reload(self) -> None:
        """Load the plan again; sessions already open finish on the plan they started with."""
        try:
            plan = await asyncio.to_thread(self.load)
            fresh = await asyncio.to_thread(self._snapshot, plan)
        except Exception as exc:
            log.error("reload refused, still serving plan %s: %s", self.current.digest, exc)
            return
        if fresh.policy.plan.listeners != self.current.policy.plan.listeners:
            log.warning("reload: listeners changed; they take effect at the next start")
        self.current = fresh
        self.delivery.reschedule()  # a new retry schedule applies to what waits already
        log.info("reloaded: serving plan %s", fresh.digest)

    async def stop(self) -> None:
        """Stop accepting, let the DATA phases under way finish, then stop."""
        log.info("stopping: no new connections")
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
        for writer in list(self.pop3_sessions):
            writer.transport.abort()  # a POP3 session that did not QUIT changes nothing
        deadline = asyncio.get_running_loop().time() + 5.0
        while self.pop3_sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # each session sees its connection end, and unlocks
        await self.processor.stop()
        await self.intake.close()
        await self.delivery.stop()
        log.info("stopped")
