"""YAML with positions: plain values, plus where each key and value was written.

PyYAML composes a node graph that carries line marks; this module turns it into
plain dicts, lists and scalars, and records for every path (a tuple of keys and
indexes) the position of the value and of its key. Duplicate keys, which PyYAML
would silently merge, are reported.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import yaml

from mailplan.compiler.diagnostics import LINE_END, Diagnostic, error, split_lines

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


# Bounds on what a site.yaml may make the loader build: how deep values nest, how
# many values aliases may add (a few aliases can otherwise expand into gigabytes, the
# "billion laughs"), and how large a whole number may be (Python will not even print
# one of more than 4,300 digits).
MAX_DEPTH = 64
MAX_ALIAS_VALUES = 10_000
MAX_INT_BITS = 64
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Refused(Exception):
    """A document the loader will not build: one MP101 at the node that caused it."""

    def __init__(self, node: yaml.Node, problem: str) -> None:
        super().__init__(problem)
        self.index = node.start_mark.index
        self.problem = problem


class _Lines:
    """Line and column (from 1) of a character offset, lines counted as editors count
    them. PyYAML's own marks also end lines at NEL, U+2028 and U+2029 (YAML 1.1 does),
    so every position is taken from a mark's offset, never from its line."""

    def __init__(self, text: str) -> None:
        self.starts = [0, *(found.end() for found in LINE_END.finditer(text))]

    def at(self, index: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, index)
        return line, index - self.starts[line - 1] + 1

    def position(self, node: yaml.Node) -> Position:
        return Position(*self.at(node.start_mark.index), getattr(node, "style", None))


def load(text: str, file: str) -> tuple[Document | None, list[Diagnostic]]:
    """Parse one YAML document; on a syntax error, return the error with its position."""
    document = Document(file, None, lines=tuple(split_lines(text)))
    lines = _Lines(text)
    problems: list[Diagnostic] = []
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None:
            document.data = _Builder(document, lines, problems).build(node, ())
    except _Refused as exc:
        line, column = lines.at(exc.index)
        return None, [error(file, line, column, "MP101", f"YAML syntax: {exc.problem}")]
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax(exc, file, lines)]
    except yaml.reader.ReaderError as exc:
        line, column = lines.at(_characters(text, exc.position))
        problem = f"character {_code(exc.character)} is not allowed in YAML"
        return None, [error(file, line, column, "MP101", f"YAML syntax: {problem}")]
    except yaml.YAMLError as exc:
        return None, [error(file, 1, 1, "MP101", f"YAML syntax: {exc}")]
    return document, problems


def _characters(text: str, position: int) -> int:
    """The character offset of a reader error: libyaml counts bytes of UTF-8."""
    if _Loader is yaml.SafeLoader:  # pragma: no cover - PyYAML built without libyaml
        return position
    return len(text.encode("utf-8", "surrogatepass")[:position].decode("utf-8", "ignore"))


def _code(character: int | str) -> str:
    return f"U+{character if isinstance(character, int) else ord(character):04X}"


def _syntax(exc: yaml.MarkedYAMLError, file: str, lines: _Lines) -> Diagnostic:
    """A YAML error at the place it was found, with the place its context starts."""
    mark = exc.problem_mark or exc.context_mark
    line, column = lines.at(mark.index) if mark else (1, 1)
    problem = exc.problem or exc.context or "invalid YAML"
    context = exc.context_mark
    if exc.problem and exc.context and context is not None:
        start_line, start_column = lines.at(context.index)
        if start_line != line:
            start = f"line {start_line}, column {start_column}"
            problem += f" ({exc.context} that starts at {start})"
    return error(file, line, column, "MP101", f"YAML syntax: {problem}")


_constructor = yaml.constructor.SafeConstructor()


class _Builder:
    """Plain values from composed nodes, with positions, within the bounds above."""

    def __init__(self, doc: Document, lines: _Lines, problems: list[Diagnostic]) -> None:
        self.doc = doc
        self.lines = lines
        self.problems = problems
        self.built: set[int] = set()  # nodes built once: building one again is an alias
        self.inside: list[int] = []  # the nodes being built, outermost first
        self.alias_values = 0
        self.aliases_open = 0  # how many of the nodes being built are aliases

    def build(self, node: yaml.Node, path: Path) -> Any:
        if id(node) in self.inside:
            raise _Refused(node, "an alias that contains itself")
        if len(self.inside) >= MAX_DEPTH:
            raise _Refused(node, f"values nested more than {MAX_DEPTH} deep")
        alias = id(node) in self.built
        if alias or self.aliases_open:
            self.alias_values += 1
            if self.alias_values > MAX_ALIAS_VALUES:
                raise _Refused(node, f"aliases that expand to more than {MAX_ALIAS_VALUES} values")
        self.built.add(id(node))
        self.doc.values[path] = self.lines.position(node)
        self.inside.append(id(node))
        self.aliases_open += alias
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return _scalar(node)
        finally:
            self.inside.pop()
            self.aliases_open -= alias

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(key_node, "a key that is a list or a mapping")
            key = _scalar(key_node)
            key = key if isinstance(key, str) else str(key)
            where = Position(*self.lines.at(key_node.start_mark.index))
            if key in result:
                first = self.doc.keys[(*path, key)]
                message = f"duplicate key {key!r} (first written at line {first.line})"
                self.problems.append(
                    error(self.doc.file, where.line, where.column, "MP102", message)
                )
                continue
            self.doc.keys[(*path, key)] = where
            result[key] = self.build(value_node, (*path, key))
        return result


def _scalar(node: yaml.Node) -> Any:
    """A scalar's value; a date stays the text it was written as (nothing in a site is a
    date), and what PyYAML cannot construct is an MP101 at the scalar."""
    if node.tag == _TIMESTAMP:
        return str(node.value)
    try:
        value = _constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        raise _Refused(node, exc.problem or "invalid YAML") from None
    except Exception as exc:  # whatever PyYAML's constructors raise (IndexError for `!!int ''`)
        kind = str(node.tag).rsplit(":", 1)[-1]
        if "limit" in str(exc) and "digits" in str(exc):
            raise _Refused(node, f"a number of more than {MAX_INT_BITS} bits") from None
        raise _Refused(node, f"{_shown(node.value)} is not a valid {kind}") from None
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _Refused(node, f"a number of more than {MAX_INT_BITS} bits")
    if not isinstance(value, (str, int, float, bool, type(None))):
        raise _Refused(node, f"a value of type {type(value).__name__} ({node.tag}) is not allowed")
    return value


def _shown(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:40] + "…")
