"""On the CPU the stages train without activation checkpointing (issue 29): TRL's configs turn it on by default,
which on the tiny models only recomputes every forward during the backward (a quarter of a reward model's step,
bench/local.py --only stages) for the same gradients. Pinned here: training_kwargs turns it off on the CPU only,
and training with and without it gives the same weights bit for bit, so no result changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flywheel_trainer import runtime
from flywheel_trainer.runtime import training_kwargs


def _kwargs(tmp_path: Path) -> dict[str, Any]:
    return training_kwargs(tmp_path, seed=3, deepspeed_stage=0, max_steps=3, learning_rate=1e-3)


def test_off_on_the_cpu(tmp_path: Path) -> None:
    kwargs = _kwargs(tmp_path)
    assert kwargs["gradient_checkpointing"] is False
    assert "activation_checkpointing" not in kwargs  # a stage's own setting of that name (SFT) is passed beside it


def test_the_library_default_on_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "has_cuda", lambda: True)
    kwargs = _kwargs(tmp_path)
    assert "gradient_checkpointing" not in kwargs  # TRL's default (on): memory matters on a 1 B model
    assert kwargs["bf16"] is True


def _sft_weights(parent: Path, out: Path, checkpointing: bool) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(parent)
    model = AutoModelForCausalLM.from_pretrained(parent)
    rows = [{"messages": [{"role": "user", "content": f"tell me about topic {i}"},
                          {"role": "assistant", "content": f"topic {i} is {'nice' if i % 2 else 'fun'}, ask me more!"}]}
            for i in range(12)]
    kwargs = _kwargs(out) | {"per_device_train_batch_size": 4}
    config = SFTConfig(**kwargs, max_length=64, activation_checkpointing=checkpointing)  # as sft.py passes it
    assert config.gradient_checkpointing is checkpointing  # the deprecated name TRL reads follows the new one
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    assert trainer.model.is_gradient_checkpointing is checkpointing
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


def test_a_stage_setting_wins(tmp_path: Path) -> None:
    from trl import RewardConfig, SFTConfig

    assert SFTConfig(**_kwargs(tmp_path), activation_checkpointing=True).gradient_checkpointing is True  # SFT's own
    assert RewardConfig(**_kwargs(tmp_path)).gradient_checkpointing is False  # TRL's default True, off on the CPU


def test_the_same_weights_with_and_without(tiny_parent: Path, tmp_path: Path) -> None:
    import torch

    with_checkpoints = _sft_weights(tiny_parent, tmp_path / "on", True)
    without = _sft_weights(tiny_parent, tmp_path / "off", False)
    assert with_checkpoints.keys() == without.keys()
    start = _initial(tiny_parent)
    assert any(not torch.equal(without[k], start[k]) for k in start)  # it trained
    assert all(torch.equal(with_checkpoints[k], without[k]) for k in without)


def _initial(parent: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(parent).state_dict().items()}
