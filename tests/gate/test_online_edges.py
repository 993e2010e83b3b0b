"""evaluate_online and the frozen plan at their edges (issue 31: mutants `make mutation` found surviving): the
fields a live edit is reported by, a metric frozen after a counter reset, and the plan's schedule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flywheel_operator.api import CanarySpec, Guardrail, PromotionSpec
from flywheel_operator.gate import decision_plan, evaluate_online, plan_edits

from tests.gate.arms import NOW, exact_arm, plan_of, reading

DAY = timedelta(days=1)
CANARY = CanarySpec(inference_service="chat", traffic_percent=10, min_duration="1d", max_duration="7d")


def test_plan_edits_name_the_promotion_fields_and_canary_timings_in_camel_case() -> None:
    promotion = PromotionSpec()
    plan = decision_plan(promotion, CANARY, now=NOW)
    assert plan_edits(plan, promotion, CANARY) == []
    edited = promotion.model_copy(update={"alpha": 0.1, "min_depth_lift": 0.02, "look_every": "12h"})
    canary = CANARY.model_copy(update={"max_duration": "5d", "traffic_percent": 20})
    assert plan_edits(plan, edited, canary) == [
        "canary.maxDuration",
        "canary.trafficPercent",
        "lookEvery",
        "promotion.alpha",
        "promotion.lookEvery",
        "promotion.minDepthLift",
    ]
    # the gate reads where the frozen plan says (readers.frozen_promotion): a moved source is an edit it ignores
    moved = promotion.model_copy(update={"prometheus_url": "http://elsewhere:9090"})
    assert plan_edits(plan, moved, CANARY) == ["promotion.prometheusUrl"]
    fewer = promotion.model_copy(update={"guardrails": [Guardrail(name="errors", margin=0.005)]})
    assert plan_edits(plan, fewer, CANARY) == ["promotion.guardrails"]


def test_the_schedule_has_a_look_every_look_every_and_one_at_max_duration() -> None:
    plan = decision_plan(PromotionSpec(look_every="2d"), CANARY, now=NOW)
    assert plan.schedule_hours == [48.0, 96.0, 144.0, 168.0] and plan.look_every == "2d"
    default = decision_plan(PromotionSpec(), CANARY, now=NOW)
    assert len(default.schedule_hours) == 28 and default.look_every == "6h" and default.schedule_hours[-1] == 168.0
    odd = decision_plan(PromotionSpec(look_every="90m"), CANARY.model_copy(update={"max_duration": "4h"}), now=NOW)
    assert odd.schedule_hours == [1.5, 3.0, 4.0] and odd.look_every == "90m"


def test_breadth_is_frozen_at_its_last_interval_after_a_counter_reset() -> None:
    """After an exporter restart breadth cannot be stitched: its verdict keeps the carried interval, with the
    interval's midpoint as the reported lift."""
    spec = PromotionSpec(novelty_window="0d")
    plan = plan_of(spec)
    first = evaluate_online(plan, reading(exact_arm(20_000), exact_arm(20_000, engaged=0.52)), elapsed=2 * DAY,
                            previous=None, now=NOW)
    lower, upper = first.numbers["breadth.lower"], first.numbers["breadth.upper"]
    reset = evaluate_online(plan, reading(exact_arm(300), exact_arm(300)), elapsed=2 * DAY + timedelta(hours=1),
                            previous=first, now=NOW)
    assert reset.outcome == "CONTINUE" and reset.numbers["counter_resets"] == 1.0
    after = evaluate_online(plan, reading(exact_arm(3_000), exact_arm(3_000)), elapsed=3 * DAY, previous=reset, now=NOW)
    breadth = next(c for c in after.checks if c.name == "breadth")
    assert breadth.value == pytest.approx((lower + upper) / 2)
    assert after.numbers["breadth.lower"] == lower and after.numbers["breadth.upper"] == upper


def test_checks_carry_the_lift_and_the_limits_they_were_judged_by() -> None:
    spec = PromotionSpec(novelty_window="0d", min_depth_lift=0.02, min_breadth_lift=0.01)
    decision = evaluate_online(plan_of(spec), reading(exact_arm(), exact_arm(depth=4.4)), elapsed=3 * DAY,
                               previous=None, now=NOW)
    checks = {c.name: c for c in decision.checks}
    assert checks["depth"].value == decision.numbers["depth.lift"]
    assert checks["breadth"].value == decision.numbers["breadth.lift"]
    assert checks["depth"].limit.startswith("at a scheduled look z(lift − 2.00%) ≥ the efficacy boundary to win")
    assert checks["breadth"].limit.startswith("at a scheduled look z(lift − 1.00%)")
    assert checks["guardrail.errors"].limit == "upper bound < 0.005"
    assert checks["guardrail.errors"].value == decision.numbers["guardrail.errors.difference"]
    # between scheduled looks (the first is at 6h) the limits still name the minimum lifts
    early = evaluate_online(plan_of(spec), reading(exact_arm(), exact_arm(depth=4.4)), elapsed=timedelta(hours=3),
                            previous=None, now=NOW)
    assert {c.name: c for c in early.checks}["breadth"].limit.startswith("at a scheduled look z(lift − 1.00%)")


def test_breadth_promotes_with_the_z_of_its_efficacy_bound_over_the_minimum() -> None:
    """Breadth's z is (efficacy lower bound − minBreadthLift) / SE: reported in the PROMOTE reason."""
    spec = PromotionSpec(novelty_window="0d", min_breadth_lift=0.05)
    decision = evaluate_online(plan_of(spec), reading(exact_arm(), exact_arm(engaged=0.6)), elapsed=3 * DAY,
                               previous=None, now=NOW)
    assert decision.outcome == "PROMOTE", decision.reasons
    z = (decision.numbers["breadth.efficacy.lower"] - 0.05) / decision.numbers["breadth.lift_se"]
    assert f"breadth lift +20.00%, z = {z:.2f} ≥ boundary 0.00 against the minimum lift 5.00%" in decision.reasons[0]


def test_cuped_needs_all_three_covariate_sums() -> None:
    arm = exact_arm(5_000).model_copy(update={"pre_sum": 15_000.0, "pre_sum_squares": 60_000.0})
    decision = evaluate_online(plan_of(PromotionSpec(novelty_window="0d")), reading(arm, arm), elapsed=3 * DAY,
                               previous=None, now=NOW)
    assert "depth.cuped_theta" not in decision.numbers and "depth.lift" in decision.numbers


def test_a_guardrail_without_per_user_sums_is_refused_with_the_fix() -> None:
    arm = exact_arm(5_000).model_copy(update={"guardrail_cross_sums": {}})
    decision = evaluate_online(plan_of(PromotionSpec(novelty_window="0d")), reading(arm, arm), elapsed=3 * DAY,
                               previous=None, now=NOW)
    refused = [r for r in decision.reasons if r.startswith("guardrail errors is refused")]
    assert refused == [
        "guardrail errors is refused: the reading lacks its per-user sums (guardrailCrossSums[errors]), so a user "
        "who repeats a failure would count as many independent ones; fix: upgrade the exporter "
        "(flywheel_responses_squared_total, flywheel_guardrail_events_squared_total, "
        "flywheel_guardrail_events_cross_total) or set promotion.queries.responsesSumSquares, guardrailSumSquares "
        "and guardrailCrossSum"
    ]


def test_an_interval_that_contradicts_a_one_sided_carried_bound_stops_the_gate_in_words() -> None:
    first = evaluate_online(plan_of(PromotionSpec(novelty_window="0d")), reading(exact_arm(), exact_arm()),
                            elapsed=2 * DAY, previous=None, now=NOW)
    numbers = {k: v for k, v in first.numbers.items() if k != "depth.log.upper"}
    numbers["depth.log.lower"] = 5.0  # carried: depth is at least +500 % (and no upper bound was carried)
    previous = first.model_copy(update={"numbers": numbers})
    decision = evaluate_online(plan_of(PromotionSpec(novelty_window="0d")), reading(exact_arm(), exact_arm()),
                               elapsed=3 * DAY, previous=previous, now=NOW)
    assert decision.outcome == "INCONCLUSIVE"
    assert "before [+5.0000, +inf]" in decision.reasons[0], decision.reasons


def test_the_srm_leaves_adopted_users_out_of_both_arms() -> None:
    """Users adopted after an exporter restart come back by arm (the better arm brings more back): they are left
    out of the split test on either side."""
    control = exact_arm(21_000).model_copy(update={"adopted_users": 1_000})
    treatment = exact_arm(20_500).model_copy(update={"adopted_users": 500})
    decision = evaluate_online(plan_of(PromotionSpec(novelty_window="0d")), reading(control, treatment),
                               elapsed=3 * DAY, previous=None, now=NOW)
    assert decision.numbers["srm.observed_treatment_share"] == 0.5
    assert next(c for c in decision.checks if c.name == "srm").passed


def test_the_last_look_says_until_when_it_waits_for_a_reading() -> None:
    decision = evaluate_online(plan_of(PromotionSpec()), reading(None, None, "Prometheus is unreachable"),
                               elapsed=7 * DAY, previous=None, now=NOW)
    assert decision.outcome == "CONTINUE"
    assert decision.reasons == [
        "no data: Prometheus is unreachable",
        "the last look waits for a reading until 170h (finalLookGrace 2h)",
    ]


def test_serving_harm_during_a_counter_reset_still_rolls_back() -> None:
    from flywheel_operator.api import OnlineReading, ServingReading, ServingWindow

    plan = plan_of(PromotionSpec(novelty_window="0d"))
    first = evaluate_online(plan, reading(exact_arm(20_000), exact_arm(20_000)), elapsed=2 * DAY, previous=None,
                            now=NOW)
    failing = {"control": ServingWindow(requests=1000, errors=10), "treatment": ServingWindow(requests=1000, errors=90)}
    previous = first.model_copy(update={"numbers": {**first.numbers, "serving.errors.failures": 2.0}})
    restarted = OnlineReading(at=NOW, control=exact_arm(300), treatment=exact_arm(300),
                              serving=ServingReading(windows={"errors": failing}))
    decision = evaluate_online(plan, restarted, elapsed=2 * DAY + timedelta(hours=1), previous=previous, now=NOW)
    assert decision.outcome == "ROLL_BACK" and decision.at == NOW
    assert decision.reasons[0].startswith("serving guardrail errors failed 3 checks in a row")
    assert decision.reasons[1].startswith("counter reset: the exporter's sums went down")


def test_impossible_sums_are_refused_naming_the_arm() -> None:
    broken = exact_arm(1_000).model_copy(update={"depth_sum_squares": 1.0})  # below (Σdepth)²/users
    decision = evaluate_online(plan_of(PromotionSpec()), reading(exact_arm(1_000), broken), elapsed=DAY,
                               previous=None, now=NOW)
    assert decision.outcome == "CONTINUE"
    assert decision.reasons[0].startswith("no data: the per-user sums are out of range (treatment: Σdepth² = 1 is")
    swapped = evaluate_online(plan_of(PromotionSpec()), reading(broken, exact_arm(1_000)), elapsed=DAY,
                              previous=None, now=NOW)
    assert swapped.reasons[0].startswith("no data: the per-user sums are out of range (control: Σdepth² = 1 is")


def test_a_reading_after_the_last_look_is_inconclusive() -> None:
    """The last look was taken (and decided nothing); a later reading is no look, and the canary is over."""
    plan = plan_of(PromotionSpec(novelty_window="0d"))
    last = evaluate_online(plan, reading(exact_arm(), exact_arm()), elapsed=7 * DAY, previous=None, now=NOW)
    assert last.outcome == "INCONCLUSIVE" and last.numbers["gs.final_done"] == 1.0
    later = evaluate_online(plan, reading(exact_arm(), exact_arm()), elapsed=7 * DAY + timedelta(minutes=5),
                            previous=last, now=NOW)
    assert later.outcome == "INCONCLUSIVE" and "gs.fraction" not in later.numbers
