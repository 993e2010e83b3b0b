"""The planner at its edges (issue 31: mutants `make mutation` found surviving or unreached in planner/core.py):
a permanent stage failure, the LIFT column, and the divergence alarm recorded in the status."""

from __future__ import annotations

from datetime import timedelta

from flywheel_operator.api import OnlineReading
from flywheel_operator.planner.observed import CanaryObservation, JobObservation

from tests.planner.harness import World, arm, generation, reading


def test_a_permanent_failure_fails_the_stage_at_once_whatever_attempts_are_left() -> None:
    world = World(generation())
    world.step()
    world.jobs["gen2-curate-1"] = JobObservation(
        name="gen2-curate-1", state="Failed", message="config: unknown field 'bogus'", permanent=True
    )
    result = world.step()
    record = next(r for r in result.status.stages if r.name == "curate")
    assert record.state == "Failed" and record.attempts == 1 and record.finished_at == world.now
    assert record.message == "config: unknown field 'bogus' (a permanent error: not retried)"
    assert result.status.phase == "Failed" and result.status.decision.outcome == "FAIL"
    assert [e.reason for e in result.events][:2] == ["StageFailed", "GenerationFailed"]
    assert "failed for good: config: unknown field 'bogus' (a permanent error: not retried)" in result.events[0].message
    assert "gen2-curate-2" not in world.created


def observing(**offline: object) -> World:
    world = World(generation())
    world.train_through(**offline)
    world.canary = CanaryObservation(ready=True)
    world.step()
    return world


def test_the_lift_column_shows_depth_then_breadth() -> None:
    world = observing()
    world.advance(timedelta(hours=6))
    world.online = reading(world.now, lift=0.04, users=20_000)
    result = world.step()
    depth, breadth = (result.status.online.decision.numbers[f"{m}.lift"] for m in ("depth", "breadth"))
    assert result.status.lift == f"depth {depth:+.1%} breadth {breadth:+.1%}"
    few = observing()
    few.advance(timedelta(hours=6))
    few.online = OnlineReading(at=few.now, control=arm(270, 100, 4.0), treatment=arm(30, 10, 4.0))
    assert few.step().status.lift is None  # no lift is judged below minUsersPerArm: no column


def test_a_high_offline_win_rate_that_users_did_not_confirm_is_recorded_at_the_end() -> None:
    """The V12 alarm: the offline reward model liked the candidate (0.6 win rate), users showed no lift; the canary
    ends and the status keeps the failed divergence check next to a Warning Event."""
    world = observing(win_rate_user=0.6)
    for _ in range(8):
        world.advance(timedelta(days=1))
        world.online = reading(world.now, lift=0.0, users=40_000)
        result = world.step()
        if result.status.phase in ("RolledBack", "Promoted"):
            break
    divergence = world.status.online.divergence
    assert world.status.phase == "RolledBack" and divergence is not None and not divergence.passed
    assert divergence.name == "offline-online-divergence"
    assert any(e.reason == "OfflineOnlineDivergence" for e in result.events)


def test_the_end_of_a_canary_is_announced_by_its_event() -> None:
    won = observing()
    for day in range(1, 8):
        won.advance(timedelta(days=1))
        won.online = reading(won.now, lift=0.10, users=20_000 * day)
        result = won.step()
        if result.status.phase == "Promoted":
            break
    promoted = [e for e in result.events if e.reason == "Promoted"]
    assert len(promoted) == 1 and promoted[0].type == "Normal" and promoted[0].message.startswith("promoted: ")
    lost = observing()
    for _ in range(8):
        lost.advance(timedelta(days=1))
        lost.online = reading(lost.now, lift=-0.15, users=100_000)
        result = lost.step()
        if result.status.phase == "RolledBack":
            break
    rolled = [e for e in result.events if e.reason == "RolledBack"]
    assert len(rolled) == 1 and rolled[0].type == "Warning"
    assert rolled[0].message.startswith("rolled back (ROLL_BACK): ")


def test_a_canary_is_deployed_polled_and_announced_ready() -> None:
    from flywheel_operator.planner.core import CANARY_POLL

    world = World(generation())
    world.step()
    for _ in range(20):
        result = world.step()
        if any(e.reason == "CanaryDeploying" for e in result.events):
            break
        for child in world.running():
            world.finish(child)
    deploying = next(e for e in result.events if e.reason == "CanaryDeploying")
    assert deploying.message == "serving /a/candidate to 10% of users" and deploying.type == "Normal"
    assert result.requeue_at == world.now + CANARY_POLL
    world.advance(timedelta(seconds=30))
    waiting = world.step()  # not Ready yet: look again a poll later
    assert waiting.status.canary.phase == "Deploying" and waiting.requeue_at == world.now + CANARY_POLL
    world.canary = CanaryObservation(ready=True)
    ready = world.step()
    assert [(e.reason, e.message) for e in ready.events] == [("CanaryReady", "canary on chat is Ready")]


def test_the_offline_gate_is_announced_passed_or_failed() -> None:
    events = []
    world = World(generation())
    world.step()
    for _ in range(20):
        for child in world.running():
            world.finish(child)
        events += world.step().events
        if world.status.offline_gate is not None:
            break
    assert [(e.message, e.type) for e in events if e.reason == "OfflineGate"] == [("offline gate passed", "Normal")]
    failed = World(generation())
    failed.train_through(win_rate_user=0.9)
    gate_events = [e for plan in failed.history for e in plan.events if e.reason == "OfflineGate"]
    assert len(gate_events) == 1 and gate_events[0].type == "Warning"
    assert gate_events[0].message.startswith("offline gate failed: win-rate-band: ")


def test_no_stage_is_named_once_the_pipeline_finished() -> None:
    world = World(generation())
    world.train_through()
    assert world.status.phase == "Canary" and world.status.stage is None
