"""What `pip install .` puts into site-packages: one import name, `mailplan`, with the
grammars, the schema and the zone templates inside it (docs/architecture.md, Packages)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PIP = (sys.executable, "-m", "pip")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel, offline (with the test environment's setuptools)."""
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(PROJECT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [found] = out.glob("mailplan-*.whl")
    return found


def test_the_only_top_level_name_is_mailplan(wheel: Path) -> None:
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"mailplan"}


def test_the_data_files_are_inside_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "mailplan/grammar/router.lark",
        "mailplan/grammar/rules.lark",
        "mailplan/grammar/addresslist.lark",
        "mailplan/compiler/site.schema.json",
        "mailplan/zones/templates/bind.zone.j2",
        "mailplan/zones/templates/octodns.yaml.j2",
    ):
        assert data in names


def test_installed_it_imports_as_mailplan_and_only_so(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site-packages"
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed == {"mailplan", "bin"}  # bin/mailplan, the console script
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import mailplan.runtime.decide.router as r, mailplan.compiler.schema as s;"
        "assert r.__file__.startswith(sys.argv[1]), r.__file__;"
        "assert s.site_schema()['type'] == 'object';"
        "import importlib.util as u;"
        "print([n for n in ('compiler','runtime','plan','grammar','zones','diff')"
        " if u.find_spec(n)])"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        cwd=tmp_path,  # not the project: its folders are not on the path
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"
