"""Address lists: from parsed entries to sorted, merged, disjoint intervals per family.

Entries are applied from the top: a line adds its addresses, a `!` line removes
them from what the lines above built, `#Name` stands for the whole named list.
The result does not depend on the number of lines: an address is in the list when
the last line that covers it adds it, which one sweep over the endpoints decides.
"""

from __future__ import annotations

import heapq
import ipaddress
import socket
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
        address = _address(text.value)
        if address is None:
            problems.append(_error(entry, text, "MP105", f"not an IP address: {text.value}"))
            return None
        addresses.append(address)
    version, first = addresses[0]
    if entry.form == "single":
        return version, first, first
    if entry.form == "range":
        last_version, last = addresses[1]
        if last_version != version:
            both = f"{_shown(entry.values[0])}-{_shown(entry.values[1])}"
            message = f"range mixes IPv{version} and IPv{last_version}: {both}"
            problems.append(_error(entry, entry.values[0], "MP107", message))
            return None
        if last < first:
            both = f"{_shown(entry.values[0])}-{_shown(entry.values[1])}"
            message = f"range ends before it starts: {both}"
            problems.append(_error(entry, entry.values[0], "MP107", message))
            return None
        return version, first, last
    bits_text = entry.values[1]
    written, width = bits_text.value, 32 if version == 4 else 128
    bits = int(written) if len(written) <= 10 else -1  # no int() of 5,000 digits
    if not 0 < bits <= width:
        shown = bits if bits >= 0 else written[:10] + "…"
        message = f"/{shown} is not a prefix length for IPv{version} (1 to {width})"
        problems.append(_error(entry, bits_text, "MP106", message))
        return None
    host = width - bits
    stray = first & ((1 << host) - 1)
    if stray:
        written_first = _shown(entry.values[0])
        network = ipaddress.ip_network(f"{written_first}/{bits}", strict=False)
        message = (
            f"{written_first}/{bits} has host bits set: the low {host} bits must be zero "
            f"(they are {stray:#x}); the network is {network}"
        )
        problems.append(_error(entry, entry.values[0], "MP106", message))
        return None
    return version, first, first + (1 << host) - 1


def _address(text: str) -> tuple[int, int] | None:
    """The IP version and number of the address `text`, or None when it is none.

    `inet_pton` reads the usual forms some five times faster than `ipaddress` (a list may
    have 100,000 lines), and accepts no text that `ipaddress` refuses; whatever it does
    not read is `ipaddress`'s to accept or refuse, as it was before
    (`tests/test_addresslists.py` holds the two to the same answers)."""
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        try:
            return version, int.from_bytes(socket.inet_pton(family, text))
        except (OSError, ValueError):
            continue
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.version, int(address)


def _shown(text: Text) -> str:
    """An address of a diagnostic as `ipaddress` writes it (`::ffff:102:304`)."""
    return str(ipaddress.ip_address(text.value))


def _sweep(lines: list[tuple[int, int, int, bool]]) -> tuple[Span, ...]:
    """Spans covered where the latest line (highest order) that covers them adds them.

    Lines are taken by where they start, in runs that overlap (a line that starts past
    every line before it ends begins a new run): a line that overlaps no other adds its
    addresses or nothing, and only the lines of a run that overlap are swept together."""
    spans: list[Span] = []
    run: list[tuple[int, int, int, bool]] = []
    reach = -1
    for line in sorted(lines):
        if line[0] > reach:
            _covered(run, spans)
            run = [line]
        else:
            run.append(line)
        reach = max(reach, line[1])
    _covered(run, spans)
    return tuple(spans)


def _covered(run: list[tuple[int, int, int, bool]], spans: list[Span]) -> None:
    """Add to `spans` what a run of overlapping lines (sorted by their start) covers."""
    if len(run) == 1:
        first, last, _, adds = run[0]
        if adds:
            _add(spans, first, last)
        return
    points = sorted({first for first, _, _, _ in run} | {last + 1 for _, last, _, _ in run})
    active: list[tuple[int, int, bool]] = []
    i = 0
    for k, point in enumerate(points[:-1]):
        while i < len(run) and run[i][0] <= point:
            _, last, order, adds = run[i]
            heapq.heappush(active, (-order, last, adds))
            i += 1
        while active and active[0][1] < point:
            heapq.heappop(active)
        if active and active[0][2]:
            _add(spans, point, points[k + 1] - 1)


def _add(spans: list[Span], first: int, last: int) -> None:
    """Add a span after the last one, merged with it when the two touch."""
    if spans and spans[-1][1] + 1 == first:
        spans[-1] = (spans[-1][0], last)
    else:
        spans.append((first, last))


def _ip(version: int, value: int) -> str:
    """An address as `ipaddress` writes it (an IPv4 address as `ipaddress` makes it, faster)."""
    if version == 4:
        return socket.inet_ntoa(value.to_bytes(4))
    return str(ipaddress.IPv6Address(value))


def _error(entry: Entry, text: Text, code: str, message: str) -> Diagnostic:
    return error(entry.file, entry.line, text.column, code, message)
