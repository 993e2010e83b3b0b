"""Fixtures several tests/local modules share: the default world's generation 0 and the cache it is kept in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def user_traffic_of(gen0: Path, sim_cache: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Path]:
    """Two days of generation 0's user traffic for the first `people` at `seed` (a generation's traffic/user, which
    the canary's pre-period reuses), simulated once per session for each pair."""
    from flywheel_local import users
    from flywheel_local.sources import TrafficUri

    made: dict[tuple[int, int], Path] = {}

    def traffic(people: int, seed: int) -> Path:
        if (people, seed) not in made:
            out = tmp_path_factory.mktemp("gen") / "traffic" / "user"
            users.simulate_source(DEFAULT_WORLD, gen0, "generation-0", TrafficUri("user", days=2, people=people),
                                  out, seed=seed, cache_dir=sim_cache)
            made[people, seed] = out
        return made[people, seed]

    return traffic


@pytest.fixture
def traffic_as_alone(gen0: Path, tmp_path: Path) -> Callable[[Any, Any], None]:
    """A check that a generation's traffic sources, however the backend simulated them (the runner and its side
    worker at once), hold byte for byte the logs of simulating each source alone in this process."""
    from flywheel_local import users
    from flywheel_local.sources import parse_sim_uri

    def check(backend: Any, generation: Any) -> None:
        for field in ("user_traffic", "internal_traffic"):
            parsed = parse_sim_uri(getattr(generation.spec.data, field).uri)
            alone = tmp_path / "alone" / parsed.source
            users.simulate_source(DEFAULT_WORLD, gen0, "generation-0", parsed, alone, seed=generation.spec.generation)
            together = backend.paths.traffic(parsed.source)
            for name in ("conversations.jsonl", "events.jsonl", "sessions.jsonl", users.PREFIX_FILE):
                if (alone / name).is_file():
                    assert (together / name).read_bytes() == (alone / name).read_bytes(), (parsed.source, name)

    return check
