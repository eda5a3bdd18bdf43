"""YAML with positions: plain values, plus where each key and value was written.

PyYAML composes a node graph that carries line marks; this module turns it into
plain dicts, lists and scalars, and records for every path (a tuple of keys and
indexes) the position of the value and of its key. Duplicate keys, which PyYAML
would silently merge, are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from mailplan.compiler.diagnostics import Diagnostic, error

Path = tuple[str | int, ...]

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


@dataclass(frozen=True)
class Position:
    line: int
    column: int
    style: str | None = None


@dataclass
class Document:
    """A YAML file's data and the positions of everything in it."""

    file: str
    data: Any
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)
    lines: tuple[str, ...] = ()

    def at(self, path: Path) -> Position:
        """Where the value at `path` was written, or its nearest written ancestor."""
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, Position(1, 1))

    def key_at(self, path: Path) -> Position:
        return self.keys.get(path) or self.at(path)

    def text_origin(self, path: Path) -> tuple[int, int]:
        """Line and column of the first character of a string value's content.

        For a literal block (`|`) the content starts on the next line at the block's
        indentation, and each line of the string is one line of the file.
        """
        position = self.at(path)
        if position.style in ("|", ">"):
            value = str(self.data_at(path))
            first = position.line + 1
            for offset, content in enumerate(value.split("\n")):
                if content.strip() and first + offset <= len(self.lines):
                    raw = self.lines[first + offset - 1]
                    if position.style == ">":  # folded: lines are joined, count the indent
                        return first, len(raw) - len(raw.lstrip(" ")) + 1
                    return first, len(raw) - len(content) + 1
            return first, 1
        if position.style in ("'", '"'):
            return position.line, position.column + 1
        return position.line, position.column

    def data_at(self, path: Path) -> Any:
        value = self.data
        for part in path:
            value = value[part]
        return value


def load(text: str, file: str) -> tuple[Document | None, list[Diagnostic]]:
    """Parse one YAML document; on a syntax error, return the error with its position."""
    document = Document(file, None, lines=tuple(text.splitlines()))
    problems: list[Diagnostic] = []
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None:
            document.data = _build(node, (), document, problems)
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax(exc, file)]
    except yaml.YAMLError as exc:
        return None, [error(file, 1, 1, "MP101", f"YAML syntax: {exc}")]
    return document, problems


def _syntax(exc: yaml.MarkedYAMLError, file: str) -> Diagnostic:
    """A YAML error at the place it was found, with the place its context starts."""
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or exc.context or "invalid YAML"
    context = exc.context_mark
    if exc.problem and exc.context and context is not None and context.line + 1 != line:
        start = f"line {context.line + 1}, column {context.column + 1}"
        problem += f" ({exc.context} that starts at {start})"
    return error(file, line, column, "MP101", f"YAML syntax: {problem}")


_constructor = yaml.constructor.SafeConstructor()


def _build(node: yaml.Node, path: Path, doc: Document, problems: list[Diagnostic]) -> Any:
    doc.values[path] = Position(
        node.start_mark.line + 1,
        node.start_mark.column + 1,
        getattr(node, "style", None),
    )
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _constructor.construct_object(key_node, deep=True)
            key = key if isinstance(key, str) else str(key)
            where = Position(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in result:
                first = doc.keys[(*path, key)]
                problems.append(
                    error(
                        doc.file,
                        where.line,
                        where.column,
                        "MP102",
                        f"duplicate key {key!r} (first written at line {first.line})",
                    )
                )
                continue
            doc.keys[(*path, key)] = where
            result[key] = _build(value_node, (*path, key), doc, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), doc, problems) for i, item in enumerate(node.value)]
    return _constructor.construct_object(node, deep=True)
