"""The V12 alarm: a high RM win rate with no online lift."""

from __future__ import annotations

import pytest
from flywheel_operator.api import OnlineDecision
from flywheel_operator.gate import detect_divergence

from tests.gate.arms import NOW
from tests.gate.test_offline import metrics


def decision(**numbers: float) -> OnlineDecision:
    return OnlineDecision(outcome="CONTINUE", numbers=numbers, at=NOW)


@pytest.mark.parametrize(
    ("win_rate", "breadth", "depth", "alarm"),
    [
        (0.707, -0.01, -0.03, True),  # V12: the RM loved it, users did not
        (0.707, 0.0, 0.0, True),  # no lift at all is still divergence
        (0.707, -0.01, 0.02, False),  # depth went up: offline and online agree
        (0.52, -0.01, -0.03, False),  # a small offline gain that did not show online is no alarm
    ],
)
def test_alarm_needs_a_high_win_rate_and_no_online_lift(win_rate, breadth, depth, alarm) -> None:
    check = detect_divergence(
        metrics(win_rate_user=win_rate, win_rate_internal=0.437),
        decision(**{"breadth.lift": breadth, "depth.lift": depth}),
    )
    assert check.passed is not alarm
    assert check.value == pytest.approx(max(breadth, depth))
    if alarm:
        assert "gaming the reward model" in check.message


def test_without_online_lifts_there_is_nothing_to_compare() -> None:
    check = detect_divergence(metrics(win_rate_user=0.9, win_rate_internal=0.9), decision())
    assert check.passed and check.value is None


def test_the_threshold_is_adjustable() -> None:
    lifts = decision(**{"breadth.lift": -0.01, "depth.lift": -0.01})
    assert detect_divergence(metrics(win_rate_user=0.52), lifts).passed
    assert not detect_divergence(metrics(win_rate_user=0.52), lifts, high_win_rate=0.51).passed
