"""DANE for SMTP (RFC 7672), the pure part: which TLSA records count, and whether the
certificate chain a server presented matches them.

Only DANE-TA(2) and DANE-EE(3) are used for SMTP (RFC 7672 §3.1.3); records of other
usages, selectors or matching types are unusable and ignored. A DANE-EE match
authenticates the server whatever the certificate's names and dates (§3.1.1); a DANE-TA
match needs the chain from the server's certificate to the matching trust anchor to be
valid, for the MX host's name (§3.1.2, §3.2.2). Certificates are parsed and chains
checked with `cryptography`.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

DANE_TA, DANE_EE = 2, 3


@dataclass(frozen=True)
class Tlsa:
    """One TLSA record: certificate usage, selector, matching type, the data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


@dataclass(frozen=True)
class Mismatch:
    """Why a chain does not match: the text, and the TLS-RPT result type (RFC 8460 §4.3)."""

    reason: str
    result: str


def usable(records: Sequence[Tlsa]) -> tuple[Tlsa, ...]:
    """The records SMTP uses (RFC 7672 §3.1.3)."""
    return tuple(
        record
        for record in records
        if record.usage in (DANE_TA, DANE_EE)
        and record.selector in (0, 1)
        and record.mtype in (0, 1, 2)
    )


def check(
    chain: Sequence[bytes], records: Sequence[Tlsa], host: str, now: datetime.datetime
) -> Mismatch | None:
    """None when the chain (DER, the server's certificate first) matches one of the usable
    `records` for the MX host `host`; else the reason."""
    wanted = usable(records)
    if not chain:
        return Mismatch("the server presented no certificate", "validation-failure")
    try:
        certificates = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        return Mismatch(f"the server's certificate does not parse: {exc}", "validation-failure")
    if any(_matches(certificates[0], r) for r in wanted if r.usage == DANE_EE):
        return None
    anchors = [
        (depth, certificate)
        for depth, certificate in enumerate(certificates)
        if depth > 0 and any(_matches(certificate, r) for r in wanted if r.usage == DANE_TA)
    ]
    if not anchors:
        return Mismatch(
            f"no certificate of the chain matches the TLSA records of {host}", "validation-failure"
        )
    problem = ""
    for depth, anchor in anchors:
        problem = _chain(certificates[0], certificates[1:depth], anchor, host, now)
        if not problem:
            return None
    problem = problem.split(" (encountered processing", 1)[0]
    if "no matching subjectAltName" in problem:
        result = "certificate-host-mismatch"
    elif "not valid at validation time" in problem:
        result = "certificate-expired"
    else:
        result = "validation-failure"
    return Mismatch(f"chain to the DANE-TA anchor is not valid: {problem}", result)


def _chain(
    leaf: x509.Certificate,
    between: list[x509.Certificate],
    anchor: x509.Certificate,
    host: str,
    now: datetime.datetime,
) -> str:
    """'' when `leaf` chains through `between` to `anchor`, valid now and for `host`."""
    try:
        verifier = (
            PolicyBuilder()
            .store(Store([anchor]))
            .time(now)
            .build_server_verifier(x509.DNSName(host))
        )
        verifier.verify(leaf, between)
    except (VerificationError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return ""


def _matches(certificate: x509.Certificate, record: Tlsa) -> bool:
    return _selected(certificate, record.selector, record.mtype) == record.data


def _selected(certificate: x509.Certificate, selector: int, mtype: int) -> bytes:
    """What a TLSA record with this selector and matching type holds for `certificate`."""
    if selector == 0:
        data = certificate.public_bytes(serialization.Encoding.DER)
    else:
        data = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def record_for(certificate: bytes, usage: int = DANE_EE, selector: int = 1, mtype: int = 1) -> Tlsa:
    """The TLSA record that matches a certificate (DER), as a zone would publish it."""
    parsed = x509.load_der_x509_certificate(certificate)
    return Tlsa(usage, selector, mtype, _selected(parsed, selector, mtype))
