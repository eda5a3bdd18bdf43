"""compiler.yamlpos: plain data plus the 1-based line and column of every key and value;
duplicate keys (MP102) and YAML syntax errors (MP101) reported where they are."""

from __future__ import annotations

import pytest
import yaml

from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.compiler.yamlpos import Document, Position, load

FILE = "site.yaml"

# PyYAML's wording of syntax errors differs between libyaml and the pure Python parser;
# the exact messages below are libyaml's, which the compiler uses when it is available.
libyaml = pytest.mark.skipif(not yaml.__with_libyaml__, reason="messages are libyaml's")


def loaded(text: str) -> Document:
    document, problems = load(text, FILE)
    assert problems == []
    assert document is not None
    return document


def mp101(line: int, column: int, message: str) -> Diagnostic:
    return error(FILE, line, column, "MP101", f"YAML syntax: {message}")


TEXT = """\
# a comment
server:
  hostname: mail.example.com
  addresses: [192.0.2.10, "2001:db8::10"]
  list:
    - a
    - 'b'
    - {x: 1, y: [2, 3]}
  lit: |
    one
    two
  quoted: "q"
  single: 'sq'
  plain: hello world
  num: 25
  empty:
  folded: >
    aa
    bb
other: 1
"""


def test_data() -> None:
    document = loaded(TEXT)
    assert document.file == FILE
    assert document.data == {
        "server": {
            "hostname": "mail.example.com",
            "addresses": ["192.0.2.10", "2001:db8::10"],
            "list": ["a", "b", {"x": 1, "y": [2, 3]}],
            "lit": "one\ntwo\n",
            "quoted": "q",
            "single": "sq",
            "plain": "hello world",
            "num": 25,
            "empty": None,
            "folded": "aa bb\n",
        },
        "other": 1,
    }
    assert document.data_at(("server", "list", 2, "y", 1)) == 3
    assert document.data_at(()) is document.data


@pytest.mark.parametrize(
    ("path", "line", "column"),
    [
        (("server",), 3, 3),  # a block mapping starts at its first key
        (("server", "hostname"), 3, 13),
        (("server", "addresses"), 4, 14),
        (("server", "addresses", 0), 4, 15),
        (("server", "addresses", 1), 4, 27),
        (("server", "list"), 6, 5),
        (("server", "list", 0), 6, 7),
        (("server", "list", 1), 7, 7),
        (("server", "list", 2), 8, 7),
        (("server", "list", 2, "x"), 8, 11),
        (("server", "list", 2, "y"), 8, 17),
        (("server", "list", 2, "y", 1), 8, 21),
        (("server", "lit"), 9, 8),
        (("server", "quoted"), 12, 11),
        (("server", "single"), 13, 11),
        (("server", "plain"), 14, 10),
        (("server", "num"), 15, 8),
        (("server", "folded"), 17, 11),
        (("other",), 20, 8),
        ((), 2, 1),
    ],
)
def test_value_positions(path: tuple[str | int, ...], line: int, column: int) -> None:
    position = loaded(TEXT).at(path)
    assert (position.line, position.column) == (line, column)


@pytest.mark.parametrize(
    ("path", "line", "column"),
    [
        (("server",), 2, 1),
        (("server", "hostname"), 3, 3),
        (("server", "addresses"), 4, 3),
        (("server", "list"), 5, 3),
        (("server", "list", 2, "x"), 8, 8),
        (("server", "list", 2, "y"), 8, 14),
        (("server", "lit"), 9, 3),
        (("server", "empty"), 16, 3),
        (("other",), 20, 1),
    ],
)
def test_key_positions(path: tuple[str | int, ...], line: int, column: int) -> None:
    position = loaded(TEXT).key_at(path)
    assert (position.line, position.column) == (line, column)


def test_styles() -> None:
    document = loaded(TEXT)
    assert document.at(("server", "lit")).style == "|"
    assert document.at(("server", "folded")).style == ">"
    assert document.at(("server", "quoted")).style == '"'
    assert document.at(("server", "single")).style == "'"
    assert document.at(("server", "plain")).style in ("", None)


def test_list_items_have_no_key_position() -> None:
    """An item of a list has no key: key_at gives the item itself."""
    document = loaded(TEXT)
    assert document.key_at(("server", "list", 1)) == document.at(("server", "list", 1))


def test_missing_paths_fall_back_to_the_nearest_written_ancestor() -> None:
    document = loaded(TEXT)
    assert document.at(("server", "nope", "deeper")) == document.at(("server",))
    assert document.key_at(("server", "nope")) == document.at(("server",))
    assert document.at(("server", "list", 7)) == document.at(("server", "list"))
    assert document.at(("nothing",)) == Position(2, 1, None)


def test_empty_document() -> None:
    for text in ("", "# only a comment\n", "\n\n"):
        document, problems = load(text, FILE)
        assert problems == []
        assert document is not None
        assert document.data is None
        assert document.at(("server",)) == Position(1, 1)


def test_non_string_keys_become_strings() -> None:
    document = loaded("1: one\ntrue: yes\nnull: x\n")
    assert document.data == {"1": "one", "True": True, "None": "x"}
    assert document.key_at(("True",)) == Position(2, 1)


def test_anchors_and_aliases_give_plain_data() -> None:
    document = loaded("a: &x {k: 1}\nb: *x\n")
    assert document.data == {"a": {"k": 1}, "b": {"k": 1}}


# --- text_origin ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "origin"),
    [
        (("server", "lit"), (10, 5)),
        (("server", "quoted"), (12, 12)),
        (("server", "single"), (13, 12)),
        (("server", "plain"), (14, 10)),
        (("server", "num"), (15, 8)),
        (("server", "folded"), (18, 5)),
        (("server", "list", 1), (7, 8)),
        (("server", "list", 0), (6, 7)),
        (("server", "addresses", 1), (4, 28)),
    ],
)
def test_text_origin(path: tuple[str | int, ...], origin: tuple[int, int]) -> None:
    assert loaded(TEXT).text_origin(path) == origin


def test_text_origin_of_literal_blocks() -> None:
    text = (
        "a: |\n"  # 1
        "    x\n"  # 2
        "b: |-   # comment\n"  # 3
        "\n"  # 4
        "\n"  # 5
        "      y\n"  # 6
        "c:\n"  # 7
        "  deeper:\n"  # 8
        "    list:\n"  # 9
        "      - |\n"  # 10
        "          z\n"  # 11
        "d: |\n"  # 12
        "e: 1\n"  # 13
    )
    document = loaded(text)
    assert document.data["b"] == "\n\ny"
    assert document.text_origin(("a",)) == (2, 5)
    # the first line of the string is the line after the indicator, blank or not
    assert document.text_origin(("b",)) == (4, 7)
    assert document.text_origin(("c", "deeper", "list", 0)) == (11, 11)
    assert document.data["d"] == ""
    assert document.text_origin(("d",)) == (13, 1)


# --- duplicate keys -------------------------------------------------------------------


def test_duplicate_key() -> None:
    document, problems = load("a: 1\nb: 2\na: 3\n", FILE)
    assert problems == [error(FILE, 3, 1, "MP102", "duplicate key 'a' (first written at line 1)")]
    assert document is not None
    assert document.data == {"a": 1, "b": 2}  # the first one counts
    assert document.key_at(("a",)) == Position(1, 1)


def test_duplicate_keys_nested_and_repeated() -> None:
    text = "top:\n  x: 1\n  y: 2\n  x: 3\n  x: 4\nother:\n  - {k: 1, k: 2}\n"
    document, problems = load(text, FILE)
    assert problems == [
        error(FILE, 4, 3, "MP102", "duplicate key 'x' (first written at line 2)"),
        error(FILE, 5, 3, "MP102", "duplicate key 'x' (first written at line 2)"),
        error(FILE, 7, 12, "MP102", "duplicate key 'k' (first written at line 7)"),
    ]
    assert document is not None
    assert document.data == {"top": {"x": 1, "y": 2}, "other": [{"k": 1}]}


def test_duplicate_keys_after_conversion_to_strings() -> None:
    _, problems = load("1: x\n'1': y\n", FILE)
    assert problems == [error(FILE, 2, 1, "MP102", "duplicate key '1' (first written at line 1)")]


def test_same_key_in_different_mappings_is_fine() -> None:
    document = loaded("a: {x: 1}\nb: {x: 2}\n")
    assert document.data == {"a": {"x": 1}, "b": {"x": 2}}


# --- syntax errors --------------------------------------------------------------------


@libyaml
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: b: c\n", mp101(1, 5, "mapping values are not allowed in this context")),
        ("a: 1\n b: 2\n", mp101(2, 3, "mapping values are not allowed in this context")),
        (
            "a: [1, 2\nb: 3\n",
            mp101(
                2,
                2,
                "did not find expected ',' or ']' "
                "(while parsing a flow sequence that starts at line 1, column 4)",
            ),
        ),
        (
            "a: {b: 1\n",
            mp101(
                2,
                1,
                "did not find expected ',' or '}' "
                "(while parsing a flow mapping that starts at line 1, column 4)",
            ),
        ),
        (
            'a: "unterminated\n',
            mp101(
                2,
                1,
                "found unexpected end of stream "
                "(while scanning a quoted scalar that starts at line 1, column 4)",
            ),
        ),
        (
            "- a\nb: c\n",
            mp101(
                2,
                1,
                "did not find expected '-' indicator "
                "(while parsing a block collection that starts at line 1, column 1)",
            ),
        ),
        ("\tfoo: 1\n", mp101(1, 1, "found character that cannot start any token")),
        ("a: @x\n", mp101(1, 4, "found character that cannot start any token")),
        ("a: *x\n", mp101(1, 4, "found undefined alias")),
        (
            "a: 1\n---\nb: 2\n",
            mp101(
                2,
                1,
                "but found another document "
                "(expected a single document in the stream that starts at line 1, column 1)",
            ),
        ),
    ],
)
def test_syntax_errors(text: str, expected: Diagnostic) -> None:
    document, problems = load(text, FILE)
    assert document is None
    assert problems == [expected]


def test_syntax_error_is_the_only_problem() -> None:
    """No data, so no duplicate-key or later reports alongside MP101."""
    document, problems = load("a: 1\na: 2\nb: [\n", FILE)
    assert document is None
    assert [(p.code, p.line) for p in problems] == [("MP101", 4)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !foo x\n", mp101(1, 4, "could not determine a constructor for the tag '!foo'")),
        ("a:\n  b: !!python/name:os.system x\n", None),
        ("a: !!binary x\n", None),
    ],
)
def test_construction_errors_are_reported(text: str, expected: Diagnostic | None) -> None:
    document, problems = load(text, FILE)
    assert document is None
    assert [p.code for p in problems] == ["MP101"]
    if expected is not None:
        assert problems == [expected]


def test_merge_key_is_merged_or_reported() -> None:
    document, problems = load("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n", FILE)
    merged = document is not None and document.data["other"] == {"x": 1, "y": 2}
    assert (merged and problems == []) or [p.code for p in problems] == ["MP101"]


# --- hostile documents (issue 17): one MP101 at the place, never an exception -------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x: 0x_\n", mp101(1, 4, "'0x_' is not a valid int")),
        ("x: !!bool maybe\n", mp101(1, 4, "'maybe' is not a valid bool")),
        ("x: !!float 1.2.3\n", mp101(1, 4, "'1.2.3' is not a valid float")),
        (
            "x: !!binary aGk=\n",
            mp101(1, 4, "a value of type bytes (tag:yaml.org,2002:binary) is not allowed"),
        ),
        ("x: " + "9" * 5000 + "\n", mp101(1, 4, "a number of more than 64 bits")),
        ("x: 0x" + "f" * 4000 + "\n", mp101(1, 4, "a number of more than 64 bits")),
        ("x: 18446744073709551616\n", mp101(1, 4, "a number of more than 64 bits")),
        ("a: &a [*a]\n", mp101(1, 4, "an alias that contains itself")),
        ("a: &a {b: *a}\n", mp101(1, 4, "an alias that contains itself")),
        ("a: " + "[" * 600 + "]" * 600 + "\n", mp101(1, 67, "values nested more than 64 deep")),
        ("? [a, b]\n: 1\n", mp101(1, 3, "a key that is a list or a mapping")),
        ("a: 1\nb: 2\nc: \x01\n", mp101(3, 4, "character U+0001 is not allowed in YAML")),
        ("a: 1\r\nb: \x7f\n", mp101(2, 4, "character U+007F is not allowed in YAML")),
        ("a: \u00e9\u00e9\nb: \x01\n", mp101(2, 4, "character U+0001 is not allowed in YAML")),
        ("a: !!int ''\n", mp101(1, 4, "'' is not a valid int")),
        (
            "a: x\x85y\nb: [\nc: 1\n",
            mp101(
                2,
                1,
                "could not find expected ':'"
                " (while scanning a simple key that starts at line 1, column 6)",
            ),
        ),
    ],
)
def test_hostile_documents_are_one_mp101_at_their_place(text: str, expected: Diagnostic) -> None:
    document, problems = load(text, FILE)
    assert document is None
    assert problems == [expected]


def test_biggest_whole_number_is_64_bits() -> None:
    assert loaded("x: 18446744073709551615\n").data == {"x": 2**64 - 1}


def test_dates_stay_the_text_they_were_written_as() -> None:
    """Nothing in a site is a date: `2001-01-01` is a string, `2001-02-30` no error."""
    assert loaded("a: 2001-01-01\nb: 2001-02-30\n").data == {"a": "2001-01-01", "b": "2001-02-30"}


def test_billion_laughs_is_refused_before_it_grows() -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        this, last = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{this}: &{this} [{', '.join([f'*{last}'] * 9)}]")
    document, problems = load("\n".join(lines) + "\n", FILE)
    assert document is None
    assert [p.message for p in problems] == [
        "YAML syntax: aliases that expand to more than 10000 values"
    ]


def test_aliases_within_the_bound_are_expanded() -> None:
    items = ", ".join(["*a"] * 1000)
    document = loaded(f"a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: [{items}]\n")
    assert len(document.data["b"]) == 1000


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029"])
def test_positions_are_counted_as_editors_count_lines(separator: str) -> None:
    """PyYAML ends lines at NEL, U+2028 and U+2029 too; an editor does not, nor do we."""
    document = loaded(f'a: "x{separator}y"\nb: [1, 2]\n')
    assert document.at(("b",)) == Position(2, 4, None)
    assert document.at(("b", 1)) == Position(2, 8, "")
    assert document.key_at(("b",)) == Position(2, 1)
