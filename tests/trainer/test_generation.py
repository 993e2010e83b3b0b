"""Batched generation: left padding, stopping at EOS, only new tokens decoded, shapes, seeded determinism."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flywheel_trainer.generation import generate, generate_tokens, prompt_ids
from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

SHORT = [{"role": "system", "content": "You are Nova."}, {"role": "user", "content": "hi"}]
LONG = [
    {"role": "system", "content": "You are Nova, a cheerful starship captain of the fleet."},
    {"role": "user", "content": "where shall we fly tonight, captain?"},
]
REPLIES = {"hi": "Ahoy!", "where shall we fly tonight, captain?": "To the stars, cadet."}


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
    texts = [m["content"] for m in SHORT + LONG] + list(REPLIES.values())
    return train_tokenizer(texts * 5, vocab_size=300)


@pytest.fixture(scope="module")
def parrot(tokenizer):
    """A tiny model overfit to answer SHORT with "Ahoy!" and LONG with "To the stars, cadet." and stop."""
    import torch

    model = tiny_llama(tokenizer, seed=0)
    chats = [[*chat, {"role": "assistant", "content": REPLIES[chat[-1]["content"]]}] for chat in (SHORT, LONG)]
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(50):
            model(**batch, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    return model


def test_greedy_batch_stops_at_eos_and_decodes_only_new_tokens(parrot, tokenizer) -> None:
    out = generate(parrot, tokenizer, [SHORT, LONG], max_new_tokens=24, temperature=0)
    assert out == [["Ahoy!"], ["To the stars, cadet."]]


def test_left_padding_gives_the_same_answers_as_one_by_one(parrot, tokenizer) -> None:
    together = generate_tokens(parrot, tokenizer, [LONG, SHORT, LONG], max_new_tokens=24, temperature=0)
    alone = [generate_tokens(parrot, tokenizer, [chat], max_new_tokens=24, temperature=0)[0] for chat in (LONG, SHORT)]
    assert together == [alone[0], alone[1], alone[0]]
    assert tokenizer.eos_token_id not in together[0][0]


def test_shapes_and_batching(tokenizer) -> None:
    model = tiny_llama(tokenizer, seed=1)
    chats = [SHORT, LONG, SHORT, LONG, SHORT]
    for batch_size in (1, 4, 32):
        out = generate(model, tokenizer, chats, max_new_tokens=6, temperature=1.0, num_samples=3, batch_size=batch_size)
        assert len(out) == len(chats) and all(len(samples) == 3 for samples in out)
        assert all(isinstance(text, str) for samples in out for text in samples)
    tokens = generate_tokens(model, tokenizer, chats, max_new_tokens=6, temperature=1.0, num_samples=2)
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert all(len(t) <= 6 and not stop & set(t) for samples in tokens for t in samples)
    assert generate(model, tokenizer, [], max_new_tokens=4, temperature=1.0) == []
    greedy = generate(model, tokenizer, [SHORT], max_new_tokens=6, temperature=0, num_samples=3)
    assert len(greedy[0]) == 3 and len(set(greedy[0])) == 1


def test_same_seed_same_samples_and_global_rng_untouched(tokenizer) -> None:
    import torch

    model = tiny_llama(tokenizer, seed=2)
    model.train()
    state = torch.random.get_rng_state()
    kwargs = {"max_new_tokens": 8, "temperature": 1.0, "num_samples": 4}
    first = generate_tokens(model, tokenizer, [SHORT, LONG], seed=7, **kwargs)
    assert generate_tokens(model, tokenizer, [SHORT, LONG], seed=7, **kwargs) == first
    assert generate_tokens(model, tokenizer, [SHORT, LONG], seed=8, **kwargs) != first
    assert len({tuple(t) for t in first[0]}) > 1  # samples of one chat differ
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training  # mode restored


def test_long_prompts_keep_their_latest_tokens(tokenizer) -> None:
    model = tiny_llama(tokenizer, max_positions=40)
    chat = [*LONG, {"role": "assistant", "content": "To the stars, cadet."}, *LONG[1:], *LONG[1:]]
    full = prompt_ids(tokenizer, chat)
    assert len(full) > 40
    assert prompt_ids(tokenizer, chat, max_tokens=30) == full[-30:]
    out = generate_tokens(model, tokenizer, [chat], max_new_tokens=10, temperature=0)
    assert len(out[0][0]) <= 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0, "temperature": 1.0}, "max_new_tokens must be at least 1"),
        ({"max_new_tokens": 4, "temperature": -1.0}, "temperature must be >= 0"),
        ({"max_new_tokens": 4, "temperature": 1.0, "num_samples": 0}, "num_samples must be at least 1"),
        ({"max_new_tokens": 4, "temperature": 1.0, "batch_size": 0}, "batch_size must be at least 1"),
        ({"max_new_tokens": 600, "temperature": 1.0}, "leaves no room for a prompt"),
    ],
)
def test_bad_arguments(tokenizer, kwargs: dict, message: str) -> None:
    model = tiny_llama(tokenizer)
    with pytest.raises(ValueError, match=message):
        generate(model, tokenizer, [SHORT], **kwargs)


def test_sampling_follows_the_distribution_and_the_nucleus() -> None:
    """The inverse-CDF draw samples softmax(logits / T) exactly; top_p keeps the smallest nucleus."""
    import torch
    from flywheel_trainer.generation import _pick

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.clamp(min=1e-12).log().expand(40_000, -1)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(_pick(logits, 1.0, 1.0, generator), minlength=5).float() / 40_000
    assert torch.allclose(counts, probs, atol=0.01)
    assert counts[4] == 0
    nucleus = torch.bincount(_pick(logits, 1.0, 0.7, generator), minlength=5).float() / 40_000
    assert nucleus[2:].sum() == 0 and abs(nucleus[0] - 0.5 / 0.8) < 0.01
    assert _pick(logits[:3], 0.0, 1.0, generator).tolist() == [0, 0, 0]
