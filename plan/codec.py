"""The plan's JSON form: canonical encoding, sha256 digest, JSON Schema, and verified loading.

The JSON form and the schema are both derived from the classes in `plan.model`,
so they cannot drift apart. A plan file is the canonical content plus `digest`;
`load` refuses a file whose schema or digest does not hold.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import fastjsonschema
import jsonschema
import msgspec

from mailplan.plan import trusted
from mailplan.plan.model import FORMAT, Form, Plan, fields, is_class

T = TypeVar("T")
SCHEMA_ID = "https://mailplan.invalid/schema/plan-v1.json"


# The longest whole number a plan may hold: no field of a plan needs more, and Python
# will not even read one of more than 4,300 digits (`plan.trusted` holds the number).
MAX_DIGITS = trusted.MAX_DIGITS


class PlanError(Exception):
    """A plan file that cannot be used: unreadable, not matching its schema, or tampered with."""


def encode(value: Any) -> Any:
    """The JSON value of a plan (or any part of it, or of what the router makes of it:
    a routing's steps are msgspec Structs)."""
    if is_class(type(value)):
        return {name: encode(getattr(value, name)) for name in fields(value)}
    if isinstance(value, tuple):
        return [encode(item) for item in value]
    return value


def decode(cls: type[T], data: Any) -> T:
    """Rebuild a dataclass from its JSON value; the value must already match the schema."""
    return typing.cast(T, _decode(cls, data))


def _decode(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    if is_class(hint):
        hints = _hints(hint)
        return hint(**{name: _decode(hints[name], data[name]) for name in fields(hint)})
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        return tuple(_decode(item, element) for element in data)
    if origin in (Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        return None if data is None else _decode(options[0], data)
    return data


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no insignificant white space, UTF-8.

    The bytes of `json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`, written by msgspec's encoder in C (tests/test_codec.py holds
    the two to the same bytes); a plan or any part of it is encoded directly, without
    its `encode` value."""
    return _encoder().encode(value)


def digest(plan: Plan) -> str:
    """The plan's digest: sha256 over its canonical JSON, encoded and hashed in pieces (so
    that a reload in a thread never holds the interpreter for long); for a plan read from
    a file, the digest that was checked then."""
    known = trusted.known_digest(plan)
    if known is not None:
        return known
    hashed = hashlib.sha256()
    for piece in trusted.canonical_pieces(plan):
        hashed.update(piece)
    return "sha256:" + hashed.hexdigest()


@functools.cache
def _encoder() -> msgspec.json.Encoder:
    return msgspec.json.Encoder(order="sorted")


def dumps(plan: Plan) -> str:
    """The text of a plan file: the plan's JSON with its digest, sorted and indented.

    msgspec writes it (the bytes `json.dumps(document, sort_keys=True, indent=1,
    ensure_ascii=False)` gives), and reading it back the way `loads` does checks it
    against the model; only a plan that fails that is checked, and written, step by step
    (and then refused with the schema's words)."""
    top = {name: getattr(plan, name) for name in fields(plan)}
    compact = canonical(top | {"digest": digest(plan)})
    text = msgspec.json.format(compact, indent=1).decode() + "\n"
    if _trusted(text) is not None:
        return text
    document = encode(plan) | {"digest": digest(plan)}
    problem = _schema_problem(document)
    if problem:
        raise PlanError(f"plan does not match its schema: {problem}")
    return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def loads(text: str, origin: str = "plan") -> Plan:
    """Parse a plan file, verifying its format, schema and digest before trusting it.

    Whatever the text, the answer is a plan or one PlanError line: numbers of more than
    MAX_DIGITS digits, nesting deeper than Python recurses and strings that are not
    Unicode (a lone surrogate escape, `"\\ud800"`) are "not a plan"."""
    try:
        return _trusted(text) or _verified(_parsed(text, origin), origin)
    except (RecursionError, UnicodeEncodeError) as exc:
        raise PlanError(f"{origin}: not a plan: {_unusable(exc)}") from None


def _trusted(text: str | bytes) -> Plan | None:
    """The plan in `text` when the file says exactly what that plan says (`plan.trusted`:
    msgspec, in pieces) and its values pass their Forms, else None: then `_verified` checks
    it step by step and words what is wrong. A plan of 100,000 routes loads this way in
    well under a second, against some six the step-by-step check takes."""
    with trusted.uncollected():
        plan = trusted.plan_of(text, Plan, FORMAT)
    return plan if plan is not None and _form_problem(plan) is None else None


def _parsed(text: str, origin: str) -> dict[str, Any]:
    try:
        document = json.loads(text, parse_int=_whole, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{origin}: not JSON: {exc}") from None
    except ValueError as exc:
        raise PlanError(f"{origin}: not a plan: {exc}") from None
    if not isinstance(document, dict):
        raise PlanError(f"{origin}: not a plan: the top level is not an object")
    return document


def _whole(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number of more than {MAX_DIGITS} digits")
    return int(text)


def _constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def _unusable(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "values nested too deeply"
    return "a string that is not Unicode text (a lone surrogate escape)"


def _verified(document: dict[str, Any], origin: str) -> Plan:
    if document.get("format") != FORMAT:
        raise PlanError(
            f"{origin}: plan format {document.get('format')!r} is not supported "
            f"(this mailplan reads format {FORMAT}); build the plan again"
        )
    problem = _schema_problem(document)
    if problem:
        raise PlanError(f"{origin}: plan does not match its schema: {problem}")
    content = {key: value for key, value in document.items() if key != "digest"}
    actual = "sha256:" + hashlib.sha256(canonical(content)).hexdigest()
    if actual != document["digest"]:
        raise PlanError(
            f"{origin}: plan digest mismatch: the file says {document['digest']} but its "
            f"content hashes to {actual}; the plan was edited after it was built"
        )
    plan = decode(Plan, content)
    problem = _form_problem(plan)
    if problem:
        raise PlanError(f"{origin}: plan does not hold what it must: {problem}")
    return plan


def _form_problem(plan: Plan) -> str | None:
    """The first value in a decoded plan that breaks the `Form` its field is annotated
    with, and where it is (`at address_lists/0/ipv4/0/first: '' is not an IP address`)."""
    check = _checker(Plan)
    found = check(plan) if check is not None else None
    if found is None:
        return None
    path, why = found
    return f"at {'/'.join(reversed(path))}: {why}"


# A check of a value of one type hint: None, or (its path, reversed, and why it breaks a
# Form). The path is made only on the way back from a problem, not for every value.
Checker = Callable[[Any], "tuple[list[str], str] | None"]


@functools.cache
def _checker(hint: Any) -> Checker | None:
    """The check of values of `hint`, made once per hint; None when nothing under it has
    a Form (so a plan's routes and rules are not even walked)."""
    form = _form_of(hint)
    if form is not None:
        return functools.partial(_formed, form)
    origin = typing.get_origin(hint)
    if origin is tuple:
        element = typing.get_args(hint)[0]
        forms = _forms_only(element)
        if forms:
            return functools.partial(_items_of_forms, forms)
        inner = _checker(element)
        return None if inner is None else functools.partial(_items, inner)
    if origin in (Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        inner = _checker(options[0])
        return None if inner is None else functools.partial(_optional, inner)
    if is_class(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        checkers = [(name, _checker(hints[name])) for name in fields(hint)]
        checked = tuple((name, check) for name, check in checkers if check is not None)
        return functools.partial(_fields, checked) if checked else None
    return None


def _forms_only(hint: Any) -> tuple[tuple[str, Form], ...]:
    """The fields of dataclass `hint` that have a Form, when it has some and nothing else
    under it is checked (a plan's address-list intervals); else ()."""
    if not is_class(hint):
        return ()
    hints = typing.get_type_hints(hint, include_extras=True)
    typed = [(name, hints[name]) for name in fields(hint)]
    forms = tuple((name, _form_of(inner)) for name, inner in typed)
    unformed = [inner for (_, inner), (_, form) in zip(typed, forms, strict=True) if not form]
    if any(_checker(inner) is not None for inner in unformed) or not any(f for _, f in forms):
        return ()
    return tuple((name, form) for name, form in forms if form is not None)


def _items_of_forms(
    forms: tuple[tuple[str, Form], ...], values: Any
) -> tuple[list[str], str] | None:
    """`_items` of `_fields` of `_formed`, in one loop: the address lists of a big plan
    hold a hundred thousand intervals, checked at every start and reload. A field whose
    values pass the Form's test of all at once is not tested value by value."""
    tested = [(name, form) for name, form in forms if not _all_pass(form, name, values)]
    if not tested:
        return None
    for index, value in enumerate(values):
        for name, form in tested:
            text = getattr(value, name)
            try:
                form.test(text)
            except ValueError:
                return [name, str(index)], f"{text!r} is not {form.what}"
    return None


def _all_pass(form: Form, name: str, values: Any) -> bool:
    """Whether the field `name` of every one of `values` passes the Form's test of all."""
    return form.every is not None and form.every([getattr(value, name) for value in values])


def _formed(form: Form, value: Any) -> tuple[list[str], str] | None:
    try:
        form.test(value)
    except ValueError:
        return [], f"{value!r} is not {form.what}"
    return None


def _items(inner: Checker, values: Any) -> tuple[list[str], str] | None:
    for index, value in enumerate(values):
        found = inner(value)
        if found is not None:
            found[0].append(str(index))
            return found
    return None


def _optional(inner: Checker, value: Any) -> tuple[list[str], str] | None:
    return None if value is None else inner(value)


def _fields(checked: tuple[tuple[str, Checker], ...], value: Any) -> tuple[list[str], str] | None:
    for name, inner in checked:
        found = inner(getattr(value, name))
        if found is not None:
            found[0].append(name)
            return found
    return None


def _form_of(hint: Any) -> Form | None:
    if typing.get_origin(hint) is typing.Annotated:
        return next((extra for extra in hint.__metadata__ if isinstance(extra, Form)), None)
    return None


def load(path: Path) -> Plan:
    try:
        data = path.read_bytes()
        plan = _trusted(data)
        if plan is not None:
            return plan
        text = data.decode()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PlanError(f"{path}: not a plan: not UTF-8 text ({exc.reason})") from None
    return loads(text, str(path))


def _schema_problem(document: dict[str, Any]) -> str | None:
    """The first place where `document` breaks the plan schema, or None.

    A plan is checked every time it is written or loaded, so the check runs as code
    that fastjsonschema generates from the schema (some twenty times faster than
    interpreting it); only when that finds a problem does jsonschema name it.
    """
    try:
        _fast_validator()(document)
    except fastjsonschema.JsonSchemaException:
        errors = sorted(validator().iter_errors(document), key=lambda e: list(e.absolute_path))
        return _describe(errors[0]) if errors else "rejected by the plan schema"
    return None


@functools.cache
def _fast_validator() -> Callable[[Any], Any]:
    """The plan schema compiled to Python. It uses only keywords that mean the same in
    draft 7, which fastjsonschema implements, as in 2020-12 (see FAST_KEYWORDS)."""
    schema = {key: value for key, value in json_schema().items() if key != "$schema"}
    return fastjsonschema.compile(schema | {"$schema": "http://json-schema.org/draft-07/schema#"})


# Keywords whose meaning draft 7 and 2020-12 share; the plan schema uses no others.
FAST_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "$ref",
        "$defs",
        "title",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "anyOf",
        "enum",
        "const",
        "pattern",
    }
)


def _describe(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
    return f"at {where}: {error.message}"


@functools.cache
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schema())


@functools.cache
def json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of a plan file, derived from the model."""
    definitions: dict[str, Any] = {}
    root = _schema(Plan, definitions)
    top = dict(definitions.pop("Plan"))
    top["properties"] = top["properties"] | {
        "digest": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
        "format": {"const": FORMAT},
    }
    top["required"] = [*top["required"], "digest"]
    assert root == {"$ref": "#/$defs/Plan"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "mailplan plan",
        **top,
        "$defs": dict(sorted(definitions.items())),
    }


def _schema(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if is_class(hint):
        name = hint.__name__
        if name not in definitions:
            definitions[name] = {}
            hints = _hints(hint)
            names = list(fields(hint))
            definitions[name] = {
                "type": "object",
                "properties": {field: _schema(hints[field], definitions) for field in names},
                "required": names,
                "additionalProperties": False,
            }
        return {"$ref": f"#/$defs/{name}"}
    if origin is tuple:
        return {"type": "array", "items": _schema(typing.get_args(hint)[0], definitions)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema(option, definitions) for option in typing.get_args(hint)]}
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    simple = {str: "string", int: "integer", bool: "boolean", type(None): "null"}
    return {"type": simple[hint]}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)
