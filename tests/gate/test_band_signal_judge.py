"""Issue 26 (h26b): the band's judge has its own signal, and a judge that is the optimised model says so.

Since the reward stage keeps a network's weight only on held-out evidence, the pairwise model's text score is
the same lexical head fitted on the same pairs as the pointwise model's learned part: same verdict on every
prompt, a gap of +0.000 whatever the candidate does. The eval stage now judges with the user-signal model
(fitted on users' continuation signals) and reports whether the judge's verdicts are identical to the optimised
model's; the band reads that judge, and an identical judge is no judge (the absolute `max` decides, and the
message says why).
"""

from __future__ import annotations

import pytest
from flywheel_operator.api import OfflineGateSpec, OfflineMetrics, StyleStats, WinRateBand
from flywheel_operator.gate import evaluate_offline
from hypothesis import given
from hypothesis import strategies as st

from tests.gate.arms import NOW

STYLE = StyleStats(emoji_rate=0.2, list_rate=0.0, mean_length=12.0, stock_phrase_rate=0.0)
SIGNAL = "continue (user-signal)"


def metrics(learned: float, judge: float | None, *, n: int = 200, pairwise: float | None = None,
            correlation: float | None = None, ties: int | None = None, identical: bool | None = False,
            name: str | None = SIGNAL) -> OfflineMetrics:
    return OfflineMetrics(
        win_rate_user=learned, reward_win_rate_user=learned, win_rate_user_n=n,
        pairwise_win_rate_user=learned if pairwise is None else pairwise, pairwise_win_correlation_user=1.0,
        pairwise_ties_user=0, judge_model=name, judge_win_rate_user=judge, judge_win_correlation_user=correlation,
        judge_ties_user=ties, judge_identical_user=identical,
        instruction_following=0.9, violation_rate=0.1, false_refusal_rate=0.0, style=STYLE, parent_style=STYLE,
    )


def band(m: OfflineMetrics, gate: OfflineGateSpec | None = None):
    result = evaluate_offline(gate or OfflineGateSpec(), m, now=NOW)
    return next(c for c in result.checks if c.name == "win-rate-band")


def test_the_eval_stages_judge_decides_not_the_pairwise_model_that_is_the_optimised_one() -> None:
    """The pairwise fields say +0.000 (the same head); the user-signal judge sees far fewer wins: gaming."""
    check = band(metrics(0.80, 0.55, correlation=0.3))
    assert not check.passed
    assert "likely gaming" in check.message and SIGNAL in check.message and "+0.250" in check.message
    assert "pairwise RM" not in check.message


def test_a_judge_that_sees_the_progress_too_passes_whatever_the_pairwise_fields_say() -> None:
    check = band(metrics(0.80, 0.78, pairwise=0.30, correlation=0.5))
    assert check.passed and "progress both see" in check.message and "+0.020" in check.message


def test_an_unnamed_judge_is_called_an_independent_judge() -> None:
    assert "(independent judge," in band(metrics(0.80, 0.78, name=None)).message


def test_an_identical_judge_is_no_judge_the_absolute_max_decides_and_the_message_says_so() -> None:
    """Last suite: every band message read 'a gap of +0.000'; now it reads why no judge decides."""
    high, fine = band(metrics(0.90, 0.90, identical=True)), band(metrics(0.60, 0.60, identical=True))
    assert not high.passed and fine.passed
    for check in (high, fine):
        assert "same function" in check.message and SIGNAL in check.message and "gap of" not in check.message
        assert check.limit == "in [0.50, 0.65]"
    assert "entirely above 0.65" in high.message
    # the same rates from a judge that differs on some prompt: the gap decides, and there is none
    assert band(metrics(0.90, 0.90, identical=False)).passed


@pytest.mark.parametrize(("ties", "judged"), [(100, True), (101, False)])
def test_the_judges_own_ties_say_whether_it_learned_anything(ties: int, judged: bool) -> None:
    check = band(metrics(0.90, 0.89, ties=ties))
    assert check.passed is judged
    assert ("could not order candidate and parent on 101 of 200" in check.message) is not judged


@pytest.mark.parametrize(("correlation", "fires"), [(None, False), (0.0, False), (0.9, True)])
def test_the_judges_own_correlation_pairs_the_gap(correlation: float | None, fires: bool) -> None:
    """0.75 against 0.60 on 200 prompts: unpaired the gap's interval reaches +0.058, below the margin 0.10; at
    a per-prompt correlation of 0.9 it starts at +0.121 (the pairwise fields' correlation of 1 is not used)."""
    check = band(metrics(0.75, 0.60, correlation=correlation))
    assert check.passed is not fires
    assert ("unpaired" in check.message) is (correlation is None)


@given(learned=st.floats(0.5, 1.0), n=st.integers(20, 2000))
def test_a_judge_that_agrees_on_every_rate_never_reads_as_gaming(learned: float, n: int) -> None:
    gate = OfflineGateSpec(win_rate_band=WinRateBand(min=0.0, max=0.65))
    assert band(metrics(learned, learned, n=n, correlation=0.5), gate).passed


def test_a_band_without_a_lower_edge_still_reads_gaming_against_the_judge() -> None:
    """`min` 0 turns off the lower edge only: the band is off when both edges are (min 0 and a ceiling of 1)."""
    gate = OfflineGateSpec(win_rate_band=WinRateBand(min=0.0))
    check = band(metrics(0.80, 0.55, correlation=0.3), gate)
    assert not check.passed and "likely gaming" in check.message
