"""Where a stage runs: locating models and data, and the training arguments every TRL trainer shares.

The same code runs on a laptop CPU with a tiny model and on GPU nodes with a Hugging Face id: bf16 and
DeepSpeed only when CUDA is present, `use_cpu` otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flywheel_operator import storage
from flywheel_operator.api.deepspeed import DEEPSPEED_CONFIG_ENV, deepspeed_config

from flywheel_trainer.outputs import StageError
from flywheel_trainer.placement import collective_timeout

ARTIFACTS_MOUNT = storage.PVC_MOUNT
"""Where the artifact PersistentVolumeClaim is mounted in stage pods (StorageSpec.pvc)."""


def local_path(uri: str, *, field: str) -> Path:
    """A local path for an artifact or data URI: plain paths, `file://…` and `pvc://<claim>/<path>` map onto the
    file system; `s3://` and `gs://` objects are downloaded into the local cache (storage.localize)."""
    if problem := storage.uri_problem(uri):
        raise StageError(f"{field}: {problem}; use {storage.ACCEPTED_FORMS}")
    path = storage.local_path(uri)
    return path if path is not None else existing_path(uri, field=field)


def existing_path(uri: str, *, field: str) -> Path:
    """`local_path`, failing with the field's name and the URI when nothing is there."""
    if problem := storage.uri_problem(uri):
        raise StageError(f"{field}: {problem}; use {storage.ACCEPTED_FORMS}")
    try:
        return storage.localize(uri)
    except storage.MissingObjectError as exc:
        raise StageError(f"{field}: {uri!r} does not exist; check the URI or the upstream stage's output") from exc
    except storage.StorageError as exc:
        raise StageError(f"{field}: {exc}") from exc


def existing_uri(uri: str, *, field: str) -> str:
    """`uri` when something is there, for readers that stream through the storage seam (no local copy)."""
    if problem := storage.uri_problem(uri):
        raise StageError(f"{field}: {problem}; use {storage.ACCEPTED_FORMS}")
    try:
        found = storage.exists(uri)
    except storage.StorageError as exc:
        raise StageError(f"{field}: {exc}") from exc
    if not found:
        raise StageError(f"{field}: {uri!r} does not exist; check the URI or the upstream stage's output")
    return uri


def model_source(value: str, *, field: str) -> str:
    """Check a model reference before any heavy work: a local directory with a config, or a Hugging Face id.

    With `HF_HUB_OFFLINE=1` a Hub id must already be in the local cache; the error names the field.
    """
    if storage.scheme(value) or value.startswith(("/", ".", "~")) or Path(value).exists():
        path = local_path(value, field=field).expanduser()
        if not (path / "config.json").is_file():
            raise StageError(f"{field}: no model at {value!r} (expected a directory with config.json)")
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(value, "config.json"), str):
            raise StageError(
                f"{field}: model {value!r} is neither a local directory nor in the Hugging Face cache, and "
                "HF_HUB_OFFLINE=1 forbids downloading it; give a path or pre-download the model"
            )
    return value


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def deepspeed_settings(stage: int) -> dict[str, Any]:
    """The DeepSpeed config: the file the operator rendered (`DEEPSPEED_CONFIG`, from the stage ConfigMap), or
    for a run without one the same builder's dict; a file for another ZeRO stage is refused."""
    path = os.environ.get(DEEPSPEED_CONFIG_ENV)
    if not path:
        return deepspeed_config(stage)
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError(f"{DEEPSPEED_CONFIG_ENV}: cannot read a JSON DeepSpeed config from {path}: {exc}") from exc
    rendered = config.get("zero_optimization", {}).get("stage") if isinstance(config, dict) else None
    if rendered != stage:
        raise StageError(
            f"{DEEPSPEED_CONFIG_ENV}: {path} configures ZeRO stage {rendered}, but deepspeedStage is {stage}; "
            "render both from the same generation"
        )
    return config


def training_kwargs(
    output_dir: Path, *, seed: int, deepspeed_stage: int, max_steps: int | None, learning_rate: float
) -> dict[str, Any]:
    """Arguments shared by every TRL config: no checkpoints, the generation's trackers (`spec.tracking`, none by
    default; flywheel_trainer.tracking), bf16 + DeepSpeed on CUDA only."""
    from flywheel_trainer.tracking import RUN_NAME_ENV, report_to

    cuda = has_cuda()
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": seed,
        "learning_rate": learning_rate,
        "report_to": report_to(),
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "use_cpu": not cuda,
        "bf16": cuda,
        "max_steps": max_steps if max_steps is not None else -1,
        "include_num_input_tokens_seen": "non_padding",  # result metric `tokens_seen` (bench: tokens/s)
        "ddp_timeout": int(collective_timeout().total_seconds()),  # resources.collectiveTimeout, not torch's 10 min
    }
    if not cuda:
        # TRL's configs checkpoint activations by default (memory for a GPU): on the CPU's small models it only
        # recomputes every forward during the backward for the same gradients bit for bit
        # (tests/trainer/test_cpu_checkpointing.py; bench/local.py --only stages). Under transformers 5's deprecated
        # name, so that a stage setting passed as `activation_checkpointing` (SFT's activationCheckpointing) wins.
        kwargs["gradient_checkpointing"] = False
    if os.environ.get(RUN_NAME_ENV):
        kwargs["run_name"] = os.environ[RUN_NAME_ENV]
    if cuda and deepspeed_stage > 0:
        kwargs["deepspeed"] = deepspeed_settings(deepspeed_stage)
    return kwargs


def lora_config(lora: Any, *, task_type: str) -> Any:
    """A peft LoraConfig from LoraSettings, or None when LoRA is off."""
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules="all-linear", task_type=task_type
    )


def save_trained(trainer: Any, directory: Path, tokenizer: Any, *, merge_lora: bool) -> Any:
    """Save the trained model where the next stage loads it and return it: LoRA adapters merged into the base
    model; otherwise through `trainer.save_model`, which gathers DeepSpeed ZeRO-3 partitioned weights.
    Only the main process writes files; the others get the empty directory, so writing metadata beside the
    model and digesting their (discarded) scratch output works on every rank."""
    directory.mkdir(parents=True, exist_ok=True)
    if merge_lora:
        model = trainer.model.merge_and_unload()
        if trainer.args.should_save:
            model.save_pretrained(directory)
    else:
        trainer.save_model(str(directory))
        model = trainer.model
    if trainer.args.should_save:
        tokenizer.save_pretrained(directory)
    return model
