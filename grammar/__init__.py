"""The lark grammars of the site's languages, shipped as package data."""

from __future__ import annotations

import functools
from importlib import resources

from lark import Lark


@functools.cache
def parser(name: str, start: str) -> Lark:
    """The LALR parser of `grammar/NAME.lark`, propagating positions to the tree."""
    text = resources.files(__name__).joinpath(f"{name}.lark").read_text(encoding="utf-8")
    return Lark(
        text, start=start, parser="lalr", propagate_positions=True, maybe_placeholders=False
    )
