"""Address lists: entries compile to sorted, merged intervals in line order; errors are
reported where they are written (also inside YAML literal blocks); the runtime looks
addresses up in the compiled intervals."""

from __future__ import annotations

import ipaddress
import itertools
import random
import socket
from pathlib import Path

import pytest

from mailplan.compiler import yamlpos
from mailplan.compiler.addresslists import _address, _ip, addresslists
from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.compiler.parse import parse
from mailplan.compiler.pipeline import compile_site
from mailplan.compiler.unit import Unit
from mailplan.plan.model import AddressList, Interval, Source
from mailplan.runtime.decide.addresslist import AddressSet, _number

SITE = "site.yaml"
Spans = list[tuple[str, str]]


def compile_yaml(text: str) -> tuple[dict[str, AddressList], list[Diagnostic]]:
    """Parse and compile the address lists of a site.yaml text (no other pass runs)."""
    document, problems = yamlpos.load(text, SITE)
    assert problems == []
    unit = parse(Unit(document, {SITE: text}, ()))
    compiled, trouble = addresslists(unit.lists)
    return {a.name: a for a in compiled}, [*unit.diagnostics, *trouble]


def lists_yaml(**lists: list[str]) -> str:
    """`address_lists:` with each list as a literal block; list x's first entry is on line 3."""
    out = ["address_lists:"]
    for name, lines in lists.items():
        out.append(f"  {name}: |")
        out += [f"    {line}" if line else "" for line in lines]
    return "\n".join(out) + "\n"


def spans(compiled: AddressList) -> tuple[Spans, Spans]:
    return (
        [(i.first, i.last) for i in compiled.ipv4],
        [(i.first, i.last) for i in compiled.ipv6],
    )


def one(*lines: str) -> tuple[Spans, Spans]:
    compiled, problems = compile_yaml(lists_yaml(x=list(lines)))
    assert problems == []
    return spans(compiled["x"])


def v4(*lines: str) -> Spans:
    ipv4, ipv6 = one(*lines)
    assert ipv6 == []
    return ipv4


def err(line: int, column: int, code: str, message: str) -> Diagnostic:
    return error(SITE, line, column, code, message)


# --- entries -----------------------------------------------------------------------------


def test_single_address() -> None:
    assert v4("192.0.2.1") == [("192.0.2.1", "192.0.2.1")]


def test_range() -> None:
    assert v4("192.0.2.10-192.0.2.99") == [("192.0.2.10", "192.0.2.99")]
    assert v4("192.0.2.10 - 192.0.2.99") == [("192.0.2.10", "192.0.2.99")]
    assert v4("192.0.2.7-192.0.2.7") == [("192.0.2.7", "192.0.2.7")]


def test_network() -> None:
    assert v4("198.51.100.0/24") == [("198.51.100.0", "198.51.100.255")]
    assert v4("198.51.100.128/25") == [("198.51.100.128", "198.51.100.255")]
    assert v4("192.0.2.1/32") == [("192.0.2.1", "192.0.2.1")]
    assert v4("0.0.0.0/1") == [("0.0.0.0", "127.255.255.255")]
    assert v4("10.0.0.0/8") == [("10.0.0.0", "10.255.255.255")]


def test_ipv6_entries() -> None:
    assert one("2001:db8::/32") == ([], [("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")])
    assert one("::1") == ([], [("::1", "::1")])
    assert one("2001:DB8::1") == ([], [("2001:db8::1", "2001:db8::1")])
    assert one("2001:db8::1-2001:db8::ff") == ([], [("2001:db8::1", "2001:db8::ff")])
    assert one("2001:db8::1/128") == ([], [("2001:db8::1", "2001:db8::1")])


def test_families_are_kept_apart() -> None:
    assert one("2001:db8::1", "192.0.2.1", "64:ff9b::/96") == (
        [("192.0.2.1", "192.0.2.1")],
        [("64:ff9b::", "64:ff9b::ffff:ffff"), ("2001:db8::1", "2001:db8::1")],
    )


def test_result_is_sorted() -> None:
    assert v4("203.0.113.9", "10.0.0.0/8", "192.0.2.5-192.0.2.6") == [
        ("10.0.0.0", "10.255.255.255"),
        ("192.0.2.5", "192.0.2.6"),
        ("203.0.113.9", "203.0.113.9"),
    ]


def test_adjacent_entries_merge() -> None:
    assert v4("192.0.2.1", "192.0.2.2", "192.0.2.3-192.0.2.9") == [("192.0.2.1", "192.0.2.9")]
    assert v4("192.0.2.128/25", "192.0.2.0/25") == [("192.0.2.0", "192.0.2.255")]
    assert v4("192.0.2.255", "192.0.3.0") == [("192.0.2.255", "192.0.3.0")]


def test_overlapping_entries_merge() -> None:
    assert v4("10.0.0.0/8", "10.1.2.3", "10.200.0.0-10.255.255.255") == [
        ("10.0.0.0", "10.255.255.255")
    ]
    assert v4("192.0.2.1-192.0.2.50", "192.0.2.40-192.0.2.60") == [("192.0.2.1", "192.0.2.60")]
    assert v4("192.0.2.1", "192.0.2.1") == [("192.0.2.1", "192.0.2.1")]


def test_gaps_stay() -> None:
    assert v4("192.0.2.1", "192.0.2.3") == [("192.0.2.1", "192.0.2.1"), ("192.0.2.3", "192.0.2.3")]


def test_comments_and_blank_lines() -> None:
    assert v4("; the office", "192.0.2.1   ; the router", "", "  ; indented", "192.0.2.3;x") == [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.3", "192.0.2.3"),
    ]


def test_empty_list() -> None:
    assert one() == ([], [])
    assert one("; nothing") == ([], [])


# --- exclusions and order ----------------------------------------------------------------


def test_exclusion_removes_from_the_lines_above() -> None:
    assert v4("198.51.100.0/24", "!198.51.100.128/25") == [("198.51.100.0", "198.51.100.127")]
    assert v4("192.0.2.0/24", "!192.0.2.50") == [
        ("192.0.2.0", "192.0.2.49"),
        ("192.0.2.51", "192.0.2.255"),
    ]
    assert v4("192.0.2.0/24", "! 192.0.2.0-192.0.2.9") == [("192.0.2.10", "192.0.2.255")]


def test_exclusion_does_not_touch_the_lines_below() -> None:
    assert v4("!192.0.2.5", "192.0.2.0/24") == [("192.0.2.0", "192.0.2.255")]


def test_exclusion_alone_is_empty() -> None:
    assert v4("!192.0.2.5") == []


def test_a_later_line_adds_back() -> None:
    assert v4("192.0.2.0/24", "!192.0.2.5", "192.0.2.5") == [("192.0.2.0", "192.0.2.255")]
    assert v4("192.0.2.0/24", "!192.0.2.0-192.0.2.99", "192.0.2.50-192.0.2.60") == [
        ("192.0.2.50", "192.0.2.60"),
        ("192.0.2.100", "192.0.2.255"),
    ]
    assert v4("192.0.2.0/24", "!192.0.2.0/24", "192.0.2.7", "!192.0.2.7", "192.0.2.9") == [
        ("192.0.2.9", "192.0.2.9")
    ]


def test_ipv6_exclusion() -> None:
    assert one("2001:db8::/32", "!2001:db8::5") == (
        [],
        [("2001:db8::", "2001:db8::4"), ("2001:db8::6", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")],
    )


def test_exclusion_of_the_other_family_changes_nothing() -> None:
    assert one("192.0.2.0/24", "!2001:db8::/32") == ([("192.0.2.0", "192.0.2.255")], [])


# --- includes ----------------------------------------------------------------------------


def test_include() -> None:
    compiled, problems = compile_yaml(
        lists_yaml(x=["#office", "192.0.2.1"], office=["10.0.0.0/8", "2001:db8:1::/48"])
    )
    assert problems == []
    assert spans(compiled["x"]) == (
        [("10.0.0.0", "10.255.255.255"), ("192.0.2.1", "192.0.2.1")],
        [("2001:db8:1::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff")],
    )
    assert spans(compiled["office"]) == (
        [("10.0.0.0", "10.255.255.255")],
        [("2001:db8:1::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff")],
    )


def test_nested_includes_and_names_ignore_case() -> None:
    compiled, problems = compile_yaml(
        lists_yaml(
            a=["#B", "192.0.2.1"],
            b=["#c", "10.0.0.0/8"],
            c=["172.16.0.0/12"],
        )
    )
    assert problems == []
    assert spans(compiled["a"])[0] == [
        ("10.0.0.0", "10.255.255.255"),
        ("172.16.0.0", "172.31.255.255"),
        ("192.0.2.1", "192.0.2.1"),
    ]


def test_included_list_is_used_with_its_own_exclusions() -> None:
    compiled, problems = compile_yaml(
        lists_yaml(x=["#inner"], inner=["10.0.0.0/8", "!10.1.0.0/16"])
    )
    assert problems == []
    assert spans(compiled["x"])[0] == [
        ("10.0.0.0", "10.0.255.255"),
        ("10.2.0.0", "10.255.255.255"),
    ]


def test_excluded_include_and_order() -> None:
    compiled, problems = compile_yaml(
        lists_yaml(
            x=["10.0.0.0/8", "!#guests", "10.66.0.1"],
            y=["!#guests", "10.66.0.0/16"],
            guests=["10.66.0.0/16"],
        )
    )
    assert problems == []
    assert spans(compiled["x"])[0] == [
        ("10.0.0.0", "10.65.255.255"),
        ("10.66.0.1", "10.66.0.1"),
        ("10.67.0.0", "10.255.255.255"),
    ]
    assert spans(compiled["y"])[0] == [("10.66.0.0", "10.66.255.255")]


def test_server_lists_include_named_lists() -> None:
    text = (
        "server:\n"
        "  client_ips: |\n"
        "    127.0.0.1\n"
        "    #office\n"
        "    !192.168.66.0-192.168.66.255\n"
        "address_lists:\n"
        "  office: 192.168.0.0/16\n"
    )
    compiled, problems = compile_yaml(text)
    assert problems == []
    assert sorted(compiled) == ["client_ips", "office"]
    assert compiled["client_ips"].source == Source(SITE, 2, 3)
    assert spans(compiled["client_ips"])[0] == [
        ("127.0.0.1", "127.0.0.1"),
        ("192.168.0.0", "192.168.65.255"),
        ("192.168.67.0", "192.168.255.255"),
    ]


def test_include_cycles() -> None:
    compiled, problems = compile_yaml(
        lists_yaml(
            a=["#b", "192.0.2.1"],  # lines 3-4
            b=["#c"],  # line 6
            c=["10.0.0.0/8", "#a"],  # lines 8-9
            me=["#ME"],  # line 11
        )
    )
    assert problems == [
        err(9, 6, "MP108", "address lists include each other: a -> b -> c -> a"),
        err(11, 6, "MP108", "address lists include each other: me -> me"),
    ]
    assert spans(compiled["a"])[0] == [("10.0.0.0", "10.255.255.255"), ("192.0.2.1", "192.0.2.1")]


def test_include_cycle_names_only_the_lists_in_the_cycle() -> None:
    text = "server:\n  client_ips: '#a'\naddress_lists:\n  a: '#b'\n  b: '#a'\n"
    _, problems = compile_yaml(text)
    assert problems == [err(5, 8, "MP108", "address lists include each other: a -> b -> a")]


def test_unknown_include() -> None:
    _, problems = compile_yaml(lists_yaml(x=["#nosuch", "!#Other", "192.0.2.1"]))
    assert problems == [
        err(3, 6, "MP207", "no such address list: nosuch"),
        err(4, 7, "MP207", "no such address list: Other"),
    ]


def test_duplicate_list_name() -> None:
    text = "server:\n  client_ips: 192.0.2.1\naddress_lists:\n  Client_IPs: 192.0.2.2\n"
    compiled, problems = compile_yaml(text)
    assert problems == [
        err(4, 3, "MP205", "duplicate address list: Client_IPs (first defined at line 2)")
    ]
    assert spans(compiled["client_ips"])[0] == [("192.0.2.1", "192.0.2.1")]


# --- errors ------------------------------------------------------------------------------


def test_host_bits() -> None:
    _, problems = compile_yaml(lists_yaml(x=["192.0.2.1/24", "2001:db8::1/64", "10.0.0.0/7"]))
    assert problems == [
        err(
            3,
            5,
            "MP106",
            "192.0.2.1/24 has host bits set: the low 8 bits must be zero (they are 0x1); "
            "the network is 192.0.2.0/24",
        ),
        err(
            4,
            5,
            "MP106",
            "2001:db8::1/64 has host bits set: the low 64 bits must be zero (they are 0x1); "
            "the network is 2001:db8::/64",
        ),
    ]


def test_host_bits_value_is_shown_in_hex() -> None:
    _, problems = compile_yaml(lists_yaml(x=["10.1.2.3/8"]))
    assert problems == [
        err(
            3,
            5,
            "MP106",
            "10.1.2.3/8 has host bits set: the low 24 bits must be zero (they are 0x10203); "
            "the network is 10.0.0.0/8",
        )
    ]


def test_bad_prefix_lengths() -> None:
    _, problems = compile_yaml(
        lists_yaml(x=["192.0.2.0/33", "192.0.2.0/0", "::/129", "!::/0", "10.0.0.0/008"])
    )
    assert problems == [
        err(3, 15, "MP106", "/33 is not a prefix length for IPv4 (1 to 32)"),
        err(4, 15, "MP106", "/0 is not a prefix length for IPv4 (1 to 32)"),
        err(5, 8, "MP106", "/129 is not a prefix length for IPv6 (1 to 128)"),
        err(6, 9, "MP106", "/0 is not a prefix length for IPv6 (1 to 128)"),
    ]


def test_bad_ranges() -> None:
    _, problems = compile_yaml(
        lists_yaml(x=["192.0.2.9-192.0.2.1", "192.0.2.1-2001:db8::1", "  ::2 - ::1"])
    )
    assert problems == [
        err(3, 5, "MP107", "range ends before it starts: 192.0.2.9-192.0.2.1"),
        err(4, 5, "MP107", "range mixes IPv4 and IPv6: 192.0.2.1-2001:db8::1"),
        err(5, 7, "MP107", "range ends before it starts: ::2-::1"),
    ]


def test_not_an_ip_address() -> None:
    _, problems = compile_yaml(
        lists_yaml(x=["999.1.1.1", "1:2:3", "192.0.2.1-192.0.2.300", "1.2.3/24"])
    )
    assert problems == [
        err(3, 5, "MP105", "not an IP address: 999.1.1.1"),
        err(4, 5, "MP105", "not an IP address: 1:2:3"),
        err(5, 15, "MP105", "not an IP address: 192.0.2.300"),
        err(6, 5, "MP105", "not an IP address: 1.2.3"),
    ]


def test_syntax_errors() -> None:
    _, found = compile_yaml(
        lists_yaml(x=["hello", "192.0.2.1 192.0.2.2", "/24", "# office", "192.0.2.1 junk"])
    )
    problems = [p for p in found if p.code == "MP105"]
    unknown = [p for p in found if p.code != "MP105"]
    assert problems == [
        err(3, 5, "MP105", "unexpected 'hello': expected '!' or '#' or an IP address"),
        err(4, 15, "MP105", "unexpected '192.0.2.2': expected '-' or '/'"),
        err(5, 5, "MP105", "unexpected '/': expected '!' or '#' or an IP address"),
        err(7, 15, "MP105", "unexpected 'junk': expected '-' or '/'"),
    ]
    # white space may separate '#' from the name: `# office` includes `office`
    assert unknown == [err(6, 7, "MP207", "no such address list: office")]


def test_entry_that_ends_too_early() -> None:
    _, problems = compile_yaml(lists_yaml(x=["192.0.2.1-", "1.2.3.4/", "#", "!"]))
    assert problems == [
        err(3, 15, "MP105", "line ends too early: expected an IP address"),
        err(4, 13, "MP105", "line ends too early: expected a number of bits"),
        err(5, 6, "MP105", "line ends too early: expected a list name"),
        err(6, 6, "MP105", "line ends too early: expected '#' or an IP address"),
    ]


def test_broken_lines_do_not_stop_the_others() -> None:
    compiled, problems = compile_yaml(
        lists_yaml(
            x=["192.0.2.1", "bogus!", "192.0.2.300", "192.0.2.2", "10.0.0.1/8", "10.0.0.0/8"]
        )
    )
    assert [(p.line, p.code) for p in problems] == [(4, "MP105"), (5, "MP105"), (7, "MP106")]
    assert spans(compiled["x"])[0] == [("10.0.0.0", "10.255.255.255"), ("192.0.2.1", "192.0.2.2")]


# --- addresses read as ipaddress reads them ------------------------------------------------


def _texts(rng: random.Random) -> list[str]:
    """Addresses in every form they are written, and strings of the same characters that
    are almost addresses (a part too many, too long, a leading zero, a stray colon)."""
    texts = ["0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5"]
    texts += ["256.1.1.1", "1..2.3", ".1.2.3.4", "1.2.3.4.", "::", "::1", "1::", ":::", "1:::2"]
    texts += ["::ffff:1.2.3.4", "::1.2.3.4", "::1.02.3.4", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7::"]
    texts += ["1::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "00000::1", "0000::1", "1.2.3.4::", "::1:"]
    for _ in range(3000):
        v4 = ipaddress.IPv4Address(rng.getrandbits(32))
        v6 = ipaddress.IPv6Address(rng.getrandbits(128) >> rng.choice([0, 16, 64, 112, 127]))
        written = rng.choice([str(v4), v6.compressed, v6.exploded, f"::ffff:{v4}", f"1::{v4}"])
        if rng.random() < 0.5:
            k = rng.randrange(len(written) + 1)
            cut = rng.randrange(len(written) + 1)
            written = written[:k] + rng.choice(["", "0", ":", ".", "::", "f", "00"]) + written[cut:]
        texts.append(written)
    texts += [
        "".join(rng.choices("0123456789abcdefABCDEF:.", k=rng.randrange(1, 20)))
        for _ in range(2000)
    ]
    return texts


def test_addresses_are_read_as_ipaddress_reads_them() -> None:
    """`addresslists._address` (inet_pton first) gives what `ipaddress` gives, or refuses."""
    rng = random.Random(20261207)
    for text in _texts(rng):
        try:
            address = ipaddress.ip_address(text)
            expected: tuple[int, int] | None = (address.version, int(address))
        except ValueError:
            expected = None
        assert _address(text) == expected, text


def test_addresses_are_written_as_ipaddress_writes_them() -> None:
    rng = random.Random(7)
    for value in [0, 1, 2**32 - 1, *(rng.getrandbits(32) for _ in range(2000))]:
        assert _ip(4, value) == str(ipaddress.IPv4Address(value))
    for value in [0, 1, 2**128 - 1, *(rng.getrandbits(128) for _ in range(200))]:
        assert _ip(6, value) == str(ipaddress.IPv6Address(value))


# --- the sweep against a naive set of addresses ------------------------------------------

BASE = int(ipaddress.IPv4Address("192.0.2.0"))


def _random_entry(rng: random.Random) -> tuple[str, set[int]]:
    form = rng.choice(["single", "range", "network"])
    if form == "single":
        a = rng.randrange(256)
        text, covered = str(ipaddress.IPv4Address(BASE + a)), {a}
    elif form == "range":
        a, b = sorted((rng.randrange(256), rng.randrange(256)))
        first, last = ipaddress.IPv4Address(BASE + a), ipaddress.IPv4Address(BASE + b)
        text, covered = f"{first}-{last}", set(range(a, b + 1))
    else:
        bits = rng.randrange(24, 33)
        size = 1 << (32 - bits)
        a = rng.randrange(256 // size) * size
        text, covered = f"{ipaddress.IPv4Address(BASE + a)}/{bits}", set(range(a, a + size))
    return text, covered


def _naive(lines: list[tuple[bool, set[int]]]) -> set[int]:
    result: set[int] = set()
    for exclude, covered in lines:
        result = result - covered if exclude else result | covered
    return result


def _covered(compiled: AddressList) -> set[int]:
    out: set[int] = set()
    for interval in compiled.ipv4:
        first = int(ipaddress.IPv4Address(interval.first)) - BASE
        last = int(ipaddress.IPv4Address(interval.last)) - BASE
        out |= set(range(first, last + 1))
    return out


def _check_shape(compiled: AddressList) -> None:
    """Sorted, disjoint, and merged: no two intervals touch."""
    numbers = [
        (int(ipaddress.IPv4Address(i.first)), int(ipaddress.IPv4Address(i.last)))
        for i in compiled.ipv4
    ]
    for first, last in numbers:
        assert first <= last
    for (_, last), (first, _) in itertools.pairwise(numbers):
        assert last + 1 < first


def test_sweep_matches_a_naive_set_computation() -> None:
    rng = random.Random(20240601)
    for _ in range(300):
        inner_lines: list[str] = []
        inner: list[tuple[bool, set[int]]] = []
        for _ in range(rng.randrange(0, 4)):
            text, covered = _random_entry(rng)
            exclude = rng.random() < 0.3
            inner_lines.append(("!" if exclude else "") + text)
            inner.append((exclude, covered))
        inner_set = _naive(inner)
        outer_lines: list[str] = []
        outer: list[tuple[bool, set[int]]] = []
        for _ in range(rng.randrange(1, 10)):
            exclude = rng.random() < 0.35
            if rng.random() < 0.15:
                text, covered = "#inner", inner_set
            else:
                text, covered = _random_entry(rng)
            outer_lines.append(("!" if exclude else "") + text)
            outer.append((exclude, covered))
        compiled, problems = compile_yaml(lists_yaml(outer=outer_lines, inner=inner_lines))
        assert problems == []
        assert _covered(compiled["inner"]) == inner_set, inner_lines
        assert _covered(compiled["outer"]) == _naive(outer), (outer_lines, inner_lines)
        _check_shape(compiled["inner"])
        _check_shape(compiled["outer"])


# --- runtime lookups ---------------------------------------------------------------------


def _set(ipv4: Spans, ipv6: Spans | None = None) -> AddressSet:
    return AddressSet(
        AddressList(
            "x",
            Source(SITE, 1, 1),
            tuple(Interval(a, b) for a, b in ipv4),
            tuple(Interval(a, b) for a, b in ipv6 or []),
        )
    )


LOOKUP = _set(
    [
        ("10.0.0.0", "10.255.255.255"),
        ("192.0.2.10", "192.0.2.20"),
        ("198.51.100.7", "198.51.100.7"),
    ],
    [("2001:db8::", "2001:db8::ffff")],
)


@pytest.mark.parametrize(
    ("ip", "inside"),
    [
        ("9.255.255.255", False),
        ("10.0.0.0", True),
        ("10.255.255.255", True),
        ("11.0.0.0", False),
        ("192.0.2.9", False),
        ("192.0.2.10", True),
        ("192.0.2.15", True),
        ("192.0.2.20", True),
        ("192.0.2.21", False),
        ("198.51.100.6", False),
        ("198.51.100.7", True),
        ("198.51.100.8", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", False),
        ("2001:db8::", True),
        ("2001:db8::ffff", True),
        ("2001:DB8::FFFF", True),
        ("2001:db8::1:0", False),
        ("::", False),
        ("::1", False),
    ],
)
def test_membership_at_the_edges(ip: str, inside: bool) -> None:
    assert (ip in LOOKUP) is inside


@pytest.mark.parametrize(
    ("ip", "inside"),
    [
        ("::ffff:192.0.2.10", True),
        ("::ffff:192.0.2.20", True),
        ("::ffff:192.0.2.9", False),
        ("::ffff:192.0.2.21", False),
        ("::ffff:c000:20a", True),  # ::ffff:192.0.2.10 written in hex
        ("::FFFF:10.1.2.3", True),
        ("::192.0.2.10", False),  # IPv4-compatible, not IPv4-mapped
        ("64:ff9b::192.0.2.10", False),  # NAT64, not IPv4-mapped
    ],
)
def test_ipv4_mapped_ipv6(ip: str, inside: bool) -> None:
    assert (ip in LOOKUP) is inside


def test_ipv4_mapped_against_a_list_of_ipv4_mapped_ipv6_only() -> None:
    """A mapped address is looked up as the IPv4 address it carries."""
    only6 = _set([], [("::ffff:0.0.0.0", "::ffff:255.255.255.255")])
    assert "::ffff:192.0.2.1" not in only6
    assert "192.0.2.1" not in only6


@pytest.mark.parametrize(
    "ip",
    [
        "",
        " ",
        "abc",
        "example.com",
        "192.0.2.10/32",
        "192.0.2.0/24",
        " 192.0.2.10",
        "192.0.2.10 ",
        "[192.0.2.10]",
        "192.0.2.256",
        "192.0.2",
        "192.0.2.10.1",
        "2001:db8:::1",
        "2001:db8::g",
        "192.0.2.10-192.0.2.11",
        "\x00",
    ],
)
def test_garbage_is_not_in_the_list(ip: str) -> None:
    assert (ip in LOOKUP) is False


def test_empty_list_contains_nothing() -> None:
    empty = _set([])
    for ip in ("0.0.0.0", "192.0.2.1", "::", "::1", "::ffff:192.0.2.1", "garbage"):
        assert ip not in empty


def test_lookups_in_a_compiled_list() -> None:
    compiled, problems = compile_yaml(
        lists_yaml(x=["192.0.2.0/24", "!192.0.2.128/26", "2001:db8::/126"])
    )
    assert problems == []
    found = AddressSet(compiled["x"])
    assert found.name == "x"
    assert "192.0.2.127" in found
    assert "192.0.2.128" not in found
    assert "192.0.2.191" not in found
    assert "192.0.2.192" in found
    assert "::ffff:192.0.2.192" in found
    assert "2001:db8::3" in found
    assert "2001:db8::4" not in found


# --- positions of entries written inside site.yaml ---------------------------------------

HEAD = "server:\n  hostname: mail.example.com\n  main_domain: example.com\n"
TAIL = "domains:\n  example.com:\n"
LIST_CODES = {"MP105", "MP106", "MP107", "MP108", "MP205", "MP207"}


def list_problems(
    tmp_path: Path, site: str, files: dict[str, str] | None = None
) -> list[Diagnostic]:
    (tmp_path / "site.yaml").write_text(site, encoding="utf-8")
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    unit = compile_site(tmp_path)
    assert [d for d in unit.diagnostics if d.code == "MP103"] == []
    return sorted(d for d in unit.diagnostics if d.code in LIST_CODES)


def test_positions_in_a_literal_block(tmp_path: Path) -> None:
    site = (
        HEAD
        + (
            "  client_ips: |   # trusted\n"  # 4
            "      192.0.2.1/24\n"  # 5
            "      ; note\n"  # 6
            "\n"  # 7
            "      !hello\n"  # 8
            "        192.0.2.9-192.0.2.1\n"  # 9: more indented than the block
            "      !#nosuch\n"  # 10
            "      192.0.2.0/24 ; fine\n"  # 11
            "  blacklisted_ips: |\n"  # 12
            "    999.0.0.1\n"  # 13
            "    10.0.0.0/40\n"  # 14
        )
        + TAIL
    )
    assert list_problems(tmp_path, site) == [
        err(
            5,
            7,
            "MP106",
            "192.0.2.1/24 has host bits set: the low 8 bits must be zero (they are 0x1); "
            "the network is 192.0.2.0/24",
        ),
        err(8, 8, "MP105", "unexpected 'hello': expected '#' or an IP address"),
        err(9, 9, "MP107", "range ends before it starts: 192.0.2.9-192.0.2.1"),
        err(10, 9, "MP207", "no such address list: nosuch"),
        err(13, 5, "MP105", "not an IP address: 999.0.0.1"),
        err(14, 14, "MP106", "/40 is not a prefix length for IPv4 (1 to 32)"),
    ]


def test_positions_in_a_literal_block_with_leading_blank_lines_and_chomping(
    tmp_path: Path,
) -> None:
    site = (
        HEAD
        + TAIL
        + (
            "address_lists:\n"  # 6
            "  a: |-\n"  # 7
            "\n"  # 8
            "    10.0.0.0/7\n"  # 9: the host bits are zero
            "       #zz\n"  # 10
            "  b: |+\n"  # 11
            "    ; x\n"  # 12
            "    1.2.3.4-1.2.3.1\n"  # 13
            "\n"  # 14
        )
    )
    assert list_problems(tmp_path, site) == [
        err(10, 9, "MP207", "no such address list: zz"),
        err(13, 5, "MP107", "range ends before it starts: 1.2.3.4-1.2.3.1"),
    ]


def test_positions_in_quoted_and_plain_scalars(tmp_path: Path) -> None:
    site = (
        HEAD
        + (
            '  blacklisted_ips: "10.0.0.1/33"\n'  # 4
            "  client_ips: '#nosuch'\n"  # 5
        )
        + TAIL
        + (
            "address_lists:\n"  # 8
            "  b: 1.2.3.4-1.2.3.1\n"  # 9
            "  c: '::1/200'\n"  # 10
            "  d:   hello\n"  # 11
        )
    )
    assert list_problems(tmp_path, site) == [
        err(4, 30, "MP106", "/33 is not a prefix length for IPv4 (1 to 32)"),
        err(5, 17, "MP207", "no such address list: nosuch"),
        err(9, 6, "MP107", "range ends before it starts: 1.2.3.4-1.2.3.1"),
        err(10, 11, "MP106", "/200 is not a prefix length for IPv6 (1 to 128)"),
        err(11, 8, "MP105", "unexpected 'hello': expected '!' or '#' or an IP address"),
    ]


def test_positions_in_a_list_file(tmp_path: Path) -> None:
    site = HEAD + "  client_ips: {file: lists/clients.txt}\n" + TAIL
    files = {"lists/clients.txt": "; clients\n192.0.2.0/24\n  10.0.0.1/8\n\n#nosuch\n"}
    assert list_problems(tmp_path, site, files) == [
        error(
            "lists/clients.txt",
            3,
            3,
            "MP106",
            "10.0.0.1/8 has host bits set: the low 24 bits must be zero (they are 0x1); "
            "the network is 10.0.0.0/8",
        ),
        error("lists/clients.txt", 5, 2, "MP207", "no such address list: nosuch"),
    ]


def test_include_cycle_position_in_site_yaml(tmp_path: Path) -> None:
    site = (
        HEAD
        + TAIL
        + (
            "address_lists:\n"  # 6
            "  a: |\n"  # 7
            "    10.0.0.0/8\n"  # 8
            "    #b\n"  # 9
            "  b: |\n"  # 10
            "    #a\n"  # 11
        )
    )
    assert list_problems(tmp_path, site) == [
        err(11, 6, "MP108", "address lists include each other: a -> b -> a"),
    ]


def test_positions_in_a_literal_block_with_an_indentation_indicator(tmp_path: Path) -> None:
    site = (
        HEAD
        + (
            "  client_ips: |2\n"  # 4: the block is indented by 4
            "       192.0.2.1/24\n"  # 5: content starts 3 spaces into the block
            "    10.0.0.1/8\n"  # 6
        )
        + TAIL
    )
    assert [(d.line, d.column, d.code) for d in list_problems(tmp_path, site)] == [
        (5, 8, "MP106"),
        (6, 5, "MP106"),
    ]


def test_positions_in_a_folded_block(tmp_path: Path) -> None:
    site = (
        HEAD
        + (
            "  client_ips: >\n"  # 4
            "    10.0.0.1\n"  # 5
            "    10.0.0.1/8\n"  # 6
        )
        + TAIL
    )
    problems = list_problems(tmp_path, site)
    assert [(d.line, d.column, d.code, d.message) for d in problems] == [
        (4, 15, "MP105", "write an address list as a literal block (|), not a folded one (>)")
    ]


def test_a_prefix_length_of_thousands_of_digits() -> None:
    _, problems = compile_yaml(lists_yaml(x=["192.0.2.0/" + "9" * 5000]))
    assert problems == [
        err(3, 15, "MP106", "/9999999999… is not a prefix length for IPv4 (1 to 32)")
    ]


@pytest.mark.parametrize(
    "text",
    ["0.0.0.0", "1.2.3.4", "255.255.255.255", "::", "::1", "2001:db8::1:0:0:1", "::ffff:1.2.3.4"],
)
def test_an_address_is_the_same_number_either_way(text: str) -> None:
    family = socket.AF_INET if "." in text and ":" not in text else socket.AF_INET6
    assert _number(family, text) == int(ipaddress.ip_address(text))
