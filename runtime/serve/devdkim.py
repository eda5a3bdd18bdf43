"""DKIM keys for development (`make run`): a key file the site names that does not exist
is made (with its public key beside it) and kept, so that the example site signs on a
fresh clone. Its public key is not the one the site publishes: `--dev` warns, and signs."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailplan.plan.model import Plan


def ensure(plan: Plan, root: Path) -> dict[Path, str]:
    """Make every signing key file of the plan that is missing: each path made, with a
    warning that says so."""
    made = {}
    for domain in plan.domains:
        for key in domain.dns.dkim if domain.dns else ():
            if key.private_key is None:
                continue
            path = Path(key.private_key)
            path = path if path.is_absolute() else root / path
            if path.exists():
                continue
            _make(path, key.algorithm)
            made[path] = (
                f"the DKIM key {path} (selector {key.selector} of {domain.name}) did not exist: "
                f"--dev made a new pair and signs with it; receivers cannot verify it until "
                f"its public key ({path.with_suffix('.pub')}) is the site's {key.file}"
            )
    return made


def _make(path: Path, algorithm: str) -> None:
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private)
    path.with_suffix(".pub").write_bytes(public)
