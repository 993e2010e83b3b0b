"""Tiny tokenizer and Llama: special tokens, the chat template's assistant mask, save/load, one TRL SFT step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flywheel_trainer.tinymodel import ROLE_TOKENS, tiny_llama, train_tokenizer

TEXTS = [
    "Ahoy cadet! The stars are bright tonight.",
    "Where shall we fly next? To the rings of Saturn!",
    "I love gardens, roses and quiet rain.",
    "You are Captain Nova. Answer in at most 40 words.",
] * 10
CHAT = [
    {"role": "system", "content": "You are Nova."},
    {"role": "user", "content": "hi there 🚀"},
    {"role": "assistant", "content": "Ahoy, cadet!"},
    {"role": "user", "content": "where to?"},
    {"role": "assistant", "content": "The stars."},
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine, two threads mostly spin."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=360)


def test_special_tokens(tokenizer) -> None:
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<s>", "</s>")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for token in ROLE_TOKENS.values():
        assert tokenizer.convert_tokens_to_ids(token) not in (None, tokenizer.unk_token_id)
        assert tokenizer.tokenize(token) == [token]
    assert len(tokenizer) <= 360


def test_any_text_round_trips(tokenizer) -> None:
    text = "Ünïcode, emojis 🧑‍🚀 and 中文 never go unknown!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_training_is_deterministic() -> None:
    first, second = train_tokenizer(TEXTS, vocab_size=300), train_tokenizer(TEXTS, vocab_size=300)
    assert first.get_vocab() == second.get_vocab()


def test_vocab_size_below_the_byte_alphabet_is_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_chat_template_and_assistant_mask(tokenizer) -> None:
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<s><|system|>You are Nova.</s><|user|>hi there 🚀</s><|assistant|>Ahoy, cadet!</s>"
        "<|user|>where to?</s><|assistant|>The stars.</s>"
    )
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("</s><|assistant|>") and text.startswith(prompt)

    out = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "Ahoy, cadet!</s>The stars.</s>"
    assert masked.count(tokenizer.eos_token_id) == 2  # the model learns to stop

    with pytest.raises(Exception, match="unknown role narrator"):
        tokenizer.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)


def test_tiny_llama_shape_ids_and_seed(tokenizer) -> None:
    import torch

    model = tiny_llama(tokenizer, seed=3)
    assert model.config.vocab_size == len(tokenizer)
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (0, 1, 2)
    assert model.generation_config.pad_token_id == 0 and model.generation_config.eos_token_id == 2
    assert sum(p.numel() for p in model.parameters()) < 200_000
    before = torch.random.get_rng_state()
    again = tiny_llama(tokenizer, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    other = tiny_llama(tokenizer, seed=4)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(model.state_dict()[weight], other.state_dict()[weight])
    with pytest.raises(ValueError, match="multiple of num_heads"):
        tiny_llama(tokenizer, hidden_size=30, num_heads=4)


def test_save_and_load_round_trip(tokenizer, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny_llama(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)

    assert loaded_tok.apply_chat_template(CHAT, tokenize=False) == tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert loaded_tok(TEXTS[0])["input_ids"] == tokenizer(TEXTS[0])["input_ids"]
    assert loaded_tok.pad_token_id == 0 and loaded_tok.eos_token_id == 2
    ids = torch.tensor([tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits)


@pytest.mark.slow
def test_one_sft_step_with_assistant_only_loss(tokenizer, tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = tiny_llama(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = Dataset.from_list([{"messages": CHAT}, {"messages": CHAT[:3]}])
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        assistant_only_loss=True,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        bf16=False,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    row = trainer.train_dataset[0]  # TRL folds the assistant mask into the labels (-100 = no loss)
    trained = [label for label in row["labels"] if label != -100]
    assert tokenizer.decode(trained) == "Ahoy, cadet!</s>The stars.</s>"
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
