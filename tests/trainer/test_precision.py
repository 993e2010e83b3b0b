"""Trained models keep fp32 master weights under bf16 compute (issue 13, defect 4).

A bf16 parameter cannot take an update of 1e-6 relative to its size (bf16 keeps 8 significant bits), so AdamW at
RL/DPO learning rates leaves almost every bf16 weight where it was. The stage code is run with its CUDA decisions
(bf16 mixed precision, the CUDA load dtype) on the CPU, where autocast to bf16 works the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flywheel_operator.api import RewardModelSettings, StageConfig
from flywheel_trainer import reward, rl, runtime, sft
from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

LR = 1e-6
CHAT = [{"role": "user", "content": "hello there, how are you today?"}]
GOOD = "I am well, thank you for asking! How was your day?"
BAD = "no."


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random tiny Llama (fp32) and its tokenizer."""
    directory = tmp_path_factory.mktemp("precision") / "base"
    tokenizer = train_tokenizer([CHAT[0]["content"], GOOD, BAD] * 20, vocab_size=300)
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=1).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def changed_fraction(model: Any, before: dict[str, torch.Tensor]) -> float:
    """Share of the base model's weights (those `model` shares with it) that moved."""
    changed = total = 0
    for name, value in model.state_dict().items():
        if name not in before or "embed" in name or "lm_head" in name:
            continue  # a new head; embeddings of unseen tokens get no gradient in either precision
        changed += int((value.float().cpu() != before[name]).sum())
        total += value.numel()
    assert total > 0
    return changed / total


def one_step(stage: str, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, cuda: bool) -> Any:
    """Run the stage's own trainer for one optimizer step at lr 1e-6; `cuda` makes the stage code take the
    decisions it takes on a GPU node (bf16 compute and its load dtype) while the tensors stay on the CPU."""
    from transformers import AutoTokenizer, set_seed

    monkeypatch.setattr(runtime, "has_cuda", lambda: cuda)
    set_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    args = runtime.training_kwargs(tmp_path / stage, seed=0, deepspeed_stage=0, max_steps=1, learning_rate=LR)
    assert args["bf16"] is cuda
    args["use_cpu"] = True  # the one thing that differs from a GPU node: where the tensors live
    if stage == "reward":
        settings = RewardModelSettings(name="rm", kind="pointwise", learningRate=LR, maxLength=64)
        rows = [
            {
                "prompt": CHAT,
                "chosen": [{"role": "assistant", "content": GOOD}],
                "rejected": [{"role": "assistant", "content": BAD}],
            }
        ] * 4
        trainer = reward._train_pointwise(
            settings, str(base), rows, args | {"per_device_train_batch_size": 4}, tokenizer
        )
    elif stage == "dpo":
        pairs = tmp_path / "pairs.jsonl"
        pairs.parent.mkdir(parents=True, exist_ok=True)
        row = {"prompt": CHAT, "chosen": [{"role": "assistant", "content": GOOD}]}
        pairs.write_text(json.dumps(row | {"rejected": [{"role": "assistant", "content": BAD}]}) + "\n")
        config = StageConfig.model_validate(
            {
                "stage": "rl",
                "name": "rl",
                "generation": "g",
                "outputDir": str(tmp_path / "out"),
                "policy": str(base),
                "data": {"userTraffic": {"uri": str(tmp_path)}},
                "settings": {"dpo": {"enabled": True, "learningRate": LR, "batchSize": 1}},
                "upstream": {"curate": {"pairs": str(pairs)}},
            }
        )
        monkeypatch.setattr(rl, "training_kwargs", lambda *a, **k: args)
        patched, _ = rl.dpo_patch(config, str(base), tmp_path)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(patched)  # as saved: in the dtype it was trained in
    else:
        config = StageConfig.model_validate(
            {
                "stage": "sft",
                "name": "sft",
                "generation": "g",
                "outputDir": str(tmp_path / "out"),
                "policy": str(base),
                "data": {"userTraffic": {"uri": str(tmp_path)}},
                "settings": {"sft": {"maxSteps": 1, "batchSize": 4, "learningRate": LR, "maxLength": 64}},
            }
        )
        monkeypatch.setattr(sft, "training_kwargs", lambda *a, **k: args)
        rows = [{"prompt": CHAT, "completion": [{"role": "assistant", "content": GOOD}]}] * 4
        trainer = sft.train_sft(config, str(base), tokenizer, rows, tmp_path / "out")
    assert trainer.state.global_step == 1
    return trainer.model


def base_weights(base: Path, like: Any) -> dict[str, torch.Tensor]:
    """The base model's weights as `like` started from: loaded in `like`'s dtype (rounding is not training)."""
    from transformers import AutoModelForCausalLM

    dtype = next(like.parameters()).dtype
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return {k: v.float().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stage", ["reward", "sft", "dpo"])
def test_one_step_at_lr_1e6_moves_weights_as_fp32_training_does(
    stage: str, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_torch_thread: None
) -> None:
    fp32 = one_step(stage, base, tmp_path / "fp32", monkeypatch, cuda=False)
    reference = changed_fraction(fp32, base_weights(base, fp32))
    trained = one_step(stage, base, tmp_path / "bf16", monkeypatch, cuda=True)
    assert reference > 0.9
    moved = changed_fraction(trained, base_weights(base, trained))
    assert moved >= 0.95 * reference, f"{moved:.1%} of the weights moved; fp32 training moves {reference:.1%}"
    assert {p.dtype for p in trained.parameters()} == {torch.float32}, "master weights must stay fp32"


def test_bf16_parameters_lose_an_update_of_1e6(base: Path) -> None:
    """What the test above guards against: the same step on bf16 parameters leaves most weights unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    batch = tokenizer([GOOD, BAD], return_tensors="pt", padding=True)
    fractions = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        before = {k: v.float().clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        fractions[dtype] = changed_fraction(model, before)
    assert fractions[torch.float32] > 0.9
    assert fractions[torch.bfloat16] < 0.2 * fractions[torch.float32]
