"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "sites" / "example.com"


@pytest.fixture
def example_site() -> Path:
    return EXAMPLE
