"""Shared test helpers."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from interop import fail_if_required, skip_if_missing

from mailplan.plan import codec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "sites" / "example.com"


# Tests marked `interop` run only where their programs are installed (tests/interop.py).
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        skip_if_missing(item)


def pytest_runtest_setup(item: pytest.Item) -> None:
    fail_if_required(item)


@pytest.fixture
def example_site() -> Path:
    return EXAMPLE


def resealed(document: dict[str, Any]) -> str:
    """A plan document with the digest its content has: an edit the digest does not catch."""
    content = {key: item for key, item in document.items() if key != "digest"}
    digest = "sha256:" + hashlib.sha256(codec.canonical(content)).hexdigest()
    return json.dumps({**content, "digest": digest})


# Hypothesis (tests/test_fuzz.py): `make test` runs a few hundred examples of each
# property, the same ones every run (derandomised, no example database), so the suite
# stays fast and never flaky; `make fuzz` (HYPOTHESIS_PROFILE=fuzz) runs many thousands
# at random. The deadline is far above what an example takes (milliseconds): it is
# there to name a hang, not to time a slow machine.
settings.register_profile(
    "default",
    max_examples=150,
    deadline=timedelta(seconds=10),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "12000")),
    deadline=timedelta(seconds=10),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
