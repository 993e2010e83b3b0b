"""Batched generation: left padding, stopping at EOS, only new tokens decoded, shapes, seeded determinism, one
random stream per row (the same samples whatever the batch), shedding finished rows, and the sampler seam: the
`generate` backend gives the hand-written loop's tokens greedily (d32e63f; its random stream was given up for
per-row streams, so sampled tokens differ from it)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    """The seeded draw samples softmax(scores) exactly from each row's own uniform numbers; behind transformers'
    top-p warper it keeps the smallest nucleus; only the drawn token stays finite, so generate's greedy pick takes
    it."""
    import torch
    from flywheel_trainer.generation import _seeded_draw_class, row_streams, stream_uniforms
    from transformers import TopPLogitsWarper

    draw = _seeded_draw_class()
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.clamp(min=1e-12).log().expand(40_000, -1).contiguous()
    rows = torch.zeros((40_000, 1), dtype=torch.long)
    uniforms = torch.from_numpy(stream_uniforms(row_streams([[1, 2, 3]], 40_000, seed=0).reshape(-1), 2))
    picked = draw(uniforms)(rows, logits)
    assert torch.isfinite(picked).sum(dim=-1).eq(1).all()
    counts = torch.bincount(picked.argmax(dim=-1), minlength=5).float() / 40_000
    assert torch.allclose(counts, probs, atol=0.01)
    assert counts[4] == 0
    nucleus_scores = TopPLogitsWarper(0.7)(rows, logits.clone())
    nucleus = torch.bincount(draw(uniforms, 1)(rows, nucleus_scores).argmax(dim=-1), minlength=5) / 40_000
    assert nucleus[2:].sum() == 0 and abs(nucleus[0] - 0.5 / 0.8) < 0.01
    assert torch.equal(draw(uniforms, 2)(rows, logits), logits)  # past its last step it draws nothing


@settings(max_examples=200, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(0, 2**31), max_size=6), min_size=1, max_size=8),
       draws=st.integers(1, 4), seed=st.integers(0, 2**64 - 1), steps=st.integers(1, 6))
def test_row_streams_are_keyed_by_the_row_not_by_its_batch(prompts, draws, seed, steps) -> None:
    """A row's key and uniform numbers depend on the seed, its prompt's tokens, the identical prompts before it and
    its draw number only: the same rows in another order or among other prompts get the same numbers, and rows
    differ from one another."""
    import numpy as np
    from flywheel_trainer.generation import row_streams, stream_uniforms

    keys = row_streams(prompts, draws, seed)
    assert keys.shape == (len(prompts), draws) and keys.dtype == np.uint64
    assert len(set(keys.reshape(-1).tolist())) == keys.size  # every row its own stream
    reordered = [*reversed(prompts), [7] * 7]
    back = row_streams(reordered, draws, seed)
    same: dict[tuple[int, ...], list[int]] = {}
    for index, prompt in enumerate(prompts):  # identical prompts count their occurrences in the order given
        same.setdefault(tuple(prompt), []).append(index)
    for indices in same.values():
        mirrored = [len(prompts) - 1 - i for i in reversed(indices)]
        assert np.array_equal(back[mirrored], keys[indices])
    table = stream_uniforms(keys.reshape(-1), steps)
    assert table.shape == (keys.size, steps) and ((table >= 0) & (table < 1)).all()
    assert np.array_equal(stream_uniforms(keys.reshape(-1)[::-1], steps + 2)[::-1, :steps], table)
    assert not np.array_equal(row_streams(prompts, draws, seed ^ 1), keys)


# --- The sampler seam: the `generate` backend against the hand-written loop it replaced (d32e63f), kept as the
# --- baseline in bench/sampler.py.


@pytest.fixture(scope="module")
def baseline():
    from tests.local.bench_modules import load_bench

    return load_bench("sampler").HandLoopSampler()


@pytest.fixture(scope="module")
def stopper(tokenizer):
    """A random tiny model biased towards EOS (about one step in ten), so rows stop at many different steps and
    the batch's finished rows leave the old loop's batch at different times."""
    import torch

    model = tiny_llama(tokenizer, seed=3)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 3.5
    model.lm_head = head
    return model.eval()


CHATS = [SHORT, LONG, [*LONG, {"role": "assistant", "content": "To the stars, cadet."}, *SHORT[1:]]]


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_generate_backend_matches_the_old_loop_greedily(parrot, stopper, tokenizer, baseline, batch_size) -> None:
    for model in (parrot, stopper, tiny_llama(tokenizer, seed=4)):
        kwargs = {"max_new_tokens": 16, "temperature": 0, "num_samples": 2, "batch_size": batch_size}
        ours = generate_tokens(model, tokenizer, CHATS * 3, sampler="generate", **kwargs)
        assert ours == generate_tokens(model, tokenizer, CHATS * 3, sampler=baseline, **kwargs)
    assert generate(parrot, tokenizer, [SHORT, LONG], max_new_tokens=24, temperature=0, sampler="generate") == [
        ["Ahoy!"], ["To the stars, cadet."]
    ]


def _occurrences(chats: list) -> list[tuple[str, int]]:
    """(chat, how many identical chats came before it) per chat: what names a row's random stream."""
    seen: dict[str, int] = {}
    keys = []
    for chat in chats:
        text = repr(chat)
        keys.append((text, seen.get(text, 0)))
        seen[text] = seen.get(text, 0) + 1
    return keys


POOL = [SHORT, LONG, CHATS[2], [*SHORT, {"role": "assistant", "content": "Ahoy!"}, *LONG[1:]],
        [{"role": "user", "content": "captain"}]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=9), data=st.data(),
       batch_size=st.integers(1, 20), num_samples=st.integers(1, 3), share=st.sampled_from([0.125, 0.25, 0.5, 2.0]),
       temperature=st.sampled_from([1.0, 0.7]), top_p=st.sampled_from([1.0, 0.8]), seed=st.integers(0, 3))
def test_a_seed_gives_each_chat_its_samples_whatever_the_batch(stopper, tokenizer, monkeypatch, picks, data,
                                                               batch_size, num_samples, share, temperature, top_p,
                                                               seed) -> None:
    """Each row draws from its own stream (seed, prompt, occurrence, draw): the samples of a chat are the same
    whatever the batch size, the order of the chats, the other chats in the call and when finished rows are
    shed (COMPACT_SHARE); sorting by length and compaction change the work, not the tokens."""
    from flywheel_trainer import generation

    chats = [POOL[i] for i in picks]
    order = data.draw(st.permutations(range(len(chats))))
    kwargs = {"max_new_tokens": 14, "temperature": temperature, "top_p": top_p, "num_samples": num_samples,
              "seed": seed}
    monkeypatch.setattr(generation, "COMPACT_SHARE", 2.0)
    alone = {}  # every chat sampled in a call of its own identical copies, one row per batch, nothing shed
    for text, count in {t: n + 1 for t, n in _occurrences(chats)}.items():
        chat = next(c for c in chats if repr(c) == text)
        for k, samples in enumerate(generate_tokens(stopper, tokenizer, [chat] * count, batch_size=1, **kwargs)):
            alone[(text, k)] = samples
    monkeypatch.setattr(generation, "COMPACT_SHARE", share)
    shuffled = [chats[i] for i in order]
    together = generate_tokens(stopper, tokenizer, shuffled, batch_size=batch_size, **kwargs)
    assert together == [alone[key] for key in _occurrences(shuffled)]


def test_finished_rows_are_shed_with_the_same_tokens(stopper, tokenizer, monkeypatch) -> None:
    """Compaction (COMPACT_SHARE) computes fewer rows per step, since rows that stopped leave the batch with
    their cache, and returns the tokens of keeping them (greedy and sampled); prompts are batched by length."""
    from flywheel_trainer import generation

    rows_computed: list[int] = []

    def count(module, args, kwargs):
        rows_computed.append(kwargs["input_ids"].shape[0])

    hook = stopper.register_forward_pre_hook(count, with_kwargs=True)
    try:
        results = {}
        for share in (0.25, 2.0):
            monkeypatch.setattr(generation, "COMPACT_SHARE", share)
            rows_computed.clear()
            results[share] = [generate_tokens(stopper, tokenizer, CHATS * 4, max_new_tokens=24, temperature=t,
                                              num_samples=3, batch_size=36, seed=9) for t in (0.0, 1.0)]
            results[share].append(sum(rows_computed))
    finally:
        hook.remove()
    assert results[0.25][:2] == results[2.0][:2]
    assert results[0.25][2] < 0.8 * results[2.0][2]
    lengths = {len(t) for samples in results[0.25][1] for t in samples}
    assert len(lengths) > 5  # rows stopped at many different steps


def test_the_checkpoints_generation_config_does_not_change_what_the_stage_settings_ask(stopper, tokenizer) -> None:
    """A checkpoint's generation_config (sampling on, top-k, a repetition penalty, a minimum length) changes
    nothing: the stage settings are the only source of sampling options; its EOS ids still stop."""
    import copy

    from transformers import GenerationConfig

    kwargs = {"max_new_tokens": 12, "temperature": 1.0, "num_samples": 2, "seed": 5}
    plain = generate_tokens(stopper, tokenizer, CHATS, **kwargs)
    greedy = generate_tokens(stopper, tokenizer, CHATS, max_new_tokens=12, temperature=0)
    opinionated = copy.deepcopy(stopper)
    opinionated.generation_config = GenerationConfig(
        do_sample=True, temperature=0.2, top_k=3, top_p=0.5, repetition_penalty=1.8, min_new_tokens=10,
        no_repeat_ngram_size=2, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    assert generate_tokens(opinionated, tokenizer, CHATS, **kwargs) == plain
    assert generate_tokens(opinionated, tokenizer, CHATS, max_new_tokens=12, temperature=0) == greedy


def test_unknown_sampler_names_the_backends(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"sampler must be one of generate; got 'vllm'"):
        generate(tiny_llama(tokenizer), tokenizer, [SHORT], max_new_tokens=4, temperature=1.0, sampler="vllm")
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        generate(tiny_llama(tokenizer), tokenizer, [SHORT], max_new_tokens=4, temperature=1.0, top_p=0.0)


def test_every_stage_setting_names_a_backend_the_trainer_has() -> None:
    """The API's `sampler` choices are exactly the trainer's backends, and a stage config naming another fails
    validation at its field."""
    from typing import get_args

    from flywheel_operator.api import models
    from flywheel_trainer.generation import SAMPLERS
    from pydantic import ValidationError

    assert set(get_args(models.SamplerBackend)) == set(SAMPLERS)
    settings = models.StageSettings()
    assert settings.sft.rejection_sampling.sampler == settings.rl.sampler == settings.eval.sampler == "generate"
    for wire in ({"sft": {"rejectionSampling": {"sampler": "vllm"}}}, {"rl": {"sampler": "vllm"}},
                 {"eval": {"sampler": "hand-loop"}}):
        with pytest.raises(ValidationError, match="sampler"):
            models.StageSettings.model_validate(wire)


def test_sampler_bench_compares_the_backends_on_the_same_prompts(stopper, tokenizer) -> None:
    """bench/sampler.py's measurement (bench/gpu.py reuses it): one row per backend and batch size, both baselines
    among them; the baselines share one random stream, the product's samples do not depend on the batch size, all
    agree greedily, and the product computes fewer row-steps and less padding than the 4990565 backend."""
    from tests.local.bench_modules import load_bench

    bench = load_bench("sampler")
    chats = [*CHATS, [{"role": "user", "content": "captain"}]] * 3
    rows = bench.compare(stopper, tokenizer, chats, batch_sizes=(1, 4), max_new_tokens=16, repeats=1)
    assert {(r["backend"], r["batch_size"]) for r in rows} == {
        (b, n) for b in ("generate", "generate@4990565", "hand-loop") for n in (1, 4)
    }
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["greedy_equal"] and r["deterministic"] for r in rows)
    assert all(r["same_as_base"] for r in rows if r["backend"] != "generate")
    assert all(r["batch_invariant"] for r in rows if r["backend"] == "generate")
    by = {(r["backend"], r["batch_size"]): r for r in rows}
    ours, old = by[("generate", 4)], by[("generate@4990565", 4)]
    assert ours["row_steps"] < old["row_steps"] and ours["padding_share"] < old["padding_share"]
    assert 0 < ours["useful_share"] <= 1 and by[("generate", 1)]["padding_share"] == 0


def test_each_distinct_chat_is_tokenised_once_with_the_same_samples(parrot, tokenizer, monkeypatch) -> None:
    """The oracle repeats its grid per draw and a day's sessions share their openings: on the rendered path (any
    tokenizer but the local one) the distinct chats are rendered in one batched call, and the samples are those
    of rendering every chat on its own."""
    from flywheel_trainer import generation

    monkeypatch.setattr(generation._Concatenation, "of", staticmethod(lambda tokenizer: None))

    chats = [SHORT, LONG, SHORT, [dict(m) for m in SHORT], LONG,
             [{"role": "user", "content": "hi", "signals": {"thumb": None}}]]  # unhashable: rendered on its own
    calls: list[int] = []
    real = type(tokenizer).apply_chat_template

    def counting(self, conversation, **kwargs):
        calls.append(len(conversation) if isinstance(conversation[0], list) else 1)
        return real(self, conversation, **kwargs)

    monkeypatch.setattr(type(tokenizer), "apply_chat_template", counting)
    kwargs = {"max_new_tokens": 6, "temperature": 1.0, "num_samples": 2, "seed": 5, "batch_size": 4}
    shared = generate_tokens(parrot, tokenizer, chats, **kwargs)
    assert calls == [3]  # one call, three distinct chats
    monkeypatch.setattr(generation, "prompt_ids_many",
                        lambda tok, cs, max_tokens=None: [prompt_ids(tok, c, max_tokens=max_tokens) for c in cs])
    assert generate_tokens(parrot, tokenizer, chats, **kwargs) == shared


WORDS = ["hi", "captain", "stars", "<|user|>", "</s>", "fly", "tonight", "🙂", "  ", "Nova,", "where?"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chats=st.lists(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]),
                                         st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join)),
                               min_size=1, max_size=5), min_size=1, max_size=12),
       max_tokens=st.one_of(st.none(), st.integers(1, 40)), repeat=st.integers(1, 3))
def test_batched_prompt_ids_are_the_ids_of_one_call_per_chat(tokenizer, chats, max_tokens, repeat) -> None:
    from flywheel_trainer.generation import prompt_ids_many

    conversations = [[{"role": role, "content": text} for role, text in chat] for chat in chats] * repeat
    assert prompt_ids_many(tokenizer, conversations, max_tokens=max_tokens) == [
        prompt_ids(tokenizer, chat, max_tokens=max_tokens) for chat in conversations]


@pytest.mark.parametrize(("batch_size", "num_samples", "temperature"), [(1, 1, 1.0), (4, 2, 1.0), (16, 3, 0.7),
                                                                       (8, 1, 0.0)])
def test_the_growing_cache_samples_the_tokens_of_generates_own_cache(tokenizer, monkeypatch, batch_size,
                                                                      num_samples, temperature) -> None:
    """growing_cache writes each step's keys and values in place instead of concatenating the whole cache: the
    same values in the same shapes, so the same tokens for a seed (prompts of many lengths, left padded)."""
    from flywheel_trainer import generation

    model = tiny_llama(tokenizer, seed=3)
    words = ["hi", "captain", "where shall we fly", "to the stars", "cadet", "tonight"]
    chats = [[{"role": "system", "content": "You are Nova."},
              {"role": "user", "content": " ".join(words[(i + j) % len(words)] for j in range(1 + i % 9))}]
             for i in range(24)]
    kwargs = {"max_new_tokens": 20, "temperature": temperature, "num_samples": num_samples, "seed": 11,
              "batch_size": batch_size}
    grown = generate_tokens(model, tokenizer, chats, **kwargs)
    monkeypatch.setattr(generation, "GROWING_CACHE", False)
    assert generate_tokens(model, tokenizer, chats, **kwargs) == grown
    assert sum(len(s) for row in grown for s in row) > 24 * num_samples  # it sampled, not stopped at once


def test_the_growing_cache_is_kept_to_layers_it_can_stand_in_for(tokenizer) -> None:
    from flywheel_trainer.generation import growing_cache

    model = tiny_llama(tokenizer, seed=3)
    cache = growing_cache(model, 8)
    assert cache is not None and len(cache.layers) == model.config.num_hidden_layers
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    model.config.sliding_window = 4
    assert growing_cache(model, 8) is None
