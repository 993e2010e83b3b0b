"""Fixtures several tests/local modules share: the default world's generation 0 and the cache it is kept in."""

from __future__ import annotations

from pathlib import Path

import pytest
from flywheel_local.sources import generation0
from flywheel_sim import DEFAULT_WORLD


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache directory `generation0` and the generation-0 traffic are kept in (by content), one per session:
    what one module simulates with the same inputs another finds there, as `flywheel run`'s --cache-dir does."""
    return tmp_path_factory.mktemp("sim-cache")


@pytest.fixture(scope="session")
def gen0(sim_cache: Path) -> Path:
    """The default world's generation-0 policy at 20 steps (`sim://generation-0?steps=20`), built once."""
    return generation0("sim://generation-0?steps=20", DEFAULT_WORLD, sim_cache)
