"""The `diff` command: what changes between two plans (each a plan file or a site folder,
or a site as it was at a git revision), unsafe changes named first (mailplan.diff)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mailplan.compiler.diagnostics import render_text
from mailplan.compiler.pipeline import compile_site
from mailplan.diff.change import ERRORS, exit_code
from mailplan.diff.compare import compare
from mailplan.diff.render import FORMATS, render
from mailplan.plan import codec
from mailplan.plan.model import Plan

if TYPE_CHECKING:
    from mailplan.commands.origin import Subcommands


class SideError(Exception):
    """A side that does not compile or load: why, rendered."""


def add_parser(subcommands: Subcommands) -> None:
    diff = subcommands.add_parser(
        "diff",
        help="what changes between two plans or sites; unsafe changes exit 3",
        usage="mailplan diff OLD NEW [options] | mailplan diff --git REV SITE_DIR [options]",
    )
    diff.add_argument("old", metavar="OLD", help="a plan file or a site folder")
    diff.add_argument("new", metavar="NEW", help="a plan file or a site folder")
    diff.add_argument(
        "--git",
        action="store_true",
        help="OLD is a git revision: the site NEW as it was then, from git objects",
    )
    diff.add_argument("--format", choices=FORMATS, default="text")
    diff.add_argument("--allow-unsafe", action="store_true", help="exit 1, not 3, on unsafe")
    diff.add_argument(
        "--replay",
        metavar="LOG",
        type=Path,
        help="decide again the envelopes a server logged (JSON log) under OLD and NEW",
    )
    diff.set_defaults(run=_diff)


def _diff(arguments: argparse.Namespace) -> int:
    try:
        if arguments.git:
            old = at_revision(arguments.old, Path(arguments.new))
        else:
            old = side(Path(arguments.old))
        new = side(Path(arguments.new))
    except SideError as exc:
        print(f"mailplan: {exc}", file=sys.stderr)
        return ERRORS
    changes = compare(old, new)
    code = exit_code(changes, arguments.allow_unsafe)
    text = render(changes, arguments.format, code)
    if arguments.replay is not None:
        try:
            text = _with_replay(text, old, new, arguments.replay, arguments.format)
        except OSError as exc:
            print(f"mailplan: cannot read {arguments.replay}: {exc.strerror}", file=sys.stderr)
            return ERRORS
    sys.stdout.write(text)
    return code


def _with_replay(text: str, old: Plan, new: Plan, log: Path, form: str) -> str:
    """The diff, then what the envelopes of `log` would get under each plan."""
    from mailplan.diff import replay

    with log.open(encoding="utf-8", errors="replace") as lines:
        report = replay.replay(old, new, lines)
    shown = replay.render(report, str(log), form)
    if form != "json":
        return f"{text}\n{shown}"
    document = json.loads(text)
    document["replay"] = json.loads(shown)
    return json.dumps(document, indent=2) + "\n"


def side(path: Path, shown: str | None = None) -> Plan:
    """The plan of a plan file, or of a site folder compiled."""
    if not path.is_dir():
        try:
            return codec.load(path)
        except (OSError, codec.PlanError) as exc:
            raise SideError(f"{path}: {exc}") from exc
    unit = compile_site(path)
    if unit.plan is None:
        prefix = f"{shown or path}/"
        raise SideError(
            f"{shown or path} does not compile:\n"
            + render_text(unit.diagnostics, unit.texts, prefix)
        )
    return unit.plan


def at_revision(revision: str, site: Path) -> Plan:
    """The site folder `site` as it was at `revision`, compiled from git objects in a
    temporary folder (the work tree is not touched)."""
    if not site.is_dir():
        raise SideError(f"--git compares a site folder, and {site} is none")
    if revision.startswith("-"):
        raise SideError(f"{revision}: a revision, not an option of git, please")
    folder = site.resolve()
    top = _git(folder, "rev-parse", "--show-toplevel").decode().strip()
    inside = folder.relative_to(Path(top).resolve()).as_posix()
    archive = _git(Path(top), "archive", "--format=tar", revision, "--", inside)
    with tempfile.TemporaryDirectory(prefix="mailplan-diff-") as temporary:
        try:
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(temporary, filter="data")  # nothing lands outside it
        except tarfile.TarError as exc:
            raise SideError(f"{site} at {revision}: {exc}") from exc
        return side(Path(temporary) / inside, f"{site} at {revision}")


def _git(where: Path, *words: str) -> bytes:
    try:
        ran = subprocess.run(
            ["git", "-C", str(where), *words], capture_output=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SideError(f"cannot run git: {exc}") from exc
    if ran.returncode != 0:
        raise SideError(f"git {words[0]}: {ran.stderr.decode(errors='replace').strip()}")
    return ran.stdout
