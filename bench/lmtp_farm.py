#!/usr/bin/env python3
"""Accept -> LMTP -> Dovecot against accept -> Maildir, and two nodes against one.

Measured on the same machine in one run (docs/scaling.md, docs/benchmarks.md):

- maildir: one `mailplan serve` with `delivery.local: {via: maildir}` (the default):
  mail for the local account goes through the intake journal and into mailplan's own
  Maildir.
- lmtp x1: one `mailplan serve` of a plan with `delivery.local: {via: lmtp}`: each
  message is queued (fsync before 250), then handed to Debian's Dovecot over LMTP on
  loopback (Dovecot writes the Maildir), and settled on Dovecot's 250.
- dovecot: no mailplan, the ceiling: this file's process hands the same messages
  straight to Dovecot with mailplan's LMTP client (`runtime.delivery.lmtp`), over as
  many connections as a node opens to one LMTP queue (4). Dovecot's fsync of each
  message is most of what LMTP delivery costs.
- lmtp x2: two nodes of that plan (`serve --plan plan.json --bind 127.0.0.2` and
  `127.0.0.3`, each with its own queue), the clients split between them, both handing
  over to the same Dovecot.

The figure of a cell is end to end: messages / seconds from the first MAIL until the
last message is in the mailbox (counted on disk: files in the Maildir's new/ and cur/).
`--clients` connections (threads, smtplib, one connection each for many messages),
`--size` bytes of body, `--count` messages per measurement, `--rounds` rounds with
the order of the cells rotating; the median of the rounds is reported, and the ratios
lmtp x1 / maildir, lmtp x1 / dovecot and lmtp x2 / lmtp x1 of those medians. Each server keeps its
log in its folder. Nothing here asserts a timing. Network only to 127.0.0.0/8.

    .venv/bin/python bench/lmtp_farm.py --quick           # a smoke run, seconds
    .venv/bin/python bench/lmtp_farm.py                   # 3 rounds of 2000 messages
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import shutil
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT), str(PROJECT / "tests")]

from argon2 import PasswordHasher  # noqa: E402
from serverkit import LOOPBACK, MailServer, free_ports, mailplan  # noqa: E402
from test_dovecot import Dovecot  # noqa: E402

from mailplan.runtime.delivery import lmtp  # noqa: E402
from mailplan.runtime.delivery.outbound import Parcel  # noqa: E402
from mailplan.runtime.delivery.scheduler import CONNECTIONS  # noqa: E402

NODES = ("127.0.0.2", "127.0.0.3")
ACCEPTED: list[float] = []  # msg/s of the sending alone, of the last measurement
MAIL_USER = "nobody"
SITE = """\
server: {{hostname: mx.example.com, main_domain: example.com, client_ips: "127.0.0.0/8"}}
listeners:
  smtp: {{port: {smtp}, bind: [{bind}], tls: none, auth: none}}
queue: {{directory: var/queue, mail_directory: var/mail}}
receiving: {{return_path: {{scope: nobody}}, spf: {{scope: nobody}}}}
{delivery}
domains:
  example.com:
    accounts: {{{accounts}}}
"""
ACCOUNTS = 16  # recipients, one per client in turn: mailboxes are not all one


class Node(MailServer):
    """`mailplan serve --plan PLAN --bind ADDRESS`."""

    def __init__(self, plan: Path, root: Path, address: str, port: int) -> None:
        super().__init__(plan, root, [(address, port)], extra_arguments=["--bind", address])

    def command(self) -> list[str]:
        command = super().command()
        at = command.index(str(self.site))
        return [*command[:at], "--plan", str(self.site), *command[at + 1 :]]


def count(domain: Path) -> int:
    """Messages in every account's INBOX under the domain's folder."""
    return sum(
        len(os.listdir(domain / account / sub))
        for account in (f"user{n}" for n in range(ACCOUNTS))
        for sub in ("new", "cur")
        if (domain / account / sub).is_dir()
    )


def load(targets: list[tuple[str, int]], total: int, clients: int, size: int) -> float:
    """Send `total` messages over `clients` connections spread over `targets`; the time
    the sending took (the caller waits for delivery)."""
    body = ("x" * 76 + "\r\n") * max(1, size // 78)
    message = f"From: <s@remote.test>\r\nSubject: bench\r\n\r\n{body}".encode()
    share = [total // clients + (1 if n < total % clients else 0) for n in range(clients)]
    failures: list[BaseException] = []

    def client(number: int) -> None:
        host, port = targets[number % len(targets)]
        try:
            with smtplib.SMTP(host, port, timeout=60) as smtp:
                for sent in range(share[number]):
                    to = f"user{(number + sent * clients) % ACCOUNTS}@example.com"
                    smtp.sendmail("s@remote.test", [to], message)
        except BaseException as exc:  # reported after the run
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} client(s) failed: {failures[0]!r}")
    return time.monotonic() - started


def measure(
    targets: list[tuple[str, int]], mailbox: Path, total: int, clients: int, size: int
) -> float:
    """Messages per second, end to end: from the first MAIL to the last in the mailbox."""
    before = count(mailbox)
    started = time.monotonic()
    sending = load(targets, total, clients, size)
    ACCEPTED.append(total / sending)
    deadline = time.monotonic() + 600
    while count(mailbox) < before + total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count(mailbox) - before} of {total} delivered")
        time.sleep(0.01)
    return total / (time.monotonic() - started)


Cell = Callable[[int], float]  # messages -> msg/s


def straight(server: str, total: int, size: int) -> None:
    """`total` messages handed to Dovecot by this process, over `CONNECTIONS["LMTP"]`."""
    body = ("x" * 76 + "\r\n") * max(1, size // 78)
    message = f"From: <s@remote.test>\r\nSubject: bench\r\n\r\n{body}".encode()
    parcels = [
        Parcel(f"B{n}", "s@remote.test", (f"user{n % ACCOUNTS}@example.com",), message)
        for n in range(total)
    ]
    settings = lmtp.LmtpSettings("bench.example.com", 60)
    width = CONNECTIONS["LMTP"]

    async def run() -> None:
        jobs = (lmtp.deliver((server,), parcels[n::width], settings) for n in range(width))
        for outcomes in await asyncio.gather(*jobs):
            assert all(o.kind == "delivered" for o in outcomes), outcomes[:1]

    asyncio.run(run())


def setup(root: Path) -> tuple[dict[str, Cell], list[MailServer], Dovecot]:
    ports = dict(zip(("maildir", "lmtp_smtp", "lmtp"), free_ports(3), strict=True))
    hashed = PasswordHasher().hash("bench")
    accounts = ", ".join(f'user{n}: {{password: "{hashed}"}}' for n in range(ACCOUNTS))
    # one node writing its own Maildir
    maildir_site = root / "maildir-site"
    maildir_site.mkdir()
    (maildir_site / "site.yaml").write_text(
        SITE.format(smtp=ports["maildir"], bind=LOOPBACK, delivery="", accounts=accounts)
    )
    maildir_root = root / "maildir-node"
    # the LMTP plan, built once, for one or two nodes
    lmtp_site = root / "lmtp-site"
    lmtp_site.mkdir()
    delivery = f'delivery: {{local: {{via: lmtp, to: ["{LOOPBACK}:{ports["lmtp"]}"]}}}}'
    (lmtp_site / "site.yaml").write_text(
        SITE.format(smtp=ports["lmtp_smtp"], bind="0.0.0.0", delivery=delivery, accounts=accounts)
    )
    plan = root / "plan.json"
    built = mailplan("build", lmtp_site, "-o", plan)
    assert built.returncode == 0, built.stderr
    mail = root / "var" / "mail"
    mail.mkdir(parents=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(MAIL_USER)
        os.chown(mail, entry.pw_uid, entry.pw_gid)
    written = mailplan("dovecot", "--plan", plan, "-o", root / "dovecot", "--root", root,
                       "--user", MAIL_USER)  # fmt: skip
    assert written.returncode == 0, written.stderr
    dovecot = Dovecot.under(root / "dovecot", root, [ports["lmtp"]])
    servers: list[MailServer] = [MailServer(maildir_site, maildir_root, [ports["maildir"]])]
    servers += [Node(plan, root / f"node-{a}", a, ports["lmtp_smtp"]) for a in NODES]
    inbox = mail / "example.com"
    own = maildir_root / "var" / "mail" / "example.com"
    one = [(LOOPBACK, ports["maildir"])]
    node = [(NODES[0], ports["lmtp_smtp"])]
    both = [(address, ports["lmtp_smtp"]) for address in NODES]

    def cell(targets: list[tuple[str, int]], box: Path) -> Cell:
        return lambda total: measure(targets, box, total, ARGS.clients, ARGS.size)

    def raw(total: int) -> float:
        before = count(inbox)
        started = time.monotonic()
        straight(f"{LOOPBACK}:{ports['lmtp']}", total, ARGS.size)
        ACCEPTED.append(total / (time.monotonic() - started))
        assert count(inbox) >= before + total
        return ACCEPTED[-1]

    cells = {
        "maildir": cell(one, own),
        "dovecot": raw,
        "lmtp x1": cell(node, inbox),
        "lmtp x2": cell(both, inbox),
    }
    return cells, servers, dovecot


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="mailplan-bench-lmtp-"))
    os.chmod(root, 0o711)
    cells, servers, dovecot = setup(root)
    results: dict[str, list[float]] = {name: [] for name in cells}
    accepted: dict[str, list[float]] = {name: [] for name in cells}
    try:
        dovecot.start()
        for server in servers:
            server.start()
        names = list(cells)
        for name in names:  # warm up: connections, Dovecot's index, the first mailbox files
            cells[name](min(50, ARGS.count))
        for round_number in range(ARGS.rounds):
            order = names[round_number % len(names) :] + names[: round_number % len(names)]
            for name in order:
                rate = cells[name](ARGS.count)
                results[name].append(rate)
                accepted[name].append(ACCEPTED[-1])
                print(
                    f"round {round_number + 1} {name:8} {rate:8.1f} msg/s "
                    f"(accepted at {ACCEPTED[-1]:.1f} msg/s)",
                    flush=True,
                )
    finally:
        for server in servers:
            server.stop()
        dovecot.stop()
        if not ARGS.keep:
            shutil.rmtree(root, ignore_errors=True)
    median = {name: statistics.median(rates) for name, rates in results.items()}
    print(
        f"\n{ARGS.count} messages of {ARGS.size} bytes, {ARGS.clients} clients, "
        f"{ARGS.rounds} round(s), {os.cpu_count()} CPU(s); end to end (in the mailbox)"
    )
    for name, rate in median.items():
        took = statistics.median(accepted[name])
        print(f"  {name:8} {rate:8.1f} msg/s (median; accepted at {took:.1f} msg/s)")
    print(f"  lmtp x1 / maildir  {median['lmtp x1'] / median['maildir']:.2f}")
    print(f"  lmtp x1 / dovecot  {median['lmtp x1'] / median['dovecot']:.2f}")
    print(f"  lmtp x2 / lmtp x1  {median['lmtp x2'] / median['lmtp x1']:.2f}")
    return 0


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per measurement")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048, help="body bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 messages, one round")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs)")
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.count, parsed.rounds = 200, 1
    return parsed


if __name__ == "__main__":
    ARGS = arguments()
    sys.exit(main())
