"""compiler.load: every file site.yaml names is read once, under one normalised name that
later passes look it up by; a name that cannot be a file of the site is an MP100."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailplan.compiler.diagnostics import error
from mailplan.compiler.pipeline import compile_site

HEAD = "server:\n  hostname: mail.example.com\n  main_domain: example.com\n"  # lines 1-3
DOMAINS = "domains:\n  example.com:\n    accounts: {bob: {}}\n"  # lines 4-6
BROKEN_TABLE = "<x@example.com> =\n"
BROKEN_RULES = 'rule "a" priority 5\n  if Subject is "x"\n  then Bogus\n'


def _site(tmp_path: Path, text: str) -> Path:
    (tmp_path / "site.yaml").write_text(HEAD + DOMAINS + text, encoding="utf-8")
    (tmp_path / "rules").mkdir()
    (tmp_path / "r.cgr").write_text(BROKEN_TABLE, encoding="utf-8")
    (tmp_path / "rules" / "s.rules").write_text(BROKEN_RULES, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("name", ["r.cgr", "./r.cgr", ".//r.cgr", "././r.cgr"])
def test_a_routing_table_by_any_spelling_of_its_name_is_used(tmp_path: Path, name: str) -> None:
    """`./r.cgr` used to be read under one name and looked up under another: dropped, and OK."""
    unit = compile_site(_site(tmp_path, f"routing: {name}\n"))
    assert [d.headline() for d in unit.diagnostics] == [
        'r.cgr:1:18: error MP104: line ends too early: expected a "program"@pipe or an '
        "<address> or an address or a domain"
    ]
    assert set(unit.texts) == {"site.yaml", "r.cgr"}


@pytest.mark.parametrize("name", ["rules/s.rules", "rules//s.rules", "./rules/./s.rules"])
def test_a_rule_file_by_any_spelling_of_its_name_is_used(tmp_path: Path, name: str) -> None:
    unit = compile_site(_site(tmp_path, f"server_rules: {name}\n"))
    assert [d.headline() for d in unit.diagnostics] == [
        "rules/s.rules:3:8: error MP603: unknown action 'Bogus'"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"r\\0.cgr"', "'r\\x00.cgr': a file name with a control character"),
        ('"r\\n.cgr"', "'r\\n.cgr': a file name with a control character"),
        (
            "/etc/passwd",
            "/etc/passwd: files of a site must be named by a path inside the site folder",
        ),
    ],
)
def test_names_that_cannot_be_files_of_the_site(tmp_path: Path, value: str, message: str) -> None:
    unit = compile_site(_site(tmp_path, f"routing: {value}\n"))
    assert unit.diagnostics == (error("site.yaml", 7, 10, "MP100", message),)


def test_a_list_file_by_any_spelling_of_its_name_is_used(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "office.txt").write_text("10.0.0.1/8\n", encoding="utf-8")
    unit = compile_site(
        _site(tmp_path, "address_lists:\n  office: {file: .//lists/./office.txt}\n")
    )
    assert [d.headline() for d in unit.diagnostics] == [
        "lists/office.txt:1:1: error MP106: 10.0.0.1/8 has host bits set: the low 24 bits must "
        "be zero (they are 0x1); the network is 10.0.0.0/8"
    ]
    assert unit.document is not None
    assert unit.document.data["address_lists"]["office"]["file"] == "lists/office.txt"
