"""`quick`: a frozen dataclass that is made twice as fast, for the values made by the
hundred thousand (a route, its source, a parsed line, an address on its way through the
router).

A frozen dataclass's own `__init__` sets each field with
`__dataclass_builtins_object__.__setattr__(self, name, value)`, to get past the
`__setattr__` that refuses changes: a global and an attribute looked up for every field,
so that a `Source` costs ~0.6 µs, a good part of compiling a big routing table. The
`__init__` made here calls the same `object.__setattr__`, bound once, so the instance is
exactly the same (its values kept inline, as fast to read and as small as before; fields,
equality, hash, repr, `replace`, frozen after `__init__`), only made faster. It is refused,
when the module is imported, for any class whose `__init__` does more than set its fields
(`__post_init__`, `InitVar`, a field left out of `__init__`, a default factory, slots).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

T = TypeVar("T")


def quick(cls: type[T]) -> type[T]:
    """`cls`, a frozen dataclass, with an `__init__` that sets its fields directly."""
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}: quick is for frozen dataclasses")
    if hasattr(cls, "__post_init__") or "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__name__}: its __init__ does more than set its fields")
    fields = dataclasses.fields(cls)
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if [p.name for p in parameters] != [f.name for f in fields] or any(
        f.default_factory is not dataclasses.MISSING for f in fields
    ):
        raise TypeError(f"{cls.__name__}: its __init__ does more than set its fields")
    defaults: dict[str, Any] = {}
    written = []
    keywords_only = False
    for parameter in parameters:
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise TypeError(f"{cls.__name__}: its __init__ does more than set its fields")
        if parameter.kind is parameter.KEYWORD_ONLY and not keywords_only:
            written.append("*")
            keywords_only = True
        if parameter.default is inspect.Parameter.empty:
            written.append(parameter.name)
        else:
            defaults[f"_default_{parameter.name}"] = parameter.default
            written.append(f"{parameter.name}=_default_{parameter.name}")
    body = "".join(f"    _set(self, {p.name!r}, {p.name})\n" for p in parameters) or "    pass\n"
    source = f"def __init__(self, {', '.join(written)}):\n{body}"
    namespace: dict[str, Any] = {}
    exec(source, defaults | {"_set": object.__setattr__}, namespace)  # made of field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
