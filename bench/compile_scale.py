#!/usr/bin/env python3
"""How compiling and routing scale with the size of a site.

For each size N this writes, in a temporary directory, a site whose routing table
has N records and whose Client IPs list has N lines, then measures:

- compiling it: `compile_site` end to end, split by pass (load, schema, parse,
  resolve, checks) and, inside `checks`, the Router build and each check;
- building the `Router` from the compiled plan on its own, as the server does;
- routing: `Router.route` on a random sample of addresses, most of them matching
  records spread over the whole table, the rest matching none;
- address lists: `in` on the `AddressSet` of the Client IPs, for addresses that are
  in the list, excluded from it by `!` lines, or outside it.

Lookups per second at each size are compared with the smallest size: a ratio near
1.0 means that routing one address (or looking up one IP) costs the same whatever
the size of the table. Nothing here asserts a timing; the figures are printed.

    .venv/bin/python bench/compile_scale.py                  # 100 ... 100,000
    .venv/bin/python bench/compile_scale.py --sizes 1000 10000
    .venv/bin/python bench/compile_scale.py --quick          # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compiler import pipeline  # noqa: E402
from compiler.diagnostics import has_errors  # noqa: E402
from compiler.unit import Unit  # noqa: E402
from runtime.addresslist import AddressSet  # noqa: E402
from runtime.router import Router  # noqa: E402

SIZES = (100, 1_000, 10_000, 100_000)
QUICK_SIZES = (100, 1_000)

SITE_YAML = """\
server:
  hostname: mail.example.com
  main_domain: example.com
  client_ips: {file: clients.txt}
domains:
  example.com:
    unknown: discard
    accounts:
      alice: {}
routing: router.cgr
"""

# ---------------------------------------------------------------------------
# The generated site
#
# Routing record i (0-based, written on line i + 1 of router.cgr), by i % 10:
#   0-4  <user{i}@ex{i // 10}.test> = alice@example.com    exact addresses, 5 per domain
#   5-6  <*@pat{i}.test> = *@example.com                   address patterns
#   7-8  dom{i}.test = example.com                         domain records
#   9    *.sub{i}.test = example.com                       suffix patterns
# Every record has a domain of its own kind, so none shadows another, none loops,
# none relays, and every target exists (alice, or mail to unknown: discard).
#
# Client IPs line i owns the /24 block BASE + i * 256, by i % 10:
#   0-3  a single address (block + 7)
#   4-5  a range (block + 10 to block + 99)
#   6-8  the /24 network
#   9    !(previous block + 66): removes one address from the network above it
# ---------------------------------------------------------------------------

BASE = int(ipaddress.IPv4Address("16.0.0.0"))


def record(i: int) -> str:
    form = i % 10
    if form < 5:
        return f"<user{i}@ex{i // 10}.test> = alice@example.com"
    if form < 7:
        return f"<*@pat{i}.test> = *@example.com"
    if form < 9:
        return f"dom{i}.test = example.com"
    return f"*.sub{i}.test = example.com"


def hit_address(i: int, rng: random.Random) -> str:
    """An address that routing record i, and no earlier one, matches."""
    form = i % 10
    if form < 5:
        return f"user{i}@ex{i // 10}.test"
    who = f"u{rng.randrange(10**6)}"
    if form < 7:
        return f"{who}@pat{i}.test"
    if form < 9:
        return f"{who}@dom{i}.test"
    return f"{who}@host{rng.randrange(100)}.sub{i}.test"


def miss_address(n: int, rng: random.Random) -> str:
    """An address that no routing record matches (built-in routing decides)."""
    choice = rng.randrange(4)
    if choice == 0:  # a hosted account
        return "alice@example.com"
    if choice == 1:  # a domain that has exact records, but not this name
        return f"nobody{rng.randrange(10**6)}@ex{rng.randrange(max(n // 10, 1))}.test"
    if choice == 2:  # near a suffix record, but not under it
        return f"x@sub{rng.randrange(n)}.test"
    return f"someone@elsewhere{rng.randrange(10**6)}.test"  # foreign: SMTP


def list_line(i: int) -> str:
    block = BASE + i * 256
    form = i % 10
    if form < 4:
        return str(ipaddress.IPv4Address(block + 7))
    if form < 6:
        first, last = ipaddress.IPv4Address(block + 10), ipaddress.IPv4Address(block + 99)
        return f"{first}-{last}"
    if form < 9:
        return f"{ipaddress.IPv4Address(block)}/24"
    return f"!{ipaddress.IPv4Address(block - 256 + 66)}"


def list_probe(n: int, rng: random.Random) -> tuple[str, bool]:
    """An IP address to look up in a list of n lines, and whether it is in the list."""
    i = rng.randrange(n)
    block = BASE + i * 256
    form = i % 10
    if rng.random() < 0.2:  # outside every block
        return str(ipaddress.IPv4Address(BASE - 1 - rng.randrange(10**6))), False
    if form < 4:
        if rng.random() < 0.5:
            return str(ipaddress.IPv4Address(block + 7)), True
        return str(ipaddress.IPv4Address(block + 8)), False
    if form < 6:
        offset = rng.randrange(256)
        return str(ipaddress.IPv4Address(block + offset)), 10 <= offset <= 99
    if form < 8 or (form == 8 and i == n - 1):
        return str(ipaddress.IPv4Address(block + rng.randrange(256))), True
    if form == 8:  # a network whose address 66 the next line removes
        offset = rng.choice((66, rng.randrange(256)))
        return str(ipaddress.IPv4Address(block + offset)), offset != 66
    return str(ipaddress.IPv4Address(block + rng.randrange(256))), False  # an exclusion's block


def write_site(directory: Path, n: int) -> None:
    (directory / "site.yaml").write_text(SITE_YAML, encoding="utf-8")
    with (directory / "router.cgr").open("w", encoding="utf-8") as out:
        out.writelines(record(i) + "\n" for i in range(n))
    with (directory / "clients.txt").open("w", encoding="utf-8") as out:
        out.writelines(list_line(i) + "\n" for i in range(n))


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


@dataclass
class Figures:
    size: int
    compile_s: float = 0.0
    passes: dict[str, float] = field(default_factory=dict)
    router_s: float = 0.0
    routes_per_s: float = 0.0
    ips_per_s: float = 0.0
    warnings: int = 0


@contextmanager
def timed_passes(into: dict[str, float]) -> Iterator[None]:
    """Time each pass of the pipeline, and the Router and each check inside `checks`,
    while `compile_site` itself runs unchanged."""

    def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                into[name] = into.get(name, 0.0) + time.perf_counter() - start

        return timed

    saved = (pipeline.load, pipeline.PASSES, pipeline.CHECKS, pipeline.Router)
    pipeline.load = wrap("load", pipeline.load)
    pipeline.PASSES = tuple(wrap(step.__name__, step) for step in pipeline.PASSES)
    pipeline.CHECKS = tuple(wrap(check.__name__, check) for check in pipeline.CHECKS)
    pipeline.Router = wrap("Router", pipeline.Router)  # type: ignore[misc]
    try:
        yield
    finally:
        pipeline.load, pipeline.PASSES, pipeline.CHECKS, pipeline.Router = saved  # type: ignore[misc]


def best_of(repeats: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(n: int, lookups: int, repeats: int, seed: int) -> Figures:
    figures = Figures(n)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix=f"mailplan-bench-{n}-") as folder:
        site = Path(folder)
        write_site(site, n)
        gc.collect()
        with timed_passes(figures.passes):
            start = time.perf_counter()
            unit: Unit = pipeline.compile_site(site)
            figures.compile_s = time.perf_counter() - start
    if unit.plan is None or has_errors(unit.diagnostics):
        shown = "\n".join(d.headline() for d in unit.diagnostics[:10])
        raise SystemExit(f"the generated site of {n} lines does not compile:\n{shown}")
    figures.warnings = len(unit.diagnostics)
    plan = unit.plan
    if len(plan.routes) != n:
        raise SystemExit(f"expected {n} routes, the plan has {len(plan.routes)}")

    figures.router_s = best_of(repeats, lambda: Router(plan))
    router = Router(plan)

    # Routing: 80% of the sample hits records chosen uniformly over the whole table.
    sample: list[str] = []
    for _ in range(lookups):
        if rng.random() < 0.8:
            i = rng.randrange(n)
            address = hit_address(i, rng)
            routing = router.route(address)
            first = routing.steps[0].source
            if first is None or first.file != "router.cgr" or first.line != i + 1:
                raise SystemExit(f"{address} should hit router.cgr:{i + 1}, got {routing.steps}")
        else:
            address = miss_address(n, rng)
            routing = router.route(address)
            if routing.steps[0].source is not None and routing.steps[0].source.file == "router.cgr":
                raise SystemExit(f"{address} should match no record, got {routing.steps}")
        if routing.module == "ERROR":
            raise SystemExit(f"{address} is rejected: {routing}")
        sample.append(address)
    route = router.route
    elapsed = best_of(repeats, lambda: [route(address) for address in sample])
    figures.routes_per_s = lookups / elapsed

    # Address lists: the compiled Client IPs.
    (compiled,) = [a for a in plan.address_lists if a.name == "client_ips"]
    ips = AddressSet(compiled)
    probes = [list_probe(n, rng) for _ in range(lookups)]
    for ip, expected in probes:
        if (ip in ips) != expected:
            raise SystemExit(f"{ip} should {'' if expected else 'not '}be in the list")
    addresses = [ip for ip, _ in probes]
    elapsed = best_of(repeats, lambda: [ip in ips for ip in addresses])
    figures.ips_per_s = lookups / elapsed
    return figures


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

PASS_COLUMNS = (
    "load",
    "schema",
    "parse",
    "resolve",
    "checks",
    "Router",
    "check_names",
    "check_routing",
    "check_relay",
    "check_listeners",
)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def report(results: list[Figures], lookups: int, repeats: int) -> str:
    first = results[0]
    main = [
        [
            f"{f.size:,}",
            f"{f.compile_s:.3f}",
            f"{f.compile_s / f.size * 1e6:.0f}",
            f"{f.router_s * 1e3:.2f}",
            f"{f.router_s / f.size * 1e6:.2f}",
            f"{f.routes_per_s:,.0f}",
            f"{f.routes_per_s / first.routes_per_s:.2f}",
            f"{f.ips_per_s:,.0f}",
            f"{f.ips_per_s / first.ips_per_s:.2f}",
        ]
        for f in results
    ]
    header = [
        "lines",
        "compile s",
        "µs/line",
        "Router ms",
        "µs/line",
        "routes/s",
        f"vs {first.size:,}",
        "IP lookups/s",
        f"vs {first.size:,}",
    ]
    passes = [
        [f"{f.size:,}"] + [f"{f.passes.get(name, 0.0):.3f}" for name in PASS_COLUMNS]
        for f in results
    ]
    per_line = [
        [f"{f.size:,}"] + [f"{f.passes.get(name, 0.0) / f.size * 1e6:.1f}" for name in PASS_COLUMNS]
        for f in results
    ]
    return "\n\n".join(
        [
            f"N routing records + N Client IP lines; {lookups:,} lookups, best of {repeats}",
            table(header, main),
            "compile_site by pass, seconds (Router and check_* run inside checks)",
            table(["lines", *PASS_COLUMNS], passes),
            "compile_site by pass, µs per line",
            table(["lines", *PASS_COLUMNS], per_line),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="sizes to run (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--lookups", type=int, help="lookups per timed run (default 20,000)")
    parser.add_argument("--repeats", type=int, help="timed runs, the best counts (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args(argv)
    sizes = sorted(set(arguments.sizes or (QUICK_SIZES if arguments.quick else SIZES)))
    lookups = arguments.lookups or (2_000 if arguments.quick else 20_000)
    repeats = arguments.repeats or (1 if arguments.quick else 3)
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    results = []
    for n in sizes:
        started = time.perf_counter()
        figures = measure(n, lookups, repeats, arguments.seed)
        results.append(figures)
        print(
            f"  {n:,} lines: compiled in {figures.compile_s:.2f} s "
            f"({figures.warnings} warnings), whole size {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    print()
    print(report(results, lookups, repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
