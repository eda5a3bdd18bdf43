"""Policy: scopes, refusal at connect, relaying, MAIL FROM, RCPT TO and login, on compiled sites."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import Plan
from mailplan.runtime.decide import replies
from mailplan.runtime.decide.policy import Client, Policy, in_scope, international
from tests.conftest import EXAMPLE, ROOT

SCOPES = ("everybody", "clients-only", "everybody-except-clients", "nobody")

ROUTER = """\
<carol@example.com> = error "carol has left"
<noreply@example.com> = null
Access:<support@example.com> = alice@example.com
Relay:<jim@example.com> = jim@home.example
"""


def site_yaml(alice: str, carl: str, blacklist_scope: str = "everybody-except-clients") -> str:
    return f"""\
server:
  hostname: mail.example.com
  main_domain: example.com
  client_ips: |
    192.0.2.0/24
    2001:db8:1::/48
  blacklisted_ips: |
    203.0.113.66
    192.0.2.66
    2001:db8:1::66
receiving:
  blacklisted_ips: {blacklist_scope}
relaying:
  scope: clients-only
  authenticated: true
limits:
  max_recipients: 3
domains:
  example.com:
    aliases: [example.org]
    accounts:
      alice:
        password: {alice}
        aliases: [al, alison]
      bob: {{}}
      Carl.Smith:
        password: {carl}
    forwarders:
      info: sales@example.net
    lists:
      staff:
        owner: alice
        members: [alice@example.com]
  shop.example:
    unknown: {{route: "*%shop.example@[192.0.2.50]"}}
    accounts:
      orders:
        password: {alice}
routing: router.cgr
"""


def build(directory: Path, text: str, router: str = ROUTER) -> Plan:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "site.yaml").write_text(text, encoding="utf-8")
    (directory / "router.cgr").write_text(router, encoding="utf-8")
    unit = compile_site(directory)
    assert unit.plan is not None, unit.diagnostics
    return unit.plan


@pytest.fixture(scope="module")
def hashes() -> tuple[str, str]:
    hasher = PasswordHasher()
    return hasher.hash("alice-secret"), hasher.hash("carl ünïcode pässword")


@pytest.fixture(scope="module")
def plans(
    tmp_path_factory: pytest.TempPathFactory, hashes: tuple[str, str]
) -> Iterator[dict[str, Plan]]:
    built = {}
    for scope in SCOPES:
        directory = tmp_path_factory.mktemp(f"site-{scope}")
        built[scope] = build(directory, site_yaml(*hashes, blacklist_scope=scope))
    yield built


@pytest.fixture(scope="module")
def policy(plans: dict[str, Plan]) -> Policy:
    return Policy(plans["everybody-except-clients"])


STRANGER = Client("198.51.100.7", trusted=False, tls=False)
TRUSTED = Client("192.0.2.7", trusted=True, tls=False)
LOGGED_IN = Client("198.51.100.7", trusted=False, tls=True, authenticated="alice@example.com")


# Scopes


@pytest.mark.parametrize(
    ("scope", "client", "stranger"),
    [
        ("everybody", True, True),
        ("clients-only", True, False),
        ("everybody-except-clients", False, True),
        ("nobody", False, False),
    ],
)
def test_in_scope(scope: str, client: bool, stranger: bool) -> None:
    assert in_scope(scope, True) is client  # type: ignore[arg-type]
    assert in_scope(scope, False) is stranger  # type: ignore[arg-type]


def test_in_scope_unknown_scope_is_nobody() -> None:
    assert in_scope("somebody", True) is False  # type: ignore[arg-type]
    assert in_scope("somebody", False) is False  # type: ignore[arg-type]


# Client IPs and refusal at connect


def test_client_ips(policy: Policy) -> None:
    assert policy.client("192.0.2.7", tls=False) == Client("192.0.2.7", True, False)
    assert policy.client("192.0.2.255", tls=True).trusted
    assert policy.client("2001:db8:1::5", tls=False).trusted
    assert policy.client("::ffff:192.0.2.7", tls=False).trusted  # IPv4-mapped
    assert not policy.client("192.0.3.1", tls=False).trusted
    assert not policy.client("198.51.100.7", tls=False).trusted
    assert not policy.client("not an ip", tls=False).trusted
    assert not policy.client("", tls=False).trusted


@pytest.mark.parametrize(
    ("scope", "refuse_client", "refuse_stranger"),
    [
        ("everybody", True, True),
        ("clients-only", True, False),
        ("everybody-except-clients", False, True),
        ("nobody", False, False),
    ],
)
def test_refuse_connection_by_blacklist_scope(
    plans: dict[str, Plan], scope: str, refuse_client: bool, refuse_stranger: bool
) -> None:
    policy = Policy(plans[scope])
    assert policy.plan.receiving.blacklisted_ips == scope
    blacklisted_client = policy.client("192.0.2.66", tls=False)  # in both lists
    blacklisted_stranger = policy.client("203.0.113.66", tls=False)
    assert blacklisted_client.trusted and not blacklisted_stranger.trusted
    expected_client = replies.GREETING_REFUSED if refuse_client else None
    expected_stranger = replies.GREETING_REFUSED if refuse_stranger else None
    assert policy.refuse_connection(blacklisted_client) == expected_client
    assert policy.refuse_connection(blacklisted_stranger) == expected_stranger
    assert policy.refuse_connection(policy.client("2001:db8:1::66", tls=False)) == expected_client
    # Addresses in no blacklist are never refused, whatever the scope.
    assert policy.refuse_connection(policy.client("192.0.2.7", tls=False)) is None
    assert policy.refuse_connection(policy.client("198.51.100.7", tls=False)) is None


def test_greeting_refused_text() -> None:
    assert replies.GREETING_REFUSED.startswith("554 5.7.1 ")


# Relaying


def test_may_relay_defaults(policy: Policy) -> None:
    assert policy.may_relay(TRUSTED)
    assert not policy.may_relay(STRANGER)
    assert policy.may_relay(LOGGED_IN)


@pytest.mark.parametrize(
    ("scope", "authenticated", "trusted", "stranger", "logged_in"),
    [
        ("clients-only", True, True, False, True),
        ("clients-only", False, True, False, False),
        ("nobody", True, False, False, True),
        ("nobody", False, False, False, False),
        ("everybody-except-clients", False, False, True, True),
        ("everybody", False, True, True, True),
    ],
)
def test_may_relay_by_settings(
    policy: Policy,
    scope: str,
    authenticated: bool,
    trusted: bool,
    stranger: bool,
    logged_in: bool,
) -> None:
    plan = policy.plan
    relaying = replace(plan.relaying, scope=scope, authenticated=authenticated)  # type: ignore[arg-type]
    changed = Policy(replace(plan, relaying=relaying))
    assert changed.may_relay(TRUSTED) is trusted
    assert changed.may_relay(STRANGER) is stranger
    assert changed.may_relay(LOGGED_IN) is logged_in


# MAIL FROM


@pytest.mark.parametrize(
    "address",
    [
        "",
        "someone@remote.test",
        "alice@example.com",
        "nobody@example.com",  # unknown here, but a sender is not a recipient
        "jürgen@bücher.example",
        "noreply@example.com",
    ],
)
def test_sender_accepted(policy: Policy, address: str) -> None:
    assert policy.sender(address) is None


def test_sender_null_reverse_path_as_aiosmtpd_passes_it(policy: Policy) -> None:
    assert policy.sender("<>") is None


@pytest.mark.parametrize("address", ["user@", "@example.com", "user", "@"])
def test_sender_without_domain_refused(policy: Policy, address: str) -> None:
    reply = policy.sender(address)
    assert reply == f"553 5.1.7 <{address}>: the sender's domain is missing"


def test_sender_error_in_routing_table_refused(policy: Policy) -> None:
    reply = policy.sender("carol@example.com")
    assert reply == "550 5.7.1 <carol@example.com>: carol has left"


def test_sender_error_is_case_insensitive(policy: Policy) -> None:
    reply = policy.sender("Carol@Example.ORG")
    assert reply is not None and reply.startswith("550 5.7.1 <Carol@Example.ORG>")


def test_sender_pipe_address_refused(policy: Policy) -> None:
    reply = policy.sender("spam@pipe")
    assert reply is not None and reply.startswith("550 5.7.1 ")


# RCPT TO


def test_recipient_local(policy: Policy) -> None:
    reply, routing = policy.recipient(STRANGER, "alice@example.com", 0)
    assert reply == replies.RECIPIENT_OK
    assert routing is not None and routing.module == "LOCAL"
    assert routing.queue == "alice@example.com"


@pytest.mark.parametrize(
    ("address", "module", "queue"),
    [
        ("al@example.org", "LOCAL", "alice@example.com"),
        ("ALISON@EXAMPLE.COM", "LOCAL", "alice@example.com"),
        ("carl.smith@example.com", "LOCAL", "carl.smith@example.com"),
        ("staff@example.com", "LIST", "staff@example.com"),
        ("noreply@example.com", "DISCARD", ""),
        ("orders@shop.example", "LOCAL", "orders@shop.example"),
        ("alice", "LOCAL", "alice@example.com"),
    ],
)
def test_recipient_accepted_from_a_stranger(
    policy: Policy, address: str, module: str, queue: str
) -> None:
    reply, routing = policy.recipient(STRANGER, address, 0)
    assert reply == replies.RECIPIENT_OK
    assert routing is not None
    assert routing.module == module
    if module != "DISCARD":
        assert routing.queue == queue


def test_relay_denied_for_a_stranger(policy: Policy) -> None:
    reply, routing = policy.recipient(STRANGER, "someone@elsewhere.test", 0)
    assert reply == "550 5.7.1 Relaying denied: <someone@elsewhere.test> is not a local address"
    assert routing is None


@pytest.mark.parametrize(
    "address",
    [
        "user%elsewhere.test@example.com",
        "user%elsewhere.test@example.org",
        "<@example.com:user@elsewhere.test>",
        "@example.com:user@elsewhere.test",
        "elsewhere.test!user",
        "example.com!elsewhere.test!user",
        "user@elsewhere.test.",
        "user@ELSEWHERE.TEST",
        "user@[192.0.2.1]",
        "user%elsewhere.test@[127.0.0.1]",
        "user%elsewhere.test",
        "user@elsewhere.test.smtp",
        "user%elsewhere.test@example.com._via",
        "user@example.com@elsewhere.test",
    ],
)
def test_relay_tricks_denied_for_a_stranger(policy: Policy, address: str) -> None:
    reply, routing = policy.recipient(STRANGER, address, 0)
    assert reply.startswith("550 5.7.1 Relaying denied: "), reply
    assert routing is None


@pytest.mark.parametrize("client", [TRUSTED, LOGGED_IN], ids=["client-ip", "authenticated"])
def test_relay_allowed(policy: Policy, client: Client) -> None:
    reply, routing = policy.recipient(client, "someone@elsewhere.test", 0)
    assert reply == replies.RECIPIENT_OK
    assert routing is not None
    assert (routing.module, routing.queue) == ("SMTP", "elsewhere.test")
    assert not routing.relayable


def test_relay_denied_for_authenticated_when_the_plan_says_so(policy: Policy) -> None:
    plan = policy.plan
    strict = Policy(replace(plan, relaying=replace(plan.relaying, authenticated=False)))
    reply, routing = strict.recipient(LOGGED_IN, "someone@elsewhere.test", 0)
    assert reply.startswith("550 5.7.1 Relaying denied")
    assert routing is None


@pytest.mark.parametrize(
    ("address", "queue"),
    [
        ("info@example.com", "example.net"),  # a forwarder
        ("info@example.org", "example.net"),  # through a domain alias
        ("jim@example.com", "home.example"),  # a Relay: record
        ("jane@shop.example", "[192.0.2.50]"),  # unknown: {route: ...}
    ],
)
def test_relayable_target_allowed_for_a_stranger(policy: Policy, address: str, queue: str) -> None:
    reply, routing = policy.recipient(STRANGER, address, 0)
    assert reply == replies.RECIPIENT_OK
    assert routing is not None
    assert routing.module == "SMTP"
    assert routing.queue == queue
    assert routing.relayable


def test_unknown_user(policy: Policy) -> None:
    reply, routing = policy.recipient(TRUSTED, "nobody@example.com", 0)
    assert reply.startswith("550 5.1.1 <nobody@example.com>: ")
    assert "unknown user" in reply
    assert routing is None


def test_recipient_error_in_routing_table(policy: Policy) -> None:
    reply, routing = policy.recipient(TRUSTED, "carol@example.com", 0)
    assert reply == "550 5.7.1 <carol@example.com>: carol has left"
    assert routing is None


def test_recipient_pipe_written_by_a_client(policy: Policy) -> None:
    reply, routing = policy.recipient(TRUSTED, "spam@pipe", 0)
    assert reply.startswith("550 5.7.1 <spam@pipe>: ")
    assert routing is None


def test_recipient_bad_address(policy: Policy) -> None:
    reply, routing = policy.recipient(TRUSTED, "x@", 0)
    assert reply.startswith("550 5.1.3 ")
    assert routing is None


def test_too_many_recipients(policy: Policy) -> None:
    assert policy.plan.limits.max_recipients == 3
    for accepted in range(3):
        reply, _ = policy.recipient(STRANGER, "alice@example.com", accepted)
        assert reply == replies.RECIPIENT_OK
    reply, routing = policy.recipient(STRANGER, "alice@example.com", 3)
    assert reply == "452 4.5.3 Too many recipients (at most 3 in one message)"
    assert routing is None
    # The limit comes first: even a recipient that would be refused gets 452.
    reply, _ = policy.recipient(STRANGER, "nobody@example.com", 3)
    assert reply.startswith("452 4.5.3 ")
    reply, _ = policy.recipient(TRUSTED, "someone@elsewhere.test", 4)
    assert reply.startswith("452 4.5.3 ")


# Login


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "ALICE",
        "alice@example.com",
        "Alice@Example.COM",
        "alice@example.org",  # domain alias
        "al",  # account alias
        "alison@example.org",
        "alice%example.com",  # % instead of @
        "al%example.org",
        "support@example.com",  # Access: record in the routing table
    ],
)
def test_login_reaches_the_account(policy: Policy, name: str) -> None:
    assert policy.login(name, "alice-secret") == "alice@example.com"


def test_login_full_name_with_capitals_and_unicode_password(policy: Policy) -> None:
    assert policy.login("Carl.Smith@example.com", "carl ünïcode pässword") == (
        "carl.smith@example.com"
    )
    assert policy.login("carl.smith", "carl ünïcode pässword") == "carl.smith@example.com"
    assert policy.login("carl.smith", "carl unicode password") is None


def test_login_other_domain(policy: Policy) -> None:
    assert policy.login("orders@shop.example", "alice-secret") == "orders@shop.example"
    assert policy.login("orders", "alice-secret") is None  # the main domain has no `orders`


@pytest.mark.parametrize("password", ["", "alice-secreT", "alice-secret ", "carl ünïcode pässword"])
def test_login_wrong_password(policy: Policy, password: str) -> None:
    assert policy.login("alice", password) is None
    assert policy.login("al%example.org", password) is None


@pytest.mark.parametrize(
    "name",
    [
        "bob",  # an account without a password
        "info",  # a forwarder
        "info@example.com",
        "staff@example.com",  # a list
        "noreply@example.com",  # discarded
        "carol@example.com",  # an error record
        "nobody@example.com",
        "jane@shop.example",  # unknown, routed elsewhere
        "alice@elsewhere.test",
        "",
        "@",
        "alice@",
    ],
)
def test_login_refused_for_names_that_are_no_account_with_a_password(
    policy: Policy, name: str
) -> None:
    assert policy.login(name, "alice-secret") is None
    assert policy.login(name, "") is None


def test_login_with_a_broken_hash_is_refused(policy: Policy) -> None:
    plan = policy.plan
    domains = tuple(
        replace(
            domain,
            accounts=tuple(
                replace(account, password="$argon2id$v=19$broken")
                if account.name == "alice"
                else account
                for account in domain.accounts
            ),
        )
        for domain in plan.domains
    )
    broken = Policy(replace(plan, domains=domains))
    assert broken.login("alice", "alice-secret") is None


# --- internationalised addresses (RFC 6531) -------------------------------------------

INTERNATIONAL = {
    "ascii-without-smtputf8": ("alice@example.com", False, None),
    "ascii-with-smtputf8": ("alice@example.com", True, None),
    "null-sender": ("<>", False, None),
    "utf8-local-part-with-smtputf8": ("jörg@example.com", True, None),
    "u-labels-with-smtputf8": ("alice@bücher.example", True, None),
    "no-domain-with-smtputf8": ("jörg", True, None),
    "utf8-local-part-without-smtputf8": ("jörg@example.com", False, replies.NEEDS_SMTPUTF8),
    "u-labels-without-smtputf8": ("alice@bücher.example", False, replies.NEEDS_SMTPUTF8),
    "bad-u-label": (
        "jörg@bü_cher.example",
        True,
        replies.reply(replies.BAD_IDN, address="jörg@bü_cher.example"),
    ),
}


@pytest.mark.parametrize("case", INTERNATIONAL, ids=INTERNATIONAL)
def test_international(case: str) -> None:
    address, smtputf8, reply = INTERNATIONAL[case]
    assert international(address, smtputf8) == reply


@pytest.mark.parametrize(
    "account",
    ["postmaster@example.com", "recipient@example.com", "alice@example.com", "orders@shop.example"],
)
def test_the_example_sites_passwords_are_those_the_readme_says(account: str) -> None:
    plan = compile_site(EXAMPLE).plan
    assert plan is not None
    password = account.split("@")[0] + "-example"
    assert f"`{account}` / `{password}`" in (ROOT / "README.md").read_text()
    assert Policy(plan).login(account, password) == account
    assert Policy(plan).login(account, password + "!") is None
