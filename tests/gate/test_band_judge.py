"""Issue 26: the band's upper edge reads gaming against an independent judge, not progress.

Gaming is the optimised reward model (the pointwise one, on its learned score) preferring the candidate while a
model nobody optimised (the pairwise one, trained on the same logs) does not. A real step up wins pairs for
both; the band flags "likely gaming" only when the paired 95 % interval of their gap lies entirely above
`winRateBand.maxJudgeGap`, and keeps the absolute `max` when no judge was trained (or the judge learned nothing).
"""

from __future__ import annotations

import math

import pytest
from flywheel_operator.api import OfflineGateSpec, OfflineMetrics, StyleStats, WinRateBand
from flywheel_operator.gate import evaluate_offline
from flywheel_operator.gate.offline import absolute_difference_interval, paired_difference_interval, wilson_interval
from hypothesis import given
from hypothesis import strategies as st

from tests.gate.arms import NOW

STYLE = StyleStats(emoji_rate=0.2, list_rate=0.0, mean_length=12.0, stock_phrase_rate=0.0)
RATES = st.floats(min_value=0.0, max_value=1.0)
CORRELATIONS = st.floats(min_value=-1.0, max_value=1.0)
SIZES = st.integers(min_value=20, max_value=2000)


def metrics(learned: float, judge: float | None, n: int | None = 200, *, whole: float | None = None,
            correlation: float | None = None, ties: int | None = None) -> OfflineMetrics:
    return OfflineMetrics(
        win_rate_user=learned, reward_win_rate_user=learned if whole is None else whole, pairwise_win_rate_user=judge,
        pairwise_win_correlation_user=correlation, pairwise_ties_user=ties, win_rate_user_n=n,
        instruction_following=0.9, violation_rate=0.1, false_refusal_rate=0.0, style=STYLE, parent_style=STYLE,
    )


def band(m: OfflineMetrics, gate: OfflineGateSpec | None = None):
    result = evaluate_offline(gate or OfflineGateSpec(), m, now=NOW)
    return next(c for c in result.checks if c.name == "win-rate-band")


# ----------------------------------------------------------------------------------------------- the interval
@given(p1=RATES, p2=RATES, n=SIZES, r=CORRELATIONS)
def test_the_paired_interval_holds_the_gap_and_stays_possible(p1: float, p2: float, n: int, r: float) -> None:
    low, high = paired_difference_interval(p1, p2, n, r)
    assert -1.0 <= low <= p1 - p2 <= high <= 1.0


@given(p1=st.floats(0.05, 0.95), p2=st.floats(0.05, 0.95), n=SIZES, r=st.floats(0.0, 1.0))
def test_agreement_prompt_by_prompt_narrows_the_interval(p1: float, p2: float, n: int, r: float) -> None:
    """Two models that win on the same prompts know their gap better than either rate alone; at no correlation
    the interval is Newcombe's for two independent proportions (the divergence check's, before folding)."""
    paired = paired_difference_interval(p1, p2, n, r)
    unpaired = paired_difference_interval(p1, p2, n, 0.0)
    assert paired[1] - paired[0] <= unpaired[1] - unpaired[0] + 1e-12
    folded = absolute_difference_interval(p1, n, p2, n)
    if unpaired[0] > 0:
        assert unpaired == pytest.approx(folded)


def test_without_n_the_gap_is_a_point() -> None:
    assert paired_difference_interval(0.8, 0.6, None, 0.5) == pytest.approx((0.2, 0.2))


# ----------------------------------------------------------------------------------------------- the rule
@given(learned=RATES, n=SIZES, r=CORRELATIONS)
def test_a_judge_that_agrees_never_reads_as_gaming_however_high_the_win_rate(learned: float, n: int, r: float) -> None:
    """The case issue 26 measured: 0.785 by the optimised RM, 0.77 by the judge, +37.9 % depth by the oracle."""
    check = band(metrics(learned, learned, n, correlation=r))
    assert check.passed == (wilson_interval(learned, n)[1] >= 0.5)
    assert "gaming it" not in check.message


@given(learned=RATES, judge=RATES, n=SIZES, r=st.one_of(st.none(), CORRELATIONS), margin=st.floats(0.0, 0.5))
def test_gaming_is_flagged_exactly_when_the_gaps_interval_lies_above_the_margin(
    learned: float, judge: float, n: int, r: float | None, margin: float
) -> None:
    gate = OfflineGateSpec(win_rate_band=WinRateBand(max_judge_gap=margin))
    check = band(metrics(learned, judge, n, whole=0.9, correlation=r), gate)
    low, high = paired_difference_interval(learned, judge, n, 0.0 if r is None else r)
    assert check.passed == (low <= margin)
    assert f"{learned:.3f}" in check.message and f"{judge:.3f}" in check.message
    assert f"{learned - judge:+.3f}" in check.message and f"[{low:+.3f}, {high:+.3f}]" in check.message
    assert ("unpaired: the eval result carries no per-prompt correlation" in check.message) == (r is None)
    assert (", paired)" in check.message) == (r is not None)
    if not check.passed:
        assert f"entirely above the margin +{margin:.2f}" in check.message and "likely gaming" in check.message


@given(learned=st.floats(0.66, 1.0), more=st.floats(0.0, 1.0), n=SIZES)
def test_with_a_judge_the_absolute_max_no_longer_decides(learned: float, more: float, n: int) -> None:
    """Above 0.65 with a judge that sees the same step up (or more): passes, and says the absolute max was passed."""
    judge = min(1.0, learned + more * (1.0 - learned))
    check = band(metrics(learned, judge, n, correlation=0.5))
    assert check.passed
    if wilson_interval(learned, n)[0] > 0.65:
        assert "above the absolute max 0.65, which decides only without a judge" in check.message


@given(learned=RATES, n=SIZES)
def test_without_a_judge_the_absolute_max_decides_and_the_message_says_so(learned: float, n: int) -> None:
    check = band(metrics(learned, None, n))
    lower, upper = wilson_interval(learned, n)
    assert check.passed == (upper >= 0.5 and lower <= 0.65)
    if upper >= 0.5:
        assert "no independent judge was trained" in check.message
    assert check.limit == "in [0.50, 0.65]"


def test_a_judge_that_ties_on_most_prompts_learned_nothing_and_is_no_judge() -> None:
    """A pairwise RM whose weights were zeroed gives P = ½ on every prompt: its win rate 0.5 is no opinion."""
    lost = band(metrics(0.80, 0.5, 200, correlation=0.0, ties=200))
    assert not lost.passed and "could not order candidate and parent on 200 of 200 prompts" in lost.message
    assert "entirely above 0.65" in lost.message
    half = band(metrics(0.80, 0.79, 200, correlation=0.3, ties=100))  # ordered half the prompts: still a judge
    assert half.passed and "independent judge" in half.message


def test_the_generation_issue_26_threw_away_passes_and_a_v12_the_judge_disowns_is_stopped() -> None:
    """generated-100 gen-1: learned 0.785, judge 0.77 (n=200), whole 0.78; the oracle: +37.9 % depth. V12:
    0.707 by the optimised RM, which users did not share (a judge at 0.45)."""
    better = band(metrics(0.785, 0.77, 200, whole=0.78))  # a result from before the paired statistic
    assert better.passed and "unpaired" in better.message and "not gaming" in better.message
    v12 = band(metrics(0.707, 0.45, 200, whole=0.71, correlation=0.2))
    assert not v12.passed and "likely gaming" in v12.message and "V12" in v12.message


@given(learned=RATES, judge=RATES, whole=RATES)
def test_the_lower_edge_still_reads_the_whole_reward(learned: float, judge: float, whole: float) -> None:
    check = band(metrics(learned, judge, 400, whole=whole, correlation=0.5))
    if wilson_interval(whole, 400)[1] < 0.5:
        assert not check.passed and "not better than its parent" in check.message


def test_a_margin_of_one_with_no_lower_edge_disables_the_band() -> None:
    gate = OfflineGateSpec(win_rate_band=WinRateBand(min=0.0, max=0.65, max_judge_gap=1.0))
    check = band(metrics(0.99, 0.01, 200, correlation=0.0), gate)
    assert check.passed and check.limit == "disabled" and "maxJudgeGap 1" in check.message
    assert math.isclose(check.value, 0.99)
