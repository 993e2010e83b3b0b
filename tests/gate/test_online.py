"""The online decision: promotion only on evidence, harm stops early, no data never promotes."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from flywheel_operator.api import ArmStats, Guardrail, OnlineDecision, PromotionSpec
from flywheel_operator.gate import evaluate_online
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.gate.arms import NOW, RATES, exact_arm, plan_of, reading, simulate_arm

DAY = timedelta(days=1)
SPEC = PromotionSpec(novelty_window="0d")
"""The rule without the novelty guard (tested in test_sequential.py and test_issue25.py)."""


def decide(control, treatment, *, elapsed=3 * DAY, previous=None, spec=SPEC, traffic=50, error=None, crossover=0):
    return evaluate_online(
        plan_of(spec, traffic),
        reading(control, treatment, error, crossover),
        elapsed=elapsed,
        previous=previous,
        now=NOW,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def test_a_clear_winner_is_promoted_after_min_duration(rng) -> None:
    control = simulate_arm(rng, 20_000)
    treatment = simulate_arm(rng, 20_000, depth_scale=1.15)
    decision = decide(control, treatment)
    assert decision.outcome == "PROMOTE", decision.reasons
    assert decision.numbers["depth.lift"] == pytest.approx(0.15, abs=0.04)
    assert decision.numbers["depth.log.lower"] > 0  # depth's always-valid interval is on the log scale (issue 25)
    assert decision.numbers["depth.cuped_variance_reduction"] > 0.1
    # the same users engage, each 15 % deeper: turns per engaged user (a delta-method ratio) moves by 15 %
    assert decision.numbers["depth_per_engaged.lift"] == pytest.approx(0.15, abs=0.04)
    assert {c.name for c in decision.checks} >= {"srm", "breadth", "depth", "guardrail.errors", "min-duration"}


def test_a_winner_waits_for_min_duration(rng) -> None:
    decision = decide(simulate_arm(rng, 20_000), simulate_arm(rng, 20_000, depth_scale=1.15), elapsed=DAY / 2)
    assert decision.outcome == "CONTINUE"
    assert any("minDuration" in r for r in decision.reasons)


def test_a_clear_loser_is_rolled_back_before_min_duration(rng) -> None:
    decision = decide(simulate_arm(rng, 20_000), simulate_arm(rng, 20_000, depth_scale=0.8), elapsed=DAY / 4)
    assert decision.outcome == "ROLL_BACK"
    assert any("depth is significantly worse" in r for r in decision.reasons)


def test_a_breached_guardrail_rolls_back(rng) -> None:
    decision = decide(
        simulate_arm(rng, 20_000, guardrail_rate=0.01),
        simulate_arm(rng, 20_000, depth_scale=1.15, guardrail_rate=0.05),
        elapsed=DAY / 4,
    )
    assert decision.outcome == "ROLL_BACK"
    assert any("guardrail" in r and "breached" in r for r in decision.reasons)


def test_a_guardrail_the_exporter_does_not_report_blocks_promotion(rng) -> None:
    spec = PromotionSpec(guardrails=[Guardrail(name="toxicity", margin=0.01)], novelty_window="0d")
    decision = decide(simulate_arm(rng, 20_000), simulate_arm(rng, 20_000, depth_scale=1.15), spec=spec)
    assert decision.outcome == "CONTINUE"
    assert any("toxicity" in r for r in decision.reasons)


def test_no_difference_continues_then_becomes_inconclusive(rng) -> None:
    control, treatment = simulate_arm(rng, 3_000), simulate_arm(rng, 3_000)
    assert decide(control, treatment).outcome == "CONTINUE"
    final = decide(control, treatment, elapsed=7 * DAY)
    assert final.outcome == "INCONCLUSIVE"
    assert any("maxDuration" in r for r in final.reasons)


def test_too_few_users_are_never_judged(rng) -> None:
    decision = decide(simulate_arm(rng, 150), simulate_arm(rng, 150, depth_scale=3.0))
    assert decision.outcome == "CONTINUE"
    assert "depth.lift" not in decision.numbers


def test_srm_stops_even_a_winner(rng) -> None:
    decision = decide(simulate_arm(rng, 20_000), simulate_arm(rng, 18_500, depth_scale=1.2))
    assert decision.outcome == "ROLL_BACK"
    assert decision.reasons[0].startswith("sample ratio mismatch")
    assert decision.numbers["srm.p_value"] < 0.001


def test_srm_uses_the_configured_split(rng) -> None:
    control, treatment = simulate_arm(rng, 9_000), simulate_arm(rng, 1_000)
    # by default every user off the candidate is control: 9,000 vs 1,000 users is the expected 90/10
    assert decide(control, treatment, traffic=10).outcome != "ROLL_BACK"
    # with equal arms of 10 % each (the report's design), the same counts are broken
    spec = PromotionSpec(control_percent=10, novelty_window="0d")
    assert decide(control, treatment, traffic=10, spec=spec).outcome == "ROLL_BACK"


def test_crossover_above_the_tolerance_stops_even_a_winner(rng) -> None:
    control, treatment = simulate_arm(rng, 20_000), simulate_arm(rng, 20_000, depth_scale=1.15)
    assert decide(control, treatment, crossover=400).outcome == "PROMOTE"  # 1.00 % of 40,000: at the tolerance
    decision = decide(control, treatment, crossover=401)
    assert decision.outcome == "ROLL_BACK"
    assert decision.reasons[0].startswith("crossover: 401 of 40000 exposed users")
    assert any(c.name == "crossover" and not c.passed for c in decision.checks)
    assert decision.numbers["crossover.share"] == pytest.approx(401 / 40_000)
    # the tolerance is the spec's: a looser one lets the same reading promote
    assert (
        decide(
            control, treatment, crossover=401, spec=PromotionSpec(crossover_tolerance=0.02, novelty_window="0d")
        ).outcome
        == "PROMOTE"
    )


def test_running_state_keeps_the_test_always_valid(rng) -> None:
    control, treatment = simulate_arm(rng, 20_000), simulate_arm(rng, 20_000, depth_scale=1.03)
    first = decide(control, treatment)
    carried = {"depth.log.p_value": 1e-6, "depth.log.lower": 0.02}
    previous = first.model_copy(update={"numbers": {**first.numbers, **carried}})
    second = decide(control, treatment, previous=previous)
    assert second.numbers["depth.log.p_value"] == 1e-6
    assert second.numbers["depth.log.lower"] >= 0.02


def test_running_state_survives_an_outage(rng) -> None:
    first = decide(simulate_arm(rng, 20_000), simulate_arm(rng, 20_000, depth_scale=1.1))
    outage = decide(None, None, previous=first, error="Prometheus is unreachable")
    assert outage.outcome == "CONTINUE"
    for key in ("depth.log.p_value", "depth.log.lower", "depth.log.upper", "guardrail.errors.upper"):
        assert outage.numbers[key] == first.numbers[key]
    assert "srm.p_value" not in outage.numbers and "depth.lift" not in outage.numbers


def test_without_the_covariate_cuped_is_skipped(rng) -> None:
    decision = decide(simulate_arm(rng, 5_000, covariate=False), simulate_arm(rng, 5_000, covariate=False))
    assert "depth.cuped_theta" not in decision.numbers


def test_numbers_are_json_finite_and_the_decision_round_trips(rng) -> None:
    decision = decide(simulate_arm(rng, 5_000), simulate_arm(rng, 5_000))
    again = OnlineDecision.model_validate_json(decision.model_dump_json(by_alias=True))
    assert again == decision


# ------------------------------------------------------------------------------------------- invariants
arm_strategy = st.builds(
    lambda n, engaged_share, mean, spread, responses, events: ArmStats(
        users=n,
        engaged_users=int(n * engaged_share),
        depth_sum=n * mean,
        # between (Σy)²/n and (Σy)², the range any n users' depths can give (issue 25 refuses other sums)
        depth_sum_squares=min(n * (mean * mean + spread), (n * mean) ** 2),
        responses=responses,
        guardrails=dict.fromkeys(("instruction-violations", "false-refusals", "errors"), float(min(events, responses))),
    ),
    st.integers(min_value=1, max_value=200_000),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=30.0),
    st.floats(min_value=0.0, max_value=400.0),
    st.integers(min_value=0, max_value=1_000_000),
    st.integers(min_value=0, max_value=10_000),
)
elapsed_strategy = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(control=st.none() | arm_strategy, treatment=st.none() | arm_strategy, elapsed=elapsed_strategy)
def test_no_data_never_promotes(control, treatment, elapsed) -> None:
    outage = decide(control, treatment, elapsed=elapsed, error="Prometheus is unreachable")
    # issue 25: the last look retries a failed reading for finalLookGrace (2h) before it is INCONCLUSIVE
    assert outage.outcome == ("INCONCLUSIVE" if elapsed >= 7 * DAY + timedelta(hours=2) else "CONTINUE")
    if control is None or treatment is None:
        assert decide(control, treatment, elapsed=elapsed).outcome in {"CONTINUE", "INCONCLUSIVE"}


OUTCOMES = {"PROMOTE", "ROLL_BACK", "INCONCLUSIVE", "CONTINUE"}


@st.composite
def experiments(draw: st.DrawFn) -> tuple[ArmStats, ArmStats, timedelta]:
    """Stratified experiments that can end every way: a clear winner (+15 % depth or +20 % breadth), a clear loser,
    no difference, a broken split, a guardrail worse than its margin, before `minDuration`, between looks, at the
    last look; around each stratum, random sizes, lifts, shares and times. Arms carry exact per-user sums (the
    exporter's), so the guardrails can be shown non-inferior and a winner can promote."""
    users = draw(st.one_of(st.sampled_from([20_000, 5_000]), st.integers(min_value=50, max_value=30_000)))
    engaged = draw(st.floats(min_value=0.2, max_value=0.7))
    depth_lift = draw(st.one_of(st.sampled_from([0.15, 0.0, -0.2]), st.floats(min_value=-0.3, max_value=0.3)))
    breadth_lift = draw(st.one_of(st.just(0.0), st.sampled_from([0.2, -0.2]), st.floats(min_value=-0.2, max_value=0.2)))
    split = draw(st.one_of(st.just(1.0), st.sampled_from([0.9, 0.97])))
    errors = draw(st.one_of(st.just(RATES["errors"]), st.sampled_from([0.02, 0.015])))
    elapsed = draw(
        st.one_of(
            st.sampled_from([3 * DAY, DAY / 4, 7 * DAY, 7 * DAY + timedelta(hours=1)]),
            st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10)),
        )
    )
    control = exact_arm(users, engaged=engaged)
    treatment = exact_arm(
        max(round(users * split), 1),
        engaged=min(engaged * (1 + breadth_lift), 0.95),
        depth=4.0 * (1 + depth_lift),
        rates={**RATES, "errors": errors},
    )
    event(f"stratum: depth {depth_lift:+.2f}" if depth_lift in (0.15, 0.0, -0.2) else "stratum: depth random")
    return control, treatment, elapsed


def test_srm_or_early_never_promotes() -> None:
    """PROMOTE needs `minDuration`, a matching split, every guardrail non-inferior and a success metric past its
    boundary; an SRM always rolls back. The draws reach PROMOTE, ROLL_BACK, INCONCLUSIVE and CONTINUE (asserted:
    a property whose PROMOTE branch is never reached pins nothing)."""
    seen: dict[str, int] = dict.fromkeys(OUTCOMES, 0)

    @settings(max_examples=80, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(experiment=experiments())
    def check(experiment: tuple[ArmStats, ArmStats, timedelta]) -> None:
        control, treatment, elapsed = experiment
        decision = decide(control, treatment, elapsed=elapsed)
        seen[decision.outcome] += 1
        event(f"outcome: {decision.outcome}")
        passed = {c.name: c.passed for c in decision.checks}
        if decision.outcome == "PROMOTE":
            assert elapsed >= DAY
            assert decision.numbers["srm.p_value"] >= SPEC.srm_p_value and passed["srm"]
            assert all(passed[f"guardrail.{g.name}"] for g in SPEC.guardrails)
            assert passed["crossover"] and passed["min-duration"]
            depth_won = decision.numbers.get("depth.z_efficacy", -math.inf) >= decision.numbers.get(
                "depth.efficacy_bound", math.inf
            )
            breadth_won = decision.numbers.get("breadth.efficacy.lower", -math.inf) >= SPEC.min_breadth_lift
            assert depth_won or breadth_won
        if "srm.p_value" in decision.numbers and decision.numbers["srm.p_value"] < SPEC.srm_p_value:
            assert decision.outcome == "ROLL_BACK"
            assert any(r.startswith("sample ratio mismatch") for r in decision.reasons)

    check()
    assert all(seen[o] > 0 for o in OUTCOMES), seen


def test_crossover_above_the_tolerance_never_promotes() -> None:
    """Above the tolerance: never PROMOTE; ROLL_BACK (like an SRM) once each arm has `minUsersPerArm` users. The
    crossed users are drawn around the tolerance, and every branch is reached (asserted)."""
    branches: dict[str, int] = dict.fromkeys(("within", "above: rolled back", "above: a handful waits"), 0)

    @settings(max_examples=60, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        control=st.one_of(arm_strategy, st.integers(50, 30_000).map(exact_arm)),
        treatment=st.one_of(arm_strategy, st.integers(50, 30_000).map(exact_arm)),
        elapsed=elapsed_strategy,
        data=st.data(),
    )
    def check(control, treatment, elapsed, data) -> None:
        exposed = control.users + treatment.users
        at = int(exposed * SPEC.crossover_tolerance)
        crossed = data.draw(st.one_of(st.sampled_from([at, at + 1]), st.integers(0, exposed)), label="crossed")
        decision = decide(control, treatment, elapsed=elapsed, crossover=crossed)
        if crossed / exposed > SPEC.crossover_tolerance:
            assert decision.outcome != "PROMOTE"
            assert any(c.name == "crossover" and not c.passed for c in decision.checks)
            if min(control.users, treatment.users) >= SPEC.min_users_per_arm:  # a handful of users only waits
                assert decision.outcome == "ROLL_BACK"
                assert any(r.startswith("crossover:") for r in decision.reasons)
                branch = "above: rolled back"
            else:  # waits: the crossover is no harm yet (a ROLL_BACK has other reasons)
                assert decision.outcome != "ROLL_BACK" or not any(r.startswith("crossover:") for r in decision.reasons)
                branch = "above: a handful waits"
        else:
            assert any(c.name == "crossover" and c.passed for c in decision.checks)
            branch = "within"
        branches[branch] += 1
        event(branch)

    check()
    assert all(branches.values()), branches


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(control=arm_strategy, treatment=arm_strategy)
def test_swapping_arms_flips_the_sign_of_the_lift(control, treatment) -> None:
    forward, backward = decide(control, treatment), decide(treatment, control)
    for metric in ("breadth", "depth"):
        key = f"{metric}.lift_absolute"
        if key in forward.numbers:
            assert forward.numbers[key] == pytest.approx(-backward.numbers[key], rel=1e-9, abs=1e-9)


def test_swapping_arms_flips_the_cuped_lift(rng) -> None:
    a, b = simulate_arm(rng, 4_000), simulate_arm(rng, 4_000, depth_scale=1.1)
    forward, backward = decide(a, b), decide(b, a)
    assert forward.numbers["depth.lift_absolute"] == pytest.approx(-backward.numbers["depth.lift_absolute"])
    assert forward.numbers["depth.cuped_theta"] == pytest.approx(backward.numbers["depth.cuped_theta"])


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(control=arm_strategy, treatment=arm_strategy, k=st.integers(min_value=2, max_value=20))
def test_scaling_all_counts_keeps_the_point_estimates(control, treatment, k) -> None:
    def scale(arm: ArmStats) -> ArmStats:
        return ArmStats(
            users=arm.users * k,
            engaged_users=arm.engaged_users * k,
            depth_sum=arm.depth_sum * k,
            depth_sum_squares=arm.depth_sum_squares * k,
            responses=arm.responses * k,
            guardrails={name: v * k for name, v in arm.guardrails.items()},
        )

    base, scaled = decide(control, treatment), decide(scale(control), scale(treatment))
    for key in ("breadth.lift", "depth.lift", "breadth.lift_absolute", "depth.lift_absolute"):
        if key in base.numbers:
            assert scaled.numbers[key] == pytest.approx(base.numbers[key], rel=1e-9, abs=1e-12)
