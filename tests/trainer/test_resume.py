"""Resume inside a stage (issue 13, defect 8): a stage killed mid-training after a checkpoint exists continues from
that checkpoint when it runs again (the next attempt of the same stage gets the same output directory), instead
of restarting at step 0. The stage runs as the Job runs it: `python -m flywheel_trainer.cli`, killed with SIGKILL.
The output directory is a local path or an `s3://` prefix on a real S3-compatible server (moto); there the
checkpoints are uploaded as they are saved and the rerun downloads the last one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flywheel_operator import storage
from flywheel_operator.api import StageConfig
from flywheel_trainer.checkpoints import KEEP, checkpoint_dir, checkpoint_uri, complete_checkpoints, last_checkpoint
from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

pytestmark = pytest.mark.slow
MAX_STEPS = 120
EVERY = 10
EVERY_REMOTE = 30
"""Fewer, larger steps between checkpoints on S3: each one is an upload of about ten objects."""
REPLIES = ["I love sunny days by the sea!", "Tell me more about your garden.", "no", "whatever"]


def stage_config(tmp_path: Path, output_root: str | None = None, every: int = EVERY) -> Path:
    base = tmp_path / "base"
    prompts = [f"what do you think about topic {i}?" for i in range(6)]
    tokenizer = train_tokenizer(prompts + REPLIES, vocab_size=300)
    tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(base)
    tokenizer.save_pretrained(base)
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": REPLIES[i % 2]}],
            "rejected": [{"role": "assistant", "content": REPLIES[2 + i % 2]}],
        }
        for i, p in enumerate(prompts)
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "stage": "reward",
        "name": "reward-rm",
        "generation": "g",
        "outputDir": storage.join(output_root or str(tmp_path), "g", "reward-rm"),
        "policy": str(base),
        "data": {"userTraffic": {"uri": str(pairs)}},
        "rewardModel": "rm",
        "checkpointSteps": every,
        "settings": {
            "rewardModels": [
                {"name": "rm", "kind": "pointwise", "maxSteps": MAX_STEPS, "batchSize": 1, "learningRate": 1e-4}
            ]
        },
        "upstream": {"curate": {"pairs": str(pairs)}},
    }
    path = tmp_path / "stage.json"
    path.write_text(json.dumps(config))
    return path


def start(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "flywheel_trainer.cli", "reward", "--config", str(config)]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def train_steps(log: Path) -> list[int]:
    """Steps of the `train` progress lines a run printed."""
    steps = []
    for line in log.read_text().splitlines():
        if line.startswith('{"progress"'):
            progress = json.loads(line)["progress"]
            if progress["phase"] == "train":
                steps.append(progress["step"])
    return steps


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_killed_stage_resumes_from_its_last_checkpoint(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    output_root = request.getfixturevalue("s3") if where == "s3" else None
    config_file = stage_config(tmp_path, output_root, EVERY_REMOTE if output_root else EVERY)
    config = StageConfig.model_validate(json.loads(config_file.read_text()))
    checkpoints = checkpoint_uri(config, "reward")
    assert checkpoints is not None and storage.is_object_store(checkpoints) == (where == "s3")

    first = start(config_file, tmp_path / "first.log")
    try:
        while last_checkpoint(checkpoints) is None:
            assert first.poll() is None, (
                "the stage ended without writing a checkpoint:\n" + (tmp_path / "first.log").read_text()[-3000:]
            )
            time.sleep(0.1)
        first.kill()  # preemption: no cleanup runs
    finally:
        first.kill()
        first.wait()
    resume_from = last_checkpoint(checkpoints)
    assert resume_from is not None
    checkpoint_step = int(resume_from.rsplit("-", 1)[1])
    assert 0 < checkpoint_step < MAX_STEPS
    assert len(complete_checkpoints(checkpoints)) <= KEEP
    assert not storage.exists(storage.join(config.output_dir, "result.json"))

    second = start(config_file, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    steps = train_steps(tmp_path / "second.log")
    assert steps[0] == checkpoint_step + 1, f"restarted at step {steps[0]} instead of {checkpoint_step + 1}"
    assert steps[-1] == MAX_STEPS
    result = json.loads(storage.read_text(storage.join(config.output_dir, "result.json")))
    assert result["metrics"]["steps"] == MAX_STEPS
    assert not storage.exists(storage.join(config.output_dir, "checkpoints"))  # the published output replaced them


def test_checkpoints_are_off_at_zero_steps_and_scratch_local_for_object_store_outputs(tmp_path: Path) -> None:
    config = StageConfig.model_validate(json.loads(stage_config(tmp_path).read_text()))
    assert checkpoint_dir(config.model_copy(update={"checkpoint_steps": 0}), "sft") is None
    remote = config.model_copy(update={"output_dir": "s3://bucket/g/sft"})
    assert checkpoint_uri(remote, "sft") == f"s3://bucket/g/sft/checkpoints/{checkpoint_dir(remote, 'sft').name}"
    assert checkpoint_dir(remote, "sft").is_relative_to(storage.cache_dir())  # the Trainer writes locally
    changed = config.model_copy(update={"seed": 7})
    assert checkpoint_dir(changed, "sft") != checkpoint_dir(config, "sft")  # other training, other checkpoints
