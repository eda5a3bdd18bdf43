"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from interop import fail_if_required, skip_if_missing

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
