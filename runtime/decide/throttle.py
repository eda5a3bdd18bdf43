"""Failed logins: a delay that grows per client, shared by POP3 and SMTP AUTH.

A client's password checks take turns (`turn`): one at a time, each after the
client's delay, which doubles with each failure (from `FIRST` up to `LONGEST`) and
is forgotten after a quiet spell of `FORGET` seconds. The wait comes before the
check, so a client learns nothing sooner by hanging up, and taking turns means
parallel connections guess no faster than one. A client is an IPv4 address or an
IPv6 /64 (one host usually has a whole /64 to pick from). A successful login
forgets nothing: an attacker who owns one account could otherwise reset the count
between guesses at others.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

FIRST = 1.0
LONGEST = 30.0
FORGET = 900.0
MAX_CLIENTS = 10_000  # beyond this many IPs the oldest are forgotten


@dataclass
class _Record:
    failures: int
    last: float


class Throttle:
    """Failures per client; `delay(ip)` is how long to wait before saying "no" again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.records: dict[str, _Record] = {}
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}  # client -> lock, users

    @contextlib.asynccontextmanager
    async def turn(self, ip: str) -> AsyncIterator[float]:
        """A password check for `ip`: after this client's other checks, and after its
        delay; yields how long it waited. Count a failure (`failed`) inside it."""
        key = client(ip)
        lock, users = self._turns.get(key, (asyncio.Lock(), 0))
        self._turns[key] = (lock, users + 1)
        started = self.clock()
        try:
            async with lock:
                await asyncio.sleep(self.delay(ip))
                yield self.clock() - started
        finally:
            lock, users = self._turns[key]
            if users == 1:
                del self._turns[key]
            else:
                self._turns[key] = (lock, users - 1)

    def failures(self, ip: str) -> int:
        record = self.records.get(client(ip))
        if record is None or self.clock() - record.last > FORGET:
            return 0
        return record.failures

    def delay(self, ip: str) -> float:
        """Seconds this client waits before its next check (0 before any failure)."""
        failures = self.failures(ip)
        return 0.0 if failures == 0 else min(FIRST * 2 ** (failures - 1), LONGEST)

    def failed(self, ip: str) -> float:
        """Count one failure; returns the delay of the client's next check."""
        failures = self.failures(ip) + 1
        key = client(ip)
        self.records.pop(key, None)
        self.records[key] = _Record(failures, self.clock())
        while len(self.records) > MAX_CLIENTS:
            del self.records[next(iter(self.records))]
        return self.delay(ip)


def client(ip: str) -> str:
    """Whom failures are counted for: the IPv4 address, or the IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return ip
