#!/usr/bin/env python3
"""How compiling and routing scale with the size of a site.

For each size N this writes, in a temporary directory, a site whose routing table
has N records and whose Client IPs list has N lines, then measures:

- compiling it: `compile_site` end to end, split by pass (load, schema, parse,
  resolve, checks) and, inside `checks`, the Router build and each check, with the
  time CPython's cyclic garbage collector took in each;
- the plan file: `plan.codec.dumps` (as `mailplan build` writes plan.json) and
  `plan.codec.loads` (as the server reads it), once each;
- building the `Router` from the compiled plan on its own, as the server does;
- routing: `Router.route` on a random sample of addresses, most of them matching
  records spread over the whole table, the rest matching none;
- address lists: `in` on the `AddressSet` of the Client IPs, for addresses that are
  in the list, excluded from it by `!` lines, or outside it.

Lookups per second at each size are compared with the smallest size: a ratio near
1.0 means that routing one address (or looking up one IP) costs the same whatever
the size of the table. Every sampled lookup is checked to give the expected
result; nothing here asserts a timing. docs/benchmarks.md has the figures.

    .venv/bin/python bench/compile_scale.py                  # 100 ... 100,000, ~2 min
    .venv/bin/python bench/compile_scale.py --sizes 1000 10000 --no-plan-file
    .venv/bin/python bench/compile_scale.py --quick          # a smoke run of seconds
    .venv/bin/python bench/compile_scale.py --no-gc          # the collector off
    .venv/bin/python bench/compile_scale.py --shape one-domain --sizes 100 1000 2000 \
        --no-plan-file --lookups 2000 --repeats 3            # patterns sharing a domain
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

from mailplan.compiler import pipeline
from mailplan.compiler.diagnostics import has_errors
from mailplan.compiler.unit import Unit
from mailplan.plan import codec
from mailplan.runtime.decide.addresslist import AddressSet
from mailplan.runtime.decide.router import Router

SIZES = (100, 1_000, 10_000, 100_000)
QUICK_SIZES = (100, 1_000)
IP_ROUNDS = 5  # each timed run of IP lookups goes over the sample this many times

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
#   0-4  <user000042@ex000004.test> = alice@example.com   exact addresses, 5 per domain
#   5-6  <*@pat000045.test> = *@example.com               address patterns
#   7-8  dom000047.test = example.com                     domain records
#   9    *.sub000049.corp.example = example.com           suffix patterns, in 4 zones
# Numbers have 6 digits at every size, so that names (and the suffix lengths the
# index tries) do not grow with the table: only the number of records does.
# Exact addresses share a domain five at a time, every other record has a domain
# of its own: none shadows another, none loops, none relays, and every target
# exists (alice, or mail to unknown: discard).
#
# Client IPs line i owns the /24 block BASE + i * 256, by i % 10:
#   0-3  a single address (block + 7)
#   4-5  a range (block + 10 to block + 99)
#   6-8  the /24 network
#   9    !(previous block + 66): removes one address from the network above it
# ---------------------------------------------------------------------------

BASE = int(ipaddress.IPv4Address("16.0.0.0"))
WIDTH = 6  # names are numbered with this many digits, so they are as long at every size
ZONES = ("test", "example.net", "corp.example", "internal.example.org")


def name(prefix: str, i: int) -> str:
    return f"{prefix}{i:0{WIDTH}d}"


def record(i: int) -> str:
    form = i % 10
    if form < 5:
        return f"<{name('user', i)}@{name('ex', i // 10)}.test> = alice@example.com"
    if form < 7:
        return f"<*@{name('pat', i)}.test> = *@example.com"
    if form < 9:
        return f"{name('dom', i)}.test = example.com"
    return f"*.{name('sub', i)}.{ZONES[i // 10 % len(ZONES)]} = example.com"


def hit_address(i: int, rng: random.Random) -> str:
    """An address that routing record i, and no earlier one, matches."""
    form = i % 10
    if form < 5:
        return f"{name('user', i)}@{name('ex', i // 10)}.test"
    who = f"u{rng.randrange(10**6)}"
    if form < 7:
        return f"{who}@{name('pat', i)}.test"
    if form < 9:
        return f"{who}@{name('dom', i)}.test"
    return f"{who}@host{rng.randrange(100)}.{name('sub', i)}.{ZONES[i // 10 % len(ZONES)]}"


def miss_address(n: int, rng: random.Random) -> str:
    """An address that no routing record matches (built-in routing decides)."""
    choice = rng.randrange(4)
    if choice == 0:  # a hosted account
        return "alice@example.com"
    if choice == 1:  # a domain that has exact records, but not this name
        return f"nobody{rng.randrange(10**6)}@{name('ex', rng.randrange(max(n // 10, 1)))}.test"
    if choice == 2:  # near a suffix record, but not under it
        return f"x@{name('sub', rng.randrange(n))}.{rng.choice(ZONES)}"
    return f"someone@elsewhere{rng.randrange(10**6)}.test"  # foreign: SMTP


# The `one-domain` shape (--shape one-domain): N local-part patterns in one domain,
#   <team000042-*@big.test> = *@example.com
# as a site that gives each team a prefix might write them. They all share the one
# literal domain big.test, so they are not spread over the index.


def one_domain_record(i: int) -> str:
    return f"<{name('team', i)}-*@big.test> = *@example.com"


def one_domain_hit(i: int, rng: random.Random) -> str:
    return f"{name('team', i)}-u{rng.randrange(10**6)}@big.test"


def one_domain_miss(n: int, rng: random.Random) -> str:
    choice = rng.randrange(3)
    if choice == 0:
        return "alice@example.com"
    if choice == 1:  # in big.test, but no team's prefix
        return f"nobody{rng.randrange(10**6)}@big.test"
    return f"someone@elsewhere{rng.randrange(10**6)}.test"


@dataclass(frozen=True)
class Shape:
    record: Callable[[int], str]
    hit: Callable[[int, random.Random], str]
    miss: Callable[[int, random.Random], str]


SHAPES = {
    "mix": Shape(record, hit_address, miss_address),
    "one-domain": Shape(one_domain_record, one_domain_hit, one_domain_miss),
}


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


def write_site(directory: Path, n: int, shape: Shape = SHAPES["mix"]) -> None:
    (directory / "site.yaml").write_text(SITE_YAML, encoding="utf-8")
    with (directory / "router.cgr").open("w", encoding="utf-8") as out:
        out.writelines(shape.record(i) + "\n" for i in range(n))
    with (directory / "clients.txt").open("w", encoding="utf-8") as out:
        out.writelines(list_line(i) + "\n" for i in range(n))


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


@dataclass
class Figures:
    size: int
    compile_s: float = 0.0
    passes: dict[str, float] = field(default_factory=dict)  # seconds in each pass
    collector: dict[str, float] = field(default_factory=dict)  # GC seconds in each pass
    write_s: float | None = None
    read_s: float | None = None
    router_s: float = 0.0
    routes_per_s: float = 0.0
    ips_per_s: float = 0.0
    warnings: int = 0

    @property
    def gc_s(self) -> float:
        return sum(self.collector.values())


@contextmanager
def timed_passes(figures: Figures) -> Iterator[None]:
    """Time each pass of the pipeline, and the Router and each check inside `checks`,
    while `compile_site` itself runs unchanged; charge the time CPython's cyclic garbage
    collector takes to the innermost pass that was running when it collected."""
    running: list[str] = []
    started: list[float] = []

    def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            figures.passes.setdefault(name, 0.0)
            running.append(name)
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                figures.passes[name] += time.perf_counter() - start
                running.pop()

        return timed

    def collecting(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            where = running[-1] if running else "(between passes)"
            spent = time.perf_counter() - started.pop()
            figures.collector[where] = figures.collector.get(where, 0.0) + spent

    saved = {name: getattr(pipeline, name) for name in ("load", "PASSES", "CHECKS", "Router")}
    timed = {
        "load": wrap("load", saved["load"]),
        "PASSES": tuple(wrap(step.__name__, step) for step in saved["PASSES"]),
        "CHECKS": tuple(wrap(check.__name__, check) for check in saved["CHECKS"]),
        "Router": wrap("Router", saved["Router"]),
    }
    for name, value in timed.items():
        setattr(pipeline, name, value)
    gc.callbacks.append(collecting)
    try:
        yield
    finally:
        gc.callbacks.remove(collecting)
        for name, value in saved.items():
            setattr(pipeline, name, value)


def best_of(repeats: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def once(run: Callable[[], object]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def warm_up() -> None:
    """Compile a small site once, untimed: lark builds its parsers and jsonschema its
    validators on first use, a cost that would otherwise land on the first size."""
    with tempfile.TemporaryDirectory(prefix="mailplan-bench-warm-") as folder:
        write_site(Path(folder), 10)
        unit = pipeline.compile_site(Path(folder))
        if unit.plan is not None:
            codec.loads(codec.dumps(unit.plan))


def measure(
    n: int, lookups: int, repeats: int, seed: int, plan_file: bool, shape: Shape
) -> Figures:
    figures = Figures(n)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix=f"mailplan-bench-{n}-") as folder:
        site = Path(folder)
        write_site(site, n, shape)
        # Compile up to `repeats` times, the best counts, but stop after 2 s of compiling:
        # the large sizes are compiled once.
        spent = 0.0
        for attempt in range(repeats):
            trial = Figures(n)
            gc.collect()
            with timed_passes(trial):
                start = time.perf_counter()
                unit: Unit = pipeline.compile_site(site)
                trial.compile_s = time.perf_counter() - start
            if attempt == 0 or trial.compile_s < figures.compile_s:
                figures.compile_s, figures.passes = trial.compile_s, trial.passes
                figures.collector = trial.collector
            spent += trial.compile_s
            if spent > 2.0:
                break
    if unit.plan is None or has_errors(unit.diagnostics):
        shown = "\n".join(d.headline() for d in unit.diagnostics[:10])
        raise SystemExit(f"the generated site of {n} lines does not compile:\n{shown}")
    figures.warnings = len(unit.diagnostics)
    plan = unit.plan
    if len(plan.routes) != n:
        raise SystemExit(f"expected {n} routes, the plan has {len(plan.routes)}")

    # The plan file, as `mailplan build` writes it and the server reads it (once: slow).
    if plan_file:
        figures.write_s, text = once(lambda: codec.dumps(plan))
        figures.read_s, loaded = once(lambda: codec.loads(text))
        if loaded != plan:
            raise SystemExit("the plan read back from its JSON differs from the plan written")
        del text, loaded

    figures.router_s = best_of(repeats, lambda: Router(plan))
    router = Router(plan)

    # Routing: 80% of the sample hits records chosen uniformly over the whole table.
    sample: list[str] = []
    for _ in range(lookups):
        if rng.random() < 0.8:
            i = rng.randrange(n)
            address = shape.hit(i, rng)
            routing = router.route(address)
            first = routing.steps[0].source
            if first is None or first.file != "router.cgr" or first.line != i + 1:
                raise SystemExit(f"{address} should hit router.cgr:{i + 1}, got {routing.steps}")
        else:
            address = shape.miss(n, rng)
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
    addresses = [ip for ip, _ in probes] * IP_ROUNDS  # an IP lookup is quick: more of them
    elapsed = best_of(repeats, lambda: [ip in ips for ip in addresses])
    figures.ips_per_s = len(addresses) / elapsed
    return figures


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _per_line(seconds: float | None, n: int, digits: int = 0) -> str:
    return "-" if seconds is None else f"{seconds / n * 1e6:.{digits}f}"


def _seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def report(results: list[Figures], lookups: int, repeats: int) -> str:
    base = results[0]
    building = table(
        [
            "lines",
            "compile s",
            "µs/line",
            "of it GC s",
            "write plan s",
            "µs/line",
            "read plan s",
            "µs/line",
            "Router ms",
            "µs/line",
        ],
        [
            [
                f"{f.size:,}",
                f"{f.compile_s:.2f}",
                _per_line(f.compile_s, f.size),
                f"{f.gc_s:.2f}",
                _seconds(f.write_s),
                _per_line(f.write_s, f.size),
                _seconds(f.read_s),
                _per_line(f.read_s, f.size),
                f"{f.router_s * 1e3:.1f}",
                f"{f.router_s / f.size * 1e6:.2f}",
            ]
            for f in results
        ],
    )
    lookups_table = table(
        [
            "lines",
            "routes/s",
            "µs/route",
            f"vs {base.size:,}",
            "IPs/s",
            "µs/IP",
            f"vs {base.size:,}",
        ],
        [
            [
                f"{f.size:,}",
                f"{f.routes_per_s:,.0f}",
                f"{1e6 / f.routes_per_s:.1f}",
                f"{f.routes_per_s / base.routes_per_s:.2f}",
                f"{f.ips_per_s:,.0f}",
                f"{1e6 / f.ips_per_s:.2f}",
                f"{f.ips_per_s / base.ips_per_s:.2f}",
            ]
            for f in results
        ],
    )
    names = list(dict.fromkeys(name for f in results for name in f.passes))
    per_pass = table(
        ["lines", *names],
        [
            [f"{f.size:,}"] + [_per_line(f.passes.get(k, 0.0), f.size, 1) for k in names]
            for f in results
        ],
    )
    in_gc = table(
        ["lines", *names],
        [
            [f"{f.size:,}"] + [_per_line(f.collector.get(k, 0.0), f.size, 1) for k in names]
            for f in results
        ],
    )
    return "\n\n".join(
        [
            "Building: N routing records + N Client IP lines (the µs/line divide by N)",
            building,
            f"Lookups: {lookups:,} addresses and {lookups:,} IPs ({IP_ROUNDS} times) per run, "
            f"best of {repeats}; vs = lookups/s over those at {base.size:,}",
            lookups_table,
            "compile_site by pass, µs per line (Router and check_* run inside checks)",
            per_pass,
            "of which CPython's cyclic GC, µs per line (charged to the innermost pass)",
            in_gc,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="sizes to run (default: 100 to 100000)"
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (100 and 1000)")
    parser.add_argument("--lookups", type=int, help="lookups per timed run (default 20,000)")
    parser.add_argument("--repeats", type=int, help="timed runs, the best counts (default 5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="mix",
        help="the routing table: mix (default) of exact addresses, address patterns, domain "
        "and suffix records, spread over many domains; or one-domain: N <prefix-*@big.test> "
        "patterns in one domain (slow: use --sizes 1000 2000 4000 --no-plan-file)",
    )
    parser.add_argument(
        "--no-plan-file",
        action="store_true",
        help="skip writing and reading plan.json (codec.dumps, codec.loads): the slow part",
    )
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="turn CPython's cyclic garbage collector off, to tell its cost from the code's",
    )
    arguments = parser.parse_args(argv)
    sizes = sorted(set(arguments.sizes or (QUICK_SIZES if arguments.quick else SIZES)))
    lookups = arguments.lookups or (2_000 if arguments.quick else 20_000)
    repeats = arguments.repeats or (1 if arguments.quick else 5)
    shape = SHAPES[arguments.shape]
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"
        + f", routing table shape {arguments.shape}"
        + (", cyclic GC off" if arguments.no_gc else ""),
        flush=True,
    )
    if arguments.no_gc:
        gc.disable()
    warm_up()
    results = []
    for n in sizes:
        started = time.perf_counter()
        figures = measure(n, lookups, repeats, arguments.seed, not arguments.no_plan_file, shape)
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
