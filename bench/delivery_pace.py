#!/usr/bin/env python3
"""Whether delivery keeps pace with acceptance: SMTP in, Maildir out, under sustained load.

Each server gets the same load (Postfix's `smtp-source`, 20 clients keeping their
connection, 4 KiB messages, tens of thousands of them; or this bench's own asyncio
client), and while it runs the bench samples, every `--every` seconds:

- accepted: messages the server has acknowledged (mailplan: its `accepted from` log
  lines; Postfix: the messages delivered plus the files in its queue, since other
  benches may use the same Postfix and its log then counts their mail too);
- delivered: files in the recipient's Maildir `new/`;
- the backlog: accepted but not yet delivered.

It prints that series, then per server the accept rate (accepted / seconds of load),
the end-to-end rate (messages / seconds from the first message sent to the last one
in the Maildir), the largest backlog, the backlog when the load ended and how long it
took to drain, and the ratios against Postfix measured in the same run.

- mailplan: `mailplan serve SITE --root DIR` on smtp_accept.py's generated site; with
  `--site rules` (the default) its domain and account carry the example site's rules,
  and it has server rules (`smtp_accept.with_rules`): every message goes through
  rules before it is stored. Delivery is mailplan's own, into
  `var/mail/bench.test/b/`.
- Postfix (`--with-postfix`): set up as /work/shared/peers/README.md says (smtpd on
  127.0.0.1:2625, queue file fsynced before 250, `in_flow_delay = 0`), plus virtual(8)
  Maildir delivery for the domain `v.test`: `virtual_mailbox_domains = v.test`,
  `virtual_mailbox_maps = static:b/` (a Maildir), under `/var/tmp/delivery_pace.virtual`,
  owned by `nobody`. These settings are added to main.cf (additive: the other benches'
  domains are untouched) and Postfix is reloaded.
- `--variant NAME=COMMAND`: another build of mailplan (COMMAND is given `serve SITE
  --root DIR`), e.g. the current main's, reported against mailplan.

Servers are measured one after the other, the order rotating from round to round;
before each measurement the previous one's Maildir is emptied and the server is idle.
Nothing here asserts a timing. Network only to 127.0.0.1.

    .venv/bin/python bench/delivery_pace.py --with-postfix                  # ~3 min
    .venv/bin/python bench/delivery_pace.py --with-postfix --count 60000 --rounds 3
    .venv/bin/python bench/delivery_pace.py --quick                         # seconds
    .venv/bin/python bench/delivery_pace.py --with-postfix \\
        --variant "main=/work/main/.venv/bin/mailplan"
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from smtp_accept import (
    HOST,
    LOAD_TIMEOUT,
    POSTFIX_QUEUES,
    SENDER,
    Mailplan,
    Postfix,
    Server,
    count_files,
    machine,
    postfix_version,
    smtp_source,
    with_rules,
)

SIZE = 4096
CLIENTS = 20
VIRTUAL_DOMAIN = "v.test"
VIRTUAL_BASE = Path("/var/tmp/delivery_pace.virtual")
DRAIN_TIMEOUT = 300.0


class Tail:
    """Counts the lines of a growing log file that contain `needle`, reading only what
    was appended since the last call."""

    def __init__(self, path: Path, needle: bytes) -> None:
        self.path = path
        self.needle = needle
        self.offset = 0
        self.rest = b""
        self.total = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.rest = b""
        self.total = 0

    def count(self) -> int:
        if not self.path.exists():
            return self.total
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        self.total += sum(1 for line in lines if self.needle in line)
        return self.total


@dataclass
class Paced:
    """A server under test: how to count what it accepted and what it delivered."""

    server: Server
    accepts: Tail | None  # None: delivered + what its queue holds (Postfix)
    maildir: Path
    spool: Path = Path()
    others: int = 0  # files in Postfix's queue before the measurement (other benches')

    @property
    def name(self) -> str:
        return self.server.name

    def prepare(self) -> None:
        if self.maildir.exists():
            with os.scandir(self.maildir) as entries:
                for entry in entries:
                    os.unlink(entry.path)
        if self.accepts is not None:
            self.accepts.mark()
        else:
            self.others = self.queued()

    def delivered(self) -> int:
        return count_files(self.maildir)

    def accepted(self, delivered: int) -> int:
        if self.accepts is not None:
            return self.accepts.count()
        return delivered + max(self.queued() - self.others, 0)

    def queued(self) -> int:
        return sum(len(files) for q in POSTFIX_QUEUES for _, _, files in os.walk(self.spool / q))


def mailplan_paced(server: Mailplan) -> Paced:
    server.start()
    maildir = server.work / "root" / "var" / "mail" / "bench.test" / "b" / "new"
    return Paced(server, Tail(server.log_path, b" accepted from "), maildir)


def postfix_paced() -> Paced:
    """Postfix with virtual(8) delivering v.test into one Maildir."""
    postfix = Postfix("Postfix")
    postfix.start()  # the peers' set-up (and an install if missing)
    nobody = pwd.getpwnam("nobody")
    VIRTUAL_BASE.mkdir(parents=True, exist_ok=True)
    os.chown(VIRTUAL_BASE, nobody.pw_uid, nobody.pw_gid)
    settings = {
        "virtual_mailbox_domains": VIRTUAL_DOMAIN,
        "virtual_mailbox_base": str(VIRTUAL_BASE),
        "virtual_mailbox_maps": "static:b/",
        "virtual_uid_maps": f"static:{nobody.pw_uid}",
        "virtual_gid_maps": f"static:{nobody.pw_gid}",
        "virtual_minimum_uid": "100",
    }
    command = ["postconf", "-e", *(f"{key} = {value}" for key, value in settings.items())]
    subprocess.run(command, check=True)
    subprocess.run(["postfix", "reload"], check=True, capture_output=True)
    time.sleep(1.0)  # qmgr and trivial-rewrite start again with the settings
    postfix.recipient = f"b@{VIRTUAL_DOMAIN}"
    queue = ["postconf", "-h", "queue_directory"]
    spool = Path(subprocess.run(queue, capture_output=True, text=True, check=True).stdout.strip())
    return Paced(postfix, None, VIRTUAL_BASE / "b" / "new", spool)


def start_load(paced: Paced, client: str, count: int) -> subprocess.Popen[str]:
    server = paced.server
    if client == "smtp-source":
        command = [
            smtp_source() or "smtp-source", "-d", "-s", str(CLIENTS), "-m", str(count),
            "-l", str(SIZE), "-f", SENDER, "-t", server.recipient, f"{HOST}:{server.port}",
        ]  # fmt: skip
    else:
        bench = Path(__file__).with_name("smtp_accept.py")
        command = [
            sys.executable, str(bench), "_load", str(server.port), str(count), str(CLIENTS),
            str(SIZE), server.recipient,
        ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclass
class Run:
    server: str
    round: int
    count: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # t, accepted, delivered
    load_seconds: float = 0.0
    end_to_end: float = 0.0  # seconds until the last message was in the Maildir
    errors: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    @property
    def accept_rate(self) -> float:
        at_end = [a for t, a, _ in self.samples if t <= self.load_seconds]
        return (at_end[-1] if at_end else 0) / self.load_seconds if self.load_seconds else 0.0

    @property
    def end_to_end_rate(self) -> float:
        delivered = self.samples[-1][2] if self.samples else 0
        return delivered / self.end_to_end if self.end_to_end else 0.0

    @property
    def peak_backlog(self) -> int:
        return max((a - d for _, a, d in self.samples), default=0)

    @property
    def backlog_at_end(self) -> int:
        at_end = [a - d for t, a, d in self.samples if t <= self.load_seconds]
        return at_end[-1] if at_end else 0

    @property
    def drain(self) -> float:
        return max(self.end_to_end - self.load_seconds, 0.0)


def measure(paced: Paced, client: str, count: int, round_: int, every: float) -> Run:
    paced.prepare()
    os.sync()
    time.sleep(0.5)
    run = Run(paced.name, round_, count)
    started = time.monotonic()
    load = start_load(paced, client, count)
    finished = None
    next_print = 0.0
    print(f"\nround {round_}, {paced.name}: {count} x {SIZE // 1024} KiB, {CLIENTS} clients")
    print(f"  {'t (s)':>7} {'accepted':>9} {'delivered':>9} {'backlog':>8}")
    while True:
        time.sleep(every)
        now = time.monotonic() - started
        delivered = paced.delivered()
        accepted = min(paced.accepted(delivered), count)  # others' mail in Postfix's queue
        run.samples.append((now, accepted, delivered))
        if finished is None and load.poll() is not None:
            finished = now
            run.load_seconds = now
            _, stderr = load.communicate()
            if load.returncode:
                run.errors.append(f"load exited with status {load.returncode}: {stderr[-300:]}")
        if now >= next_print or finished == now:
            mark = "  (load ended)" if finished == now else ""
            print(f"  {now:7.1f} {accepted:9d} {delivered:9d} {accepted - delivered:8d}{mark}")
            next_print = now + max(1.0, every)
        if finished is not None and delivered >= accepted:
            run.end_to_end = now
            print(f"  {now:7.1f} {accepted:9d} {delivered:9d} {0:8d}  (drained)")
            break
        if now > LOAD_TIMEOUT + DRAIN_TIMEOUT:
            run.errors.append("gave up waiting for the backlog to drain")
            load.kill()
            break
    if run.accepted != count:
        run.errors.append(f"{run.accepted} of {count} accepted")
    return run


def report(runs: list[Run], names: list[str], variants: list[str]) -> None:
    print("\nper server, median of rounds [each round]")
    medians: dict[str, dict[str, float]] = {}
    for name in names:
        mine = [r for r in runs if r.server == name]
        if not mine:
            continue
        figures = {
            "accept msg/s": [r.accept_rate for r in mine],
            "end-to-end msg/s": [r.end_to_end_rate for r in mine],
            "peak backlog": [float(r.peak_backlog) for r in mine],
            "backlog at load end": [float(r.backlog_at_end) for r in mine],
            "drain s": [r.drain for r in mine],
        }
        medians[name] = {key: statistics.median(values) for key, values in figures.items()}
        print(f"\n  {name}")
        for key, values in figures.items():
            rounds = ", ".join(f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values)
            print(f"    {key:<20} {medians[name][key]:9.1f}  [{rounds}]")
        for run in mine:
            if run.errors:
                print(f"    round {run.round}: {run.errors}")
    print()
    for other in names[1:]:
        if "mailplan" not in medians or other not in medians:
            continue
        for key in ("accept msg/s", "end-to-end msg/s"):
            if other in variants:
                ratio = medians[other][key] / max(medians["mailplan"][key], 1e-9)
                print(f"  {key:<18} {other} / mailplan: {ratio:.2f}")
            else:
                ratio = medians["mailplan"][key] / max(medians[other][key], 1e-9)
                print(f"  {key:<18} mailplan / {other}: {ratio:.2f}")


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--with-postfix", action="store_true", help="Postfix with virtual(8)")
    parser.add_argument("--count", type=int, default=30000, help="messages per measurement")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 1 round")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--site", choices=("plain", "rules"), default="rules")
    parser.add_argument("--workers", default="1", metavar="N|auto")
    parser.add_argument(
        "--client", choices=("auto", "smtp-source", "python"), default="auto",
        help="load generator (auto: smtp-source when installed)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=COMMAND",
        help="also measure a build of mailplan run by COMMAND (+ `serve SITE --root DIR`)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 2000, 1
    work = Path(tempfile.mkdtemp(prefix="delivery_pace."))
    started: list[Server] = []
    try:
        paced: list[Paced] = []
        variants: list[str] = []
        builds: list[tuple[str, tuple[str, ...]]] = [("mailplan", ())]
        for variant in args.variant:
            name, _, command = variant.partition("=")
            builds.append((name, tuple(shlex.split(command))))
            variants.append(name)
        for number, (name, command) in enumerate(builds):
            build = Mailplan(
                name, work=work / f"server{number}", command=command,
                options=("--workers", args.workers),
            )  # fmt: skip
            if args.site == "rules":
                with_rules(build)
            started.append(build)
            paced.append(mailplan_paced(build))
        if args.with_postfix:
            postfix = postfix_paced()
            started.append(postfix.server)
            paced.append(postfix)
        client = args.client
        if client == "auto":
            client = "smtp-source" if smtp_source() else "python"
        print(f"machine: {machine()}")
        if args.with_postfix:
            print(f"Postfix {postfix_version()}: virtual(8) into {VIRTUAL_BASE}/b/ (Maildir)")
        site = "server, domain and account rules" if args.site == "rules" else "no rules"
        print(
            f"load generator: {client}; {args.count} messages of {SIZE // 1024} KiB, "
            f"{CLIENTS} clients, {args.rounds} round(s); mailplan's site: {site}"
        )
        for one in paced:  # warm up: imports, first files, page cache
            measure(one, client, 200, 0, 0.2)
        runs = []
        for round_ in range(1, args.rounds + 1):
            turn = (round_ - 1) % len(paced)
            for one in paced[turn:] + paced[:turn]:
                runs.append(measure(one, client, args.count, round_, args.every))
        report(runs, [p.name for p in paced], variants)
        return 0
    finally:
        for server in reversed(started):
            server.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
