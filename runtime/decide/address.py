"""Mail addresses as the router sees them: a local part and a domain (the next hop).

Source-routed forms are normalised the CommuniGate way: `<@hop:user@dom>`,
`hop!dom!user` and `user%dom@hop` all become local part `user%dom` at domain `hop`.
An address without a domain takes the default domain (the site's main domain).

Internationalised addresses (RFC 6531) have one form here: the local part in Unicode
NFC, and the domain in A-labels (`bücher.example` is `xn--bcher-kva.example`, by
IDNA2008 with the UTS 46 mapping), so the spellings of one address meet in one key.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import idna
import msgspec


class Address(msgspec.Struct, frozen=True, gc=False):
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The case-insensitive identity of the address."""
        return f"{self.local.lower()}@{self.domain}"


# `local@domain` as most addresses are written: nothing in it that `parse` would unwrap,
# unquote, unwind or normalise (no white space, brackets, quotes, `!`, `:` or second `@`,
# no dot ending the domain, only ASCII), so it is its local part and its domain, lower case
_PLAIN = re.compile(r"[A-Za-z0-9._+*%=-]+@[A-Za-z0-9_*-]+(?:\.[A-Za-z0-9_*-]+)*")


def parse(text: str, default_domain: str) -> Address:
    """The address `text` names; a source route of any length is unwound in one loop."""
    if _PLAIN.fullmatch(text):
        local, _, domain = text.partition("@")
        return Address(local, domain.lower())
    return _parse(text, default_domain)


def _parse(text: str, default_domain: str) -> Address:
    routes: list[list[str]] = []  # the hops of each `@hop,@hop:` layer, outermost first
    text = _unwrapped(text)
    while (colon := _route_end(text)) is not None:
        routes.append([hop.strip().lstrip("@") for hop in text[:colon].split(",")])
        text = _unwrapped(text[colon + 1 :])
    inner = _plain(text, default_domain)
    if not routes:
        return inner
    parts = [inner.local, inner.domain]
    for hops in reversed(routes[1:]):
        parts += [*reversed(hops[1:]), _domain(hops[0])]
    parts += reversed(routes[0][1:])
    return Address("%".join(parts), _domain(routes[0][0]))


def _unwrapped(text: str) -> str:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def _plain(text: str, default_domain: str) -> Address:
    """An address without a source route: `user@dom`, `hop!dom!user` or `user`."""
    if "@" not in text and "!" in text:
        parts = text.split("!")
        user, path = parts[-1], parts[:-1]
        local = "%".join([user, *reversed(path[1:])])
        return Address(local, _domain(path[0]))
    local, at, domain = text.rpartition("@")
    if not at:
        return Address(_local(text), _domain(default_domain))
    return Address(_local(local), _domain(domain))


def _local(text: str) -> str:
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return _unquote(text)


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
    return canonical_domain(text.strip().rstrip("."))


def canonical_domain(text: str) -> str:
    """A domain as the router compares it: lower case, every U-label as its A-label.

    Labels are converted one by one, so a `*` label of a picture (`*.bücher.example`)
    stays as it is; a label that is no valid IDN stays in Unicode (NFC, lower case),
    which `idn_problem` explains.
    """
    if text.isascii():
        return text.lower()
    return ".".join(_a_label(label) for label in text.split("."))


def _a_label(label: str) -> str:
    if label.isascii():
        return label.lower()
    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except idna.IDNAError:
        return unicodedata.normalize("NFC", label).lower()


def is_utf8(text: str) -> bool:
    """Whether `text` came from valid UTF-8: bytes that were not (decoded with
    surrogateescape, as aiosmtpd and the command line do) are lone surrogates."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def idn_problem(domain: str) -> str | None:
    """Why `domain` is no valid internationalised domain name (IDNA2008), or None.

    Only U-labels and `xn--` labels are judged; other ASCII labels are the router's affair.
    """
    for label in domain.strip().rstrip(".").split("."):
        if label.isascii() and not label.lower().startswith("xn--"):
            continue
        try:
            idna.encode(label, uts46=True)
        except idna.IDNAError as problem:
            return f"{label}: {problem}"
    return None


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
