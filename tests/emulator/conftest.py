"""Shared fixtures of the emulator tests: the fixtures path and a running emulator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
FIXTURES = Path(os.environ.get("MARKETPRISM_FIXTURES") or DEFAULT)


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    return FIXTURES.resolve()
