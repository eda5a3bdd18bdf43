"""DKIM key pairs for `mailplan dkim keygen`: PEM text, written by the command.

The private key (PKCS#8) goes to the signer and never into the site; the public key
(SubjectPublicKeyInfo) is what the site names and `mailplan dns` publishes.
"""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

RSA_BITS = (1024, 2048, 3072, 4096)


def key_pair(algorithm: Literal["rsa", "ed25519"], bits: int = 2048) -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new key."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        if bits not in RSA_BITS:
            raise ValueError(f"RSA keys for DKIM have {', '.join(map(str, RSA_BITS))} bits")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public
