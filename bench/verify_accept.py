#!/usr/bin/env python3
"""What verifying incoming mail costs (issue 18): mail from a stranger accepted with DKIM,
ARC and DMARC verification on, against the same server with them off, in the same run.

- DNS: the tests' in-process DNS server (tests/dnskit.py) on loopback, serving the
  sender's domain `sender.test`: an Ed25519 and an RSA-2048 DKIM key, `_dmarc` with
  `p=reject`, and SPF `ip4:127.0.0.9 -all`.
- Servers: `mailplan serve` twice on the same kind of site (one listener on a free port,
  `tls: none`, `auth: none`, one local account, return-path check off): "plain" with
  `receiving.dkim` and `receiving.dmarc` at scope nobody (SPF still checked at MAIL
  FROM), and "verified" with the defaults (DKIM, ARC, DMARC and the
  Authentication-Results header for everyone but clients).
- Load: `--clients` connections from 127.0.0.9 (a stranger: the checks apply), each
  sending MAIL / RCPT / DATA in turn, no pipelining, one local recipient; messages of
  2 KiB of body, signed once by this script with dkimpy (ed25519-sha256 or rsa-sha256,
  relaxed/relaxed), so the verified server checks a real signature on every message,
  and DMARC passes on it.
- Figure: messages accepted per second, from the first connection to the last 250; the
  median over the rounds, the servers alternating in each round. The report gives
  verified / plain per signature algorithm: the cost of verification.

Nothing here asserts a timing. Network only to 127.0.0.0/8.

    .venv/bin/python bench/verify_accept.py                 # ~1 min
    .venv/bin/python bench/verify_accept.py --count 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT), str(PROJECT / "tests")]

import dkim  # noqa: E402
import nacl.signing  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from dnskit import NameServer, zone_text  # noqa: E402
from serverkit import LOOPBACK, MailServer, free_port  # noqa: E402
from sitekit import plain, write_site  # noqa: E402

STRANGER = "127.0.0.9"
SENDER = "news@sender.test"
RECIPIENT = "bob@example.com"
OFF = {"dkim": {"scope": "nobody"}, "dmarc": {"scope": "nobody"}}


def keys() -> tuple[bytes, bytes, str]:
    """(ed25519 seed for dkimpy, RSA PEM, the zone of sender.test)."""
    ed = nacl.signing.SigningKey.generate()
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public = base64.b64encode(der).decode()
    half = len(public) // 2
    ed_public = base64.b64encode(bytes(ed.verify_key)).decode()
    zone = (
        f'ed._domainkey IN TXT "v=DKIM1; k=ed25519; p={ed_public}"\n'
        f'rsa._domainkey IN TXT "v=DKIM1; k=rsa; p={public[:half]}" "{public[half:]}"\n'
        '_dmarc IN TXT "v=DMARC1; p=reject"\n'
        f'@ IN TXT "v=spf1 ip4:{STRANGER} -all"\n'
    )
    return base64.b64encode(bytes(ed)), pem, zone


def message(size: int, selector: str, secret: bytes) -> bytes:
    """A signed message of `size` bytes of body, dot-stuffed (no line starts with a dot),
    with the end of data."""
    head = (
        f"From: News <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: verify_accept\r\n"
        f"Message-ID: <verify-accept.{size}@sender.test>\r\n"
        "Date: Mon, 07 Dec 2026 04:00:00 +0000\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnop\r\n"
    body = (line * (size // len(line) + 1))[:size]
    raw = head + body[:-2] + b"\r\n"
    field = dkim.sign(
        raw,
        selector.encode(),
        b"sender.test",
        secret,
        signature_algorithm=b"rsa-sha256" if selector == "rsa" else b"ed25519-sha256",
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"],
    )
    return bytes(field) + raw + b".\r\n"


class Refused(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise Refused("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def _client(port: int, data: bytes, left: list[int], ok: list[int]) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=(STRANGER, 0))
    try:
        if await _reply(reader) != 220:
            raise Refused("greeting")
        writer.write(b"EHLO mx.sender.test\r\n")
        if await _reply(reader) != 250:
            raise Refused("EHLO")
        commands = (
            (f"MAIL FROM:<{SENDER}>\r\n".encode(), 250),
            (f"RCPT TO:<{RECIPIENT}>\r\n".encode(), 250),
            (b"DATA\r\n", 354),
        )
        while left[0] > 0:
            left[0] -= 1
            for command, expected in commands:
                writer.write(command)
                code = await _reply(reader)
                if code != expected:
                    raise Refused(f"{command[:4].decode()} answered {code}")
            writer.write(data)
            code = await _reply(reader)
            if code != 250:
                raise Refused(f"end of data answered {code}")
            ok[0] += 1
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(Refused, OSError):
            await _reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _load(port: int, data: bytes, count: int, clients: int) -> tuple[int, float, list[str]]:
    left, ok = [count], [0]
    started = time.perf_counter()
    results = await asyncio.gather(
        *(_client(port, data, left, ok) for _ in range(clients)), return_exceptions=True
    )
    elapsed = time.perf_counter() - started
    return ok[0], elapsed, [repr(r) for r in results if isinstance(r, BaseException)][:3]


def serve(
    work: Path, name: str, resolver: str, receiving: dict[str, object]
) -> tuple[MailServer, int]:
    port = free_port()
    folder = work / name / "site"
    write_site(
        folder,
        listeners={"smtp": plain(port)},
        accounts=["bob"],
        extra={"receiving": {"return_path": {"scope": "nobody"}, **receiving}},
    )
    server = MailServer(folder, work / name, [port], resolver=resolver)
    server.start()
    return server, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="messages per measurement")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048, help="bytes of body")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seed, pem, zone = keys()
    with tempfile.TemporaryDirectory(prefix="verify-accept-") as folder:
        work = Path(folder)
        with NameServer(work / "dns", {"sender.test": zone_text("sender.test", zone)}) as names:
            servers = {
                "plain": serve(work, "plain", names.address, OFF),
                "verified": serve(work, "verified", names.address, {}),
            }
            try:
                return measure(servers, args, {"ed25519": ("ed", seed), "rsa": ("rsa", pem)})
            finally:
                for server, _ in servers.values():
                    server.terminate()


def measure(
    servers: dict[str, tuple[MailServer, int]],
    args: argparse.Namespace,
    algorithms: dict[str, tuple[str, bytes]],
) -> int:
    print(
        f"verify_accept: {args.count} messages x {args.rounds} rounds, {args.clients} clients "
        f"from {STRANGER}, {args.size} bytes of body, signed by the script"
    )
    figures: dict[tuple[str, str], list[float]] = {}
    for algorithm, (selector, secret) in algorithms.items():
        data = message(args.size, selector, secret)
        for _ in range(2):  # warm up: the DNS answers cached, the code paths loaded
            for _, port in servers.values():
                asyncio.run(_load(port, data, 50, 5))
        for round_ in range(args.rounds):
            order = list(servers.items())
            if round_ % 2:
                order.reverse()
            for name, (_, port) in order:
                ok, elapsed, errors = asyncio.run(_load(port, data, args.count, args.clients))
                if errors or ok != args.count:
                    print(f"  {name} {algorithm}: {ok}/{args.count} accepted, errors: {errors}")
                    return 1
                figures.setdefault((algorithm, name), []).append(ok / elapsed)
    print(f"{'signature':<10} {'plain msg/s':>12} {'verified msg/s':>15} {'verified/plain':>15}")
    for algorithm in algorithms:
        plain_rate = statistics.median(figures[algorithm, "plain"])
        verified = statistics.median(figures[algorithm, "verified"])
        print(
            f"{algorithm:<10} {plain_rate:>12.0f} {verified:>15.0f} {verified / plain_rate:>15.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
