"""Issue 25 through the planner (the interface f9f8494 shares, so each test fails there on behaviour): the plan
is frozen at the canary's start, deterioration is tested at the end, the last look waits for a reading, and
impossible or incomplete sums are refused."""

from __future__ import annotations

from datetime import timedelta

from flywheel_operator.api import ArmStats, OnlineReading
from flywheel_operator.planner.observed import CanaryObservation

from tests.planner.harness import T0, World, arm, generation

DAY = timedelta(days=1)


def observing(**spec) -> World:
    """A generation whose canary just became Ready (the plan is frozen now)."""
    world = World(generation(**spec))
    world.train_through()
    world.canary = CanaryObservation(ready=True)
    world.step()
    assert world.status.phase == "Observing"
    return world


def split(control: ArmStats, treatment: ArmStats, at) -> OnlineReading:
    return OnlineReading(at=at, control=control, treatment=treatment)


# ------------------------------------------------------------------------ problem 1: the frozen plan
def test_spec_edits_during_a_live_canary_are_ignored_with_a_warning() -> None:
    world = observing()
    # a peek at the published numbers, then someone shortens maxDuration and loosens alpha
    edited = world.gen.spec.model_copy(
        update={
            "canary": world.gen.spec.canary.model_copy(update={"max_duration": "2d"}),
            "promotion": world.gen.spec.promotion.model_copy(update={"alpha": 0.2}),
        }
    )
    world.gen = world.gen.model_copy(
        update={"spec": edited, "metadata": world.gen.metadata.model_copy(update={"generation": 2})}
    )
    world.advance(3 * DAY)
    world.online = split(arm(18_000, 9_000, 4.0), arm(2_000, 1_000, 4.0), world.now)
    result = world.step()
    assert result.status.phase == "Observing", result.status.decision  # f9f8494 ended it at the edited 2d
    warnings = [e for e in result.events if e.reason == "PlanFrozen"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    assert "canary.maxDuration" in warnings[0].message and "promotion.alpha" in warnings[0].message
    plan = result.status.online.plan
    assert plan is not None and plan.max_duration == "7d" and plan.promotion.alpha == 0.05
    assert plan.schedule_hours[-1] == 168.0 and plan.alpha.efficacy["depth"] > 0
    assert result.status.online.ignored_spec_generation == 2
    world.advance(timedelta(hours=6))
    world.online = split(arm(18_000, 9_000, 4.0), arm(2_000, 1_000, 4.0), world.now)
    assert not [e for e in world.step().events if e.reason == "PlanFrozen"]  # said once per spec generation


def test_final_test_quantities_are_not_published_before_max_duration() -> None:
    world = observing()
    for day in range(1, 7):
        world.advance(DAY)
        world.online = split(arm(18_000 * day, 9_000 * day, 4.0), arm(2_000 * day, 1_000 * day, 4.04), world.now)
        world.step()
        numbers = world.status.online.decision.numbers
        assert not [k for k in numbers if "final" in k], numbers  # f9f8494 wrote depth.final_test_lower every look


# ------------------------------------------------------------------ problem 2: deterioration, both sides
def test_a_canary_worse_at_the_end_is_rolled_back_not_inconclusive() -> None:
    """Depth −3 % with a standard error of 1.2 %: never worse by the always-valid test, worse at maxDuration."""
    world = observing()
    for _ in range(1, 8):
        world.advance(DAY)
        world.online = split(arm(18_000, 9_000, 4.0), arm(2_000, 1_000, 3.88), world.now)
        if world.step().status.phase != "Observing":
            break
    status = world.status
    assert status.phase == "RolledBack" and status.decision.outcome == "ROLL_BACK", status.decision
    assert any("depth is significantly worse at the scheduled look" in r for r in status.decision.reasons)
    assert world.now - T0 <= 7 * DAY


def test_a_metric_significantly_worse_blocks_promotion_on_another_metrics_win() -> None:
    """Breadth +12 % (decisive), depth −3 %: f9f8494 promoted on the breadth win; now depth holds promotion back
    and its deterioration boundary rolls the canary back by maxDuration."""
    world = observing()
    for _ in range(1, 8):
        world.advance(DAY)
        world.online = split(arm(18_000, 9_000, 4.0), arm(2_000, 1_120, 3.88), world.now)
        if world.step().status.phase != "Observing":
            break
    status = world.status
    assert status.decision.outcome == "ROLL_BACK", status.decision
    blocked = [h.status.online.decision for h in world.history if h.status.online and h.status.online.decision]
    assert any(any("no promotion on another metric's win" in r for r in d.reasons) for d in blocked)


# ---------------------------------------------------------------- problem 4: a grace window for the last look
def test_a_failed_reading_at_max_duration_loses_no_decision() -> None:
    world = observing(promotion={"noveltyWindow": "0d"})  # the harness's sums do not grow: no recent window
    lift = 1.028  # +2.8 % depth, z = 2.37: below every interim boundary, above the last one (2.32)
    for _ in range(1, 7):
        world.advance(DAY)
        world.online = split(arm(18_000, 9_000, 4.0), arm(2_000, 1_000, 4.0 * lift), world.now)
        world.step()
    assert world.status.phase == "Observing"
    world.advance(DAY)
    world.online = OnlineReading(at=world.now, error="Prometheus answered 503")
    result = world.step()
    assert result.status.phase == "Observing", result.status.decision  # f9f8494: INCONCLUSIVE here
    assert any("finalLookGrace" in r for r in result.status.online.decision.reasons)
    assert result.requeue_at == world.now + timedelta(minutes=5)
    world.advance(timedelta(minutes=5))
    world.online = split(arm(18_000, 9_000, 4.0), arm(2_000, 1_000, 4.0 * lift), world.now)
    after = world.step()
    assert after.status.decision is not None and after.status.decision.outcome == "PROMOTE", after.status.decision
    assert "scheduled look 28" in after.status.decision.reasons[0]


def test_the_grace_window_ends_inconclusive() -> None:
    world = observing()
    world.advance(7 * DAY + timedelta(hours=2))
    world.online = OnlineReading(at=world.now, error="Prometheus answered 503")
    assert world.step().status.decision.outcome == "INCONCLUSIVE"


# ------------------------------------------------- problem 5: range checks, refusal, a zero variance
def test_impossible_per_user_sums_are_refused_not_decided_on() -> None:
    world = observing()
    world.advance(3 * DAY)
    broken = arm(2_000, 1_000, 6.0).model_copy(update={"depth_sum_squares": 100.0})  # Σy² < (Σy)²/n
    world.online = split(arm(18_000, 9_000, 4.0), broken, world.now)
    result = world.step()
    assert result.status.phase == "Observing"  # f9f8494 promoted a +50 % depth lift from these sums
    reason = result.status.online.decision.reasons[0]
    assert "out of range" in reason and "Σdepth²" in reason and "fix" in reason


def test_a_reading_without_the_per_user_sums_is_refused_with_the_fix() -> None:
    world = observing()
    world.advance(3 * DAY)
    bare = {"responses_sum_squares": None, "guardrail_sum_squares": {}, "guardrail_cross_sums": {}}
    world.online = split(
        arm(18_000, 9_000, 4.0).model_copy(update=bare), arm(2_000, 1_300, 6.0).model_copy(update=bare), world.now
    )
    result = world.step()
    assert result.status.phase == "Observing"  # f9f8494 fell back to per-response variances and promoted
    reasons = result.status.online.decision.reasons
    assert any("is refused" in r and "fix: upgrade the exporter" in r for r in reasons)
