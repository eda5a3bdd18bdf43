"""Where a command's plan comes from: a site, compiled, or a plan file (`--plan`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mailplan.compiler.diagnostics import render_text
from mailplan.compiler.pipeline import compile_site
from mailplan.plan import codec
from mailplan.plan.model import Plan

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


class SiteError(Exception):
    """A site that does not compile: the diagnostics, rendered."""


def add_origin(parser: argparse.ArgumentParser, *, positional: bool) -> None:
    """SITE_DIR (or `--site SITE_DIR`) or `--plan PLAN`: one of the two, required."""
    origin = parser.add_mutually_exclusive_group(required=True)
    if positional:
        origin.add_argument("site", type=Path, nargs="?", metavar="SITE_DIR")
    else:
        origin.add_argument("--site", type=Path, metavar="SITE_DIR")
    origin.add_argument("--plan", type=Path, metavar="PLAN")


def loader(site: Path | None, plan: Path | None) -> Callable[[], Plan]:
    """How the server gets its plan, at start and at every reload."""

    def load() -> Plan:
        if plan is not None:
            return codec.load(plan)
        assert site is not None
        unit = compile_site(site)
        if unit.plan is None:
            raise SiteError(render_text(unit.diagnostics, unit.texts, f"{site}/"))
        return unit.plan

    return load


def load_plan(arguments: argparse.Namespace) -> Plan | None:
    """The plan of `--plan`, or of the site compiled; None (and why, on stderr) if neither."""
    try:
        return loader(arguments.site, arguments.plan)()
    except (SiteError, codec.PlanError) as exc:
        print(f"mailplan: {exc}", file=sys.stderr)
        return None
