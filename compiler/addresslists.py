"""Address lists: from parsed entries to sorted, merged, disjoint intervals per family.

Entries are applied from the top: a line adds its addresses, a `!` line removes
them from what the lines above built, `#Name` stands for the whole named list.
The result does not depend on the number of lines: an address is in the list when
the last line that covers it adds it, which one sweep over the endpoints decides.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.compiler.syntax import Entry, Text
from mailplan.compiler.unit import ListSource
from mailplan.plan.model import AddressList, Interval, Source

Span = tuple[int, int]


@dataclass(frozen=True)
class _Compiled:
    ipv4: tuple[Span, ...]
    ipv6: tuple[Span, ...]


def addresslists(sources: Sequence[ListSource]) -> tuple[tuple[AddressList, ...], list[Diagnostic]]:
    """Compile every named list, resolving `#Name` includes (and reporting their cycles)."""
    by_name: dict[str, ListSource] = {}
    problems: list[Diagnostic] = []
    for source in sources:
        key = source.name.lower()
        if key in by_name:
            first = by_name[key]
            message = f"duplicate address list: {source.name} (first defined at line {first.line})"
            problems.append(error(source.file, source.line, source.column, "MP205", message))
            continue
        by_name[key] = source
    done: dict[str, _Compiled] = {}

    def build(source: ListSource, active: tuple[str, ...]) -> _Compiled:
        key = source.name.lower()
        if key not in done:
            done[key] = _build(source, (*active, key), by_name, build, problems)
        return done[key]

    result = []
    for source in by_name.values():
        compiled = build(source, ())
        result.append(
            AddressList(
                source.name,
                Source(source.file, source.line, source.column),
                tuple(Interval(_ip(4, a), _ip(4, b)) for a, b in compiled.ipv4),
                tuple(Interval(_ip(6, a), _ip(6, b)) for a, b in compiled.ipv6),
            )
        )
    return tuple(sorted(result, key=lambda a: a.name)), problems


def _build(
    source: ListSource,
    active: tuple[str, ...],
    by_name: dict[str, ListSource],
    build: Callable[[ListSource, tuple[str, ...]], _Compiled],
    problems: list[Diagnostic],
) -> _Compiled:
    lines: dict[int, list[tuple[int, int, int, bool]]] = {4: [], 6: []}
    for order, entry in enumerate(source.entries):
        if entry.form == "include":
            name = entry.values[0]
            included = by_name.get(name.value.lower())
            if included is None:
                problems.append(_error(entry, name, "MP207", f"no such address list: {name.value}"))
                continue
            if included.name.lower() in active:
                loop = active[active.index(included.name.lower()) :]
                cycle = " -> ".join([*loop, included.name.lower()])
                problems.append(
                    _error(entry, name, "MP108", f"address lists include each other: {cycle}")
                )
                continue
            compiled = build(included, active)
            for version, spans in ((4, compiled.ipv4), (6, compiled.ipv6)):
                lines[version] += [(a, b, order, not entry.exclude) for a, b in spans]
            continue
        span = _span(entry, problems)
        if span is not None:
            version, first, last = span
            lines[version].append((first, last, order, not entry.exclude))
    return _Compiled(_sweep(lines[4]), _sweep(lines[6]))


def _span(entry: Entry, problems: list[Diagnostic]) -> tuple[int, int, int] | None:
    addresses = []
    for text in entry.values[:2] if entry.form == "range" else entry.values[:1]:
        try:
            addresses.append(ipaddress.ip_address(text.value))
        except ValueError:
            problems.append(_error(entry, text, "MP105", f"not an IP address: {text.value}"))
            return None
    first = addresses[0]
    if entry.form == "single":
        return first.version, int(first), int(first)
    if entry.form == "range":
        last = addresses[1]
        if last.version != first.version:
            message = f"range mixes IPv{first.version} and IPv{last.version}: {first}-{last}"
            problems.append(_error(entry, entry.values[0], "MP107", message))
            return None
        if int(last) < int(first):
            message = f"range ends before it starts: {first}-{last}"
            problems.append(_error(entry, entry.values[0], "MP107", message))
            return None
        return first.version, int(first), int(last)
    bits_text = entry.values[1]
    written, width = bits_text.value, first.max_prefixlen
    bits = int(written) if len(written) <= 10 else -1  # no int() of 5,000 digits
    if not 0 < bits <= width:
        shown = bits if bits >= 0 else written[:10] + "…"
        message = f"/{shown} is not a prefix length for IPv{first.version} (1 to {width})"
        problems.append(_error(entry, bits_text, "MP106", message))
        return None
    host = width - bits
    stray = int(first) & ((1 << host) - 1)
    if stray:
        network = ipaddress.ip_network(f"{first}/{bits}", strict=False)
        message = (
            f"{first}/{bits} has host bits set: the low {host} bits must be zero "
            f"(they are {stray:#x}); the network is {network}"
        )
        problems.append(_error(entry, entry.values[0], "MP106", message))
        return None
    return first.version, int(first), int(first) + (1 << host) - 1


def _sweep(lines: list[tuple[int, int, int, bool]]) -> tuple[Span, ...]:
    """Spans covered where the latest line (highest order) that covers them adds them."""
    if not lines:
        return ()
    points = sorted({first for first, _, _, _ in lines} | {last + 1 for _, last, _, _ in lines})
    starting = sorted(lines)
    active: list[tuple[int, int, bool]] = []
    spans: list[Span] = []
    i = 0
    for k, point in enumerate(points[:-1]):
        while i < len(starting) and starting[i][0] <= point:
            _, last, order, adds = starting[i]
            heapq.heappush(active, (-order, last, adds))
            i += 1
        while active and active[0][1] < point:
            heapq.heappop(active)
        if active and active[0][2]:
            end = points[k + 1] - 1
            if spans and spans[-1][1] + 1 == point:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((point, end))
    return tuple(spans)


def _ip(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _error(entry: Entry, text: Text, code: str, message: str) -> Diagnostic:
    return error(entry.file, entry.line, text.column, code, message)
