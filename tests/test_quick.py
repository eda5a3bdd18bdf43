"""plan.quick: a frozen dataclass made faster is the same value, and refuses what it cannot copy."""

from __future__ import annotations

import dataclasses
import pickle
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from mailplan.plan.model import Route, Source
from mailplan.plan.quick import quick


@dataclass(frozen=True)
class Plain:
    name: str
    count: int = 3
    note: str | None = None


@quick
@dataclass(frozen=True)
class Quick:
    name: str
    count: int = 3
    note: str | None = None


@quick
@dataclass(frozen=True, kw_only=True)
class KeywordsOnly:
    name: str
    count: int = 1


def test_the_same_value_as_the_dataclass_makes() -> None:
    calls = [(("a",), {}), (("a", 5), {}), (("a",), {"note": "n"}), ((), {"name": "b"})]
    for args, kwargs in calls:
        plain, made = Plain(*args, **kwargs), Quick(*args, **kwargs)  # type: ignore[arg-type]
        assert dataclasses.astuple(plain) == dataclasses.astuple(made)
        assert repr(made) == repr(plain).replace("Plain", "Quick")
    assert Quick("a") == Quick("a", 3, None)
    assert hash(Quick("a")) == hash(Quick("a", 3))
    assert Quick("a") != Quick("a", 4)


def test_still_frozen_and_replaceable() -> None:
    made = Quick("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.name = "b"  # type: ignore[misc]
    assert dataclasses.replace(made, count=9) == Quick("a", 9)
    assert pickle.loads(pickle.dumps(Source("router.cgr", 4, 2))) == Source("router.cgr", 4, 2)


def test_arguments_checked_as_before() -> None:
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick("a", 1, None, "extra")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        KeywordsOnly("a")  # type: ignore[call-arg]
    assert KeywordsOnly(name="a").count == 1


def test_the_plan_model_uses_it_where_values_come_by_the_hundred_thousand() -> None:
    for cls in (Source, Route):
        assert cls.__init__.__code__.co_filename == "<string>"


def test_refused_where_init_does_more_than_set_fields() -> None:
    @dataclass
    class Mutable:
        name: str

    @dataclass(frozen=True)
    class Later:
        name: str

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True)
    class Factory:
        names: list[str] = field(default_factory=list)

    @dataclass(frozen=True)
    class Hidden:
        name: str
        size: int = field(init=False, default=0)

    @dataclass(frozen=True, slots=True)
    class Slotted:
        name: str

    for cls in (Mutable, Later, Factory, Hidden, Slotted):
        with pytest.raises(TypeError, match=r"quick|does more"):
            quick(cls)
    with pytest.raises(TypeError):
        quick(int)


def _allocated(make: Callable[[int], object]) -> int:
    tracemalloc.start()
    try:
        made = [make(i) for i in range(1000)]
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(made) == 1000
    return size


def test_as_small_as_the_dataclass_makes_it() -> None:
    """The values stay inline in the instance, as `object.__setattr__` keeps them: a
    `__dict__` made for each instance would cost memory and every read of a field."""
    assert _allocated(lambda i: Quick("a", i)) <= _allocated(lambda i: Plain("a", i))
