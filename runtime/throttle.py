"""Failed logins: a delay that grows per client IP, shared by POP3 and SMTP AUTH.

Each failure from an IP doubles the delay its next answer waits (from `FIRST` up to
`LONGEST`); a success forgets the IP, and so does a quiet spell of `FORGET` seconds.
Pure bookkeeping over a clock: the protocol handlers do the waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    """Failures per client IP; `delay(ip)` is how long to wait before saying "no" again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.records: dict[str, _Record] = {}

    def failures(self, ip: str) -> int:
        record = self.records.get(ip)
        if record is None or self.clock() - record.last > FORGET:
            return 0
        return record.failures

    def delay(self, ip: str) -> float:
        """Seconds to wait before answering this IP's failed login (0 before any failure)."""
        failures = self.failures(ip)
        return 0.0 if failures == 0 else min(FIRST * 2 ** (failures - 1), LONGEST)

    def failed(self, ip: str) -> float:
        """Count one failure; the delay the answer to it must wait."""
        failures = self.failures(ip) + 1
        self.records.pop(ip, None)
        self.records[ip] = _Record(failures, self.clock())
        while len(self.records) > MAX_CLIENTS:
            del self.records[next(iter(self.records))]
        return self.delay(ip)

    def succeeded(self, ip: str) -> None:
        self.records.pop(ip, None)
