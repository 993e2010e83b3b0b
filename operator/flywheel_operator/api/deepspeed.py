"""The one DeepSpeed config of a training stage: rendered by the operator, read by the trainer.

The operator writes it into the stage ConfigMap (`deepspeed.json`) and points `DEEPSPEED_CONFIG` at it; the
trainer reads that file, and a local run without it builds the same dict here. Batch sizes, accumulation,
clipping and precision are "auto": the HF Trainer fills them from its TrainingArguments, so the stage's settings
stay the only source of those numbers (tests/trainer/test_deepspeed.py validates the filled config with
DeepSpeed's own `DeepSpeedConfig`).
"""

from __future__ import annotations

from typing import Any

DEEPSPEED_CONFIG_ENV = "DEEPSPEED_CONFIG"
"""Env variable with the path of the rendered config in a stage pod."""


def deepspeed_config(stage: int) -> dict[str, Any]:
    """A ZeRO-2/3 config; ZeRO-3 gathers the partitioned weights into one 16-bit model when saving."""
    if stage not in (2, 3):
        raise ValueError(f"deepspeedStage {stage} has no DeepSpeed config: use 2 or 3 (0 turns DeepSpeed off)")
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }
