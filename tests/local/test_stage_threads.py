"""Stage programs run on at most STAGE_THREADS torch threads (issue 29): on the tiny models a second thread costs
more than it brings (SFT 81 s on one thread against 420 s on two, bench/local.py at load 10), and one thread is what
the committed chain ran every stage on (`bench/flywheel.py --cpus 1`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from flywheel_local import backend as backend_module
from flywheel_local.backend import STAGE_THREADS, LocalBackend, RunPaths, stage_threads_for
from flywheel_local.runner import load_manifest
from flywheel_sim import DEFAULT_WORLD
from hypothesis import given
from hypothesis import strategies as st

TINY = Path(__file__).with_name("tiny-generation.yaml")


def test_one_thread_per_stage_by_default() -> None:
    assert STAGE_THREADS == 1
    assert stage_threads_for(2, 1) == 1  # make run on 2 cores: SFT alone used to get 2
    assert stage_threads_for(16, 1) == 1
    assert stage_threads_for(2, 3) == 1  # three reward models side by side


@given(cpus=st.integers(1, 64), parallel=st.integers(0, 8), most=st.integers(1, 16))
def test_an_even_share_of_the_cores_capped(cpus: int, parallel: int, most: int) -> None:
    threads = stage_threads_for(cpus, parallel, most)
    assert 1 <= threads <= most
    assert threads == 1 or threads * max(1, parallel) <= cpus
    assert threads == min(most, max(1, cpus // max(1, parallel)))


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="stage_threads must be at least 1; got 0"):
        stage_threads_for(2, 1, 0)


@pytest.mark.parametrize(("stage_threads", "expected"), [(STAGE_THREADS, "1"), (4, "2")])
def test_a_launched_stage_gets_its_threads_in_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              stage_threads: int, expected: str) -> None:
    seen: dict[str, Any] = {}

    class FakeProcess:
        pid = 12345

        def __init__(self, command: list[str], **kwargs: Any) -> None:
            seen.update(kwargs["env"])

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(backend_module, "_start_time", lambda pid: "1")
    backend = LocalBackend(load_manifest(TINY), RunPaths(tmp_path / "gen"), world_file=DEFAULT_WORLD,
                           cache_dir=tmp_path / "cache", cpus=2, warm_start=False, stage_threads=stage_threads)
    backend._launch("gen-sft-1", "sft", tmp_path / "sft.json", parallel=1)
    assert seen["OMP_NUM_THREADS"] == seen["MKL_NUM_THREADS"] == expected
