"""Addresses as the router sees them (docs/router.md, "Addresses")."""

from __future__ import annotations

import random

import pytest

from mailplan.runtime.decide.address import (
    Address,
    _parse,
    canonical_domain,
    idn_problem,
    ip_literal,
    parse,
)

MAIN = "example.com"


@pytest.mark.parametrize(
    ("written", "local", "domain"),
    [
        pytest.param("user@example.com", "user", "example.com", id="plain"),
        pytest.param("<user@example.com>", "user", "example.com", id="angle"),
        pytest.param("  < user@example.com >  ", "user", "example.com", id="angle-with-spaces"),
        pytest.param("user", "user", MAIN, id="no-domain-is-main-domain"),
        pytest.param("<user>", "user", MAIN, id="angle-no-domain"),
        pytest.param(
            "user%other.example@hop.example", "user%other.example", "hop.example", id="percent-hack"
        ),
        pytest.param(
            "<@hop.example:user@other.example>",
            "user%other.example",
            "hop.example",
            id="source-route-angle",
        ),
        pytest.param(
            "@hop.example:user@other.example",
            "user%other.example",
            "hop.example",
            id="source-route-without-angle",
        ),
        pytest.param(
            "hop.example!other.example!user",
            "user%other.example",
            "hop.example",
            id="bang-path",
        ),
        pytest.param("hop.example!user", "user", "hop.example", id="bang-path-one-hop"),
        pytest.param(
            "a.example!b.example!c.example!u",
            "u%c.example%b.example",
            "a.example",
            id="bang-path-three-hops",
        ),
        pytest.param(
            "<@[192.0.2.1]:user@other.example>",
            "user%other.example",
            "[192.0.2.1]",
            id="source-route-through-ipv4-literal",
        ),
        pytest.param(
            "<@[IPv6:2001:db8::1]:user@other.example>",
            "user%other.example",
            "[ipv6:2001:db8::1]",
            id="source-route-through-ipv6-literal",
        ),
        pytest.param(
            "@[IPv6:2001:db8::1]",
            "",
            "[ipv6:2001:db8::1]",
            id="empty-local-part-at-ipv6-literal",
        ),
        pytest.param(
            "User.Name@Example.COM", "User.Name", "example.com", id="domain-lower-local-kept"
        ),
        pytest.param("user@example.com.", "user", "example.com", id="final-dot-dropped"),
        pytest.param("user@[192.0.2.1]", "user", "[192.0.2.1]", id="ipv4-literal"),
        pytest.param(
            "user@[IPv6:2001:DB8::1]", "user", "[ipv6:2001:db8::1]", id="ipv6-literal-lower-case"
        ),
        pytest.param("user@192.0.2.1", "user", "192.0.2.1", id="bare-ip"),
        pytest.param("x%y@[127.0.0.1]", "x%y", "[127.0.0.1]", id="percent-at-literal"),
        pytest.param("a@b@example.com", "a@b", "example.com", id="last-at-separates"),
        pytest.param("@example.com", "", "example.com", id="empty-local-part"),
        pytest.param("user@", "user", "", id="empty-domain"),
        pytest.param("x@host.example._via", "x", "host.example._via", id="module-suffix-kept"),
    ],
)
def test_parse(written: str, local: str, domain: str) -> None:
    assert parse(written, MAIN) == Address(local, domain)


def test_three_source_routed_forms_are_the_same() -> None:
    forms = [
        "user%other.example@hop.example",
        "<@hop.example:user@other.example>",
        "hop.example!other.example!user",
    ]
    assert {parse(form, MAIN) for form in forms} == {Address("user%other.example", "hop.example")}


def test_str_keeps_the_spelling_of_the_local_part() -> None:
    address = parse("John.Doe@EXAMPLE.com", MAIN)
    assert str(address) == "John.Doe@example.com"


@pytest.mark.parametrize(
    "written",
    [
        "john.doe@example.com",
        "John.Doe@Example.COM",
        "JOHN.DOE@example.com.",
        "<john.DOE@example.com>",
    ],
)
def test_key_ignores_case(written: str) -> None:
    assert parse(written, MAIN).key == "john.doe@example.com"


def test_key_tells_different_names_apart() -> None:
    assert parse("john@example.com", MAIN).key != parse("jane@example.com", MAIN).key
    assert parse("john@example.com", MAIN).key != parse("john@example.org", MAIN).key


@pytest.mark.parametrize(
    ("domain", "ip"),
    [
        pytest.param("[192.0.2.1]", "192.0.2.1", id="ipv4-literal"),
        pytest.param("192.0.2.1", "192.0.2.1", id="bare-ipv4"),
        pytest.param("[ipv6:2001:db8::1]", "2001:db8::1", id="ipv6-literal"),
        pytest.param("[ipv6:2001:db8:0:0:0:0:0:1]", "2001:db8::1", id="ipv6-literal-canonical"),
        pytest.param("[ipv6:::1]", "::1", id="ipv6-loopback"),
        pytest.param("[2001:db8::1]", "2001:db8::1", id="ipv6-without-tag"),
        pytest.param("2001:db8::1", "2001:db8::1", id="bare-ipv6"),
        pytest.param("example.com", None, id="domain"),
        pytest.param("[example.com]", None, id="bracketed-name"),
        pytest.param("[300.1.1.1]", None, id="not-an-ip"),
        pytest.param("192.0.2", None, id="short-ipv4"),
        pytest.param("", None, id="empty"),
    ],
)
def test_ip_literal(domain: str, ip: str | None) -> None:
    """IP literals as the router sees them: domains are lower case by then."""
    assert ip_literal(domain) == ip


def test_ip_literal_of_a_parsed_ipv6_literal() -> None:
    """`[IPv6:...]` as a client writes it is recognised once parsed (domains are lowered)."""
    assert ip_literal(parse("user@[IPv6:2001:DB8::1]", MAIN).domain) == "2001:db8::1"


@pytest.mark.parametrize(
    ("text", "local"),
    [
        ('"alice"@example.com', "alice"),
        ('"a.b"@example.com', "a.b"),
        ('"john doe"@example.com', '"john doe"'),
        ('"a..b"@example.com', '"a..b"'),
        ('".a"@example.com', '".a"'),
    ],
    ids=["plain", "dotted", "needs-quotes", "double-dot", "leading-dot"],
)
def test_quotes_that_are_not_needed_are_dropped(text: str, local: str) -> None:
    assert parse(text, "example.com").local == local


# --- internationalised addresses (RFC 6531) -------------------------------------------


@pytest.mark.parametrize(
    ("written", "local", "domain"),
    [
        pytest.param("jörg@bücher.example", "jörg", "xn--bcher-kva.example", id="u-labels"),
        pytest.param("jörg@xn--bcher-kva.example", "jörg", "xn--bcher-kva.example", id="a-labels"),
        pytest.param("jörg@BÜCHER.Example", "jörg", "xn--bcher-kva.example", id="upper-case"),
        pytest.param("a@faß.de", "a", "xn--fa-hia.de", id="idna2008-keeps-sharp-s"),
        pytest.param("jo\u0308rg@example.com", "jörg", "example.com", id="local-part-nfc"),
        pytest.param(
            "<@bücher.example:u@x.example>",
            "u%x.example",
            "xn--bcher-kva.example",
            id="source-route-through-u-labels",
        ),
        pytest.param("a@*.bücher.example", "a", "*.xn--bcher-kva.example", id="star-label-kept"),
        pytest.param("a@bü_cher.example", "a", "bü_cher.example", id="bad-idn-left-in-unicode"),
    ],
)
def test_parse_international(written: str, local: str, domain: str) -> None:
    assert parse(written, MAIN) == Address(local, domain)


def test_key_of_a_utf8_address_ignores_case_and_normalisation() -> None:
    spellings = ["Jörg@bücher.example", "JO\u0308RG@xn--bcher-kva.example", "jörg@BÜCHER.example"]
    assert {parse(s, MAIN).key for s in spellings} == {"jörg@xn--bcher-kva.example"}


@pytest.mark.parametrize(
    ("domain", "problem"),
    [
        pytest.param("example.com", None, id="ascii"),
        pytest.param("_dmarc.example.com", None, id="ascii-underscore-not-judged"),
        pytest.param("bücher.example", None, id="u-labels"),
        pytest.param("xn--bcher-kva.example", None, id="a-labels"),
        pytest.param("xn--zz.example", "xn--zz: Invalid A-label", id="bad-a-label"),
        pytest.param(
            "bü_cher.example",
            "bü_cher: Codepoint U+005F at position 3 of 'bü_cher' not allowed",
            id="bad-u-label",
        ),
    ],
)
def test_idn_problem(domain: str, problem: str | None) -> None:
    assert idn_problem(domain) == problem


def test_canonical_domain_of_ascii_is_lower_case() -> None:
    assert canonical_domain("Example.COM") == "example.com"


def test_a_source_route_of_any_length_is_unwound_without_recursion() -> None:
    """~1,000 hops raised RecursionError in `check`, `route` and the server alike."""
    address = parse("<" + "@a:" * 100_000 + "u@b>", MAIN)
    assert address.domain == "a"
    assert address.local == "u%" + "b%" + "a%" * 99_998 + "a"


@pytest.mark.parametrize(
    ("written", "local", "domain"),
    [
        ("<@a:<@b:u@c>>", "u%c%b", "a"),
        ("@a:@b,@x:@c:u@d", "u%d%c%x%b", "a"),
        ("@a:@b:", "%example.com%b", "a"),
    ],
)
def test_nested_source_routes(written: str, local: str, domain: str) -> None:
    assert parse(written, MAIN) == Address(local, domain)


def test_plain_addresses_take_the_short_way_to_the_same_answer() -> None:
    """`parse` reads `local@domain` without the general reader; whatever the text, the
    answer is the general reader's (`_parse`)."""
    rng = random.Random(20261207)
    alphabet = "aZ09._+*%=-@!<>\"' :,[]\t.éÅ"
    texts = ["a@b", "A@B.EXAMPLE", "a@b.", "a@.b", "@a", "a@", "a@b@c", "<a@b>", '"a"@b']
    texts += ["a.@b", "a@b..c", "*@*.x", "%@x", "u%v@w", "x@[1.2.3.4]", "a@b-.c", "a@-b.c"]
    for _ in range(20000):
        local = "".join(rng.choices("aZ09._+*%=-", k=rng.randrange(0, 5)))
        domain = "".join(rng.choices("aZ09_*-.", k=rng.randrange(0, 7)))
        text = f"{local}@{domain}"
        for _ in range(rng.choice([0, 0, 1, 2])):  # something out of the plain form
            k = rng.randrange(len(text) + 1)
            text = text[:k] + rng.choice(alphabet) + text[k:]
        texts.append(text)
    for text in texts:
        assert parse(text, "example.com") == _parse(text, "example.com"), text
