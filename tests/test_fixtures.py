"""Every failure mode has a fixture site under tests/sites/NAME/ beside the exact
diagnostics that `mailplan check` must print for it (expected.txt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailplan.compiler.diagnostics import render_text
from mailplan.compiler.pipeline import compile_site

SITES = Path(__file__).parent / "sites"
FIXTURES = sorted(p.parent.name for p in SITES.glob("*/expected.txt"))


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_diagnostics(name: str) -> None:
    site = SITES / name
    unit = compile_site(site)
    expected = (site / "expected.txt").read_text(encoding="utf-8")
    assert render_text(unit.diagnostics, unit.texts) + "\n" == expected


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_with_errors_yields_no_plan(name: str) -> None:
    unit = compile_site(SITES / name)
    has_error = any(d.severity == "error" for d in unit.diagnostics)
    assert (unit.plan is None) == has_error
