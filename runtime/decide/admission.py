"""How many connections the server takes, from one client and in all.

Every connection costs a descriptor and memory (a message in DATA is held whole), so a
client, or many, must not take them all: a connection past the client's share
(`limits.max_connections_per_client`, counted per IPv4 address or IPv6 /64, as failed
logins are) or past the server's (`limits.max_connections`) is told 421 and closed
before anything else. The site's Client IPs have no share of their own (as Postfix
exempts `mynetworks`): an office behind one address, or the server's own tools, count
against the total only. The count is per process (each worker of `--workers N` has
its own).
"""

from __future__ import annotations

from collections import Counter

from mailplan.runtime.decide import replies
from mailplan.runtime.decide.throttle import client


class Admission:
    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open: Counter[str] = Counter()  # client key -> connections held
        self.held = 0

    def enter(self, ip: str, trusted: bool = False) -> str | None:
        """Take a connection from `ip` (a Client IP when `trusted`): None, or the reply
        that refuses it (then it is not counted, and `leave` must not be called for it)."""
        key = client(ip)
        if self.held >= self.total:
            return replies.reply(replies.SERVER_BUSY, limit=self.total)
        if not trusted and self.open[key] >= self.per_client:
            return replies.reply(replies.CLIENT_BUSY, limit=self.per_client)
        self.open[key] += 1
        self.held += 1
        return None

    def leave(self, ip: str) -> None:
        """A connection that `enter` took has ended."""
        key = client(ip)
        self.held -= 1
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]
