"""BIND's `named` on a loopback port, for the interop tests whose point is BIND itself.

`Named(root, {"example.test": ZONE_TEXT})` has the interface of `dnskit.NameServer`: it
writes the zones and a `named.conf` under `root`, runs `named` in the foreground on
127.0.0.1 (UDP and TCP on one free port, no recursion) and waits until every zone that
loads answers its SOA. `sign` signs a zone text with BIND's DNSSEC tools, and
`Validator` is `named` as a validating resolver that forwards to such a server (for
DANE). Debian's `bind9` package provides `named` (`bind9-utils` the signing tools); a
test that uses this carries `@pytest.mark.interop("named")` (tests/interop.py).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from dnskit import NameServer
from interop import program
from serverkit import LOOPBACK, free_port

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


class Named(NameServer):
    """`named` serving `zones` (name → zone-file text) on a free loopback port."""

    def __init__(self, root: Path, zones: Mapping[str, str], host: str = LOOPBACK) -> None:
        super().__init__(root, zones, host)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Named:
        self.port = free_port(self.host)
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
        named = program("named") or "named"
        with (self.root / "named.stderr").open("wb") as stderr:
            self.process = subprocess.Popen(
                [named, "-g", "-4", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        """Until every zone answers its SOA, or SERVFAIL once named gave up loading it."""
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
            if answer.answer or (answer.rcode() == dns.rcode.SERVFAIL and self._failed(pending[0])):
                pending.pop(0)
            else:
                time.sleep(0.05)

    def _failed(self, zone: str) -> bool:
        return f"zone {zone.rstrip('.')}/IN: not loaded due to errors" in self.log()

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

    def __enter__(self) -> Named:
        return self.start()


def sign(folder: Path, origin: str, text: str) -> tuple[str, str]:
    """`text` (a zone file for `origin`) signed with BIND's `dnssec-keygen` and
    `dnssec-signzone` (ECDSA P-256, a KSK and a ZSK, NSEC); and the KSK's
    DNSKEY data (`257 3 13 BASE64`) for a validator's trust anchor."""
    folder.mkdir(parents=True, exist_ok=True)
    origin = origin.rstrip(".")
    keygen = program("dnssec-keygen") or "dnssec-keygen"
    signzone = program("dnssec-signzone") or "dnssec-signzone"
    for flags in (["-f", "KSK"], []):
        subprocess.run(
            [keygen, "-q", "-a", "ECDSAP256SHA256", *flags, "-K", str(folder), origin],
            check=True,
            capture_output=True,
        )
    unsigned, signed = folder / f"{origin}.unsigned", folder / f"{origin}.signed"
    unsigned.write_text(text)
    command = [signzone, "-q", "-S", "-K", str(folder), "-d", str(folder), "-o", origin]
    subprocess.run([*command, "-f", str(signed), str(unsigned)], check=True, capture_output=True)
    anchor = ""
    for key in folder.glob(f"K{origin}.+013+*.key"):
        for line in key.read_text().splitlines():
            if " DNSKEY 257 " in line:
                anchor = line.split(" DNSKEY ", 1)[1]
    return signed.read_text(), anchor


VALIDATOR = """\
options {{
    directory "{root}";
    pid-file "{root}/named.pid";
    listen-on port {port} {{ {host}; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-recursion {{ 127.0.0.0/8; }};
    dnssec-validation yes;
    notify no;
    forward only;
    forwarders {{ {upstream} port {upstream_port}; }};
}};
controls {{ }};
logging {{
    channel log {{ file "{root}/named.log"; severity info; }};
    category default {{ log; }};
}};
trust-anchors {{
{anchors}}};
"""


class Validator(Named):
    """`named` as a DNSSEC-validating resolver on loopback: every question forwarded to
    `upstream` (`IP:PORT`, never beyond loopback), answers validated against the trust
    `anchors` (zone → `257 3 13 BASE64`); validated answers carry the AD bit."""

    def __init__(
        self, root: Path, upstream: str, anchors: Mapping[str, str], host: str = LOOPBACK
    ) -> None:
        super().__init__(root, {}, host)
        self.upstream = upstream
        self.anchors = dict(anchors)

    def start(self) -> Validator:
        self.port = free_port(self.host)
        self.root.mkdir(parents=True, exist_ok=True)
        upstream, _, upstream_port = self.upstream.rpartition(":")
        anchors = ""
        for zone, key in self.anchors.items():
            flags, protocol, algorithm, data = key.split(" ", 3)
            anchors += (
                f'    {zone.rstrip(".")}. static-key {flags} {protocol} {algorithm} "{data}";\n'
            )

        config = self.root / "named.conf"
        config.write_text(
            VALIDATOR.format(
                root=self.root,
                port=self.port,
                host=self.host,
                upstream=upstream,
                upstream_port=upstream_port,
                anchors=anchors,
            )
        )
        named = program("named") or "named"
        with (self.root / "named.stderr").open("wb") as stderr:
            self.process = subprocess.Popen(
                [named, "-g", "-4", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        self._wait_answers(next(iter(self.anchors)))
        return self

    def _wait_answers(self, zone: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"named exited: {self.log()}")
            query = dns.message.make_query(zone, dns.rdatatype.SOA)
            try:
                answer = dns.query.udp(query, self.host, port=self.port, timeout=0.5)
                if answer.answer:
                    return
            except (OSError, dns.exception.Timeout):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the validator does not answer for {zone}: {self.log()}")
            time.sleep(0.05)
