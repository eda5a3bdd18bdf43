"""The SMTP side: aiosmtpd speaks the protocol, the handler asks the policy and the queue.

`Session` extends aiosmtpd's SMTP where the protocol engine itself must change:
a refusal before the greeting (blacklisted IPs), AUTH checked off the event loop,
AUTH offered inside implicit TLS, SMTPUTF8 on every listener with command lines that
are not UTF-8 refused, DATA read in large chunks (the end of data is only ever
`CRLF.CRLF`, so a bare LF or CR before a dot cannot split a message), and a client
that goes away told in one line at INFO (`runtime.base.hangups`), not a traceback.
Every decision is the policy's (`runtime.decide.policy`); the handler turns it into replies.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import format_datetime, localtime
from typing import Any, AnyStr

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    LoginPassword,
    TLSSetupException,
    _Missing,
    syntax,
)
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session as SMTPSession
from prometheus_client import Counter

from mailplan.plan.model import Listener
from mailplan.runtime.base import hangups, metrics
from mailplan.runtime.base.threads import checking
from mailplan.runtime.decide import replies
from mailplan.runtime.decide.address import canonical_domain, is_utf8
from mailplan.runtime.decide.admission import Admission
from mailplan.runtime.decide.message import header_block
from mailplan.runtime.decide.policy import Client, Policy, international
from mailplan.runtime.decide.router import Routing
from mailplan.runtime.decide.throttle import Throttle
from mailplan.runtime.decide.transaction import Recorded, Transaction
from mailplan.runtime.delivery import pipe
from mailplan.runtime.queue.arrival import Arrival
from mailplan.runtime.queue.processor import Accepts, Full
from mailplan.runtime.rules import enact
from mailplan.runtime.rules.engine import Facts, Headers, Rules
from mailplan.runtime.smtp.contentfilter import Rspamd
from mailplan.runtime.smtp.receiving import Checks
from mailplan.runtime.smtp.signing import Signer
from mailplan.runtime.store.spool import Envelope, new_id

log = logging.getLogger("mailplan.smtp")

CHUNK = 256 * 1024
MAX_HOPS = 50  # Received lines a message may carry before it is taken for a loop
END_OF_DATA = b"\r\n.\r\n"
TOO_BIG = b"<too big>"  # compared by identity: what `_read_data` returns for an oversized message


@dataclass(frozen=True)
class Snapshot:
    """One plan, ready to serve: what a session uses from its first line to its last."""

    digest: str
    policy: Policy
    checks: Checks | None = None  # the receiving checks (None: none run)
    server_rules: Rules | None = None
    signer: Signer | None = None  # DKIM signing (None: no key signs)
    content_filter: Rspamd | None = None  # receiving.content_filter (None: none)


class Handler:
    """aiosmtpd hooks for one session, bound to the plan the session started with."""

    def __init__(self, snapshot: Snapshot, listener: Listener, queue: Accepts) -> None:
        """`queue` takes each message at the end of DATA, and runs what Execute asks."""
        self.snapshot = snapshot
        self.policy = snapshot.policy
        self.listener = listener
        self.queue = queue
        self.relayable: set[str] = set()
        self.routings: dict[str, Routing] = {}  # of this transaction's recipients, from RCPT
        self.trace: list[str] = []  # header lines the receiving checks add to the message
        self.spf: str | None = None  # the SPF result at MAIL FROM (None: not checked)
        self.transaction: Transaction | None = None  # logged when it ends (`--replay`)

    def client(self, session: SMTPSession, tls: bool) -> Client:
        account = session.auth_data if session.authenticated else None
        return self.policy.client(peer_ip(session), tls, account)

    async def handle_EHLO(
        self,
        server: Session,
        session: SMTPSession,
        envelope: SMTPEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.listener.auth == "none":
            responses = [line for line in responses if not line.startswith("250-AUTH")]
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    def record(self) -> None:
        """Log the transaction that ended: one line, its envelope (`mailplan diff --replay`).
        A message accepted has it on its `accepted` line instead (`_accepted`)."""
        done, self.transaction = self.transaction, None
        if done is None:
            return
        rcpts = " ".join(f"<{address}> {reply}" for address, reply in done.recipients)
        log.info(
            "envelope from %s <%s> %s: %s%s", done.client, done.sender, done.mail,
            rcpts or "no recipient", f", DATA {done.data}" if done.data else "",
            extra={"client": done.client, "envelope": done.record()},
        )  # fmt: skip

    async def handle_MAIL(
        self,
        server: Session,
        session: SMTPSession,
        envelope: SMTPEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        self.record()
        client = self.client(session, server.encrypted)
        sender = "" if address == "<>" else address
        self.transaction = Transaction(
            client.ip, server.encrypted, session.host_name or "", client.authenticated, sender
        )
        reply = await self._mail(server, session, envelope, address, options)
        self.transaction.mail = reply[:3]
        return reply

    async def _mail(
        self,
        server: Session,
        session: SMTPSession,
        envelope: SMTPEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if _unsafe(address):
            return _bad_address(address)
        refusal = international(address, "SMTPUTF8" in options) or self.policy.sender(address)
        if refusal:
            return refusal
        self.trace = []
        self.spf = None
        if self.snapshot.checks is not None:
            client = self.client(session, server.encrypted)
            sender = "" if address == "<>" else _in_a_labels(address)
            for verdict in await self.snapshot.checks.at_mail(
                client, session.host_name or "", sender
            ):
                if self.transaction is not None:
                    self.transaction.verdicts.append(
                        Recorded(verdict.check, verdict.result, verdict.reply)
                    )
                if verdict.reply:
                    return verdict.reply
                if verdict.check == "spf":
                    self.spf = verdict.result
                if verdict.header:
                    self.trace.append(verdict.header)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.relayable = set()
        self.routings = {}
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: Session,
        session: SMTPSession,
        envelope: SMTPEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        reply = await self._rcpt(server, session, envelope, address, options)
        if self.transaction is not None:
            self.transaction.recipients.append((address, reply[:3]))
        return reply

    async def _rcpt(
        self,
        server: Session,
        session: SMTPSession,
        envelope: SMTPEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if _unsafe(address):
            return _bad_address(address)
        refusal = international(address, envelope.smtp_utf8)
        if refusal:
            return refusal
        client = self.client(session, server.encrypted)
        reply, routing = self.policy.recipient(client, address, len(envelope.rcpt_tos))
        if routing is None:
            log.info(
                "%s refused <%s>: %s", client.ip, address, reply,
                extra={"client": client.ip, "listener": self.listener.name, "recipient": address},
            )  # fmt: skip
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        self.routings[address] = routing  # carried with the message: it is not routed again
        if routing.relayable:
            self.relayable.add(address)
        return reply

    async def handle_DATA(
        self, server: Session, session: SMTPSession, envelope: SMTPEnvelope
    ) -> str:
        reply = await self._data(server, session, envelope)
        if self.transaction is not None:
            self.transaction.data = reply[:3]
        self.record()
        return reply

    async def _data(self, server: Session, session: SMTPSession, envelope: SMTPEnvelope) -> str:
        client = self.client(session, server.encrypted)
        if _hops(envelope.original_content or b"") > MAX_HOPS:
            log.info("%s: refused a message with more than %d hops", client.ip, MAX_HOPS)
            return replies.TOO_MANY_HOPS
        queued = self._envelope(server, session, envelope, client)
        judged = await self._judged(server, session, envelope, client, queued)
        if isinstance(judged, str):
            return judged
        message, sealing = judged
        rules = self.snapshot.server_rules
        decided = None
        parsed: tuple[bytes, Headers] | None = None  # a message and its headers, parsed
        if rules is not None and rules.rules:
            parsed = (message, Headers.parse(message))
            decided = self._server_rules(rules, client, queued, message, parsed[1])
            if decided.rejection is not None:
                log.info("%s refused by a server rule: %s", client.ip, decided.rejection)
                return decided.rejection
            message = decided.message
            queued = _with_recipients(queued, decided.recipients)
        if self.snapshot.signer is not None:  # signed once, before it is queued
            message = await self.snapshot.signer.sign(client, message, queued.id)
        if sealing and self._leaving(queued.recipients):
            message = await self._seal(message, queued)
        try:
            await self.queue.admit()  # past the soft limit this waits (in_flow_delay)
            headers = parsed[1] if parsed is not None and parsed[0] is message else None
            await self._enqueue(queued, message, decided, sealing, headers)
        except Full:
            log.warning(
                "%s: refused from %s: too much mail waits to be processed", queued.id, client.ip
            )
            return replies.QUEUE_FULL
        except OSError as exc:
            log.error("%s: cannot queue the message from %s: %s", queued.id, client.ip, exc)
            return replies.QUEUE_WRITE_FAILED
        for command in decided.commands if decided else ():  # once the message is accepted
            rcpts = ",".join(envelope.rcpt_tos)
            facts = pipe.Handover(
                queued.id, queued.sender, rcpts, client.ip, queued.helo, queued.auth
            )
            self.queue.run(command, facts)
        self._accepted(queued, client, len(message))
        return replies.reply(replies.QUEUED, id=queued.id)

    async def _judged(
        self,
        server: Session,
        session: SMTPSession,
        envelope: SMTPEnvelope,
        client: Client,
        queued: Envelope,
    ) -> tuple[bytes, bool] | str:
        """The message with its trace fields, authenticated (DKIM, ARC, DMARC) and through
        the content filter, and whether it is ARC-sealed if it leaves again (it came from
        outside and has our Authentication-Results); or the reply that refuses it."""
        content = envelope.original_content or b""
        lines = list(self.trace)
        sealing = False
        checks = self.snapshot.checks
        if checks is not None:  # DKIM, ARC, DMARC: Authentication-Results
            verified = await checks.authentication.check(
                client, queued.helo, queued.sender, self.spf, content
            )
            if verified.reply:
                log.info("%s <%s> refused by DMARC: %s", client.ip, queued.sender, verified.reply)
                return verified.reply
            content = verified.message
            lines += verified.headers
            sealing = bool(verified.headers) and self.policy.plan.receiving.arc.seal
        trace = "".join(f"{line}\r\n" for line in lines).encode("utf-8", "surrogateescape")
        message = (
            trace + self._received(server, session, client, queued, envelope.smtp_utf8) + content
        )
        content_filter = self.snapshot.content_filter
        if content_filter is not None and content_filter.applies(client):
            message, refusal = await content_filter.check(client, queued, message)
            if refusal is not None:  # the server rules see rspamd's headers: they come after
                return refusal
        return message, sealing

    def _envelope(
        self, server: Session, session: SMTPSession, envelope: SMTPEnvelope, client: Client
    ) -> Envelope:
        """The queue's envelope of the message that DATA ends."""
        sender = envelope.mail_from or ""
        return Envelope(
            id=new_id(),
            arrived=time.time(),
            plan=self.snapshot.digest,
            listener=self.listener.name,
            client=client.ip,
            helo=session.host_name or "",
            tls=server.tls_version or "none",
            auth=client.authenticated or "-",
            sender="" if sender == "<>" else sender,
            recipients=tuple(envelope.rcpt_tos),
            relayable=frozenset(self.relayable),
        )

    async def _enqueue(
        self,
        queued: Envelope,
        message: bytes,
        decided: enact.Enqueue | None,
        sealing: bool,
        headers: Headers | None = None,
    ) -> None:
        """The message to the queue (with `headers`, its header block if parsed already),
        then the copies the server rules made of it (ARC-sealed when `sealing` and they
        leave)."""
        if queued.recipients:
            await self.queue.accept(self._arrival(queued, message, headers))
        for made in decided.copies if decided else ():
            copy = replace(
                queued,
                id=new_id(),
                sender=made.sender,
                recipients=made.recipients,
                listener="rule",
            )
            copied = made.message
            if sealing and self._leaving(made.recipients):
                copied = await self._seal(copied, copy)
            await self.queue.accept(self._arrival(copy, copied))
            log.info("%s: %s: queued as %s", queued.id, made.why, copy.id)

    def _leaving(self, recipients: tuple[str, ...]) -> bool:
        """Whether any of the recipients is routed away from this server (or to a list)."""
        router = self.policy.router
        return any(
            (self.routings.get(r) or router.route(r)).module in ("SMTP", "LIST") for r in recipients
        )

    async def _seal(self, message: bytes, queued: Envelope) -> bytes:
        if self.snapshot.signer is None:
            log.warning("%s: not ARC-sealed: no DKIM signing key is loaded", queued.id)
            return message
        domains = [r.rpartition("@")[2] for r in self.routings]
        hostname = self.policy.plan.server.hostname.lower()
        return await self.snapshot.signer.seal(message, domains, hostname, queued.id)

    def _accepted(self, queued: Envelope, client: Client, size: int) -> None:
        if not queued.recipients:
            log.info("%s from %s: no recipient left after the server rules", queued.id, client.ip)
            return
        facts: dict[str, Any] = {
            "queue_id": queued.id, "client": client.ip, "listener": self.listener.name
        }  # fmt: skip
        done, self.transaction = self.transaction, None
        if done is not None:  # this line records the transaction: no line of its own
            done.data = "250"
            facts["envelope"] = done.record()
        log.info(
            "%s accepted from %s <%s> for %s (%d bytes, plan %s)",
            queued.id,
            client.ip,
            queued.sender,
            ", ".join(f"<{r}>" for r in queued.recipients),
            size,
            self.snapshot.digest[:19],
            extra=facts,
        )

    def _arrival(
        self, envelope: Envelope, message: bytes, headers: Headers | None = None
    ) -> Arrival:
        """The message for the queue, with the plan it arrived under and its routings."""
        snapshot = self.snapshot
        routings = dict(self.routings)
        router = snapshot.policy.router
        return Arrival(envelope, message, snapshot.digest, router, routings, headers)

    def _server_rules(
        self, rules: Rules, client: Client, queued: Envelope, message: bytes, headers: Headers
    ) -> enact.Enqueue:
        """What the server rules make of a message about to be queued (pure but for the log)."""
        sources = {"remote"}
        if client.trusted:
            sources.add("trusted")
        if client.authenticated is not None:
            sources.add("authenticated")
        facts = Facts(
            headers=headers,
            sender=queued.sender,
            recipients=queued.recipients,
            size=len(message),
            sources=frozenset(sources),
            tls=queued.tls != "none",
            submit_address=client.ip,
            now=datetime.now().astimezone(),
        )
        outcome = rules.evaluate(facts)
        for line in outcome.log():
            log.info("%s %s", queued.id, line)
        plan = self.policy.plan
        return enact.at_enqueue(
            outcome,
            message,
            queued.sender,
            queued.recipients,
            plan.pipes,
            f"postmaster@{plan.server.main_domain}",
            facts.now,
        )

    def _received(
        self,
        server: Session,
        session: SMTPSession,
        client: Client,
        queued: Envelope,
        utf8: bool,
    ) -> bytes:
        # RFC 3848's protocol names, and RFC 6531 4.3's for a transaction with SMTPUTF8
        protocol = "UTF8SMTP" if utf8 else "ESMTP" if session.extended_smtp else "SMTP"
        protocol += "S" if server.encrypted else ""
        protocol += "A" if client.authenticated else ""
        recipient = f"\r\n\tfor <{queued.recipients[0]}>" if len(queued.recipients) == 1 else ""
        hostname = self.policy.plan.server.hostname
        line = (
            f"Received: from {queued.helo or 'unknown'} ([{client.ip}])\r\n"
            f"\tby {hostname} (mailplan) with {protocol} id {queued.id}{recipient};\r\n"
            f"\t{_now()}\r\n"
        )
        return line.encode("utf-8", "surrogateescape")


_date: tuple[int, str] = (0, "")


def _now() -> str:
    """The date of a Received: line (RFC 5322, local time), made once a second."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, format_datetime(localtime()))
    return _date[1]


def _with_recipients(envelope: Envelope, recipients: tuple[str, ...]) -> Envelope:
    """`envelope` for `recipients` (itself when they are its own: `replace` is slow)."""
    if recipients == envelope.recipients:
        return envelope
    return replace(envelope, recipients=recipients)


def _hops(message: bytes) -> int:
    """How many Received and Delivered-To lines the message's header has."""
    head = header_block(message).lower()
    return (
        head.count(b"\nreceived:")
        + head.count(b"\ndelivered-to:")
        + head.startswith((b"received:", b"delivered-to:"))
    )


class _QuietSession(SMTPSession):
    """aiosmtpd's session without its deprecation warning on every login."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class Session(SMTP):
    """aiosmtpd's protocol engine, with mailplan's changes (see the module's docstring)."""

    def __init__(
        self,
        handler: Handler,
        *,
        implicit_tls: bool,
        auth_without_starttls: bool,
        throttle: Throttle | None = None,
        admission: Admission | None = None,
        **options: Any,
    ) -> None:
        super().__init__(handler, **{"enable_SMTPUTF8": True, **options})
        self.throttle = throttle or Throttle()  # failed logins per client IP
        self.admission = admission
        self.refused: str | None = None  # the 421 for a connection past a limit
        self.admitted = False
        # Inside implicit TLS the channel is encrypted although aiosmtpd never saw
        # STARTTLS: AUTH must be offered there (and where the site allows plain AUTH).
        self._auth_require_tls = not auth_without_starttls
        self.implicit_tls = implicit_tls
        self.handler = handler
        self.data_active = False
        self.authenticating = False
        self.gone = False  # the client went away, and the log has said so
        self.continued: list[str] = []  # the first lines of a multi-line reply
        self.counting: Counter | None = None  # counts the next reply (MAIL, RCPT, DATA)

    async def push(self, status: AnyStr) -> None:
        if self.counting is not None and isinstance(status, str) and _answer(status):
            self.counting.labels(reply=metrics.reply_code(status)).inc()
            self.counting = None
        # The lines of a multi-line reply go out in one write with the last: a client
        # that reads the EHLO reply with one recv (sslscan does) sees all of it.
        if isinstance(status, str) and status[3:4] == "-":
            self.continued.append(status)
            return
        if self.continued and isinstance(status, str):
            whole = "\r\n".join([*self.continued, status])
            self.continued.clear()
            await super().push(whole)
            return
        await super().push(status)

    def _create_session(self) -> SMTPSession:
        return _QuietSession(self.loop)

    @property
    def encrypted(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    @property
    def tls_version(self) -> str | None:
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        return ssl_object.version() if ssl_object is not None else None

    async def smtp_HELO(self, hostname: str) -> None:
        if _unsafe(hostname):
            await self.push(replies.BAD_HELO)
            return
        if not _utf8(hostname):
            await self.push(replies.NOT_UTF8)
            return
        await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        if _unsafe(hostname):
            await self.push(replies.BAD_HELO)
            return
        if not _utf8(hostname):
            await self.push(replies.NOT_UTF8)
            return
        await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.counting = metrics.meters().senders
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        if not _utf8(arg):
            await self.push(replies.NOT_UTF8)
            return
        announced = _SIZE.search(arg or "")
        limit = self.data_size_limit
        if announced and limit and int(announced.group(1)) > limit:
            await self.push(replies.reply(replies.TOO_BIG, limit=limit))
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.counting = metrics.meters().recipients
        if not _utf8(arg):
            if not await self.check_helo_needed() and not await self.check_auth_needed("RCPT"):
                await self.push(replies.NOT_UTF8)
            return
        await super().smtp_RCPT(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if not _utf8(arg):  # aiosmtpd would quote the bytes back in its reply
            await self.push(replies.NOT_UTF8)
            return
        await super().smtp_VRFY(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every address with the email package's header parser (~50 µs);
        # a plain <local@domain> is matched directly, anything else still goes there.
        plain = _PLAIN_ADDRESS.match(arg)
        if plain is None or (
            self.local_part_limit and len(plain.group(1).rpartition("@")[0]) > self.local_part_limit
        ):
            found: tuple[str | None, str | None] = super()._getaddr(arg)
            return found
        return plain.group(1), arg[plain.end() :]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.admission is not None and self.session is not None:
            ip = peer_ip(self.session)
            trusted = self.handler.policy.client(ip, False).trusted
            self.refused = self.admission.enter(ip, trusted)
            self.admitted = self.refused is None

    async def _handle_client(self) -> None:
        assert self.session is not None
        handler = self.handler
        try:
            if self.refused is not None:
                log.info("%s refused at connect: %s", peer_ip(self.session), self.refused)
                await self.push(self.refused)
                if self.transport is not None:
                    self.transport.close()
                return
            refusal = handler.policy.refuse_connection(handler.client(self.session, self.encrypted))
            if refusal:
                log.info("%s refused at connect: blacklisted", peer_ip(self.session))
                await self.push(refusal)
                if self.transport is not None:
                    self.transport.close()
                return
            await super()._handle_client()
        except OSError as error:  # aiosmtpd passes a reset on; a reply to a closed one fails
            if not hangups.client_went_away(error):
                raise
            self._went_away(error)

    # -- a client that goes away --------------------------------------------------------

    @property
    def stage(self) -> str:
        """Where the session is, for the line that says the client went away."""
        session = self.session
        if self._tls_protocol is not None and (session is None or session.ssl is None):
            return "tls-handshake"
        if self.data_active:
            return "data"
        if self.authenticating:
            return "auth"
        if self._tls_protocol is None and (session is None or session.host_name is None):
            return "banner"
        return "command"

    def _went_away(self, error: BaseException | None) -> None:
        if not self.gone:
            self.gone = True
            client = peer_ip(self.session) if self.session else ""
            hangups.went_away(log, client, self.stage, error)

    async def handle_exception(self, error: Exception) -> str:
        # A failed STARTTLS handshake is the client's doing (a TLS error, a reset, or none
        # at all); any other error there is ours, and stays an error.
        cause = error.__cause__ if isinstance(error, TLSSetupException) else error
        handshake = isinstance(error, TLSSetupException) and cause is None
        if handshake or hangups.client_went_away(cause):
            self._went_away(cause)
            return replies.CONNECTION_LOST
        status: str = await super().handle_exception(error)
        return status

    def eof_received(self) -> bool | None:
        self._went_away(None)  # after QUIT the server has closed first: no EOF comes here
        return super().eof_received()

    def connection_lost(self, error: Exception | None) -> None:
        self.handler.record()  # a transaction the client left (QUIT, RSET and gone, reset)
        if hangups.client_went_away(error):
            self._went_away(error)
        if self.admitted and self.admission is not None and self.session is not None:
            self.admitted = False
            self.admission.leave(peer_ip(self.session))
        super().connection_lost(error)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.encrypted:  # RFC 3207: no second TLS layer inside the first
            await self.push(replies.TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> _Missing | bytes:
        try:
            return await super().challenge_auth(challenge, encode_to_b64, log_client_response)
        except ValueError:  # the reader's line limit: the rest is read as a bad command
            await self.push(replies.AUTH_LINE_TOO_LONG)
            return MISSING

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        self.authenticating = True
        try:
            await super().smtp_AUTH(arg)
        finally:
            self.authenticating = False

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # The credentials are checked in `_verify`, off the event loop (argon2id is slow).
        return AuthResult(success=True, handled=False, auth_data=_Pending(auth_data))

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, result: AuthResult) -> AuthResult:
        pending = result.auth_data
        if not isinstance(pending, _Pending):
            return result
        credentials: LoginPassword = pending.credentials
        login = credentials.login.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "replace")
        peer = peer_ip(self.session) if self.session else "?"
        async with self.throttle.turn(peer) as waited:
            account = await checking(self.handler.policy.login, login, password)
            if account is None:
                self.throttle.failed(peer)
        if account is None:
            log.info("%s failed to log in as %r (after waiting %.0f s)", peer, login, waited)
            return AuthResult(success=False, handled=False)
        log.info("%s logged in as %s (%r)", peer, account, login)
        return AuthResult(success=True, handled=False, auth_data=account)

    async def smtp_DATA(self, arg: str) -> None:
        self.counting = metrics.meters().messages
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.data_active = True
        try:
            content = await self._read_data()
            if content is None:
                return
            limit = self.data_size_limit
            if content is TOO_BIG or (limit and len(content) > limit):
                await self.push(replies.reply(replies.TOO_BIG, limit=limit))
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            self.envelope.content = content
            self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(status)
        finally:
            self.data_active = False

    async def _read_data(self) -> bytes | None:
        """The message up to `CRLF.CRLF`, dot-unstuffed; None if the client went away,
        `TOO_BIG` if it went past the size limit.

        Read in large chunks: the end of data is searched for in the bytes that arrived,
        never line by line. A message over the size limit is drained, not kept.
        """
        limit = self.data_size_limit or 0
        buffer = bytearray(b"\r\n")  # the CRLF that ended the DATA command line
        reader: Any = self._reader
        line_limit = reader._limit
        # The reader pauses the socket whenever it holds twice its limit, which for
        # commands is one line: raise it while the message streams in.
        reader._limit = CHUNK
        try:
            return await self._read_until_end(buffer, limit)
        finally:
            reader._limit = line_limit
            buffer.clear()  # a client gone mid-DATA leaves nothing held (the task may live on)

    async def _read_until_end(self, buffer: bytearray, limit: int) -> bytes | None:
        scanned = 0
        dropped = 0
        while True:
            end = buffer.find(END_OF_DATA, scanned)
            if end >= 0:
                break
            scanned = max(len(buffer) - len(END_OF_DATA) + 1, 0)
            if limit and len(buffer) + dropped > limit + CHUNK:
                keep = len(END_OF_DATA)
                dropped += len(buffer) - keep
                del buffer[:-keep]
                scanned = 0
            chunk = await self._reader.read(CHUNK)
            if not chunk:
                return None
            self._reset_timeout()  # the time-out is per block of data, not for the message
            buffer += chunk
        rest = bytes(buffer[end + len(END_OF_DATA) :])
        if rest:
            self._reader._buffer[:0] = rest  # type: ignore[attr-defined]  # pipelined commands
        if dropped:
            return TOO_BIG
        del buffer[end + 2 :]  # the message, after the CRLF that ended the DATA line
        if b"\r\n." in buffer:  # dot-stuffed lines (RFC 5321 4.5.2)
            buffer = buffer.replace(b"\r\n.", b"\r\n")
        return bytes(memoryview(buffer)[2:])


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"\s*<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")
_SIZE = re.compile(r"(?i)(?:^|\s)SIZE=(\d+)(?:\s|$)")


def _answer(status: str) -> bool:
    """Whether a reply line answers a command: its last line, and not DATA's go-ahead."""
    return status[3:4] != "-" and not status.startswith("354")


def _bad_address(address: str) -> str:
    return replies.reply(replies.BAD_ADDRESS, address=address.encode("unicode_escape").decode())


def _utf8(text: str | None) -> bool:
    """Whether a command's argument was valid UTF-8 (aiosmtpd decodes with surrogateescape)."""
    return text is None or is_utf8(text)


def _in_a_labels(address: str) -> str:
    """`user@bücher.example` as `user@xn--bcher-kva.example`, for DNS look-ups."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{canonical_domain(domain)}" if at and not domain.isascii() else address


def _unsafe(text: str) -> bool:
    """Control characters that would end or forge a header line where the text is copied."""
    return any(character in text for character in "\r\n\x00")


def peer_ip(session: SMTPSession) -> str:
    peer: Any = session.peer
    return str(peer[0]) if peer else ""


@dataclass(frozen=True)
class _Pending:
    credentials: LoginPassword
