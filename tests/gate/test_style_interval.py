"""The offline gate's style-drift interval stays in the possible range (issue 28 point 4): a style statistic cannot
go below 0, so a relative drift is never below −100 %; the interval is MOVER-R's for the ratio of paired means
(Wilson limits for shares of responses), and it covers the true drift about 95 % of the time."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flywheel_operator.gate.offline import STYLE_FLOORS, _style_drift, ratio_interval
from hypothesis import given, settings
from hypothesis import strategies as st


def paired(candidate: np.ndarray, parent: np.ndarray) -> dict:
    """What the eval stage reports for one statistic (flywheel_trainer.style: means, sds, sd of differences)."""
    return {
        "candidate": float(candidate.mean()), "parent": float(parent.mean()), "n": len(candidate),
        "difference_sd": float(np.std(candidate - parent, ddof=1)),
        "candidate_sd": float(np.std(candidate, ddof=1)), "parent_sd": float(np.std(parent, ddof=1)),
    }


def drift_check(field: str, data: dict, limit: float = 1.0):
    return _style_drift(field, data["candidate"], data["parent"], limit, data["difference_sd"], data["n"],
                        data["candidate_sd"], data["parent_sd"])


def sample(field: str, rng: np.random.Generator, n: int, parent_mean: float, candidate_mean: float):
    if field in ("list_rate", "stock_phrase_rate"):
        base = rng.random(n)
        return (base < candidate_mean).astype(float), (base < parent_mean).astype(float)  # correlated shares
    if field == "emoji_rate":
        shared = rng.poisson(min(parent_mean, candidate_mean), n)
        return (shared + rng.poisson(max(0.0, candidate_mean - parent_mean), n)).astype(float), \
            (shared + rng.poisson(max(0.0, parent_mean - candidate_mean), n)).astype(float)
    shared = rng.normal(0, 5, n)
    return np.maximum(0, candidate_mean + shared + rng.normal(0, 3, n)), np.maximum(0, parent_mean + shared)


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(sorted(STYLE_FLOORS)),
    n=st.integers(2, 400),
    parent_mean=st.floats(0.0, 1.0),
    candidate_mean=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_interval_stays_possible_and_holds_the_estimate(field, n, parent_mean, candidate_mean, seed):
    scale_up = 20.0 if field == "mean_length" else 1.0
    candidate, parent = sample(field, np.random.default_rng(seed), n, parent_mean * scale_up, candidate_mean * scale_up)
    data = paired(candidate, parent)
    check = drift_check(field, data)
    lower, upper = check.interval
    scale = max(data["parent"], STYLE_FLOORS[field])
    assert math.isfinite(lower) and math.isfinite(upper)
    assert lower >= -data["parent"] / scale - 1e-9 >= -1 - 1e-9  # never below what a candidate at 0 gives
    assert lower - 1e-9 <= check.value <= upper + 1e-9


def test_the_issue_28_case_no_longer_reads_below_minus_100_percent():
    # 20 responses, emojis per response 0.30 -> 0.05 with noisy pairs: the normal approximation gave [-300 %, ...]
    rng = np.random.default_rng(7)
    parent = rng.poisson(0.3, 20).astype(float)
    candidate = (rng.random(20) < 0.05).astype(float)
    data = paired(candidate, parent)
    old_lower = (data["candidate"] - data["parent"]) / max(data["parent"], 0.1) - 1.96 * data["difference_sd"] / \
        math.sqrt(20) / max(data["parent"], 0.1)
    assert old_lower < -1
    assert drift_check("emoji_rate", data).interval[0] >= -1


@pytest.mark.parametrize("field", ["list_rate", "emoji_rate"])
def test_the_interval_covers_the_true_drift_about_95_percent_of_the_time(field):
    rng = np.random.default_rng(0)
    parent_mean, candidate_mean, n, trials = 0.3, 0.45, 150, 400
    true_drift = (candidate_mean - parent_mean) / parent_mean
    covered = 0
    for _ in range(trials):
        data = paired(*sample(field, rng, n, parent_mean, candidate_mean))
        # the interval is for the ratio: compare on the ratio scale (scale = the observed parent, above the floor)
        lower, upper = drift_check(field, data).interval
        low_ratio, high_ratio = 1 + lower * max(data["parent"], 0.1) / data["parent"], \
            1 + upper * max(data["parent"], 0.1) / data["parent"]
        covered += low_ratio <= 1 + true_drift <= high_ratio
    assert 0.90 <= covered / trials <= 0.99


def test_ratio_interval_matches_the_independent_mover_r_formula():
    # Donner & Zou's closed form with no correlation (Wilson limits of 30/100 and 20/100)
    from flywheel_operator.gate.offline import wilson_interval

    own, base = wilson_interval(0.3, 100), wilson_interval(0.2, 100)
    lower, upper = ratio_interval(0.3, 0.2, own, base, 0.0)
    (l1, u1), (l2, u2) = own, base
    expected_lower = (0.06 - math.sqrt(0.06**2 - l1 * u2 * (0.6 - l1) * (0.4 - u2))) / (u2 * (0.4 - u2))
    expected_upper = (0.06 + math.sqrt(0.06**2 - u1 * l2 * (0.6 - u1) * (0.4 - l2))) / (l2 * (0.4 - l2))
    assert lower == pytest.approx(expected_lower) and upper == pytest.approx(expected_upper)
    assert 0 < lower < 1.5 < upper


def test_checks_whose_limit_lets_everything_pass_are_marked_disabled():
    from flywheel_operator.api import OfflineGateSpec
    from flywheel_operator.gate import evaluate_offline

    from tests.gate.arms import NOW
    from tests.gate.test_offline import metrics

    spec = OfflineGateSpec(min_instruction_following=0.0, max_violation_rate=1.0, max_false_refusal_rate=1.0,
                           max_win_rate_divergence=1.0, win_rate_band={"min": 0.0, "max": 1.0})
    result = evaluate_offline(spec, metrics(), now=NOW)
    limits = {check.name: check.limit for check in result.checks}
    assert all(limits[name] == "disabled" for name in ("win-rate-band", "win-rate-divergence", "instruction-following",
                                                      "violation-rate", "false-refusal-rate"))
    assert all(limits[name] != "disabled" for name in limits if name.startswith("style-drift."))
    default = evaluate_offline(OfflineGateSpec(), metrics(), now=NOW)
    assert {c.name for c in default.checks if c.limit == "disabled"} == {"instruction-following", "violation-rate"}


@given(st.integers(1, 500), st.integers(1, 500), st.data())
def test_the_divergence_interval_stays_in_0_1_and_holds_the_gap(n1, n2, data):
    from flywheel_operator.gate.offline import absolute_difference_interval

    k1, k2 = data.draw(st.integers(0, n1)), data.draw(st.integers(0, n2))
    lower, upper = absolute_difference_interval(k1 / n1, n1, k2 / n2, n2)
    assert 0 <= lower <= abs(k1 / n1 - k2 / n2) + 1e-12 <= upper + 2e-12 <= 1 + 2e-12


def test_the_tiny_runs_divergence_no_longer_reads_above_1():
    # issue 28's tiny run: user win rate 0.375 on 8 prompts, internal 0.0 on 1 prompt; the normal approximation
    # gave [0.000, 2.363]
    from flywheel_operator.gate.offline import absolute_difference_interval

    lower, upper = absolute_difference_interval(0.375, 8, 0.0, 1)
    assert lower == 0.0 and upper <= 1.0
