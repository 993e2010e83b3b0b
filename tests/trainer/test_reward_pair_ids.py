"""The pointwise reward stage hands the ids its length check tokenized to the trainer: they are the ids that
tokenizing the fitted pairs as TRL's RewardTrainer does gives (pair_token_ids), pair for pair."""

from __future__ import annotations

import functools
from typing import Any

from flywheel_trainer.reward import fit_pairs, fit_pairs_tokenized, pair_token_ids
from hypothesis import given, settings
from hypothesis import strategies as st


@functools.cache
def tokenizer() -> Any:
    from flywheel_trainer.tinymodel import train_tokenizer

    return train_tokenizer(["hello there, how are you today?", "tell me about the sea <s> and the ship"] * 4, 300)


WORDS = st.text(alphabet=st.sampled_from("ab e\n<s>/!\u00e9\U0001f600"), max_size=40)
MESSAGE = st.builds(
    lambda role, content: {"role": role, "content": content}, st.sampled_from(["user", "assistant"]), WORDS
)
SIDE = st.builds(lambda content: [{"role": "assistant", "content": content}], WORDS) | st.builds(
    lambda content, extra: [{"role": "assistant", "content": content, **extra}],
    WORDS,
    st.fixed_dictionaries({}, optional={"rejected": st.lists(WORDS, max_size=2), "name": WORDS}),
)
"""Mostly plain assistant messages, as curation writes them; some with more keys than the content."""
PAIR = st.builds(
    lambda system, turns, chosen, rejected: {
        "prompt": [{"role": "system", "content": system}, *turns],
        "chosen": chosen,
        "rejected": rejected,
    },
    WORDS,
    st.lists(MESSAGE, min_size=1, max_size=4),
    SIDE,
    SIDE,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(PAIR, max_size=6), st.integers(8, 120))
def test_the_length_checks_ids_are_the_trainers(rows: list[dict], max_length: int) -> None:
    fitted, trimmed, dropped, ids = fit_pairs_tokenized(rows, tokenizer(), max_length)
    assert (fitted, trimmed, dropped) == fit_pairs(rows, tokenizer(), max_length)
    assert ids == pair_token_ids(tokenizer(), fitted)
