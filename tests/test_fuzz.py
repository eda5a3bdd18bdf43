"""Fuzzing (issue 17): whatever a site, a plan or an address holds, mailplan ends in a plan
or in diagnostics with file, line and column; never an exception, never a hang, and
never a plan while a file the site names was not read.

Five inputs, each from a strategy that mixes the language's own words with hostile
pieces (confusable letters, huge numbers, aliases, control characters, line breaks
editors do not count): site.yaml as data and as text (and as bytes), routing tables,
address lists, rule files, plans, and addresses for the router. `make test` runs a few
hundred examples of each (conftest.py's default profile); `make fuzz` thousands.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from mailplan.compiler.diagnostics import has_errors, render_json, render_text, split_lines
from mailplan.compiler.load import references
from mailplan.compiler.pipeline import compile_site
from mailplan.compiler.schema import site_schema
from mailplan.compiler.unit import Unit
from mailplan.plan import codec
from mailplan.plan.model import KINDS
from mailplan.runtime.decide.router import Router
from tests.conftest import EXAMPLE, resealed

# --- the property --------------------------------------------------------------------


def ends_well(unit: Unit) -> None:
    """A plan, or diagnostics that each point at a line and column of a file that was read."""
    for d in unit.diagnostics:
        assert d.file in unit.texts or d.file == "site.yaml", d
        lines = len(split_lines(unit.texts.get(d.file, "")))
        assert 1 <= d.line <= lines + 1, d
        assert d.column >= 1, d
        assert "\n" not in d.message, d
    assert (unit.plan is None) == has_errors(unit.diagnostics)
    if unit.plan is not None and unit.document is not None:
        for path in references(unit.document.data):  # never OK without a named file
            assert unit.document.data_at(path) in unit.texts, path
    render_text(unit.diagnostics, unit.texts)
    render_json(unit.diagnostics)


@contextmanager
def site(files: dict[str, str | bytes]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, content in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (root / name).write_bytes(content)
            else:
                (root / name).write_bytes(content.encode("utf-8", "surrogateescape"))
        yield root


def compiled(files: dict[str, str | bytes]) -> Unit:
    with site(files) as root:
        unit = compile_site(root)
    ends_well(unit)
    event("a plan" if unit.plan is not None else "diagnostics")
    return unit


# --- pieces -----------------------------------------------------------------------------

# Characters that fold to ASCII letters, line breaks editors do not count, controls.
ODD = ["\u017f", "\u0131", "\u0130", "\u212a", "\f", "\x85", "\u2028", "\v", "\x00", "\x01",
       "\x7f", "\r", "\r\n", "\t", "\ufeff", "\udcff", "é", "ß", "ﬀ", "ǅ", "\uff10"]  # fmt: skip
HUGE = ["9" * 5000, "0x" + "f" * 4000, "1e999", "-0", "00012", "18446744073709551616"]
text_piece = st.one_of(
    st.sampled_from(ODD), st.sampled_from(HUGE), st.text(max_size=6), st.sampled_from(" \n")
)


def language(words: list[str]) -> st.SearchStrategy[str]:
    """Text made of a language's own words, separators and hostile pieces."""
    piece = st.one_of(st.sampled_from(words), st.sampled_from([" ", " ", "\n", "\n"]), text_piece)
    return st.lists(piece, max_size=40).map("".join)


# --- site.yaml ----------------------------------------------------------------------------


def _schema_keys(schema: Any, found: set[str]) -> set[str]:
    if isinstance(schema, dict):
        for key in ("properties", "patternProperties"):
            found.update(k for k in schema.get(key, {}) if not k.startswith("^"))
        for value in schema.values():
            _schema_keys(value, found)
    elif isinstance(schema, list):
        for value in schema:
            _schema_keys(value, found)
    return found


KEYS = sorted(_schema_keys(site_schema(), set()))
WORDS = ["smtp", "SMTP", "submission", "example.com", "bob", "bob@example.com", "5m", "25M",
         "everybody", "nobody", "clients-only", "reject", "none", "starttls", "implicit",
         "required", "r.cgr", "./r.cgr", ".//r.cgr", "../r.cgr", "/etc/passwd", "r\0.cgr",
         "s.rules", "l.txt", "127.0.0.1", "::1", "10.0.0.0/8", "#office", "2001-01-01",
         "local bob", "reject 5.1.1", "$GENERATE 1-100000 h$ A 192.0.2.1"]  # fmt: skip
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from(WORDS),
    text_piece,
)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS + WORDS), inner, max_size=4),
    ),
    max_leaves=12,
)
BASE: dict[str, Any] = {
    "server": {"hostname": "mail.example.com", "main_domain": "example.com"},
    "domains": {"example.com": {"accounts": {"bob": {}}, "rules": "d.rules"}},
    "routing": "r.cgr",
    "server_rules": "s.rules",
    "address_lists": {"office": {"file": "l.txt"}},
}
FILES: dict[str, str | bytes] = {
    "r.cgr": "<x@example.com> = bob\n",
    "s.rules": 'rule "a" priority 5\n  if Subject is "x"\n  then Discard\n',
    "d.rules": "",
    "l.txt": "10.0.0.0/8\n",
}


def _merged(base: Any, patch: Any, depth: int = 0) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict) and depth < 4:
        out = dict(base)
        for key, item in patch.items():
            out[key] = _merged(base.get(key), item, depth + 1)
        return out
    return patch


patches = st.dictionaries(st.sampled_from(KEYS), value, max_size=4).map(
    lambda patch: _merged(BASE, {k: v for k, v in patch.items()})
) | st.dictionaries(
    st.sampled_from(["server", "domains", "listeners", "limits", "queue", "tests"]),
    st.dictionaries(st.sampled_from(KEYS + WORDS), value, max_size=3),
    max_size=2,
).map(lambda patch: _merged(BASE, patch))


@given(patches)
def test_site_data(data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    compiled({"site.yaml": text, **FILES})


YAML_WORDS = ["&a ", "*a", "&b ", "*b", "!!bool ", "!!int ", "!!binary ", "!!float ", "!!str ",
              "!!timestamp ", "!!set ", "!!omap ", "!foo ", "<<: ", "? ", "- ", ": ", "[", "]",
              "{", "}", ",", "'", '"', "|", ">", "#", "---\n", "...\n", "0x_", "0o9",
              "2001-02-30", "maybe", ".inf", ".nan", "~", "  ", "    ", "%YAML 1.1\n", "\\x",
              "server:\n  hostname: mail.example.com\n  main_domain: example.com\n",
              "domains:\n  example.com:\n", "routing: ", "listeners:\n  ", "queue: {retry: [",
              "limits: {max_message_size: "]  # fmt: skip


@given(language(YAML_WORDS + KEYS))
def test_site_text(text: str) -> None:
    compiled({"site.yaml": text, **FILES})


@given(st.binary(max_size=200))
def test_site_bytes(content: bytes) -> None:
    compiled({"site.yaml": content})


def _leaves(data: Any) -> Iterator[Any]:
    if isinstance(data, dict):
        for key, item in data.items():
            yield key
            yield from _leaves(item)
    elif isinstance(data, list):
        for item in data:
            yield from _leaves(item)
    yield data


EXAMPLE_FILES: dict[str, str | bytes] = {
    str(path.relative_to(EXAMPLE)): path.read_bytes()
    for path in EXAMPLE.rglob("*")
    if path.is_file() and path.name != "site.yaml"
}
EXAMPLE_DATA = yaml.safe_load((EXAMPLE / "site.yaml").read_text(encoding="utf-8"))
EXAMPLE_LEAVES = sorted({repr(leaf): leaf for leaf in _leaves(EXAMPLE_DATA)}.values(), key=repr)
LEAVES_BY_TYPE: dict[type, list[Any]] = {}
for _leaf in EXAMPLE_LEAVES:
    LEAVES_BY_TYPE.setdefault(type(_leaf), []).append(_leaf)
edit = st.tuples(
    st.lists(st.integers(0, 50), min_size=1, max_size=6),
    st.integers(0, 1000),
    st.none() | st.none() | st.sampled_from(EXAMPLE_LEAVES) | value,
)


@given(st.lists(edit, min_size=1, max_size=3))
def test_example_site_edited(edits: list[tuple[list[int], int, Any]]) -> None:
    """The complete example with a few values swapped for others of the site (often of
    the same type) or new ones: many stay valid, so resolve and every check run on them."""
    data = EXAMPLE_DATA
    for path, choice, fresh in edits:

        def new(current: Any, choice: int = choice, fresh: Any = fresh) -> Any:
            if fresh is not None:
                return fresh
            alike = LEAVES_BY_TYPE.get(type(current), EXAMPLE_LEAVES)
            return alike[choice % len(alike)]

        data = _replace(data, path, new)
    compiled({**EXAMPLE_FILES, "site.yaml": yaml.safe_dump(data, allow_unicode=True)})


# --- the site's other files -----------------------------------------------------------------

SITE = yaml.safe_dump(BASE)
ROUTER_WORDS = ["Relay:", "Mail:", "Access:", "Signal:", "\u017fignal:", "<", ">", "@", "*",
                "=", '"', "@pipe", "error", "null", ";", "; allow-open-relay: x", "%", "!",
                ":", ",", "[", "]", "bob", "example.com", "x@example.com", "*@*", "*.*",
                "<*@example.com>", "*@*.smtp", "@a:" * 50, "[192.0.2.1]", "[IPv6:::1]",
                "#office", "bob@example.com", "*@example.com"]  # fmt: skip
LIST_WORDS = ["10.0.0.0", "/", "8", "-", "!", "#office", "#", ";", "::1", "::", "2001:db8::",
              "192.0.2.1", "255.255.255.255", "0", "32", "129", "[", "]", "."]  # fmt: skip
RULE_WORDS = ["rule", '"a"', '"b"', "priority", "5", "inactive", "if", "and", "then",
              "Subject", "From", "Message Size", "Time Of Day", "Current Date",
              "Existing Mailbox", "Header Field", "Source", "Security", "is", "is not", "in",
              "not in", "greater than", "less than", "Discard", "Di\u017fcard", "Store in",
              "Reject with", "Redirect to", "bob@example.com", "Reply with", "once per",
              "1d", "Execute", "Mark", "Add Header", "X-A: b", "INBOX", ",", "*", "#",
              "12:00", "2001-02-30", "yes", "no", "Stop Processing"]  # fmt: skip


@given(language(ROUTER_WORDS))
def test_routing_tables(text: str) -> None:
    compiled({"site.yaml": SITE, **FILES, "r.cgr": text})


@given(language(LIST_WORDS))
def test_address_lists(text: str) -> None:
    compiled({"site.yaml": SITE, **FILES, "l.txt": text})


@given(language(RULE_WORDS), language(RULE_WORDS))
def test_rule_files(server: str, domain: str) -> None:
    compiled({"site.yaml": SITE, **FILES, "s.rules": server, "d.rules": domain})


# --- plans and addresses ------------------------------------------------------------------

PLAN = codec.dumps(compile_site(EXAMPLE).plan)  # type: ignore[arg-type]
ROUTER = Router(codec.loads(PLAN))


def _replace(document: Any, path: list[int], new: Callable[[Any], Any]) -> Any:
    """`document` with the value that `path` (indexes into its items) leads to replaced by
    what `new` makes of it."""
    if not path or not isinstance(document, dict | list) or not document:
        return new(document)
    if isinstance(document, dict):
        key = sorted(document)[path[0] % len(document)]
        return {**document, key: _replace(document[key], path[1:], new)}
    index = path[0] % len(document)
    return [*document[:index], _replace(document[index], path[1:], new), *document[index + 1 :]]


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(WORDS + ODD),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@given(st.lists(st.integers(0, 200), max_size=8), json_value, st.booleans())
def test_edited_plans(path: list[int], new: Any, reseal: bool) -> None:
    edited = _replace(json.loads(PLAN), path, lambda _: new)
    text = json.dumps(edited)
    if reseal and isinstance(edited, dict):
        with suppress(UnicodeEncodeError):  # a lone surrogate cannot be hashed: left as is
            text = resealed(edited)
    try:
        plan = codec.loads(text, "plan.json")
    except codec.PlanError as exc:
        assert "\n" not in str(exc)
        return
    router = Router(plan)
    for kind in KINDS:
        router.route("bob@example.com", kind)


@given(st.integers(0, len(PLAN)), st.text(max_size=8), st.integers(0, 8))
def test_plan_text(at: int, insert: str, cut: int) -> None:
    try:
        codec.loads(PLAN[:at] + insert + PLAN[at + cut :], "plan.json")
    except codec.PlanError as exc:
        assert "\n" not in str(exc)


ADDRESS_WORDS = ["@", "<", ">", ":", ",", "!", "%", '"', ".", "[", "]", "IPv6:", "::1",
                 "192.0.2.1", "bob", "Bob", "example.com", "EXAMPLE.COM", "bücher.example",
                 "xn--", "xn--bcher-kva", "@a:", "@a,@b:", "*", "info", "postmaster",
                 "carol@example.com", "oldname.example", "ß", "ﬀ"]  # fmt: skip


@given(language(ADDRESS_WORDS), st.sampled_from(KINDS))
def test_addresses(text: str, kind: Any) -> None:
    routing = ROUTER.route(text, kind)
    str(routing)
