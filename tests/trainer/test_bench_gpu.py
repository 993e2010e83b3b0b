"""bench/gpu.py --tiny: the GPU benchmark's code runs on the CPU inside the test suite, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_tiny_runs_every_stage_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"].startswith("tiny")
    assert list(report["stages"]) == ["curate", "reward-pointwise", "sft", "rl", "eval"]
    for name in ("reward-pointwise", "sft", "rl", "eval"):
        assert report["stages"][name]["tokens"] > 0, name
        assert report["stages"][name]["wall_s"] > 0, name
    sft = report["sft"]
    assert sft["tokens"] > 0 and sft["tokens_per_s"] > 0 and sft["baseline_tokens_per_s"] > 0
    assert sft["mfu"] is None  # no MFU claim without a GPU
    assert "sft trainer:" in done.stdout
    sampling = report["sampling"]  # tokens/s per sampler backend, the d32e63f loop as the baseline
    assert {(r["backend"], r["batch_size"]) for r in sampling["rows"]} == {
        (backend, batch) for backend in ("generate", "generate@4990565", "hand-loop") for batch in (1, 4)
    }
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["greedy_equal"] for r in sampling["rows"])
    assert "sampling (float32" in done.stdout
