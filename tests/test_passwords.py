"""Password checks: libsodium for the usual argon2id hashes, argon2-cffi for the rest."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type, low_level

from mailplan.runtime.decide import passwords

SALT = b"sixteen byte salt"


def test_argon2_cffi_defaults_are_verified_by_libsodium() -> None:
    encoded = PasswordHasher().hash("pop secret")  # m=65536, t=3, p=4: what sites hold
    assert passwords._sodium_reads(encoded)
    assert passwords.verify(encoded, "pop secret")
    assert not passwords.verify(encoded, "pop secreT")
    assert not passwords.verify(encoded, "")


@pytest.mark.parametrize("password", ["", "a", "pässwörd ✓", "with\0nul", "x" * 1000])
@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_libsodium_and_argon2_cffi_agree(password: str, lanes: int) -> None:
    encoded = PasswordHasher(time_cost=2, memory_cost=64, parallelism=lanes).hash(password)
    assert passwords._sodium_reads(encoded)
    assert passwords.verify(encoded, password)
    assert not passwords.verify(encoded, password + "x")


def raw(variant: Type, version: int = 19, salt: bytes = SALT, length: int = 32) -> str:
    encoded = low_level.hash_secret(
        b"secret",
        salt,
        time_cost=1,
        memory_cost=64,
        parallelism=1,
        hash_len=length,
        type=variant,
        version=version,
    )
    return encoded.decode("ascii")


@pytest.mark.parametrize(
    "encoded",
    [
        raw(Type.I),  # argon2i
        raw(Type.D),  # argon2d: libsodium has none
        raw(Type.ID, version=16),  # the old version
        raw(Type.ID, length=8),  # a digest shorter than libsodium reads
    ],
    ids=["argon2i", "argon2d", "v16", "short-digest"],
)
def test_other_hashes_go_to_argon2_cffi(encoded: str) -> None:
    assert not passwords._sodium_reads(encoded)
    assert passwords.verify(encoded, "secret")
    assert not passwords.verify(encoded, "Secret")


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "secret",
        "$argon2id$v=19$m=64,t=1,p=1$c2l4dGVlbiBieXRlIHNhbHQ$!!!!",
        "$argon2id$v=19$m=64,t=1,p=1$c2l4dGVlbiBieXRlIHNhbHQ$" + "A" * 43,  # no match
        "$argon2id$v=19$m=4,t=1,p=1$c2l4dGVlbiBieXRlIHNhbHQ$" + "A" * 43,  # m < 8 p
    ],
)
def test_what_is_no_hash_matches_nothing(encoded: str) -> None:
    assert not passwords.verify(encoded, "secret")


def test_a_hash_made_here_is_argon2id_and_verifies() -> None:
    encoded = passwords.hash_password("new")
    assert encoded.startswith("$argon2id$v=19$")
    assert passwords.verify(encoded, "new")
