"""plan_flywheel against a simulated API server: generations decide with random outcomes, the operator restarts
(its last status write lost) at random steps, the list lags behind creates. The invariants of issue 27 hold at
every step: one generation in flight at most, the parent is the latest promoted, the window covers the previous
canary's days, pauses exactly when the stop rules say, and no restart ever creates a duplicate."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from flywheel_operator.api import FinalDecision, FlywheelGenerationStatus, OnlineDecision, OnlineStatus
from flywheel_operator.api.flywheel import (
    FINISHED_PHASES,
    FLYWHEEL_LABEL,
    WINDOW_ANNOTATION,
    Flywheel,
    FlywheelStatus,
    window_of,
)
from flywheel_operator.planner.flywheel import (
    CreateGeneration,
    DeleteGeneration,
    ObservedGeneration,
    plan_flywheel,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.foundation.manifests import minimal

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OUTCOMES = ("PROMOTE", "ROLL_BACK", "INCONCLUSIVE", "FAIL", "PROMOTE_FLAT")
PHASE_OF = {"PROMOTE": "Promoted", "PROMOTE_FLAT": "Promoted", "ROLL_BACK": "RolledBack",
            "INCONCLUSIVE": "RolledBack", "FAIL": "Failed"}


def flywheel_body(**spec: Any) -> dict[str, Any]:
    template = minimal()["spec"]
    for key in ("generation", "basePolicy"):
        template.pop(key)
    template["data"]["userTraffic"]["uri"] = "s3://logs/user/{{ window.start }}_{{ window.end }}/"
    template["resources"] = {"storage": {"uri": "s3://artifacts/{{ flywheel }}/{{ generation }}"}}
    body = {
        "apiVersion": "characterflywheel.io/v1alpha1", "kind": "Flywheel",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "uid-chat", "generation": 1,
                     "creationTimestamp": START.isoformat()},
        "spec": {"basePolicy": "s3://models/base", "template": {"spec": template}, **spec},
    }
    return body


def decided_status(outcome: str, at: datetime, name: str, canary_from: datetime) -> FlywheelGenerationStatus:
    lift, lower, upper = {"PROMOTE": (0.05, 0.01, 0.09), "PROMOTE_FLAT": (0.01, -0.02, 0.04)}.get(
        outcome, (-0.03, -0.06, 0.0))
    numbers = {"breadth.lift": lift, "breadth.lower": lower, "breadth.upper": upper}
    final = "PROMOTE" if outcome == "PROMOTE_FLAT" else outcome
    online = None if outcome == "FAIL" else OnlineStatus(
        started_at=canary_from, decision=OnlineDecision(outcome=final if final != "FAIL" else "ROLL_BACK",
                                                        numbers=numbers, at=at))
    return FlywheelGenerationStatus(
        phase=PHASE_OF[outcome], online=online,
        promoted_policy=f"s3://artifacts/{name}/rl/model" if final == "PROMOTE" else None,
        decision=FinalDecision(outcome=final, reasons=[f"{final.lower()} by test"], at=at))


@dataclass
class ApiServer:
    """Stored generations by name; `lag` creates are invisible to the next list (a stale informer cache)."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, FlywheelGenerationStatus] = field(default_factory=dict)
    created_at: dict[str, datetime] = field(default_factory=dict)
    creates: list[str] = field(default_factory=list)
    hidden: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)

    def listed(self) -> list[ObservedGeneration]:
        out = []
        for name, body in self.objects.items():
            if name in self.hidden:
                continue
            assert body["metadata"]["labels"][FLYWHEEL_LABEL] == "chat"
            out.append(ObservedGeneration(
                name=name, number=body["spec"]["generation"], status=self.statuses.get(name),
                parent=body["spec"].get("parent"), window=window_of(body["metadata"]["annotations"][WINDOW_ANNOTATION]),
                created_at=self.created_at[name]))
        return out

    def apply(self, actions, now: datetime, lag: bool) -> None:
        for action in actions:
            if isinstance(action, CreateGeneration):
                if action.name in self.objects or action.name in self.deleted:
                    continue  # AlreadyExists (a deleted one is never requested again: asserted below)
                self.objects[action.name] = action.body
                self.created_at[action.name] = now
                self.creates.append(action.name)
                if lag:
                    self.hidden.add(action.name)
            elif isinstance(action, DeleteGeneration):
                self.objects.pop(action.name, None)
                self.deleted.add(action.name)


def run(body: dict[str, Any], outcomes: list[str], restarts: list[bool], lags: list[bool], steps: int = 60):
    """Drive the flywheel; yield (flywheel, status, server, now) after every step for the invariants."""
    server = ApiServer()
    status: dict[str, Any] | None = None
    now = START
    script = iter(outcomes)
    for step in range(steps):
        flywheel = Flywheel.model_validate({**body, "status": status})
        result = plan_flywheel(flywheel, server.listed(), now)
        again = plan_flywheel(flywheel, server.listed(), now)
        assert again == result, "planning is a function of its inputs"
        server.apply(result.actions, now, lag=lags[step % len(lags)])
        server.hidden.clear() if step % 2 else None
        if not restarts[step % len(restarts)]:
            status = result.status.to_wire()  # else: the operator died before writing its status
        yield flywheel, result, server, now
        # the world: the generation in flight runs a canary for a day, then decides
        now += timedelta(hours=12)
        for name, _generation in server.objects.items():
            if name in server.statuses and server.statuses[name].phase in FINISHED_PHASES:
                continue
            started = server.created_at[name]
            if now - started >= timedelta(days=2):
                outcome = next(script, "PROMOTE")
                server.statuses[name] = decided_status(outcome, now, name, started + timedelta(days=1))
            else:
                server.statuses[name] = FlywheelGenerationStatus(phase="Observing")


def _check_invariants(flywheel: Flywheel, result, server: ApiServer) -> None:
    status = result.status
    # never two generations of one flywheel in flight (in the world and in the plan)
    live = [n for n in server.objects if (server.statuses.get(n) is None or
                                         server.statuses[n].phase not in FINISHED_PHASES)]
    assert len(live) <= 1, live
    assert sum(e.phase not in FINISHED_PHASES for e in status.trajectory) <= 1
    # no duplicate: every create names a new number, numbers follow each other
    assert len(server.creates) == len(set(server.creates))
    numbers = [int(n.rsplit("-", 1)[1]) for n in server.creates]
    assert numbers == list(range(1, len(numbers) + 1))
    for action in result.actions:
        if isinstance(action, CreateGeneration):
            assert action.name not in server.deleted
            spec = action.body["spec"]
            earlier = [e for e in status.trajectory if e.number < action.number]
            promoted = [e for e in earlier if e.phase == "Promoted"]
            # the parent is the latest promoted generation; before any, the base policy
            if promoted:
                assert spec["parent"] == promoted[-1].name and "basePolicy" not in spec
            else:
                assert spec["basePolicy"] == flywheel.spec.base_policy and "parent" not in spec
            # the window covers the previous canary's days and ends on the start day
            first, last = window_of(action.body["metadata"]["annotations"][WINDOW_ANNOTATION])
            canaries = [e.canary_started_at for e in earlier if e.canary_started_at]
            if canaries:
                assert first <= canaries[-1].date()
            decided = [e.decided_at for e in earlier if e.decided_at]
            if decided:
                assert last >= decided[-1].date()
            assert spec["data"]["userTraffic"]["uri"] == f"s3://logs/user/{first}_{last}/"
            assert (last - first).days + 1 >= flywheel.spec.window.days


@settings(max_examples=60)
@given(
    outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=12),
    restarts=st.lists(st.booleans(), min_size=1, max_size=7),
    lags=st.lists(st.booleans(), min_size=1, max_size=5),
    k=st.integers(1, 4),
    m=st.none() | st.integers(1, 3),
    max_generations=st.none() | st.integers(1, 8),
)
def test_invariants_hold_at_every_step_under_restarts(outcomes, restarts, lags, k, m, max_generations):
    body = flywheel_body(stopRules={"maxRollbacksInARow": k, "plateauGenerations": m,
                                    "maxGenerations": max_generations}, historyLimit=None,
                         window={"days": 1})  # one day: only the widening covers the previous canary
    for flywheel, result, server, _ in run(body, outcomes, restarts, lags):
        _check_invariants(flywheel, result, server)


@settings(max_examples=60)
@given(
    outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=12),
    k=st.integers(1, 4),
    m=st.none() | st.integers(1, 3),
    max_generations=st.none() | st.integers(1, 8),
)
def test_pauses_exactly_when_the_stop_rules_say(outcomes, k, m, max_generations):
    body = flywheel_body(stopRules={"maxRollbacksInARow": k, "plateauGenerations": m,
                                    "maxGenerations": max_generations})
    for _, result, _server, _ in run(body, outcomes, [False], [False]):
        status = result.status
        finished = [e for e in status.trajectory if e.phase in FINISHED_PHASES]
        flying = any(e.phase not in FINISHED_PHASES for e in status.trajectory)
        rollbacks = plateau = 0
        for entry in reversed(finished):
            if entry.phase == "Promoted":
                break
            rollbacks += 1
        for entry in reversed(finished):
            flat = entry.decision == "INCONCLUSIVE" or (
                entry.phase == "Promoted" and entry.lift_interval[0] <= 0 <= entry.lift_interval[1])
            if not flat:
                break
            plateau += 1
        done = max_generations is not None and len(status.trajectory) >= max_generations
        expect_pause = not flying and not done and (rollbacks >= k or (m is not None and plateau >= m))
        assert (status.phase == "Paused") == expect_pause, (status.phase, rollbacks, plateau, status.message)
        paused = next(c for c in status.conditions if c.type == "Paused")
        assert (paused.status == "True") == expect_pause or flying
        if expect_pause:
            assert paused.reason == ("RollBacksInARow" if rollbacks >= k else "Plateau")
            assert "countFrom" in paused.message
        if not flying and done:
            assert status.phase == "Finished"
        if not flying and not done and not expect_pause:
            assert status.phase in ("Running", "Waiting")
    # a pause is announced once, as a Warning Event


def test_a_pause_posts_one_warning_event_and_count_from_resumes():
    body = flywheel_body(stopRules={"maxRollbacksInARow": 2})
    events = []
    steps = list(run(body, ["ROLL_BACK", "FAIL"], [False], [False], steps=12))
    for _, result, _, _ in steps:
        events += result.events
    paused = [e for e in events if e.reason == "FlywheelPaused"]
    assert len(paused) == 1 and paused[0].type == "Warning" and "2 generations in a row" in paused[0].message
    _flywheel, result, server, now = steps[-1]
    assert result.status.phase == "Paused" and not result.actions
    resumed = {**body, "spec": {**body["spec"], "stopRules": {"maxRollbacksInARow": 2, "countFrom": 3}}}
    again = plan_flywheel(Flywheel.model_validate({**resumed, "status": result.status.to_wire()}), server.listed(), now)
    assert [a.name for a in again.actions if isinstance(a, CreateGeneration)] == ["chat-3"]
    assert any(e.reason == "FlywheelResumed" for e in again.events)
    # the roll-backs left the parent unchanged: still the base policy
    create = next(a for a in again.actions if isinstance(a, CreateGeneration))
    assert create.body["spec"]["basePolicy"] == "s3://models/base"


def test_trajectory_records_the_climb_and_the_deployed_policy():
    body = flywheel_body(stopRules={"maxGenerations": 3})
    *_, (_, result, _, _) = run(body, ["PROMOTE", "ROLL_BACK", "PROMOTE"], [False], [False], steps=16)
    t = result.status.trajectory
    assert [(e.name, e.phase, e.parent) for e in t] == [
        ("chat-1", "Promoted", None), ("chat-2", "RolledBack", "chat-1"), ("chat-3", "Promoted", "chat-1")]
    assert [e.deployed_policy for e in t] == ["s3://artifacts/chat-1/rl/model", "s3://artifacts/chat-1/rl/model",
                                              "s3://artifacts/chat-3/rl/model"]
    assert t[0].lift == 0.05 and t[0].lift_interval == [0.01, 0.09]
    assert result.status.phase == "Finished" and result.status.last_promoted == "chat-3"
    assert result.status.streak == "1 promoted"


@pytest.mark.parametrize(("schedule", "expected"), [
    ({"policy": "on-decision"}, timedelta(0)),
    ({"policy": "interval", "interval": "7d"}, timedelta(days=5)),  # decided 2 days after its start
])
def test_schedules(schedule, expected):
    body = flywheel_body(schedule=schedule)
    steps = list(run(body, ["PROMOTE"], [False], [False], steps=6))
    _, result, _server, _now = steps[-1]
    first = result.status.trajectory[0]
    if len(result.status.trajectory) > 1:
        second = result.status.trajectory[1]
        gap = second.requested_at - first.decided_at
    else:
        assert result.status.phase == "Waiting"
        gap = result.status.next_start_at - first.decided_at
    assert gap == expected


def test_cron_starts_at_the_first_time_after_creation_then_after_each_decision():
    body = flywheel_body(schedule={"policy": "cron", "cron": "0 6 * * *"})
    waiting = plan_flywheel(Flywheel.model_validate(body), [], START)
    assert waiting.status.phase == "Waiting" and not waiting.actions
    assert waiting.status.next_start_at == datetime(2026, 12, 2, 6, 0, tzinfo=UTC) == waiting.requeue_at
    steps = list(run(body, ["ROLL_BACK"], [False], [False], steps=10))
    first, second = steps[-1][1].status.trajectory[:2]
    assert first.requested_at == datetime(2026, 12, 2, 9, 0, tzinfo=UTC)  # the first step at or after 06:00
    assert first.decided_at == datetime(2026, 12, 4, 9, 0, tzinfo=UTC)  # the world decides after two days
    assert second.requested_at == datetime(2026, 12, 5, 9, 0, tzinfo=UTC)  # next 06:00 after the decision


def test_history_limit_keeps_the_parent_and_deletes_oldest_first():
    body = flywheel_body(historyLimit=1, stopRules={"maxRollbacksInARow": None, "maxGenerations": 4})
    deleted = []
    for _, result, _, _ in run(body, ["PROMOTE", "ROLL_BACK", "ROLL_BACK", "ROLL_BACK"], [False], [False], steps=20):
        deleted += [a.name for a in result.actions if isinstance(a, DeleteGeneration)]
    assert "chat-1" not in deleted  # the latest promoted generation: the next parent
    assert deleted == ["chat-2", "chat-3"]
    assert len(result.status.trajectory) == 4  # the trajectory keeps every generation


def test_the_longest_generation_name_must_fit_every_derived_name():
    body = flywheel_body()
    body["spec"]["template"]["spec"]["canary"]["inferenceService"] = "x" * 33
    with pytest.raises(Exception, match=r"template.spec.canary.inferenceService[\s\S]*chat-999999"):
        Flywheel.model_validate(body)
    body["spec"]["stopRules"] = {"maxGenerations": 9}  # chat-9: short enough
    body["spec"]["template"]["spec"]["canary"]["inferenceService"] = "x" * 33
    Flywheel.model_validate(body)


def test_unknown_template_variable_is_refused_with_its_path():
    body = flywheel_body()
    body["spec"]["template"]["spec"]["data"]["userTraffic"]["uri"] = "s3://logs/{{ window.begin }}/"
    with pytest.raises(Exception, match=r"userTraffic.uri[\s\S]*window.begin"):
        Flywheel.model_validate(body)


def test_window_of_first_generation_is_days_up_to_the_start():
    body = flywheel_body(window={"days": 3})
    result = plan_flywheel(Flywheel.model_validate(body), [], START)
    (create,) = result.actions
    assert create.body["metadata"]["annotations"][WINDOW_ANNOTATION] == "2026-11-29/2026-12-01"
    assert create.body["metadata"]["ownerReferences"][0]["uid"] == "uid-chat"
    assert create.body["spec"]["resources"]["storage"]["uri"] == "s3://artifacts/chat/1"
    assert FlywheelStatus.model_validate(result.status.to_wire()).trajectory[0].window == [
        date(2026, 11, 29), date(2026, 12, 1)]


def test_suspend_starts_nothing_new_and_resuming_starts_the_next():
    body = flywheel_body(suspend=True)
    result = plan_flywheel(Flywheel.model_validate(body), [], START)
    assert result.status.phase == "Suspended" and not result.actions
    assert next(c for c in result.status.conditions if c.type == "Ready").reason == "Suspended"
    body["spec"]["suspend"] = False
    again = plan_flywheel(Flywheel.model_validate({**body, "status": result.status.to_wire()}), [], START)
    assert [a.name for a in again.actions] == ["chat-1"] and again.status.phase == "Running"
    assert [e.reason for e in again.events] == ["GenerationStarted", "FlywheelResumed"]


def test_a_generation_deleted_before_it_decided_does_not_block_the_flywheel():
    body = flywheel_body()
    first = plan_flywheel(Flywheel.model_validate(body), [], START)
    seen = [ObservedGeneration(name="chat-1", number=1, status=FlywheelGenerationStatus(phase="SFT"))]
    running = plan_flywheel(Flywheel.model_validate({**body, "status": first.status.to_wire()}), seen, START)
    assert running.status.in_flight == "chat-1" and not running.actions
    gone = plan_flywheel(Flywheel.model_validate({**body, "status": running.status.to_wire()}), [], START)
    assert gone.status.trajectory[0].phase == "Deleted"
    assert [a.name for a in gone.actions] == ["chat-2"]  # the parent is still the base policy
    assert gone.actions[0].body["spec"]["basePolicy"] == "s3://models/base"
