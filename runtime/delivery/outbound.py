"""The SMTP module's client: one connection carries every message waiting for a queue.

For one logical queue (a domain, a relay host or an IP literal) the hosts from
`runtime.dns.mx` are tried in order until one takes the connection. Over it, each
message is one transaction with all its recipients of this queue (MAIL, one RCPT
each, DATA), so a reply can fail one recipient and not the others. STARTTLS is
used whenever the host offers it (without checking its certificate, as
opportunistic TLS does), unless the domain needs more (`runtime.decide.tlsneed`:
DANE, MTA-STS, the site's `require_tls`): then each host is checked as its
`HostCheck` says (a certificate verified for the MX name, or a chain matching the
host's TLSA records), and a host that fails the check, or does not offer STARTTLS,
is passed over; when none is left the recipients wait (4.7.x). Each TLS session to a
domain is counted for TLS-RPT through `Settings.observe`.

`runtime.delivery.smtpclient` moves the lines; this module decides what to send and
what each reply means for each recipient. When the server offers PIPELINING (RFC 2920),
MAIL, every RCPT and DATA go in one write, and a message's data goes with the next
message's commands: one write and one wait a message; otherwise one command at a time.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import dns.asyncresolver

from mailplan.runtime.decide import dane, tlsneed, tlsrpt
from mailplan.runtime.decide.tlsneed import HostCheck, Need
from mailplan.runtime.delivery.smtpclient import SmtpClient, SmtpLost, SmtpReply, data_block
from mailplan.runtime.delivery.smtpclient import address as quoted
from mailplan.runtime.dns import mx

log = logging.getLogger("mailplan.smtp-out")

Kind = Literal["delivered", "temporary", "permanent"]
MAX_PER_CONNECTION = 100
IDLE = 2.0  # seconds a connection is kept open for the next message to its server
KEEP_DESTINATIONS = 1.0  # seconds a queue's hosts and TLS need serve the next batches
DATA_DONE_TIMEOUT = 600.0  # the reply after the data (RFC 5321 4.5.3.2.6: 10 minutes)


@dataclass(frozen=True)
class Parcel:
    """One message to send to some of its recipients."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    message: bytes


@dataclass(frozen=True)
class Fate:
    """What became of one recipient of one message."""

    queue_id: str
    recipient: str
    kind: Kind
    status: str
    text: str
    remote: str | None = None
    smtp: bool = False  # `text` is the remote server's reply
    # the remote host's IP address, once connected: for the log, not part of the outcome
    address: str | None = field(default=None, compare=False)

    @property
    def final(self) -> bool:
        return self.kind != "temporary"


class Connections:
    """Connections kept open for a moment after use, by address, as Postfix's connection
    cache does: the next message for the same server (of any domain) skips connect,
    EHLO and STARTTLS. One worker uses a connection at a time.

    Each connection has a grade: `plain`, `tls` (encrypted, the certificate unchecked)
    or `verified:NAME` (the certificate checked for the MX host NAME); a connection is
    only taken by a delivery that the grade satisfies (`_GRADES`)."""

    def __init__(self, idle: float = IDLE) -> None:
        self.idle = idle
        self._free: dict[tuple[str, int], list[tuple[float, SmtpClient, str]]] = {}

    def take(self, address: str, port: int, wanted: str) -> tuple[SmtpClient, str] | None:
        """An idle connection to address:port whose grade satisfies `wanted` (`plain`
        takes any, `tls` any encrypted one, `verified:NAME` only that), or None."""
        free = self._free.get((address, port), [])
        now = time.monotonic()
        for index in range(len(free) - 1, -1, -1):
            until, client, grade = free[index]
            if until > now and client.is_connected and _satisfies(grade, wanted):
                del free[index]
                return client, grade
        return None

    def give(self, address: str, port: int, client: SmtpClient, grade: str) -> None:
        until = time.monotonic() + self.idle
        self._free.setdefault((address, port), []).append((until, client, grade))

    async def sweep(self, everything: bool = False) -> None:
        """Say QUIT on the connections idle for too long (or on all of them)."""
        now = time.monotonic()
        expired = []
        for key, free in list(self._free.items()):  # no await here: `take` must not interleave
            keep = [entry for entry in free if entry[0] > now and not everything]
            expired += [entry[1] for entry in free if entry not in keep]
            if keep:
                self._free[key] = keep
            else:
                del self._free[key]
        for client in expired:  # out of the cache already: nobody else can take them
            await _quit(client)


async def _quit(client: SmtpClient) -> None:
    try:
        await client.quit(timeout=5)
    except (SmtpLost, OSError):
        client.close()


def _satisfies(grade: str, wanted: str) -> bool:
    if wanted == "plain":
        return True
    if wanted == "tls":
        return grade != "plain"
    return grade == wanted


class Destinations:
    """The hosts and the TLS need found for a queue, kept for a moment, so that a stream
    of small batches to one domain asks DNS (and for its MTA-STS policy) once a second
    rather than once a batch. A failed look-up or policy fetch is not kept; the delivery
    starts a new one for each plan (what the plan says of TLS is in the need)."""

    def __init__(self, keep: float = KEEP_DESTINATIONS) -> None:
        self.keep = keep
        self._found: dict[tuple[str, str, bool], tuple[float, list[mx.Host], Need]] = {}

    def get(self, key: tuple[str, str, bool]) -> tuple[list[mx.Host], Need] | None:
        found = self._found.get(key)
        if found is None or found[0] < time.monotonic():
            return None
        return found[1], found[2]

    def put(self, key: tuple[str, str, bool], hosts: list[mx.Host], needed: Need) -> None:
        now = time.monotonic()
        if len(self._found) > 10_000:  # many domains: the expired ones go
            self._found = {k: v for k, v in self._found.items() if v[0] >= now}
        self._found[key] = (now + self.keep, hosts, needed)


@dataclass(frozen=True)
class Settings:
    helo: str
    port: int = 25
    require_tls: bool = False  # a certificate verified for the host's name (when no `policy`)
    timeout: float = 60.0
    connections: Connections | None = None  # keep connections open between batches
    # What a domain needs, once its MX hosts are known (runtime/delivery/tlspolicy.py)
    policy: Callable[[str, list[mx.Host]], Awaitable[Need]] | None = None
    trust: ssl.SSLContext | None = None  # verifies certificates (the system's CA store when None)
    observe: Callable[[tlsrpt.TlsSession], None] | None = None  # TLS-RPT counts
    destinations: Destinations | None = None  # what the last batches found, for a moment


class _Refused(Exception):
    """The host would not take the connection (connect, greeting, EHLO, TLS)."""

    local = ""  # this end's address, once connected (TLS-RPT's sending-mta-ip)


class _TlsFailed(_Refused):
    """STARTTLS was offered but the handshake failed, or the host's certificate failed its
    check, or TLS is required and not offered: the status and the TLS-RPT result type."""

    def __init__(
        self, reason: str, status: str = "4.7.5", result: str = "validation-failure"
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.result = result
        self.handshake = result not in ("starttls-not-supported",)


def _status(code: int, text: str) -> str:
    """The enhanced status in a reply, or one made from its basic code."""
    first = text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(part.isdigit() for part in parts) and first[0] == str(code)[0]:
        return first
    return f"{code // 100}.0.0"


def _outcome(parcel: Parcel, recipient: str, code: int, text: str, host: str) -> Fate:
    kind: Kind = "delivered" if code < 400 else "temporary" if code < 500 else "permanent"
    reply = f"{code} {' '.join(text.split())}"
    return Fate(parcel.queue_id, recipient, kind, _status(code, text), reply, host, True)


def _everyone(
    parcels: list[Parcel], status: str, text: str, remote: str | None = None
) -> list[Fate]:
    kind: Kind = "permanent" if status.startswith("5") else "temporary"
    return [
        Fate(parcel.queue_id, recipient, kind, status, text, remote)
        for parcel in parcels
        for recipient in parcel.recipients
    ]


_NO_VERIFY = ssl.create_default_context()
_NO_VERIFY.check_hostname = False
_NO_VERIFY.verify_mode = ssl.CERT_NONE
_SYSTEM: ssl.SSLContext | None = None  # the system's CA store, made when first needed

# OpenSSL's verification errors (X509_V_ERR_*) → TLS-RPT result types (RFC 8460 §4.3)
_RESULTS = {
    62: "certificate-host-mismatch",
    10: "certificate-expired",
    2: "certificate-not-trusted",
    18: "certificate-not-trusted",
    19: "certificate-not-trusted",
    20: "certificate-not-trusted",
    21: "certificate-not-trusted",
}


def _verifying(settings: Settings) -> ssl.SSLContext:
    global _SYSTEM
    if settings.trust is not None:
        return settings.trust
    if _SYSTEM is None:
        _SYSTEM = ssl.create_default_context()
    return _SYSTEM


async def deliver(
    queue: str,
    domain: str,
    parcels: list[Parcel],
    settings: Settings,
    resolve: dns.asyncresolver.Resolver,
) -> list[Fate]:
    """Send `parcels` (all for the SMTP queue `queue` of `domain`); an outcome per recipient."""
    try:
        hosts, needed = await _destinations(queue, domain, settings, resolve)
    except mx.LookupFailed as failure:
        return _everyone(parcels, failure.status, failure.reason)
    if needed.failure:  # the MTA-STS policy could not be fetched: reported once per batch
        _observe(settings, needed, False, needed.failure, "", "")
    outcomes: list[Fate] = []
    left = parcels
    last, status = "no host took the connection", "4.4.1"
    for host in hosts:
        check = tlsneed.host_check(needed, host.name)
        if check.check == "skip":
            last, status = f"{host.name}: {check.reason} ({needed.reason})", "4.7.5"
            log.info("%s: %s", queue, last)
            _observe(settings, needed, False, "validation-failure", host.name, "")
            continue
        for address in host.addresses:
            done, left, trouble = await _address(host.name, address, left, settings, needed, check)
            outcomes += done
            if trouble is not None:
                status, last = trouble
                log.info("%s: %s", queue, last)
    if left and status.startswith("4.7"):
        last = f"{last}; TLS policy: {needed.reason}"
    return outcomes + _everyone(left, status, last)


async def _destinations(
    queue: str, domain: str, settings: Settings, resolve: dns.asyncresolver.Resolver
) -> tuple[list[mx.Host], Need]:
    """The hosts to try and what the domain needs of TLS (from `settings.destinations`
    when a batch just found them); mx.LookupFailed when there are none."""
    memo, key = settings.destinations, (queue, domain, settings.require_tls)
    found = memo.get(key) if memo is not None else None
    if found is not None:
        return found
    hosts = await mx.destinations(queue, domain, resolve)
    if settings.policy is not None and queue == domain:
        needed = await settings.policy(domain, hosts)
    else:  # a relay host or an IP literal: no policy of the domain's applies to it
        needed = tlsneed.plain(domain, settings.require_tls)
    if memo is not None and not needed.failure:
        memo.put(key, hosts, needed)
    return hosts, needed


async def _address(
    name: str,
    address: str,
    parcels: list[Parcel],
    settings: Settings,
    needed: Need,
    check: HostCheck,
) -> tuple[list[Fate], list[Parcel], tuple[str, str] | None]:
    """Deliver what it can over connections to one address: the outcomes, the parcels
    left, and the (status, reason) of the last failure, if any."""
    outcomes: list[Fate] = []
    left = parcels
    trouble: tuple[str, str] | None = None
    attempt, tls = check, True
    while left:  # a connection carries at most MAX_PER_CONNECTION messages
        try:
            done, reused, grade = await _session(name, address, left, settings, tls, attempt)
        except _TlsFailed as refused:
            trouble = refused.status, f"{name}[{address}]: {refused}"
            _observe(settings, needed, False, refused.result, name, address, refused.local)
            if attempt.check == "pkix-testing":  # MTA-STS testing: reported, then delivered
                attempt, tls = HostCheck("opportunistic"), refused.handshake
                continue
            if attempt.check != "opportunistic" or not tls:
                break
            tls = False  # opportunistic TLS falls back to clear text (RFC 7435)
            continue
        except _Refused as refused:
            trouble = "4.4.1", f"{name}[{address}]: {refused}"
            break
        if not done:
            if reused:
                continue  # a kept connection the server had closed: a fresh one
            trouble = "4.4.2", f"{name}[{address}]: the connection ended"
            break
        if not reused and attempt is check and tls:  # a new session, counted once
            grade, _, local = grade.partition(" ")
            result = "" if grade != "plain" else "starttls-not-supported"
            _observe(settings, needed, not result, result, name, address, local)
        outcomes.extend(replace(outcome, address=address) for outcome in done)
        left = _unfinished(left, {(o.queue_id, o.recipient) for o in done})
    return outcomes, left, trouble


def _observe(
    settings: Settings,
    needed: Need,
    success: bool,
    result: str,
    host: str,
    address: str,
    local: str = "",
) -> None:
    if settings.observe is not None:
        settings.observe(tlsrpt.TlsSession(needed, success, result, local, host, address))


def _local(client: SmtpClient) -> str:
    """The address of this end of a connection ('' when not connected)."""
    transport = client.transport
    found = transport.get_extra_info("sockname") if transport is not None else None
    return str(found[0]) if found else ""


def _unfinished(parcels: list[Parcel], finished: set[tuple[str, str]]) -> list[Parcel]:
    return [
        Parcel(p.queue_id, p.sender, rest, p.message)
        for p in parcels
        if (rest := tuple(r for r in p.recipients if (p.queue_id, r) not in finished))
    ]


def _wanted(name: str, check: HostCheck) -> str:
    """The grade of kept connection a check takes (see `Connections`)."""
    if check.check in ("pkix", "dane", "pkix-testing"):
        return f"verified:{name}"  # pkix-testing: each unverified session is checked, counted
    if check.check == "encrypt":
        return "tls"
    return "plain"


async def _session(
    name: str,
    address: str,
    parcels: list[Parcel],
    settings: Settings,
    tls: bool,
    check: HostCheck,
) -> tuple[list[Fate], bool, str]:
    """One connection to one address; outcomes for the parcels it finished before it ended.

        Parcels it did not get to (the connection dropped) are left for the next host.
        STARTTLS is used when offered, unless `tls` is false (a fallback after it failed),
        and the host is checked as `check` says. Also says whether the connection was a kept
    one, and its grade (with this end's address after a space, for a new one).
    """
    cache = settings.connections
    kept = cache.take(address, settings.port, _wanted(name, check)) if cache else None
    if kept is not None:
        client, grade = kept
    else:
        client, grade = await _open(name, address, settings, tls, check)
    local = _local(client) if kept is None else ""  # this end's address, for TLS-RPT
    outcomes = await _transactions(client, parcels, name)
    if client.is_connected:
        await _put_back(client, address, settings, grade)
    return outcomes, kept is not None, f"{grade} {local}".rstrip()


async def _open(
    name: str, address: str, settings: Settings, tls: bool, check: HostCheck
) -> tuple[SmtpClient, str]:
    """A new connection to `address`, greeted, encrypted when offered and `tls`, and checked.

    Raises _Refused (or _TlsFailed) with the connection closed when the host will not do.
    """
    client = SmtpClient(address, settings.port, settings.helo, settings.timeout)
    try:
        await client.connect()
        await client.hello()
        grade = await _start_tls(client, name, settings, tls, check)
    except _Refused as refused:
        refused.local = _local(client)
        client.close()
        raise
    except (SmtpLost, OSError, ssl.SSLError) as exc:
        client.close()
        raise _Refused(str(exc) or type(exc).__name__) from None
    return client, grade


async def _start_tls(
    client: SmtpClient, name: str, settings: Settings, tls: bool, check: HostCheck
) -> str:
    """STARTTLS when the host offers it and `tls`, checked as `check` says; the grade of
    the connection now (see `Connections`)."""
    strict = check.check in ("pkix", "dane", "encrypt")
    if not (tls and client.supports_extension("starttls")):
        if strict or check.check == "pkix-testing":
            raise _TlsFailed(
                "TLS is required, but was not offered", "4.7.4", "starttls-not-supported"
            )
        return "plain"
    verify = check.check in ("pkix", "pkix-testing")
    context = _verifying(settings) if verify else _NO_VERIFY
    # an IP literal's certificate is checked for the address (an IP subjectAltName)
    server_name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        await client.starttls(context, server_name)
    except ssl.SSLCertVerificationError as exc:
        result = _RESULTS.get(exc.verify_code, "validation-failure")
        raise _TlsFailed(
            f"certificate not verified for {name}: {exc.verify_message}", "4.7.5", result
        ) from None
    except (SmtpLost, OSError, ssl.SSLError) as exc:
        raise _TlsFailed(f"TLS failed: {exc or type(exc).__name__}") from None
    if check.check == "dane":
        mismatch = dane.check(
            _chain(client), check.records, name, datetime.datetime.now(datetime.UTC)
        )
        if mismatch is not None:
            raise _TlsFailed(f"DANE: {mismatch.reason}", "4.7.5", mismatch.result)
    if check.check == "pkix-testing" and check.reason:
        raise _TlsFailed(check.reason, "4.7.5", "validation-failure")
    try:
        await client.hello()
    except (SmtpLost, OSError, ssl.SSLError) as exc:
        raise _TlsFailed(f"TLS failed: {exc or type(exc).__name__}") from None
    return f"verified:{name}" if check.check in ("pkix", "dane") else "tls"


def _chain(client: SmtpClient) -> list[bytes]:
    """The certificates the server presented (DER), its own first."""
    transport = client.transport
    found = transport.get_extra_info("ssl_object") if transport is not None else None
    if found is None:
        return []
    public = getattr(found, "get_unverified_chain", None)  # Python 3.13
    if public is not None:
        return [bytes(certificate) for certificate in public() or []]
    inner = getattr(found, "_sslobj", None)  # Python 3.10 to 3.12: the same, not yet public
    raw = getattr(inner, "get_unverified_chain", None)
    if raw is not None:
        return [certificate.public_bytes(2) for certificate in raw() or []]  # 2: DER
    leaf = found.getpeercert(binary_form=True)
    return [leaf] if leaf else []


async def _put_back(client: SmtpClient, address: str, settings: Settings, grade: str) -> None:
    """Keep a connection still open for the next batch, or say QUIT when none are kept."""
    if settings.connections is not None:
        settings.connections.give(address, settings.port, client, grade)
    else:
        await _quit(client)


async def _transactions(client: SmtpClient, parcels: list[Parcel], host: str) -> list[Fate]:
    """Up to MAX_PER_CONNECTION transactions; those finished before the connection ended.

    With PIPELINING, each message's commands go in one write and its data in another. The
    data is never sent with the next message's commands (RFC 2920 would allow it): the
    reply after the data is awaited first, so that a connection lost just then cannot
    leave a message delivered here and sent again to the next host."""
    outcomes: list[Fate] = []
    pipelining = client.supports_extension("pipelining")
    try:
        for parcel in parcels[:MAX_PER_CONNECTION]:
            refused = _unsendable(client, parcel, host)
            if refused:
                outcomes += refused
            elif pipelining:
                await _pipelined(client, parcel, host, outcomes)
            else:
                await _stepwise(client, parcel, host, outcomes)
    except (SmtpLost, OSError) as exc:
        log.info("%s: connection ended: %s", host, exc)
        client.close()
    return outcomes


def _unsendable(client: SmtpClient, parcel: Parcel, host: str) -> list[Fate]:
    """Outcomes for a message this server cannot take as it is (none when it can)."""
    international = not all(a.isascii() for a in (parcel.sender, *parcel.recipients))
    if international and not client.supports_extension("smtputf8"):
        reason = "a non-ASCII address, and the server does not offer SMTPUTF8"
        return [
            Fate(parcel.queue_id, r, "permanent", "5.6.7", reason, host) for r in parcel.recipients
        ]
    try:
        for path in (parcel.sender, *parcel.recipients):
            quoted(path)
    except ValueError as exc:
        return [
            Fate(parcel.queue_id, r, "permanent", "5.1.7", str(exc), host)
            for r in parcel.recipients
        ]
    return []


def _commands(client: SmtpClient, parcel: Parcel) -> tuple[bytes, list[bytes]]:
    """MAIL FROM with the parameters the server offers and the message needs, and one
    RCPT TO per recipient."""
    international = not all(a.isascii() for a in (parcel.sender, *parcel.recipients))
    encoding = "utf-8" if international else "ascii"
    options = ""
    if client.supports_extension("size"):
        options += f" SIZE={len(parcel.message)}"
    if client.supports_extension("8bitmime") and not parcel.message.isascii():
        options += " BODY=8BITMIME"
    if international:
        options += " SMTPUTF8"
    mail = f"MAIL FROM:{quoted(parcel.sender)}{options}\r\n".encode(encoding)
    return mail, [f"RCPT TO:{quoted(r)}\r\n".encode(encoding) for r in parcel.recipients]


async def _pipelined(client: SmtpClient, parcel: Parcel, host: str, outcomes: list[Fate]) -> None:
    """MAIL, the RCPTs and DATA in one write, their replies read together; then the data."""
    mail, rcpts = _commands(client, parcel)
    replies = await client.exchange(b"".join((mail, *rcpts, b"DATA\r\n")), len(rcpts) + 2)
    mail_reply, *rcpt_replies, data_reply = replies
    if mail_reply.code // 100 != 2:
        _raise_if_gone(mail_reply)
        outcomes += [_refusal(parcel, r, mail_reply, host) for r in parcel.recipients]
        await _abandon(client, data_reply)
        return
    accepted = _recipients(parcel, rcpt_replies, host, outcomes)
    if not accepted:
        await _abandon(client, data_reply)
        return
    await _data(client, parcel, accepted, data_reply, host, outcomes)


async def _stepwise(client: SmtpClient, parcel: Parcel, host: str, outcomes: list[Fate]) -> None:
    """MAIL, RCPT for each recipient, then DATA for those accepted, each waiting for its
    reply (a server that does not offer PIPELINING)."""
    mail, rcpts = _commands(client, parcel)
    (reply,) = await client.exchange(mail, 1)
    if reply.code // 100 != 2:
        _raise_if_gone(reply)
        outcomes += [_refusal(parcel, r, reply, host) for r in parcel.recipients]
        await _reset(client)
        return
    replies = [(await client.exchange(rcpt, 1))[0] for rcpt in rcpts]
    accepted = _recipients(parcel, replies, host, outcomes)
    if not accepted:
        await _reset(client)
        return
    (reply,) = await client.exchange(b"DATA\r\n", 1)
    await _data(client, parcel, accepted, reply, host, outcomes)


async def _data(
    client: SmtpClient,
    parcel: Parcel,
    accepted: list[str],
    data_reply: SmtpReply,
    host: str,
    outcomes: list[Fate],
) -> None:
    """After DATA's reply: the message when it is 354; the server's one reply to it (or
    to DATA) is the outcome for every accepted recipient."""
    if data_reply.code != 354:
        _raise_if_gone(data_reply)
        outcomes += [_refusal(parcel, r, data_reply, host) for r in accepted]
        # A server may keep the envelope after refusing DATA; the next MAIL on this
        # connection must not join it (a nested MAIL, or the next message's recipients
        # added to this one's)
        await _reset(client)
        return
    (reply,) = await client.exchange(data_block(parcel.message), 1, DATA_DONE_TIMEOUT)
    _raise_if_gone(reply)
    outcomes += [_outcome(parcel, r, reply.code, reply.text, host) for r in accepted]


def _recipients(
    parcel: Parcel, replies: list[SmtpReply], host: str, outcomes: list[Fate]
) -> list[str]:
    """The recipients whose RCPT was accepted; an outcome in `outcomes` for each refused
    one. A 421 among them ends the connection (raises SmtpLost)."""
    accepted: list[str] = []
    for recipient, reply in zip(parcel.recipients, replies, strict=True):
        if reply.code // 100 == 2:
            accepted.append(recipient)
            continue
        _raise_if_gone(reply)
        outcome = _refusal(parcel, recipient, reply, host)
        if reply.code == 552:  # at RCPT: "too many recipients", for now (RFC 5321 4.5.3.1.10)
            outcome = replace(outcome, kind="temporary", status="4" + outcome.status[1:])
        outcomes.append(outcome)
    return accepted


def _refusal(parcel: Parcel, recipient: str, reply: SmtpReply, host: str) -> Fate:
    """What a refusal means for one recipient; a reply that is no refusal where one was
    due (a 2xx or 3xx to DATA other than 354) leaves the recipient for later."""
    if reply.code < 400:
        text = f"{reply.code} {' '.join(reply.text.split())}"
        return Fate(parcel.queue_id, recipient, "temporary", "4.5.0", text, host, True)
    return _outcome(parcel, recipient, reply.code, reply.text, host)


async def _abandon(client: SmtpClient, data_reply: SmtpReply) -> None:
    """End a pipelined transaction that has no recipient: a server that said 354 to its
    DATA gets an empty message, which it must refuse (RFC 2920 3.1); then RSET."""
    if data_reply.code == 354:
        await client.exchange(b".\r\n", 1, DATA_DONE_TIMEOUT)
    else:
        _raise_if_gone(data_reply)
    await _reset(client)


async def _reset(client: SmtpClient) -> None:
    (reply,) = await client.exchange(b"RSET\r\n", 1)
    if reply.code != 250:
        raise SmtpLost(f"RSET: {reply.code} {' '.join(reply.text.split())}")


def _raise_if_gone(reply: SmtpReply) -> None:
    """A 421 closes the connection: what is left must go to the next host, or wait."""
    if reply.code == 421:
        raise SmtpLost(f"{reply.code} {' '.join(reply.text.split())}")
