"""The first generation's side worker is forked from the warm server even while its preload runs (a thread beside
the user traffic waits for it), not spawned: a spawned worker imports torch itself (6.5 CPU-s in `make run` against
1.5 forked). Its traffic logs are byte for byte those of simulating each source alone in this process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flywheel_local import backend as backend_module
from flywheel_local import warm
from flywheel_local.backend import LocalBackend, RunPaths
from flywheel_local.runner import load_manifest
from flywheel_local.sources import parse_sim_uri
from flywheel_sim import DEFAULT_WORLD

TINY = Path(__file__).with_name("tiny-generation.yaml")


class RecordingContext:
    def __init__(self) -> None:
        self.pools: list[int] = []
        self.handed: list[Any] = []

    def Pool(self, processes: int) -> Any:  # multiprocessing's name
        self.pools.append(processes)
        return SimpleNamespace(
            apply_async=lambda function, args: self.handed.append(args[3]), close=lambda: None, join=lambda: None
        )


def test_the_traffic_forks_the_side_worker_while_the_preload_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RecordingContext()
    monkeypatch.setattr(warm, "_context", server)
    monkeypatch.setattr(warm, "_forked", False)  # no stage forked yet: the preload may still run
    monkeypatch.setattr(backend_module, "usable_cores", lambda: 2)
    backend = LocalBackend(
        load_manifest(TINY), RunPaths(tmp_path / "gen1"), world_file=DEFAULT_WORLD, cache_dir=tmp_path / "cache", cpus=2
    )
    internal = parse_sim_uri(backend.generation.spec.data.internal_traffic.uri)
    backend._hand_to_side([internal], str(tmp_path / "policy"), oracle=False)
    assert server.pools == [1]
    assert server.handed == [internal]
    assert backend._side_worker() is backend._side  # later work goes to the same worker


def test_traffic_beside_a_worker_forked_from_the_warm_server_equals_traffic_alone(
    gen0: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, traffic_as_alone: Any
) -> None:
    monkeypatch.setattr(backend_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(backend_module, "idle_cores", lambda *args, **kwargs: 2.0)  # on a busy machine too
    generation = load_manifest(TINY)
    # a cache of its own: traffic this test kept in the session's cache would be found on disk by the next test
    # that simulates the same sources (tests/local/test_traffic_alongside.py), which would then simulate nothing
    backend = LocalBackend(
        generation, RunPaths(tmp_path / "tiny1"), world_file=DEFAULT_WORLD, cache_dir=tmp_path / "cache", cpus=2
    )
    backend.warm_up()
    if warm.server_context() is None:
        pytest.skip("no warm server on this platform")
    try:
        backend._simulate_sources(SimpleNamespace(data=generation.spec.data), str(gen0))
        assert backend._side is not None
        assert backend._side._ctx is warm.server_context()  # forked, not spawned
    finally:
        backend.close()
    traffic_as_alone(backend, generation)
