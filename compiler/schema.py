"""Schema pass: check site.yaml against the site's JSON Schema, every error at its line."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.compiler.unit import Unit
from mailplan.compiler.yamlpos import Document, Path, Position

_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "boolean": "true or false",
    "null": "nothing",
    "number": "a number",
}


@functools.cache
def site_schema() -> dict[str, Any]:
    text = (
        resources.files("mailplan.compiler")
        .joinpath("site.schema.json")
        .read_text(encoding="utf-8")
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


def _is_integer(checker: Any, instance: Any) -> bool:
    """A whole number is an int as YAML wrote it: `5.0` is not one (JSON Schema would say it is)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    base = jsonschema.Draft202012Validator
    types = base.TYPE_CHECKER.redefine("integer", _is_integer)
    validator = jsonschema.validators.extend(base, type_checker=types)  # type: ignore[no-untyped-call]
    found: jsonschema.Draft202012Validator = validator(site_schema())
    return found


def schema(unit: Unit) -> Unit:
    """Report every place where site.yaml does not match the site's schema."""
    if unit.document is None:
        return unit
    return unit.report(*_problems(unit.document))


def _problems(document: Document) -> list[Diagnostic]:
    problems = []
    for found in _validator().iter_errors(document.data):
        path: Path = tuple(found.absolute_path)
        for line, column, message in _explain(found, path, document):
            problems.append(error(document.file, line, column, "MP103", message))
    return problems


def _explain(found: ValidationError, path: Path, document: Document) -> list[tuple[int, int, str]]:
    """Position and wording of one schema error (several for several unknown keys)."""
    where = _name(path)
    position = document.at(path)
    rules: dict[str, Any] = found.schema if isinstance(found.schema, dict) else {}
    custom = rules.get("x-message")
    instance: Any = found.instance
    if "propertyNames" in found.absolute_schema_path:
        key = document.key_at((*path, instance))
        reason = custom or found.message
        return [(key.line, key.column, f"{where}: {instance!r} is not a valid name: {reason}")]
    if found.validator in ("anyOf", "oneOf") and not custom and found.context:
        fitting = [e for e in found.context if e.validator != "type" or e.relative_path]
        chosen = best_match(fitting or found.context)
        return _explain(chosen, tuple(chosen.absolute_path), document)
    if custom:
        return [(position.line, position.column, f"{where}: {custom}")]
    if found.validator == "additionalProperties":
        allowed = sorted(rules.get("properties", {}))
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        unknown = [key for key in instance if key not in allowed]
        return [
            (*_place(document.key_at((*path, key))), f"{where}: unknown key {key!r}{hint}")
            for key in unknown
        ]
    if found.validator == "required":
        missing = found.message.split("'")[1]
        key = document.key_at(path) if path else position
        return [(key.line, key.column, f"{where}: missing required key {missing!r}")]
    if found.validator == "type":
        expected: Any = found.validator_value
        names = [expected] if isinstance(expected, str) else expected
        wanted = " or ".join(_TYPES.get(n, n) for n in names)
        return [(position.line, position.column, f"{where}: expected {wanted}")]
    if found.validator == "enum":
        values: Any = found.validator_value
        options = ", ".join(str(o) for o in values)
        shown = repr(instance) if isinstance(instance, str) else json.dumps(instance)
        return [(position.line, position.column, f"{where}: {shown} is not one of: {options}")]
    return [(position.line, position.column, f"{where}: {found.message}")]


def _place(position: Position) -> tuple[int, int]:
    return position.line, position.column


def _name(path: Path) -> str:
    if not path:
        return "site"
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
