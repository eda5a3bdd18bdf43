"""Which mail is DKIM-signed, and with which selectors (runtime/decide/signing.py), on a
compiled site: ours to sign (an authenticated user or a Client IP) and a hosted From."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sitekit import plain, write_site

from mailplan.compiler.pipeline import compile_site
from mailplan.runtime.decide.policy import Client
from mailplan.runtime.decide.signing import Signature, Signing, author_domain
from tests.conftest import EXAMPLE

RSA = {"selector": "mail2026", "public_key": "dkim/mail2026.example.com.pub"}
ED = {"selector": "ed2026", "public_key": "dkim/ed2026.example.com.pub"}


def signing(tmp_path: Path, example: list[dict[str, str]], **domains: object) -> Signing:
    site = tmp_path / "site"
    shutil.copytree(EXAMPLE / "dkim", site / "dkim")
    write_site(
        site,
        listeners={"smtp": plain(2525)},
        domains={"example.com": {"dkim": example, "aliases": ["example.net"]}, **domains},
    )
    unit = compile_site(site)
    assert unit.plan is not None, unit.diagnostics
    return Signing(unit.plan)


@pytest.fixture
def both(tmp_path: Path) -> Signing:
    """example.com signs with both selectors (a rotation); example.org publishes only."""
    return signing(
        tmp_path,
        [{**RSA, "private_key": "/keys/rsa.key"}, {**ED, "private_key": "/keys/ed.key"}],
        **{"example.org": {"dkim": [RSA]}},
    )


CLIENT_IP = Client("127.0.0.1", trusted=True, tls=False)
USER = Client("192.0.2.7", trusted=False, tls=True, authenticated="alice@example.com")
STRANGER = Client("198.51.100.1", trusted=False, tls=False)


def message(author: str) -> bytes:
    return f"From: {author}\r\nTo: x@remote.test\r\nSubject: hi\r\n\r\nbody\r\n".encode()


@pytest.mark.parametrize("client", [CLIENT_IP, USER], ids=["client-ip", "authenticated"])
def test_ours_from_a_hosted_domain_is_signed_by_every_selector(
    both: Signing, client: Client
) -> None:
    assert both.signatures(client, message("Alice <alice@Example.COM>")) == (
        Signature("example.com", "mail2026", "rsa", "example.com"),
        Signature("example.com", "ed2026", "ed25519", "example.com"),
    )


def test_a_domain_alias_signs_as_itself_with_its_domains_keys(both: Signing) -> None:
    (first, _) = both.signatures(USER, message("alice@example.net"))
    assert first == Signature("example.net", "mail2026", "rsa", "example.com")
    assert first.text() == "d=example.net s=mail2026 a=rsa-sha256 (key of example.com)"


@pytest.mark.parametrize(
    ("client", "author"),
    [
        (STRANGER, "alice@example.com"),  # from outside: not ours to sign
        (CLIENT_IP, "someone@elsewhere.test"),  # relayed for others
        (USER, "x@example.org"),  # published, no private key: does not sign
        (USER, "x@sub.example.com"),  # a subdomain is not the hosted domain
        (USER, "a@example.com, b@elsewhere.test"),  # authors of two domains
        (USER, "undisclosed-recipients:;"),  # no address
    ],
    ids=["stranger", "relayed", "no-private-key", "subdomain", "two-domains", "no-address"],
)
def test_what_is_not_signed(both: Signing, client: Client, author: str) -> None:
    assert both.signatures(client, message(author)) == ()


def test_a_message_without_from_is_not_signed(both: Signing) -> None:
    assert both.signatures(USER, b"Subject: hi\r\n\r\nbody\r\n") == ()


def test_a_site_without_private_keys_signs_nothing(tmp_path: Path) -> None:
    assert signing(tmp_path, [RSA]).keys == {}


@pytest.mark.parametrize(
    ("header", "domain"),
    [
        (b"From: Alice <alice@example.com>\r\n", "example.com"),
        (b"From: alice@EXAMPLE.com.\r\n", "example.com"),
        (b"From: =?utf-8?q?J=C3=B6rg?= <j@b\xc3\xbccher.example>\r\n", "xn--bcher-kva.example"),
        (b"From: a@example.com,\r\n b@example.com\r\n", "example.com"),
        (b"From: a@example.com\nTo: b@other.test\n", "example.com"),
    ],
    ids=["display-name", "case-and-dot", "idn", "folded-two-of-one", "lf-only"],
)
def test_the_author_domain(header: bytes, domain: str) -> None:
    assert author_domain(header + b"\r\nbody\r\n") == domain
