"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from interop import require

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "sites" / "example.com"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `interop` run only where their programs are installed (tests/interop.py)."""
    for marker in item.iter_markers("interop"):
        require(marker.args)


@pytest.fixture
def example_site() -> Path:
    return EXAMPLE
