"""One DeepSpeed config: the operator renders it, the trainer reads that very file, and DeepSpeed accepts it.

The "auto" values are filled the way the HF Trainer fills them from the stage's TrainingArguments, and the
result is parsed by DeepSpeed's own `DeepSpeedConfig` (constructing it needs no GPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flywheel_operator.api.deepspeed import DEEPSPEED_CONFIG_ENV, deepspeed_config
from flywheel_operator.kube import manifests
from flywheel_trainer import runtime
from flywheel_trainer.outputs import StageError

from tests.operator.test_manifests import env, start


def rendered(stage: int, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The sft stage's ConfigMap and Job for `deepspeedStage: stage`: the file as the pod sees it, and its env."""
    gen, action = start("sft", resources={"deepspeedStage": stage})
    config_map = manifests.config_map(gen, action)
    path = tmp_path / "deepspeed.json"
    path.write_text(config_map["data"]["deepspeed.json"])
    return path, env(manifests.job(gen, action))


def gpu_training_kwargs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stage: int) -> dict[str, Any]:
    monkeypatch.setattr(runtime, "has_cuda", lambda: True)  # the arguments a GPU pod builds
    return runtime.training_kwargs(tmp_path / "out", seed=0, deepspeed_stage=stage, max_steps=3, learning_rate=1e-5)


def filled_by_the_trainer(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The config with its "auto" values filled from the TrainingArguments, as the HF Trainer does."""
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = HfTrainerDeepSpeedConfig(kwargs["deepspeed"])
    plain = {k: v for k, v in kwargs.items() if k not in ("deepspeed", "use_cpu")}
    args = TrainingArguments(**plain, use_cpu=True, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    config.trainer_config_process(args)
    return config.config


def autos(value: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values still "auto"."""
    if isinstance(value, dict):
        return [path for key, item in value.items() for path in autos(item, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if value == "auto" else []


@pytest.mark.parametrize("stage", [2, 3])
def test_the_trainer_trains_with_the_config_the_operator_rendered(
    stage: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, job_env = rendered(stage, tmp_path)
    assert job_env[DEEPSPEED_CONFIG_ENV] == manifests.DEEPSPEED_FILE
    monkeypatch.setenv(DEEPSPEED_CONFIG_ENV, str(path))
    kwargs = gpu_training_kwargs(monkeypatch, tmp_path, stage)
    assert kwargs["deepspeed"] == json.loads(path.read_text())

    from deepspeed.runtime.config import DeepSpeedConfig

    filled = filled_by_the_trainer(kwargs)
    assert autos(filled) == []
    parsed = DeepSpeedConfig(filled)
    assert parsed.zero_optimization_stage == stage
    assert parsed.bfloat16_config.enabled and not parsed.float16_config.enabled
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (4, 2)
    assert parsed.train_batch_size == 8  # micro batch × accumulation × one process
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save


def test_a_local_run_without_the_file_builds_the_same_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEEPSPEED_CONFIG_ENV, raising=False)
    path, _ = rendered(3, tmp_path)
    assert gpu_training_kwargs(monkeypatch, tmp_path, 3)["deepspeed"] == json.loads(path.read_text())
    assert json.loads(path.read_text()) == deepspeed_config(3)


def test_a_config_for_another_zero_stage_or_a_missing_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = rendered(2, tmp_path)
    monkeypatch.setenv(DEEPSPEED_CONFIG_ENV, str(path))
    with pytest.raises(StageError, match="configures ZeRO stage 2, but deepspeedStage is 3"):
        gpu_training_kwargs(monkeypatch, tmp_path, 3)
    monkeypatch.setenv(DEEPSPEED_CONFIG_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(StageError, match="DEEPSPEED_CONFIG: cannot read"):
        gpu_training_kwargs(monkeypatch, tmp_path, 2)


def test_no_config_for_zero_stage_zero() -> None:
    with pytest.raises(ValueError, match="deepspeedStage 0"):
        deepspeed_config(0)
