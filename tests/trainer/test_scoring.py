"""Reward-model inputs longer than the model's limit: the response is scored, the oldest context is cut."""

from __future__ import annotations

from typing import Any

import pytest
from flywheel_trainer.reward import fit_pairs
from flywheel_trainer.scoring import logits_for_texts, render

TEXTS = ["hello there, how are you today?", "tell me about the sea and the ship", "pizza with cheese", "ok"]


@pytest.fixture(scope="module")
def classifier() -> tuple[Any, Any]:
    import torch
    from flywheel_trainer.tinymodel import train_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = train_tokenizer(TEXTS * 4, vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config).eval(), tokenizer


def _chat(turns: int) -> list[dict[str, str]]:
    chat = [{"role": "system", "content": "You are Captain Rex."}]
    for i in range(turns):
        chat += [{"role": "user", "content": f"tell me about the sea {i}"}, {"role": "assistant", "content": "ok"}]
    return [*chat, {"role": "user", "content": "and the ship?"}]


def test_a_long_context_is_cut_from_the_left_so_responses_still_differ(classifier: tuple[Any, Any]) -> None:
    model, tokenizer = classifier
    context = _chat(30)
    texts = [render(tokenizer, context, "pizza with cheese"), render(tokenizer, context, "hello there")]
    assert len(tokenizer(texts[0], add_special_tokens=False)["input_ids"]) > 64
    first, second = logits_for_texts(model, tokenizer, texts, max_length=64)
    assert first != pytest.approx(second, abs=1e-6)


def test_reward_pairs_are_trimmed_to_fit_and_only_unfittable_ones_are_counted_as_dropped(
    classifier: tuple[Any, Any],
) -> None:
    _, tokenizer = classifier
    pair = {"chosen": [{"role": "assistant", "content": "hello there"}],
            "rejected": [{"role": "assistant", "content": "ok"}]}
    rows = [{**pair, "prompt": _chat(1)}, {**pair, "prompt": _chat(30)}]
    long_system = [{"role": "system", "content": "the sea " * 200}, {"role": "user", "content": "hi"}]
    rows.append({**pair, "prompt": long_system})
    fitted, trimmed, dropped = fit_pairs(rows, tokenizer, 64)
    assert (len(fitted), trimmed, dropped) == (2, 1, 1)
    assert fitted[0]["prompt"] == rows[0]["prompt"]
    kept = fitted[1]["prompt"]
    assert kept[0]["role"] == "system" and kept[-1] == rows[1]["prompt"][-1] and len(kept) < len(rows[1]["prompt"])
    for row in fitted:
        for side in ("chosen", "rejected"):
            text = render(tokenizer, row["prompt"], row[side][0]["content"])
            assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 64
