#!/usr/bin/env python3
"""How many messages per second mailplan relays, from accept to delivery at a loopback
SMTP sink, against Postfix relaying the same load to the same sink.

- The sink: Postfix's `smtp-sink` (C, one process) on a free port of 127.0.0.1; it
  takes every message, throws it away and prints a running count (`-c`), which this
  script reads. Without smtp-sink, an aiosmtpd sink in a process of its own (`_sink`
  below) prints the same count. The report says which, and the sink's CPU per
  message, to show it is not the bottleneck.
- mailplan: `mailplan serve SITE --root DIR --resolver IP:PORT --smtp-port SINKPORT` on
  the site of bench/smtp_accept.py (one listener on a free port of 127.0.0.1,
  `tls: none`, `auth: none`, client_ips 127.0.0.1, so the client may relay; one local
  domain, bench.test). The target domains `d1.bench.test` ... `d20.bench.test` have
  MX records (`dN IN MX 10 sink`, `sink IN A 127.0.0.1`, TTL 300) served by BIND's
  `named` on loopback (tests/namedkit.py), so mailplan does its real MX look-ups (and
  caches the answers for their TTL).
- Postfix (`--with-postfix`): set up as bench/smtp_accept.py does (installed with
  apt-get if missing; smtpd on 127.0.0.1:2625, cleanup fsyncs before 250), and for
  the time of this script `relay_domains` = the target domains and `transport_maps`
  = an `inline:` map sending each of them to `smtp:[127.0.0.1]:SINKPORT` (no DNS).
  /etc/postfix/main.cf is copied before and put back after (then `postfix reload`,
  or `postfix stop` if this script started it). Delivery concurrency stays at
  Postfix's defaults, printed at the start. Since every domain has the same next
  hop, Postfix's queue manager treats them as one destination.

Cells: 1 and 20 target domains. Load: 20 clients, each Postfix's `smtp-source -d -s 1`
(one connection, HELO once, then MAIL / RCPT / DATA per message, no pipelining) with
its share of the messages and one recipient, `b@dK.bench.test` with K = client mod
domains + 1; so the messages are spread evenly over the domains. 2 KiB of body
(smtp-source's `-l`). Without smtp-source, one Python process runs the 20 clients
(bench/smtp_accept.py's client). The figure of a measurement is the messages counted
by the sink over the seconds from the start of the clients until the sink has all of
them and the server's queue is empty; the figure of a cell is the median over the
rounds. Each round runs every cell on every server, the order of the servers
rotating from cell to cell and round to round. Acceptances and deliveries are
counted on the server side too (mailplan's log, Postfix's log); a run that loses
one says so.

CPU ms/msg is the server's CPU time (user + system, all threads; for Postfix, master
and all its children) over the same span plus the time to settle, per message;
"others" is the CPU the rest of the machine used meanwhile, a noise gauge.

`--dkim ALGORITHM` (ed25519 or rsa) adds a server, "signed": the same mailplan with a
DKIM key for the senders' domain (x.test), so that every message is signed before it
is queued (docs/dkim.md); the report gives signed / mailplan per cell, the cost of
signing in the same run. Issue 18 aims at 0.9 or more with ed25519 at 2 KiB.

`--tls-off` adds a server, "no-tls-policies": the same mailplan with
`outbound.tls: {mta_sts: false, dane: false, reports: false}`, so that no policy is
looked up and no session counted (docs/delivery.md, TLS); the report gives
mailplan / no-tls-policies per cell, the cost of honouring other domains' TLS policies
(here: a `_mta-sts` TXT look-up per batch, NXDOMAIN and cached, and the TLS-RPT counts).

`--variant NAME=COMMAND` adds another build of mailplan to the run (COMMAND is given
`serve SITE --root DIR ...`, e.g. the `mailplan` of another checkout's virtualenv), the
same load interleaved with the others; the report gives mailplan / NAME per cell: a
change measured against the code before it in the same run.

`--profile DIR` instead records mailplan with py-spy in both cells (on-CPU, then
wall-clock) and prints where its time goes per message (bench/smtp_accept.py's
analysis).

Nothing here asserts a timing. Network only to 127.0.0.1.

    .venv/bin/python bench/relay_throughput.py --with-postfix          # ~4 min
    .venv/bin/python bench/relay_throughput.py --quick                 # seconds; no Postfix
    .venv/bin/python bench/relay_throughput.py --with-postfix --count 5000 --rounds 5
    .venv/bin/python bench/relay_throughput.py --quick --dkim ed25519      # signing's cost
    .venv/bin/python bench/relay_throughput.py --profile /tmp/relay-prof
    .venv/bin/python bench/relay_throughput.py --with-postfix \
        --variant "main=/work/base-relay/.venv/bin/mailplan"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtp_accept import (
    HOST,
    POSTFIX_LOG,
    POSTFIX_PORT,
    POSTFIX_QUEUES,
    ROOT,
    SENDER,
    LogCounter,
    Mailplan,
    Postfix,
    Server,
    analyse,
    build_message,
    cpu_seconds,
    free_port,
    machine,
    machine_busy,
    postfix_version,
    py_spy,
    setup_postfix,
    smtp_source,
    wait_port,
)
from smtp_accept import _client as smtp_client

CELLS = (1, 20)  # target domains
CLIENTS = 20
SIZE = 2048
STALL = 30.0  # seconds without a delivery before a measurement gives up
SETTLE_TIMEOUT = 60.0
CACHE_TIME = 2.5  # Postfix keeps an idle connection for smtp_connection_cache_time_limit (2 s)
MAIN_CF = Path("/etc/postfix/main.cf")
POSTFIX_SETTINGS = (  # printed: what decides Postfix's delivery concurrency
    "default_destination_concurrency_limit",
    "smtp_destination_concurrency_limit",
    "initial_destination_concurrency",
    "default_process_limit",
    "smtp_connection_cache_on_demand",
    "default_destination_recipient_limit",
)


def domain(number: int) -> str:
    return f"d{number}.bench.test"


def recipients(domains: int) -> list[str]:
    """One recipient per client, spread evenly over `domains` target domains."""
    return [f"b@{domain(client % domains + 1)}" for client in range(CLIENTS)]


def shares(count: int) -> list[int]:
    """How many of `count` messages each client sends."""
    return [count // CLIENTS + (client < count % CLIENTS) for client in range(CLIENTS)]


# ---------------------------------------------------------------------------
# The sink and the load, when Postfix's tools are missing: `_sink`, `_load`.


def sink_main(argv: list[str]) -> int:
    """`relay_throughput.py _sink PORT`: take every message, print `mesg=N\\r` as
    smtp-sink -c does, until SIGTERM."""
    from aiosmtpd.smtp import SMTP

    port = int(argv[0])
    count, sessions = [0], [0]

    def show() -> None:
        sys.stdout.write(f"sess={sessions[0]} mesg={count[0]}\r")
        sys.stdout.flush()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            count[0] += 1
            show()
            return "250 2.0.0 Ok"

    class Counting(SMTP):
        def connection_lost(self, error: Exception | None) -> None:
            super().connection_lost(error)
            sessions[0] += 1
            show()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        handler = Handler()
        server = await loop.create_server(
            lambda: Counting(handler, hostname="sink.bench.test"), HOST, port, backlog=512
        )
        await stop.wait()
        server.close()

    asyncio.run(serve())
    return 0


def load_main(argv: list[str]) -> int:
    """`relay_throughput.py _load PORT SIZE JSON`: JSON is [[recipient, count], ...], one
    client each; prints one JSON line."""
    port, size, plan = int(argv[0]), int(argv[1]), json.loads(argv[2])

    async def run() -> dict[str, Any]:
        ok = [0]
        results = await asyncio.gather(
            *(
                smtp_client(port, build_message(size, SENDER, rcpt), rcpt, [n], ok)
                for rcpt, n in plan
            ),
            return_exceptions=True,
        )
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        return {"ok": ok[0], "errors": errors[:3]}

    print(json.dumps(asyncio.run(run())), flush=True)
    return 0


def start_clients(kind: str, port: int, domains: int, count: int) -> list[subprocess.Popen[str]]:
    plan = [(rcpt, n) for rcpt, n in zip(recipients(domains), shares(count), strict=True) if n]
    if kind == "python":
        command = [sys.executable, __file__, "_load", str(port), str(SIZE), json.dumps(plan)]
        return [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ]
    source = smtp_source() or "smtp-source"
    return [
        subprocess.Popen(
            [source, "-d", "-s", "1", "-m", str(n), "-l", str(SIZE), "-f", SENDER, "-t", rcpt,
             f"{HOST}:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rcpt, n in plan
    ]  # fmt: skip


def finish_clients(clients: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    """Wait for the clients to exit; their complaints."""
    errors: list[str] = []
    for process in clients:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            errors.append("a client did not finish")
        errors += [line for line in err.splitlines() if line.strip()][:2]
        if out and out.lstrip().startswith("{"):
            errors += json.loads(out)["errors"]
        if process.returncode:
            errors.append(f"a client exited with status {process.returncode}")
    return errors[:4]


def signing_mailplan(work: Path, options: tuple[str, ...], algorithm: str) -> RelayMailplan:
    """mailplan with a DKIM key for the senders' domain: every message is signed."""
    from mailplan.zones.dkim import key_pair

    private, public = key_pair(algorithm)  # type: ignore[arg-type]
    keys = work / "dkim-keys"
    keys.mkdir(parents=True)
    (keys / "bench.key").write_bytes(private)
    domains = (
        f"  {SENDER.rpartition('@')[2]}:\n"
        "    dkim: [{selector: bench, public_key: dkim/bench.pub, "
        f"private_key: {keys / 'bench.key'}}}]\n"
    )
    return RelayMailplan(
        "signed",
        work=work / "signed",
        options=options,
        domains_yaml=domains,
        files={"dkim/bench.pub": public},
    )


# ---------------------------------------------------------------------------
# The sink.


class Sink:
    """A loopback SMTP server that takes every message and counts them."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "smtp-sink" or "python"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.count = 0
        self.sessions = 0  # connections that have ended
        self.changed = threading.Condition()

    def start(self) -> None:
        self.port = free_port()
        if self.kind == "smtp-sink":
            user = ["-u", "nobody"] if os.geteuid() == 0 else []
            command = [
                smtp_sink() or "smtp-sink", "-c", "-4", *user, "-h", "sink.bench.test",
                "-m", "1000", f"{HOST}:{self.port}", "1024",
            ]  # fmt: skip
        else:
            command = [sys.executable, __file__, "_sink", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port, self.process, "the sink")

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        pending = b""
        while chunk := self.process.stdout.read1(65536):  # type: ignore[attr-defined]
            *records, pending = (pending + chunk).split(b"\r")
            counts = [m for r in records if (m := re.search(rb"sess=(\d+).*mesg=(\d+)", r))]
            if counts:
                with self.changed:
                    self.sessions, self.count = int(counts[-1][1]), int(counts[-1][2])
                    self.changed.notify_all()

    def wait(self, target: int, stall: float) -> tuple[float | None, int]:
        """Wait until `target` messages have come (perf_counter then, and the count); gives
        up (None) once nothing has come for `stall` seconds."""
        last, since = -1, time.monotonic()
        with self.changed:
            while self.count < target:
                if self.count != last:
                    last, since = self.count, time.monotonic()
                elif time.monotonic() - since > stall:
                    return None, self.count
                self.changed.wait(0.5)
            return time.perf_counter(), self.count

    def cpu(self) -> float:
        with contextlib.suppress(OSError):
            return cpu_seconds(self.process.pid) if self.process else 0.0
        return 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def smtp_sink() -> str | None:
    found = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    return found if os.access(found, os.X_OK) else None


# ---------------------------------------------------------------------------
# The servers: mailplan and Postfix, relaying to the sink.


@dataclass
class RelayMailplan(Mailplan):
    deliveries: LogCounter | None = None

    def start(self) -> None:
        super().start()
        self.deliveries = LogCounter(self.log_path, r"> delivered: ")

    def prepare(self) -> None:
        super().prepare()
        assert self.deliveries is not None
        self.deliveries.mark()

    def delivered(self) -> int:
        assert self.deliveries is not None
        return self.deliveries.count()

    def settled(self) -> bool:
        """Nothing left in the queue (the pid file lives there too)."""
        with os.scandir(self.queue) as entries:
            return not any(e.name.endswith((".msg", ".tmp")) for e in entries)


@dataclass
class RelayPostfix(Postfix):
    sink_port: int = 0
    domains: tuple[str, ...] = ()
    saved: Path | None = None
    spool: Path = Path()
    deliveries: LogCounter = field(
        default_factory=lambda: LogCounter(POSTFIX_LOG, r" status=sent ")
    )

    def start(self) -> None:
        """smtp_accept's set-up, then relaying to the sink for as long as this runs."""
        super().start()
        self.saved = MAIN_CF.with_name("main.cf.relay-bench")
        shutil.copy2(MAIN_CF, self.saved)
        routes = ", ".join(f"{name}=smtp:[{HOST}]:{self.sink_port}" for name in self.domains)
        settings = {
            "relay_domains": " ".join(self.domains),
            "transport_maps": f"inline:{{ {routes} }}",
        }
        subprocess.run(["postconf", "-e", *(f"{k} = {v}" for k, v in settings.items())], check=True)
        subprocess.run(["postfix", "reload"], check=True, capture_output=True)
        time.sleep(1.0)  # qmgr and trivial-rewrite restart with the new settings
        self.spool = Path(
            subprocess.run(
                ["postconf", "-h", "queue_directory"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )

    def stop(self) -> None:
        if self.saved is not None and self.saved.exists():
            shutil.copy2(self.saved, MAIN_CF)
            self.saved.unlink()
            if not self.started_here:
                subprocess.run(["postfix", "reload"], capture_output=True)
        super().stop()

    def prepare(self) -> None:
        super().prepare()
        self.deliveries.mark()

    def delivered(self) -> int:
        return self.deliveries.count()

    def settled(self) -> bool:
        return not any(any(f) for q in POSTFIX_QUEUES for _, _, f in os.walk(self.spool / q))


def postfix_settings() -> str:
    result = subprocess.run(["postconf", *POSTFIX_SETTINGS], capture_output=True, text=True)
    return ", ".join(line.strip() for line in result.stdout.splitlines())


def start_dns(work: Path) -> Any:
    """BIND on loopback with the MX records of every target domain."""
    sys.path.insert(0, str(ROOT / "tests"))
    from dnskit import zone_text
    from namedkit import Named

    records = "".join(f"d{n} IN MX 10 sink\n" for n in range(1, max(CELLS) + 1))
    zone = zone_text("bench.test", records + f"sink IN A {HOST}\n")
    return Named(work / "dns", {"bench.test": zone}).start()


# ---------------------------------------------------------------------------
# Measuring.


@dataclass
class Result:
    server: str
    domains: int
    round: int
    sent: int
    delivered: int  # counted by the sink
    elapsed: float
    server_cpu: float
    client_cpu: float
    sink_cpu: float
    accepted: int  # the server's log
    logged: int  # deliveries in the server's log
    connections: int  # the server's connections to the sink that ended
    errors: list[str]
    others: float = 0.0

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed if self.elapsed else 0.0


def wait_settled(server: Server, timeout: float) -> float | None:
    """Poll until the server's queue is empty; perf_counter then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.settled():  # type: ignore[attr-defined]
            return time.perf_counter()
        time.sleep(0.01)
    return None


def measure(
    server: Server, sink: Sink, client: str, count: int, domains: int, round_: int
) -> Result:
    server.prepare()
    os.sync()
    time.sleep(0.2)
    base, sessions = sink.count, sink.sessions
    cpu_before, sink_before = server.cpu(), sink.cpu()
    busy_before = machine_busy()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    clients = start_clients(client, server.port, domains, count)
    reached, total = sink.wait(base + count, STALL)
    errors = finish_clients(clients, STALL)
    settled = wait_settled(server, SETTLE_TIMEOUT)
    end = max(reached or time.perf_counter(), settled or 0.0)
    busy = machine_busy() - busy_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    server_cpu, sink_cpu = server.cpu() - cpu_before, sink.cpu() - sink_before
    delivered = total - base
    if reached is None:
        errors.append(f"the sink got {delivered} of {count}, then nothing for {STALL:.0f} s")
    if settled is None:
        errors.append(f"the queue was not empty {SETTLE_TIMEOUT:.0f} s later")
    time.sleep(CACHE_TIME)  # log writers catch up, cached connections to the sink end
    accepted, logged = server.accepted(), server.delivered()  # type: ignore[attr-defined]
    if accepted != count or logged != count:
        errors.append(f"the server logged {accepted} accepted, {logged} delivered")
    elapsed = end - started
    others = max(busy - client_cpu - server_cpu - sink_cpu, 0.0) / elapsed / (os.cpu_count() or 1)
    return Result(
        server.name, domains, round_, count, delivered, elapsed, server_cpu, client_cpu,
        sink_cpu, accepted, logged, sink.sessions - sessions, errors, others,
    )  # fmt: skip


def cell_name(domains: int) -> str:
    return f"{domains} domain{'s' if domains > 1 else ''}"


def report(
    results: list[Result], names: list[str], cells: list[int], variants: Sequence[str] = ()
) -> dict[str, Any]:
    by_cell: dict[tuple[int, str], list[Result]] = defaultdict(list)
    for result in results:
        by_cell[result.domains, result.server].append(result)
    summary: dict[str, Any] = {}
    width = max(len(n) for n in names)
    print("\nmessages per second, accept to sink (median of rounds; each round's in brackets)")
    for domains in cells:
        cell = cell_name(domains)
        print(f"\n{cell}")
        medians: dict[str, float] = {}
        for name in names:
            runs = by_cell.get((domains, name), [])
            if not runs:
                continue
            rate = statistics.median(r.rate for r in runs)

            def per_message(value: str, runs: list[Result] = runs) -> float:
                return float(
                    statistics.median(getattr(r, value) / max(r.delivered, 1) for r in runs)
                )

            medians[name] = rate
            rounds = ", ".join(f"{r.rate:.0f}" for r in runs)
            cpu = {k: per_message(k) * 1e3 for k in ("server_cpu", "client_cpu", "sink_cpu")}
            print(
                f"  {name:<{width}}  {rate:7.0f} msg/s  [{rounds}]"
                f"  server CPU {cpu['server_cpu']:.2f} ms/msg, clients {cpu['client_cpu']:.2f}, "
                f"sink {cpu['sink_cpu']:.2f}"
            )
            for r in runs:
                if r.errors:
                    print(f"    round {r.round}: {r.delivered}/{r.sent} delivered; {r.errors}")
            summary.setdefault(cell, {})[name] = {
                "msgs_per_s": rate,
                "rounds": [r.rate for r in runs],
                **{f"{k}_ms_per_msg": v for k, v in cpu.items()},
            }
        if "mailplan" in medians and "no-tls-policies" in medians:
            base = medians["no-tls-policies"]
            ratio = medians["mailplan"] / base if base else 0.0
            print(f"  mailplan / no-tls-policies: {ratio:.2f}  (TLS policies on / off)")
            summary[cell]["mailplan/no-tls-policies"] = ratio
        if "mailplan" in medians and "signed" in medians:
            signed = medians["signed"] / medians["mailplan"] if medians["mailplan"] else 0.0
            print(f"  signed / mailplan: {signed:.2f}  (DKIM signing on / off)")
            summary[cell]["signed/mailplan"] = signed
        for variant in variants:
            if "mailplan" in medians and medians.get(variant):
                ratio = medians["mailplan"] / medians[variant]
                print(f"  mailplan / {variant}: {ratio:.2f}")
                summary[cell][f"mailplan/{variant}"] = ratio
        for variant in variants:
            if medians.get(variant) and medians.get("Postfix"):
                ratio = medians[variant] / medians["Postfix"]
                print(f"  {variant} / Postfix: {ratio:.2f}")
                summary[cell][f"{variant}/Postfix"] = ratio
        if "mailplan" in medians and medians.get("Postfix"):
            ratio = medians["mailplan"] / medians["Postfix"]
            print(f"  mailplan / Postfix: {ratio:.2f}")
            summary[cell]["mailplan/Postfix"] = ratio
        else:
            print("  mailplan / Postfix: missing (Postfix was not measured; --with-postfix)")
    return summary


# ---------------------------------------------------------------------------
# Profiling mailplan.

# Where a sample of the event loop's thread goes: the first part one of whose frames
# starts with a prefix. Under uvloop the loop itself is C: a sample whose innermost
# Python frame is `Runner.run` is uvloop at work (epoll, recv, callbacks), and one with
# no frame under it a callback that uvloop called.
LOOP_PARTS = (
    ("logging", ("Logger.", "QueueHandler.")),
    ("accepting: aiosmtpd session, runtime/smtp/session.py", ("SMTP._handle_client (aiosmtpd",)),
    (
        "relaying: runtime/delivery/scheduler.py, outbound.py, aiosmtplib",
        ("Delivery.", "deliver ("),
    ),
    ("queueing: runtime/queue/processor.py", ("Processor.",)),
    ("uvloop itself (C)", ("Runner.run (",)),
)
EXECUTOR = "_worker (concurrent/futures"


def split(folded: Path, messages: int, rate_hz: int, wall: bool) -> None:
    """ms per message of the event loop's thread by part, and of the executor's threads by
    job (with --idle: their occupancy, blocked time included)."""
    loop: Counter[str] = Counter()
    jobs: Counter[str] = Counter()
    idle = threads = 0
    names: set[str] = set()
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        samples = int(count)
        if "MainThread" in thread:
            part = next(
                (n for n, prefixes in LOOP_PARTS if any(f.startswith(prefixes) for f in frames)),
                "other",
            )
            if frames and frames[-1].startswith("Runner.run ("):
                part = "uvloop itself (C)"
            loop[part] += samples
        elif any(f.startswith(EXECUTOR) for f in frames):
            names.add(thread)
            threads += samples
            if frames[-1].startswith(EXECUTOR):
                idle += samples
                continue
            run = [i for i, f in enumerate(frames) if f.startswith("_WorkItem.run (")]
            job = frames[run[0] + 1] if run and run[0] + 1 < len(frames) else "(executor)"
            jobs[re.sub(r":\d+\)$", ")", job)] += samples

    def ms(samples: int) -> str:
        return f"{samples / rate_hz / messages * 1e3:7.3f}"

    print(f"    event loop thread by part ({ms(sum(loop.values())).strip()} ms/msg):")
    for part, samples in loop.most_common():
        print(f"      {ms(samples)}  {part}")
    busy = f", busy {1 - idle / threads:.0%} of the time" if wall and threads else ""
    print(f"    executor ({len(names)} threads{busy}), by job:")
    for job, samples in jobs.most_common(6):
        print(f"      {ms(samples)}  {job}")


def profile(args: argparse.Namespace, mailplan: RelayMailplan, sink: Sink, client: str) -> None:
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    for domains in args.domains:
        for wall in (False, True):
            mode = "wall" if wall else "cpu"
            folded = out / f"relay-{domains}d-{mode}.txt"
            command = [
                py_spy(), "record", "-p", str(mailplan.pids()[0]), "-r", str(args.rate),
                "--threads", "--nonblocking", "--format", "raw", "-o", str(folded),
                *(["--idle"] if wall else []),
            ]  # fmt: skip
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)
            result = measure(mailplan, sink, client, args.count, domains, 0)
            spy.send_signal(signal.SIGINT)
            _, stderr = spy.communicate(timeout=60)
            print(
                f"\nmailplan, {cell_name(domains)}, py-spy {mode} ({args.rate} Hz): "
                f"{result.rate:.0f} msg/s, server CPU "
                f"{result.server_cpu / max(result.delivered, 1) * 1e3:.2f} ms/msg; "
                f"raw stacks in {folded}" + (f"  {result.errors}" if result.errors else "")
            )
            if folded.exists():
                split(folded, max(result.delivered, 1), args.rate, wall)
                if not wall:  # smtp_accept's analysis takes uvloop's idle for work
                    analyse(folded, max(result.delivered, 1), args.rate, wall)
            else:
                print(f"  py-spy wrote nothing: {stderr.decode(errors='replace')}")


# ---------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_sink":
        return sink_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        return load_main(sys.argv[2:])
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--with-postfix", action="store_true", help="install, set up, compare")
    parser.add_argument("--count", type=int, default=3000, help="messages per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 messages, 1 round")
    parser.add_argument(
        "--domains", type=int, nargs="+", default=list(CELLS), choices=CELLS, help="cells"
    )
    parser.add_argument(
        "--client",
        choices=("auto", "smtp-source", "python"),
        default="auto",
        help="load generator (auto: smtp-source when installed)",
    )
    parser.add_argument(
        "--sink",
        choices=("auto", "smtp-sink", "python"),
        default="auto",
        help="the sink (auto: smtp-sink when installed)",
    )
    parser.add_argument("--profile", metavar="DIR", help="profile mailplan with py-spy instead")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--workers", default="1", metavar="N|auto", help="mailplan serve --workers (default 1)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also measure a build of mailplan run by COMMAND (+ `serve SITE --root DIR`)",
    )
    parser.add_argument(
        "--tls-off",
        action="store_true",
        help="also measure mailplan with other domains' TLS policies off",
    )
    parser.add_argument(
        "--dkim",
        choices=("ed25519", "rsa"),
        help="also measure mailplan signing every message with a key of this kind",
    )
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 300, 1

    work = Path(tempfile.mkdtemp(prefix="relay_throughput."))
    started: list[Any] = []
    try:
        postfix: RelayPostfix | None = None
        if args.with_postfix:  # first: it installs smtp-source and smtp-sink
            setup_postfix()
        client = (
            args.client if args.client != "auto" else "smtp-source" if smtp_source() else "python"
        )
        if client == "smtp-source" and not smtp_source():
            sys.exit("smtp-source is not installed (--with-postfix installs it)")
        kind = args.sink if args.sink != "auto" else "smtp-sink" if smtp_sink() else "python"
        if kind == "smtp-sink" and not smtp_sink():
            sys.exit("smtp-sink is not installed (--with-postfix installs it)")
        sink = Sink(kind)
        sink.start()
        started.append(sink)
        dns = start_dns(work)
        started.append(dns)
        options = (
            *("--resolver", dns.address, "--smtp-port", str(sink.port)),
            *("--workers", args.workers),
        )
        mailplan = RelayMailplan("mailplan", work=work / "mailplan", options=options)
        mailplan.start()
        started.append(mailplan)
        servers: list[Server] = [mailplan]
        if args.tls_off:
            plain = RelayMailplan(
                "no-tls-policies",
                work=work / "no-tls-policies",
                options=options,
                domains_yaml="outbound:\n  tls: {mta_sts: false, dane: false, reports: false}\n",
            )
            plain.start()
            started.append(plain)
            servers.append(plain)
        variants: list[str] = []
        for number, variant in enumerate(args.variant):
            name, _, command = variant.partition("=")
            other = RelayMailplan(
                name, work=work / f"variant{number}", command=tuple(shlex.split(command)),
                options=options, variant=True,
            )  # fmt: skip
            other.start()
            started.append(other)
            servers.append(other)
            variants.append(name)
        if args.dkim:
            signed = signing_mailplan(work, options, args.dkim)
            signed.start()
            started.append(signed)
            servers.append(signed)
        if args.with_postfix:
            domains = tuple(domain(n) for n in range(1, max(CELLS) + 1))
            postfix = RelayPostfix("Postfix", sink_port=sink.port, domains=domains)
            postfix.start()
            started.append(postfix)
            servers.append(postfix)
        print(f"machine: {machine()}")
        print(f"sink: {kind} on {HOST}:{sink.port}; DNS: named on {dns.address}")
        if postfix is not None:
            print(
                f"Postfix {postfix_version()} on {HOST}:{POSTFIX_PORT}, relaying to the sink; "
                f"{postfix_settings()}"
            )
        else:
            print("Postfix: not measured (--with-postfix)")
        print(
            f"load: {CLIENTS} clients ({client}), {SIZE // 1024} KiB, {args.count} messages "
            f"per measurement, {args.rounds} round(s); work directory {work}"
        )
        for server in servers:  # warm up: imports, connections, the MX answers
            measure(server, sink, client, 200, max(CELLS), 0)
        if args.profile:
            profile(args, mailplan, sink, client)
            return 0
        results: list[Result] = []
        for round_ in range(1, args.rounds + 1):
            for index, domains_ in enumerate(args.domains):
                turn = (round_ - 1 + index) % len(servers)  # who goes first alternates
                order = servers[turn:] + servers[:turn]
                for server in order:
                    result = measure(server, sink, client, args.count, domains_, round_)
                    results.append(result)
                    print(
                        f"round {round_}  {cell_name(domains_):<10} {server.name:<9}"
                        f" {result.rate:7.0f} msg/s  ({result.delivered}/{result.sent} in "
                        f"{result.elapsed:.2f} s over {result.connections} connections, server CPU "
                        f"{result.server_cpu / max(result.delivered, 1) * 1e3:.2f} ms/msg, "
                        f"others {result.others:.0%} CPU)"
                        + (f"  {result.errors}" if result.errors else ""),
                        flush=True,
                    )
        summary = report(results, [s.name for s in servers], args.domains, variants)
        if args.json:
            payload = {"machine": machine(), "client": client, "sink": kind, "cells": summary}
            Path(args.json).write_text(json.dumps(payload, indent=2))
        return 0
    finally:
        for thing in reversed(started):
            thing.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
