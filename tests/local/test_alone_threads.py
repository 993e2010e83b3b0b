"""A stage that runs alone gets the idle cores' threads (issue 29): SFT, RL and eval run one after another, and on
one thread each they left the second of two idle cores unused (SFT 17.2 s against 11.4 s on two threads,
bench/results/local.json). Stages side by side, a busy machine, the side worker's work and an explicit `--cpus`
(bench/flywheel.py --cpus 1: the reproducible chains) keep one thread."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flywheel_local import backend as backend_module
from flywheel_local import oracle_runs
from flywheel_local.backend import (
    ALONE_THREADS,
    STAGE_THREADS,
    LocalBackend,
    RunPaths,
    idle_cores,
    stage_threads,
    stage_threads_for,
    usable_cores,
)
from flywheel_local.runner import load_manifest
from flywheel_sim import DEFAULT_WORLD
from hypothesis import given
from hypothesis import strategies as st

TINY = Path(__file__).with_name("tiny-generation.yaml")

cores_st = st.integers(1, 64)
idle_st = st.floats(0.0, 64.0, allow_nan=False)


@given(cores=cores_st, parallel=st.integers(0, 8), idle=idle_st, busy=st.booleans(), most=st.integers(1, 16))
def test_explicit_cpus_ignore_the_machine(cores: int, parallel: int, idle: float, busy: bool, most: int) -> None:
    """`--cpus N`: the even share of N, whatever is idle, so a chain run twice computes the same sums."""
    threads = stage_threads(cores=cores, parallel=parallel, explicit=True, idle=idle, side_busy=busy,
                            most_shared=most, most_alone=16)
    assert threads == stage_threads_for(cores, parallel, most)


@given(idle=idle_st, busy=st.booleans(), parallel=st.integers(0, 8))
def test_one_cpu_given_is_always_one_thread(idle: float, busy: bool, parallel: int) -> None:
    assert stage_threads(cores=1, parallel=parallel, explicit=True, idle=idle, side_busy=busy) == 1


@given(cores=cores_st, parallel=st.integers(2, 8), idle=idle_st, busy=st.booleans())
def test_stages_side_by_side_get_one_thread_each(cores: int, parallel: int, idle: float, busy: bool) -> None:
    assert stage_threads(cores=cores, parallel=parallel, explicit=False, idle=idle, side_busy=busy) == STAGE_THREADS


@given(cores=cores_st, idle=idle_st, busy=st.booleans(), most=st.integers(1, 16))
def test_a_stage_alone_gets_the_idle_cores(cores: int, idle: float, busy: bool, most: int) -> None:
    threads = stage_threads(cores=cores, parallel=1, explicit=False, idle=idle, side_busy=busy, most_alone=most)
    assert 1 <= threads <= min(cores, most)
    free = min(cores, idle) - busy
    assert threads == 1 or threads <= free + backend_module.IDLE_SLACK  # never a thread on a busy core
    if free >= min(cores, most):
        assert threads == min(cores, most)  # every idle core used, up to the cap
    more = stage_threads(cores=cores, parallel=1, explicit=False, idle=idle + 1.0, side_busy=busy, most_alone=most)
    assert more >= threads  # more idle cores never give fewer threads
    if busy:
        unbusy = stage_threads(cores=cores, parallel=1, explicit=False, idle=idle, side_busy=False, most_alone=most)
        assert unbusy - 1 <= threads <= unbusy


@pytest.mark.parametrize(("idle", "busy", "expected"), [
    (2.0, False, 2),    # make run's SFT/RL/eval on 2 idle cores
    (1.8, False, 2),    # the runner's own bookkeeping while it looked
    (1.7, False, 1),    # another program holds a third of a core: a second thread would spin against it
    (1.0, False, 1),    # one core busy elsewhere
    (0.0, False, 1),
    (2.0, True, 1),     # the side worker computes the report's oracle alongside
])
def test_two_cores(idle: float, busy: bool, expected: int) -> None:
    assert stage_threads(cores=2, parallel=1, explicit=False, idle=idle, side_busy=busy) == expected


def test_bad_caps_are_refused() -> None:
    with pytest.raises(ValueError, match="cores must be at least 1; got 0"):
        stage_threads(cores=0, parallel=1, explicit=False, idle=1.0, side_busy=False)
    with pytest.raises(ValueError, match="alone_threads must be at least 1; got 0"):
        stage_threads(cores=2, parallel=1, explicit=False, idle=2.0, side_busy=False, most_alone=0)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc/stat")
def test_idle_cores_is_a_share_of_this_process_s_cores() -> None:
    idle = idle_cores(window=0.2)
    assert 0.0 <= idle <= usable_cores() + 0.01
    own = idle_cores(window=0.2, own=[os.getpid()])  # this process (sleeping) counted as idle: no less
    assert own >= 0.0


class _Recorder:
    def __init__(self) -> None:
        self.envs: list[dict[str, str]] = []

    def popen(self, command: list[str], **kwargs: Any) -> Any:
        envs = self.envs

        class FakeProcess:
            pid = 12345

            def __init__(self) -> None:
                envs.append(kwargs["env"])

            def poll(self) -> int | None:
                return None

        return FakeProcess()


def _backend(tmp_path: Path, cpus: int | None) -> LocalBackend:
    return LocalBackend(load_manifest(TINY), RunPaths(tmp_path / "gen"), world_file=DEFAULT_WORLD,
                        cache_dir=tmp_path / "cache", cpus=cpus, warm_start=False)


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    recorder = _Recorder()
    monkeypatch.setattr(subprocess, "Popen", recorder.popen)
    monkeypatch.setattr(backend_module, "_start_time", lambda pid: "1")
    monkeypatch.setattr(backend_module, "usable_cores", lambda: 2)
    return recorder


def test_alone_on_idle_cores_two_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         launches: _Recorder) -> None:
    monkeypatch.setattr(backend_module, "idle_cores", lambda **kwargs: 2.0)
    backend = _backend(tmp_path, None)
    backend._launch("gen-sft-1", "sft", tmp_path / "sft.json", parallel=1)
    assert launches.envs[-1]["OMP_NUM_THREADS"] == launches.envs[-1]["MKL_NUM_THREADS"] == str(ALONE_THREADS)
    assert backend.thread_choices == {"gen-sft-1": 2}
    assert "start gen-sft-1 on 2 torch thread(s)" in backend.paths.log("gen-sft-1").read_text()


def test_beside_a_running_stage_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           launches: _Recorder) -> None:
    monkeypatch.setattr(backend_module, "idle_cores", lambda **kwargs: 2.0)
    backend = _backend(tmp_path, None)
    backend._launch("gen-reward-a-1", "reward", tmp_path / "a.json", parallel=1)  # alone: 2
    backend._launch("gen-reward-b-1", "reward", tmp_path / "b.json", parallel=1)  # the first still runs: 1
    assert [env["OMP_NUM_THREADS"] for env in launches.envs] == ["2", "1"]


def test_with_the_side_worker_busy_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              launches: _Recorder) -> None:
    class Busy:
        def ready(self) -> bool:
            return False

    monkeypatch.setattr(backend_module, "idle_cores", lambda **kwargs: 2.0)
    monkeypatch.setitem(oracle_runs._PREFETCHES, "busy", Busy())
    _backend(tmp_path, None)._launch("gen-eval-1", "eval", tmp_path / "eval.json", parallel=1)
    assert launches.envs[-1]["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("cpus", [1, 2])
def test_explicit_cpus_never_look_at_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 launches: _Recorder, cpus: int) -> None:
    def looked(**kwargs: Any) -> float:
        raise AssertionError("an explicit --cpus must not depend on the machine's load")

    monkeypatch.setattr(backend_module, "idle_cores", looked)
    _backend(tmp_path, cpus)._launch("gen-sft-1", "sft", tmp_path / "sft.json", parallel=1)
    assert launches.envs[-1]["OMP_NUM_THREADS"] == "1"  # STAGE_THREADS: as the committed chains ran
