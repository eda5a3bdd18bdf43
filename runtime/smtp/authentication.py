"""Mail authentication on the way in: every DKIM signature, the ARC chain and DMARC,
verified with dkimpy and pyspf through the server's own resolver, reported in one
Authentication-Results header, and DMARC's policy carried out as the site says.

It runs at the end of DATA, in the checks' thread pool (`base/threads.checking`, as
SPF does): dkimpy asks for its keys through a `dnsfunc` and pyspf through
`spf_answers`, both sent to the answerer of `dns/lookup.py`, so only that thread waits
for DNS, and for DNS_BUDGET seconds at most in all: a message whose look-ups all meet a
silent name server gets `temperror`s then, not a wait of every time-out in a row.
What the verdicts mean is decided by pure functions: `decide/dmarc.py` (the
policy, alignment, pct) and `decide/authresults.py` (the header, forged ones).
"""

from __future__ import annotations

import functools
import logging
import random
import re
from dataclasses import dataclass

import dkim
import dns.exception

from mailplan.plan.model import Plan
from mailplan.runtime.base.threads import checking
from mailplan.runtime.decide import authresults, dmarc
from mailplan.runtime.decide.authresults import ArcResult, SignatureResult
from mailplan.runtime.decide.message import header_block
from mailplan.runtime.decide.policy import Client, in_scope
from mailplan.runtime.decide.signing import author_domain, author_of
from mailplan.runtime.dns.lookup import Answerer, Budget, DnsTrouble, NoSuchDomain, spf_answers

log = logging.getLogger("mailplan.checks")
# dkimpy logs every bad signature at ERROR: a stranger's message is no error of ours,
# and the verdict is in the header.
_quiet = logging.getLogger("mailplan.checks.dkimpy")
_quiet.propagate = False
_quiet.addHandler(logging.NullHandler())

DNS_BUDGET = 20.0  # seconds the checks of one message may wait for DNS, all look-ups together
MAX_SIGNATURES = 8  # DKIM signatures verified at most per message (RFC 6376 §6.1 allows a limit)
_TOKEN = re.compile(rb"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Authenticated:
    """What authentication makes of a message: the message without the fields that
    claimed our name, the header fields to add on top, and DMARC's refusal if any."""

    message: bytes
    headers: tuple[str, ...] = ()
    reply: str | None = None
    dmarc: dmarc.DmarcVerdict | None = None


class Authentication:
    """The DKIM, ARC and DMARC checks of one plan, asking `answerer`."""

    def __init__(self, plan: Plan, answerer: Answerer) -> None:
        self.plan = plan
        self.answerer = answerer
        self.hostname = plan.server.hostname

    async def check(
        self, client: Client, helo: str, sender: str, spf: str | None, message: bytes
    ) -> Authenticated:
        """The outcome for a message as it arrived; `spf` is the result the SPF check gave
        at MAIL FROM (None: it did not run for this client, and runs here if needed)."""
        ours = client.trusted or client.authenticated is not None
        receiving = self.plan.receiving
        verify = in_scope(receiving.dkim.scope, ours)
        enforce = in_scope(receiving.dmarc.scope, ours)
        cleaned, forged = authresults.without_ours(message, self.hostname)
        if forged:
            log.info("%s: removed %d header field(s) that claimed to be ours", client.ip, forged)
        if not verify and not enforce:
            return Authenticated(cleaned)
        return await checking(self.blocking, client.ip, helo, sender, spf, cleaned, enforce)

    def blocking(
        self, ip: str, helo: str, sender: str, spf: str | None, message: bytes, enforce: bool
    ) -> Authenticated:
        about, domain = ("mailfrom", sender.rpartition("@")[2]) if sender else ("helo", helo)
        answerer = Budget(self.answerer, DNS_BUDGET)
        if spf is None:
            spf = self.spf(answerer, ip, helo, sender)
        head = header_block(message).lower()
        verifier = _parsed(message) if b"dkim-signature" in head else None
        signatures = []
        if verifier is not None:
            signatures = self.signatures(answerer, message, verifier)
        arc = self.arc(answerer, message)
        verdict = None
        if enforce:
            author = _author(message, verifier)
            found = (
                self.policy(answerer, author) if author and author.isascii() else dmarc.Discovered()
            )
            verdict = dmarc.evaluate(
                author,
                found,
                (spf, domain),
                [(s.result, s.domain) for s in signatures],
                self.plan.receiving.dmarc.action,
                random.random() * 100,  # in [0, 100): pct=100 always samples
            )
        headers = [
            authresults.header(self.hostname, (spf, about, domain), signatures, verdict, arc)
        ]
        reply = None
        if verdict is not None and verdict.disposition == "reject":
            reply = f"550 5.7.1 Mail from {verdict.author} fails DMARC: {verdict.reason}"
        elif verdict is not None and verdict.disposition == "quarantine":
            headers.append(f"{authresults.QUARANTINE}: {verdict.author} ({verdict.reason})")
        return Authenticated(message, tuple(headers), reply, verdict)

    # -- SPF, for DMARC and the header, when the SPF check did not run ----------------

    def spf(self, answerer: Answerer, ip: str, helo: str, sender: str) -> str:
        import spf

        query = spf.query(i=ip, s=sender or f"postmaster@{helo}", h=helo or "unknown", timeout=20)
        with spf_answers(answerer):
            result, _, _ = query.check()
        return str(result)

    # -- DKIM --------------------------------------------------------------------------

    def signatures(
        self, answerer: Answerer, message: bytes, verifier: dkim.DKIM | str
    ) -> list[SignatureResult]:
        """The verdict of each DKIM-Signature, top first (none: the message has none);
        `verifier` is dkimpy's reading of the message, or why it could not read it."""
        if isinstance(verifier, str):
            if b"dkim-signature" not in header_block(message).lower():
                return []
            return [SignatureResult("permerror", "", "", "", f"unreadable message: {verifier}")]
        fields = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"]
        found = [
            self._signature(answerer, verifier, i, v) for i, v in enumerate(fields[:MAX_SIGNATURES])
        ]
        if len(fields) > MAX_SIGNATURES:
            skipped = f"{len(fields) - MAX_SIGNATURES} more signatures not verified"
            found.append(SignatureResult("policy", "", "", "", skipped))
        return found

    def _signature(
        self, answerer: Answerer, verifier: dkim.DKIM, index: int, value: bytes
    ) -> SignatureResult:
        tags = _tags(value)
        domain, selector, algorithm = (_token(tags.get(t, b"")) for t in (b"d", b"s", b"a"))
        signed = (domain, selector, algorithm)
        keys = Keys(answerer)
        try:
            good = verifier.verify(idx=index, dnsfunc=keys)
        except dkim.DKIMException as exc:
            if "body hash mismatch" in str(exc):  # dkimpy adds both hashes: not for the header
                return SignatureResult("fail", *signed, "body changed")
            return SignatureResult("permerror", *signed, str(exc))
        except Exception as exc:  # dkimpy on hostile input, past what it checks itself
            return SignatureResult("permerror", *signed, _unexpected("DKIM", exc))
        if keys.trouble:
            return SignatureResult("temperror", *signed, keys.trouble)
        if keys.missing:
            return SignatureResult("permerror", *signed, keys.missing)
        if good:
            return SignatureResult("pass", *signed)
        return SignatureResult("fail", *signed, "signature did not verify")

    # -- ARC ---------------------------------------------------------------------------

    def arc(self, answerer: Answerer, message: bytes) -> ArcResult:
        if b"\narc-" not in b"\n" + header_block(message).lower():
            return ArcResult("none")  # no ARC field: no need to read the message again
        keys = Keys(answerer)
        try:
            chain, _, reason = dkim.ARC(message, logger=_quiet, linesep=b"\r\n").verify(
                dnsfunc=keys
            )
        except dkim.DKIMException as exc:
            return ArcResult("fail", str(exc))
        except Exception as exc:  # dkimpy on hostile input, past what it checks itself
            return ArcResult("fail", _unexpected("ARC", exc))
        if chain == dkim.CV_None:
            return ArcResult("none")
        if chain == dkim.CV_Pass:
            return ArcResult("pass")
        return ArcResult("fail", keys.trouble or keys.missing or str(reason))

    # -- DMARC -------------------------------------------------------------------------

    def policy(self, answerer: Answerer, author: str) -> dmarc.Discovered:
        """The DMARC record that applies to mail from `author` (policy discovery, §6.6.3)."""
        for name in dmarc.names(author):
            try:
                records = answerer.query_blocking(name, "TXT")
            except (NoSuchDomain, dns.exception.DNSException, ValueError):
                continue
            except DnsTrouble as trouble:
                return dmarc.Discovered(trouble=str(trouble))
            texts = [
                b"".join(r.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
                for r in records
            ]
            at = name.removeprefix("_dmarc.")
            try:
                record = dmarc.record(texts)
            except dmarc.UnusableRecord as why:
                return dmarc.Discovered(at, broken=f"{name}: {why}")
            if record is not None:
                return dmarc.Discovered(at, record)
        return dmarc.Discovered()


class Keys:
    """dkimpy's `dnsfunc` for one verification: TXT records through the answerer, and
    what went wrong kept for the verdict (dkimpy itself only says False)."""

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer
        self.trouble: str | None = None  # DNS did not answer: temperror
        self.missing: str | None = None  # no key, or no usable key: permerror

    def __call__(self, name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = self.answerer.query_blocking(text.rstrip("."), "TXT")
        except DnsTrouble as trouble:
            self.trouble = str(trouble)
            raise dkim.DnsTimeoutError(str(trouble)) from None
        except (NoSuchDomain, dns.exception.DNSException, ValueError):
            records = []
        if not records:
            self.missing = f"no key at {text.rstrip('.')}"
            return None
        key = b"".join(records[0].strings)  # type: ignore[attr-defined]
        unusable = _unusable(key)
        if unusable:
            self.missing = f"the key at {text.rstrip('.')} is not usable: {unusable}"
        return key


@functools.lru_cache(maxsize=1024)
def _unusable(key: bytes) -> str | None:
    """Why dkimpy cannot use a key record (it says only False), or None; keys repeat."""
    try:
        dkim.evaluate_pk(b"key", key)
    except (dkim.DKIMException, ValueError) as exc:
        return str(exc)
    return None


def _parsed(message: bytes) -> dkim.DKIM | str:
    """dkimpy's reading of the message (its header fields, its body), or why it failed."""
    try:
        return dkim.DKIM(message, logger=_quiet, linesep=b"\r\n")
    except Exception as exc:  # dkimpy's DKIMException, or worse on hostile input
        return str(exc) or type(exc).__name__


def _author(message: bytes, verifier: dkim.DKIM | str | None) -> str | None:
    """The From domain, from the fields dkimpy has read (or from the message)."""
    if verifier is None or isinstance(verifier, str):
        return author_domain(message)
    values = (v.decode("utf-8", "replace") for n, v in verifier.headers if n.lower() == b"from")
    return author_of(values)


def _unexpected(what: str, exc: Exception) -> str:
    """One log line for an error dkimpy did not expect, and the reason for the header."""
    log.warning("%s verification failed in dkimpy: %s: %s", what, type(exc).__name__, exc)
    return f"unreadable: {type(exc).__name__}"


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(dkim.util.parse_tag_value(value))
    except dkim.util.InvalidTagValueList:
        return {}


def _token(value: bytes) -> str:
    """A tag's value as a token fit for the header (anything odd in it dropped)."""
    return _TOKEN.sub(b"", value).decode("ascii")[:253]
