"""Stage programs forked after the imports (issue 29, flywheel_local.warm) write what a cold `flywheel-train` process
writes: the same trained weights and metrics, their log, their exit code."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from flywheel_local import warm
from flywheel_local.backend import _stage_env, _start_time, _train_command
from flywheel_operator.api import StageResult
from flywheel_trainer import cli
from flywheel_trainer.outputs import RESULT_FILE
from flywheel_trainer.synthetic import build_tiny_parent, synthetic_records, write_jsonl

pytestmark = pytest.mark.skipif(not warm.available(), reason="the forkserver needs Linux")

REWARD = {"name": "pointwise", "kind": "pointwise", "learningRate": 3e-3, "maxSteps": 3, "batchSize": 8,
          "ruleFeatures": ["asks-back", "length"]}


def _config(stage: str, out: Path, policy: Path, log: Path, upstream: dict[str, StageResult],
            **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "name": out.name, "generation": "gen1", "outputDir": str(out), "policy": str(policy),
            "data": {"userTraffic": {"uri": str(log)}}, "settings": {"rewardModels": [REWARD]}, "seed": 0,
            "upstream": {n: r.artifacts for n, r in upstream.items()},
            "upstreamDigests": {n: r.output_digest for n, r in upstream.items()}, **extra}


@pytest.fixture(scope="module")
def synthetic_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(synthetic_records(240), tmp_path_factory.mktemp("logs") / "traffic.jsonl")


@pytest.fixture(scope="module")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_tiny_parent(tmp_path_factory.mktemp("parent") / "policy")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reward_config(tmp_path_factory: pytest.TempPathFactory, synthetic_log: Path, tiny_parent: Path):
    root = tmp_path_factory.mktemp("warm")
    curate = root / "curate.yaml"
    curate.write_text(yaml.safe_dump(_config("curate", root / "curate", tiny_parent, synthetic_log, {})))
    assert cli.main(["curate", "--config", str(curate)]) == 0
    done = {"curate": StageResult.model_validate_json((root / "curate" / RESULT_FILE).read_text())}

    def write(name: str) -> Path:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_config("reward", root / name, tiny_parent, synthetic_log, done,
                                               rewardModel="pointwise")))
        return path

    return write


def test_a_warm_stage_writes_what_a_cold_one_writes(reward_config, tmp_path: Path) -> None:
    env = _stage_env(1)
    cold_config, warm_config = reward_config("cold"), reward_config("warm")
    cold_log, warm_log = tmp_path / "cold.log", tmp_path / "warm.log"
    with cold_log.open("ab") as handle:
        code = subprocess.run([*_train_command(), "reward", "--config", str(cold_config)], stdout=handle,
                              stderr=subprocess.STDOUT, env=env, timeout=600).returncode
    assert code == 0, cold_log.read_text()[-2000:]
    stage = warm.start(["reward", "--config", str(warm_config)], warm_log, env)
    assert stage.wait(timeout=600) == 0, warm_log.read_text()[-2000:]
    results = [json.loads((Path(c.with_suffix("").as_posix()) / RESULT_FILE).read_text())
               for c in (cold_config, warm_config)]
    assert results[0]["metrics"] == results[1]["metrics"]
    weights = [(Path(r["artifacts"]["model"]) / "model.safetensors").read_bytes() for r in results]
    assert weights[0] == weights[1]
    assert "flywheel-train reward: done" in warm_log.read_text()


def test_a_failing_warm_stage_exits_as_a_cold_one_does(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("stage: reward\nname: x\n")
    log = tmp_path / "broken.log"
    stage = warm.start(["reward", "--config", str(broken)], log, _stage_env(1))
    assert stage.wait(timeout=300) == 2
    assert "invalid stage config" in log.read_text()
    server = warm.server_pid()  # the forkserver the stage came from: its parent
    assert server is not None and server != os.getpid()
    assert Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(os.getpid())


def test_a_process_is_named_by_its_pid_and_start_time() -> None:
    assert _start_time(os.getpid()) == _start_time(os.getpid()) != ""
    assert _start_time(2**22 + 12345) == ""


@pytest.mark.parametrize("same_process", [True, False])
def test_an_orphaned_warm_stage_is_known_by_its_start_time(tmp_path: Path, same_process: bool) -> None:
    """A stage forked by a runner that was killed outright has no config on its command line: its pid and start
    time name it, so a resumed run stops it before starting the stage again, and never a process that reused the
    pid."""
    from flywheel_local.backend import LocalBackend, RunPaths
    from flywheel_local.runner import load_manifest
    from flywheel_sim import DEFAULT_WORLD

    backend = LocalBackend(load_manifest(Path(__file__).with_name("tiny-generation.yaml")), RunPaths(tmp_path / "g"),
                           world_file=DEFAULT_WORLD, cache_dir=tmp_path / "cache", warm_start=False)
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        pid_file = backend.paths.pid("g-sft-1")
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{orphan.pid}\n")
        started = _start_time(orphan.pid) if same_process else "1"
        pid_file.with_suffix(".started").write_text(f"{started}\n")
        backend._stop_orphan("g-sft-1")
        if same_process:
            assert orphan.wait(timeout=15) != 0
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                orphan.wait(timeout=0.5)
    finally:
        orphan.kill()
        orphan.wait()
