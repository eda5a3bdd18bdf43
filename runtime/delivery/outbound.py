"""The SMTP module's client: one connection carries every message waiting for a queue.

For one logical queue (a domain, a relay host or an IP literal) the hosts from
`runtime.dns.mx` are tried in order until one takes the connection. Over it, each
message is one transaction with all its recipients of this queue (MAIL, one RCPT
each, DATA), so a reply can fail one recipient and not the others. STARTTLS is
used whenever the host offers it (without checking its certificate, as
opportunistic TLS does); a site can require it for a domain, and then a host
that does not offer it, or whose TLS fails, is a temporary failure.

aiosmtplib speaks the protocol; this module decides what each reply means for
each recipient.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import aiosmtplib
import dns.asyncresolver

from mailplan.runtime.dns import mx

log = logging.getLogger("mailplan.smtp-out")

Kind = Literal["delivered", "temporary", "permanent"]
MAX_PER_CONNECTION = 100
IDLE = 2.0  # seconds a connection is kept open for the next message to its server
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
    EHLO and STARTTLS. One worker uses a connection at a time."""

    def __init__(self, idle: float = IDLE) -> None:
        self.idle = idle
        self._free: dict[tuple[str, int], list[tuple[float, aiosmtplib.SMTP, bool]]] = {}

    def take(self, address: str, port: int, need_tls: bool) -> tuple[aiosmtplib.SMTP, bool] | None:
        """An idle connection to address:port (encrypted when `need_tls`), or None."""
        free = self._free.get((address, port), [])
        now = time.monotonic()
        for index in range(len(free) - 1, -1, -1):
            until, client, encrypted = free[index]
            if until > now and client.is_connected and (encrypted or not need_tls):
                del free[index]
                return client, encrypted
        return None

    def give(self, address: str, port: int, client: aiosmtplib.SMTP, encrypted: bool) -> None:
        until = time.monotonic() + self.idle
        self._free.setdefault((address, port), []).append((until, client, encrypted))

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


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit(timeout=5)
    except (aiosmtplib.SMTPException, OSError):
        client.close()


@dataclass(frozen=True)
class Settings:
    helo: str
    port: int = 25
    require_tls: bool = False
    timeout: float = 60.0
    connections: Connections | None = None  # keep connections open between batches


class _Refused(Exception):
    """The host would not take the connection (connect, greeting, EHLO, TLS)."""


class _TlsFailed(_Refused):
    """STARTTLS was offered but the handshake failed, or TLS is required and not offered."""


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


async def deliver(
    queue: str,
    domain: str,
    parcels: list[Parcel],
    settings: Settings,
    resolve: dns.asyncresolver.Resolver,
) -> list[Fate]:
    """Send `parcels` (all for the SMTP queue `queue` of `domain`); an outcome per recipient."""
    try:
        hosts = await mx.destinations(queue, domain, resolve)
    except mx.LookupFailed as failure:
        return _everyone(parcels, failure.status, failure.reason)
    outcomes: list[Fate] = []
    left = parcels
    last, status = "no host took the connection", "4.4.1"
    for host in hosts:
        for address in host.addresses:
            tls = True
            while left:  # a connection carries at most MAX_PER_CONNECTION messages
                try:
                    done, reused = await _session(host.name, address, left, settings, tls)
                except _TlsFailed as refused:
                    last, status = f"{host.name}[{address}]: {refused}", "4.7.4"
                    log.info("%s: %s", queue, last)
                    if settings.require_tls or not tls:
                        break
                    tls = False  # opportunistic TLS falls back to clear text (RFC 7435)
                    continue
                except _Refused as refused:
                    last, status = f"{host.name}[{address}]: {refused}", "4.4.1"
                    log.info("%s: %s", queue, last)
                    break
                if not done:
                    if reused:
                        continue  # a kept connection the server had closed: a fresh one
                    last, status = f"{host.name}[{address}]: the connection ended", "4.4.2"
                    break
                outcomes.extend(replace(outcome, address=address) for outcome in done)
                left = _unfinished(left, {(o.queue_id, o.recipient) for o in done})
    return outcomes + _everyone(left, status, last)


def _unfinished(parcels: list[Parcel], finished: set[tuple[str, str]]) -> list[Parcel]:
    return [
        Parcel(p.queue_id, p.sender, rest, p.message)
        for p in parcels
        if (rest := tuple(r for r in p.recipients if (p.queue_id, r) not in finished))
    ]


async def _session(
    name: str, address: str, parcels: list[Parcel], settings: Settings, tls: bool
) -> tuple[list[Fate], bool]:
    """One connection to one address; outcomes for the parcels it finished before it ended.

    Parcels it did not get to (the connection dropped) are left for the next host.
    STARTTLS is used when offered, unless `tls` is false (a fallback after it failed).
    Also says whether the connection was a kept one.
    """
    cache = settings.connections
    kept = cache.take(address, settings.port, settings.require_tls) if cache else None
    if kept is not None:
        client, encrypted = kept
    else:
        client, encrypted = await _open(name, address, settings, tls)
    outcomes = await _transactions(client, parcels, name)
    if client.is_connected:
        await _put_back(client, address, settings, encrypted)
    return outcomes, kept is not None


async def _open(
    name: str, address: str, settings: Settings, tls: bool
) -> tuple[aiosmtplib.SMTP, bool]:
    """A new connection to `address`, greeted, and encrypted when offered and `tls`.

    Raises _Refused (or _TlsFailed) with the connection closed when the host will not do.
    """
    client = aiosmtplib.SMTP(
        hostname=address,
        port=settings.port,
        local_hostname=settings.helo,
        timeout=settings.timeout,
        start_tls=False,
    )
    try:
        await client.connect()
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()
        encrypted = await _start_tls(client, name, settings.require_tls, tls)
    except _Refused:
        client.close()
        raise
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        client.close()
        raise _Refused(str(exc) or type(exc).__name__) from None
    return client, encrypted


async def _start_tls(client: aiosmtplib.SMTP, name: str, required: bool, tls: bool) -> bool:
    """STARTTLS when the host offers it and `tls`; whether the connection is now encrypted."""
    if tls and client.supports_extension("starttls"):
        try:
            await client.starttls(tls_context=_NO_VERIFY, server_hostname=name)
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise _TlsFailed(f"TLS failed: {exc or type(exc).__name__}") from None
        return True
    if required:
        raise _TlsFailed("TLS is required, but was not offered")
    return False


async def _put_back(
    client: aiosmtplib.SMTP, address: str, settings: Settings, encrypted: bool
) -> None:
    """Keep a connection still open for the next batch, or say QUIT when none are kept."""
    if settings.connections is not None:
        settings.connections.give(address, settings.port, client, encrypted)
    else:
        await _quit(client)


async def _transactions(client: aiosmtplib.SMTP, parcels: list[Parcel], host: str) -> list[Fate]:
    """Up to MAX_PER_CONNECTION transactions; those finished before the connection ended."""
    outcomes: list[Fate] = []
    try:
        for parcel in parcels[:MAX_PER_CONNECTION]:
            outcomes.extend(await _transaction(client, parcel, host))
    except (aiosmtplib.SMTPException, OSError) as exc:
        log.info("%s: connection ended: %s", host, exc)
        client.close()
    return outcomes


async def _transaction(client: aiosmtplib.SMTP, parcel: Parcel, host: str) -> list[Fate]:
    """MAIL, RCPT for each recipient, then DATA for those accepted: an outcome for each."""
    international = not all(a.isascii() for a in (parcel.sender, *parcel.recipients))
    if international and not client.supports_extension("smtputf8"):
        reason = "a non-ASCII address, and the server does not offer SMTPUTF8"
        return [
            Fate(parcel.queue_id, r, "permanent", "5.6.7", reason, host) for r in parcel.recipients
        ]
    encoding = "utf-8" if international else "ascii"
    options = _mail_options(client, parcel, international)
    try:
        await client.mail(parcel.sender, options=options, encoding=encoding)
    except aiosmtplib.SMTPResponseException as refused:
        await _reset(client, refused)
        return [_outcome(parcel, r, refused.code, refused.message, host) for r in parcel.recipients]
    accepted, outcomes = await _recipients(client, parcel, encoding, host)
    if not accepted:
        await client.rset()
        return outcomes
    return outcomes + await _data(client, parcel, accepted, host)


def _mail_options(client: aiosmtplib.SMTP, parcel: Parcel, international: bool) -> list[str]:
    """The MAIL FROM parameters the server offers and the message needs."""
    options = []
    if client.supports_extension("size"):
        options.append(f"SIZE={len(parcel.message)}")
    if client.supports_extension("8bitmime") and not parcel.message.isascii():
        options.append("BODY=8BITMIME")
    if international:
        options.append("SMTPUTF8")
    return options


async def _recipients(
    client: aiosmtplib.SMTP, parcel: Parcel, encoding: str, host: str
) -> tuple[list[str], list[Fate]]:
    """One RCPT each: the recipients accepted, and outcomes for those refused."""
    accepted: list[str] = []
    outcomes: list[Fate] = []
    for recipient in parcel.recipients:
        try:
            await client.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPResponseException as refused:
            _raise_if_gone(refused)
            outcome = _outcome(parcel, recipient, refused.code, refused.message, host)
            if refused.code == 552:  # at RCPT: "too many recipients", for now (RFC 5321 4.5.3.1.10)
                outcome = replace(outcome, kind="temporary", status="4" + outcome.status[1:])
            outcomes.append(outcome)
            continue
        accepted.append(recipient)
    return accepted, outcomes


async def _data(
    client: aiosmtplib.SMTP, parcel: Parcel, accepted: list[str], host: str
) -> list[Fate]:
    """DATA: the server's one reply is the outcome for every accepted recipient."""
    try:
        reply = await client.data(parcel.message, timeout=DATA_DONE_TIMEOUT)
    except aiosmtplib.SMTPResponseException as refused:
        _raise_if_gone(refused)
        return [_outcome(parcel, r, refused.code, refused.message, host) for r in accepted]
    return [_outcome(parcel, r, reply.code, reply.message, host) for r in accepted]


async def _reset(client: aiosmtplib.SMTP, refused: aiosmtplib.SMTPResponseException) -> None:
    _raise_if_gone(refused)
    await client.rset()


def _raise_if_gone(refused: aiosmtplib.SMTPResponseException) -> None:
    """A 421 closes the connection: what is left must go to the next host, or wait."""
    if refused.code == 421:
        raise aiosmtplib.SMTPServerDisconnected(refused.message)
