"""Reading a plan file fast, in pieces: msgspec decodes it in C, a few hundred values at a time.

`codec.loads` tries this first. It gives a plan only when the file says exactly what
the plan it decodes to says: every object has the model's keys and no other (a key given
twice counts once, the last, as `json.loads` takes it), every value the model's type,
every piece written as canonical JSON writes it (so no whole number of more than
MAX_DIGITS digits), and the file's digest is the plan's. Anything else gives None, and
`codec` checks the file step by step and words what is wrong, as it always has.

Why in pieces: a server reloads its plan in a thread while its event loop serves
sessions. A C call holds the interpreter until it returns, so decoding a plan of
100,000 routes in one call would stop every session for a good part of a second;
decoded a few hundred values at a time, the loop gets its turn between pieces. Only
the lists of model values (`tuple[Route, ...]`) are cut up: each object that holds such a
list (the plan, an address list, a domain) is read as a shell of its fields' raw texts.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import typing
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec

from mailplan.plan.model import fields, is_class

T = TypeVar("T")
BATCH = 256  # values decoded (and encoded) by one C call
MAX_DIGITS = 20  # the longest whole number a plan may hold (codec.MAX_DIGITS)
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0000000000")


class NotCanonical(Exception):
    """The file is not exactly a plan's canonical pieces: `codec` must check it in full."""


def plan_of(text: str | bytes, cls: type[T], format_: int) -> T | None:
    """The plan `text` holds when every piece of it is what the plan says, else None."""
    top: Any = cls
    return typing.cast("T | None", _plan_of(text, top, format_))


def _plan_of(text: str | bytes, cls: Any, format_: int) -> Any:
    data = text.encode() if isinstance(text, str) else text
    try:
        shell = _decoder(_shell(cls, True)).decode(data)
        digest = msgspec.json.decode(shell.digest, type=str)
        plan, pieces = _build(cls, shell)
    except (msgspec.MsgspecError, NotCanonical, RecursionError, UnicodeEncodeError):
        return None
    if getattr(plan, "format", None) != format_:
        return None
    hashed = hashlib.sha256()
    for piece in pieces:
        hashed.update(piece)
    if "sha256:" + hashed.hexdigest() != digest:
        return None
    _remember(plan, digest)
    return plan


_DIGESTS: dict[int, str] = {}


def _remember(plan: Any, digest: str) -> None:
    """Keep the digest a plan was read with for as long as the plan lives (by identity:
    hashing a frozen plan would walk all of it)."""
    _DIGESTS[id(plan)] = digest
    weakref.finalize(plan, _DIGESTS.pop, id(plan), None)


def known_digest(plan: Any) -> str | None:
    """The digest `plan` was read with, if this module read it."""
    return _DIGESTS.get(id(plan))


@contextmanager
def uncollected() -> Iterator[None]:
    """CPython's cyclic collector off while a big structure that will live long is built,
    and what was built then moved to the oldest generation without a pass over it.

    A plan and the indexes built on it are a million objects and no garbage; with the
    collector on, its passes over them cost a quarter of the time, and the first young
    collection once it is back on (in whatever thread allocates first: the event loop)
    would go over all of them at once."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()  # every tracked object into the permanent generation, unscanned,
        gc.unfreeze()  # then into the oldest one: a full collection will see them again
        if collecting:
            gc.enable()


def canonical_pieces(value: Any) -> Iterator[bytes]:
    """Canonical JSON of `value` (`codec.canonical`'s bytes) in pieces of about BATCH values."""
    cls: Any = type(value)
    if not (is_class(cls) and _long_fields(cls)):
        yield _encoder().encode(value)
        return
    long = _long_fields(cls)
    yield b"{"
    for n, name in enumerate(sorted(fields(value))):
        yield (b',"' if n else b'"') + name.encode() + b'":'
        field = getattr(value, name)
        if name not in long:
            yield _encoder().encode(field)
            continue
        yield b"["
        element = long[name]
        if _long_fields(element):
            for i, item in enumerate(field):
                if i:
                    yield b","
                yield from canonical_pieces(item)
        else:
            for start in range(0, len(field), BATCH):
                piece = _encoder().encode(field[start : start + BATCH])
                yield (b"," if start else b"") + piece[1:-1]
        yield b"]"
    yield b"}"


def _build(cls: Any, shell: Any) -> tuple[Any, list[bytes]]:
    """The model value a shell holds, and its canonical JSON in pieces (in field-name order)."""
    long = _long_fields(cls)
    values: dict[str, Any] = {}
    pieces: list[bytes] = [b"{"]
    for n, field in enumerate(sorted(fields(cls))):
        pieces.append((b',"' if n else b'"') + field.encode() + b'":')
        raw = getattr(shell, field)
        if field not in long:
            value = msgspec.json.decode(raw, type=_hints(cls)[field])
            pieces.append(_checked(raw, value))
        else:
            value, parts = _elements(long[field], raw)
            pieces += parts
        values[field] = value
    pieces.append(b"}")
    return cls(**values), pieces


def _elements(element: type, raws: Sequence[msgspec.Raw]) -> tuple[tuple[Any, ...], list[bytes]]:
    """A list of model values, decoded BATCH at a time (one by one when each is a shell)."""
    found: list[Any] = []
    pieces = [b"["]
    built: Any
    if _long_fields(element):
        decoder = _decoder(_shell(element, False))
        for i, item in enumerate(raws):
            built, parts = _build(element, decoder.decode(item))
            found.append(built)
            pieces += [b","] if i else []
            pieces += parts
    else:
        decoder = _decoder(tuple[element, ...])  # type: ignore[valid-type]
        for start in range(0, len(raws), BATCH):
            batch = b"[" + b",".join(raws[start : start + BATCH]) + b"]"
            values = decoder.decode(batch)
            piece = _checked(msgspec.Raw(batch), values)
            found += values
            pieces.append((b"," if start else b"") + piece[1:-1])
    pieces.append(b"]")
    return tuple(found), pieces


def _checked(raw: msgspec.Raw | bytes, value: Any) -> bytes:
    """The canonical JSON of `value`, which must be what `raw` says, written compactly."""
    piece = _encoder().encode(value)
    if msgspec.json.format(raw, indent=-1) != piece:
        raise NotCanonical
    if b"0" * (MAX_DIGITS + 1) in piece.translate(_DIGITS_AS_ZERO):
        raise NotCanonical
    return piece


@functools.cache
def _long_fields(cls: Any) -> dict[str, type]:
    """The fields of `cls` that hold a list of model values, with their class."""
    if not is_class(cls):
        return {}
    long = {}
    hints: Any = cls  # a model class, as a cache key
    for name, hint in _hints(hints).items():
        if typing.get_origin(hint) is tuple:
            element = typing.get_args(hint)[0]
            if is_class(element):
                long[name] = element
    return long


@functools.cache
def _shell(cls: Any, top: bool) -> type:
    """A struct with the fields of `cls` as raw JSON, each element apart in a list of
    model values (and, at the top, the file's digest)."""
    long = _long_fields(cls)
    names: Sequence[str] = [*fields(cls)] + (["digest"] if top else [])
    raws = [(name, tuple[msgspec.Raw, ...] if name in long else msgspec.Raw) for name in names]
    return msgspec.defstruct(f"{cls.__name__}Shell", raws, forbid_unknown_fields=True)


@functools.cache
def _decoder(hint: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(hint)


@functools.cache
def _encoder() -> msgspec.json.Encoder:
    return msgspec.json.Encoder(order="sorted")


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)
