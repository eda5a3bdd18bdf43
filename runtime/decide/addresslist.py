"""Address-list lookups: is this IP in a compiled list? One binary search, any list size."""

from __future__ import annotations

import bisect
import ipaddress
import socket
from itertools import repeat

from mailplan.plan.model import PIECE, AddressList, Plan, Source


class AddressSet:
    """A compiled address list, ready for lookups by IP address."""

    def __init__(self, compiled: AddressList) -> None:
        self.name = compiled.name
        self._families: dict[int, tuple[list[int], list[int]]] = {}
        for version, intervals in ((4, compiled.ipv4), (6, compiled.ipv6)):
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            firsts = _numbers(family, [i.first for i in intervals])
            lasts = _numbers(family, [i.last for i in intervals])
            self._families[version] = (firsts, lasts)

    @classmethod
    def empty(cls) -> AddressSet:
        return cls(AddressList("", Source("", 0, 0), (), ()))

    @classmethod
    def named(cls, plan: Plan, name: str) -> AddressSet:
        """The plan's address list `name` (empty when the plan has none of that name)."""
        found = next((c for c in plan.address_lists if c.name == name), None)
        return cls(found) if found is not None else cls.empty()

    def __contains__(self, ip: str) -> bool:
        if ":" not in ip:  # IPv4, as a peer's address is written: inet_pton reads it fastest
            try:
                return self._holds(4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip)))
            except (OSError, ValueError):  # not an address; ValueError: a NUL in it
                return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return self._holds(address.version, int(address))

    def _holds(self, version: int, value: int) -> bool:
        firsts, lasts = self._families[version]
        i = bisect.bisect_right(firsts, value) - 1
        return i >= 0 and value <= lasts[i]


def _numbers(family: socket.AddressFamily, texts: list[str]) -> list[int]:
    """The addresses as whole numbers: read by loops in C, PIECE at a time (a reload
    builds this in a thread beside the event loop), when `inet_pton` reads them all (the
    compiler writes them so), else one by one."""
    numbers: list[int] = []
    try:
        for start in range(0, len(texts), PIECE):
            piece = texts[start : start + PIECE]
            numbers += map(int.from_bytes, map(socket.inet_pton, repeat(family), piece))
    except (OSError, ValueError):
        return [_number(family, text) for text in texts]
    return numbers


def _number(family: socket.AddressFamily, text: str) -> int:
    """The address as a whole number. `inet_pton` reads the forms the compiler writes
    about seven times faster than `ipaddress` does, which counts for a list of 100,000
    lines at every start and reload; any other form is `ipaddress`'s to read (or refuse)."""
    try:
        return int.from_bytes(socket.inet_pton(family, text))
    except OSError:
        return int(ipaddress.ip_address(text))
