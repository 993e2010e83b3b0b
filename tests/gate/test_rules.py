"""The gate's rules that single hand-made bugs slipped past (issue 31's audit), each pinned by a test that fails on
that bug (bench/mutation_hand.yaml replays them): a promotion while a guardrail is not yet shown non-inferior, the
minimum lifts ignored, guardrail counts checked against turns, and the offline checks deciding on the wrong end of
their interval (or on the point) once the metrics carry their n."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from flywheel_operator.api import ArmStats, OfflineGateSpec, OfflineMetrics, PromotionSpec, StyleStats
from flywheel_operator.gate import evaluate_offline, evaluate_online
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.online import GuardrailVerdict, MetricVerdict

from tests.gate.arms import NOW, RATES, plan_of, reading
from tests.gate.arms import exact_arm as arm

DAY = timedelta(days=1)
SPEC = PromotionSpec(novelty_window="0d")


def decide(control: ArmStats, treatment: ArmStats, spec: PromotionSpec = SPEC, elapsed: timedelta = 3 * DAY):
    return evaluate_online(plan_of(spec), reading(control, treatment), elapsed=elapsed, previous=None, now=NOW)


# ------------------------------------------------------------------------------ online: guardrails block wins
def test_a_winner_waits_while_a_guardrail_is_not_yet_shown_non_inferior() -> None:
    """Depth +15 % (a clear win) with the candidate ~0.5 pp worse on errors against a 0.5 pp margin: the interval of
    the difference holds the margin, so errors is neither breached nor shown non-inferior, and nothing promotes."""
    worse = {**RATES, "errors": RATES["errors"] + 0.005}
    decision = decide(arm(), arm(depth=4.6, rates=worse))
    errors = next(c for c in decision.checks if c.name == "guardrail.errors")
    assert decision.numbers["guardrail.errors.lower"] < 0.005 < decision.numbers["guardrail.errors.upper"]
    assert decision.numbers["depth.z_efficacy"] >= decision.numbers["depth.efficacy_bound"]  # depth did win
    assert decision.outcome == "CONTINUE", decision.reasons
    assert not errors.passed and errors.message == "errors is not yet shown non-inferior."
    assert any(r.startswith("guardrail errors is not yet shown non-inferior") for r in decision.reasons)
    # the same win with errors as on the control promotes: the guardrail alone held it back
    assert decide(arm(), arm(depth=4.6)).outcome == "PROMOTE"


# ------------------------------------------------------------------------------------ online: minimum lifts
@pytest.mark.parametrize(("minimum", "outcome"), [(0.0, "PROMOTE"), (0.05, "PROMOTE"), (0.25, "CONTINUE")])
def test_depth_wins_only_above_min_depth_lift(minimum: float, outcome: str) -> None:
    """A +15 % depth lift clears a minimum of 0 or 5 % but not 25 %: the efficacy z is taken against minDepthLift."""
    spec = PromotionSpec(novelty_window="0d", min_depth_lift=minimum)
    decision = decide(arm(), arm(depth=4.6), spec)
    assert decision.outcome == outcome, decision.reasons
    lift, se = decision.numbers["depth.lift"], decision.numbers["depth.lift_se"]
    assert decision.numbers["depth.z_efficacy"] == pytest.approx((lift - minimum) / se)


@pytest.mark.parametrize(("minimum", "outcome"), [(0.0, "PROMOTE"), (0.05, "PROMOTE"), (0.3, "CONTINUE")])
def test_breadth_wins_only_above_min_breadth_lift(minimum: float, outcome: str) -> None:
    """Breadth +20 % (50 % → 60 % engaged) with depth unchanged: breadth alone promotes, only above minBreadthLift
    (its always-valid efficacy bound is compared with the minimum)."""
    spec = PromotionSpec(novelty_window="0d", min_breadth_lift=minimum)
    decision = decide(arm(), arm(engaged=0.6), spec)
    assert decision.outcome == outcome, decision.reasons
    assert decision.numbers["breadth.efficacy.lower"] > 0.05
    assert (decision.numbers["breadth.efficacy.lower"] > minimum) == (outcome == "PROMOTE")


# ------------------------------------------------------------------------------ online: the verdicts' edges
@pytest.mark.parametrize(
    ("z", "bound", "better"), [(None, 1.0, False), (0.99, 1.0, False), (1.0, 1.0, True), (3.0, 2.5, True)]
)
def test_a_metric_is_better_when_its_efficacy_z_reaches_the_boundary(z, bound, better) -> None:
    verdict = MetricVerdict("depth", 0.1, -1.0, 1.0, 0.5, 0.02, z_efficacy=z, efficacy_bound=bound)
    assert verdict.better is better


@pytest.mark.parametrize(
    ("upper", "z_harm", "bound", "always_valid", "scheduled"),
    [(-0.01, None, math.inf, True, False), (0.0, None, math.inf, False, False), (0.1, -2.0, 2.0, False, True),
     (0.1, -1.99, 2.0, False, False)],
)
def test_a_metric_is_worse_below_zero_or_below_the_deterioration_boundary(upper, z_harm, bound, always_valid,
                                                                         scheduled) -> None:
    verdict = MetricVerdict("depth", -0.1, -0.2, upper, 0.5, 0.0, z_harm=z_harm, harm_bound=bound)
    assert (verdict.worse_always_valid, verdict.worse_scheduled) == (always_valid, scheduled)
    assert verdict.worse is (always_valid or scheduled)


@pytest.mark.parametrize(
    ("lower", "upper", "non_inferior", "breached"),
    [(-0.01, 0.004, True, False), (-0.01, 0.005, False, False), (0.005, 0.02, False, False),
     (0.0051, 0.02, False, True)],
)
def test_a_guardrail_is_non_inferior_below_its_margin_and_breached_above(lower, upper, non_inferior, breached) -> None:
    verdict = GuardrailVerdict("errors", 0.005, (lower + upper) / 2, lower, upper)
    assert (verdict.non_inferior, verdict.breached) == (non_inferior, breached)


# --------------------------------------------------------------------------------------- events: rates
def event(**fields: object) -> str:
    import json

    return json.dumps({"type": "engagement", "generation": "gen2", "user": "u1", **fields})


def test_guardrail_counts_are_checked_against_the_responses_not_the_turns() -> None:
    """One turn answered by three responses (regenerations) may carry three guardrail events; three turns with one
    response may not carry two."""
    assert parse_event(event(turns=1, responses=3, guardrails={"errors": 3})).guardrails == {"errors": 3}
    with pytest.raises(ValueError, match=r"guardrails\.errors = 2 exceeds the 1 responses"):
        parse_event(event(turns=3, responses=1, guardrails={"errors": 2}))
    with pytest.raises(ValueError, match="exceeds the 2 responses"):  # responses unset: the turns are served
        parse_event(event(turns=2, guardrails={"errors": 3}))


# ------------------------------------------------------------------------------------- offline: intervals
STYLE = StyleStats(emoji_rate=0.4, list_rate=0.1, mean_length=40.0, stock_phrase_rate=0.05)
GATE = OfflineGateSpec(min_instruction_following=0.85, max_violation_rate=0.05)
"""The defaults leave instruction following and violations unchecked (a minimum of 0, a maximum of 1)."""


def offline(**changes: object):
    base: dict[str, object] = {
        "win_rate_user": 0.58,
        "win_rate_internal": 0.55,
        "instruction_following": 0.95,
        "violation_rate": 0.01,
        "false_refusal_rate": 0.01,
        "style": STYLE,
        "parent_style": STYLE,
    }
    base.update(changes)
    result = evaluate_offline(GATE, OfflineMetrics.model_validate(base), now=NOW)
    return {c.name: c for c in result.checks}


def test_the_maxima_decide_on_the_lower_bound() -> None:
    """A violation or false-refusal rate above its maximum on 200 responses, whose interval still reaches below it,
    passes: only a rate surely above the maximum fails; far above it fails."""
    for name, field, n_field, maximum in (
        ("violation-rate", "violation_rate", "instruction_responses", GATE.max_violation_rate),
        ("false-refusal-rate", "false_refusal_rate", "benign_prompts", GATE.max_false_refusal_rate),
    ):
        near = offline(**{field: maximum + 0.01, n_field: 200})[name]
        assert near.interval[0] < maximum < near.interval[1] and near.passed, near.message
        far = offline(**{field: min(3 * maximum + 0.05, 1.0), n_field: 200})[name]
        assert far.interval[0] > maximum and not far.passed, far.message
        # a rate below the maximum whose interval reaches above it passes as well
        below = offline(**{field: max(maximum - 0.01, 0.0), n_field: 200})[name]
        assert below.interval[1] > maximum and below.passed


def test_the_minimum_decides_on_the_upper_bound() -> None:
    """Instruction following just below its minimum on 200 responses passes (its interval reaches the minimum); well
    below fails; without an n the point decides."""
    minimum = GATE.min_instruction_following
    near = offline(instruction_following=minimum - 0.02, instruction_responses=200)["instruction-following"]
    assert near.interval[0] < minimum <= near.interval[1] and near.passed, near.message
    far = offline(instruction_following=minimum - 0.2, instruction_responses=200)["instruction-following"]
    assert far.interval[1] < minimum and not far.passed
    assert not offline(instruction_following=minimum - 0.02)["instruction-following"].passed  # n unknown


def test_the_divergence_decides_on_the_lower_bound_of_the_gap() -> None:
    """User and internal win rates 0.15 apart on 100 prompts each, against a 0.10 maximum: the gap's interval reaches
    below the maximum, so the check passes; 0.30 apart fails; with no n the gap itself decides."""
    maximum = GATE.max_win_rate_divergence
    near = offline(win_rate_user=0.6, win_rate_internal=0.6 - maximum - 0.05, win_rate_user_n=100,
                   win_rate_internal_n=100)["win-rate-divergence"]
    assert near.value > maximum and near.interval[0] < maximum and near.passed, near.message
    far = offline(win_rate_user=0.7, win_rate_internal=0.7 - maximum - 0.2, win_rate_user_n=100,
                  win_rate_internal_n=100)["win-rate-divergence"]
    assert far.interval[0] > maximum and not far.passed
    unknown = offline(win_rate_user=0.6, win_rate_internal=0.6 - maximum - 0.05)["win-rate-divergence"]
    assert not unknown.passed and unknown.interval == [unknown.value, unknown.value]


# ------------------------------------------------------------------------------ online: looks and serving
def test_a_winner_promotes_only_at_a_scheduled_look_from_min_duration() -> None:
    """`lookEvery` 12h, `minDuration` 30h: the 24h look spends no efficacy α (it is before minDuration); at 31h
    there is no scheduled look, so nothing promotes; the 36h look promotes."""
    plan = plan_of(PromotionSpec(novelty_window="0d", look_every="12h"), min_duration="30h")
    assert plan.schedule_hours[:3] == [12.0, 24.0, 36.0] and plan.schedule_hours[-1] == 168.0
    winner = reading(arm(), arm(depth=4.6))
    decisions = []
    for hours in (24, 31, 36):
        previous = decisions[-1] if decisions else None
        decisions.append(
            evaluate_online(plan, winner, elapsed=timedelta(hours=hours), previous=previous, now=NOW)
        )
    at_24, at_31, at_36 = decisions
    assert at_24.outcome == "CONTINUE" and "depth.efficacy_bound" not in at_24.numbers  # infinite: not stored
    assert any("efficacy is judged at the scheduled looks from minDuration (30h) on" in r for r in at_24.reasons)
    assert at_31.outcome == "CONTINUE" and "depth.z_efficacy" not in at_31.numbers
    assert any("the next scheduled look is at 36h" in r for r in at_31.reasons), at_31.reasons
    assert at_36.outcome == "PROMOTE", at_36.reasons
    assert at_36.numbers["gs.index"] == 2.0 and at_36.numbers["gs.looks"] == 2.0  # 12h and 24h made one look


def test_a_serving_guardrail_in_a_run_of_failures_holds_a_winner_back() -> None:
    """One failed serving check (of the 3 that roll back) is no harm yet, but the canary cannot promote on it."""
    from flywheel_operator.api import OnlineReading, ServingReading, ServingWindow

    failing = {"control": ServingWindow(requests=1000, errors=10), "treatment": ServingWindow(requests=1000, errors=90)}
    with_serving = OnlineReading(
        at=NOW, control=arm(), treatment=arm(depth=4.6), serving=ServingReading(windows={"errors": failing})
    )
    decision = evaluate_online(plan_of(SPEC), with_serving, elapsed=3 * DAY, previous=None, now=NOW)
    assert decision.outcome == "CONTINUE", decision.reasons
    assert decision.numbers["serving.errors.failures"] == 1.0
    assert any("serving guardrail errors failed its last 1 check(s)" in r for r in decision.reasons)
