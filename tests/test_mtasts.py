"""MTA-STS (RFC 8461): the record, the policy file and MX patterns (runtime/decide/mtasts.py),
and the fetch and durable cache (runtime/delivery/mtasts.py) against an HTTPS server on
loopback with a certificate from the test's CA and a DNS server on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnskit import NameServer, zone_text
from tlskit import Authority, PolicyServer

from mailplan.runtime.decide import mtasts
from mailplan.runtime.delivery import mtasts as fetching
from mailplan.runtime.dns import mx

POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.net\r\n"
    "mx: *.backup.example.net\r\nmax_age: 604800\r\n"
)


# --- the record --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=x1"], "x1"),
    ],
)
def test_the_record_id(texts: list[str], expected: str) -> None:
    assert mtasts.record_id(texts) == expected


@pytest.mark.parametrize(
    ("texts", "reason"),
    [
        ([], "no v=STSv1 record"),
        (["v=STSv10; id=1"], "no v=STSv1 record"),
        (["v=STSv1; id=1", "v=STSv1; id=2"], "more than one v=STSv1 record"),
        (
            ["v=STSv1; id=not-alnum"],
            "the record's id is not 1 to 32 letters and digits: 'not-alnum'",
        ),
        (["v=STSv1;"], "the record's id is not 1 to 32 letters and digits: ''"),
    ],
)
def test_records_that_give_no_policy(texts: list[str], reason: str) -> None:
    with pytest.raises(mtasts.Invalid) as raised:
        mtasts.record_id(texts)
    assert str(raised.value) == reason


# --- the policy --------------------------------------------------------------------------


def test_a_policy_with_crlf_lines() -> None:
    policy = mtasts.parse(POLICY, "id1", 1000.0)
    assert policy == mtasts.StsPolicy(
        "enforce", ("mail.example.net", "*.backup.example.net"), 604800, "id1", 1000.0
    )
    assert not policy.expired(1000.0 + 604799)
    assert policy.expired(1000.0 + 604800)
    assert policy.text().split("\n") == [
        "version: STSv1",
        "mode: enforce",
        "mx: mail.example.net",
        "mx: *.backup.example.net",
        "max_age: 604800",
    ]


def test_max_age_is_capped_at_a_year() -> None:
    policy = mtasts.parse("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 99999999\n", "i", 0)
    assert policy.max_age == 31_557_600


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "the policy's version is not STSv1"),
        (
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "the policy's mode is not enforce, testing or none: 'strict'",
        ),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "the policy names no mx"),
        (
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: soon\n",
            "the policy's max_age is not a number of seconds: 'soon'",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
            "not an MX pattern: 'a..test'",
        ),
        ("<html>oops</html>\n", "a line that is not `key: value`: '<html>oops</html>'"),
    ],
)
def test_invalid_policies(text: str, reason: str) -> None:
    with pytest.raises(mtasts.Invalid) as raised:
        mtasts.parse(text, "i", 0)
    assert str(raised.value) == reason


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mail.example.net", True),
        ("MAIL.example.net.", True),
        ("mx1.backup.example.net", True),
        ("backup.example.net", False),  # the wildcard needs one label more
        ("a.b.backup.example.net", False),  # ... exactly one
        ("mail.example.net.evil.test", False),
        ("other.example.net", False),
    ],
)
def test_mx_patterns(host: str, allowed: bool) -> None:
    assert mtasts.allows(("mail.example.net", "*.backup.example.net"), host) is allowed


# --- the fetch and the cache ----------------------------------------------------------


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def web(authority: Authority) -> Iterator[PolicyServer]:
    names = [f"mta-sts.{d}.test" for d in ("good", "big", "html", "bad", "invalid")]
    server = PolicyServer("127.0.0.30", authority.issue(*names, label="web"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NameServer]:
    records = 'mta-sts IN A 127.0.0.30\n_mta-sts IN TXT "v=STSv1; id=one"\n'
    domains = ("good.test", "big.test", "html.test", "bad.test", "invalid.test")
    zones = {d: zone_text(d, records) for d in domains}
    zones["wrongcert.test"] = zone_text("wrongcert.test", records)
    with NameServer(tmp_path_factory.mktemp("dns"), zones) as server:
        yield server


FAILURES: list[str] = []  # the TLS-RPT result type of each fetch, in order


def _policy(
    directory: Path, web: PolicyServer, dns_server: NameServer, authority: Authority, domain: str
) -> tuple[mtasts.StsPolicy | None, str]:
    async def run() -> tuple[mtasts.StsPolicy | None, str]:
        cache = fetching.Cache(directory)
        fetcher = fetching.Fetcher(
            cache, mx.resolver(dns_server.address, 2.0), authority.client_context(), web.port
        )
        found = await fetcher.policy(domain)
        FAILURES.append(found.failure)
        return found.policy, found.note

    return asyncio.run(run())


def test_a_policy_is_fetched_and_cached_durably(
    web: PolicyServer, dns_server: NameServer, authority: Authority, tmp_path: Path
) -> None:
    web.policies["mta-sts.good.test"] = POLICY
    policy, note = _policy(tmp_path, web, dns_server, authority, "good.test")
    assert policy is not None and (policy.mode, policy.id, note) == ("enforce", "one", "fetched")
    saved = json.loads((tmp_path / "mta-sts.json").read_text())
    assert saved["good.test"]["mx"] == ["mail.example.net", "*.backup.example.net"]
    fetches = len(web.fetches)
    again, note = _policy(tmp_path, web, dns_server, authority, "good.test")  # a new process
    assert (again, note) == (policy, "cached")
    assert len(web.fetches) == fetches


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        ("big.test", "https://mta-sts.big.test/: the policy is larger than 65536 bytes"),
        ("html.test", "https://mta-sts.html.test/: Content-Type 'text/html', not text/plain"),
        ("bad.test", "https://mta-sts.bad.test/: HTTP 404"),
        ("invalid.test", "the policy's mode is not enforce, testing or none: 'on'"),
        ("nowhere.test", "mta-sts.nowhere.test: DNS failure (server failure)"),
    ],
)
def test_policies_that_cannot_be_fetched(
    web: PolicyServer,
    dns_server: NameServer,
    authority: Authority,
    tmp_path: Path,
    domain: str,
    reason: str,
) -> None:
    web.policies["mta-sts.big.test"] = POLICY + "x: " + "y" * 70000 + "\n"
    web.policies["mta-sts.html.test"] = POLICY
    web.policies["mta-sts.invalid.test"] = POLICY.replace("enforce", "on")
    web.content_type = "text/html" if domain == "html.test" else "text/plain"
    policy, note = _policy(tmp_path, web, dns_server, authority, domain)
    web.content_type = "text/plain"
    if domain == "nowhere.test":  # no zone: the TXT look-up itself fails
        assert (policy, note) == (None, "_mta-sts.nowhere.test TXT: server failure")
        assert FAILURES[-1] == ""  # no policy published as far as anyone knows: no failure
        return
    assert (policy, note) == (None, f"policy fetch failed: {reason}")
    invalid = domain == "invalid.test"
    assert FAILURES[-1] == ("sts-policy-invalid" if invalid else "sts-policy-fetch-error")
    assert not (tmp_path / "mta-sts.json").exists()


def test_a_policy_is_never_fetched_over_an_unverified_connection(
    dns_server: NameServer, authority: Authority, tmp_path: Path
) -> None:
    # The policy server's certificate is not for mta-sts.wrongcert.test.
    server = PolicyServer("127.0.0.30", authority.issue("mta-sts.good.test", label="other-web"))
    server.policies["mta-sts.wrongcert.test"] = POLICY
    try:
        policy, note = _policy(tmp_path, server, dns_server, authority, "wrongcert.test")
    finally:
        server.close()
    assert policy is None
    assert note.startswith("policy fetch failed: https://mta-sts.wrongcert.test/: ")
    assert "certificate verify failed" in note
    assert FAILURES[-1] == "sts-webpki-invalid"
    assert server.fetches == []


def test_a_fresh_cached_policy_outlives_a_failed_fetch(
    web: PolicyServer, dns_server: NameServer, authority: Authority, tmp_path: Path
) -> None:
    old = mtasts.StsPolicy("enforce", ("mx.bad.test",), 86400, "zero", time.time())
    fetching.Cache(tmp_path).put("bad.test", old)
    web.policies.pop("mta-sts.bad.test", None)
    policy, note = _policy(tmp_path, web, dns_server, authority, "bad.test")
    assert policy == old
    assert (
        note == "cached; the new policy could not be fetched: https://mta-sts.bad.test/: HTTP 404"
    )


def test_an_unreadable_cache_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "mta-sts.json").write_text("{not json")
    assert fetching.Cache(tmp_path).policies == {}
    assert "cannot read the MTA-STS policy cache, starting afresh" in caplog.text
