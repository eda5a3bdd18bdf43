"""DMARC decided (runtime/decide/dmarc.py): records, organisational domains, alignment,
p/sp/pct and the site's action, as pure functions of given look-up results."""

from __future__ import annotations

import pytest

from mailplan.runtime.decide.dmarc import (
    DmarcRecord,
    Found,
    UnusableRecord,
    aligned,
    evaluate,
    names,
    organisational_domain,
    record,
)


@pytest.mark.parametrize(
    ("domain", "organisational"),
    [
        ("example.com", "example.com"),
        ("mail.news.example.com", "example.com"),
        ("Example.CO.UK.", "example.co.uk"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),  # a public suffix is its own
        ("sender.test", "sender.test"),  # an unknown top-level name counts as a suffix
        ("sub.sender.test", "sender.test"),
        ("foo.github.io", "foo.github.io"),  # the list's private section
    ],
)
def test_organisational_domain(domain: str, organisational: str) -> None:
    assert organisational_domain(domain) == organisational


def test_the_policy_is_looked_for_at_the_author_then_the_organisational_domain() -> None:
    assert names("example.com") == ("_dmarc.example.com",)
    assert names("news.example.com") == ("_dmarc.news.example.com", "_dmarc.example.com")


def test_a_full_record() -> None:
    found = record(["v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=s; pct=20; rua=mailto:x@y"])
    assert found == DmarcRecord("reject", "quarantine", "strict", "strict", 20)


def test_defaults_of_a_bare_record() -> None:
    assert record(["v=DMARC1; p=none"]) == DmarcRecord("none", None, "relaxed", "relaxed", 100)


@pytest.mark.parametrize(
    "texts",
    [[], ["v=spf1 -all"], ["something else", "v=DKIM1; p=abc"]],
    ids=["nothing", "spf", "others"],
)
def test_no_dmarc_record_among_the_texts(texts: list[str]) -> None:
    assert record(texts) is None


@pytest.mark.parametrize(
    ("texts", "why"),
    [
        (["v=DMARC1; p=reject", "v=DMARC1; p=none"], "more than one DMARC record"),
        (["v=DMARC1; p=maybe"], "no valid p= (maybe)"),
        (["v=DMARC1"], "no valid p= (missing)"),
        (["v=DMARC1; p=reject; p=none"], "not a tag=value list"),
    ],
    ids=["two", "bad-p", "no-p", "duplicate-tag"],
)
def test_unusable_records(texts: list[str], why: str) -> None:
    with pytest.raises(UnusableRecord, match=why.replace("(", r"\(").replace(")", r"\)")):
        record(texts)


def test_a_record_without_p_but_with_rua_is_p_none() -> None:
    found = record(["v=DMARC1; rua=mailto:reports@example.com"])
    assert found is not None and found.policy == "none"


def test_pct_out_of_range_is_clamped_and_garbage_is_100() -> None:
    assert record(["v=DMARC1; p=reject; pct=250"]) == DmarcRecord(
        "reject", None, "relaxed", "relaxed", 100
    )
    assert record(["v=DMARC1; p=reject; pct=x"]) == DmarcRecord(
        "reject", None, "relaxed", "relaxed", 100
    )


@pytest.mark.parametrize(
    ("identifier", "author", "mode", "expected"),
    [
        ("example.com", "example.com", "strict", True),
        ("mail.example.com", "example.com", "strict", False),
        ("mail.example.com", "example.com", "relaxed", True),
        ("example.com", "news.example.com", "relaxed", True),
        ("example.net", "example.com", "relaxed", False),
        ("a.example.co.uk", "b.example.co.uk", "relaxed", True),
        ("other.co.uk", "example.co.uk", "relaxed", False),
    ],
)
def test_alignment(identifier: str, author: str, mode: str, expected: bool) -> None:
    assert aligned(identifier, author, mode) is expected  # type: ignore[arg-type]


REJECT = Found("example.com", DmarcRecord("reject", None, "relaxed", "relaxed", 100))
FAILED_SPF = ("fail", "example.com")


def test_aligned_dkim_passes_even_when_spf_fails() -> None:
    verdict = evaluate("example.com", REJECT, FAILED_SPF, [("pass", "example.com")], "reject", 0)
    assert (verdict.result, verdict.disposition, verdict.policy) == ("pass", "none", "reject")


def test_aligned_spf_passes() -> None:
    verdict = evaluate("example.com", REJECT, ("pass", "bounces.example.com"), [], "reject", 0)
    assert verdict.result == "pass" and verdict.reason == "aligned SPF pass"


def test_a_pass_that_is_not_aligned_fails() -> None:
    verdict = evaluate(
        "example.com", REJECT, ("pass", "example.net"), [("pass", "example.net")], "reject", 0
    )
    assert (verdict.result, verdict.disposition) == ("fail", "reject")


def test_a_failed_aligned_signature_does_not_count() -> None:
    verdict = evaluate("example.com", REJECT, FAILED_SPF, [("fail", "example.com")], "reject", 0)
    assert verdict.disposition == "reject"


@pytest.mark.parametrize(
    ("action", "policy", "disposition"),
    [
        ("reject", "reject", "reject"),
        ("reject", "quarantine", "quarantine"),
        ("reject", "none", "none"),
        ("quarantine", "reject", "quarantine"),
        ("quarantine", "quarantine", "quarantine"),
        ("none", "reject", "none"),
    ],
)
def test_the_sites_action_is_a_ceiling(action: str, policy: str, disposition: str) -> None:
    found = Found("example.com", DmarcRecord(policy, None, "relaxed", "relaxed", 100))  # type: ignore[arg-type]
    verdict = evaluate("example.com", found, FAILED_SPF, [], action, 50)  # type: ignore[arg-type]
    assert (verdict.result, verdict.disposition) == ("fail", disposition)


def test_a_subdomain_gets_sp_found_at_the_organisational_domain() -> None:
    found = Found("example.com", DmarcRecord("none", "reject", "relaxed", "relaxed", 100))
    verdict = evaluate("news.example.com", found, ("fail", "x.test"), [], "reject", 0)
    assert (verdict.policy, verdict.disposition) == ("reject", "reject")
    at_author = evaluate("example.com", found, ("fail", "x.test"), [], "reject", 0)
    assert (at_author.policy, at_author.disposition) == ("none", "none")


def test_a_subdomain_without_sp_gets_p() -> None:
    found = Found("example.com", DmarcRecord("quarantine", None, "relaxed", "relaxed", 100))
    verdict = evaluate("news.example.com", found, ("fail", "x.test"), [], "reject", 0)
    assert verdict.disposition == "quarantine"


@pytest.mark.parametrize(
    ("roll", "disposition"),
    [(0, "reject"), (24.9, "reject"), (25, "quarantine"), (99.9, "quarantine")],
)
def test_pct_samples_and_the_rest_gets_one_step_milder(roll: float, disposition: str) -> None:
    found = Found("example.com", DmarcRecord("reject", None, "relaxed", "relaxed", 25))
    verdict = evaluate("example.com", found, FAILED_SPF, [], "reject", roll)
    assert verdict.disposition == disposition


def test_pct_on_quarantine_lets_the_rest_through() -> None:
    found = Found("example.com", DmarcRecord("quarantine", None, "relaxed", "relaxed", 0))
    assert evaluate("example.com", found, FAILED_SPF, [], "reject", 0).disposition == "none"


def test_strict_alignment() -> None:
    found = Found("example.com", DmarcRecord("reject", None, "strict", "strict", 100))
    relaxed_pass = [("pass", "mail.example.com")]
    assert evaluate("example.com", found, FAILED_SPF, relaxed_pass, "reject", 0).result == "fail"
    exact = [("pass", "example.com")]
    assert evaluate("example.com", found, FAILED_SPF, exact, "reject", 0).result == "pass"


@pytest.mark.parametrize(
    ("author", "found", "result"),
    [
        (None, REJECT, "permerror"),
        ("example.com", Found(trouble="time-out"), "temperror"),
        ("example.com", Found("example.com", broken="two records"), "permerror"),
        ("example.com", Found(), "none"),
    ],
    ids=["no-single-from-domain", "dns-trouble", "broken", "no-record"],
)
def test_no_policy_applies(author: str | None, found: Found, result: str) -> None:
    verdict = evaluate(author, found, FAILED_SPF, [], "reject", 0)
    assert (verdict.result, verdict.disposition) == (result, "none")


@pytest.mark.parametrize("author", ["\ufffd\ufffd.test", "a b.test", "-.test;x"])
def test_a_from_domain_that_is_no_domain_name_is_a_permerror(author: str) -> None:
    verdict = evaluate(author, REJECT, FAILED_SPF, [], "reject", 0)
    assert (verdict.result, verdict.author, verdict.disposition) == ("permerror", None, "none")


def test_dns_trouble_in_an_aligned_check_is_a_temperror_not_a_refusal() -> None:
    spf_trouble = evaluate("example.com", REJECT, ("temperror", "example.com"), [], "reject", 0)
    assert (spf_trouble.result, spf_trouble.disposition) == ("temperror", "none")
    dkim_trouble = [("temperror", "example.com")]
    verdict = evaluate("example.com", REJECT, FAILED_SPF, dkim_trouble, "reject", 0)
    assert (verdict.result, verdict.disposition) == ("temperror", "none")
    elsewhere = evaluate("example.com", REJECT, FAILED_SPF, [("temperror", "x.test")], "reject", 0)
    assert elsewhere.disposition == "reject"  # trouble with an unaligned signature: no excuse
