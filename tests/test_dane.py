"""DANE matching (RFC 7672, runtime/decide/dane.py) of certificate chains made by the
test's CA (tests/tlskit.py) against TLSA records."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tlskit import Authority, Issued

from mailplan.runtime.decide import dane
from mailplan.runtime.decide.dane import Tlsa

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


def der(issued: Issued) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in issued.chain]


def anchor(authority: Authority, selector: int = 1, mtype: int = 1) -> Tlsa:
    intermediate = authority.intermediate.public_bytes(serialization.Encoding.DER)
    return dane.record_for(intermediate, dane.DANE_TA, selector, mtype)


@pytest.mark.parametrize(("selector", "mtype"), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)])
def test_dane_ee_matches_whatever_the_names_and_dates(
    authority: Authority, selector: int, mtype: int
) -> None:
    # RFC 7672 §3.1.1: a DANE-EE record authenticates the key; names and expiry do not count.
    for issued in (
        authority.self_signed("somewhere.else"),
        authority.issue("other.test", expired=True, label="ee-old"),
    ):
        record = dane.record_for(issued.der, dane.DANE_EE, selector, mtype)
        assert dane.check(der(issued), [record], "mx.example.test", NOW) is None


def test_dane_ee_of_another_key_does_not_match(authority: Authority) -> None:
    presented = authority.self_signed("mx.example.test")
    other = authority.self_signed("mx.example.test", label="other")
    record = dane.record_for(other.der)
    assert dane.check(der(presented), [record], "mx.example.test", NOW) == dane.Mismatch(
        "no certificate of the chain matches the TLSA records of mx.example.test",
        "validation-failure",
    )


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1), (1, 2)])
def test_dane_ta_needs_a_valid_chain_for_the_mx_name(
    authority: Authority, selector: int, mtype: int
) -> None:
    issued = authority.issue("mx.example.test", "*.pool.example.test", label="ta")
    record = anchor(authority, selector, mtype)
    assert dane.check(der(issued), [record], "mx.example.test", NOW) is None
    assert dane.check(der(issued), [record], "a.pool.example.test", NOW) is None
    assert dane.check(der(issued), [record], "other.example.test", NOW) == dane.Mismatch(
        "chain to the DANE-TA anchor is not valid: validation failed: "
        "leaf certificate has no matching subjectAltName for other.example.test",
        "certificate-host-mismatch",
    )


def test_dane_ta_with_an_expired_leaf_fails(authority: Authority) -> None:
    issued = authority.issue("mx.example.test", expired=True, label="ta-old")
    found = dane.check(der(issued), [anchor(authority)], "mx.example.test", NOW)
    assert found == dane.Mismatch(
        "chain to the DANE-TA anchor is not valid: validation failed: "
        "cert is not valid at validation time",
        "certificate-expired",
    )


def test_dane_ta_must_be_in_the_presented_chain(authority: Authority) -> None:
    issued = authority.issue("mx.example.test", label="ta-leaf-only")
    found = dane.check(der(issued)[:1], [anchor(authority)], "mx.example.test", NOW)
    assert found is not None and found.reason.startswith("no certificate of the chain matches")


def test_unusable_records_are_ignored(authority: Authority) -> None:
    issued = authority.self_signed("mx.example.test", label="pkix")
    good = dane.record_for(issued.der)
    pkix_ee = Tlsa(1, good.selector, good.mtype, good.data)  # PKIX-EE: not for SMTP
    odd = Tlsa(3, 7, 1, good.data)
    assert dane.usable([pkix_ee, odd, good]) == (good,)
    assert dane.check(der(issued), [pkix_ee, odd], "mx.example.test", NOW) is not None


def test_garbage_from_the_server(tmp_path: Path) -> None:
    record = Tlsa(3, 1, 1, b"\0" * 32)
    assert dane.check([], [record], "mx.test", NOW) == dane.Mismatch(
        "the server presented no certificate", "validation-failure"
    )
    found = dane.check([b"not a certificate"], [record], "mx.test", NOW)
    assert found is not None and found.reason.startswith("the server's certificate does not parse")


def test_record_text() -> None:
    assert str(Tlsa(3, 1, 1, bytes.fromhex("abcd"))) == "3 1 1 abcd"
