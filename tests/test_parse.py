"""The routing table: every line form parses into the expected Record, broken lines
give MP104 at the right column (and the other lines still parse), and
compiler.routes turns records into routes with canonical text."""

from __future__ import annotations

import pytest

from mailplan.compiler import yamlpos
from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.compiler.parse import parse
from mailplan.compiler.routes import routes
from mailplan.compiler.syntax import Record, Text
from mailplan.compiler.unit import Unit
from mailplan.plan.model import KINDS, Pattern, Route, Source, Target

FILE = "router.cgr"
SITE = "routing: router.cgr\n"

EXPECTED_START = (
    "a prefix (Relay:, Mail:, Access:, Signal:) or an <address> or an address or a domain"
)
EXPECTED_RIGHT = 'a "program"@pipe or an <address> or an address or a domain'


def parse_table(text: str) -> tuple[tuple[Record, ...], list[Diagnostic]]:
    """Parse `text` as the routing table of a minimal site, through compiler.parse.parse."""
    document, problems = yamlpos.load(SITE, "site.yaml")
    assert problems == []
    unit = parse(Unit(document, {"site.yaml": SITE, FILE: text}, ()))
    return unit.records, list(unit.diagnostics)


def one_record(line: str) -> Record:
    records, problems = parse_table(line)
    assert problems == []
    assert len(records) == 1
    return records[0]


def build(
    text: str, main_domain: str = "example.com"
) -> tuple[tuple[Route, ...], list[Diagnostic]]:
    records, problems = parse_table(text)
    assert problems == []
    return routes(records, main_domain)


def one_route(line: str) -> Route:
    built, problems = build(line)
    assert problems == []
    assert len(built) == 1
    return built[0]


def T(value: str, column: int) -> Text:
    return Text(value, column)


def R(
    column: int,
    prefixes: tuple[Text, ...],
    left_form: str,
    left: Text,
    right_form: str,
    right: Text,
    message: Text | None = None,
    ack: Text | None = None,
    line: int = 1,
) -> Record:
    return Record(FILE, line, column, prefixes, left_form, left, right_form, right, message, ack)


def mp104(line: int, column: int, message: str) -> Diagnostic:
    return error(FILE, line, column, "MP104", message)


# --- every form of a record -------------------------------------------------------------

FORMS = [
    (
        "Relay: <*@old.dom> = *@new.dom",
        R(1, (T("Relay:", 1),), "angle", T("<*@old.dom>", 8), "word", T("*@new.dom", 22)),
    ),
    (
        "relay:mail:<a@b> = c@d",
        R(1, (T("relay:", 1), T("mail:", 7)), "angle", T("<a@b>", 12), "word", T("c@d", 20)),
    ),
    (
        " RELAY  :  Access : x@y = z@w",
        R(2, (T("RELAY  :", 2), T("Access :", 12)), "word", T("x@y", 21), "word", T("z@w", 27)),
    ),
    (
        "Signal:<a@b>=c@d",
        R(1, (T("Signal:", 1),), "angle", T("<a@b>", 8), "word", T("c@d", 14)),
    ),
    (
        "access:a@b=c@d",
        R(1, (T("access:", 1),), "word", T("a@b", 8), "word", T("c@d", 12)),
    ),
    (
        "\tMail:\t<a@b>\t=\tc@d",
        R(2, (T("Mail:", 2),), "angle", T("<a@b>", 8), "word", T("c@d", 16)),
    ),
    (
        "[192.0.2.1] = other.example",
        R(1, (), "word", T("[192.0.2.1]", 1), "word", T("other.example", 15)),
    ),
    (
        "<@hop:u@d> = x@y",
        R(1, (), "angle", T("<@hop:u@d>", 1), "word", T("x@y", 14)),
    ),
    (
        "hop!dom!user = error",
        R(1, (), "word", T("hop!dom!user", 1), "word", T("error", 16)),
    ),
    (
        'a@b = error "msg here"',
        R(1, (), "word", T("a@b", 1), "word", T("error", 7), message=T('"msg here"', 13)),
    ),
    (
        "a@b = null",
        R(1, (), "word", T("a@b", 1), "word", T("null", 7)),
    ),
    (
        '<spam@example.com> = "spam-report --learn"@pipe',
        R(1, (), "angle", T("<spam@example.com>", 1), "pipe", T('"spam-report --learn"@pipe', 22)),
    ),
    (
        'a@b = "prog"@PIPE',
        R(1, (), "word", T("a@b", 1), "pipe", T('"prog"@PIPE', 7)),
    ),
    (
        "*.lab.example.com = *.lab.example.com.smtp",
        R(1, (), "word", T("*.lab.example.com", 1), "word", T("*.lab.example.com.smtp", 21)),
    ),
    (
        "a@b = x%y@host._via",
        R(1, (), "word", T("a@b", 1), "word", T("x%y@host._via", 7)),
    ),
    (
        "a@b = x%y@host",
        R(1, (), "word", T("a@b", 1), "word", T("x%y@host", 7)),
    ),
    (
        "a@b = <c@d>",
        R(1, (), "word", T("a@b", 1), "angle", T("<c@d>", 7)),
    ),
    (
        "example.com = other.example",
        R(1, (), "word", T("example.com", 1), "word", T("other.example", 15)),
    ),
    (
        "a@b = x%y@host._via  ; a comment",
        R(1, (), "word", T("a@b", 1), "word", T("x%y@host._via", 7)),
    ),
    (
        "Mail:<a@b> = c@d;comment",
        R(1, (T("Mail:", 1),), "angle", T("<a@b>", 6), "word", T("c@d", 14)),
    ),
    (
        "Relay: *@c = *@d ; allow-open-relay: backup MX",
        R(
            1,
            (T("Relay:", 1),),
            "word",
            T("*@c", 8),
            "word",
            T("*@d", 14),
            ack=T("; allow-open-relay: backup MX", 18),
        ),
    ),
    (
        "a@b = c@d ;ALLOW-OPEN-RELAY : why",
        R(1, (), "word", T("a@b", 1), "word", T("c@d", 7), ack=T(";ALLOW-OPEN-RELAY : why", 11)),
    ),
    (
        'a@b = error "m" ; allow-open-relay: r',
        R(
            1,
            (),
            "word",
            T("a@b", 1),
            "word",
            T("error", 7),
            message=T('"m"', 13),
            ack=T("; allow-open-relay: r", 17),
        ),
    ),
    (
        # without the colon it is an ordinary comment, not an acknowledgement
        "a@b = c@d ; allow-open-relay",
        R(1, (), "word", T("a@b", 1), "word", T("c@d", 7)),
    ),
]


@pytest.mark.parametrize(("line", "expected"), FORMS, ids=[line for line, _ in FORMS])
def test_record_forms(line: str, expected: Record) -> None:
    assert one_record(line) == expected


def test_blank_and_comment_lines_are_skipped_and_lines_keep_their_numbers() -> None:
    text = (
        "; The routing table\n"  # 1
        "\n"  # 2
        "   \n"  # 3
        "  ; an indented comment\n"  # 4
        "a@b = c@d\n"  # 5
        "\t\n"  # 6
        ";Mail: x = y\n"  # 7: commented out
        "Mail: x = y ; trailing\n"  # 8
        "\n"  # 9
    )
    records, problems = parse_table(text)
    assert problems == []
    assert records == (
        R(1, (), "word", T("a@b", 1), "word", T("c@d", 7), line=5),
        R(1, (T("Mail:", 1),), "word", T("x", 7), "word", T("y", 11), line=8),
    )


def test_empty_table() -> None:
    assert parse_table("") == ((), [])
    assert parse_table("; nothing\n\n") == ((), [])


def test_crlf_line_ends() -> None:
    records, problems = parse_table("; c\r\na@b = c@d\r\n\r\nx = y\r\n")
    assert problems == []
    assert [(r.line, r.left.value, r.right.value) for r in records] == [
        (2, "a@b", "c@d"),
        (4, "x", "y"),
    ]


# --- broken lines ------------------------------------------------------------------------


def test_every_broken_line_is_reported_and_the_others_still_parse() -> None:
    text = "\n".join(
        [
            "; broken lines",  # 1
            "a@b c@d",  # 2
            "good@x = y@z",  # 3
            "= c@d",  # 4
            'a@b = "unterminated',  # 5
            "<a@b> <c@d> = x",  # 6
            "a@b == c",  # 7
            'x = "msg"',  # 8
            'a@b = "prog"@pipes',  # 9
            "Relay: = x",  # 10
            "",  # 11
            "last@x = y ; fine",  # 12
        ]
    )
    records, problems = parse_table(text)
    assert [(r.line, r.left.value, r.right.value) for r in records] == [
        (3, "good@x", "y@z"),
        (12, "last@x", "y"),
    ]
    assert problems == [
        mp104(2, 5, "unexpected 'c@d': expected '='"),
        mp104(4, 1, f"unexpected '=': expected {EXPECTED_START}"),
        mp104(5, 7, "unexpected character '\"'"),
        mp104(6, 7, "unexpected '<c@d>': expected '='"),
        mp104(7, 6, f"unexpected '=': expected {EXPECTED_RIGHT}"),
        mp104(8, 5, f"unexpected '\"msg\"': expected {EXPECTED_RIGHT}"),
        mp104(9, 7, f"unexpected '\"prog\"': expected {EXPECTED_RIGHT}"),
        mp104(10, 8, f"unexpected '=': expected {EXPECTED_START}"),
    ]


def test_unclosed_angle_bracket() -> None:
    records, problems = parse_table("x = y\na@b = <c@d\n")
    assert len(records) == 1
    assert problems == [
        mp104(2, 7, "'<' is not closed: an address in angle brackets ends with '>'"),
    ]


def test_unexpected_character_column_counts_leading_white_space() -> None:
    _, problems = parse_table('   Mail: a@b = "x\n')
    assert problems == [mp104(1, 16, "unexpected character '\"'")]


@pytest.mark.parametrize(
    ("line", "column", "expected"),
    [
        ("a@b =", 6, EXPECTED_RIGHT),
        ("a@b =   ", 6, EXPECTED_RIGHT),
        ("Relay:", 7, EXPECTED_START),
        ("Mail: Relay:", 13, EXPECTED_START),
        ("a@b", 4, "'='"),
    ],
)
def test_line_that_ends_too_early(line: str, column: int, expected: str) -> None:
    _, problems = parse_table(line)
    assert problems == [mp104(1, column, f"line ends too early: expected {expected}")]


@pytest.mark.parametrize(
    ("line", "column", "expected"),
    [
        ("a@b = c@d e@f", 11, 'a "message" or a comment or the end of the line'),
        ('a@b = error "m" extra', 17, "a comment or the end of the line"),
        ('a@b = "prog"@pipe "x"', 19, "a comment or the end of the line"),
        ("a@b = c@d = e", 11, 'a "message" or a comment or the end of the line'),
    ],
)
def test_junk_after_a_complete_record(line: str, column: int, expected: str) -> None:
    _, problems = parse_table(line)
    token = line[column - 1 :].split()[0]
    assert problems == [mp104(1, column, f"unexpected {token!r}: expected {expected}")]


def test_junk_after_a_complete_record_is_reported_at_its_column() -> None:
    """The position half of the test above, which holds today."""
    _, problems = parse_table('a@b = c@d e@f\na@b = error "m" extra\n')
    assert [(p.line, p.column, p.code) for p in problems] == [(1, 11, "MP104"), (2, 17, "MP104")]
    assert problems[0].message.startswith("unexpected 'e@f': expected ")
    assert problems[1].message.startswith("unexpected 'extra': expected ")


# --- compiler.routes ---------------------------------------------------------------------

CANONICAL = [
    ("Relay: <*@old.dom> = *@new.dom", "Relay: <*@old.dom> = *@new.dom"),
    ("relay:mail:<A@B.Dom> = c@d", "Relay:Mail: <a@b.dom> = c@d"),
    (" RELAY  :  Access : x@y = Z@W", "Relay:Access: <x@y> = Z@W"),
    ("Signal:<a@b>=c@d", "Signal: <a@b> = c@d"),
    ("Mail: Relay: a@b = c@d", "Relay:Mail: <a@b> = c@d"),
    ("[192.0.2.1] = other.example", "[192.0.2.1] = other.example"),
    ("<@Hop.Example:U@D.Example> = x@y", "<u%d.example@hop.example> = x@y"),
    ("hop!Dom!user = error", "<user%dom@hop> = error"),
    ("a!b!c!user = null", "<user%c%b@a> = null"),
    ('a@b = error "msg here"', '<a@b> = error "msg here"'),
    ("a@b = ERROR", "<a@b> = error"),
    ("a@b = NULL", "<a@b> = null"),
    (
        '<spam@example.com> = "spam-report --learn"@pipe',
        '<spam@example.com> = "spam-report --learn"@pipe',
    ),
    ('<spam@example.com> = "spam-report"@pipe', '<spam@example.com> = "spam-report"@pipe'),
    ("*.lab.example.com = *.lab.example.com.smtp", "*.lab.example.com = *.lab.example.com.smtp"),
    ("a@b = x%y@host._via ; comment", "<a@b> = x%y@host._via"),
    ("<*@b> = *%b@host", "<*@b> = *%b@host"),
    ("Example.COM. = other.dom", "example.com = other.dom"),
    ("user = x@y", "user = x@y"),
    ("a@b = <c@d>", "<a@b> = c@d"),
    ("Relay: *@c = *@d ; allow-open-relay: backup MX", "Relay: <*@c> = *@d"),
]


@pytest.mark.parametrize(("line", "text"), CANONICAL, ids=[line for line, _ in CANONICAL])
def test_canonical_text(line: str, text: str) -> None:
    assert one_route(line).text == text


def test_canonical_text_orders_the_kinds() -> None:
    assert one_route("Access:Mail: a@b = c@d").text == one_route("Mail:Access: a@b = c@d").text


def test_route_keeps_its_source() -> None:
    built, problems = build("; c\n\n   Relay:Mail: <a@b> = c@d\nx@y = z@w\n")
    assert problems == []
    assert [r.source for r in built] == [Source(FILE, 3, 4), Source(FILE, 4, 1)]


@pytest.mark.parametrize(
    ("line", "relay", "kinds"),
    [
        ("a@b = c@d", False, KINDS),
        ("Relay: a@b = c@d", True, KINDS),
        ("Mail: a@b = c@d", False, ("mail",)),
        ("Access: a@b = c@d", False, ("access",)),
        ("SIGNAL : a@b = c@d", False, ("signal",)),
        ("Relay:Mail:Access: a@b = c@d", True, ("mail", "access")),
        ("mail:access:signal: a@b = c@d", False, ("mail", "access", "signal")),
    ],
)
def test_prefixes(line: str, relay: bool, kinds: tuple[str, ...]) -> None:
    route = one_route(line)
    assert route.relay is relay
    assert route.kinds == kinds


def test_kinds_default_to_all_three() -> None:
    assert KINDS == ("mail", "access", "signal")
    assert one_route("a@b = c@d").kinds == ("mail", "access", "signal")


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("<*@old.dom> = x", Pattern("address", "*@old.dom")),
        ("<A@B.Example> = x", Pattern("address", "a@b.example")),
        ("A@B.Example = x", Pattern("address", "a@b.example")),
        ("<Sales-*@Example.COM> = x", Pattern("address", "sales-*@example.com")),
        ("<@Hop:U@D> = x", Pattern("address", "u%d@hop")),
        ("<@hop1,@hop2:u@d> = x", Pattern("address", "u%d%hop2@hop1")),
        ("Hop!Dom!User = x", Pattern("address", "user%dom@hop")),
        ("x%Y@Host = x", Pattern("address", "x%y@host")),
        ("Example.COM = x", Pattern("domain", "example.com")),
        ("example.com. = x", Pattern("domain", "example.com")),
        ("*.Example.com = x", Pattern("domain", "*.example.com")),
        ("[192.0.2.1] = x", Pattern("domain", "[192.0.2.1]")),
        ("<*@*> = x", Pattern("address", "*@*")),
    ],
)
def test_left_side_pattern(line: str, pattern: Pattern) -> None:
    assert one_route(line).left == pattern


@pytest.mark.parametrize(
    ("line", "target"),
    [
        ("a@b = User@Other.Example", Target("address", "User@Other.Example", None)),
        ("a@b = <c@d>", Target("address", "c@d", None)),
        ("<*@b> = *@new.dom", Target("address", "*@new.dom", None)),
        ("a@b = x%y@host", Target("address", "x%y@host", None)),
        ("a@b = x%y@host._via", Target("address", "x%y@host._via", None)),
        ("a@b = hop!dom!user", Target("address", "hop!dom!user", None)),
        ("a@b = user@[192.0.2.1]", Target("address", "user@[192.0.2.1]", None)),
        ("a@b = other.example", Target("domain", "other.example", None)),
        ("a@b = host.example.smtp", Target("domain", "host.example.smtp", None)),
        ("a@b = error", Target("error", "error", None)),
        ("a@b = Error", Target("error", "error", None)),
        (
            'a@b = error "carol has left; write to info@x"',
            Target("error", "error", "carol has left; write to info@x"),
        ),
        ('a@b = error ""', Target("error", "error", "")),
        ("a@b = null", Target("discard", "null", None)),
        ("a@b = Null", Target("discard", "null", None)),
        ('a@b = "spam-report"@pipe', Target("pipe", "spam-report", None)),
        ('a@b = "spam-report --learn -v"@pipe', Target("pipe", "spam-report", "--learn -v")),
    ],
)
def test_right_side_target(line: str, target: Target) -> None:
    assert one_route(line).right == target


def test_acknowledgement_reason() -> None:
    assert one_route("a@b = c@d").open_relay_acknowledged is None
    route = one_route("Relay: *@c = *@d ; allow-open-relay:   backup MX; really  ")
    assert route.open_relay_acknowledged == "backup MX; really"


def test_star_count() -> None:
    built, problems = build(
        "\n".join(
            [
                "<a@b> = *@c",  # 1
                "<*@b> = *-*@*",  # 2
                '<a@b> = "prog *"@pipe',  # 3
                "a = *.x",  # 4
                "<*@b> = *@c",  # 5: fine
                '<*@*> = "prog * *"@pipe',  # 6: fine
                'a@b = error "*"',  # 7: fine, a message is not a template
                "<*-*@*> = *@*",  # 8: fine, fewer is allowed
            ]
        )
    )
    assert problems == [
        error(FILE, 1, 9, "MP109", "the right side uses 1 '*' but the left side has 0"),
        error(FILE, 2, 9, "MP109", "the right side uses 3 '*' but the left side has 1"),
        error(FILE, 3, 9, "MP109", "the right side uses 1 '*' but the left side has 0"),
        error(FILE, 4, 5, "MP109", "the right side uses 1 '*' but the left side has 0"),
    ]
    assert [r.source.line for r in built] == [5, 6, 7, 8]


def test_prefix_given_twice() -> None:
    built, problems = build(
        "\n".join(
            [
                "Relay: Relay: a@b = c@d",
                "Mail: mail : a@b = c@d",
                "Relay:Mail:Relay:Mail: a@b = c@d",
                "Access: Signal: a@b = c@d",
            ]
        )
    )
    assert problems == [
        mp104(1, 8, "prefix Relay: given twice"),
        mp104(2, 7, "prefix Mail: given twice"),
        mp104(3, 12, "prefix Relay: given twice"),
        mp104(3, 18, "prefix Mail: given twice"),
    ]
    assert [r.text for r in built] == ["Access:Signal: <a@b> = c@d"]


def test_other_record_errors() -> None:
    built, problems = build(
        "\n".join(
            [
                "<user> = x@y",
                'a@b = c@d "msg"',
                'a@b = ""@pipe',
                'a@b = "   "@pipe',
                "Relay: *@c = *@d ; allow-open-relay:",
                "Relay: *@c = *@d ; allow-open-relay:   ",
                "ok@x = y",
            ]
        )
    )
    assert problems == [
        mp104(1, 1, "<user> needs a domain: write <user@domain>, or user for a domain"),
        mp104(2, 11, "only 'error' takes a message"),
        mp104(3, 7, "a pipe target names a program"),
        mp104(4, 7, "a pipe target names a program"),
        mp104(5, 18, "'; allow-open-relay:' needs a reason after the colon"),
        mp104(6, 18, "'; allow-open-relay:' needs a reason after the colon"),
    ]
    assert [r.text for r in built] == ["<ok@x> = y"]


def test_empty_angle_target_is_an_error() -> None:
    built, problems = build("a@b = <>")
    assert built == ()
    assert [(p.line, p.column, p.code) for p in problems] == [(1, 7, "MP104")]


def test_the_example_routing_table() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / "sites" / "example.com" / "router.cgr").read_text()
    built, problems = build(text)
    assert problems == []
    assert [(r.source.line, r.text) for r in built] == [
        (6, "oldname.example = example.com"),
        (9, '<carol@example.com> = error "carol has left; please write to info@example.com"'),
        (12, '<spam@example.com> = "spam-report"@pipe'),
        (15, "Access: <support@example.com> = recipient@example.com"),
        (16, "Mail: <support@example.com> = staff@example.com"),
        (19, "<noreply@example.com> = null"),
        (22, "Relay: <jim@example.com> = jim@home.example"),
        (25, "Relay: <*@customer.example> = *%customer.example@[192.0.2.77]._via"),
        (28, "*.lab.example.com = *.lab.example.com.smtp"),
    ]


def test_angle_target_without_domain_is_an_error() -> None:
    built, problems = build("a@b = <null>")
    assert built == ()
    assert problems == [
        mp104(1, 7, "<null> needs a domain: write <null@domain>, or null for a domain")
    ]


@pytest.mark.parametrize(
    "prefix", ["\u017fignal:", "\u017fignal: ", "Acce\u017fs:", "Relay:Ma\u0131l:"]
)
def test_prefixes_are_case_insensitive_in_ascii_only(prefix: str) -> None:
    """U+017F (long s) and U+0131 (dotless i) are no prefix letters: an error, never a
    record for every kind of address."""
    records, problems = parse_table(f"{prefix}<a@example.com> = b@example.com\n")
    assert records == ()
    assert [p.code for p in problems] == ["MP104"]


def test_a_pipe_is_named_in_ascii_only() -> None:
    _, problems = parse_table('<a@example.com> = "p"@p\u0131pe\n')
    assert problems == [mp104(1, 19, f"unexpected '\"p\"': expected {EXPECTED_RIGHT}")]


@pytest.mark.parametrize("separator", ["\f", "\x85", "\u2028", "\v"])
def test_lines_are_counted_as_editors_count_them(separator: str) -> None:
    text = f"a.example = b.example ; x{separator}y\n<c@example.com> =\n"
    _, problems = parse_table(text)
    assert [(p.line, p.column) for p in problems] == [(2, 18)]
