"""`mailplan check --format github` (workflow commands) and `--format sarif` (SARIF 2.1.0,
validated against its JSON Schema, vendored in tests/sarif/)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from sitekit import plain, write_site

from mailplan.cli import main
from mailplan.compiler.diagnostics import error, warning
from mailplan.compiler.report import render_github, render_sarif

HERE = Path(__file__).parent
# The OASIS schema of SARIF 2.1.0 (its rtm.5 text, the one schemastore names
# sarif-2.1.0.json), as the npm package @microsoft/jest-sarif 1.0.0-beta.0 ships it.
SCHEMA = json.loads((HERE / "sarif" / "sarif-2.1.0-rtm.5.json").read_text())
SITES = HERE / "sites"


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str]:
    status = main(list(arguments))
    return status, capsys.readouterr().out


def valid_sarif(text: str) -> dict[str, object]:
    log = json.loads(text)
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    problems = [e.message for e in jsonschema.Draft4Validator(SCHEMA).iter_errors(log)]
    assert problems == []
    return log


def test_github_lines_for_errors(capsys: pytest.CaptureFixture[str]) -> None:
    site = SITES / "bad-alias-shadows"
    status, out = run(capsys, "check", str(site), "--format", "github")
    assert status == 1
    assert out == (
        f"::error file={site}/site.yaml,line=8,col=7,title=MP206::alias alice@example.com"
        " of bob shadows an account alice@example.com (line 7)\n"
    )


def test_github_lines_for_warnings_then_ok(capsys: pytest.CaptureFixture[str]) -> None:
    site = SITES / "bad-dkim-on-parked-domain"
    status, out = run(capsys, "check", str(site), "--format", "github")
    lines = out.splitlines()
    assert status == 0
    assert lines[0].startswith(
        f"::warning file={site}/site.yaml,line=9,col=9,title=MP506::dkim of parked.example"
        " is not published: the domain sends no mail"
    )
    assert lines[1].startswith(f"::warning file={site}/site.yaml,line=10,col=5,title=MP506::")
    assert lines[2] == "configuration OK"
    assert lines[3].startswith("plan digest sha256:")


def test_github_escapes_what_the_runner_unescapes() -> None:
    found = [
        error("a,b:c.yaml", 3, 4, "MP101", "50% of\nit"),
        warning("x.yaml", 0, 0, "MP900", "whole file"),
    ]
    assert render_github(found, "site/").splitlines() == [
        "::error file=site/a%2Cb%3Ac.yaml,line=3,col=4,title=MP101::50%25 of%0Ait",
        "::warning file=site/x.yaml,title=MP900::whole file",
    ]


def test_sarif_of_a_site_with_errors_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    site = SITES / "bad-alias-shadows"
    status, out = run(capsys, "check", str(site), "--format", "sarif")
    assert status == 1
    log = valid_sarif(out)
    run_ = log["runs"][0]  # type: ignore[index]
    assert run_["tool"]["driver"]["name"] == "mailplan"
    assert run_["tool"]["driver"]["rules"] == [{"id": "MP206", "name": "MP206"}]
    assert run_["results"] == [
        {
            "ruleId": "MP206",
            "ruleIndex": 0,
            "level": "error",
            "message": {
                "text": "alias alice@example.com of bob shadows an account alice@example.com"
                " (line 7)"
            },
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {
                            "uri": f"{site}/site.yaml",
                            "uriBaseId": "%SRCROOT%",
                        },
                        "region": {"startLine": 8, "startColumn": 7},
                    }
                }
            ],
        }
    ]


@pytest.mark.parametrize("site", ["bad-dkim-on-parked-domain", "bad-relay-acknowledged"])
def test_sarif_of_warnings_is_valid(capsys: pytest.CaptureFixture[str], site: str) -> None:
    status, out = run(capsys, "check", str(SITES / site), "--format", "sarif")
    assert status == 0
    results = valid_sarif(out)["runs"][0]["results"]  # type: ignore[index]
    assert results and {r["level"] for r in results} == {"warning"}


def test_sarif_of_a_clean_site_and_of_lines_unknown(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = write_site(tmp_path, listeners={"smtp": plain(2525)})
    status, out = run(capsys, "check", str(site), "--format", "sarif")
    assert status == 0
    assert valid_sarif(out)["runs"][0]["results"] == []  # type: ignore[index]
    whole = valid_sarif(render_sarif([error("site.yaml", 0, 0, "MP100", "cannot read")]))
    location = whole["runs"][0]["results"][0]["locations"][0]  # type: ignore[index]
    assert "region" not in location["physicalLocation"]
