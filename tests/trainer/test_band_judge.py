"""Issue 26: the eval stage's paired statistic behind the band's upper edge (the optimised pointwise RM's
learned-score wins against the pairwise RM's, prompt by prompt), and that the gate's paired interval built from
it holds its 95 % and flags a gap at the margin no more than about 5 % of the time."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from flywheel_operator.api import OfflineGateSpec, OfflineMetrics, StyleStats
from flywheel_operator.gate import evaluate_offline
from flywheel_operator.gate.offline import paired_difference_interval
from flywheel_trainer.evaluate import judge_statistics, win_rate, wins
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STYLE = StyleStats(emoji_rate=0.2, list_rate=0.0, mean_length=12.0, stock_phrase_rate=0.0)
SCORES = st.integers(1, 60).flatmap(
    lambda n: st.tuples(*(arrays(np.float64, n, elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0])) for _ in range(2)),
                        arrays(np.float64, n, elements=st.sampled_from([0.1, 0.5, 0.5, 0.9])))
)


@given(SCORES)
def test_the_statistic_is_a_correlation_of_the_two_win_rates_terms_and_counts_the_judges_ties(scores) -> None:
    candidate, parent, p_better = scores
    stats = judge_statistics(candidate, parent, p_better)
    assert -1.0 <= stats["pairwise_win_correlation"] <= 1.0
    assert stats["pairwise_ties"] == int(np.sum(p_better == 0.5))
    assert np.mean(wins(candidate, parent)) == win_rate(candidate, parent)
    ours, judge = wins(candidate, parent), wins(p_better, np.full(len(p_better), 0.5))
    if ours.std() == 0 or judge.std() == 0:
        assert stats["pairwise_win_correlation"] == 0.0  # no covariance: the unpaired interval, never NaN
    else:
        assert stats["pairwise_win_correlation"] == pytest.approx(np.corrcoef(ours, judge)[0, 1])


def test_two_models_with_the_same_verdicts_correlate_fully_and_opposite_ones_negatively() -> None:
    candidate = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    parent = np.zeros(5) + 0.5
    same = np.where(candidate > 0.5, 0.8, 0.2)
    assert judge_statistics(candidate, parent, same)["pairwise_win_correlation"] == pytest.approx(1.0)
    assert judge_statistics(candidate, parent, 1 - same)["pairwise_win_correlation"] == pytest.approx(-1.0)
    assert judge_statistics(candidate, parent, np.full(5, 0.5)) == {"pairwise_win_correlation": 0.0,
                                                                    "pairwise_ties": 5}


def _draw(rng: np.random.Generator, n: int, p_ours: float, p_judge: float, shared: float):
    """n prompts: the optimised RM wins with probability p_ours, the judge with p_judge; on a share `shared` of
    the prompts both read the same draw (they see the same responses), elsewhere independent ones."""
    u = rng.random(n)
    w = np.where(rng.random(n) < shared, u, rng.random(n))
    learned_candidate = (u < p_ours).astype(float)
    p_better = np.where(w < p_judge, 0.8, 0.2)
    return learned_candidate, np.full(n, 0.5), p_better


def _band(candidate: np.ndarray, parent: np.ndarray, p_better: np.ndarray) -> tuple[bool, tuple[float, float]]:
    stats = judge_statistics(candidate, parent, p_better)
    ours, judge, n = win_rate(candidate, parent), win_rate(p_better, np.full(len(p_better), 0.5)), len(candidate)
    metrics = OfflineMetrics(  # the whole reward clearly better: only the upper edge (gaming) can stop it
        win_rate_user=ours, reward_win_rate_user=0.9, pairwise_win_rate_user=judge, win_rate_user_n=n,
        pairwise_win_correlation_user=stats["pairwise_win_correlation"], pairwise_ties_user=stats["pairwise_ties"],
        instruction_following=0.9, violation_rate=0.1, false_refusal_rate=0.0, style=STYLE, parent_style=STYLE,
    )
    check = next(c for c in evaluate_offline(OfflineGateSpec(), metrics, now=NOW).checks if c.name == "win-rate-band")
    return check.passed, paired_difference_interval(ours, judge, n, stats["pairwise_win_correlation"])


@pytest.mark.parametrize("shared", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("p_judge", [0.3, 0.45, 0.6, 0.8])
def test_the_paired_interval_covers_the_true_gap_and_a_gap_at_the_margin_is_rarely_flagged(
    p_judge: float, shared: float
) -> None:
    """200 prompts (the eval stage's), 300 replays: the interval holds the true gap in about 95 % of them, and a
    candidate whose true gap sits exactly at the margin (0.10) is called gaming in about 2.5 % (one-sided)."""
    rng = np.random.default_rng(round(1000 * p_judge + 10 * shared))
    covered = flagged = 0
    trials = 300
    for _ in range(trials):
        passed, (low, high) = _band(*_draw(rng, 200, p_judge + 0.10, p_judge, shared))
        covered += low <= 0.10 <= high
        flagged += not passed
    assert covered / trials >= 0.90
    assert flagged / trials <= 0.07


def test_a_judge_that_disowns_the_win_flags_gaming_and_one_that_shares_it_never_does() -> None:
    rng = np.random.default_rng(26)
    gamed = [_band(*_draw(rng, 200, 0.75, 0.45, 0.5))[0] for _ in range(100)]
    assert sum(not p for p in gamed) >= 95
    progress = [_band(*_draw(rng, 200, 0.785, 0.77, 0.6))[0] for _ in range(100)]
    assert all(progress)
