#!/usr/bin/env python3
"""How fast mailplan's POP3 reads a mailbox, against Dovecot's POP3 on the same Maildir.

One Maildir of N messages (written with mailplan's own LOCAL delivery) is served by:

- mailplan: `mailplan serve` on a generated site whose one POP3 listener is on
  127.0.0.1 (`tls: none`, `plaintext_auth: true`);
- Dovecot (`dovecot-pop3d`, needed; `apt-get install dovecot-pop3d`): the files
  `mailplan dovecot` writes for the same site, with `protocols = pop3` and a pop3
  listener on 127.0.0.1 added. Dovecot reads mail as `nobody`, so the Maildir is
  handed to that user (this script must run as root, as CI does).

Each session logs in (USER/PASS: one argon2id verification on both), then STAT,
UIDL, RETR of every message, QUIT without deleting. A first session per server warms
it up (Dovecot builds its index, both fill the page cache); then `--rounds` sessions
per server alternate, and the figure is the median. Printed: seconds to login+STAT
(the mailbox opened and listed), to UIDL, to RETR everything, MB/s of RETR, and the
ratio mailplan/Dovecot of the whole session. Nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import os
import poplib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT), str(PROJECT / "tests")]

from argon2 import PasswordHasher  # noqa: E402
from serverkit import LOOPBACK, MailServer, accepts, free_ports, mailplan, wait_until  # noqa: E402
from sitekit import listener, write_site  # noqa: E402

from mailplan.runtime.store import maildir  # noqa: E402

PASSWORD = "bench"


def session(port: int) -> tuple[float, float, float, int]:
    """(login+STAT s, UIDL s, RETR-all s, bytes retrieved) for one POP3 session."""
    start = time.perf_counter()
    client = poplib.POP3(LOOPBACK, port, timeout=120)
    client.user("reader@example.com")
    client.pass_(PASSWORD)
    count, _ = client.stat()
    opened = time.perf_counter()
    client.uidl()
    listed = time.perf_counter()
    octets = 0
    for number in range(1, count + 1):
        octets += client.retr(number)[2]
    done = time.perf_counter()
    client.quit()
    return opened - start, listed - opened, done - listed, octets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=8192, help="body bytes per message")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    if os.geteuid() != 0 or not Path("/usr/lib/dovecot/pop3").exists():
        print("needs root and Dovecot's POP3 (apt-get install dovecot-pop3d)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="mailplan-pop3-bench-"))
    os.chmod(base, 0o711)
    mine, theirs = free_ports(2)
    site = write_site(
        base / "site",
        listeners={"pop3": listener(mine, tls="none", plaintext_auth=True)},
        client_ips=(),
        accounts={"reader": {"password": PasswordHasher().hash(PASSWORD)}},
    )
    folder = base / "var" / "mail" / "example.com" / "reader"
    line = b"x" * 76 + b"\r\n"
    body = line * (arguments.size // len(line))
    for n in range(arguments.messages):
        maildir.deliver(folder, "s@remote.example", b"Subject: %d\r\n\r\n" % n + body)
    subprocess.run(["chown", "-R", "nobody:", str(base / "var")], check=True)
    output = base / "dovecot"
    result = mailplan("dovecot", site, "-o", output, "--root", base, "--user", "nobody")
    assert result.returncode == 0, result.stderr
    (base / "run").mkdir(mode=0o755)
    config = base / "bench.conf"
    config.write_text(
        f"!include {output / 'dovecot.conf'}\nprotocols = pop3\n"
        f"base_dir = {base}/run\nstate_dir = {base}/run/state\nlog_path = {base}/dovecot.log\n"
        "disable_plaintext_auth = no\n"
        f"service pop3-login {{\n  inet_listener pop3 {{\n    address = {LOOPBACK}\n"
        f"    port = {theirs}\n  }}\n}}\n"
    )
    server = MailServer(site, base, [mine]).start()
    dovecot = subprocess.Popen(["dovecot", "-F", "-c", str(config)], stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: accepts(LOOPBACK, theirs), 10), "dovecot did not start"
        ports = {"mailplan": mine, "dovecot": theirs}
        figures: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in ports}
        for port in ports.values():
            session(port)  # warm up
        for k in range(arguments.rounds):
            order = list(ports) if k % 2 == 0 else list(reversed(ports))
            for name in order:
                figures[name].append(session(ports[name]))
        print(
            f"{arguments.messages} messages of {arguments.size} body bytes, "
            f"median of {arguments.rounds} sessions, one client"
        )
        print(f"{'server':<10} {'login+STAT s':>12} {'UIDL s':>8} {'RETR all s':>10} {'MB/s':>7}")
        totals = {}
        for name, rows in figures.items():
            login = statistics.median(r[0] for r in rows)
            uidl = statistics.median(r[1] for r in rows)
            retr = statistics.median(r[2] for r in rows)
            megabytes = rows[0][3] / 1e6
            totals[name] = login + uidl + retr
            print(f"{name:<10} {login:>12.3f} {uidl:>8.3f} {retr:>10.3f} {megabytes / retr:>7.1f}")
        print(f"mailplan / dovecot, whole session: {totals['mailplan'] / totals['dovecot']:.2f}")
    finally:
        dovecot.send_signal(signal.SIGTERM)
        dovecot.wait(10)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
