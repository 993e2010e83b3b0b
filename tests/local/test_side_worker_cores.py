"""The side worker (the second source's traffic, the report's prefetches) goes by the machine's cores, not by the
torch threads per stage that `--cpus` caps (issue 29): the default chain, measured with `bench/flywheel.py --cpus 1`,
simulates its user and internal traffic side by side on two cores, as `make run` does. Each source's logs are those
of simulating it alone (tests/local/test_traffic_alongside.py), so the chain's outputs do not change."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flywheel_local import backend as backend_module
from flywheel_local.backend import LocalBackend, RunPaths, side_worker_fits
from flywheel_local.runner import load_manifest
from flywheel_sim import DEFAULT_WORLD
from hypothesis import given
from hypothesis import strategies as st

TINY = Path(__file__).with_name("tiny-generation.yaml")


@given(threads=st.integers(1, 8), cpus=st.integers(1, 16), machine=st.integers(1, 16))
def test_fits_when_the_larger_of_the_given_and_the_machines_cores_hold_two_samplers(
        threads: int, cpus: int, machine: int) -> None:
    assert side_worker_fits(threads, cpus, machine) == (2 * threads <= max(cpus, machine))


@given(threads=st.integers(1, 4), cpus=st.integers(1, 16), machine=st.integers(1, 16),
       idle=st.floats(0.0, 16.0, allow_nan=False))
def test_measured_idle_cores_must_hold_both_samplers_too(threads: int, cpus: int, machine: int, idle: float) -> None:
    fits = side_worker_fits(threads, cpus, machine, idle=idle)
    assert fits == (side_worker_fits(threads, cpus, machine) and idle + backend_module.IDLE_SLACK >= 2 * threads)


@pytest.mark.parametrize(("idle", "expected"), [(2.0, True), (1.8, True), (1.0, False), (0.3, False)])
def test_a_chain_beside_another_gets_no_side_worker(idle: float, expected: bool) -> None:
    """`bench/flywheel.py --jobs 2 --cpus 1`: the other chain keeps a core busy, so the traffic stays serial."""
    assert side_worker_fits(1, 1, 2, idle=idle) is expected


@pytest.mark.parametrize("cpus", [1, 2, 16])
def test_torchs_default_thread_count_takes_every_core(cpus: int) -> None:
    assert not side_worker_fits(None, cpus, 16)


@pytest.mark.parametrize(("machine", "expected"), [(2, True), (1, False)])
def test_one_thread_per_stage_on_two_cores_still_gets_a_side_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: int, expected: bool) -> None:
    monkeypatch.setattr(backend_module, "usable_cores", lambda: machine)
    monkeypatch.setattr(backend_module, "idle_cores", lambda *args, **kwargs: 2.0)
    backend = LocalBackend(load_manifest(TINY), RunPaths(tmp_path / "gen1"), world_file=DEFAULT_WORLD,
                           cache_dir=tmp_path / "cache", cpus=1, warm_start=False)
    try:
        assert (backend._side_worker() is not None) is expected
        assert backend.explicit_cpus == 1  # the stages' threads are still those --cpus 1 gives
    finally:
        backend.close()


def test_a_chains_first_generation_counts_the_warm_servers_preload_as_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner starts the warm server's preload (its imports, seconds of one core) just before it looks for
    idle cores: counted as another program's work, it kept a chain's first generation's traffic serial (the
    internal traffic's 4 s after the user traffic's 19 s, bench/results/local.json at 3b72c59)."""
    from flywheel_local import warm

    looked: list[Any] = []

    def idle(*args: Any, own: Any = ()) -> float:
        looked.append(list(own))
        return 2.0 if own else 1.0  # the preload takes one core

    monkeypatch.setattr(backend_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(backend_module, "idle_cores", idle)
    monkeypatch.setattr(warm, "server_pid", lambda: 4242)
    backend = LocalBackend(load_manifest(TINY), RunPaths(tmp_path / "gen1"), world_file=DEFAULT_WORLD,
                           cache_dir=tmp_path / "cache", cpus=1, warm_start=False)
    assert backend._side_worker_fits()
    assert looked == [[4242]]
    monkeypatch.setattr(warm, "server_pid", lambda: None)  # no warm server (cold starts): nothing of its own
    assert not backend._side_worker_fits()
    assert looked[-1] == []


def test_the_warm_servers_pid_is_known_once_started(monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel_local import warm

    monkeypatch.setattr(warm, "_context", None)
    assert warm.server_pid() is None


class RecordingContext:
    def __init__(self) -> None:
        self.pools: list[int] = []

    def Pool(self, processes: int) -> Any:  # multiprocessing's name
        self.pools.append(processes)
        return SimpleNamespace(close=lambda: None, join=lambda: None)


def test_the_side_worker_forks_from_the_warm_server_once_a_stage_has(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain's later generations: the forkserver has forked stages (its preload done), so the side worker forks
    from it in milliseconds with torch imported, instead of a spawned interpreter importing it all again (13 s of
    CPU a generation at load 3, bench/results/local_overlap.json)."""
    from flywheel_local import warm

    server = RecordingContext()
    monkeypatch.setattr(warm, "_context", server)
    monkeypatch.setattr(warm, "_forked", False)
    assert warm.ready_context() is None  # the preload may still run: a fork would wait for it
    monkeypatch.setattr(warm, "_forked", True)
    assert warm.ready_context() is server
    monkeypatch.setattr(backend_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(backend_module, "idle_cores", lambda *args, **kwargs: 2.0)
    backend = LocalBackend(load_manifest(TINY), RunPaths(tmp_path / "gen1"), world_file=DEFAULT_WORLD,
                           cache_dir=tmp_path / "cache", cpus=1)
    assert backend._side_worker() is not None
    assert server.pools == [1]
    backend.close()
