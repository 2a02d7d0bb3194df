"""Fixtures shared by every test area, made once per test run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="package")
def official_fixture_dir() -> Path:
    from fourm.models.parity import default_fixture_dir

    d = default_fixture_dir()
    assert (d / "tiny_4m7.safetensors").exists(), f"official fixture missing at {d} (the repository ships it under tests/fixtures/official_4m)"
    return d


@pytest.fixture(autouse=True)
def _two_threads():
    # The machine (and CI) has 2 cores; pinning keeps timings and numerics stable across tests.
    torch.set_num_threads(2)
    yield
