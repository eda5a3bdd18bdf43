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
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from mailplan.compiler.diagnostics import has_errors, render_json, render_text, split_lines
from mailplan.compiler.load import references
from mailplan.compiler.pipeline import compile_site
from mailplan.compiler.schema import site_schema
from mailplan.compiler.unit import Unit
from mailplan.plan import codec
from mailplan.plan.model import KINDS, Plan
from mailplan.runtime.decide.policy import Policy
from mailplan.runtime.decide.router import Router
from mailplan.runtime.rules.engine import Facts, Headers, RuleBook
from mailplan.runtime.smtp.casework import decide, judge
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
    # The high-water mark of this whole process (kibibytes): an input that made the
    # compiler grow past the bound shows here, in the example that did it or just after.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < GIGABYTE // 1024


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
    decides(plan)


MESSAGE = b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: hello\r\n\r\nhi\r\n"


def decides(plan: Plan) -> None:
    """Every pure decision the server makes from a plan it loaded: the router, the policy
    (connect, relay, sender, recipient, login) and the rules, for a few ordinary cases."""
    policy = Policy(plan)
    for kind in KINDS:
        policy.router.route("bob@example.com", kind)
    for ip in ("192.0.2.1", "127.0.0.1", "::1"):
        client = policy.client(ip, tls=False, authenticated="bob")
        policy.refuse_connection(client)
        policy.may_relay(client)
        policy.sender("alice@example.com")
        for to in ("bob@example.com", "someone@example.net", "postmaster"):
            policy.recipient(client, to, 0)
    for name, account in policy.accounts.items():  # a hash that is no argon2 hash: a refusal
        if account.password is not None and not account.password.startswith("$argon2"):
            assert policy.login(name, "secret") is None  # (a real one costs a second to try)
    book = RuleBook(plan)
    facts = Facts(
        headers=Headers.parse(MESSAGE),
        sender="alice@example.com",
        recipients=("bob@example.com",),
        size=len(MESSAGE),
        sources=frozenset({"remote"}),
        tls=False,
        submit_address="192.0.2.1",
        now=datetime(2026, 12, 7, 12, 0),
    )
    decide(policy, book, facts, "bob@example.com")
    for case in plan.tests:
        judge(policy, case, book)


def _alike(current: Any, choice: int, text: str, number: int) -> Any:
    """A value of the same JSON type as `current`: what the plan's schema lets through, so
    that the decisions run on a plan that loads but that no compiler made."""
    if isinstance(current, bool):
        return not current
    if isinstance(current, int):
        return number
    if isinstance(current, str):
        return [text, *WORDS, *ODD][choice % (len(WORDS) + len(ODD) + 1)]
    if isinstance(current, list) and current:
        return current[: choice % len(current)] + current[choice % len(current) + 1 :]
    return current


@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 200), max_size=8), st.integers(0, 10**6)), max_size=6
    ),
    st.text(max_size=8),
    st.integers(-(2**64), 2**64) | st.integers(-3, 70000),
)
def test_plans_edited_alike(edits: list[tuple[list[int], int]], text: str, number: int) -> None:
    """Plans whose values are swapped for others of their type, resealed: most load, and
    then every decision the server makes from a plan must run on them without a fault."""
    edited: Any = json.loads(PLAN)
    for path, choice in edits:
        edited = _replace(edited, path, lambda old, c=choice: _alike(old, c, text, number))
    try:
        plan = codec.loads(resealed(edited), "plan.json")
    except (codec.PlanError, UnicodeEncodeError):
        event("refused")
        return
    event("loaded")
    decides(plan)


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


# --- the bounds -------------------------------------------------------------------------

GIGABYTE = 1 << 30


def _laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        this, last = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{this}: &{this} [{', '.join([f'*{last}'] * 9)}]")
    return "\n".join(lines) + "\n"


HOSTILE: dict[str, dict[str, str | bytes]] = {
    "billion laughs": {"site.yaml": _laughs()},
    "deep nesting": {"site.yaml": "x: " + "[" * 100_000 + "]" * 100_000 + "\n"},
    "huge numbers": {
        "site.yaml": SITE.replace(
            "bob: {}", "bob: {}\nlimits: {max_message_size: " + "9" * 100_000 + "}"
        )
    },
    "generated zone": {
        "site.yaml": SITE
        + "tests:\n- {name: g, from: x@example.org, to: bob@example.com, expect: local bob,\n"
        + "   dns: {example.org: '$GENERATE 1-100000000 h$ A 192.0.2.1'}}\n",
        **FILES,
    },
    "long source route": {
        "site.yaml": SITE,
        **FILES,
        "r.cgr": "<" + "@a:" * 100_000 + "u@b> = bob\n",
    },
    "a million routing lines": {
        "site.yaml": SITE,
        **FILES,
        "r.cgr": "<x@example.com> = bob\n" + "; a comment\n" * 1_000_000,
    },
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_sites_fit_in_a_gigabyte(name: str) -> None:
    """`mailplan check`, in a process that may not map more than 1 GiB, ends every hostile
    site of issue 17's kinds with its diagnostics (exit 1) or a plan (exit 0): a site that
    needed more would end in MemoryError, which the last line of defence makes exit 70."""

    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (GIGABYTE, GIGABYTE))

    with site(HOSTILE[name]) as root:
        done = subprocess.run(
            [sys.executable, "-m", "mailplan", "check", str(root)],
            capture_output=True,
            text=True,
            preexec_fn=bounded,
            timeout=120,  # a hang, not a slow machine
        )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "internal error" not in done.stderr
    assert "Traceback" not in done.stderr


# --- sites made only of valid pieces -------------------------------------------------------
# Hostile text rarely gets past the schema, so the passes after it (resolve, every check)
# and the decisions of the server see few of those sites. These are assembled from pieces
# each of which is valid on its own: names, listeners, scopes, routing records, rules and
# address lists. Together they may still be wrong (a loop, a shadowed alias, an open relay:
# the checks' business), but never wrong in syntax or shape: no MP1xx; and when they make
# a plan, the plan survives its file form and every decision the server makes from it.

DOMAIN_NAMES = ["example.com", "example.net", "bücher.example", "sub.example.org",
                "Example.Org", "xn--caf-dma.example", "a.b.c.example"]  # fmt: skip
ACCOUNT_NAMES = ["bob", "alice", "info", "postmaster", "jörg", "a.b", "x-y", "Sales", "ß"]
SCOPES = ["everybody", "clients-only", "everybody-except-clients", "nobody"]
LIST_LINES = ["10.0.0.0/8", "192.0.2.1", "::1", "2001:db8::/32", "!10.1.0.0/16",
              "192.0.2.10-192.0.2.20", "198.51.100.0/24 ; a comment", "#office", ""]  # fmt: skip
RULE_TEXTS = [
    'rule "{n}" priority {p}\n  if Subject is "*{w}*"\n  then Tag Subject "[x]"\n',
    'rule "{n}" priority {p}\n  if Message Size greater than {p}M\n  then Mark Flagged\n',
    'rule "{n}" priority {p}\n  if Any Recipient is *@{d}\n  then Add Header "X-A: {w}"\n'
    "  and Stop Processing\n",
    'rule "{n}" priority {p} inactive\n  if From is {a}@{d}\n  then Discard\n',
    'rule "{n}" priority {p}\n  if Source in trusted, authenticated\n'
    '  then Reject with "550 5.7.1 no"\n',
    'rule "{n}" priority {p}\n  if Time Of Day greater than 1{p}:00\n'
    "  and Current Day in Saturday\n  then Stop Processing\n",
]
ROUTE_TEXTS = [
    "<{a}@{d}> = {b}@{e}\n",
    "{d2} = {d}\n",
    "Mail:<*@{d}> = *@{e}\n",
    'Access:<{a}@{d}> = error "no {w}"\n',
    "<x{p}@{d}> = null\n",
    "Relay:<{a}@{d}> = {a}@[192.0.2.{p}] ; allow-open-relay: a test\n",
    "*.lab.{d} = *.lab.{d}.smtp\n",
    "Signal:<*@{d2}> = error\n",
]


def _domain(draw: st.DrawFn, name: str) -> dict[str, Any]:
    accounts = draw(st.lists(st.sampled_from(ACCOUNT_NAMES), max_size=4, unique_by=str.lower))
    domain: dict[str, Any] = {"accounts": {a: {} for a in accounts}}
    if accounts and draw(st.booleans()):
        domain["accounts"][accounts[0]] = {"aliases": [f"{accounts[0]}-x"], "folders": ["Work"]}
    if draw(st.booleans()):
        domain["forwarders"] = {"fwd": "someone@elsewhere.example"}
    if len(accounts) > 1 and draw(st.booleans()):
        members = [f"{a}@{name}" for a in accounts[1:]]
        domain["lists"] = {"team": {"owner": accounts[0], "members": members}}
    domain["unknown"] = draw(st.sampled_from(["reject", {"route": "*@example.invalid"}]))
    if draw(st.booleans()):
        domain["rules"] = "d.rules"
    return domain


def _some(draw: st.DrawFn, pieces: list[str], most: int) -> list[str]:
    return draw(st.lists(st.sampled_from(pieces), max_size=most))


@st.composite
def valid_sites(draw: st.DrawFn) -> dict[str, str | bytes]:
    names = draw(
        st.lists(st.sampled_from(DOMAIN_NAMES), min_size=1, max_size=3, unique_by=str.lower)
    )
    domains = {name: _domain(draw, name) for name in names}
    people = [a for d in domains.values() for a in d["accounts"]] or ["nobody"]
    words = {
        "d": names[0],
        "d2": "old." + names[0].lower(),
        "e": draw(st.sampled_from([*names, "far.example"])),
        "a": draw(st.sampled_from(people)),
        "b": draw(st.sampled_from(people)),
        "w": draw(st.sampled_from(["x", "sale", "ü"])),
        "p": draw(st.integers(1, 9)),
    }
    scope = st.sampled_from(SCOPES)
    data: dict[str, Any] = {
        "server": {
            "hostname": "mail.example.net",
            "main_domain": names[0],
            "client_ips": "\n".join(_some(draw, LIST_LINES, 4)),
        },
        "domains": domains,
        "address_lists": {"office": {"file": "l.txt"}},
        "listeners": {"smtp": {"port": draw(st.integers(1, 65535)), "tls": "none", "auth": "none"}},
        "relaying": {"scope": draw(st.sampled_from(SCOPES[1:]))},
        "receiving": {"spf": {"scope": draw(scope)}, "return_path": {"scope": draw(scope)}},
        "limits": {"max_message_size": draw(st.sampled_from(["1M", "25M", 1000, "10K"]))},
        "queue": {"retry": _some(draw, ["1m", "5m", "1h", "2d"], 3) or ["5m"]},
        "routing": "r.cgr",
        "server_rules": "s.rules",
    }
    routes = _some(draw, ROUTE_TEXTS, 6)
    rules = _some(draw, RULE_TEXTS, 4)

    def filled(texts: list[str]) -> str:
        return "".join(text.format(n=f"r{n}", **words) for n, text in enumerate(texts))

    return {
        "site.yaml": yaml.safe_dump(data, allow_unicode=True),
        "r.cgr": filled(routes),
        "s.rules": filled([rule for rule in rules if "Mark" not in rule]),  # MP608
        "d.rules": filled(rules[::-1]),
        "l.txt": "\n".join(_some(draw, LIST_LINES[:-2], 5)) + "\n",  # not #office itself
    }


# What pieces that are each valid can never make: errors of syntax, shape and value.
SHAPE = {f"MP{n}" for n in (*range(100, 108), 109, 110, *range(601, 607))}


@given(valid_sites())
def test_valid_sites(files: dict[str, str | bytes]) -> None:
    unit = compiled(files)
    shape = [d for d in unit.diagnostics if d.code in SHAPE]
    assert not shape, render_text(shape, unit.texts)
    if unit.plan is None:
        event(
            "refused by: "
            + ", ".join(sorted({d.code for d in unit.diagnostics if d.severity == "error"}))
        )
        return
    assert codec.loads(codec.dumps(unit.plan)) == unit.plan
    decides(unit.plan)
