#!/usr/bin/env python3
"""How fast mailplan accepts mail over SMTP, against what users would run instead.

Every server here answers 250 to the end of DATA only once the message is on disk
(fsync before 250). Measured, on the same machine in one run:

- mailplan: `mailplan serve SITE --root DIR` on a generated site with one listener
  (127.0.0.1, a free high port, `tls: none`, `auth: none`, client_ips 127.0.0.1) and
  one local account, the recipient. Before its 250 a message is appended to the
  intake journal and fdatasynced (one sync for the sessions that end DATA together);
  then mailplan's queue process delivers it into the Maildir, in batches made durable
  together, as it would in production (`--variant one=SCRIPT`, with a SCRIPT that
  runs `mailplan "$@" --one-process`, measures the queue kept in the accepting
  process). Its log (one line per acceptance, one per delivery) goes to a file; the
  server's CPU counts both processes.
- bare aiosmtpd: aiosmtpd's stock `SMTP` protocol (the same library and event loop as
  mailplan) in a subprocess started from this file, whose DATA hook writes each
  message to a new file in a worker thread, fsyncs the file and its directory, then
  answers 250. The least a Python server on aiosmtpd has to do.
- Postfix (`--with-postfix`): Debian's Postfix set up as /work/shared/peers/README.md
  describes (loopback smtpd on 127.0.0.1:2625, cleanup fsyncs the queue file before
  250, then qmgr hands the message to the discard transport). `--with-postfix`
  installs it if missing (apt-get, with DEBIAN_FRONTEND=noninteractive and a
  /usr/sbin/policy-rc.d that exits 101 so no daemon starts on :25), configures it,
  runs `postfix start` and, at the end, `postfix stop` (if it was not running before).

Cells: 1 and 20 concurrent clients, 2 KiB and 64 KiB messages (payload bytes after
the headers, smtp-source's `-l`). Each client keeps one connection for many messages:
EHLO (smtp-source: HELO) once, then MAIL / RCPT / DATA / body, each waiting for its
reply (no pipelining). The load generator is Postfix's `smtp-source` when installed,
otherwise an asyncio client in this file (run as its own process); `--client` picks,
and the report says which. Each round runs every cell on every server, the order of
the servers rotating from cell to cell and round to round; before each measurement
the server has finished the work left by the previous one (mailplan's deliveries,
Postfix's queue) and the files written by the previous cell are removed. The figure
of a cell is the median over the rounds of accepted messages / wall-clock seconds.
Acceptances are counted on the server side too (mailplan's log, the bare server's
files, Postfix's log); a run that loses one says so.

CPU ms/msg is the server's CPU time (user + system, all threads; for Postfix, master
and all its children, including those that exited) from the start of a measurement
until the server is idle again, over the messages accepted. "others" is the CPU the
rest of the machine used meanwhile (kernel threads, other tenants): a noise gauge.

`--profile DIR` instead runs mailplan, then bare aiosmtpd, under the 2 KiB / 20
clients and 64 KiB / 1 client loads with py-spy (`.venv/bin/pip install py-spy`)
recording the server, writes the raw stacks to DIR, and prints where the time goes
per message: the event loop's thread (by function, self and inclusive) and the worker
threads (by job, and by line: fsync, open, rename, ...). mailplan is recorded twice:
on-CPU samples, then wall-clock ones (`--idle`: blocked time counts). py-spy's
"on-CPU" counts a thread that is runnable or in a disk wait as active.

`--variant NAME=COMMAND` adds another build of mailplan to the run (COMMAND is given
`serve SITE --root DIR`), reported as NAME / mailplan: a way to size a change before
making it. `--cells 2x20 64x1` limits the cells, `--no-bare` leaves out the bare server.
`--site rules` serves mailplan (and its variants) a site with rules: the example site's
server, domain and account rules on the bench's domain (`with_rules`); by default the
account has none.

Nothing here asserts a timing. Network only to 127.0.0.1.

    .venv/bin/python bench/smtp_accept.py --with-postfix          # ~6 min
    .venv/bin/python bench/smtp_accept.py --quick                 # a smoke run, seconds
    .venv/bin/python bench/smtp_accept.py --with-postfix --count 5000 --rounds 5
    .venv/bin/python bench/smtp_accept.py --profile /tmp/prof --count 5000   # ~3 min
    .venv/bin/python bench/smtp_accept.py --cells 2x20 --variant "mine=/path/to/mailplan"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SENDER = "a@x.test"
CELLS = ((2048, 1), (2048, 20), (65536, 1), (65536, 20))
PROFILE_CELLS = ((2048, 20), (65536, 1))
POSTFIX_PORT = 2625
POSTFIX_HOLD_PORT = 2635
POSTFIX_LOG = Path("/var/log/postfix-bench.log")
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred")
LOAD_TIMEOUT = 600.0
DRAIN_TIMEOUT = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# The load generator: one connection per client, no pipelining.


def build_message(size: int, sender: str, recipient: str) -> bytes:
    """Headers, `size` bytes of body in 76-byte lines, and the end of data."""
    head = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: smtp_accept\r\n"
        f"Message-ID: <smtp-accept.{size}@bench.test>\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnop\r\n"
    body = (line * (size // len(line) + 1))[:size]
    body = body[:-2] + b"\r\n" if size >= 2 else b"\r\n"
    return head + body + b".\r\n"


class Refused(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise Refused("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def _client(
    port: int, message: bytes, recipient: str, left: list[int], ok: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        if await _reply(reader) != 220:
            raise Refused("greeting")
        writer.write(b"EHLO load.bench.test\r\n")
        if await _reply(reader) != 250:
            raise Refused("EHLO")
        mail = f"MAIL FROM:<{SENDER}>\r\n".encode()
        rcpt = f"RCPT TO:<{recipient}>\r\n".encode()
        while left[0] > 0:
            left[0] -= 1
            for command, expected in ((mail, 250), (rcpt, 250), (b"DATA\r\n", 354)):
                writer.write(command)
                code = await _reply(reader)
                if code != expected:
                    raise Refused(f"{command[:4].decode()} answered {code}")
            writer.write(message)
            if await _reply(reader) != 250:
                raise Refused("end of data refused")
            ok[0] += 1
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(Refused, OSError):
            await _reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _load(port: int, count: int, clients: int, size: int, recipient: str) -> dict[str, Any]:
    message = build_message(size, SENDER, recipient)
    left, ok = [count], [0]
    started = time.perf_counter()
    results = await asyncio.gather(
        *(_client(port, message, recipient, left, ok) for _ in range(clients)),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"ok": ok[0], "elapsed": elapsed, "errors": errors[:3]}


def load_main(argv: list[str]) -> int:
    """`smtp_accept.py _load PORT COUNT CLIENTS SIZE RECIPIENT`: one JSON line."""
    port, count, clients, size = (int(x) for x in argv[:4])
    result = asyncio.run(_load(port, count, clients, size, argv[4]))
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------
# The bare aiosmtpd server: stock protocol, a file per message, fsync before 250.


def bare_main(argv: list[str]) -> int:
    """`smtp_accept.py _bare PORT DIRECTORY`: serve until SIGTERM."""
    from aiosmtpd.smtp import SMTP

    port, directory = int(argv[0]), argv[1]
    counter = itertools.count()

    def write(data: bytes) -> None:
        path = os.path.join(directory, f"{next(counter)}.msg")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            await asyncio.to_thread(write, envelope.original_content)
            return "250 2.0.0 Ok: queued"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        handler = Handler()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="bare.bench.test"), HOST, port, backlog=512
        )
        print("ready", flush=True)
        await stop.wait()
        server.close()

    asyncio.run(serve())
    return 0


# ---------------------------------------------------------------------------
# The servers under test.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def wait_port(port: int, process: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + 60
    while not port_open(port):
        if process is not None and process.poll() is not None:
            sys.exit(f"{what} exited with status {process.returncode} before listening")
        if time.monotonic() > deadline:
            sys.exit(f"{what} does not listen on {HOST}:{port}")
        time.sleep(0.1)


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system time of a process, all its threads, live and exited; with `reaped`,
    plus that of its children that have exited and been waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, any process)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def count_files(directory: Path, suffix: str = "") -> int:
    """How many files in `directory` (whose names end with `suffix`, when given)."""
    try:
        with os.scandir(directory) as entries:
            return sum(1 for entry in entries if entry.name.endswith(suffix))
    except FileNotFoundError:
        return 0


def empty_directory(directory: Path) -> None:
    if not directory.exists():
        return
    with os.scandir(directory) as entries:
        for entry in entries:
            os.unlink(entry.path)


class LogCounter:
    """Counts lines matching a pattern appended to a log file since the last mark."""

    def __init__(self, path: Path, pattern: str) -> None:
        self.path = path
        self.pattern = re.compile(pattern.encode())
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as file:
            file.seek(self.offset)
            return sum(1 for line in file if self.pattern.search(line))


@dataclass
class Server:
    name: str
    port: int = 0
    recipient: str = ""
    process: subprocess.Popen[bytes] | None = None
    cpu_start: float = 0.0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def prepare(self) -> None:
        """Before a measurement: the previous one's files gone, counters marked."""

    def accepted(self) -> int:
        """Messages accepted since `prepare` (once `drain` has returned)."""
        raise NotImplementedError

    def drain(self) -> None:
        """Wait until the server has done the work the last measurement left."""

    def cpu(self) -> float:
        """CPU seconds the server has used so far (all its processes, if several).

        The first pid is the parent: the children it has reaped count through it, so a
        difference of two readings is the CPU used in between, even by processes that
        came or went (Postfix's delivery agents, for one, exit every 100 messages).
        """
        total = 0.0
        for number, pid in enumerate(self.pids()):
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid, reaped=number == 0)
        return total

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []


@dataclass
class Mailplan(Server):
    work: Path = Path()
    command: tuple[str, ...] = ()  # what runs `mailplan`; the virtualenv's by default
    options: tuple[str, ...] = ()  # more options of `mailplan serve`
    variant: bool = False
    domains_yaml: str = ""  # more of `domains:` in site.yaml (relay_throughput.py --dkim)
    account: str = "{}"  # the settings of the recipient's account (`--site rules`)
    files: dict[str, bytes] = field(default_factory=dict)  # more files of the site
    log_path: Path = Path()
    log: Any = None
    accepts: LogCounter | None = None

    def start(self) -> None:
        self.port = free_port()
        self.recipient = "b@bench.test"
        site = self.work / "site"
        site.mkdir(parents=True)
        (site / "site.yaml").write_text(
            "server:\n"
            "  hostname: mx.bench.test\n"
            "  main_domain: bench.test\n"
            "  client_ips: |\n"
            "    127.0.0.1\n"
            "listeners:\n"
            f"  bench: {{protocol: smtp, bind: [{HOST}], port: {self.port}, "
            "tls: none, auth: none}\n"
            "domains:\n"
            "  bench.test:\n"
            "    accounts:\n"
            f"      b: {self.account}\n" + self.domains_yaml
        )
        for name, data in self.files.items():
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_bytes(data)
        self.log_path = self.work / "mailplan.log"
        self.log = self.log_path.open("wb")
        mailplan = self.command or (str(Path(sys.executable).with_name("mailplan")),)
        root = ["--allow-root"] if os.geteuid() == 0 else []  # benches run as root in CI
        command = [*mailplan, "serve", str(site), "--root", str(self.work / "root"), *root]
        command += self.options
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, cwd=self.work)
        wait_port(self.port, self.process, "mailplan")
        self.accepts = LogCounter(self.log_path, r" accepted from ")

    def stop(self) -> None:
        super().stop()
        if self.log:
            self.log.close()

    def pids(self) -> list[int]:
        """The server and every process under it: its queue process, and with `--workers`
        the workers and theirs."""
        return [self.process.pid, *descendants_of(self.process.pid)] if self.process else []

    @property
    def queue(self) -> Path:
        return self.work / "root" / "var" / "queue"

    @property
    def maildir(self) -> Path:
        return self.work / "root" / "var" / "mail" / "bench.test" / "b" / "new"

    def prepare(self) -> None:
        empty_directory(self.maildir)
        assert self.accepts is not None
        self.accepts.mark()

    def accepted(self) -> int:
        assert self.accepts is not None
        return self.accepts.count()

    def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            queued = count_files(self.queue, ".msg")  # not the server's pid file
            if queued == 0 and count_files(self.maildir) >= self.accepted():
                return
            time.sleep(0.05)
        print("  mailplan: deliveries still pending after the drain timeout", flush=True)


# `--site rules`: the example site's rules (sites/example.com/rules) on the bench's
# domain: server rules that are tried on every message (none fires for the bench's
# mail), the domain's rules, and the account's own (alice's, whose "Team copies" tags
# the Subject of every message: the message is changed before it is stored).
SERVER_RULES = """\
rule "Refuse executables" priority 9
  if   Header Field is "Content-Type: *application/x-msdownload*"
  then Reject with "550 5.7.1 executable attachments are not accepted here"

rule "Tag outgoing mail" priority 5
  if   Source in trusted, authenticated
  and  From is *@bench.test
  then Add Header "X-Sent-Via: mx.bench.test"

rule "Oversized mail in plain text" priority 3
  if   Message Size greater than 20M
  and  Security is none
  then Tag Subject "[large]"
"""


def with_rules(server: Mailplan) -> Mailplan:
    """The server on a site whose domain and account have rules, and server rules."""
    example = ROOT / "sites" / "example.com" / "rules"
    server.files = {
        **server.files,
        "rules/server.rules": SERVER_RULES.encode(),
        "rules/domain.rules": (example / "example.com.rules").read_bytes(),
        "rules/b.rules": (example / "alice.rules")
        .read_text()
        .replace("example.com", "bench.test")
        .encode(),
    }
    server.account = "{folders: [Weekend], rules: rules/b.rules}"
    server.domains_yaml += "    rules: rules/domain.rules\nserver_rules: rules/server.rules\n"
    return server


@dataclass
class Bare(Server):
    work: Path = Path()

    def start(self) -> None:
        self.port = free_port()
        self.recipient = "b@bench.test"
        self.store.mkdir(parents=True)
        command = [sys.executable, __file__, "_bare", str(self.port), str(self.store)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_port(self.port, self.process, "bare aiosmtpd")

    @property
    def store(self) -> Path:
        return self.work / "bare"

    def prepare(self) -> None:
        empty_directory(self.store)

    def accepted(self) -> int:
        return count_files(self.store)


@dataclass
class Postfix(Server):
    started_here: bool = False
    accepts: LogCounter = field(
        default_factory=lambda: LogCounter(POSTFIX_LOG, r"\(queue active\)")
    )

    def start(self) -> None:
        self.port = POSTFIX_PORT
        self.recipient = "b@y.test"
        setup_postfix()
        running = subprocess.run(["postfix", "status"], capture_output=True).returncode == 0
        if not running:
            if port_open(POSTFIX_PORT):
                sys.exit(f"port {POSTFIX_PORT} is taken by something that is not Postfix")
            subprocess.run(["postfix", "start"], check=True, capture_output=True)
            self.started_here = True
        wait_port(self.port, None, "Postfix")

    def stop(self) -> None:
        if self.started_here:
            subprocess.run(["postfix", "stop"], capture_output=True)

    def prepare(self) -> None:
        self.accepts.mark()

    def drain(self) -> None:
        spool = Path(
            subprocess.run(
                ["postconf", "-h", "queue_directory"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            if not any(any(files) for q in POSTFIX_QUEUES for _, _, files in os.walk(spool / q)):
                time.sleep(0.3)  # postlogd writes the last lines
                return
            time.sleep(0.05)
        print("  Postfix: queue not empty after the drain timeout", flush=True)

    def accepted(self) -> int:
        return self.accepts.count()

    def pids(self) -> list[int]:
        master = postfix_master()
        return [] if master is None else [master, *children_of(master)]


def descendants_of(parent: int) -> list[int]:
    """The processes under `parent`: its children, theirs, and so on."""
    found = children_of(parent)
    for child in list(found):
        found += descendants_of(child)
    return found


def children_of(parent: int) -> list[int]:
    """The processes whose parent is `parent`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
                if int(stat[1]) == parent:
                    found.append(int(entry.name))
    return found


def postfix_master() -> int | None:
    result = subprocess.run(
        ["postconf", "-h", "data_directory"], capture_output=True, text=True, check=False
    )
    pid_file = Path(result.stdout.strip() or "/var/lib/postfix") / "master.lock"
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().split()[0])
    return None


def setup_postfix() -> None:
    """What /work/shared/peers/setup_postfix.sh does (discard mode), idempotently."""
    installed = (
        shutil.which("postconf")
        and shutil.which("swaks")
        and Path("/usr/sbin/smtp-source").exists()
    )
    if not installed:
        print("installing postfix and swaks (apt-get) ...", flush=True)
        policy = Path("/usr/sbin/policy-rc.d")
        created = not policy.exists()
        if created:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            selections = (
                "postfix postfix/main_mailer_type select Local only\n"
                "postfix postfix/mailname string bench.test\n"
            )
            subprocess.run(["debconf-set-selections"], input=selections, text=True, check=True)
            environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "postfix", "swaks"],
                check=True,
                env=environment,
                stdout=subprocess.DEVNULL,
            )
        finally:
            if created:
                policy.unlink(missing_ok=True)
    for name in ("master.cf", "main.cf"):
        original = Path("/etc/postfix", name)
        backup = original.with_name(f"{name}.bench-orig")
        if not backup.exists():
            shutil.copy2(original, backup)
    settings = {
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "myhostname": "mx.bench.test",
        "mydestination": "y.test, bench.test, localhost",
        "mynetworks": "127.0.0.0/8",
        "local_recipient_maps": "",
        "local_transport": "discard:bench",
        "default_transport": "error",
        "relay_transport": "error",
        "in_flow_delay": "0",
        "maillog_file": str(POSTFIX_LOG),
        "smtpd_banner": "$myhostname ESMTP",
        "biff": "no",
        "message_size_limit": "10240000",
        "smtpd_end_of_data_restrictions": "",
    }
    postconf = ["postconf", "-e", *(f"{key} = {value}" for key, value in settings.items())]
    subprocess.run(postconf, check=True)
    subprocess.run(["postconf", "-MX", "smtp/inet"], capture_output=True)
    for port, extra in (
        (POSTFIX_PORT, ""),
        (
            POSTFIX_HOLD_PORT,
            " -o smtpd_end_of_data_restrictions=check_client_access,static:HOLD",
        ),
    ):
        service = f"{HOST}:{port}/inet = {HOST}:{port} inet n - n - - smtpd{extra}"
        subprocess.run(["postconf", "-M", service], check=True)
    subprocess.run(["postconf", "-F", "*/*/chroot = n"], check=True)
    postlog = subprocess.run(
        ["postconf", "-M", "postlog/unix-dgram"], capture_output=True, text=True
    ).stdout.strip()
    if not postlog:
        service = "postlog/unix-dgram = postlog unix-dgram n - n - 1 postlogd"
        subprocess.run(["postconf", "-M", service], check=True)
    subprocess.run(["newaliases"], capture_output=True)
    subprocess.run(["postfix", "check"], check=True)


# ---------------------------------------------------------------------------
# Running a load against a server.


@dataclass
class Result:
    server: str
    size: int
    clients: int
    round: int
    sent: int
    accepted: int
    elapsed: float
    server_cpu: float
    client_cpu: float
    errors: list[str]
    others: float = 0.0

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed else 0.0


def smtp_source() -> str | None:
    found = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    return found if os.access(found, os.X_OK) else None


def run_load(
    server: Server, client: str, count: int, clients: int, size: int
) -> tuple[float, int | None, float, list[str]]:
    """Send `count` messages; returns (seconds, client's ok count or None, client CPU, errors)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if client == "smtp-source":
        command = [
            smtp_source() or "smtp-source",
            "-d",
            "-s", str(clients),
            "-m", str(count),
            "-l", str(size),
            "-f", SENDER,
            "-t", server.recipient,
            f"{HOST}:{server.port}",
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=LOAD_TIMEOUT)
        elapsed = time.perf_counter() - started
        ok = None
        errors = [line for line in done.stderr.splitlines() if line.strip()][:3]
        if done.returncode:
            errors.append(f"smtp-source exited with status {done.returncode}")
    else:
        command = [
            sys.executable,
            __file__,
            "_load",
            str(server.port),
            str(count),
            str(clients),
            str(size),
            server.recipient,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=LOAD_TIMEOUT)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        elapsed, ok, errors = report["elapsed"], report["ok"], report["errors"]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, ok, client_cpu, errors


def measure(
    server: Server, client: str, count: int, clients: int, size: int, round_: int
) -> Result:
    server.prepare()
    os.sync()
    time.sleep(0.2)
    cpu_before = server.cpu()
    busy_before = machine_busy()
    elapsed, ok, client_cpu, errors = run_load(server, client, count, clients, size)
    busy = machine_busy() - busy_before
    server.drain()
    server_cpu = server.cpu() - cpu_before  # after the deliveries: they are part of the cost
    accepted = server.accepted()
    if ok is not None and ok != accepted:
        errors.append(f"the client counted {ok} accepted, the server {accepted}")
    return Result(
        server.name,
        size,
        clients,
        round_,
        count,
        accepted,
        elapsed,
        server_cpu,
        client_cpu,
        errors,
        # CPU used on the machine during the load by neither the server nor the client
        # (approximate: the server's later deliveries count as its own)
        max(busy - client_cpu - server_cpu, 0.0) / elapsed / (os.cpu_count() or 1),
    )


# ---------------------------------------------------------------------------
# Reporting.


def cell_name(size: int, clients: int) -> str:
    return f"{size // 1024} KiB, {clients} client{'s' if clients > 1 else ''}"


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    from importlib.metadata import version

    return (
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiosmtpd {version('aiosmtpd')}, "
        f"mailplan {revision()}"
    )


def revision() -> str:
    """The commit of the code under test, and whether the runtime differs from it."""
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        return "(not a git checkout)"
    changed = subprocess.run(
        [*git, "diff", "--quiet", "HEAD", "--", "runtime", "mailplan", "plan", "compiler"]
    ).returncode
    return head.stdout.strip() + (" + uncommitted changes" if changed else "")


def postfix_version() -> str:
    result = subprocess.run(["postconf", "-h", "mail_version"], capture_output=True, text=True)
    return result.stdout.strip() or "?"


def report(
    results: list[Result], names: list[str], variants: list[str], cells: list[tuple[int, int]]
) -> dict[str, Any]:
    by_cell: dict[tuple[int, int, str], list[Result]] = defaultdict(list)
    for result in results:
        by_cell[result.size, result.clients, result.server].append(result)
    summary: dict[str, Any] = {}
    print()
    print("messages per second accepted (median of rounds; each round's figure in brackets)")
    width = max(len(n) for n in names)
    for size, clients in cells:
        cell = cell_name(size, clients)
        if not any((size, clients, n) in by_cell for n in names):
            continue
        print(f"\n{cell}")
        medians: dict[str, float] = {}
        for name in names:
            runs = by_cell.get((size, clients, name), [])
            if not runs:
                continue
            rate = statistics.median(r.rate for r in runs)
            server_cpu = statistics.median(r.server_cpu / max(r.accepted, 1) for r in runs)
            client_cpu = statistics.median(r.client_cpu / max(r.accepted, 1) for r in runs)
            medians[name] = rate
            rounds = ", ".join(f"{r.rate:.0f}" for r in runs)
            print(
                f"  {name:<{width}}  {rate:8.0f} msg/s  [{rounds}]  "
                f"server CPU {server_cpu * 1e3:.2f} ms/msg, "
                f"client CPU {client_cpu * 1e3:.2f} ms/msg"
            )
            for r in runs:
                if r.accepted != r.sent or r.errors:
                    print(f"    round {r.round}: {r.accepted}/{r.sent} accepted; {r.errors}")
            summary.setdefault(cell, {})[name] = {
                "msgs_per_s": rate,
                "rounds": [r.rate for r in runs],
                "server_cpu_ms_per_msg": server_cpu * 1e3,
                "client_cpu_ms_per_msg": client_cpu * 1e3,
            }
        for other in names[1:]:
            if "mailplan" not in medians or not medians.get(other):
                continue
            if other in variants:
                ratio = medians[other] / medians["mailplan"]
                print(f"  {other} / mailplan: {ratio:.2f}")
                summary[cell][f"{other}/mailplan"] = ratio
            else:
                ratio = medians["mailplan"] / medians[other]
                print(f"  mailplan / {other}: {ratio:.2f}")
                summary[cell][f"mailplan/{other}"] = ratio
    return summary


# ---------------------------------------------------------------------------
# Profiling mailplan with py-spy.


def py_spy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    if found.exists():
        return str(found)
    which = shutil.which("py-spy")
    if not which:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return which


# Leaves where a thread waits rather than works: the event loop in epoll, an idle
# worker of the default executor waiting for a job.
IDLE_LEAVES = ("EpollSelector.select (", "select (selectors", "_worker (concurrent/futures")
PLUMBING = ("<module>", "main (", "run (", "Runner.run", "BaseEventLoop.", "Handle._run", "_serve")


def _frames(stack: str) -> list[str]:
    """The frames of a py-spy raw stack, outermost first, without the thread's name."""
    return stack.split(";")[1:]


def _function(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def analyse(folded: Path, messages: int, rate_hz: int, wall: bool, top: int = 15) -> None:
    """Where a py-spy raw profile of mailplan spends its samples, in ms per message.

    `wall` (py-spy --idle): every sample, so time blocked in fsync or epoll counts;
    otherwise only samples of threads that were on a CPU.
    """
    threads: dict[str, Counter[str]] = defaultdict(Counter)  # thread -> stack -> samples
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if _frames(stack):  # a thread caught outside Python code has none
            threads[stack.split(";", 1)[0]][stack] += int(samples)

    def ms(samples: int) -> str:
        return f"{samples / rate_hz / messages * 1e3:7.3f}"

    loop_name = max(
        threads, key=lambda t: sum(n for s, n in threads[t].items() if "run_forever" in s)
    )
    loop = threads[loop_name]
    total = sum(loop.values())
    busy = {s: n for s, n in loop.items() if not _frames(s)[-1].startswith(IDLE_LEAVES)}
    busy_total = sum(busy.values())
    workers: Counter[str] = Counter()  # innermost two frames (the line, its caller)
    worker_functions: Counter[str] = Counter()  # mailplan's function in the job
    for name, stacks in threads.items():
        if name == loop_name:
            continue
        for stack, n in stacks.items():
            frames = _frames(stack)
            if not frames or frames[-1].startswith(IDLE_LEAVES):
                continue
            workers[" <- ".join(reversed(frames[-2:]))] += n
            # the job: the function the executor's work item runs
            jobs = [i for i, f in enumerate(frames) if f.startswith("_WorkItem.run (")]
            job = frames[jobs[0] + 1] if jobs and jobs[0] + 1 < len(frames) else "(other)"
            worker_functions[_function(job)] += n
    worker_total = sum(workers.values())
    kind = "wall-clock (blocked time included)" if wall else "on-CPU"
    print(f"  {kind}, ms per message:")
    if wall:
        print(
            f"    event loop thread: working {ms(busy_total)}, "
            f"waiting in epoll {ms(total - busy_total)}"
        )
        print(f"    worker threads, summed: {ms(worker_total)} (working or blocked in a syscall)")
    else:
        print(f"    event loop thread {ms(busy_total)}, worker threads {ms(worker_total)}")
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, n in busy.items():
        frames = [_function(f) for f in _frames(stack)]
        own[frames[-1]] += n
        for frame in set(frames):
            if not frame.startswith(PLUMBING):
                inclusive[frame] += n
    print(f"    event loop, by function, self time (top {top}):")
    for frame, n in own.most_common(top):
        print(f"      {ms(n)}  {n / max(busy_total, 1):4.0%}  {frame}")
    print(f"    event loop, by function, inclusive (top {top}):")
    for frame, n in inclusive.most_common(top):
        print(f"      {ms(n)}  {n / max(busy_total, 1):4.0%}  {frame}")
    print("    worker threads, by job:")
    for frame, n in worker_functions.most_common(8):
        print(f"      {ms(n)}  {frame}")
    print(f"    worker threads, by line <- caller (top {top}):")
    for frame, n in workers.most_common(top):
        print(f"      {ms(n)}  {frame}")


def profile(args: argparse.Namespace, client: str, work: Path) -> None:
    """Under py-spy, at the loads of PROFILE_CELLS: mailplan on-CPU and wall-clock, then
    bare aiosmtpd on-CPU (the same library with nothing else: what mailplan adds shows)."""
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    mailplan = Mailplan("mailplan", work=work / "mailplan")
    if args.site == "rules":
        with_rules(mailplan)
    bare = Bare("bare aiosmtpd", work=work)
    started: list[Server] = []
    try:
        servers: tuple[Server, ...] = (mailplan, bare)
        for server in servers:
            server.start()
            started.append(server)
            run_load(server, client, 200, 5, 2048)  # warm up
            server.drain()
        for size, clients in PROFILE_CELLS:
            passes: tuple[tuple[Server, bool], ...] = ((mailplan, False), (mailplan, True))
            for server, wall in (*passes, (bare, False)):
                mode = "wall" if wall else "cpu"
                tag = server.name.split()[0]
                folded = out / f"{tag}-{size // 1024}k-{clients}c-{mode}.txt"
                server.prepare()
                os.sync()
                time.sleep(0.2)
                command = [
                    py_spy(), "record", "-p", str(server.pids()[0]), "-r", str(args.rate),
                    "--threads", "--nonblocking", "--format", "raw", "-o", str(folded),
                    *(["--idle"] if wall else []),
                ]  # fmt: skip
                spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)
                cpu_before = server.cpu()
                elapsed, _, _, errors = run_load(server, client, args.count, clients, size)
                server.drain()  # deliveries are part of the per-message cost
                cpu_after = server.cpu()
                spy.send_signal(signal.SIGINT)
                _, stderr = spy.communicate(timeout=60)
                accepted = server.accepted()
                print(
                    f"\n{server.name}, {cell_name(size, clients)}, py-spy {mode} "
                    f"({args.rate} Hz): {accepted / elapsed:.0f} msg/s, "
                    f"server CPU {(cpu_after - cpu_before) / accepted * 1e3:.2f} ms/msg; "
                    f"raw stacks in {folded}"
                )
                if errors:
                    print(f"  errors: {errors}")
                if folded.exists():
                    analyse(folded, accepted, args.rate, wall)
                else:
                    print(f"  py-spy wrote nothing: {stderr.decode(errors='replace')}")
    finally:
        for server in started:
            server.stop()


# ---------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        return load_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        return bare_main(sys.argv[2:])
    # SIGTERM unwinds like Ctrl-C, so that the servers started here are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--with-postfix", action="store_true", help="install, set up, compare")
    parser.add_argument("--count", type=int, default=3000, help="messages per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 messages, 1 round")
    parser.add_argument(
        "--client",
        choices=("auto", "smtp-source", "python"),
        default="auto",
        help="load generator (auto: smtp-source when installed)",
    )
    parser.add_argument("--profile", metavar="DIR", help="profile with py-spy instead")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--workers", default="1", metavar="N|auto", help="mailplan serve --workers (default 1)"
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        metavar="KIBxCLIENTS",
        help="only these cells, e.g. 2x20 64x1 (default: 2x1 2x20 64x1 64x20)",
    )
    parser.add_argument("--no-bare", action="store_true", help="leave out bare aiosmtpd")
    parser.add_argument(
        "--site",
        choices=("plain", "rules"),
        default="plain",
        help="mailplan's site: one account without rules, or the example site's rules",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also measure a build of mailplan run by COMMAND (+ `serve SITE --root DIR`)",
    )
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 300, 1
    cells = list(CELLS)
    if args.cells:
        cells = [(int(k) * 1024, int(c)) for k, _, c in (x.partition("x") for x in args.cells)]

    servers: list[Server] = []
    work = Path(tempfile.mkdtemp(prefix="smtp_accept."))
    try:
        if args.with_postfix:
            postfix = Postfix("Postfix")
            postfix.start()  # installs first, so that smtp-source exists for `auto`
            servers.append(postfix)
        client = args.client
        if client == "auto":
            client = "smtp-source" if smtp_source() else "python"
        if client == "smtp-source" and not smtp_source():
            sys.exit("smtp-source is not installed (--with-postfix installs it)")
        if args.profile:
            print(f"machine: {machine()}\nload generator: {client}")
            profile(args, client, work)
            return 0
        workers = ("--workers", args.workers)
        mailplan = Mailplan("mailplan", work=work / "mailplan", options=workers)
        others: list[Server] = [] if args.no_bare else [Bare("bare aiosmtpd", work=work)]
        for number, variant in enumerate(args.variant):
            name, _, command = variant.partition("=")
            directory = work / f"variant{number}"
            others.append(Mailplan(name, work=directory, command=tuple(shlex.split(command))))
        for server in (mailplan, *others):
            if args.site == "rules" and isinstance(server, Mailplan):
                with_rules(server)
            server.start()
        servers = [mailplan, *others, *servers]
        names = [s.name for s in servers]
        variants = [s.name for s in others if isinstance(s, Mailplan)]
        print(f"machine: {machine()}")
        if args.with_postfix:
            print(f"Postfix {postfix_version()} on {HOST}:{POSTFIX_PORT} (discard delivery)")
        if args.site == "rules":
            print("mailplan's site: server, domain and account rules (the example site's)")
        print(
            f"load generator: {client}; {args.count} messages per measurement, "
            f"{args.rounds} round(s); work directory {work}"
        )
        for server in servers:  # warm up: imports, first files, page cache
            run_load(server, client, 100, 5, 2048)
            server.drain()
        results: list[Result] = []
        turn = 0
        for round_ in range(1, args.rounds + 1):
            for size, clients in cells:
                order = servers[turn % len(servers) :] + servers[: turn % len(servers)]
                turn += 1
                for server in order:
                    result = measure(server, client, args.count, clients, size, round_)
                    results.append(result)
                    print(
                        f"round {round_}  {cell_name(size, clients):<17} {server.name:<14}"
                        f" {result.rate:8.0f} msg/s  ({result.accepted}/{result.sent} in "
                        f"{result.elapsed:.2f} s, server CPU "
                        f"{result.server_cpu / max(result.accepted, 1) * 1e3:.2f} ms/msg, "
                        f"others {result.others:.0%} CPU)"
                        + (f"  {result.errors}" if result.errors else ""),
                        flush=True,
                    )
        summary = report(results, names, variants, cells)
        if args.json:
            payload = {"machine": machine(), "client": client, "cells": summary}
            Path(args.json).write_text(json.dumps(payload, indent=2))
        return 0
    finally:
        for server in reversed(servers):
            server.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
