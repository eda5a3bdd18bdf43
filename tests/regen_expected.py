"""Rewrite tests/sites/NAME/expected.txt from what the compiler prints now.

Only for a new fixture or a deliberate change of wording: read the diff before committing.
Usage: python tests/regen_expected.py NAME [NAME ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from mailplan.compiler.diagnostics import render_text
from mailplan.compiler.pipeline import compile_site

SITES = Path(__file__).parent / "sites"

for name in sys.argv[1:]:
    unit = compile_site(SITES / name)
    (SITES / name / "expected.txt").write_text(render_text(unit.diagnostics, unit.texts) + "\n")
    print(f"{name}: {len(unit.diagnostics)} diagnostics")
