"""The listeners' TLS: the context (Mozilla's intermediate profile), what an operator
should hear about the certificate and the key at start-up, and the TLS layer of the
implicit-TLS listeners (smtps, pop3s)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from asyncio import sslproto
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from mailplan.plan.model import Plan
from mailplan.runtime.base import hangups
from mailplan.runtime.serve import devtls
from mailplan.runtime.serve.startup import StartupError, resolve, why

log = logging.getLogger("mailplan.server")

CERTIFICATE_WARNING = 14 * 86400  # seconds before a certificate expires that start-up warns

# Mozilla's "intermediate" profile for TLS 1.2: forward secrecy and AEAD only (no CBC,
# so nothing for LUCKY13); TLS 1.3 suites are all AEAD and are not affected by this.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


def context(plan: Plan, root: Path, dev: bool) -> ssl.SSLContext | None:
    """The listeners' TLS context, or None when no listener uses TLS."""
    if not any(listener.tls != "none" for listener in plan.listeners):
        return None
    if dev:
        certificate, key = devtls.ensure(root / "var" / "tls", plan.server.hostname)
    else:
        if not plan.tls.certificate or not plan.tls.key:
            raise StartupError("a listener uses TLS but tls.certificate and tls.key are not set")
        certificate = resolve(root, plan.tls.certificate)
        key = resolve(root, plan.tls.key)
    for what, path in (("certificate", certificate), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"cannot read the TLS {what} {path}: {why(exc)}") from exc
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(certificate, key, password=_no_passphrase)
    except _Passphrase as exc:  # never a prompt on the terminal, queue lock held
        raise StartupError(
            f"the TLS key {key} is protected by a passphrase; mailplan needs it without one "
            f"(openssl pkey -in {key} -out KEY), readable by the serving user only"
        ) from exc
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise StartupError(
                f"the TLS key {key} does not belong to the certificate {certificate}"
            ) from exc
        raise StartupError(
            f"cannot use the TLS certificate {certificate} with the key {key}: "
            f"{exc.reason or exc} (both must be PEM)"
        ) from exc
    return context


HANDSHAKE_TIMEOUT = 60  # seconds a client of an implicit-TLS listener has to finish it


def implicit(
    factory: Callable[[], asyncio.BaseProtocol], context: ssl.SSLContext
) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for a listener whose connections start with TLS: asyncio's TLS
    layer around what `factory` makes, and a handshake that fails told in one line
    (`hangups.went_away`, stage `tls-handshake`).

    The server is made without `ssl=` and the layer is ours because uvloop's own tells
    nothing of a failed handshake outside its debug mode; and since uvloop reads a new
    connection at once, its `start_tls` would come too late for the ClientHello."""

    def made() -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        handshake: asyncio.Future[None] = loop.create_future()
        layer = _Layer(
            loop,
            factory(),
            context,
            handshake,
            server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
        handshake.add_done_callback(layer.handshaken)
        return layer

    return made


class _Layer(sslproto.SSLProtocol):
    """The TLS layer of one connection, which knows its client's address."""

    client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        super().connection_made(transport)

    def handshaken(self, handshake: asyncio.Future[None]) -> None:
        error = None if handshake.cancelled() else handshake.exception()
        if error is not None:
            hangups.went_away(log, self.client, "tls-handshake", error)


class _Passphrase(Exception):
    """The key asked for a passphrase."""


def _no_passphrase() -> str:
    raise _Passphrase


def warnings(plan: Plan, root: Path, dev: bool, now: float | None = None) -> list[str]:
    """What an operator should hear about the certificate and key the server uses: a
    certificate that has expired or expires within two weeks (senders that check it,
    as MTA-STS and DANE make them, will not deliver), a key that others can read."""
    if dev or not plan.tls.certificate or not plan.tls.key:
        return []
    found = []
    certificate, key = resolve(root, plan.tls.certificate), resolve(root, plan.tls.key)
    try:
        leaf = x509.load_pem_x509_certificate(certificate.read_bytes())
    except (OSError, ValueError):
        return []  # `context` has already read and used it: nothing more to say
    left = leaf.not_valid_after_utc.timestamp() - (time.time() if now is None else now)
    if left <= 0:
        found.append(
            f"the TLS certificate {certificate} has expired ({leaf.not_valid_after_utc:%Y-%m-%d})"
        )
    elif left < CERTIFICATE_WARNING:
        found.append(
            f"the TLS certificate {certificate} expires in {left / 86400:.0f} day(s) "
            f"({leaf.not_valid_after_utc:%Y-%m-%d})"
        )
    with contextlib.suppress(OSError):
        if key.stat().st_mode & 0o004:
            found.append(f"the TLS key {key} is readable by every user: chmod o-r {key}")
    return found
