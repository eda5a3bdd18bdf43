"""Whether a password matches its argon2 hash, at the lowest CPU cost that is still exact.

argon2id hashes in the usual form (version 19, what `mailplan passwd` and argon2-cffi
write) are verified by libsodium (through PyNaCl), whose optimised code computes the
lanes one after the other in one thread: 0.10 s for argon2-cffi's default parameters
(64 MiB, t=3, p=4) where argon2-cffi's reference code takes 0.13-0.17 s on four
threads, i.e. three times the CPU on a two-core machine (this is what Dovecot does
too). Anything libsodium would not read (other variants or versions, short salts or
digests, parameters it refuses) is verified by argon2-cffi, as before.
"""

from __future__ import annotations

import re

import nacl.exceptions
import nacl.pwhash
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# What libsodium verifies: argon2id v=19, a salt of 8 bytes or more, a digest of 16
# bytes or more (unpadded base64), in its 127 characters.
_SODIUM = re.compile(
    r"\$argon2id\$v=19\$m=([1-9][0-9]{0,9}),t=([1-9][0-9]{0,9}),p=([1-9][0-9]{0,7})"
    r"\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{22,}"
)
_LANES = 0xFFFFFF  # libsodium's (and argon2's) largest parallelism
_SODIUM_MEMORY = 2**32 - 1  # KiB: the largest m libsodium takes (on 64-bit)


def verify(encoded: str, password: str) -> bool:
    """Whether `password` matches the argon2 hash `encoded` (False if it is no hash)."""
    if _sodium_reads(encoded):
        try:
            return nacl.pwhash.verify(encoded.encode("ascii"), password.encode("utf-8"))
        except nacl.exceptions.InvalidkeyError:
            return False
    try:
        return _hasher.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        return False


def hash_password(password: str) -> str:
    """A new argon2id hash of `password` (argon2-cffi's default parameters)."""
    return _hasher.hash(password)


def _sodium_reads(encoded: str) -> bool:
    found = _SODIUM.fullmatch(encoded)
    if found is None or len(encoded) > 127:
        return False
    memory, _, lanes = (int(number) for number in found.groups())
    return lanes <= _LANES and 8 * lanes <= memory <= _SODIUM_MEMORY
