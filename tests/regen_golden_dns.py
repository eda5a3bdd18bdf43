"""Rewrite tests/golden/dns/FORMAT/ from what `mailplan dns sites/example.com -o DIR` writes now.

Only after a deliberate change of the records or of sites/example.com: read the diff
before committing. Usage: python tests/regen_golden_dns.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mailplan.compiler.pipeline import compile_site
from mailplan.zones.records import zones
from mailplan.zones.render import FORMATS, files

ROOT = Path(__file__).parent.parent
GOLDEN = ROOT / "tests" / "golden" / "dns"

plan = compile_site(ROOT / "sites" / "example.com").plan
assert plan is not None, "sites/example.com does not compile"
for form in FORMATS:
    shutil.rmtree(GOLDEN / form, ignore_errors=True)
    (GOLDEN / form).mkdir(parents=True)
    for name, text in files(zones(plan), form).items():
        (GOLDEN / form / name).write_text(text, encoding="utf-8")
    print(f"{form}: {len(list((GOLDEN / form).iterdir()))} files")
