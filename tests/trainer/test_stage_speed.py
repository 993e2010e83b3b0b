"""Issue 29: the stage programs' shortcuts give the same results as the plain code they replace."""

from __future__ import annotations

import functools
import gc
from typing import Any

from flywheel_trainer import style
from flywheel_trainer.cli import frozen_imports
from flywheel_trainer.reward import fit_pairs, fit_pairs_tokenized, pair_token_ids
from flywheel_trainer.scoring import fit_context
from hypothesis import given, settings
from hypothesis import strategies as st

EMOJI_PARTS = (
    "a1#*? \n\u00a9\u2122\u2194\u2600\u2764\u263a\u2714\ufe0f\u20e3\u200d\U0001f44d\U0001f3fd\U0001f1eb\U0001f1f7"
)
"""ASCII, text-default symbols, variation selector, keycap, ZWJ, emoji, skin tone, regional indicators."""


def emoji_count_every_grapheme(text: str) -> int:
    """emoji_count as it was: the three emoji searches on every grapheme."""
    return sum(1 for grapheme in style._GRAPHEME.findall(text) if style._is_emoji(grapheme))


@given(st.text(alphabet=st.sampled_from(EMOJI_PARTS), max_size=30) | st.text(max_size=30))
def test_emoji_count_skipping_ascii_counts_what_every_grapheme_counts(text: str) -> None:
    assert style.emoji_count(text) == emoji_count_every_grapheme(text)


def test_the_stage_runs_with_the_imports_frozen_and_leaves_them_as_it_found_them() -> None:
    gc.unfreeze()
    with frozen_imports():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a caller's own freeze (flywheel_operator.kube.run) is not undone
    try:
        with frozen_imports():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@functools.cache
def tokenizer() -> Any:
    from flywheel_trainer.tinymodel import train_tokenizer

    return train_tokenizer(["hello there, how are you today?", "tell me about the sea <s> and the ship"] * 4, 300)


WORDS = st.text(alphabet=st.sampled_from("ab e\n<s>/!\u00e9\U0001f600"), max_size=40)
MESSAGE = st.builds(
    lambda role, content: {"role": role, "content": content}, st.sampled_from(["user", "assistant"]), WORDS
)
PAIR = st.builds(
    lambda system, turns, chosen, rejected: {
        "prompt": [{"role": "system", "content": system}, *turns],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    },
    WORDS,
    st.lists(MESSAGE, min_size=1, max_size=4),
    WORDS,
    WORDS,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(PAIR, max_size=5))
def test_pairs_tokenized_up_front_are_what_the_reward_trainer_would_tokenize(rows: list[dict]) -> None:
    from trl.data_utils import _tokenize

    ids = pair_token_ids(tokenizer(), rows)
    for side in ("chosen", "rejected"):
        assert ids[f"{side}_ids"] == [_tokenize(tokenizer(), r["prompt"] + r[side])["input_ids"] for r in rows]


@settings(max_examples=40, deadline=None)
@given(st.lists(PAIR, max_size=5), st.integers(8, 120))
def test_fit_pairs_keeps_what_fitting_every_pair_alone_keeps(rows: list[dict], max_length: int) -> None:
    alone = [
        fit_context(tokenizer(), r["prompt"], [r["chosen"][0]["content"], r["rejected"][0]["content"]], max_length)
        for r in rows
    ]
    fitted, trimmed, dropped = fit_pairs(rows, tokenizer(), max_length)
    assert [f["prompt"] for f in fitted] == [chat for chat in alone if chat is not None]
    assert dropped == sum(chat is None for chat in alone)
    assert trimmed == sum(
        chat is not None and len(chat) < len(r["prompt"]) for chat, r in zip(alone, rows, strict=True)
    )


SIDE = st.builds(lambda content: [{"role": "assistant", "content": content}], WORDS) | st.builds(
    lambda content, extra: [{"role": "assistant", "content": content, **extra}],
    WORDS,
    st.fixed_dictionaries({}, optional={"rejected": st.lists(WORDS, max_size=2), "name": WORDS}),
)
"""Mostly plain assistant messages, as curation writes them; some with more keys than the content."""
PAIR_ANY_SIDES = st.builds(
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
@given(st.lists(PAIR_ANY_SIDES, max_size=6), st.integers(8, 120))
def test_the_length_checks_ids_are_the_trainers(rows: list[dict], max_length: int) -> None:
    """The pointwise reward stage hands the ids its length check tokenized to the trainer: they are the ids that
    tokenizing the fitted pairs as TRL's RewardTrainer does gives (pair_token_ids), pair for pair."""
    fitted, trimmed, dropped, ids = fit_pairs_tokenized(rows, tokenizer(), max_length)
    assert (fitted, trimmed, dropped) == fit_pairs(rows, tokenizer(), max_length)
    assert ids == pair_token_ids(tokenizer(), fitted)

TEXT = st.text(max_size=12) | st.integers(0, 2) | st.none() | st.booleans()
MESSAGES = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "robot"]), "content": TEXT},
    optional={
        "rejected": st.none() | st.lists(TEXT, max_size=3) | st.just("x"),
        "signals": st.none() | st.fixed_dictionaries({}, optional={"continued": st.booleans() | st.none() | TEXT}),
        "flagged": st.none() | st.booleans() | TEXT,
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(MESSAGES, min_size=1, max_size=12))
def test_messages_checked_once_per_shape_get_the_contracts_verdict(messages: list[dict]) -> None:
    """One ContractCheck over many messages (its memo shared): each verdict is the schema's on the message itself."""
    from flywheel_trainer.conversation import _SPLIT, ContractCheck, _without_text

    assert _SPLIT is not None
    check, validator = ContractCheck(), _SPLIT[2]
    for message in messages:
        assert check._once(validator, _without_text(message)) == validator.is_valid(message)
