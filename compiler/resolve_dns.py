"""Resolve-DNS pass: what each domain publishes beyond MX and SPF (DKIM, DMARC, MTA-STS, TLS-RPT).

Fills `Domain.dns` of the resolved plan. DKIM public keys are read from the key files
that `load` read (PEM, as `mailplan dkim keygen` writes them) and turned into the `p=`
value here; a private key named by mistake is refused, so it never reaches the plan.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailplan.compiler import defaults
from mailplan.compiler.diagnostics import Diagnostic, error, warning
from mailplan.compiler.unit import Unit
from mailplan.compiler.yamlpos import Document
from mailplan.compiler.yamlpos import Path as DataPath
from mailplan.plan.model import (
    DkimKey,
    Dmarc,
    Domain,
    MailDns,
    MtaSts,
    MxHost,
    Plan,
    Source,
    TlsRpt,
)
from mailplan.runtime.decide.address import canonical_domain

URI_SAFE = "$'()*+&=-._~"  # kept as they are in a report address (besides letters, digits)
# RFC 8301 §3.2: verifiers must not accept RSA keys shorter than 1024 bits.
RSA_MINIMUM_BITS = 1024
ALIGNMENT = {"relaxed": "r", "strict": "s"}


def resolve_dns(unit: Unit) -> Unit:
    if unit.plan is None or unit.document is None:
        return unit
    document, plan = unit.document, unit.plan
    problems: list[Diagnostic] = []
    ttl = defaults.seconds(document.data.get("dns", {}).get("ttl", defaults.DNS_TTL))
    domains = []
    for domain in plan.domains:
        written = next(k for k in document.data["domains"] if canonical_domain(k) == domain.name)
        path: DataPath = ("domains", written)
        spec = document.data["domains"][written] or {}
        keys = []
        for i, key in enumerate(spec.get("dkim", ())):
            found = _dkim(document, (*path, "dkim", i), key, unit.texts, problems)
            if found is not None:
                keys.append(found)
        dns = MailDns(
            ttl=ttl,
            spf_source=_key(document, (*path, "spf")) if "spf" in spec else domain.source,
            mx=domain.mx or _server_mx(plan),
            dkim=tuple(keys),
            dmarc=_dmarc(document, path, spec, domain),
            mta_sts=_mta_sts(document, path, spec),
            tls_rpt=_tls_rpt(document, path, spec),
        )
        domains.append(replace(domain, dns=dns))
    problems += _sealing(document, plan, domains)
    return replace(unit, plan=replace(plan, domains=tuple(domains))).report(*problems)


def _sealing(document: Document, plan: Plan, domains: list[Domain]) -> list[Diagnostic]:
    """`receiving.arc.seal` with no RSA key that signs (RFC 8617 seals with rsa-sha256
    only): the server would seal nothing, and say so only in its log (MP510)."""
    if not plan.receiving.arc.seal:
        return []
    for domain in domains:
        keys = domain.dns.dkim if domain.dns else ()
        if any(k.algorithm == "rsa" and k.private_key is not None for k in keys):
            return []
    message = (
        "receiving.arc.seal is on, but no domain has an RSA DKIM key with a private_key "
        "(ARC seals with rsa-sha256 only): nothing will be sealed; add one, or seal: false"
    )
    where = _at(document, ("receiving", "arc", "seal"))
    return [warning(where.file, where.line, where.column, "MP510", message)]


def _server_mx(plan: Plan) -> tuple[MxHost, ...]:
    """A domain without `mx:` is received by this server: its hostname, at the default priority."""
    server = plan.server
    ipv4 = tuple(a for a in server.addresses if ":" not in a)
    ipv6 = tuple(a for a in server.addresses if ":" in a)
    return (MxHost(server.source, server.hostname, defaults.MX_PRIORITY, ipv4, ipv6),)


def _dkim(
    document: Document,
    path: DataPath,
    spec: dict[str, Any],
    texts: Mapping[str, str],
    problems: list[Diagnostic],
) -> DkimKey | None:
    file = spec["public_key"]
    where = _at(document, (*path, "public_key"))
    text = texts.get(file)
    if text is None:  # unreadable: load has said why
        return None
    if "PRIVATE KEY" in text:
        message = (
            f"{file} is a private key: name the public key (.pub) here and keep the private "
            "key out of the site (`mailplan dkim keygen` writes both)"
        )
        problems.append(_error(where, "MP502", message))
        return None
    try:
        key = serialization.load_pem_public_key(text.encode())
    except ValueError:
        message = f"{file} is not a PEM public key (`mailplan dkim keygen` makes one)"
        problems.append(_error(where, "MP502", message))
        return None
    selector = spec["selector"].lower()
    source = _key(document, path)
    private = _private_key(document, path, spec, texts, problems)
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < RSA_MINIMUM_BITS:
            message = (
                f"{file} is a {key.key_size}-bit RSA key: DKIM verifiers refuse keys "
                f"shorter than {RSA_MINIMUM_BITS} bits (RFC 8301); make a 2048-bit one"
            )
            problems.append(_error(where, "MP503", message))
            return None
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return DkimKey(source, selector, "rsa", base64.b64encode(der).decode(), file, private)
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return DkimKey(source, selector, "ed25519", base64.b64encode(raw).decode(), file, private)
    message = f"{file}: DKIM keys are RSA or Ed25519, not {type(key).__name__}"
    problems.append(_error(where, "MP502", message))
    return None


def _private_key(
    document: Document,
    path: DataPath,
    spec: dict[str, Any],
    texts: Mapping[str, str],
    problems: list[Diagnostic],
) -> str | None:
    """The path of the key file that signs, as written (absolute, or relative to `serve
    --root`); a file of the site is refused (MP509): a private key is never committed.
    Whether the file is inside the site folder is known where the site is: `serve` checks."""
    name = spec.get("private_key")
    if name is None:
        return None
    if name in texts or PurePosixPath(name).suffix == ".pub":
        message = (
            f"{name} is a file of the site: the private key stays out of the site folder "
            "and out of git (e.g. /etc/mailplan/dkim/, as `mailplan dkim keygen -o` writes it)"
        )
        problems.append(_error(_at(document, (*path, "private_key")), "MP509", message))
        return None
    return str(name)


def _dmarc(document: Document, path: DataPath, spec: dict[str, Any], domain: Domain) -> Dmarc:
    given = spec.get("dmarc", {})
    settled = defaults.DMARC | given
    source = _key(document, (*path, "dmarc")) if "dmarc" in spec else domain.source
    return Dmarc(
        source=source,
        policy=settled["policy"] if domain.sends_mail else defaults.DMARC_NO_MAIL,
        subdomain_policy=settled.get("subdomain_policy"),
        rua=tuple(_mailto(a) for a in settled["rua"]),
        ruf=tuple(_mailto(a) for a in settled["ruf"]),
        adkim=ALIGNMENT[settled["adkim"]],  # type: ignore[arg-type]
        aspf=ALIGNMENT[settled["aspf"]],  # type: ignore[arg-type]
        percent=settled["percent"],
    )


def _mta_sts(document: Document, path: DataPath, spec: dict[str, Any]) -> MtaSts | None:
    if "mta_sts" not in spec:
        return None
    settled = defaults.MTA_STS | (spec["mta_sts"] or {})
    source = _key(document, (*path, "mta_sts"))
    return MtaSts(source, settled["mode"], defaults.seconds(settled["max_age"]))


def _tls_rpt(document: Document, path: DataPath, spec: dict[str, Any]) -> TlsRpt | None:
    if "tls_rpt" not in spec:
        return None
    source = _key(document, (*path, "tls_rpt"))
    return TlsRpt(source, tuple(_mailto(a) for a in spec["tls_rpt"]["rua"]))


def _mailto(address: str) -> str:
    """A report URI: a bare address becomes `mailto:`, with what a URI may not hold
    percent-encoded (RFC 3986: other than ASCII, as UTF-8; RFC 7489 6.3: `,` and `!`,
    which DMARC's own syntax uses; `;`, which ends a tag) and its domain in A-labels.
    A `mailto:` or `https://` URI is kept as written."""
    if address.startswith(("mailto:", "https://")):
        return address
    local, _, domain = address.rpartition("@")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:  # not a name IDNA takes: left for the checks to refuse
        ascii_domain = domain
    return f"mailto:{quote(local, safe=URI_SAFE)}@{ascii_domain}"


def _at(document: Document, path: DataPath) -> Source:
    position = document.at(path)
    return Source(document.file, position.line, position.column)


def _key(document: Document, path: DataPath) -> Source:
    position = document.key_at(path)
    return Source(document.file, position.line, position.column)


def _error(source: Source, code: str, message: str) -> Diagnostic:
    return error(source.file, source.line, source.column, code, message)
