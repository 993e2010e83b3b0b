"""flywheel_trainer.rules: the rule features a pointwise reward model carries next to its text score."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from flywheel_operator.api import RewardModelSettings
from flywheel_operator.api.models import RuleFeature
from flywheel_operator.crd import CEL_RULES
from flywheel_trainer.rules import RULES, columns, fit_bradley_terry, rule_matrix
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

REX = {
    "name": "Captain Rex",
    "instructions": [{"kind": "max_words", "value": 20}, {"kind": "include_word", "value": "matey"}],
}


@given(st.integers(0, 10_000), st.floats(0.0, 0.3))
@settings(max_examples=20, deadline=None)
def test_the_fit_orders_pairs_as_the_labels_true_weights_do(seed: int, flip: float) -> None:
    """Labels drawn from known weights, a share of them flipped at random: the fitted weights still order fresh
    pairs as the true ones do (noise in the labels is what a regression averages away)."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, 6)
    differences = rng.normal(0, 1, (3000, 6))
    chosen_first = (differences @ truth > 0) ^ (rng.uniform(0, 1, len(differences)) < flip)
    oriented = np.where(chosen_first[:, None], differences, -differences)
    weights = fit_bradley_terry(oriented)
    fresh = rng.normal(0, 1, (2000, 6))
    assert np.mean(np.sign(fresh @ weights) == np.sign(fresh @ truth)) > 0.9


def test_a_column_that_never_varies_gets_no_weight() -> None:
    """Curation drops every pair that differs in emojis: the emoji column is all zeros and must stay at 0."""
    rng = np.random.default_rng(0)
    differences = np.column_stack([rng.normal(0, 1, 500), np.zeros(500)])
    assert fit_bradley_terry(differences)[1] == 0.0


def test_each_rule_reads_its_own_column_against_the_rows_character() -> None:
    every = list(RULES)
    assert columns(every) == ["asks_back", "follows_instructions", "emojis", "words_10", "words_10_squared", "refusal"]
    plain, asking, breaking = "ahoy matey, the sea is calm.", "ahoy matey, the sea is calm?", "ahoy, the sea is calm."
    values = rule_matrix(every, [REX] * 3, [plain, asking, breaking])
    assert list(values[1] - values[0]) == [1, 0, 0, 0, 0, 0]
    assert list(values[0] - values[2]) == pytest.approx([0, 1, 0, 0.1, 0.11, 0])
    assert rule_matrix(["follows-instructions"], [{"name": "Rex", "instructions": []}], [breaking])[0, 0] == 1.0
    long = plain + " " + " ".join(["waves"] * 20)  # over Rex's 20 words
    assert list(rule_matrix(["follows-instructions", "length"], [REX], [long])[0]) == pytest.approx([0, 2.6, 6.76])
    assert rule_matrix(["emojis"], [REX], ["ahoy matey ⚓🌊"])[0, 0] == 2
    assert rule_matrix(["refusal"], [REX], ["I'm sorry, but I can't help with that."])[0, 0] == 1
    assert rule_matrix(["asks-back"], [], []).shape == (0, 1)
    with pytest.raises(ValueError, match="unknown rule feature 'tone'"):
        rule_matrix(["tone"], [REX], [plain])


def test_the_api_offers_exactly_the_trainers_rules_on_pointwise_models_only() -> None:
    assert set(get_args(RuleFeature)) == set(RULES)
    model = RewardModelSettings.model_validate({"name": "pw", "kind": "pointwise", "ruleFeatures": ["length"]})
    assert model.rule_features == ["length"]
    assert RewardModelSettings.model_validate({"name": "pw", "kind": "pointwise"}).rule_features == []
    with pytest.raises(ValidationError, match="ruleFeatures` applies only to pointwise"):
        RewardModelSettings.model_validate({"name": "pp", "kind": "pairwise", "ruleFeatures": ["length"]})
    with pytest.raises(ValidationError, match="twice"):
        RewardModelSettings.model_validate({"name": "pw", "kind": "pointwise", "ruleFeatures": ["length", "length"]})
    with pytest.raises(ValidationError, match="ruleFeatures"):
        RewardModelSettings.model_validate({"name": "pw", "kind": "pointwise", "ruleFeatures": ["tone"]})


@given(
    st.sampled_from(["pointwise", "pairwise", "user-signal"]),
    st.lists(st.sampled_from(sorted(RULES)), max_size=6),
)
@settings(max_examples=60, deadline=None)
def test_the_crds_rules_refuse_exactly_what_the_api_refuses(kind: str, features: list[str]) -> None:
    """`kubectl apply` (the CRD's CEL rules, run by cel-python) and `flywheel validate` (pydantic) agree on
    ruleFeatures: pointwise models only, each feature once."""
    import celpy

    model = {"name": "rm", "kind": kind, "ruleFeatures": features}
    if kind == "user-signal":
        model["signal"] = "continue"
    environment = celpy.Environment()
    admitted = all(
        bool(environment.program(environment.compile(r["rule"])).evaluate({"self": celpy.json_to_cel(model)}))
        for r in CEL_RULES["RewardModelSettings"]
    )
    try:
        RewardModelSettings.model_validate(model)
        valid = True
    except ValidationError:
        valid = False
    assert admitted == valid
