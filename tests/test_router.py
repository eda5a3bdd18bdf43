"""The router behaves as docs/router.md says.

Every test compiles a small site written into pytest's tmp_path (site.yaml and
router.cgr) with the real compiler, then routes addresses with the runtime's
Router and checks the Routing it returns: module, queue, final address,
relayability, status and reason, and the steps that fired (what and where).

Sites the compiler refuses (routing loops, MP301) are needed to test the
runtime's own loop detection: their routes are built by the compiler's passes
without the checks and put into a compiled plan with dataclasses.replace.
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from mailplan.compiler.diagnostics import render_text
from mailplan.compiler.load import load
from mailplan.compiler.parse import parse as parse_pass
from mailplan.compiler.pipeline import compile_site
from mailplan.compiler.resolve import resolve
from mailplan.compiler.schema import schema
from mailplan.plan.model import KINDS, Kind, Pattern, Plan, Route, Source, Target
from mailplan.runtime.decide.address import parse
from mailplan.runtime.decide.picture import Picture
from mailplan.runtime.decide.router import MAX_REWRITES, RouteIndex, Router, Routing

# --------------------------------------------------------------------------- helpers

BASE_YAML = """\
server: {hostname: mail.example.com, main_domain: example.com}
domains: {example.com: {accounts: {alice: {}}}}
routing: router.cgr
"""

# The site most routing-table tests use: the minimal site, plus what the right
# sides need (an alias, a forwarder, a list, a pipe, a domain alias).
TABLE_YAML = """\
server: {hostname: mail.example.com, main_domain: example.com}
domains:
  example.com:
    aliases: [example.org]
    accounts:
      alice: {aliases: [ally]}
      bob: {}
    forwarders:
      info: sales@example.net
    lists:
      staff: {owner: alice, members: [alice@example.com, bob@example.com]}
pipes:
  spam-report: {program: /usr/local/bin/spam-report}
routing: router.cgr
"""

# The site the built-in routing tests use: every kind of name and every
# `unknown:` action, a domain alias, and this server's own addresses.
BUILTIN_YAML = """\
server:
  hostname: mail.example.com
  main_domain: example.com
  addresses: [192.0.2.10, "2001:db8::10"]
domains:
  example.com:
    aliases: [example.org]
    accounts:
      alice:
        aliases: [ally]
      bob: {}
    forwarders:
      info: sales@example.net
    lists:
      staff: {owner: alice, members: [alice@example.com, bob@example.com]}
  discard.example:
    unknown: discard
  moved.example:
    unknown: {route: "*%moved.example@old-server.example"}
  catch.example:
    unknown: {route: "*@example.com"}
  literal.example:
    unknown: {route: "*%literal.example@[192.0.2.50]"}
  reject.example:
    accounts: {carol: {}}
pipes:
  spam-report: {program: /usr/local/bin/spam-report}
routing: router.cgr
"""


def _write_site(site: Path, table: str, yaml: str) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / "site.yaml").write_text(yaml, encoding="utf-8")
    (site / "router.cgr").write_text(table, encoding="utf-8")


def dedent(table: str) -> str:
    """A routing table written in a test, with its first record on line 1."""
    return textwrap.dedent(table).lstrip("\n")


def compile_plan(site: Path, table: str = "", yaml: str = BASE_YAML) -> Plan:
    """Compile a site made of `yaml` and the routing table `table`; it must compile."""
    _write_site(site, dedent(table), yaml)
    unit = compile_site(site)
    assert unit.plan is not None, render_text(unit.diagnostics, unit.texts)
    return unit.plan


def compile_router(site: Path, table: str = "", yaml: str = BASE_YAML) -> Router:
    return Router(compile_plan(site, table, yaml))


def unchecked_routes(site: Path, table: str, yaml: str = BASE_YAML) -> tuple[Route, ...]:
    """The routes of a table the compiler's checks would refuse (loops): built, not checked."""
    _write_site(site, dedent(table), yaml)
    unit = load(site)
    for step in (schema, parse_pass, resolve):
        unit = step(unit)
    assert unit.plan is not None, render_text(unit.diagnostics, unit.texts)
    assert not any(d.severity == "error" for d in unit.diagnostics)
    return unit.plan.routes


def line_of(text: str, fragment: str) -> int:
    """The 1-based number of the first line of `text` that holds `fragment`."""
    for number, line in enumerate(dedent(text).splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in {text!r}")


def where(routing: Routing) -> list[str]:
    """Where each step that fired is written: `file:line`, or `built-in`."""
    return [str(step.source) if step.source else "built-in" for step in routing.steps]


def cgr(*lines: int) -> list[str]:
    return [f"router.cgr:{n}" for n in lines]


@dataclass(frozen=True)
class Expect:
    """What a routing must come to; fields left at None are not checked."""

    module: str
    queue: str | None = None
    target: str | None = None
    relayable: bool | None = False
    status: str | None = None
    reason: str | None = None
    steps: list[str] | None = field(default=None)

    def check(self, routing: Routing) -> None:
        shown = f"{routing} via {where(routing)} {[s.what for s in routing.steps]}"
        assert routing.module == self.module, shown
        if self.queue is not None:
            assert routing.queue == self.queue, shown
        if self.target is not None:
            assert routing.target == self.target, shown
        if self.relayable is not None:
            assert routing.relayable is self.relayable, shown
        if self.module == "ERROR":
            assert routing.status == self.status, shown
        else:
            assert routing.status is None, shown
        if self.reason is not None:
            assert routing.reason == self.reason, shown
        if self.steps is not None:
            assert where(routing) == self.steps, shown


def local(
    account: str, *, relayable: bool | None = False, steps: list[str] | None = None
) -> Expect:
    return Expect("LOCAL", account, account, relayable=relayable, steps=steps)


def smtp(
    queue: str, target: str, *, relayable: bool | None = False, steps: list[str] | None = None
) -> Expect:
    return Expect("SMTP", queue, target, relayable=relayable, steps=steps)


def error(status: str, reason: str | None = None, *, steps: list[str] | None = None) -> Expect:
    return Expect("ERROR", "", None, status=status, reason=reason, steps=steps)


def at(yaml: str, fragment: str) -> str:
    """`site.yaml:LINE` of the first line of `yaml` that holds `fragment`."""
    return f"site.yaml:{line_of(yaml, fragment)}"


# Where the objects of the sites above are written, as steps name them.
BASE_DOMAIN = at(BASE_YAML, "domains:")
BASE_ALICE = at(BASE_YAML, "alice:")
T_DOMAIN = at(TABLE_YAML, "example.com:")
T_ALICE = at(TABLE_YAML, "alice:")
T_BOB = at(TABLE_YAML, "bob:")
T_STAFF = at(TABLE_YAML, "staff:")
B_DOMAIN = at(BUILTIN_YAML, "example.com:")
B_ALICE = at(BUILTIN_YAML, "alice:")
B_INFO = at(BUILTIN_YAML, "info:")
B_STAFF = at(BUILTIN_YAML, "staff:")
B_DISCARD = at(BUILTIN_YAML, "unknown: discard")
B_MOVED = at(BUILTIN_YAML, "*%moved.example")
B_CATCH = at(BUILTIN_YAML, '"*@example.com"')


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return tmp_path / "site"


# --------------------------------------------------------------------------- the helper itself


def test_minimal_site_compiles_and_routes_its_account(site: Path) -> None:
    router = compile_router(site)
    local("alice@example.com", steps=[BASE_ALICE]).check(router.route("alice@example.com"))


# --------------------------------------------------------------------------- left side forms


@dataclass(frozen=True)
class TableCase:
    id: str
    table: str
    address: str
    expect: Expect
    kind: Kind = "mail"


LEFT_SIDE = [
    TableCase(
        "angle-address",
        '<carol@example.com> = error "carol has left"',
        "carol@example.com",
        error("5.7.1", "carol has left", steps=cgr(1)),
    ),
    TableCase(
        "bare-address-same-as-angle",
        'carol@example.com = error "carol has left"',
        "carol@example.com",
        error("5.7.1", "carol has left", steps=cgr(1)),
    ),
    TableCase(
        "angle-address-does-not-match-other-names",
        '<carol@example.com> = error "carol has left"',
        "alice@example.com",
        local("alice@example.com", steps=[BASE_ALICE]),
    ),
    TableCase(
        "star-in-local-part",
        "<sales-*@example.com> = *@sales.example",
        "sales-eu@example.com",
        smtp("sales.example", "eu@sales.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "star-in-local-part-matches-empty-run",
        "<sales-*@example.com> = desk*@sales.example",
        "sales-@example.com",
        smtp("sales.example", "desk@sales.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "star-in-local-part-not-other-prefix",
        "<sales-*@example.com> = *@sales.example",
        "support-eu@example.com",
        error("5.1.1", "unknown user support-eu@example.com", steps=[BASE_DOMAIN]),
    ),
    TableCase(
        "star-local-part-whole-domain",
        '<*@old.example> = error "old is gone"',
        "anyone@old.example",
        error("5.7.1", "old is gone", steps=cgr(1)),
    ),
    TableCase(
        "star-in-domain",
        "<*@*.old.example> = *@*.new.example",
        "u@eu.old.example",
        smtp("eu.new.example", "u@eu.new.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "domain-record",
        "old.example = new.example",
        "Bob@old.example",
        smtp("new.example", "Bob@new.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "domain-record-not-subdomain",
        "old.example = new.example",
        "bob@sub.old.example",
        smtp("sub.old.example", "bob@sub.old.example", steps=["built-in"]),
    ),
    TableCase(
        "subdomain-record",
        "*.lab.example = lab-gw.example",
        "u@a.b.lab.example",
        smtp("lab-gw.example", "u@lab-gw.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "subdomain-record-not-the-domain-itself",
        "*.lab.example = lab-gw.example",
        "u@lab.example",
        smtp("lab.example", "u@lab.example", steps=["built-in"]),
    ),
    TableCase(
        "ip-literal-record",
        '[192.0.2.1] = error "no literals"',
        "u@[192.0.2.1]",
        error("5.7.1", "no literals", steps=cgr(1)),
    ),
    TableCase(
        "ip-literal-record-not-other-ip",
        '[192.0.2.1] = error "no literals"',
        "u@[192.0.2.2]",
        smtp("[192.0.2.2]", "u@[192.0.2.2]", steps=["built-in"]),
    ),
    *[
        TableCase(
            f"source-routed-left-{left_id}-matches-{address_id}",
            f'{left} = error "source routed"',
            address,
            error("5.7.1", "source routed", steps=cgr(1)),
        )
        for left_id, left in [
            ("angle", "<@hop.example:user@other.example>"),
            ("bang", "hop.example!other.example!user"),
            ("percent", "<user%other.example@hop.example>"),
        ]
        for address_id, address in [
            ("percent", "user%other.example@hop.example"),
            ("angle", "<@hop.example:user@other.example>"),
            ("bang", "hop.example!other.example!user"),
        ]
    ],
    TableCase(
        "source-routed-left-not-the-final-address",
        '<@hop.example:user@other.example> = error "source routed"',
        "user@other.example",
        smtp("other.example", "user@other.example", steps=["built-in"]),
    ),
]


@pytest.mark.parametrize("case", LEFT_SIDE, ids=lambda c: c.id)
def test_left_side(site: Path, case: TableCase) -> None:
    router = compile_router(site, case.table)
    case.expect.check(router.route(case.address, case.kind))


def test_table_step_names_the_record_and_its_line(site: Path) -> None:
    table = """
        ; a comment, then a blank line

        <carol@example.com> = error "carol has left"   ; a trailing comment
        """
    router = compile_router(site, table)
    routing = router.route("carol@example.com")
    (step,) = routing.steps
    assert step.source is not None
    assert (step.source.file, step.source.line) == ("router.cgr", 3)
    assert step.what == '<carol@example.com> = error "carol has left"'
    assert (step.before, step.after) == ("carol@example.com", "ERROR")


# --------------------------------------------------------------------------- right side forms

RIGHT_SIDE = [
    TableCase(
        "address",
        "<old@example.com> = alice@example.com",
        "old@example.com",
        local("alice@example.com", steps=[*cgr(1), T_ALICE]),
    ),
    TableCase(
        "address-to-account-alias-then-account",
        "<old@example.com> = ally@example.com",
        "old@example.com",
        local("alice@example.com", steps=[*cgr(1), T_ALICE, T_ALICE]),
    ),
    TableCase(
        "star-substitution",
        "<*@old.example> = *@new.example",
        "Jane@old.example",
        smtp("new.example", "Jane@new.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "two-stars-in-order",
        "<*.*@swap.example> = *@*.example",
        "john.doe@swap.example",
        smtp("doe.example", "john@doe.example"),
    ),
    TableCase(
        "two-stars-first-takes-least",
        "<*.*@swap.example> = *@*.example",
        "a.b.c@swap.example",
        smtp("b.c.example", "a@b.c.example"),
    ),
    TableCase(
        "star-archive-at-star",
        "<*@*.lists.example> = *-archive@*.example",
        "Dev@ops.lists.example",
        smtp("ops.example", "Dev-archive@ops.example"),
    ),
    TableCase(
        "three-stars-in-order",
        "<*-*-*@three.example> = *@*.*.example",
        "a-b-c-d@three.example",
        smtp("b.c-d.example", "a@b.c-d.example"),
    ),
    TableCase(
        "domain-replacement-keeps-local-part",
        "<*@old.example> = new.example",
        "Jane.Doe@old.example",
        smtp("new.example", "Jane.Doe@new.example"),
    ),
    TableCase(
        "domain-replacement-with-star",
        "*.old.example = *.new.example",
        "u@eu.old.example",
        smtp("eu.new.example", "u@eu.new.example"),
    ),
    TableCase(
        "domain-replacement-into-hosted-domain",
        "old.example = example.com",
        "alice@old.example",
        local("alice@example.com", steps=[*cgr(1), T_ALICE]),
    ),
    TableCase(
        "percent-hack-through-relay",
        "<u@example.com> = u%dest.example@relay.example",
        "u@example.com",
        smtp("relay.example", "u%dest.example@relay.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "error",
        "<x@example.com> = error",
        "x@example.com",
        error("5.7.1", "rejected by the routing table", steps=cgr(1)),
    ),
    TableCase(
        "error-with-message",
        '<carol@example.com> = error "carol has left; write to info@example.com"',
        "carol@example.com",
        error("5.7.1", "carol has left; write to info@example.com", steps=cgr(1)),
    ),
    TableCase(
        "null",
        "<noreply@example.com> = null",
        "noreply@example.com",
        Expect("DISCARD", steps=cgr(1)),
    ),
    TableCase(
        "pipe",
        '<spam@example.com> = "spam-report"@pipe',
        "spam@example.com",
        Expect("PIPE", "spam-report", '"spam-report"@pipe', steps=cgr(1)),
    ),
    TableCase(
        "pipe-with-arguments-and-star",
        '<report-*@example.com> = "spam-report --folder *"@pipe',
        "report-Junk@example.com",
        Expect("PIPE", "spam-report", '"spam-report --folder Junk"@pipe', steps=cgr(1)),
    ),
    TableCase(
        "pipe-star-that-would-be-an-option",
        '<report-*@example.com> = "spam-report --folder *"@pipe',
        "report---evil=x@example.com",
        error("5.1.3", "this address cannot be given to a program", steps=cgr(1)),
    ),
    TableCase(
        "pipe-star-with-a-space",
        '<*@pipes.example.com> = "spam-report --folder *"@pipe',
        '"a --b"@pipes.example.com',
        error("5.1.3", "this address cannot be given to a program", steps=cgr(1)),
    ),
    TableCase(
        "smtp-suffix-address",
        "<bob@example.com> = bob@example.com.smtp",
        "bob@example.com",
        smtp("example.com", "bob@example.com", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "smtp-suffix-domain",
        "*.lab.example.com = *.lab.example.com.smtp",
        "u@b.lab.example.com",
        smtp("b.lab.example.com", "u@b.lab.example.com", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "via-with-percent",
        "<*@customer.example> = *%customer.example@gw.customer.example._via",
        "Q@customer.example",
        smtp("gw.customer.example", "Q@customer.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "via-without-percent",
        "<*@customer.example> = *@gw.customer.example._via",
        "q@customer.example",
        smtp("gw.customer.example", "q@gw.customer.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "via-ip-literal-host",
        "<*@customer.example> = *%customer.example@[192.0.2.77]._via",
        "q@customer.example",
        smtp("[192.0.2.77]", "q@customer.example", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "local-suffix",
        "<boss@example.com> = alice@example.com.local",
        "boss@example.com",
        local("alice@example.com", steps=[*cgr(1), T_ALICE]),
    ),
    TableCase(
        "local-suffix-bypasses-forwarder",
        "<info@example.com> = bob@example.com.local",
        "info@example.com",
        local("bob@example.com", steps=[*cgr(1), T_BOB]),
    ),
    TableCase(
        "list-suffix",
        "<team@example.com> = staff@example.com.list",
        "team@example.com",
        Expect("LIST", "staff@example.com", "staff@example.com", steps=[*cgr(1), T_STAFF]),
    ),
    TableCase(
        "ip-literal",
        "<u@example.com> = u@[192.0.2.1]",
        "u@example.com",
        smtp("[192.0.2.1]", "u@[192.0.2.1]", steps=[*cgr(1), "built-in"]),
    ),
    TableCase(
        "domain-replacement-to-ip-literal",
        "old.example = [192.0.2.1]",
        "u@old.example",
        smtp("[192.0.2.1]", "u@[192.0.2.1]", steps=[*cgr(1), "built-in"]),
    ),
]


@pytest.mark.parametrize("case", RIGHT_SIDE, ids=lambda c: c.id)
def test_right_side(site: Path, case: TableCase) -> None:
    router = compile_router(site, case.table, TABLE_YAML)
    case.expect.check(router.route(case.address, case.kind))


def test_rewrite_step_records_before_and_after(site: Path) -> None:
    router = compile_router(site, "<*.*@swap.example> = *@*.example", TABLE_YAML)
    first = router.route("John.Doe@swap.example").steps[0]
    assert (first.before, first.after) == ("John.Doe@swap.example", "John@Doe.example")
    assert first.what == "<*.*@swap.example> = *@*.example"
    assert first.relay is False


def test_module_suffix_is_not_routed_through_the_table_again(site: Path) -> None:
    """`Relay: *@* = *@*.smtp` cannot loop: the .smtp address names its module."""
    table = "Relay: *@* = *@*.smtp ; allow-open-relay: a smart host for everything"
    router = compile_router(site, table, TABLE_YAML)
    routing = router.route("z@elsewhere.example")
    smtp("elsewhere.example", "z@elsewhere.example", relayable=True).check(routing)
    assert where(routing) == [*cgr(1), "built-in"]
    assert routing.steps[1].what == "module suffix .smtp"


# --------------------------------------------------------------------------- prefixes

KINDS_TABLE = """
    Mail: <k@kinds.example> = error "mail"
    Access: <k@kinds.example> = error "access"
    Signal: <k@kinds.example> = error "signal"
    Mail:Signal: <ms@kinds.example> = error "mail or signal"
    <all@kinds.example> = error "every kind"
    """


KIND_CASES: list[tuple[str, Kind, Expect]] = [
    ("k@kinds.example", "mail", error("5.7.1", "mail", steps=cgr(1))),
    ("k@kinds.example", "access", error("5.7.1", "access", steps=cgr(2))),
    ("k@kinds.example", "signal", error("5.7.1", "signal", steps=cgr(3))),
    ("ms@kinds.example", "mail", error("5.7.1", "mail or signal", steps=cgr(4))),
    ("ms@kinds.example", "signal", error("5.7.1", "mail or signal", steps=cgr(4))),
    (
        "ms@kinds.example",
        "access",
        smtp("kinds.example", "ms@kinds.example", steps=["built-in"]),
    ),
    ("all@kinds.example", "mail", error("5.7.1", "every kind", steps=cgr(5))),
    ("all@kinds.example", "access", error("5.7.1", "every kind", steps=cgr(5))),
    ("all@kinds.example", "signal", error("5.7.1", "every kind", steps=cgr(5))),
]


@pytest.mark.parametrize(
    ("address", "kind", "expect"),
    KIND_CASES,
    ids=[f"{address.split('@')[0]}-{kind}" for address, kind, _ in KIND_CASES],
)
def test_kind_prefixes_restrict_records(
    site: Path, address: str, kind: Kind, expect: Expect
) -> None:
    router = compile_router(site, KINDS_TABLE)
    expect.check(router.route(address, kind))


def test_kind_prefixes_in_the_plan(site: Path) -> None:
    plan = compile_plan(site, KINDS_TABLE)
    assert [route.kinds for route in plan.routes] == [
        ("mail",),
        ("access",),
        ("signal",),
        ("mail", "signal"),
        KINDS,
    ]


def test_access_record_and_mail_record_for_one_name(site: Path) -> None:
    table = """
        Access:<support@example.com> = bob@example.com
        Mail:<support@example.com> = staff@example.com
        """
    router = compile_router(site, table, TABLE_YAML)
    local("bob@example.com", steps=[*cgr(1), T_BOB]).check(
        router.route("support@example.com", "access")
    )
    Expect("LIST", "staff@example.com", "staff@example.com", steps=[*cgr(2), T_STAFF]).check(
        router.route("support@example.com", "mail")
    )


@pytest.mark.parametrize(
    ("table", "relayable"),
    [
        pytest.param("Relay: <jim@example.com> = jim@home.example", True, id="relay-prefix"),
        pytest.param(
            "Relay:Mail: <jim@example.com> = jim@home.example", True, id="relay-mail-prefix"
        ),
        pytest.param("<jim@example.com> = jim@home.example", False, id="no-prefix"),
        pytest.param("Mail: <jim@example.com> = jim@home.example", False, id="mail-prefix-only"),
    ],
)
def test_relay_prefix_marks_result_relayable(site: Path, table: str, relayable: bool) -> None:
    router = compile_router(site, table)
    routing = router.route("jim@example.com")
    smtp("home.example", "jim@home.example", relayable=relayable).check(routing)
    assert [step.relay for step in routing.steps] == [relayable, False]


def test_relay_prefix_marks_a_pipe_relayable(site: Path) -> None:
    router = compile_router(site, 'Relay: <spam@example.com> = "spam-report"@pipe', TABLE_YAML)
    Expect("PIPE", "spam-report", '"spam-report"@pipe', relayable=True).check(
        router.route("spam@example.com")
    )


# --------------------------------------------------------------------------- first match, restart


@pytest.mark.parametrize(
    ("table", "address", "reason", "line"),
    [
        pytest.param(
            '<*@first.example> = error "star"\n<vip@first.example> = error "exact"',
            "vip@first.example",
            "star",
            1,
            id="star-above-exact",
        ),
        pytest.param(
            '<vip@first.example> = error "exact"\n<*@first.example> = error "star"',
            "vip@first.example",
            "exact",
            1,
            id="exact-above-star",
        ),
        pytest.param(
            '<vip@first.example> = error "exact"\n<*@first.example> = error "star"',
            "other@first.example",
            "star",
            2,
            id="exact-does-not-match-falls-through",
        ),
        pytest.param(
            '*@*.example = error "generic"\n<u@a.example> = error "exact"',
            "u@a.example",
            "generic",
            1,
            id="generic-above-exact",
        ),
        pytest.param(
            '<u@a.example> = error "exact"\n<*@*> = error "generic"',
            "u@a.example",
            "exact",
            1,
            id="exact-above-generic",
        ),
        pytest.param(
            '*.example = error "suffix"\na.example = error "domain"',
            "u@a.example",
            "suffix",
            1,
            id="suffix-above-domain",
        ),
        pytest.param(
            'a.example = error "domain"\n*.example = error "suffix"',
            "u@a.example",
            "domain",
            1,
            id="domain-above-suffix",
        ),
        pytest.param(
            '*.a.example = error "long suffix"\n*.example = error "short suffix"',
            "u@x.a.example",
            "long suffix",
            1,
            id="longer-suffix-above",
        ),
        pytest.param(
            '*.example = error "short suffix"\n*.a.example = error "long suffix"',
            "u@x.a.example",
            "short suffix",
            1,
            id="shorter-suffix-above",
        ),
        pytest.param(
            'Access: *@* = error "access only"\n<u@a.example> = error "exact"',
            "u@a.example",
            "exact",
            2,
            id="earlier-record-of-other-kind-skipped",
        ),
    ],
)
def test_first_match_from_the_top(
    site: Path, table: str, address: str, reason: str, line: int
) -> None:
    router = compile_router(site, table)
    error("5.7.1", reason, steps=cgr(line)).check(router.route(address))


def test_rewrite_restarts_from_the_top(site: Path) -> None:
    table = """
        <b@x.example> = alice@example.com
        <a@x.example> = b@x.example
        """
    router = compile_router(site, table)
    routing = router.route("a@x.example")
    local("alice@example.com", steps=[*cgr(2, 1), BASE_ALICE]).check(routing)
    assert [(s.before, s.after) for s in routing.steps] == [
        ("a@x.example", "b@x.example"),
        ("b@x.example", "alice@example.com"),
        ("alice@example.com", "alice@example.com"),
    ]


def test_table_is_consulted_after_a_builtin_rewrite(site: Path) -> None:
    """A domain alias is a rewrite: the new address goes through the table from the top."""
    table = '<alice@example.com> = error "after the alias"'
    router = compile_router(site, table, TABLE_YAML)
    routing = router.route("alice@example.org")
    error("5.7.1", "after the alias", steps=[T_DOMAIN, *cgr(1)]).check(routing)
    assert routing.steps[0].what == "domain alias example.org of example.com"


# --------------------------------------------------------------------------- case


@pytest.mark.parametrize(
    ("table", "address", "expect"),
    [
        pytest.param(
            "<*@Star.Example> = *@new.example",
            "MiXed@STAR.example",
            smtp("new.example", "MiXed@new.example"),
            id="upper-case-picture-lower-address",
        ),
        pytest.param(
            "<SALES-*@Example.COM> = *@sales.example",
            "sales-Europe@example.com",
            smtp("sales.example", "Europe@sales.example"),
            id="capture-keeps-spelling",
        ),
        pytest.param(
            "<sales-*@example.com> = *@sales.example",
            "SALES-Europe@EXAMPLE.COM",
            smtp("sales.example", "Europe@sales.example"),
            id="upper-case-address",
        ),
        pytest.param(
            '<Carol@Example.com> = error "gone"',
            "cAROL@example.COM",
            error("5.7.1", "gone"),
            id="exact-ignores-case",
        ),
        pytest.param(
            'Old.Example = error "gone"',
            "u@OLD.example.",
            error("5.7.1", "gone"),
            id="domain-record-ignores-case-and-final-dot",
        ),
        pytest.param(
            "<*@old.example> = new.example",
            "Jane.DOE@Old.Example",
            smtp("new.example", "Jane.DOE@new.example"),
            id="domain-replacement-keeps-local-spelling",
        ),
    ],
)
def test_matching_ignores_case_and_keeps_spelling(
    site: Path, table: str, address: str, expect: Expect
) -> None:
    router = compile_router(site, table)
    expect.check(router.route(address))


# --------------------------------------------------------------------------- loops


def loop_router(site: Path, table: str, yaml: str = BASE_YAML) -> Router:
    """A router with a table the compiler refuses, put into a plan that compiled."""
    plan = compile_plan(site / "good", "", yaml)
    return Router(replace(plan, routes=unchecked_routes(site / "looping", table, yaml)))


def test_compiler_refuses_a_loop(site: Path) -> None:
    _write_site(
        site, dedent("<a@x.example> = b@x.example\n<b@x.example> = a@x.example\n"), BASE_YAML
    )
    unit = compile_site(site)
    assert unit.plan is None
    assert "MP301" in {d.code for d in unit.diagnostics}


@pytest.mark.parametrize(
    ("table", "address", "reason", "steps"),
    [
        pytest.param(
            "<a@x.example> = b@x.example\n<b@x.example> = a@x.example",
            "a@x.example",
            "routing loop: a@x.example -> b@x.example -> a@x.example",
            cgr(1, 2),
            id="two-record-cycle",
        ),
        pytest.param(
            "<a@x.example> = b@x.example\n<b@x.example> = c@x.example\n<c@x.example> = b@x.example",
            "a@x.example",
            "routing loop: b@x.example -> c@x.example -> b@x.example",
            cgr(1, 2, 3),
            id="cycle-after-a-lead-in",
        ),
        pytest.param(
            "<loop@x.example> = LOOP@x.example",
            "loop@x.example",
            "routing loop: loop@x.example -> loop@x.example",
            cgr(1),
            id="back-to-itself-in-other-case",
        ),
        pytest.param(
            "<u@example.com> = u@example.org",
            "u@example.com",
            "routing loop: u@example.com -> u@example.org -> u@example.com",
            [*cgr(1), T_DOMAIN],
            id="cycle-through-domain-alias",
        ),
    ],
)
def test_cycle_is_a_routing_loop(
    site: Path, table: str, address: str, reason: str, steps: list[str]
) -> None:
    router = loop_router(site, table, TABLE_YAML)
    error("5.4.6", reason, steps=steps).check(router.route(address))


def test_unbounded_rewriting_is_a_routing_loop(site: Path) -> None:
    router = loop_router(site, "<*@grow.example> = x*@grow.example")
    routing = router.route("a@grow.example")
    error("5.4.6").check(routing)
    assert routing.reason is not None
    assert routing.reason.startswith(f"routing loop: more than {MAX_REWRITES} rewrites: ")
    # The exact count at the limit is test_exactly_sixteen_rewrites_are_routed's business.
    assert MAX_REWRITES <= len(routing.steps) <= MAX_REWRITES + 1
    assert routing.steps[-1].after == "x" * len(routing.steps) + "a@grow.example"


def chain_table(rewrites: int) -> str:
    """A table that rewrites a0@x.example `rewrites` times, the last time to alice."""
    lines = [f"<a{i}@x.example> = a{i + 1}@x.example" for i in range(rewrites - 1)]
    lines.append(f"<a{rewrites - 1}@x.example> = alice@example.com")
    return "\n".join(lines)


@pytest.mark.parametrize("rewrites", [1, MAX_REWRITES - 1], ids=lambda n: f"{n}-rewrites")
def test_rewrites_up_to_the_limit_are_routed(site: Path, rewrites: int) -> None:
    router = loop_router(site, chain_table(rewrites))
    routing = router.route("a0@x.example")
    local("alice@example.com", steps=[*cgr(*range(1, rewrites + 1)), BASE_ALICE]).check(routing)


def test_exactly_sixteen_rewrites_are_routed(site: Path) -> None:
    router = loop_router(site, chain_table(MAX_REWRITES))
    routing = router.route("a0@x.example")
    local("alice@example.com").check(routing)
    assert len(routing.steps) == MAX_REWRITES + 1


@pytest.mark.parametrize(
    "rewrites", [MAX_REWRITES + 1, MAX_REWRITES + 5], ids=lambda n: f"{n}-rewrites"
)
def test_more_than_sixteen_rewrites_are_a_loop(site: Path, rewrites: int) -> None:
    router = loop_router(site, chain_table(rewrites))
    routing = router.route("a0@x.example")
    error("5.4.6").check(routing)
    assert routing.reason is not None
    assert routing.reason.startswith(
        f"routing loop: more than {MAX_REWRITES} rewrites: a0@x.example -> a1@x.example -> ... -> "
    )


# --------------------------------------------------------------------------- built-in routing


@dataclass(frozen=True)
class BuiltinCase:
    id: str
    address: str
    expect: Expect
    kind: Kind = "mail"


BUILTIN = [
    # 1. hosted domain
    BuiltinCase("account", "alice@example.com", local("alice@example.com", steps=[B_ALICE])),
    BuiltinCase("account-any-case", "ALICE@Example.COM", local("alice@example.com")),
    BuiltinCase("name-without-domain-is-main-domain", "alice", local("alice@example.com")),
    BuiltinCase("angle-brackets", "<alice@example.com>", local("alice@example.com")),
    BuiltinCase(
        "account-alias",
        "Ally@example.com",
        local("alice@example.com", steps=[B_ALICE, B_ALICE]),
    ),
    BuiltinCase(
        "forwarder-relayable",
        "info@example.com",
        smtp("example.net", "sales@example.net", relayable=True, steps=[B_INFO, "built-in"]),
    ),
    BuiltinCase(
        "mailing-list",
        "staff@example.com",
        Expect("LIST", "staff@example.com", "staff@example.com", steps=[B_STAFF]),
    ),
    BuiltinCase(
        "unknown-reject-default",
        "nobody@example.com",
        error("5.1.1", "unknown user nobody@example.com", steps=[B_DOMAIN]),
    ),
    BuiltinCase(
        "unknown-reject-other-domain",
        "nobody@reject.example",
        error("5.1.1", "unknown user nobody@reject.example"),
    ),
    BuiltinCase("unknown-discard", "x@discard.example", Expect("DISCARD", steps=[B_DISCARD])),
    BuiltinCase(
        "unknown-route-percent-via-host",
        "Jane@moved.example",
        smtp(
            "old-server.example",
            "Jane@moved.example",
            relayable=True,
            steps=[B_MOVED, "built-in"],
        ),
    ),
    BuiltinCase(
        "unknown-route-into-hosted-domain",
        "alice@catch.example",
        local("alice@example.com", relayable=True, steps=[B_CATCH, B_ALICE]),
    ),
    BuiltinCase(
        "unknown-route-ip-literal",
        "jane@literal.example",
        smtp("[192.0.2.50]", "jane@literal.example", relayable=True),
    ),
    BuiltinCase(
        "percent-hack-in-hosted-domain",
        "x%other.example@example.com",
        smtp("other.example", "x@other.example", steps=["built-in", "built-in"]),
    ),
    BuiltinCase(
        "percent-hack-to-hosted-account",
        "alice%example.com@reject.example",
        local("alice@example.com", steps=["built-in", B_ALICE]),
    ),
    BuiltinCase(
        "percent-hack-last-percent",
        "x%y%z.example@example.com",
        smtp("z.example", "x%y@z.example"),
    ),
    # 2. domain alias
    BuiltinCase(
        "domain-alias-account",
        "alice@example.org",
        local("alice@example.com", steps=[B_DOMAIN, B_ALICE]),
    ),
    BuiltinCase(
        "domain-alias-account-alias",
        "ally@EXAMPLE.org",
        local("alice@example.com", steps=[B_DOMAIN, B_ALICE, B_ALICE]),
    ),
    BuiltinCase(
        "domain-alias-forwarder",
        "info@example.org",
        smtp("example.net", "sales@example.net", relayable=True),
    ),
    # 3. IP literals
    BuiltinCase(
        "own-address-from-site",
        "alice@[192.0.2.10]",
        local("alice@example.com", steps=["built-in", B_ALICE]),
    ),
    BuiltinCase(
        "own-ipv6-address-from-site", "alice@[IPv6:2001:db8::10]", local("alice@example.com")
    ),
    BuiltinCase("own-loopback", "alice@[127.0.0.1]", local("alice@example.com")),
    BuiltinCase("own-ipv6-loopback", "alice@[IPv6:::1]", local("alice@example.com")),
    BuiltinCase("own-any-address", "alice@[0.0.0.0]", local("alice@example.com")),
    BuiltinCase("own-bare-address", "alice@127.0.0.1", local("alice@example.com")),
    BuiltinCase(
        "own-literal-percent-to-other-domain",
        "x%other.example@[127.0.0.1]",
        smtp("other.example", "x@other.example", steps=["built-in", "built-in"]),
    ),
    BuiltinCase(
        "own-literal-percent-x-at-y",
        "x%y@[127.0.0.1]",
        error("5.1.2", "unroutable domain: y", steps=["built-in", "built-in"]),
    ),
    BuiltinCase(
        "own-literal-percent-to-account",
        "alice%example.com@[192.0.2.10]",
        local("alice@example.com"),
    ),
    BuiltinCase(
        "own-literal-unknown-name-at-main-domain",
        "nobody@[127.0.0.1]",
        error("5.1.1", "unknown user nobody@example.com"),
    ),
    BuiltinCase(
        "foreign-ip-literal",
        "user@[192.0.2.99]",
        smtp("[192.0.2.99]", "user@[192.0.2.99]", steps=["built-in"]),
    ),
    BuiltinCase(
        "foreign-ip-literal-percent",
        "x%dest.example@[192.0.2.99]",
        smtp("[192.0.2.99]", "x@dest.example", steps=["built-in"]),
    ),
    BuiltinCase(
        "foreign-bare-ip",
        "user@192.0.2.99",
        smtp("[192.0.2.99]", "user@[192.0.2.99]"),
    ),
    BuiltinCase(
        "foreign-ipv6-literal",
        "user@[IPv6:2001:db8::99]",
        smtp("[IPv6:2001:db8::99]", "user@[IPv6:2001:db8::99]"),
    ),
    # 4. pipe
    BuiltinCase(
        "pipe-domain-from-client",
        "spam-report@pipe",
        error(
            "5.7.1", "pipe addresses are accepted only from the routing table", steps=["built-in"]
        ),
    ),
    BuiltinCase(
        "quoted-pipe-from-client",
        '"spam-report"@pipe',
        error("5.7.1", "pipe addresses are accepted only from the routing table"),
    ),
    # 5. module suffixes written by the client
    BuiltinCase(
        "via-suffix-with-percent",
        "u%dest.example@relay.example._via",
        smtp("relay.example", "u@dest.example", steps=["built-in"]),
    ),
    BuiltinCase(
        "via-suffix-without-percent",
        "u@relay.example._via",
        smtp("relay.example", "u@relay.example"),
    ),
    BuiltinCase(
        "via-suffix-ip-literal",
        "u%dest.example@[192.0.2.77]._via",
        smtp("[192.0.2.77]", "u@dest.example"),
    ),
    BuiltinCase(
        "smtp-suffix-hosted-domain",
        "alice@example.com.smtp",
        smtp("example.com", "alice@example.com", steps=["built-in"]),
    ),
    BuiltinCase(
        "local-suffix-account",
        "Alice@example.com.local",
        local("alice@example.com", steps=[B_ALICE]),
    ),
    BuiltinCase(
        "local-suffix-domain-alias",
        "alice@example.org.local",
        local("alice@example.com"),
    ),
    BuiltinCase(
        "local-suffix-bypasses-alias",
        "ally@example.com.local",
        error("5.1.1", "no such account: ally@example.com"),
    ),
    BuiltinCase(
        "local-suffix-bypasses-forwarder",
        "info@example.com.local",
        error("5.1.1", "no such account: info@example.com"),
    ),
    BuiltinCase(
        "local-suffix-not-a-list",
        "staff@example.com.local",
        error("5.1.1", "no such account: staff@example.com"),
    ),
    BuiltinCase(
        "list-suffix",
        "staff@example.com.list",
        Expect("LIST", "staff@example.com", "staff@example.com", steps=[B_STAFF]),
    ),
    BuiltinCase(
        "list-suffix-not-an-account",
        "alice@example.com.list",
        error("5.1.1", "no such list: alice@example.com"),
    ),
    BuiltinCase(
        "local-suffix-unhosted-domain",
        "u@elsewhere.example.local",
        error("5.1.1", "no such account: u@elsewhere.example"),
    ),
    # 6. other domains
    BuiltinCase(
        "other-domain-smtp-not-relayable",
        "someone@Elsewhere.Example",
        smtp("elsewhere.example", "someone@elsewhere.example", relayable=False, steps=["built-in"]),
    ),
    BuiltinCase(
        "other-domain-keeps-local-spelling",
        "Some.One@elsewhere.example",
        smtp("elsewhere.example", "Some.One@elsewhere.example"),
    ),
    BuiltinCase(
        "source-routed-bang-to-other-hop",
        "hop.example!other.example!user",
        smtp("hop.example", "user%other.example@hop.example"),
    ),
    BuiltinCase(
        "source-routed-angle-to-other-hop",
        "<@hop.example:user@other.example>",
        smtp("hop.example", "user%other.example@hop.example"),
    ),
    BuiltinCase(
        "source-routed-through-this-server",
        "<@example.com:user@other.example>",
        smtp("other.example", "user@other.example", steps=["built-in", "built-in"]),
    ),
    # 7. no dot
    BuiltinCase(
        "dotless-domain",
        "someone@localhost",
        error("5.1.2", "unroutable domain: localhost", steps=["built-in"]),
    ),
    # empty parts
    BuiltinCase(
        "empty-local-part",
        "@example.com",
        error("5.1.3", "bad address: @example.com", steps=["built-in"]),
    ),
    BuiltinCase("empty-domain", "user@", error("5.1.3")),
    BuiltinCase("empty-address", "<>", error("5.1.3")),
    BuiltinCase("empty-local-part-at-literal", "@[192.0.2.99]", error("5.1.3")),
    pytest.param(
        BuiltinCase("empty-local-part-at-ipv6-literal", "@[IPv6:2001:db8::99]", error("5.1.3")),
        id="empty-local-part-at-ipv6-literal",
    ),
    # implicit postmaster
    BuiltinCase(
        "implicit-postmaster",
        "postmaster@example.com",
        local("postmaster@example.com", steps=[B_DOMAIN]),
    ),
    BuiltinCase(
        "implicit-postmaster-any-case", "PostMaster@example.com", local("postmaster@example.com")
    ),
    BuiltinCase("implicit-postmaster-bare", "postmaster", local("postmaster@example.com")),
    BuiltinCase(
        "implicit-postmaster-domain-alias",
        "postmaster@example.org",
        local("postmaster@example.com"),
    ),
    BuiltinCase(
        "no-implicit-postmaster-outside-main-domain",
        "postmaster@reject.example",
        error("5.1.1", "unknown user postmaster@reject.example"),
    ),
    # login names reach accounts only
    BuiltinCase("access-account", "alice@example.com", local("alice@example.com"), "access"),
    BuiltinCase("access-account-alias", "ally@example.com", local("alice@example.com"), "access"),
    BuiltinCase(
        "access-percent-login",
        "alice%example.com",
        local("alice@example.com", steps=["built-in", B_ALICE]),
        "access",
    ),
    BuiltinCase(
        "access-refuses-forwarder",
        "info@example.com",
        error("5.1.1", "info@example.com is a forwarder, not an account", steps=[B_INFO]),
        "access",
    ),
    BuiltinCase(
        "access-refuses-list",
        "staff@example.com",
        error("5.1.1", "staff@example.com is a list, not an account", steps=[B_STAFF]),
        "access",
    ),
    BuiltinCase(
        "access-refuses-unknown",
        "nobody@example.com",
        error("5.1.1", "unknown user nobody@example.com"),
        "access",
    ),
    BuiltinCase(
        "access-refuses-unknown-discard",
        "nobody@discard.example",
        error("5.1.1", "unknown user nobody@discard.example"),
        "access",
    ),
    BuiltinCase(
        "access-refuses-unknown-route",
        "nobody@moved.example",
        error("5.1.1", "unknown user nobody@moved.example", steps=[B_MOVED]),
        "access",
    ),
    # signal targets route as mail does
    BuiltinCase(
        "signal-forwarder",
        "info@example.com",
        smtp("example.net", "sales@example.net", relayable=True),
        "signal",
    ),
    BuiltinCase(
        "signal-list",
        "staff@example.com",
        Expect("LIST", "staff@example.com", "staff@example.com"),
        "signal",
    ),
]


@pytest.fixture(scope="module")
def builtin_router(tmp_path_factory: pytest.TempPathFactory) -> Router:
    return compile_router(tmp_path_factory.mktemp("builtin"), "", BUILTIN_YAML)


def _id(case: object) -> str:
    return case.id if isinstance(case, BuiltinCase) else ""


@pytest.mark.parametrize("case", BUILTIN, ids=_id)
def test_builtin(builtin_router: Router, case: BuiltinCase) -> None:
    case.expect.check(builtin_router.route(case.address, case.kind))


def test_forwarder_step(builtin_router: Router) -> None:
    routing = builtin_router.route("info@example.com")
    forwarder, smtp_step = routing.steps
    assert forwarder.what == "forwarder info@example.com = sales@example.net"
    assert (forwarder.before, forwarder.after, forwarder.relay) == (
        "info@example.com",
        "sales@example.net",
        True,
    )
    assert smtp_step.what == "example.net is not hosted here"
    assert smtp_step.relay is False


def test_unknown_route_goes_through_via(builtin_router: Router) -> None:
    routing = builtin_router.route("Jane@moved.example")
    route, via = routing.steps
    assert route.after == "Jane%moved.example@old-server.example._via"
    assert route.relay is True
    assert via.what == "module suffix ._via"


def test_domain_alias_step(builtin_router: Router) -> None:
    step = builtin_router.route("alice@example.org").steps[0]
    assert step.what == "domain alias example.org of example.com"
    assert (step.before, step.after) == ("alice@example.org", "alice@example.com")


def test_own_literal_step(builtin_router: Router) -> None:
    step = builtin_router.route("x%y@[127.0.0.1]").steps[0]
    assert step.what == "[127.0.0.1] is this server"
    assert (step.before, step.after) == ("x%y@[127.0.0.1]", "x@y")


def test_builtin_order_hosted_domain_before_suffix(tmp_path: Path) -> None:
    """A hosted domain that ends like a module suffix is hosted (rule 1 before rule 5)."""
    yaml = """\
server: {hostname: mail.example.com, main_domain: example.com}
domains:
  example.com: {accounts: {alice: {}}}
  corp.local: {accounts: {carol: {}}}
routing: router.cgr
"""
    router = compile_router(tmp_path, "", yaml)
    local("carol@corp.local").check(router.route("carol@corp.local"))


def test_named_postmaster_is_not_replaced(tmp_path: Path) -> None:
    yaml = """\
server: {hostname: mail.example.com, main_domain: example.com}
domains:
  example.com:
    accounts: {alice: {}}
    forwarders: {postmaster: admin@example.net}
routing: router.cgr
"""
    router = compile_router(tmp_path, "", yaml)
    smtp("example.net", "admin@example.net", relayable=True).check(
        router.route("postmaster@example.com")
    )


def test_postmaster_as_account_alias(tmp_path: Path) -> None:
    yaml = """\
server: {hostname: mail.example.com, main_domain: example.com}
domains:
  example.com: {accounts: {alice: {aliases: [postmaster]}}}
routing: router.cgr
"""
    router = compile_router(tmp_path, "", yaml)
    local("alice@example.com").check(router.route("postmaster@example.com"))


@pytest.mark.parametrize("written", ["2001:DB8::10", "2001:db8:0:0:0:0:0:10"])
def test_own_address_written_in_any_form(tmp_path: Path, written: str) -> None:
    yaml = f"""\
server:
  hostname: mail.example.com
  main_domain: example.com
  addresses: ["{written}"]
domains: {{example.com: {{accounts: {{alice: {{}}}}}}}}
routing: router.cgr
"""
    router = compile_router(tmp_path, "", yaml)
    local("alice@example.com").check(router.route("alice@[IPv6:2001:db8::10]"))


def test_table_comes_before_builtin(tmp_path: Path) -> None:
    """The built-in rules apply only when no record matches."""
    table = """
        <alice@example.com> = error "the table first"
        [127.0.0.1] = error "no loopback"
        *@pipe = error "no pipes"
        """
    router = compile_router(tmp_path, table)
    error("5.7.1", "the table first").check(router.route("alice@example.com"))
    error("5.7.1", "no loopback").check(router.route("alice@[127.0.0.1]"))
    error("5.7.1", "no pipes").check(router.route("x@pipe"))


# --------------------------------------------------------------------------- RouteIndex


DOMAINS = [
    "a.example",
    "b.example",
    "sub.a.example",
    "x.sub.a.example",
    "a.example.net",
    "example.com",
    "[192.0.2.1]",
    "[192.0.2.2]",
]
PROBE_DOMAINS = [
    *DOMAINS,
    "c.example",
    "deep.x.sub.a.example",
    "a.example.org",
    "ba.example",
    "xa.example",
    "example",
    "xample",
    "a.xample",
]
LOCALS = ["u", "v", "uv", "u-1", "sales-eu", "sales-"]
PROBE_LOCALS = [*LOCALS, "U", "Sales-EU", "w", "u%a.example"]


def _random_left(rng: random.Random) -> str:
    domain = rng.choice(DOMAINS)
    name = rng.choice(LOCALS)
    literal = domain.startswith("[")
    forms: list[Callable[[], str]] = [
        lambda: f"<{name}@{domain}>",  # exact, angle
        lambda: f"{name}@{domain}",  # exact, bare
        lambda: f"<*@{domain}>",  # literal domain
        lambda: f"<{name[:1]}*@{domain}>",  # star in local part
        lambda: f"<sales-*@{domain}>",
        lambda: domain,  # domain record
        lambda: "<*@*>",  # generic
        lambda: f"<{name}@*>",  # generic
        lambda: "*@*.example",  # generic local, suffix domain
        lambda: "*",  # every domain
    ]
    if not literal:
        forms += [
            lambda: f"*.{domain}",  # subdomains
            lambda: f"*{domain}",  # suffix without a dot
            lambda: f"<*@*.{domain}>",
            lambda: f"<{name}@*.{domain}>",
            lambda: f"{domain.split('.')[0]}.*",  # domain ending in *
            lambda: f"<*@{domain.split('.')[0]}.*>",
            lambda: f"<*@*{domain[1:]}>",
            lambda: f"*{domain.rpartition('.')[2][1:]}",  # a suffix inside the last label
            lambda: f"<*@*{domain.rpartition('.')[2][2:]}>",
        ]
    return rng.choice(forms)()


def _random_table(rng: random.Random, size: int) -> str:
    prefixes = ["", "", "", "Mail: ", "Access: ", "Signal: ", "Mail:Signal: ", "Access:Signal: "]
    return "\n".join(
        f'{rng.choice(prefixes)}{_random_left(rng)} = error "record {n}"'
        for n in range(1, size + 1)
    )


def naive_first(
    routes: tuple[Route, ...], text: str, kind: Kind
) -> tuple[int, tuple[str, ...]] | None:
    """The first record from the top that matches, tried one by one."""
    address = parse(text, "example.com")
    for i, route in enumerate(routes):
        if kind not in route.kinds:
            continue
        subject = str(address) if route.left.kind == "address" else address.domain
        captures = Picture.of(route.left.picture).match(subject)
        if captures is not None:
            return i, captures
    return None


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_route_index_agrees_with_naive_scan(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    plan = compile_plan(tmp_path, _random_table(rng, 300))
    routes = plan.routes
    assert len(routes) == 300
    index = RouteIndex(routes)
    forms = {route.left.kind for route in routes}
    assert forms == {"address", "domain"}
    router = Router(plan)
    probes = [f"{name}@{domain}" for name in PROBE_LOCALS for domain in PROBE_DOMAINS]
    matched = 0
    for text in probes:
        address = parse(text, "example.com")
        expected_matching = {
            i
            for i, route in enumerate(routes)
            if Picture.of(route.left.picture).match(
                str(address) if route.left.kind == "address" else address.domain
            )
            is not None
        }
        assert set(index.matching(address)) == expected_matching, text
        for below in (0, 1, 37, 150, 299, 300):
            above = {i for i in expected_matching if i < below}
            assert set(index.matching(address, below)) == above, (text, below)
        for kind in KINDS:
            expected = naive_first(routes, text, kind)
            assert index.first(address, kind) == expected, (text, kind)
            routing = router.route(text, kind)
            if expected is None:
                first = routing.steps[0].source
                assert first is None or first.file != "router.cgr", (text, kind)
            else:
                matched += 1
                i, _ = expected
                assert routing.steps[0].source == routes[i].source, (text, kind)
                assert routing.reason == routes[i].right.message
    assert matched > len(probes)  # the table is dense enough to mean something


def test_route_index_with_hand_built_routes() -> None:
    """Many literal-domain and suffix records, a few generic ones, built as plan objects."""
    rng = random.Random(20240611)
    domains = [f"d{n}.example" for n in range(60)]

    generic = [("address", "*@*"), ("domain", "*"), ("address", "u@*"), ("domain", "d1*")]
    # A few generic records, low in the table so that the indexed ones still win often.
    generic_at = set(rng.sample(range(300, 3000), 12))

    def picture(n: int) -> tuple[str, str]:
        domain = rng.choice(domains)
        if n in generic_at:
            return rng.choice(generic)
        return rng.choice(
            [
                ("address", f"u@{domain}"),
                ("address", f"*@{domain}"),
                ("address", f"v*@{domain}"),
                ("domain", domain),
                ("domain", f"*.{domain}"),
                ("domain", f"*{domain}"),
                ("address", f"*@*.{domain}"),
            ]
        )

    routes = []
    for n in range(3000):
        kind, left = picture(n)
        kinds = rng.choice([KINDS, KINDS, ("mail",), ("access",), ("signal",), ("mail", "signal")])
        routes.append(
            Route(
                source=Source("router.cgr", n + 1, 1),
                right_source=Source("router.cgr", n + 1, len(left) + 4),
                text=f"{left} = error",
                relay=False,
                kinds=kinds,
                left=Pattern(kind, left),  # type: ignore[arg-type]
                right=Target("error", "error", f"record {n + 1}"),
                open_relay_acknowledged=None,
            )
        )
    table = tuple(routes)
    index = RouteIndex(table)
    locals_ = ["u", "U", "v", "vv", "w"]
    hosts = ["", "x.", "a.b."]
    found = set()
    for _ in range(1500):
        domain = rng.choice([*domains, "d1x.example", "other.example"])
        text = f"{rng.choice(locals_)}@{rng.choice(hosts)}{domain}"
        address = parse(text, "example.com")
        for kind in KINDS:
            expected = naive_first(table, text, kind)
            assert index.first(address, kind) == expected, (text, kind)
            if expected is not None:
                found.add(expected[0])
    assert len(found) > 100  # many different records won, not only the first few
    assert found & {n for n in generic_at}  # and some generic ones


# --------------------------------------------------------------------------- UTF-8

IDN_YAML = """\
server: {hostname: mail.example.com, main_domain: example.com}
domains:
  example.com:
    aliases: [straße.example]
    accounts:
      jörg: {aliases: [ζωή]}
      "CHLOE\u0301": {}
    forwarders:
      grüße: hello@xn--mnchen-3ya.example
  xn--bcher-kva.example:
    accounts: {jürgen: {}}
  münchen.example:
    accounts: {hello: {}}
routing: router.cgr
"""


@pytest.mark.parametrize(
    ("address", "queue"),
    [
        pytest.param("jörg@example.com", "jörg@example.com", id="utf8-account"),
        pytest.param("JÖRG@example.com", "jörg@example.com", id="upper-case"),
        pytest.param("jo\u0308rg@example.com", "jörg@example.com", id="nfd-spelling"),
        pytest.param("ζωή@example.com", "jörg@example.com", id="utf8-alias"),
        pytest.param("chloé@example.com", "chloé@example.com", id="nfd-account-name"),
        pytest.param("jörg@straße.example", "jörg@example.com", id="u-label-domain-alias"),
        pytest.param("jürgen@bücher.example", "jürgen@xn--bcher-kva.example", id="u-labels"),
        pytest.param("jürgen@xn--bcher-kva.example", "jürgen@xn--bcher-kva.example", id="a-labels"),
        pytest.param(
            "hello@MÜNCHEN.example", "hello@xn--mnchen-3ya.example", id="domain-written-in-u-labels"
        ),
        pytest.param("grüße@example.com", "hello@xn--mnchen-3ya.example", id="utf8-forwarder"),
    ],
)
def test_utf8_names_and_idn_domains(site: Path, address: str, queue: str) -> None:
    routing = compile_router(site, yaml=IDN_YAML).route(address)
    assert (routing.module, routing.queue) == ("LOCAL", queue)


def test_idn_domain_not_hosted_goes_to_smtp_in_a_labels(site: Path) -> None:
    routing = compile_router(site, yaml=IDN_YAML).route("jörg@bücher.test")
    assert (routing.module, routing.queue, routing.target) == (
        "SMTP",
        "xn--bcher-kva.test",
        "jörg@xn--bcher-kva.test",
    )


def test_bad_idn_domain_is_refused(site: Path) -> None:
    routing = compile_router(site, yaml=IDN_YAML).route("jörg@bü_cher.test")
    assert (routing.module, routing.status, routing.reason) == (
        "ERROR",
        "5.1.3",
        "not a valid internationalized domain name: bü_cher.test",
    )


def test_table_records_in_u_labels_match_either_spelling(site: Path) -> None:
    table = """
        <*@alt.bücher.example> = *@bücher.example
        *.münchen.example = example.com
    """
    router = compile_router(site, table, IDN_YAML)
    assert router.route("jürgen@alt.xn--bcher-kva.example").queue == "jürgen@xn--bcher-kva.example"
    assert router.route("JÖRG@mail.MÜNCHEN.example").queue == "jörg@example.com"


def test_local_part_that_was_not_utf8_is_refused(site: Path) -> None:
    """Bytes that were not UTF-8 reach the router surrogate-escaped (a command line)."""
    routing = compile_router(site, yaml=IDN_YAML).route(
        b"j\xf6rg@example.com".decode(errors="surrogateescape")
    )
    assert (routing.module, routing.status, routing.reason) == (
        "ERROR",
        "5.1.3",
        "bad address: the local part is not valid UTF-8",
    )
