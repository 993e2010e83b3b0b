"""The report's headline shows depth's always-valid interval where the gate keeps it: since issue 25 depth is
judged on the log scale and its interval is `depth.log.lower`/`upper` (Δℓ of mean log(1 + depth)), not
`depth.lower`/`upper` (those exist only after a counter reset, on the relative lift). The headline shows it as
the typical user's relative change, exp(Δℓ) − 1, apart from the relative lift of the mean."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
from flywheel_local.report import GenerationRow, _headline
from flywheel_operator.api import FlywheelGenerationStatus, PromotionSpec
from flywheel_operator.api.status import OnlineDecision, OnlineStatus
from flywheel_operator.gate import evaluate_online

from tests.gate.arms import NOW, plan_of, reading, simulate_arm


def _row(numbers: dict[str, float], outcome: str = "PROMOTE") -> GenerationRow:
    decision = OnlineDecision(outcome=outcome, numbers=numbers, at=NOW)
    status = FlywheelGenerationStatus(phase="Promoted", online=OnlineStatus(started_at=NOW, decision=decision))
    return GenerationRow(name="gen-1", number=1, status=status)


def test_the_headline_shows_depths_log_scale_interval_from_a_real_gate_decision() -> None:
    rng = np.random.default_rng(11)
    control, treatment = simulate_arm(rng, 20_000), simulate_arm(rng, 20_000, depth_scale=1.15)
    decision = evaluate_online(plan_of(PromotionSpec(novelty_window="0d"), 50), reading(control, treatment),
                               elapsed=timedelta(days=3), previous=None, now=NOW)
    numbers = decision.numbers
    assert "depth.lower" not in numbers and "depth.log.lower" in numbers and "depth.log.upper" in numbers
    headline = _headline([_row(numbers, decision.outcome)], oracle=False)
    lower, upper = math.expm1(numbers["depth.log.lower"]), math.expm1(numbers["depth.log.upper"])
    typical = math.expm1(numbers["depth.log_lift"])
    assert (f"depth {numbers['depth.lift']:+.1%} (typical user {typical:+.1%} [{lower:+.1%}, {upper:+.1%}], on the "
            "log scale)") in headline
    assert f"breadth {numbers['breadth.lift']:+.1%} [" in headline


def test_after_a_counter_reset_depths_interval_is_on_its_relative_lift_and_shown_as_such() -> None:
    """Depth judged on its relative lift (`depth.lower`/`upper`): that interval, not a stale log-scale one."""
    numbers = {"depth.lift": 0.12, "depth.lower": 0.02, "depth.upper": 0.22, "depth.log.lower": 0.5,
               "depth.log.upper": 0.6, "breadth.lift": 0.01}
    headline = _headline([_row(numbers)], oracle=False)
    assert "depth +12.0% [+2.0%, +22.0%]" in headline and "log scale" not in headline


def test_a_decision_without_any_depth_interval_shows_the_lift_alone() -> None:
    headline = _headline([_row({"depth.lift": 0.12, "breadth.lift": 0.01})], oracle=False)
    assert "depth +12.0%, breadth +1.0%" in headline
