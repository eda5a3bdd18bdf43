#!/usr/bin/env python3
"""How long `serve` takes to load a big plan, and whether a reload holds up its event loop.

For each size N this compiles the site of `compile_scale.py` (N routing records, N Client
IP lines), writes its plan.json, then measures:

- read: `plan.codec.load(path)`, as `serve --plan` does at start and at every reload
  (msgspec in pieces, `plan/trusted.py`);
- step by step: the same file through the check that `load` falls back on (JSON, schema,
  digest, decode; what every load did before), in the same run: the baseline;
- snapshot: what serve builds on a plan before it serves it (`runtime.serve.server.snapshot`:
  Router, Policy with its address lists, server rules, digest), without DNS;
- reload: a 1 ms ticker on a uvloop event loop while a reload replaces the plan served,
  as `Daemon.reload` does (the plan read and its snapshot built in threads, the old one
  retired and freed in a thread, `runtime/serve/retire.py`): the longest gap between
  ticks and the 99th percentile, against the same ticker with nothing else to do
  (idle), and against the same reload dropping the old plan on the loop, in the same run.

Each figure is the median of --repeats runs. Nothing is asserted;
docs/benchmarks.md has the figures.

    .venv/bin/python bench/plan_load.py                     # 1,000 10,000 100,000; ~3 min
    .venv/bin/python bench/plan_load.py --sizes 1000 --repeats 1    # seconds
    .venv/bin/python bench/plan_load.py --no-baseline       # skip the slow step-by-step read
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compile_scale import write_site

from mailplan.compiler import pipeline
from mailplan.plan import codec
from mailplan.plan.model import Plan
from mailplan.runtime.serve.retire import Reaper
from mailplan.runtime.serve.server import snapshot

SIZES = (1_000, 10_000, 100_000)


def timed(run: object) -> float:
    assert callable(run)
    gc.collect()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


async def ticking(seconds: float | None, work: object = None) -> list[float]:
    """Gaps between the ticks of a 1 ms ticker, for `seconds` or while `work` runs."""
    gaps: list[float] = []
    done = False

    async def tick() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.ensure_future(tick())
    if seconds is not None:
        await asyncio.sleep(seconds)
    else:
        assert callable(work)
        await work()
    done = True
    await ticker
    return gaps


def reload_gaps(path: Path, retiring: bool) -> tuple[list[float], list[float]]:
    """Ticker gaps while a reload replaces the plan served, as `Daemon.reload` does: read
    and snapshot in threads, then the old snapshot retired (`serve.retire`) and reaped in
    a thread; or, when not `retiring`, dropped on the loop (as before the reaper)."""
    served = [snapshot(codec.load(path))]
    reaper = Reaper()

    async def reload() -> None:
        plan = await asyncio.to_thread(codec.load, path)
        fresh = await asyncio.to_thread(snapshot, plan)
        del plan
        old, served[0] = served[0], fresh
        if retiring:
            reaper.retire(old, old.policy, old.policy.plan, old.policy.router)
        del old  # its last reference: freed here, on the loop, unless retired
        await asyncio.to_thread(reaper.reap)

    async def both() -> tuple[list[float], list[float]]:
        idle = await ticking(0.5)
        busy = await ticking(None, reload)
        return idle, busy

    return uvloop.run(both())


def p99(gaps: list[float]) -> float:
    ordered = sorted(gaps)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure(n: int, repeats: int, baseline: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"mailplan-load-{n}-") as folder:
        site = Path(folder) / "site"
        site.mkdir()
        write_site(site, n)
        plan = pipeline.compile_site(site).plan
        if plan is None:
            raise SystemExit(f"the site of {n} lines does not compile")
        path = Path(folder) / "plan.json"
        path.write_text(codec.dumps(plan), encoding="utf-8")
        text = path.read_text(encoding="utf-8")
        loaded: Plan = codec.load(path)
        if loaded != plan:
            raise SystemExit("the plan read back differs from the plan written")
        # the same plan step by step (and its schema code compiled, once, untimed)
        if baseline and codec._verified(codec._parsed(text, "plan"), "plan") != plan:
            raise SystemExit("the plan read step by step differs from the plan written")
        reads, steps, snaps, gaps_max, gaps_p99, idle_max, idle_p99 = [], [], [], [], [], [], []
        dropped_max = []
        for _ in range(repeats):
            reads.append(timed(lambda: codec.load(path)))
            if baseline:
                steps.append(timed(lambda: codec._verified(codec._parsed(text, "plan"), "plan")))
            snaps.append(timed(lambda: snapshot(loaded)))
            idle, busy = reload_gaps(path, True)
            dropped_max.append(max(reload_gaps(path, False)[1]))
            gaps_max.append(max(busy))
            gaps_p99.append(p99(busy))
            idle_max.append(max(idle))
            idle_p99.append(p99(idle))
        return {
            "size_mb": path.stat().st_size / 1e6,
            "read": statistics.median(reads),
            "steps": statistics.median(steps) if steps else float("nan"),
            "snapshot": statistics.median(snaps),
            "gap_max": statistics.median(gaps_max),
            "gap_p99": statistics.median(gaps_p99),
            "dropped_max": statistics.median(dropped_max),
            "idle_max": statistics.median(idle_max),
            "idle_p99": statistics.median(idle_p99),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the step-by-step read")
    arguments = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load:.1f}")
    header = (
        "lines | plan MB | read s | step by step s | ratio | snapshot s | read+snapshot s"
        " | reload gap max ms (p99) | old plan dropped on the loop: max ms"
        " | idle max ms (p99)"
    )
    rows = []
    for n in sorted(arguments.sizes):
        f = measure(n, arguments.repeats, not arguments.no_baseline)
        ratio = f["read"] / f["steps"] if f["steps"] == f["steps"] else float("nan")
        rows.append(
            f"{n:,} | {f['size_mb']:.1f} | {f['read']:.3f} | {f['steps']:.3f} | {ratio:.3f}"
            f" | {f['snapshot']:.3f} | {f['read'] + f['snapshot']:.3f}"
            f" | {f['gap_max'] * 1e3:.0f} ({f['gap_p99'] * 1e3:.1f}) | {f['dropped_max'] * 1e3:.0f}"
            f" | {f['idle_max'] * 1e3:.0f} ({f['idle_p99'] * 1e3:.1f})"
        )
        print(f"  {rows[-1]}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print(header)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
