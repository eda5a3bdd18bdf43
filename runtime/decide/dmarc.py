"""DMARC (RFC 7489), decided: the policy record, the organisational domain, alignment and
what the site does with a message, as pure functions of what DNS answered.

The I/O is the caller's (`runtime/smtp/authentication.py`): it asks `names(author)` for
the TXT records, in order, stopping at the first name that has a DMARC record, and
hands the answers to `evaluate`. The organisational domain comes from the Public Suffix
List through `publicsuffixlist` (the list is bundled: no network); tag=value lists are
read with dkimpy's parser, the one DKIM records are read with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffixlist import PublicSuffixList

Policy = Literal["none", "quarantine", "reject"]
Mode = Literal["relaxed", "strict"]
Action = Literal["reject", "quarantine", "none"]  # the most the site does (`receiving.dmarc`)

_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62}\.?)*", re.IGNORECASE)  # A-labels only
_SUFFIXES = PublicSuffixList()  # unknown top-level names count as public suffixes
_POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")


class UnusableRecord(Exception):
    """A DMARC record that cannot be used (RFC 7489 §6.6.3: as if there were none)."""


@dataclass(frozen=True)
class DmarcRecord:
    """A `v=DMARC1` record: `p`, `sp` (None: as `p`), `adkim`, `aspf`, `pct`."""

    policy: Policy
    subdomain_policy: Policy | None
    adkim: Mode
    aspf: Mode
    percent: int


@dataclass(frozen=True)
class Found:
    """What the look-ups gave: the record and the domain it was found at, or why not.

    `trouble`: DNS did not answer (temperror); `broken`: a record at `domain` that is
    not one (permerror); neither and no record: the domain publishes no policy."""

    domain: str | None = None
    record: DmarcRecord | None = None
    trouble: str | None = None
    broken: str | None = None


@dataclass(frozen=True)
class DmarcVerdict:
    """The DMARC result for one message and what is done with it.

    `result`: pass, fail, none, temperror or permerror (RFC 8601's words); `policy`:
    the sender's policy that applies (p or sp; a sampled-out `pct` lowers it, §6.6.4);
    `disposition`: what the site does (reject, quarantine, none)."""

    result: str
    author: str | None
    policy: Policy | None = None
    disposition: Action = "none"
    reason: str = ""


def organisational_domain(domain: str) -> str:
    """The registered domain of `domain` (one label below its public suffix), or the
    domain itself when it is a public suffix (RFC 7489 §3.2)."""
    name = domain.lower().rstrip(".")
    return _SUFFIXES.privatesuffix(name) or name


def names(author: str) -> tuple[str, ...]:
    """Where the policy is looked for, in order: the author domain, then its
    organisational domain (§6.6.3)."""
    organisational = organisational_domain(author)
    first = f"_dmarc.{author}"
    return (first,) if organisational == author else (first, f"_dmarc.{organisational}")


def record(texts: Sequence[str]) -> DmarcRecord | None:
    """The one DMARC record among a name's TXT strings, or None when there is none.

    UnusableRecord when there are several (§6.6.3) or `p` is missing or wrong (§6.3: a record
    without a valid `p` is one with p=none only when it has a `rua`)."""
    found = [t for t in texts if t.strip().lower().replace(" ", "").startswith("v=dmarc1")]
    if not found:
        return None
    if len(found) > 1:
        raise UnusableRecord("more than one DMARC record")
    try:
        tags = {
            k.decode().lower(): v.decode().strip()
            for k, v in parse_tag_value(found[0].encode()).items()
        }
    except (InvalidTagValueList, UnicodeError) as exc:
        raise UnusableRecord(f"not a tag=value list: {exc}") from None
    if tags.get("v") != "DMARC1":
        raise UnusableRecord("v= is not DMARC1")
    policy = _policy(tags.get("p"))
    if policy is None:
        if "rua" not in tags:
            raise UnusableRecord(f"no valid p= ({tags.get('p', 'missing')})")
        policy = "none"
    return DmarcRecord(
        policy=policy,
        subdomain_policy=_policy(tags.get("sp")),
        adkim="strict" if tags.get("adkim", "r").lower() == "s" else "relaxed",
        aspf="strict" if tags.get("aspf", "r").lower() == "s" else "relaxed",
        percent=_percent(tags.get("pct")),
    )


def _policy(value: str | None) -> Policy | None:
    lowered = (value or "").lower()
    return next((p for p in _POLICIES if p == lowered), None)


def _percent(value: str | None) -> int:
    if value is None or not value.isdigit():
        return 100
    return min(int(value), 100)


def aligned(identifier: str, author: str, mode: Mode) -> bool:
    """Whether an authenticated domain is aligned with the author domain (§3.1)."""
    a, b = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if mode == "strict":
        return a == b
    return organisational_domain(a) == organisational_domain(b)


def evaluate(
    author: str | None,
    found: Found,
    spf: tuple[str, str],
    dkim: Sequence[tuple[str, str]],
    action: Action,
    roll: float,
) -> DmarcVerdict:
    """The verdict for a message whose From domain is `author`.

    `spf`: (result, the domain it was for: MAIL FROM's, or HELO's for a bounce); `dkim`:
    (result, d=) of every signature; `action`: the site's `receiving.dmarc.action`;
    `roll`: a number in [0, 100) drawn for this message, compared with `pct`."""
    if author is None:
        return DmarcVerdict("permerror", None, reason="the From field has no single domain")
    if not _DOMAIN.fullmatch(author):
        return DmarcVerdict("permerror", None, reason="the From field's domain is no domain name")
    if found.trouble is not None:
        return DmarcVerdict("temperror", author, reason=found.trouble)
    if found.broken is not None:
        return DmarcVerdict("permerror", author, reason=found.broken)
    rule = found.record
    if rule is None or found.domain is None:
        return DmarcVerdict("none", author, reason="no DMARC record")
    spf_ok = spf[0] == "pass" and bool(spf[1]) and aligned(spf[1], author, rule.aspf)
    dkim_ok = any(r == "pass" and aligned(d, author, rule.adkim) for r, d in dkim)
    at_author = found.domain.lower() == author.lower()
    policy: Policy = rule.policy if at_author else (rule.subdomain_policy or rule.policy)
    if spf_ok or dkim_ok:
        how = "DKIM" if dkim_ok else "SPF"
        return DmarcVerdict("pass", author, policy, reason=f"aligned {how} pass")
    unsure = (spf[0] == "temperror" and bool(spf[1]) and aligned(spf[1], author, rule.aspf)) or any(
        r == "temperror" and aligned(d, author, rule.adkim) for r, d in dkim
    )
    if unsure:  # DNS trouble may have hidden a pass: never a refusal for good
        return DmarcVerdict("temperror", author, policy, reason="an aligned check had DNS trouble")
    applied = policy
    if roll >= rule.percent:  # not sampled: one step milder (§6.6.4)
        applied = "quarantine" if policy == "reject" else "none"
    ceiling = _POLICIES.index(action)
    disposition = _POLICIES[min(_POLICIES.index(applied), ceiling)]
    sampled = "" if applied == policy else f", pct={rule.percent} not sampled"
    return DmarcVerdict(
        "fail",
        author,
        policy,
        disposition,
        reason=f"no aligned SPF or DKIM pass (p={policy} at {found.domain}{sampled})",
    )
