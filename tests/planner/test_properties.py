"""Planner invariants under random sequences of observations (hypothesis)."""

from __future__ import annotations

from datetime import timedelta

from flywheel_operator.api import OnlineReading, parse_duration
from flywheel_operator.planner import DeployCanary, StartStage, plan
from flywheel_operator.planner.observed import CanaryObservation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.planner.harness import World, generation, reading

# One move of the world between two reconciles.
moves = st.one_of(
    st.tuples(st.just("finish"), st.booleans(), st.floats(0.3, 0.8), st.floats(0.3, 0.8)),
    st.tuples(st.just("wait"), st.integers(1, 60 * 24 * 3)),  # minutes
    st.tuples(st.just("canary"), st.booleans()),
    st.tuples(st.just("reading"), st.floats(-0.3, 0.3), st.integers(0, 200_000), st.booleans()),
)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def apply(world: World, move) -> None:
    kind = move[0]
    if kind == "finish":
        _, ok, win_user, win_internal = move
        for child in world.running()[:1]:
            world.finish(child, ok=ok, win_rate_user=win_user, win_rate_internal=win_internal)
    elif kind == "wait":
        world.advance(timedelta(minutes=move[1]))
    elif kind == "canary":
        world.canary = CanaryObservation(ready=move[1])
    else:
        _, lift, users, outage = move
        world.online = (
            OnlineReading(at=world.now, error="prometheus unreachable")
            if outage
            else reading(world.now, lift=lift, users=max(users, 10))
        )


# A whole generation: stages that mostly succeed, random offline metrics, then a canary and its readings.
journeys = st.tuples(
    st.lists(st.sampled_from([True, True, True, False]), min_size=12, max_size=12),
    st.floats(0.4, 0.75),
    st.floats(0.4, 0.75),
    st.booleans(),
    st.lists(
        st.tuples(
            st.integers(60, 60 * 48),
            st.floats(-0.3, 0.3),
            st.integers(10, 300_000),
            st.sampled_from([False] * 5 + [True]),
        ),
        max_size=15,
    ),
)


def journey_moves(journey) -> list:
    outcomes, win_user, win_internal, ready, readings = journey
    steps: list = []
    for ok in outcomes:
        steps += [("finish", ok, win_user, win_internal), ("wait", 2)]
    steps.append(("canary", ready))
    for minutes, lift, users, outage in readings:
        steps += [("wait", minutes), ("reading", lift, users, outage)]
    return steps


@PROPERTY
@given(st.one_of(st.lists(moves, max_size=40), journeys.map(journey_moves)))
def test_planning_twice_on_the_same_observation_adds_nothing(history):
    world = World(generation())
    for move in history:
        apply(world, move)
        observed = world.observed()
        first = plan(world.gen, observed)
        again = plan(world.gen.model_copy(update={"status": first.status.to_wire()}), observed)
        assert again.actions == (), again.actions
        assert again.events == ()
        assert again.status == first.status
        world.step()


@PROPERTY
@given(journeys)
def test_promoted_only_after_passing_both_gates(journey):
    world = World(generation())
    for move in journey_moves(journey):
        apply(world, move)
        status = world.step().status
        if status.phase == "Promoted":
            assert status.offline_gate is not None and status.offline_gate.passed
            assert status.online.decision.outcome == "PROMOTE"
            assert status.online.readings[-1].has_data
            min_duration = parse_duration(world.gen.spec.canary.min_duration)
            assert status.online.decision.at - status.online.started_at >= min_duration
            break


@PROPERTY
@given(st.integers(1, 5), st.sampled_from(["curate", "reward-pointwise", "sft", "rl", "eval"]))
def test_stage_failing_past_max_attempts_ends_failed_with_a_reason(max_attempts, failing_stage):
    world = World(generation(retry={"maxAttempts": max_attempts, "backoff": "1s", "backoffFactor": 1}))
    world.step()
    for _ in range(40):
        for child in world.running():
            world.finish(child, ok=failing_stage not in child)
        world.advance(timedelta(seconds=1))
        if world.step().status.phase == "Failed":
            break
    status = world.status
    assert status.phase == "Failed"
    assert status.record(failing_stage).attempts == max_attempts
    assert status.decision.outcome == "FAIL" and failing_stage in status.decision.reasons[0]
    assert sum(failing_stage in c for c in world.created) == max_attempts


@PROPERTY
@given(st.lists(moves, max_size=30), st.integers(0, 30))
def test_suspended_generation_starts_nothing(history, suspend_after):
    world = World(generation())
    for index, move in enumerate(history):
        if index == suspend_after:
            world.gen = world.gen.model_copy(update={"spec": world.gen.spec.model_copy(update={"suspend": True})})
        apply(world, move)
        result = world.step()
        if world.gen.spec.suspend:
            assert not [a for a in result.actions if isinstance(a, StartStage | DeployCanary)]
            if world.status.phase not in ("Promoted", "RolledBack", "Failed"):
                assert result.actions == () and world.status.phase == "Suspended"


@PROPERTY
@given(st.one_of(st.lists(moves, max_size=40), journeys.map(journey_moves)))
def test_finished_condition_is_true_exactly_on_terminal_phases(history):
    """`kubectl wait --for=condition=Finished` returns on Promoted, RolledBack and Failed alike, and only then."""
    world = World(generation(retry={"maxAttempts": 2, "backoff": "1s"}))
    for move in history:
        apply(world, move)
        status = world.step().status
        finished = {c.type: c for c in status.conditions}["Finished"]
        assert (finished.status == "True") == (status.phase in ("Promoted", "RolledBack", "Failed"))
        if finished.status == "True":
            assert finished.reason == status.phase
