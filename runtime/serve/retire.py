"""Plans that are no longer served, taken apart off the event loop.

A plan of 100,000 routing lines and the indexes built on it are a few million objects.
Whoever drops the last reference to them frees them all in that one call: some 0.2 s in
which nothing else runs. After a reload that is the event loop, when the old snapshot
is replaced or when the last session still using it ends.

So the old snapshot is retired instead of dropped: the elements of its big containers
(the plan's routes, the router's index lists and maps) are held here, apart. When the
snapshot's last user lets go, wherever that happens, freeing its containers costs one
decrement per element, a few milliseconds; the elements themselves are freed later by
`Reaper.reap`, in a thread, one by one in a Python loop that gives the interpreter to
the event loop between them.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

log = logging.getLogger("mailplan.server")

BIG = 256  # a container of more items than this has its items held apart
DEPTH = 8  # how far from the roots the walk looks for big containers


@dataclass(eq=False)
class Retired:
    roots: list[weakref.ref[object]]  # alive while anything serves from them
    held: list[list[object]]  # the items of their big containers


class Reaper:
    """Snapshots retired by reloads, until their last user lets go."""

    def __init__(self) -> None:
        self.waiting: list[Retired] = []

    def retire(self, *roots: object) -> None:
        """Hold the items of the big containers under `roots` (objects no longer served,
        whose users may still be finishing) until all of `roots` are gone."""
        refs = []
        for root in roots:
            try:
                refs.append(weakref.ref(root))
            except TypeError:  # no weak reference to it: it cannot be watched, nor held
                return
        self.waiting.append(Retired(refs, held(roots)))

    def reap(self) -> int:
        """Free the items of what no one uses any more, one at a time (to be called in a
        thread); how many retired snapshots were freed."""
        gone = [retired for retired in self.waiting if not any(r() for r in retired.roots)]
        for retired in gone:
            self.waiting.remove(retired)  # `retire` may add to the list meanwhile
            while retired.held:
                items = retired.held.pop()
                while items:
                    items.pop()  # one item's own objects freed; the loop may run between
        return len(gone)


def held(roots: tuple[object, ...]) -> list[list[object]]:
    """The items of every container of more than BIG items reachable from `roots`
    through attributes, tuples, lists, sets and dict values, each in a list of its own;
    the walk does not go into the containers it takes (their items are what is held)."""
    taken: list[list[object]] = []
    seen: set[int] = set()
    todo = [(root, 0) for root in roots]
    while todo:
        value, depth = todo.pop()
        if id(value) in seen or depth > DEPTH or isinstance(value, _ATOMS):
            continue
        seen.add(id(value))
        items = _items(value)
        if len(items) > BIG:
            taken.append(items)
        else:
            todo += [(item, depth + 1) for item in items]
    return taken


_ATOMS = (str, bytes, int, float, type(None), type)


def _items(value: object) -> list[object]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, (tuple, list, set, frozenset)):
        return list(value)
    attributes = getattr(value, "__dict__", None)
    if attributes is not None:
        return list(attributes.values())
    slots = getattr(type(value), "__slots__", ())
    return [getattr(value, slot, None) for slot in ([slots] if isinstance(slots, str) else slots)]
