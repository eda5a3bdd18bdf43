"""What outbound TLS a domain needs, and why (runtime/decide/tlsneed.py): pure."""

from __future__ import annotations

import pytest

from mailplan.runtime.decide import tlsneed
from mailplan.runtime.decide.dane import Tlsa
from mailplan.runtime.decide.mtasts import StsPolicy
from mailplan.runtime.decide.tlsneed import HostCheck, Lookup, TlsFacts

EE = Tlsa(3, 1, 1, b"\1" * 32)
ENFORCE = StsPolicy("enforce", ("mx1.example.net", "*.pool.example.net"), 86400, "a1", 0.0)
TESTING = StsPolicy("testing", ("mx1.example.net",), 86400, "a2", 0.0)


def test_dane_wins_over_mta_sts() -> None:
    # RFC 8461 §2: a domain with both is delivered to by DANE.
    needed = tlsneed.need(
        TlsFacts(
            "example.net",
            dane="secure",
            tlsa={"mx1.example.net": Lookup((EE,)), "mx2.example.net": Lookup()},
            sts=ENFORCE,
            sts_note="fetched",
        )
    )
    assert (needed.level, needed.policy_type) == ("dane", "tlsa")
    assert needed.policy_strings == (f"_25._tcp.mx1.example.net TLSA 3 1 1 {'01' * 32}",)
    assert tlsneed.host_check(needed, "mx1.example.net") == HostCheck("dane", (EE,))
    # a host of the domain without TLSA records: opportunistic (RFC 7672 §2.2)
    assert tlsneed.host_check(needed, "mx2.example.net") == HostCheck("opportunistic")


def test_a_failed_tlsa_look_up_makes_the_host_wait() -> None:
    needed = tlsneed.need(
        TlsFacts("example.net", dane="secure", tlsa={"mx1.example.net": Lookup(failure="time-out")})
    )
    assert needed.level == "dane"
    assert tlsneed.host_check(needed, "mx1.example.net") == HostCheck(
        "skip", reason="TLSA look-up failed: time-out"
    )


def test_unusable_tlsa_records_still_mean_encryption() -> None:
    pkix = Tlsa(1, 1, 1, b"\1" * 32)
    needed = tlsneed.need(
        TlsFacts("example.net", dane="secure", tlsa={"mx1.example.net": Lookup((pkix,))})
    )
    assert tlsneed.host_check(needed, "mx1.example.net") == HostCheck("encrypt")


def test_insecure_dns_means_no_dane() -> None:
    needed = tlsneed.need(
        TlsFacts(
            "example.net",
            dane="not used: the MX records are not DNSSEC-validated",
            tlsa={"mx1.example.net": Lookup((EE,))},
        )
    )
    assert needed.level == "opportunistic"
    assert needed.reason == (
        "no policy (DANE not used: the MX records are not DNSSEC-validated; MTA-STS off): "
        "STARTTLS when offered"
    )


def test_mta_sts_enforce() -> None:
    needed = tlsneed.need(TlsFacts("example.net", sts=ENFORCE, sts_note="cached"))
    assert needed.level == "mta-sts" and needed.strict
    assert needed.reason == (
        "MTA-STS policy id a1 in enforce mode (cached), mx mx1.example.net *.pool.example.net"
    )
    assert needed.mx_patterns == ENFORCE.mx
    assert tlsneed.host_check(needed, "mx1.example.net") == HostCheck("pkix")
    assert tlsneed.host_check(needed, "a.pool.example.net") == HostCheck("pkix")
    assert tlsneed.host_check(needed, "evil.example.org") == HostCheck(
        "skip", reason="not an MX host the MTA-STS policy allows"
    )


def test_mta_sts_testing() -> None:
    needed = tlsneed.need(TlsFacts("example.net", sts=TESTING, sts_note="fetched"))
    assert needed.level == "mta-sts-testing" and not needed.strict
    assert tlsneed.host_check(needed, "mx1.example.net") == HostCheck("pkix-testing")
    assert tlsneed.host_check(needed, "other.example.net") == HostCheck(
        "pkix-testing", reason="not an MX host the MTA-STS policy allows"
    )


@pytest.mark.parametrize("policy", [None, TESTING])
def test_require_tls_is_verified_tls(policy: StsPolicy | None) -> None:
    needed = tlsneed.need(TlsFacts("bank.example", required=True, sts=policy))
    assert needed.level == "required"
    assert tlsneed.host_check(needed, "mx.bank.example") == HostCheck("pkix")


def test_require_tls_with_dane_hosts_without_tlsa_are_verified() -> None:
    needed = tlsneed.need(
        TlsFacts(
            "bank.example",
            required=True,
            dane="secure",
            tlsa={"mx1.bank.example": Lookup((EE,)), "mx2.bank.example": Lookup()},
        )
    )
    assert tlsneed.host_check(needed, "mx1.bank.example").check == "dane"
    assert tlsneed.host_check(needed, "mx2.bank.example") == HostCheck("pkix")


def test_mode_none_is_no_policy() -> None:
    none = StsPolicy("none", (), 86400, "a3", 0.0)
    needed = tlsneed.need(TlsFacts("example.net", sts=none, sts_note="fetched"))
    assert needed.level == "opportunistic"
    assert tlsneed.host_check(needed, "anything.example") == HostCheck("opportunistic")


def test_a_failed_policy_fetch_is_reported_under_mta_sts() -> None:
    needed = tlsneed.need(
        TlsFacts(
            "example.net",
            sts_note="policy fetch failed: https://mta-sts.example.net/: HTTP 404",
            sts_failure="sts-policy-fetch-error",
        )
    )
    assert (needed.level, needed.policy_type, needed.failure) == (
        "opportunistic",
        "sts",
        "sts-policy-fetch-error",
    )
    assert needed.reason.endswith(
        "MTA-STS policy fetch failed: https://mta-sts.example.net/: HTTP 404): "
        "STARTTLS when offered"
    )
