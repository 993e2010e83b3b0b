"""What a stage reads from the stages before it: artifacts by stage name, and the models it needs loaded.

Upstream stage names follow StageConfig.name: `curate`, `reward-<model name>`, `sft`, `rl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flywheel_operator.api import StageConfig

from flywheel_trainer.outputs import StageError
from flywheel_trainer.runtime import existing_path


def artifact_path(config: StageConfig, stage: str, key: str) -> Path:
    """The local path of upstream artifact `stage`/`key`; the error names what is missing."""
    uri = config.upstream.get(stage, {}).get(key)
    if uri is None:
        have = sorted(config.upstream)
        raise StageError(f"upstream.{stage}.{key} is missing: the {config.stage} stage needs it (upstream has {have})")
    return existing_path(uri, field=f"upstream.{stage}.{key}")


def optional_artifact(config: StageConfig, stage: str, key: str) -> Path | None:
    """The upstream artifact when that stage ran and wrote it, else None."""
    return artifact_path(config, stage, key) if key in config.upstream.get(stage, {}) else None


def pointwise_reward_name(config: StageConfig) -> str:
    """RL and rejection sampling score with settings.rl.rewardModel, or the first pointwise model."""
    if config.settings.rl.reward_model is not None:
        return config.settings.rl.reward_model
    return next(m.name for m in config.settings.reward_models if m.kind == "pointwise")


def reward_model_path(config: StageConfig, name: str) -> Path:
    return artifact_path(config, f"reward-{name}", "model")


def signal_model_names(config: StageConfig) -> dict[str, str]:
    """Configured user-signal models by signal (`continue`, `thumb-up`) → model name (first of each)."""
    names: dict[str, str] = {}
    for model in config.settings.reward_models:
        if model.kind == "user-signal" and model.signal not in names:
            names[model.signal] = model.name
    return names


def pairwise_model_name(config: StageConfig) -> str | None:
    return next((m.name for m in config.settings.reward_models if m.kind == "pairwise"), None)


def load_policy(source: str, *, training: bool = False) -> tuple[Any, Any]:
    """A causal LM and its tokenizer (with a pad token).

    `training`: fp32 master weights left where they are loaded, for a Trainer to place (build the stage's
    TrainingArguments first, so ZeRO-3 loads it partitioned under `zero.Init`). Otherwise an inference copy:
    bf16 on CUDA, whole, on this rank's device, in eval mode (flywheel_trainer.placement).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel_trainer.placement import load_inference, training_dtype

    if training:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=training_dtype())
    else:  # whole on this rank's GPU, or sharded over a group of GPUs when it does not fit one (None off-group)
        model = load_inference(AutoModelForCausalLM.from_pretrained, source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
