"""The plan's JSON form: canonical, reproducible, schema-checked and digest-checked."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from serverkit import as_root, mailplan

from mailplan.cli import main
from mailplan.compiler.pipeline import compile_site
from mailplan.plan import codec, trusted
from mailplan.plan.model import FORMAT, AddressList, Interval, IPAddress, Plan, Source
from mailplan.runtime.decide.addresslist import AddressSet
from tests.conftest import EXAMPLE, resealed


def _plan(site: Path = EXAMPLE) -> Plan:
    unit = compile_site(site)
    assert unit.plan is not None, unit.diagnostics
    return unit.plan


def test_building_twice_gives_identical_bytes() -> None:
    assert codec.dumps(_plan()) == codec.dumps(_plan())


def test_a_copy_in_another_folder_gives_identical_bytes(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "site"
    shutil.copytree(EXAMPLE, copy)
    assert codec.dumps(_plan(copy)) == codec.dumps(_plan())


def test_plan_file_is_canonical_json_with_format_and_digest() -> None:
    plan = _plan()
    document = json.loads(codec.dumps(plan))
    assert document["format"] == FORMAT
    assert document["digest"] == codec.digest(plan)
    assert document["digest"].startswith("sha256:") and len(document["digest"]) == 71
    assert list(document) == sorted(document)
    assert (
        codec.dumps(plan)
        == json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    )


def test_sources_table_hashes_every_file_of_the_site() -> None:
    plan = _plan()
    sources = {s.path: s.sha256 for s in plan.sources}
    assert list(sources) == [
        "dkim/ed2026.example.com.pub",
        "dkim/mail2026.example.com.pub",
        "router.cgr",
        "rules/alice.rules",
        "rules/example.com.rules",
        "rules/recipient.rules",
        "rules/server.rules",
        "site.yaml",
    ]
    text = (EXAMPLE / "router.cgr").read_bytes()
    assert sources["router.cgr"] == hashlib.sha256(text).hexdigest()


def test_round_trip_gives_the_same_plan() -> None:
    plan = _plan()
    assert codec.loads(codec.dumps(plan)) == plan


def test_a_built_plan_file_takes_the_fast_path() -> None:
    plan = _plan()
    assert codec._trusted(codec.dumps(plan)) == plan


def _signed(document: dict[str, object], indent: int | None = 1) -> str:
    """A plan file whose digest is that of the plan the document holds (as a builder that
    skips mailplan would write it)."""
    return json.dumps(document, sort_keys=True, indent=indent, ensure_ascii=False) + "\n"


def test_the_fast_path_leaves_every_other_file_to_the_full_check() -> None:
    plan = _plan()
    text = codec.dumps(plan)
    document = json.loads(text)
    unknown = document | {"extra": 1}  # its digest is still the plan's
    assert codec._trusted(_signed(unknown)) is None
    with pytest.raises(codec.PlanError, match="Additional properties are not allowed"):
        codec.loads(_signed(unknown))
    deeper = json.loads(text)
    deeper["limits"]["extra"] = 1
    assert codec._trusted(_signed(deeper)) is None
    with pytest.raises(codec.PlanError, match="Additional properties are not allowed"):
        codec.loads(_signed(deeper))
    other_layout = _signed(document, indent=2)  # the same plan, laid out otherwise
    assert codec._trusted(other_layout) == plan
    twice = text.replace('{\n "account_rules"', '{\n "format": 7,\n "account_rules"', 1)
    assert codec._trusted(twice) == plan == codec.loads(twice)  # the last one counts
    escaped = text.replace('"example.com"', '"example\\u002ecom"', 1)  # not canonical
    assert codec._trusted(escaped) is None and codec.loads(escaped) == plan


def test_the_digest_is_the_canonical_json_in_pieces() -> None:
    plan = _plan()
    assert b"".join(trusted.canonical_pieces(plan)) == codec.canonical(plan)
    assert codec.digest(plan) == "sha256:" + hashlib.sha256(codec.canonical(plan)).hexdigest()
    loaded = codec.loads(codec.dumps(plan))
    assert trusted.known_digest(loaded) == codec.digest(plan) == codec.digest(loaded)


def test_the_fast_path_refuses_long_numbers_as_the_full_check_does() -> None:
    document = json.loads(codec.dumps(_plan()))
    document["limits"]["max_recipients"] = 10**25
    del document["digest"]
    document["digest"] = "sha256:" + hashlib.sha256(codec.canonical(document)).hexdigest()
    text = _signed(document)
    assert codec._trusted(text) is None
    with pytest.raises(codec.PlanError, match="a number of more than 20 digits"):
        codec.loads(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@given(json_values)
def test_canonical_is_json_dumps_byte_for_byte(value: object) -> None:
    reference = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert codec.canonical(value) == reference.encode()


def test_an_edited_plan_is_refused_for_its_digest() -> None:
    document = json.loads(codec.dumps(_plan()))
    document["relaying"]["scope"] = "everybody"
    with pytest.raises(codec.PlanError) as caught:
        codec.loads(json.dumps(document), "plan.json")
    message = str(caught.value)
    assert message.startswith("plan.json: plan digest mismatch: the file says sha256:")
    assert message.endswith("the plan was edited after it was built")


def test_a_plan_off_its_schema_is_refused() -> None:
    document = json.loads(codec.dumps(_plan()))
    document["limits"]["max_recipients"] = "many"
    with pytest.raises(codec.PlanError) as caught:
        codec.loads(json.dumps(document), "plan.json")
    assert str(caught.value) == (
        "plan.json: plan does not match its schema: at limits/max_recipients: "
        "'many' is not of type 'integer'"
    )


def test_an_unknown_key_is_refused() -> None:
    document = json.loads(codec.dumps(_plan()))
    document["extra"] = 1
    with pytest.raises(codec.PlanError, match="Additional properties are not allowed"):
        codec.loads(json.dumps(document), "plan.json")


def test_another_format_is_refused() -> None:
    document = json.loads(codec.dumps(_plan()))
    document["format"] = FORMAT + 1
    with pytest.raises(codec.PlanError) as caught:
        codec.loads(json.dumps(document), "plan.json")
    assert str(caught.value) == (
        f"plan.json: plan format {FORMAT + 1} is not supported "
        f"(this mailplan reads format {FORMAT}); build the plan again"
    )


def test_not_json_is_refused() -> None:
    with pytest.raises(codec.PlanError, match=r"^plan.json: not JSON: "):
        codec.loads("{", "plan.json")


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(codec.PlanError, match="cannot read plan: No such file or directory"):
        codec.load(tmp_path / "missing.json")


def test_schema_is_draft_2020_12_and_closed() -> None:
    schema = codec.json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert "digest" in schema["required"]
    assert all(d["additionalProperties"] is False for d in schema["$defs"].values())


def test_the_plan_is_frozen() -> None:
    plan = _plan()
    with pytest.raises(AttributeError):
        plan.limits = plan.limits  # type: ignore[misc]
    assert isinstance(plan.domains, tuple)


def _keywords(schema: object) -> set[str]:
    if isinstance(schema, list):
        return set().union(*(_keywords(item) for item in schema))
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            found |= set().union(*(_keywords(v) for v in value.values()))
        elif key != "enum":
            found |= _keywords(value)
    return found


def test_plan_schema_keeps_to_keywords_both_validators_read_alike() -> None:
    assert _keywords(codec.json_schema()) <= codec.FAST_KEYWORDS


def test_fast_and_full_validation_agree_on_broken_plans() -> None:
    good = json.loads(codec.dumps(_plan()))
    breakages = [
        ("limits", "max_recipients", "x"),
        ("relaying", "scope", "anyone"),
        ("server", "hostname", None),
        ("queue", "retry", [1, "two"]),
    ]
    for section, key, value in breakages:
        broken = json.loads(json.dumps(good))
        broken[section][key] = value
        with pytest.raises(codec.PlanError, match=f"at {section}/{key}"):
            codec.loads(json.dumps(broken))


def _surrogate() -> str:
    text = codec.dumps(_plan())
    return text.replace('"example.com"', '"ex\\ud800ample.com"', 1)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (lambda: "9" * 5000, "a number of more than 20 digits"),
        (lambda: "[" * 100_000 + "]" * 100_000, "values nested too deeply"),
        (lambda: '{"a": ' * 100_000 + "1" + "}" * 100_000, "values nested too deeply"),
        (lambda: '{"format": NaN}', "NaN is not a JSON number"),
        (lambda: '{"format": -Infinity}', "-Infinity is not a JSON number"),
        (_surrogate, "a string that is not Unicode text (a lone surrogate escape)"),
        (
            lambda: codec.dumps(_plan()).replace(f'"format": {FORMAT}', '"format": 1' + "0" * 30),
            "a number of more than 20 digits",
        ),
    ],
    ids=["huge-number", "nested-lists", "nested-objects", "nan", "infinity", "surrogate", "digits"],
)
def test_what_is_not_a_plan_is_one_line(text: Callable[[], str], why: str) -> None:
    with pytest.raises(codec.PlanError) as caught:
        codec.loads(text(), "plan.json")
    assert str(caught.value) == f"plan.json: not a plan: {why}"


def test_a_plan_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_bytes(b'{"format": "\xff"}')
    with pytest.raises(codec.PlanError) as caught:
        codec.load(tmp_path / "plan.json")
    assert str(caught.value) == (
        f"{tmp_path}/plan.json: not a plan: not UTF-8 text (invalid start byte)"
    )


def _tampered(edit: Callable[[dict[str, Any]], None]) -> str:
    document = json.loads(codec.dumps(_plan()))
    edit(document)
    return resealed(document)


def _first_interval(document: dict[str, Any]) -> None:
    document["address_lists"][0]["ipv4"][0]["first"] = ""


def _test_client(document: dict[str, Any]) -> None:
    document["tests"][0]["client"] = "$GENERATE"


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (_first_interval, "at address_lists/0/ipv4/0/first: '' is not an IP address"),
        (_test_client, "at tests/0/client: '$GENERATE' is not an IP address"),
    ],
)
def test_a_resealed_plan_with_a_value_of_no_use_is_refused(
    edit: Callable[[dict[str, Any]], None],
    why: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A digest is no signature: a plan edited and sealed again passes it. What the schema
    cannot say (that a string is an IP address) is checked on loading too, so the server
    and every command refuse it in one line instead of failing when they use it."""
    with pytest.raises(codec.PlanError) as refused:
        codec.loads(_tampered(edit), "plan.json")
    assert str(refused.value) == f"plan.json: plan does not hold what it must: {why}"
    path = tmp_path / "plan.json"
    path.write_text(_tampered(edit))
    assert main(["route", "--plan", str(path), "bob@example.com"]) == 1
    assert capsys.readouterr().err == f"mailplan: {path}: plan does not hold what it must: {why}\n"


def test_serve_refuses_a_resealed_plan_with_a_value_of_no_use(tmp_path: Path) -> None:
    """`serve` loads its plan through the same loader: one line and exit 1, before it binds."""
    path = tmp_path / "plan.json"
    path.write_text(_tampered(_first_interval))
    done = mailplan("serve", "--plan", path, "--root", tmp_path, *as_root())
    assert done.returncode == 1
    assert done.stderr == (
        f"mailplan: cannot serve: {path}: plan does not hold what it must: "
        "at address_lists/0/ipv4/0/first: '' is not an IP address\n"
    )


@pytest.mark.parametrize(
    ("texts", "passes"),
    [
        (["192.0.2.1", "10.0.0.0", "255.255.255.255"], True),
        (["2001:db8::1", "::ffff:192.0.2.1"], True),
        (["192.0.2.1", "2001:db8::1"], False),  # one list is one family
        (["192.0.2.1", ""], False),
        (["192.0.2.1", "192.0.2.01"], False),  # a leading zero: inet_pton refuses it
        (["192.0.2.1", "192.0.2.2\x00"], False),  # a NUL: ValueError, not OSError
        (["192.0.2.1\n192.0.2.2"], False),
        (["fe80::1%eth0"], False),  # ipaddress reads it; it is then tested one by one
    ],
)
def test_ip_addresses_are_tested_all_at_once_only_when_inet_pton_reads_all(
    texts: list[str], passes: bool
) -> None:
    form = IPAddress.__metadata__[0]
    assert form.every is not None and form.every(texts) is passes
    if passes:  # never more than the test of one value allows
        for text in texts:
            form.test(text)


def test_a_bad_interval_far_down_a_long_list_is_found_by_its_place() -> None:
    """The test of all the intervals at once fails; the one that is not an address is then
    found and named by its place, as before."""

    def edit(document: dict[str, Any]) -> None:
        intervals = document["address_lists"][0]["ipv4"]
        first = intervals[0]
        intervals[:] = [dict(first) for _ in range(500)]
        intervals[321]["last"] = "192.0.2.300"

    with pytest.raises(codec.PlanError) as refused:
        codec.loads(_tampered(edit), "plan.json")
    assert str(refused.value) == (
        "plan.json: plan does not hold what it must: "
        "at address_lists/0/ipv4/321/last: '192.0.2.300' is not an IP address"
    )


def test_an_address_set_reads_a_form_inet_pton_does_not() -> None:
    """`AddressSet` reads a list's addresses in one loop in C; a form only `ipaddress`
    reads (a scoped IPv6 address) sends the whole list the slow way, with the same result."""
    scoped = AddressList(
        "x",
        Source("site.yaml", 1, 1),
        (Interval("192.0.2.0", "192.0.2.255"),),
        (Interval("2001:db8::", "2001:db8::ff"), Interval("fe80::1%eth0", "fe80::1%eth0")),
    )
    found = AddressSet(scoped)
    assert "192.0.2.7" in found and "198.51.100.1" not in found
    assert "2001:db8::7" in found and "fe80::1" in found and "2001:db8::100" not in found
