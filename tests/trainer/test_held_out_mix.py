"""The reward stage's held-out weighting (issue 26): a small held-out set must not undo what the training data
taught. The held-out side is 10 % of the prompts: in a generated world about 12, each with up to
`maxPairsPerContext` correlated pairs, so its verdict on a part can sit at or below chance for a part that is fine
(bench/rm_seeds.py). Parts fitted on the training data (the lexical head, the rule features) keep their weights;
only the transformer's weight, whose training-set scores are overconfident, is fitted on the held-out data, and
never below 0."""

from __future__ import annotations

import numpy as np
from flywheel_trainer.lexical import fit_mix, fit_on_top
from flywheel_trainer.reward import fit_rules, mix_pair_margins, mix_signal_logits
from flywheel_trainer.rules import fit_bradley_terry, pair_differences
from hypothesis import given, settings
from hypothesis import strategies as st

SPEC = {"name": "Baker Greta", "instructions": []}
PROMPT = [{"role": "system", "content": "You are Baker Greta."}, {"role": "user", "content": "hello"}]


def _pair(chosen: str, rejected: str) -> dict:
    return {"prompt": PROMPT, "character": SPEC, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


@given(st.integers(0, 10_000), st.floats(0.5, 3.0))
@settings(max_examples=25, deadline=None)
def test_a_held_out_set_against_both_parts_keeps_the_lexical_head(seed: int, strength: float) -> None:
    """Held-out margins on which the model and the head both order the pairs worse than chance (an unlucky dozen
    prompts): the text score stays the head's, not a constant that orders nothing."""
    rng = np.random.default_rng(seed)
    lexical = -strength * np.abs(rng.normal(0, 1, 300)) + rng.normal(0, 0.3, 300)  # mostly against the labels
    model = -np.abs(rng.normal(0, 1, 300))
    weights, crossed = mix_pair_margins(model, lexical, seed)
    assert weights[1] == 1.0 and weights[0] == 0.0
    assert np.ptp(np.column_stack([model, lexical]) @ weights) > 0  # not a constant score
    np.testing.assert_allclose(crossed, lexical)  # each half: the head, the model at 0


@given(st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_the_model_is_weighed_on_top_where_the_held_out_pairs_favour_it(seed: int) -> None:
    """Where the model's held-out margins order the pairs and the head's are noise, the model gets a clearly
    positive weight: the held-out data still decide how much the transformer adds."""
    rng = np.random.default_rng(seed)
    model = np.abs(rng.normal(1.0, 0.5, 400))
    lexical = rng.normal(0, 0.2, 400)
    weights, _ = mix_pair_margins(model, lexical, seed)
    assert weights[0] > 0.5 and weights[1] == 1.0


def test_a_user_signal_mix_keeps_the_head_and_fits_its_own_bias() -> None:
    """Labels the head's logits point the wrong way on: the head stays at 1, the model at 0, and the bias absorbs
    the base rate (a bias cannot reorder responses)."""
    rng = np.random.default_rng(3)
    labels = (rng.uniform(0, 1, 500) < 0.7).astype(float)
    lexical = np.where(labels == 1, -0.5, 0.5) + rng.normal(0, 1, 500)
    model = np.where(labels == 1, -0.2, 0.2) + rng.normal(0, 1, 500)
    (w_model, w_lexical, bias), crossed = mix_signal_logits(model, lexical, labels, 0)
    assert (w_model, w_lexical) == (0.0, 1.0)
    assert bias > 0  # 70 % positives, the head's logits lean negative on them
    assert len(np.unique(np.round(crossed - lexical, 9))) <= 2  # each half: the head plus that half's bias


def test_fit_mix_and_fit_on_top_agree() -> None:
    """fit_mix is fit_on_top with the head as the offset."""
    rng = np.random.default_rng(5)
    columns = rng.normal(0.3, 1, (200, 2))
    weights, _ = fit_mix(columns)
    assert weights[1] == 1.0
    assert weights[0] == fit_on_top(columns[:, 0], columns[:, 1])[0] > 0


def test_held_out_pairs_cannot_shrink_or_reverse_the_rules() -> None:
    """Training pairs say users prefer being asked back; a held-out dozen says the opposite. The rules keep the
    weights the training pairs gave them (fixed functions fitted on ten times the pairs): before, the held-out fit
    rescaled them to about 0 and reversed them, a reward against asking back."""
    asks, tells = "do you like bread?", "bread is good."
    train = [_pair(asks, tells)] * 240 + [_pair(tells, asks)] * 60
    held_out = [_pair(tells, asks)] * 20 + [_pair(asks, tells)] * 10
    expected = fit_bradley_terry(pair_differences(["asks-back"], train))
    held_text = np.random.default_rng(0).normal(0, 1, len(held_out))
    rules, combined = fit_rules(["asks-back"], train, held_out, held_text, seed=0)
    assert expected[0] > 1.0
    np.testing.assert_allclose(rules["weights"], expected)
    assert rules["text_weight"] >= 0.0
    added = combined - pair_differences(["asks-back"], held_out) @ expected  # per half: text weight × text score
    assert np.all(added / held_text >= -1e-12)
