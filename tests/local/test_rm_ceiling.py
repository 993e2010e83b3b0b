"""bench/rm_ceiling.py's baseline: a Bradley–Terry regression on the oracle's own features."""

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
