"""The Authentication-Results header (RFC 8601) of a message from outside: what it says,
written by `authres`, and the fields that claim our name removed (§5).

The verdicts come from `runtime/smtp/authentication.py` (which asks DNS); everything here
is pure. One header per message, `authserv-id` = the server's host name:

    Authentication-Results: mail.example.com; spf=pass smtp.mailfrom=example.net;
     dkim=pass header.d=example.net header.s=s1 header.a=ed25519-sha256;
     dmarc=pass header.from=example.net; arc=none
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import authres
import authres.arc
import authres.dmarc

from mailplan.runtime.decide.dmarc import DmarcVerdict
from mailplan.runtime.decide.message import split

FIELD = "Authentication-Results"
# What DMARC's `quarantine` adds for rules to act on (docs/receiving.md).
QUARANTINE = "X-DMARC-Quarantine"


@dataclass(frozen=True)
class SignatureResult:
    """One DKIM-SignatureResult's verdict: pass, fail, neutral, temperror or permerror."""

    result: str
    domain: str
    selector: str
    algorithm: str
    reason: str = ""


@dataclass(frozen=True)
class ArcResult:
    """The ARC chain's verdict (RFC 8617 §4.4): none, pass or fail."""

    result: str
    reason: str = ""


def header(
    hostname: str,
    spf: tuple[str, str, str] | None,
    signatures: Sequence[SignatureResult],
    dmarc: DmarcVerdict | None,
    arc: ArcResult | None,
) -> str:
    """The header field, folded, without its line end. `spf`: (result, property, domain),
    the property `mailfrom`, or `helo` for a bounce."""
    results: list[authres.core.AuthenticationResult] = []
    if spf is not None:
        result, about, domain = spf
        spf_result = authres.SPFAuthenticationResult(result=result)
        setattr(spf_result, f"smtp_{about}", domain)
        results.append(spf_result)
    for signature in signatures:
        results.append(
            authres.DKIMAuthenticationResult(
                result=signature.result,
                result_comment=_comment(signature.reason),
                header_d=signature.domain,
                header_s=signature.selector,
                header_a=signature.algorithm,
            )
        )
    if not signatures:
        results.append(authres.DKIMAuthenticationResult(result="none"))
    if dmarc is not None:
        results.append(
            authres.dmarc.DMARCAuthenticationResult(
                result=dmarc.result,
                result_comment=_comment(dmarc.reason),
                header_from=dmarc.author,
                policy=dmarc.policy,
            )
        )
    if arc is not None:
        results.append(
            authres.arc.ARCAuthenticationResult(
                result=arc.result, result_comment=_comment(arc.reason)
            )
        )
    text = str(authres.AuthenticationResultsHeader(authserv_id=hostname, results=results))
    return text.replace("; ", ";\r\n\t")


def _comment(text: str) -> str | None:
    """A reason as an RFC 5322 comment: printable ASCII, no parentheses or backslashes."""
    cleaned = "".join(c if " " <= c <= "~" and c not in "()\\" else " " for c in text)
    return " ".join(cleaned.split())[:200] or None


def claims(value: str, hostname: str) -> bool:
    """Whether an Authentication-Results value names `hostname` as its authserv-id (a
    value authres cannot parse is judged by its first word)."""
    try:
        found = authres.AuthenticationResultsHeader.parse_value(" ".join(value.split()))
        served = str(found.authserv_id or "")
    except authres.core.AuthResError:
        served = value.split(";")[0].split("(")[0].strip()
    return served.lower().rstrip(".") == hostname.lower().rstrip(".")


def without_ours(message: bytes, hostname: str) -> tuple[bytes, int]:
    """The message without the header fields that claim to be ours: Authentication-Results
    with our authserv-id (RFC 8601 §5) and our quarantine mark; and how many went."""
    head, blank, body = split(message)
    fields: list[list[bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)  # a continuation line
        else:
            fields.append([line])
    kept = [field for field in fields if not _ours(b"".join(field), hostname)]
    if len(kept) == len(fields):
        return message, 0
    return b"".join(b"".join(field) for field in kept) + blank + body, len(fields) - len(kept)


def _ours(field: bytes, hostname: str) -> bool:
    name, colon, value = field.partition(b":")
    lowered = name.strip().lower()
    if not colon:
        return False
    if lowered == QUARANTINE.lower().encode():
        return True
    return lowered == FIELD.lower().encode() and claims(value.decode("utf-8", "replace"), hostname)
