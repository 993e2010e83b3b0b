"""The generation's traffic sources are simulated at the same time (issue 29): user traffic in the runner's
process, internal traffic in its side worker. Each source's logs and end state are byte for byte those of
simulating it alone in this process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flywheel_local import backend as backend_module
from flywheel_local import users
from flywheel_local.backend import LocalBackend, RunPaths
from flywheel_local.runner import load_manifest
from flywheel_local.sources import parse_sim_uri
from flywheel_sim import DEFAULT_WORLD

TINY = Path(__file__).with_name("tiny-generation.yaml")


def test_sources_simulated_alongside_equal_sources_simulated_alone(
    gen0: Path, sim_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, traffic_as_alone: Any
) -> None:
    # `cpus` given: the side worker goes only onto cores measured idle (tests/local/test_side_worker_cores.py);
    # pinned here, so that the logs are compared on a busy machine too
    monkeypatch.setattr(backend_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(backend_module, "idle_cores", lambda *args, **kwargs: 2.0)
    generation = load_manifest(TINY)
    notes: list[str] = []
    backend = LocalBackend(generation, RunPaths(tmp_path / "tiny1"), world_file=DEFAULT_WORLD, cache_dir=sim_cache,
                           cpus=2, note=notes.append)
    try:
        backend._simulate_sources(SimpleNamespace(data=generation.spec.data), str(gen0))
        assert backend._side is not None  # two sources: the second went to the side worker
    finally:
        backend.close()
    assert any("internal traffic" in n and "alongside" in n for n in notes)
    assert {"user traffic", "internal traffic"} <= set(backend.timings)
    for field in ("user_traffic", "internal_traffic"):
        source = parse_sim_uri(getattr(generation.spec.data, field).uri).source
        assert (backend.paths.traffic(source) / users.DONE_FILE).is_file()
    traffic_as_alone(backend, generation)


def test_one_source_and_no_oracle_needs_no_side_worker(gen0: Path, sim_cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    generation = load_manifest(TINY)
    data = generation.spec.data.model_copy(update={"internal_traffic": None})
    backend = LocalBackend(generation, RunPaths(tmp_path / "tiny1"), world_file=DEFAULT_WORLD, cache_dir=sim_cache,
                           cpus=2)
    monkeypatch.setattr(backend, "_side_worker", lambda: pytest.fail("a side worker for one source"))
    backend._simulate_sources(SimpleNamespace(data=data), str(gen0))  # left to _resolve_source
    assert not backend.paths.traffic("user").exists()
