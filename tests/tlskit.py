"""Certificates for tests, made with `cryptography`: a test CA, leaves it signs (for given
names, expired, ...), self-signed leaves; server contexts that present them, the client
context that trusts the CA, and the TLSA record data that matches them; `PolicyServer`,
an HTTPS server on loopback for MTA-STS policies and POSTed TLS reports; and
`REPORT_SCHEMA`, RFC 8460's report as a JSON Schema. Nothing here is trusted outside the
test that made it.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@dataclass
class Issued:
    """A certificate, its key, and the chain a server presents (PEM files in `folder`)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]  # the certificate first, then its issuers (no root)
    cert_file: Path
    key_file: Path

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class Authority:
    """A test CA (a root, and an intermediate that signs the leaves) in `folder`."""

    def __init__(self, folder: Path, name: str = "mailplan test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.root_key = _key()
        self.root = self._ca(_name(name), self.root_key, _name(name), self.root_key, None)
        self.intermediate_key = _key()
        self.intermediate = self._ca(
            _name(f"{name} intermediate"), self.intermediate_key, _name(name), self.root_key, 0
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _ca(
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        path_length: int | None,
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - DAY)
            .not_valid_after(_NOW + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
            .sign(signer, hashes.SHA256())
        )

    def issue(self, *names: str, expired: bool = False, label: str = "") -> Issued:
        """A leaf for `names` (DNS names or IP addresses) signed by the intermediate."""
        key = _key()
        certificate = _leaf(names, key, self.intermediate.subject, self.intermediate_key, expired)
        return _files(
            self.folder, label or names[0], certificate, key, [certificate, self.intermediate]
        )

    def self_signed(self, *names: str, label: str = "") -> Issued:
        key = _key()
        certificate = _leaf(names, key, _name(names[0]), key, False)
        return _files(self.folder, label or f"self-{names[0]}", certificate, key, [certificate])

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this CA (and nothing else)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context


def _leaf(
    names: tuple[str, ...],
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    expired: bool,
) -> x509.Certificate:
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    start, end = (_NOW - 30 * DAY, _NOW - 2 * DAY) if expired else (_NOW - DAY, _NOW + 90 * DAY)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )


def _files(
    folder: Path,
    label: str,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    chain: list[x509.Certificate],
) -> Issued:
    safe = label.replace("*", "star").replace(":", "_")
    cert_file, key_file = folder / f"{safe}.crt", folder / f"{safe}.key"
    cert_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(certificate, key, chain, cert_file, key_file)


def tlsa_data(certificate: x509.Certificate, selector: int = 1) -> str:
    """The hex of a `x 1 1` (SHA-256 of the public key) or `x 0 1` TLSA record."""
    if selector == 0:
        data = certificate.public_bytes(serialization.Encoding.DER)
    else:
        data = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize().hex()


class PolicyServer:
    """An HTTPS server on a loopback address and a kernel-chosen port, serving each
    `mta-sts.DOMAIN`'s policy (by Host header) and taking TLS reports POSTed to
    `/report`; its certificate is `issued` (from a test CA)."""

    def __init__(self, address: str, issued: Issued) -> None:
        self.policies: dict[str, str] = {}  # host -> policy text (absent: 404)
        self.content_type = "text/plain"
        self.fetches: list[str] = []
        self.reports: list[bytes] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                owner.fetches.append(host)
                text = owner.policies.get(host)
                if text is None or self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", owner.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.reports.append(self.rfile.read(length))
                self.send_response(201 if self.path == "/report" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.server.socket = issued.server_context().wrap_socket(
            self.server.socket, server_side=True
        )
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


# The RFC 8460 §4.4 report, as a JSON Schema (what a receiver of reports checks).
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string"},
        "contact-info": {"type": "string"},
        "report-id": {"type": "string"},
        "date-range": {
            "type": "object",
            "required": ["start-datetime", "end-datetime"],
            "properties": {
                "start-datetime": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT00:00:00Z$"},
                "end-datetime": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT23:59:59Z$"},
            },
        },
        "policies": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["policy", "summary"],
                "properties": {
                    "policy": {
                        "type": "object",
                        "required": ["policy-type", "policy-domain"],
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": {"type": "array", "items": {"type": "string"}},
                            "policy-domain": {"type": "string"},
                            "mx-host": {"type": "array", "items": {"type": "string"}},
                        },
                        "additionalProperties": False,
                    },
                    "summary": {
                        "type": "object",
                        "required": [
                            "total-successful-session-count",
                            "total-failure-session-count",
                        ],
                        "additionalProperties": False,
                        "properties": {
                            "total-successful-session-count": {"type": "integer", "minimum": 0},
                            "total-failure-session-count": {"type": "integer", "minimum": 0},
                        },
                    },
                    "failure-details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["result-type", "failed-session-count"],
                            "properties": {
                                "result-type": {
                                    "enum": [
                                        "starttls-not-supported",
                                        "certificate-host-mismatch",
                                        "certificate-expired",
                                        "certificate-not-trusted",
                                        "validation-failure",
                                        "tlsa-invalid",
                                        "dnssec-invalid",
                                        "dane-required",
                                        "sts-policy-fetch-error",
                                        "sts-policy-invalid",
                                        "sts-webpki-invalid",
                                    ]
                                },
                                "sending-mta-ip": {"type": "string"},
                                "receiving-mx-hostname": {"type": "string"},
                                "receiving-mx-helo": {"type": "string"},
                                "receiving-ip": {"type": "string"},
                                "failed-session-count": {"type": "integer", "minimum": 1},
                                "additional-information": {"type": "string"},
                                "failure-reason-code": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
            },
        },
    },
}
