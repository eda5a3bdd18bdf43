"""Address-list lookups: is this IP in a compiled list? One binary search, any list size."""

from __future__ import annotations

import bisect
import ipaddress

from mailplan.plan.model import AddressList, Plan, Source


class AddressSet:
    """A compiled address list, ready for lookups by IP address."""

    def __init__(self, compiled: AddressList) -> None:
        self.name = compiled.name
        self._families: dict[int, tuple[list[int], list[int]]] = {}
        for version, intervals in ((4, compiled.ipv4), (6, compiled.ipv6)):
            firsts = [int(ipaddress.ip_address(i.first)) for i in intervals]
            lasts = [int(ipaddress.ip_address(i.last)) for i in intervals]
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
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        firsts, lasts = self._families[address.version]
        value = int(address)
        i = bisect.bisect_right(firsts, value) - 1
        return i >= 0 and value <= lasts[i]
