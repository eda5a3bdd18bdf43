"""A real DNS server for tests: BIND's `named` on a loopback port, serving zone files.

`NameServer(root, {"example.test": ZONE_TEXT}).start()` writes the zones and a
`named.conf` under `root`, runs `named` in the foreground on 127.0.0.1 (UDP and TCP
on one free port, no recursion) and waits until every zone answers its SOA. Tests
point dnspython at it with `resolver()`, or hand `address` (`IP:PORT`) to the code
under test. `Silent` is a UDP and TCP port that reads queries and never answers, for
time-out tests. Debian's `bind9` package provides `named` (`.ci/run` installs it);
nothing here reaches beyond loopback.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import dns.resolver
from serverkit import LOOPBACK, free_port

NAMED = shutil.which("named") or "/usr/sbin/named"

CONFIG = """\
options {{
    directory "{root}";
    pid-file "{root}/named.pid";
    listen-on port {port} {{ {host}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
    notify no;
}};
controls {{ }};
logging {{
    channel log {{ file "{root}/named.log"; severity info; }};
    category default {{ log; }};
}};
{zones}
"""

ZONE = 'zone "{name}" {{ type primary; file "{file}"; }};\n'


def zone_text(origin: str, records: str, ttl: int = 300) -> str:
    """A complete zone file for `origin` with an SOA and NS, then `records` (zone-file lines)."""
    origin = origin.rstrip(".") + "."
    return (
        f"$ORIGIN {origin}\n$TTL {ttl}\n"
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 300\n"
        f"@ IN NS ns.{origin}\nns IN A {LOOPBACK}\n{records}\n"
    )


class NameServer:
    """`named` serving `zones` (name → zone-file text) on a free loopback port."""

    def __init__(self, root: Path, zones: Mapping[str, str], host: str = LOOPBACK) -> None:
        self.root = root
        self.zones = dict(zones)
        self.host = host
        self.port = free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def resolver(self, timeout: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks this server only."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.timeout = resolver.lifetime = timeout
        return resolver

    def start(self) -> NameServer:
        self.root.mkdir(parents=True, exist_ok=True)
        declarations = ""
        for name, text in self.zones.items():
            file = self.root / f"{name.rstrip('.')}.zone"
            file.write_text(text)
            declarations += ZONE.format(name=name.rstrip("."), file=file)
        config = self.root / "named.conf"
        config.write_text(
            CONFIG.format(root=self.root, port=self.port, host=self.host, zones=declarations)
        )
        with (self.root / "named.stderr").open("wb") as stderr:
            self.process = subprocess.Popen(
                [NAMED, "-g", "-4", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        pending = [name.rstrip(".") + "." for name in self.zones]
        deadline = time.monotonic() + timeout
        while pending:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"named exited: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"named did not serve {pending}: {self.log()}")
            query = dns.message.make_query(pending[0], dns.rdatatype.SOA)
            try:
                answer = dns.query.udp(query, self.host, port=self.port, timeout=0.2)
            except (OSError, dns.exception.Timeout):
                time.sleep(0.05)
                continue
            if answer.answer:
                pending.pop(0)
            else:
                time.sleep(0.05)

    def log(self) -> str:
        parts = [self.root / "named.stderr", self.root / "named.log"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> NameServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class Silent:
    """A loopback 'DNS server' that takes queries over UDP and TCP and never answers."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = free_port(host)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, self.port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((host, self.port))
        self.tcp.listen()
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                self.udp.recv(4096)
            except OSError:
                return

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        for sock in (self.udp, self.tcp, *self._held):
            sock.close()

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
