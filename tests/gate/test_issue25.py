"""Issue 25 in the gate itself: Lan–DeMets O'Brien–Fleming boundaries, the hard SRE guardrails, range checks,
a zero variance with a non-zero difference, and the novelty guard on by default (the planner-level behaviour is
in tests/planner/test_issue25.py)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from flywheel_operator.api import (
    ArmStats,
    Guardrail,
    OnlineReading,
    PromotionSpec,
    ServingGuardrail,
    ServingReading,
    ServingWindow,
)
from flywheel_operator.gate import evaluate_online, sequential
from flywheel_operator.planner.observed import CanaryObservation

from tests.gate.arms import GUARDRAILS, NOW, plan_of, reading
from tests.planner.harness import World, arm, generation

DAY = timedelta(days=1)


def observing(**spec) -> World:
    world = World(generation(**spec))
    world.train_through()
    world.canary = CanaryObservation(ready=True)
    world.step()
    return world


def split(control: ArmStats, treatment: ArmStats, at) -> OnlineReading:
    return OnlineReading(at=at, control=control, treatment=treatment)


# ------------------------------------------------------------ problem 2: the boundaries themselves
def test_boundaries_spend_alpha_like_lan_demets_obrien_fleming() -> None:
    # the textbook two- and five-look boundaries of a one-sided 0.025 test (Jennison & Turnbull, table 2.x)
    assert sequential.boundaries(0.025, [0.5, 1.0]) == pytest.approx([2.963, 1.969], abs=2e-3)
    five = sequential.boundaries(0.025, [0.2, 0.4, 0.6, 0.8, 1.0])
    assert five == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=3e-3)
    # Monte Carlo: Brownian paths looked at irregular fractions cross with probability α
    rng = np.random.default_rng(0)
    fractions = [0.07, 0.21, 0.3, 0.48, 0.55, 0.71, 0.8, 0.93, 1.0]
    bounds = np.array(sequential.boundaries(0.02, fractions))
    steps = rng.normal(size=(200_000, len(fractions))) * np.sqrt(np.diff([0.0, *fractions]))
    z = np.cumsum(steps, axis=1) / np.sqrt(fractions)
    assert (z >= bounds).any(axis=1).mean() == pytest.approx(0.02, abs=0.0015)


# ----------------------------------------------------------------------- problem 3: SRE guardrails
def serving(canary_errors: float, parent_errors: float = 10.0, *, p95: tuple[float, float] = (0.5, 0.5)):
    return ServingReading(
        windows={
            "errors": {
                "control": ServingWindow(requests=1000, errors=parent_errors),
                "treatment": ServingWindow(requests=1000, errors=canary_errors),
            },
            "latency-p95": {
                "control": ServingWindow(requests=1000, errors=0, latency_p95_seconds=p95[0]),
                "treatment": ServingWindow(requests=1000, errors=0, latency_p95_seconds=p95[1]),
            },
        }
    )


def run_serving(windows: list[ServingReading], spec: PromotionSpec | None = None) -> list[str]:
    plan, previous, outcomes = plan_of(spec or PromotionSpec()), None, []
    for minute, window in enumerate(windows, start=1):
        elapsed = timedelta(minutes=2 * minute)
        previous = evaluate_online(
            plan, OnlineReading(at=NOW, error="no events yet", serving=window), elapsed=elapsed, previous=previous,
            now=NOW,
        )  # fmt: skip
        outcomes.append(previous.outcome)
        if previous.outcome != "CONTINUE":
            break
    return outcomes


def test_a_canary_that_errors_five_times_as_often_is_rolled_back_in_minutes() -> None:
    outcomes = run_serving([serving(50.0)] * 10)
    assert outcomes == ["CONTINUE", "CONTINUE", "ROLL_BACK"]  # 3 failed 2-minute checks in a row: 6 minutes


def test_a_passing_check_resets_the_count_and_a_quiet_window_is_not_judged() -> None:
    windows = {"control": ServingWindow(requests=1000, errors=10), "treatment": ServingWindow(requests=20, errors=5)}
    quiet = ServingReading(windows={"errors": windows})
    outcomes = run_serving([serving(50.0), serving(50.0), serving(10.0), serving(50.0), quiet, serving(50.0)] * 2)
    assert "ROLL_BACK" not in outcomes[:6]
    assert run_serving([serving(12.0)] * 50) == ["CONTINUE"] * 50  # A/A-like noise never rolls back


def test_a_canary_twice_as_slow_at_p95_is_rolled_back() -> None:
    outcomes = run_serving([serving(10.0, p95=(0.4, 0.8))] * 5)
    assert outcomes[-1] == "ROLL_BACK" and len(outcomes) == 3
    spec = PromotionSpec(serving_guardrails=[ServingGuardrail(metric="latency-p95", threshold=2.5, failures=2)])
    assert run_serving([serving(10.0, p95=(0.4, 0.8))] * 5, spec) == ["CONTINUE"] * 5


def test_the_planner_reads_at_the_serving_cadence_when_serving_metrics_come() -> None:
    world = observing()
    world.advance(timedelta(hours=6))
    world.online = OnlineReading(at=world.now, error="no events yet", serving=serving(10.0))
    result = world.step()
    assert result.requeue_at == world.now + timedelta(minutes=2)  # checkInterval is 6h in this generation


# ------------------------------------------------- problem 5: range checks, a zero variance
@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("responses_sum_squares", 10.0, "Σresponses²"),
        ("guardrail_cross_sums", {"errors": 1.0}, "Σg·r"),
        ("pre_cross_sum", 1e12, "Cauchy"),
    ],
)
def test_range_checks_name_the_sum(field, value, words) -> None:
    base = arm(1_000, 500, 4.0).model_copy(
        update={"pre_sum": 4000.0, "pre_sum_squares": 20_000.0, "pre_cross_sum": 1.0}
    )
    assert base.range_problems() == []
    problems = base.model_copy(update={field: value}).range_problems()
    assert problems and any(words in p for p in problems)


def test_a_zero_variance_with_a_nonzero_difference_is_not_read_as_certainty() -> None:
    """Control: no error in 10,000 responses. Treatment: 40 users with 250 responses each, exactly one error each
    (0.4 %, every user the same rate, so the clustered variance is 0). f9f8494 took the rule-of-three path and
    read [0.37 %, 0.43 %]: non-inferior within 0.5 %, on 40 users."""
    n = 40
    control = ArmStats(users=n, engaged_users=20, depth_sum=400.0, depth_sum_squares=4000.0, responses=10_000,
                       guardrails={"errors": 0.0}, responses_sum_squares=n * 250.0**2,
                       guardrail_sum_squares={"errors": 0.0}, guardrail_cross_sums={"errors": 0.0})  # fmt: skip
    treatment = control.model_copy(
        update={"guardrails": {"errors": 40.0}, "guardrail_sum_squares": {"errors": 40.0},
                "guardrail_cross_sums": {"errors": 40 * 250.0}}
    )  # fmt: skip
    spec = PromotionSpec(guardrails=[Guardrail(name="errors", margin=0.005)], min_users_per_arm=2, min_events_per_arm=1)
    decision = evaluate_online(plan_of(spec), reading(control, treatment), elapsed=3 * DAY, previous=None, now=NOW)
    assert decision.numbers["guardrail.errors.difference"] == pytest.approx(0.004)
    assert decision.numbers["guardrail.errors.upper"] > 0.005  # not shown non-inferior on 40 users
    assert decision.numbers["guardrail.errors.variance_floor"] > 0


# -------------------------------------------------------------------------------- problem 6: novelty
def test_the_novelty_guard_is_on_by_default() -> None:
    """Decided with bench/gate.py (docs/metrics.md, section 8): a 1-day window costs nothing at +5 % (promotions
    come after 48 h anyway) and holds a fading lift until the second day."""
    assert PromotionSpec().novelty_window == "1d"
    control = arm(18_000, 9_000, 4.0)
    treatment = arm(2_000, 1_000, 4.8)
    decision = evaluate_online(
        plan_of(PromotionSpec(), traffic=10), split(control, treatment, NOW), elapsed=30 * timedelta(hours=1),
        previous=None, now=NOW,
    )  # fmt: skip
    assert decision.outcome == "CONTINUE"
    assert any(r.startswith("novelty guard") for r in decision.reasons)


def test_guardrail_names_of_the_fixtures() -> None:
    assert set(GUARDRAILS) == {g.name for g in PromotionSpec().guardrails}


# ------------------------------------------------------------------- problem 3: reading KServe's metrics
def test_the_reader_reads_the_serving_windows_of_both_arms() -> None:
    import httpx
    from flywheel_operator.gate.readers import PrometheusReader, serving_revisions

    from tests.gate.test_readers import SPEC, answers, transport

    revisions = serving_revisions(
        "knative", {"latestCreatedRevision": "chat-predictor-00003", "latestRolledoutRevision": "chat-predictor-00002"}
    )
    assert revisions == {"treatment": "chat-predictor-00003", "control": "chat-predictor-00002"}
    assert serving_revisions("standard", {"predictor": "chat", "canary": "gen2-canary"}) == {
        "treatment": "gen2-canary", "control": "chat"}  # fmt: skip
    assert serving_revisions("knative", {"latestCreatedRevision": "a", "latestRolledoutRevision": "a"}) is None
    table: dict[str, object] = dict(answers())
    queries = SPEC.serving_queries
    for revision, errors, p95 in (
        ("chat-predictor-00002", 4, 0.4),
        ("chat-predictor-00003", 60, 0.9),
    ):
        labels = {"namespace": "ns", "revision": revision, "window": "2m"}
        table[queries.requests.format(**labels)] = 1000
        table[queries.errors.format(**labels)] = errors
        table[queries.latency_p95.format(**labels)] = p95
    reader = PrometheusReader(
        SPEC, client=httpx.Client(base_url="http://prometheus.test:9090", transport=transport(table))
    )
    got = reader.read(generation="gen2", namespace="ns", now=NOW, revisions=revisions)
    assert got.has_data and got.serving is not None and not got.serving.errors
    assert got.serving.windows["errors"]["treatment"].errors == 60
    assert got.serving.windows["latency-p95"]["treatment"].latency_p95_seconds == 0.9
    # the serving metrics are read even when the engagement sums are not there
    del table[SPEC.queries.users.format(arm="control", generation="gen2", namespace="ns")]
    partial = reader.read(generation="gen2", namespace="ns", now=NOW, revisions=revisions)
    assert not partial.has_data and partial.serving is not None and "errors" in partial.serving.windows
