"""Mail addresses as the router sees them: a local part and a domain (the next hop).

Source-routed forms are normalised the CommuniGate way: `<@hop:user@dom>`,
`hop!dom!user` and `user%dom@hop` all become local part `user%dom` at domain `hop`.
An address without a domain takes the default domain (the site's main domain).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Address:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The case-insensitive identity of the address."""
        return f"{self.local.lower()}@{self.domain}"


def parse(text: str, default_domain: str) -> Address:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    colon = _route_end(text)
    if colon is not None:
        hops = [hop.strip().lstrip("@") for hop in text[:colon].split(",")]
        inner = parse(text[colon + 1 :], default_domain)
        local = "%".join([inner.local, inner.domain, *reversed(hops[1:])])
        return Address(local, _domain(hops[0]))
    if "@" not in text and "!" in text:
        parts = text.split("!")
        user, path = parts[-1], parts[:-1]
        local = "%".join([user, *reversed(path[1:])])
        return Address(local, _domain(path[0]))
    local, at, domain = text.rpartition("@")
    if not at:
        return Address(_unquote(text), _domain(default_domain))
    return Address(_unquote(local), _domain(domain))


_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~."
)


def _unquote(local: str) -> str:
    """`"alice"` is `alice` (RFC 5321 4.1.2); a quoted part that needs its quotes keeps them."""
    if len(local) > 2 and local[0] == local[-1] == '"':
        inner = local[1:-1]
        if (
            set(inner) <= _ATEXT
            and not inner.startswith(".")
            and not inner.endswith(".")
            and ".." not in inner
        ):
            return inner
    return local


def _route_end(text: str) -> int | None:
    """Where the hops of a source route (`@hop,@hop:`) end, or None when it is no such route."""
    if not text.startswith("@"):
        return None
    depth = 0
    for i, character in enumerate(text):
        if character == "[":
            depth += 1
        elif character == "]":
            depth -= 1
        elif character == ":" and depth == 0:
            return i
    return None


def _domain(text: str) -> str:
    return text.strip().rstrip(".").lower()


def ip_literal(domain: str) -> str | None:
    """The IP address a domain part names (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, `192.0.2.1`)."""
    inner = domain[1:-1] if domain.startswith("[") and domain.endswith("]") else domain
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def literal(ip: str) -> str:
    """The domain-literal form of an IP address: `[192.0.2.1]`, `[IPv6:2001:db8::1]` (RFC 5321)."""
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"
