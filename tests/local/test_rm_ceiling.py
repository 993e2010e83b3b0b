"""bench/rm_ceiling.py's baselines: Bradley–Terry regressions on the oracle's features and on the trainer's rules."""

from __future__ import annotations

import numpy as np
from flywheel_sim import load_world, response_utility
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.local.bench_modules import ROOT, load_bench


@given(st.integers(0, 10_000), st.floats(0.0, 0.3))
@settings(max_examples=20)
def test_the_regression_orders_pairs_as_the_labels_true_weights_do(seed: int, flip: float) -> None:
    """Labels drawn from known weights, a share of them flipped at random: the fitted weights still order
    fresh pairs as the true ones do (noise in the labels is what a regression averages away)."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, 6)
    differences = rng.normal(0, 1, (3000, 6))
    chosen_first = (differences @ truth > 0) ^ (rng.uniform(0, 1, len(differences)) < flip)
    oriented = np.where(chosen_first[:, None], differences, -differences)
    weights = load_bench("rm_ceiling").fit_preferences(oriented)
    fresh = rng.normal(0, 1, (2000, 6))
    assert np.mean(np.sign(fresh @ weights) == np.sign(fresh @ truth)) > 0.9


def test_the_features_read_what_the_oracle_utility_reads() -> None:
    """Two answers of the default world that differ only in asking back: the feature difference is in the
    question column alone, and the oracle's utility prefers the question exactly when its weight says so."""
    bench = load_bench("rm_ceiling")
    world = load_world(ROOT / "examples" / "local" / "world.yaml")
    topic = world.characters[0].topics[0]
    plain, asking = f"i like {topic} a lot.", f"i like {topic} a lot?"
    difference = bench.feature_vector(world, 0, topic, asking) - bench.feature_vector(world, 0, topic, plain)
    assert difference[0] == 1.0 and not difference[1:].any()
    utility = response_utility(world, 0, topic, [asking, plain])
    assert utility[0] > utility[1]


def test_the_trainer_rules_read_the_response_and_its_characters_instructions() -> None:
    """The rules see asking back, instruction following (against the logged character's own instructions),
    emojis, length and refusals, each in its own column; a character without instructions follows them all."""
    bench = load_bench("rm_ceiling")
    world = load_world(ROOT / "examples" / "local" / "world.yaml")
    rex = bench.character_spec(world, 0)  # max 20 words, must say "matey"
    assert rex["name"] == "Captain Rex" and {"kind": "include_word", "value": "matey"} in rex["instructions"]
    plain, asking = "ahoy matey, the sea is calm.", "ahoy matey, the sea is calm?"
    assert list(bench.rule_vector(rex, asking) - bench.rule_vector(rex, plain)) == [1, 0, 0, 0, 0, 0]
    breaking = "ahoy friend, the sea is calm."
    assert list(bench.rule_vector(rex, plain) - bench.rule_vector(rex, breaking)) == [0, 1, 0, 0, 0, 0]
    assert bench.rule_vector({"name": "Rex", "instructions": []}, breaking)[1] == 1
    long = plain + " " + " ".join(["waves"] * 20)
    difference = bench.rule_vector(rex, long) - bench.rule_vector(rex, plain)
    assert difference[1] == -1 and difference[3] == 2.0 and difference[4] > 0  # too long for Rex's 20 words
    assert bench.rule_vector(rex, "ahoy matey ⚓🌊")[2] == 2
    assert len(bench.TRAINER_RULES) == len(bench.rule_vector(rex, plain))
