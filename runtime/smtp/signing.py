"""DKIM signing with dkimpy: the private keys, read and checked against the public keys
the plan publishes, and the signatures added to a message before it is queued.

Which mail is signed is `runtime.decide.signing`'s decision; this module reads key
files (`load_keys`, at start-up as root and again at each reload) and signs, off the
event loop (`Signer.sign`). relaxed/relaxed, the headers of `HEADERS` that the message
has (and every `List-*`), `From` signed once more than it occurs, so that no From can
be added (oversigning). No crypto or canonicalisation here: dkimpy does both.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from mailplan.plan.model import DkimKey, Plan
from mailplan.runtime.base.threads import signing
from mailplan.runtime.decide.policy import Client
from mailplan.runtime.decide.signing import Signature, Signing

log = logging.getLogger("mailplan.smtp")

HEADERS = frozenset(
    {
        b"from",
        b"to",
        b"cc",
        b"subject",
        b"date",
        b"message-id",
        b"reply-to",
        b"in-reply-to",
        b"references",
        b"mime-version",
        b"content-type",
    }
)


class KeyProblem(Exception):
    """A private key that cannot sign for its selector, in one line naming both."""


@dataclass(frozen=True)
class Key:
    """A private key read from its file, in the form dkimpy signs with."""

    file: str  # as the plan names it
    public_key: str  # the plan's `p=` it was checked against
    secret: bytes  # PEM (RSA, PKCS#1) or base64 of the Ed25519 seed
    openssl: rsa.RSAPrivateKey | None = None  # an RSA key, as `cryptography` signs with it


Keyring = Mapping[tuple[str, str], Key]  # (hosted domain, selector) → key


@dataclass(frozen=True)
class Loading:
    """How keys are read: from `root` (relative paths); `site`: a key file inside it is
    refused; `previous` (at a reload, as the serving user): a key file that user cannot
    read is kept from it if it is the same; `mismatch` (`--dev`): a key that is not the
    published one is told to it and signs anyway, instead of being refused."""

    root: Path
    site: Path | None = None
    previous: Keyring | None = None
    mismatch: Callable[[Path, str], None] | None = None


def load_keys(plan: Plan, how: Loading) -> dict[tuple[str, str], Key]:
    """Every signing key of the plan, read and checked; a `KeyProblem` for the first that
    is not right."""
    keys = {}
    for domain in plan.domains:
        for key in domain.dns.dkim if domain.dns else ():
            if key.private_key is not None:
                keys[domain.name, key.selector] = _load(domain.name, key, how)
    return keys


def _load(domain: str, key: DkimKey, how: Loading) -> Key:
    assert key.private_key is not None
    name = f"selector {key.selector} of {domain}"
    path = Path(key.private_key)
    path = path if path.is_absolute() else how.root / path
    site = how.site
    if site is not None and path.resolve().is_relative_to(site.resolve()):
        raise KeyProblem(
            f"the DKIM key {path} ({name}) is inside the site folder {site}: "
            "keep private keys out of the site and out of git"
        )
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        kept = (how.previous or {}).get((domain, key.selector))
        if kept is not None and kept.file == key.private_key and kept.public_key == key.public_key:
            return kept  # root-only, read at start-up: the same key, still published
        raise KeyProblem(f"cannot read the DKIM key {path} ({name}): {_why(exc)}") from exc
    except OSError as exc:
        raise KeyProblem(f"cannot read the DKIM key {path} ({name}): {_why(exc)}") from exc
    secret, public, openssl = _parse(data, path, name)
    if public != key.public_key:
        problem = (
            f"the DKIM key {path} does not belong to {name}: its public key is not the one "
            f"the plan publishes ({key.file})"
        )
        if how.mismatch is None:
            raise KeyProblem(problem)
        how.mismatch(path, problem)
    return Key(key.private_key, key.public_key, secret, openssl)


def _parse(data: bytes, path: Path, name: str) -> tuple[bytes, str, rsa.RSAPrivateKey | None]:
    """(what dkimpy signs with, the public key as `p=`, the RSA key) of a PEM private key."""
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise KeyProblem(
            f"the DKIM key {path} ({name}) is protected by a passphrase; mailplan needs it "
            f"without one (openssl pkey -in {path} -out KEY)"
        ) from exc
    except ValueError as exc:
        raise KeyProblem(
            f"the DKIM key {path} ({name}) is not a PEM private key "
            "(`mailplan dkim keygen` makes one)"
        ) from exc
    if isinstance(private, rsa.RSAPrivateKey):
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem, base64.b64encode(der).decode(), private
    if isinstance(private, ed25519.Ed25519PrivateKey):
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(seed), base64.b64encode(raw).decode(), None
    raise KeyProblem(f"the DKIM key {path} ({name}) is neither RSA nor Ed25519")


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if exc.errno else str(exc)


class Signer:
    """The plan's signing decision with the keys it signs with."""

    def __init__(self, plan: Plan, keys: Keyring) -> None:
        self.signing = Signing(plan)
        self.keys = keys

    async def sign(self, client: Client, message: bytes, queue_id: str) -> bytes:
        """The message with its DKIM-Signature fields on top, or as it is when it is not
        ours to sign (or dkimpy cannot sign it: logged, and it goes unsigned)."""
        wanted = [s for s in self.signing.signatures(client, message) if self._has(s)]
        if not wanted:
            return message
        try:
            fields = await signing(self._fields, message, wanted)
        except dkim.DKIMException as exc:
            log.warning("%s: not DKIM-signed: %s", queue_id, exc)
            return message
        log.debug("%s: DKIM-signed: %s", queue_id, ", ".join(s.text() for s in wanted))
        return fields + message

    async def seal(
        self, message: bytes, domains: Iterable[str], hostname: str, queue_id: str
    ) -> bytes:
        """The message with an ARC set on top (RFC 8617), sealed by the key of the first of
        `domains` that has an RSA signing key (or the main domain's); its
        ARC-Authentication-Results copy the Authentication-Results of `hostname` that the
        message carries (none: no set, the message is as it was)."""
        sealer = self.signing.sealer(domains)
        if sealer is None or not self._has(sealer):
            log.warning(
                "%s: not ARC-sealed: no RSA signing key for %s", queue_id, ", ".join(domains)
            )
            return message
        try:
            fields = await signing(self._seal, message, sealer, hostname)
        except dkim.DKIMException as exc:
            log.warning("%s: not ARC-sealed: %s", queue_id, exc)
            return message
        if fields:
            log.debug("%s: ARC-sealed: %s", queue_id, sealer.text())
        return fields + message

    def _seal(self, message: bytes, sealer: Signature, hostname: str) -> bytes:
        key = self.keys[sealer.owner, sealer.selector]
        arc = _ARC(message, linesep=b"\r\n")
        arc.openssl = key.openssl
        present = [
            name.lower()
            for name, _ in arc.headers
            if name.lower() in HEADERS or name.lower().startswith(b"list-")
        ]
        fields: list[bytes] = arc.sign(
            sealer.selector.encode(),
            sealer.domain.encode(),
            key.secret,
            hostname.encode(),
            include_headers=[*present, b"from"],
        )
        return b"".join(fields)

    def _has(self, signature: Signature) -> bool:
        return (signature.owner, signature.selector) in self.keys

    def _fields(self, message: bytes, wanted: list[Signature]) -> bytes:
        return b"".join(self.field(message, signature) for signature in wanted)

    def field(self, message: bytes, signature: Signature) -> bytes:
        """One DKIM-Signature header field (with its line end) for the message."""
        key = self.keys[signature.owner, signature.selector]
        signer = _DKIM(message, linesep=b"\r\n")
        signer.openssl = key.openssl
        present = [
            name.lower()
            for name, _ in signer.headers
            if name.lower() in HEADERS or name.lower().startswith(b"list-")
        ]
        field: bytes = signer.sign(
            signature.selector.encode(),
            signature.domain.encode(),
            key.secret,
            signature_algorithm=f"{signature.algorithm}-sha256".encode(),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[*present, b"from"],  # From once more: oversigned
        )
        return field


class _Signed:
    """What dkimpy's signing calls `pk.sign(digest).signature` on: an RSA signature made
    by `cryptography` (OpenSSL), over the digest dkimpy computed."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key
        self.signature = b""

    def sign(self, digest: bytes) -> _Signed:
        self.signature = self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self


class _OpenSSL:
    """dkimpy's header generation with its RSA step done by OpenSSL.

    dkimpy canonicalises, hashes and folds; its RSA is Python integers under the GIL
    (about 12 ms for a 2048-bit key), where OpenSSL takes well under 1 ms and releases
    the GIL. dkimpy's `gen_header` signs through `pk.sign(digest)` on its Ed25519 path;
    for an RSA key that `cryptography` holds, that path is taken with `_Signed`. The
    algorithm dkimpy puts in `a=` was written before, from the real one (rsa-sha256),
    and both hash with SHA-256. tests/test_signing.py verifies the result with dkimpy.
    """

    openssl: rsa.RSAPrivateKey | None = None
    signature_algorithm: bytes

    def gen_header(
        self,
        fields: list[tuple[bytes, bytes]],
        include_headers: list[bytes],
        canon_policy: object,
        header_name: bytes,
        pk: object,
        standardize: bool = False,
    ) -> bytes:
        generate = super().gen_header  # type: ignore[misc]
        if self.openssl is None or self.signature_algorithm != b"rsa-sha256":
            return generate(fields, include_headers, canon_policy, header_name, pk, standardize)  # type: ignore[no-any-return]
        self.signature_algorithm = b"ed25519-sha256"  # dkimpy's `pk.sign(digest)` path
        try:
            signed = _Signed(self.openssl)
            return generate(fields, include_headers, canon_policy, header_name, signed, standardize)  # type: ignore[no-any-return]
        finally:
            self.signature_algorithm = b"rsa-sha256"


class _DKIM(_OpenSSL, dkim.DKIM):  # type: ignore[misc]
    """dkimpy's DKIM signer, its RSA signatures made by OpenSSL."""


class _ARC(_OpenSSL, dkim.ARC):  # type: ignore[misc]
    """dkimpy's ARC sealer, its RSA signatures made by OpenSSL."""
