"""plan_flywheel rule by rule, one plan per case (issue 31: mutants of planner/flywheel.py that the simulated runs
of test_flywheel.py let survive or never reached): what an observed generation writes into its trajectory entry,
the counters and streaks, each stop rule at its boundary and its message, the schedules at their edges, the
traffic window, the generation body, a template the API refuses, the history limit, the Events and the
conditions. Each case plans once, so `make mutation` checks a mutant of this module in seconds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from flywheel_operator.api import (
    CanaryStatus,
    FinalDecision,
    FlywheelGenerationStatus,
    OfflineGateResult,
    OfflineMetrics,
    OnlineDecision,
    OnlineStatus,
    StyleStats,
)
from flywheel_operator.api.flywheel import (
    FLYWHEEL_LABEL,
    WINDOW_ANNOTATION,
    Flywheel,
    FlywheelStatus,
    TrajectoryEntry,
)
from flywheel_operator.planner.flywheel import (
    CREATE_VISIBILITY_GRACE,
    CreateGeneration,
    DeleteGeneration,
    ObservedGeneration,
    plan_flywheel,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.planner.test_flywheel import START, flywheel_body

BASE = "s3://models/base"
DAY = timedelta(days=1)
STYLE = StyleStats(emoji_rate=0.2, list_rate=0.05, mean_length=30.0, stock_phrase_rate=0.05)


def flywheel(status: FlywheelStatus | None = None, **spec: Any) -> Flywheel:
    """The Flywheel `chat` of test_flywheel.py with `spec` and the status it last wrote."""
    body = flywheel_body(**spec)
    return Flywheel.model_validate({**body, "status": status.to_wire() if status is not None else None})


def entry(number: int, phase: str, **fields: Any) -> TrajectoryEntry:
    """A trajectory entry of the Flywheel `chat`; a finished one decided on day `number` unless told."""
    finished = phase in ("Promoted", "RolledBack", "Failed")
    fields.setdefault("requested_at", START + (number - 1) * DAY)
    if finished:
        fields.setdefault("decided_at", START + number * DAY - timedelta(hours=1))
        fields.setdefault("decision", {"Promoted": "PROMOTE", "RolledBack": "ROLL_BACK", "Failed": "FAIL"}[phase])
    if phase == "Promoted":
        fields.setdefault("deployed_policy", f"s3://artifacts/chat-{number}/rl/model")
    return TrajectoryEntry(number=number, name=f"chat-{number}", phase=phase, **fields)


def seen(number: int, phase: str = "Observing", **status: Any) -> ObservedGeneration:
    return ObservedGeneration(name=f"chat-{number}", number=number,
                              status=FlywheelGenerationStatus(phase=phase, **status))


def creates(result) -> list[CreateGeneration]:
    return [a for a in result.actions if isinstance(a, CreateGeneration)]


def condition(result, kind: str):
    return next(c for c in result.status.conditions if c.type == kind)


# ------------------------------------------------------------------------------------------ observed → entry
def test_an_observed_generation_fills_its_trajectory_entry_field_by_field() -> None:
    requested = FlywheelStatus(trajectory=[entry(1, "Requested", starting_policy=BASE, deployed_policy=BASE,
                                                 window=[date(2026, 11, 25), date(2026, 12, 1)])])
    metrics = OfflineMetrics(win_rate_user=0.61, instruction_following=0.9, violation_rate=0.01,
                             false_refusal_rate=0.02, style=STYLE, parent_style=STYLE)
    canary_at = START + timedelta(hours=30)
    observed = ObservedGeneration(
        name="chat-1", number=1, parent=None, window=(date(2026, 11, 24), date(2026, 12, 1)),
        status=FlywheelGenerationStatus(
            phase="Observing", policy="s3://models/base@v2",
            offline_gate=OfflineGateResult(passed=True, metrics=metrics),
            canary=CanaryStatus(phase="Ready", inference_service="chat", mode="standard", traffic_percent=5,
                                candidate_policy="c", control_policy="p", requested_at=canary_at - DAY,
                                ready_at=canary_at - timedelta(hours=2)),
            online=OnlineStatus(started_at=canary_at, decision=OnlineDecision(outcome="CONTINUE", numbers={
                "breadth.lift": 0.04, "breadth.lower": -0.01, "breadth.upper": 0.09, "depth.lift": 0.02}))))
    result = plan_flywheel(flywheel(requested), [observed], START + 2 * DAY)
    (got,) = result.status.trajectory
    assert got.phase == "Observing" and got.starting_policy == "s3://models/base@v2"
    assert got.window == [date(2026, 11, 24), date(2026, 12, 1)]  # what the generation carries wins
    assert got.offline_win_rate == 0.61
    assert got.canary_started_at == canary_at  # the online gate's start, not the canary's readiness
    assert (got.lift, got.lift_interval, got.depth_lift) == (0.04, [-0.01, 0.09], 0.02)
    assert got.decision is None and got.decided_at is None and got.reason is None
    assert result.status.in_flight == "chat-1" and result.status.in_flight_phase == "Observing"
    assert result.status.message == "generation 1 (chat-1) is Observing"
    assert result.status.phase == "Running" and result.status.next_start_at is None and not result.actions


def test_the_canary_start_falls_back_to_its_readiness_and_a_half_interval_is_none() -> None:
    ready = START + timedelta(hours=20)
    status = FlywheelGenerationStatus(
        phase="Observing",
        canary=CanaryStatus(phase="Ready", inference_service="chat", mode="standard", traffic_percent=5,
                            candidate_policy="c", control_policy="p", requested_at=START, ready_at=ready),
        online=OnlineStatus(decision=OnlineDecision(outcome="CONTINUE", numbers={
            "breadth.lift": 0.03, "breadth.lower": 0.01})))
    requested = FlywheelStatus(trajectory=[entry(1, "Requested", starting_policy=BASE)])
    result = plan_flywheel(flywheel(requested), [ObservedGeneration("chat-1", 1, status)], START + DAY)
    (got,) = result.status.trajectory
    assert got.canary_started_at == ready
    assert got.lift == 0.03 and got.lift_interval is None and got.depth_lift is None
    assert got.starting_policy == BASE  # the generation reports no policy yet: the requested one stays


def test_the_decision_reason_is_cut_at_300_characters_and_the_promoted_policy_is_deployed() -> None:
    decided = START + 2 * DAY
    requested = FlywheelStatus(trajectory=[entry(1, "Requested", starting_policy=BASE)])
    observed = seen(1, "Promoted", promoted_policy="s3://artifacts/chat-1/rl/model",
                    decision=FinalDecision(outcome="PROMOTE", reasons=["x" * 299 + "yz" + "w" * 99, "second"],
                                           at=decided))
    result = plan_flywheel(flywheel(requested, stopRules={"maxGenerations": 1}), [observed], decided)
    (got,) = result.status.trajectory
    assert got.reason == "x" * 299 + "y" and got.decision == "PROMOTE" and got.decided_at == decided
    assert got.deployed_policy == "s3://artifacts/chat-1/rl/model"
    assert result.status.deployed_policy == "s3://artifacts/chat-1/rl/model"
    assert result.status.last_promoted == "chat-1"
    no_reason = seen(1, "RolledBack", decision=FinalDecision(outcome="ROLL_BACK", reasons=[], at=decided))
    got = plan_flywheel(flywheel(requested), [no_reason], decided).status.trajectory[0]
    assert got.reason is None and got.decision == "ROLL_BACK" and got.deployed_policy == BASE


def test_a_generation_first_seen_unrequested_gets_an_entry_and_decided_ones_never_change() -> None:
    created = START - timedelta(hours=3)
    stray = ObservedGeneration(name="chat-4", number=4, status=None, created_at=created, parent="chat-1")
    result = plan_flywheel(flywheel(), [stray], START)
    (got,) = result.status.trajectory
    assert (got.number, got.name, got.phase, got.requested_at, got.parent) == (4, "chat-4", "Pending", created,
                                                                               "chat-1")
    # another Flywheel's generation (its name does not derive from this one's) is not one of this one's
    other = plan_flywheel(flywheel(), [ObservedGeneration("other-4", 4)], START)
    assert [(e.number, e.phase) for e in other.status.trajectory] == [(1, "Requested")]
    decided = FlywheelStatus(trajectory=[entry(1, "Promoted", reason="promoted by test"), entry(2, "RL")])
    later = seen(1, "RolledBack", decision=FinalDecision(outcome="ROLL_BACK", reasons=["changed"], at=START))
    first, second = plan_flywheel(flywheel(decided), [later, seen(2, "Evaluating")], START + 3 * DAY).status.trajectory
    assert (first.phase, first.decision, first.reason) == ("Promoted", "PROMOTE", "promoted by test")
    assert second.phase == "Evaluating"  # the generations after a decided one are still read
    # a generation listed out of order (a lower number than the trajectory's last) is filed in order
    late = plan_flywheel(flywheel(FlywheelStatus(trajectory=[entry(5, "Promoted")])), [seen(4, "SFT")], START)
    assert [(e.number, e.phase) for e in late.status.trajectory] == [(4, "SFT"), (5, "Promoted")]


def test_a_generation_gone_before_deciding_is_deleted_but_a_requested_one_is_awaited() -> None:
    status = FlywheelStatus(trajectory=[entry(1, "Observing")])
    gone = plan_flywheel(flywheel(status), [], START).status.trajectory[0]
    assert (gone.phase, gone.decision) == ("Deleted", "FAIL")
    assert gone.reason == "the FlywheelGeneration was deleted before it decided"
    assert gone.deployed_policy == BASE
    status = FlywheelStatus(trajectory=[entry(1, "Requested")])
    (waiting,) = plan_flywheel(flywheel(status), [], START).status.trajectory
    assert waiting.phase == "Requested" and waiting.decision is None


def test_each_finished_generation_records_what_served_users_after_it() -> None:
    status = FlywheelStatus(trajectory=[entry(1, "RolledBack"), entry(2, "Promoted"), entry(3, "Failed"),
                                        entry(4, "RolledBack", deployed_policy="s3://stale")])
    result = plan_flywheel(flywheel(status, stopRules={"maxGenerations": 4}), [], START + 5 * DAY)
    assert [e.deployed_policy for e in result.status.trajectory] == [
        BASE, "s3://artifacts/chat-2/rl/model", "s3://artifacts/chat-2/rl/model", "s3://artifacts/chat-2/rl/model"]
    assert result.status.deployed_policy == "s3://artifacts/chat-2/rl/model"
    assert result.status.last_promoted == "chat-2"


# ---------------------------------------------------------------------------------------- counters and rules
PHASES = ("Promoted", "RolledBack", "Failed", "Deleted")
INTERVALS = (None, [0.01, 0.05], [0.0, 0.05], [-0.02, 0.0], [-0.02, 0.03], [-0.05, -0.01])


@st.composite
def histories(draw: st.DrawFn) -> list[TrajectoryEntry]:
    entries = []
    for number in range(1, draw(st.integers(1, 7)) + 1):
        phase = draw(st.sampled_from(PHASES))
        fields: dict[str, Any] = {"reason": draw(st.none() | st.sampled_from(["r", "because"]))}
        if phase == "Deleted":
            fields.update(decision="FAIL", decided_at=None)
        elif phase == "RolledBack":
            fields["decision"] = draw(st.sampled_from(["ROLL_BACK", "INCONCLUSIVE"]))
        if phase == "Promoted":
            fields["lift_interval"] = draw(st.sampled_from(INTERVALS))
        entries.append(entry(number, phase, **fields))
    return entries


def _flat(e: TrajectoryEntry) -> bool:
    if e.decision == "INCONCLUSIVE":
        return True
    return e.phase == "Promoted" and e.lift_interval is not None and e.lift_interval[0] <= 0 <= e.lift_interval[1]


def _run_of(entries: list[TrajectoryEntry], test) -> int:
    count = 0
    while count < len(entries) and test(entries[len(entries) - 1 - count]):
        count += 1
    return count


@settings(max_examples=200)
@given(history=histories(), k=st.none() | st.integers(1, 4), m=st.none() | st.integers(1, 3),
       max_generations=st.none() | st.integers(1, 8), count_from=st.integers(0, 5), suspend=st.booleans())
def test_counters_streaks_and_the_stop_rules_follow_the_trajectory(history, k, m, max_generations, count_from,
                                                                   suspend) -> None:
    rules = {"maxRollbacksInARow": k, "plateauGenerations": m, "maxGenerations": max_generations,
             "countFrom": count_from}
    now = START + 30 * DAY
    result = plan_flywheel(flywheel(FlywheelStatus(trajectory=history), stopRules=rules, suspend=suspend), [], now)
    status = result.status
    counted = [e for e in history if e.number >= count_from]
    promotions = _run_of(history, lambda e: e.phase == "Promoted")
    rollbacks = _run_of(counted, lambda e: e.phase != "Promoted")
    plateau = _run_of(counted, _flat)
    assert (status.promotions_in_a_row, status.rollbacks_in_a_row, status.plateau_in_a_row) == (
        promotions, rollbacks, plateau)
    assert status.streak == (f"{rollbacks} rolled back" if rollbacks else f"{promotions} promoted" if promotions
                             else None)
    promoted = [e for e in history if e.phase == "Promoted"]
    assert status.last_promoted == (promoted[-1].name if promoted else None)
    assert status.deployed_policy == (promoted[-1].deployed_policy if promoted else BASE)
    last = history[-1]
    if max_generations is not None and len(history) >= max_generations:
        event("Finished")
        assert status.phase == "Finished" and not result.actions
        assert status.message == (f"all {max_generations} generations (stopRules.maxGenerations) have decided; "
                                  "raise it to go on")
        assert condition(result, "Finished").status == "True" and condition(result, "Paused").status == "False"
    elif k is not None and rollbacks >= k:
        event("Paused: roll-backs")
        assert status.phase == "Paused" and not result.actions
        assert status.message == (
            f"paused: {rollbacks} generations in a row rolled back or failed (stopRules.maxRollbacksInARow {k}; "
            f"the last, {last.number}: {last.reason or last.decision}); fix the cause, then set "
            f"spec.stopRules.countFrom: {last.number + 1} to resume")
        paused = condition(result, "Paused")
        assert (paused.status, paused.reason, paused.message) == ("True", "RollBacksInARow", status.message)
    elif m is not None and plateau >= m:
        event("Paused: plateau")
        assert status.phase == "Paused" and not result.actions
        assert status.message == (
            f"paused: {plateau} generations in a row without a clear lift (INCONCLUSIVE or a breadth interval "
            f"including 0; stopRules.plateauGenerations {m}); change the recipe, then set "
            f"spec.stopRules.countFrom: {last.number + 1} to resume")
        assert (condition(result, "Paused").reason, condition(result, "Paused").message) == ("Plateau",
                                                                                            status.message)
    elif suspend:
        event("Suspended")
        assert status.phase == "Suspended" and not result.actions
        assert status.message == "suspended (spec.suspend): no new generation starts"
    else:
        event("starts the next")
        (create,) = creates(result)
        assert create.number == last.number + 1 and status.phase == "Running"
        if promoted:
            assert create.body["spec"]["parent"] == promoted[-1].name and "basePolicy" not in create.body["spec"]
        else:
            assert create.body["spec"]["basePolicy"] == BASE and "parent" not in create.body["spec"]
        assert create.since_decision == (now - last.decided_at if last.decided_at else None)
        new = status.trajectory[-1]
        assert (new.number, new.phase, new.starting_policy, new.deployed_policy, new.requested_at) == (
            last.number + 1, "Requested", status.deployed_policy, status.deployed_policy, now)
    assert all(c.observed_generation == 1 for c in status.conditions)


@pytest.mark.parametrize(("interval", "flat"), [
    ([0.0, 0.05], True), ([-0.02, 0.0], True), ([-0.02, 0.03], True), ([0.001, 0.05], False),
    ([-0.05, -0.001], False), (None, False)])
def test_a_promotion_is_a_plateau_when_its_breadth_interval_includes_zero(interval, flat) -> None:
    status = FlywheelStatus(trajectory=[entry(1, "Promoted", lift_interval=interval)])
    result = plan_flywheel(flywheel(status, stopRules={"plateauGenerations": 1}), [], START + 3 * DAY)
    assert result.status.plateau_in_a_row == int(flat)
    assert (result.status.phase == "Paused") == flat
    assert condition(result, "Paused").reason == ("Plateau" if flat else "NotPaused")


def test_an_inconclusive_generation_is_a_plateau_and_count_from_resets_the_streaks() -> None:
    status = FlywheelStatus(trajectory=[entry(1, "RolledBack", decision="INCONCLUSIVE"),
                                        entry(2, "RolledBack", decision="INCONCLUSIVE")])
    result = plan_flywheel(flywheel(status, stopRules={"plateauGenerations": 2, "maxRollbacksInARow": 3}), [],
                           START + 3 * DAY)
    assert result.status.phase == "Paused" and result.status.plateau_in_a_row == 2
    assert result.status.rollbacks_in_a_row == 2 and result.status.streak == "2 rolled back"
    resumed = plan_flywheel(flywheel(status, stopRules={"plateauGenerations": 2, "countFrom": 2}), [],
                            START + 3 * DAY)
    assert (resumed.status.rollbacks_in_a_row, resumed.status.plateau_in_a_row) == (1, 1)
    assert resumed.status.phase == "Running" and [c.name for c in creates(resumed)] == ["chat-3"]


def test_stop_rules_apply_in_order_and_at_their_boundary() -> None:
    two = FlywheelStatus(trajectory=[entry(1, "RolledBack", decision="INCONCLUSIVE"),
                                     entry(2, "RolledBack", decision="INCONCLUSIVE", reason="no clear lift")])
    at = START + 3 * DAY
    both = plan_flywheel(flywheel(two, stopRules={"maxGenerations": 2, "maxRollbacksInARow": 2}), [], at)
    assert both.status.phase == "Finished" and condition(both, "Finished").reason == "MaxGenerations"
    paused = plan_flywheel(flywheel(two, stopRules={"maxGenerations": 3, "maxRollbacksInARow": 2,
                                                    "plateauGenerations": 1}, suspend=True), [], at)
    assert paused.status.phase == "Paused" and condition(paused, "Paused").reason == "RollBacksInARow"
    assert "the last, 2: no clear lift)" in paused.status.message  # its reason, not its decision
    below = plan_flywheel(flywheel(two, stopRules={"maxGenerations": 3, "maxRollbacksInARow": 3}), [], at)
    assert below.status.phase == "Running" and [c.name for c in creates(below)] == ["chat-3"]
    suspended = plan_flywheel(flywheel(two, stopRules={"maxRollbacksInARow": 3}, suspend=True), [], at)
    assert suspended.status.phase == "Suspended" and not suspended.actions


# ------------------------------------------------------------------------------------------------- schedule
def test_an_interval_counts_from_the_previous_start_unless_the_decision_came_later() -> None:
    last = entry(1, "RolledBack", requested_at=START, decided_at=START + 2 * DAY)
    now = START + 3 * DAY
    result = plan_flywheel(flywheel(FlywheelStatus(trajectory=[last]), schedule={"policy": "interval",
                                                                                 "interval": "7d"}), [], now)
    due = START + 7 * DAY
    assert result.status.phase == "Waiting" and result.status.next_start_at == due == result.requeue_at
    assert result.status.message == f"generation 2 starts at {due.isoformat()} (interval)"
    ready = condition(result, "Ready")
    assert not result.actions and (ready.status, ready.reason) == ("True", "WaitingForSchedule")
    late = entry(1, "RolledBack", requested_at=START, decided_at=START + 9 * DAY)
    waiting = plan_flywheel(flywheel(FlywheelStatus(trajectory=[late]), schedule={"policy": "interval",
                                                                                  "interval": "7d"}), [], now)
    assert waiting.status.next_start_at == START + 9 * DAY
    first = plan_flywheel(flywheel(schedule={"policy": "interval", "interval": "7d"}), [], now)
    assert [c.name for c in creates(first)] == ["chat-1"]  # nothing before it: at once


def test_on_decision_starts_from_the_decision_or_else_the_request() -> None:
    decided_later = entry(1, "RolledBack", decided_at=START + 5 * DAY)
    result = plan_flywheel(flywheel(FlywheelStatus(trajectory=[decided_later])), [], START + 2 * DAY)
    assert result.status.phase == "Waiting" and result.status.next_start_at == START + 5 * DAY
    assert result.status.message == f"generation 2 starts at {(START + 5 * DAY).isoformat()} (on-decision)"
    undecided = entry(1, "Deleted", decision="FAIL", requested_at=START + 4 * DAY, decided_at=None)
    result = plan_flywheel(flywheel(FlywheelStatus(trajectory=[undecided])), [], START + 2 * DAY)
    assert result.status.next_start_at == START + 4 * DAY and not result.actions


def test_cron_anchors_on_the_decision_the_request_or_now_and_a_time_on_the_mark_counts() -> None:
    cron = {"policy": "cron", "cron": "0 6 * * *"}
    on_the_mark = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)
    decided = entry(1, "RolledBack", decided_at=on_the_mark)
    result = plan_flywheel(flywheel(FlywheelStatus(trajectory=[decided]), schedule=cron), [], on_the_mark)
    assert [c.name for c in creates(result)] == ["chat-2"]  # 06:00 is at or after the decision at 06:00
    decided = entry(1, "RolledBack", decided_at=on_the_mark + timedelta(seconds=1))
    result = plan_flywheel(flywheel(FlywheelStatus(trajectory=[decided]), schedule=cron), [], on_the_mark)
    assert result.status.next_start_at == on_the_mark + DAY
    deleted = entry(1, "Deleted", decision="FAIL", requested_at=datetime(2026, 12, 5, 7, 0, tzinfo=UTC),
                    decided_at=None)
    result = plan_flywheel(flywheel(FlywheelStatus(trajectory=[deleted]), schedule=cron), [], on_the_mark)
    assert result.status.next_start_at == datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
    body = flywheel_body(schedule=cron)
    del body["metadata"]["creationTimestamp"]
    now = datetime(2026, 12, 9, 6, 30, tzinfo=UTC)
    result = plan_flywheel(Flywheel.model_validate(body), [], now)  # no creation time known: from now
    assert result.status.next_start_at == datetime(2026, 12, 10, 6, 0, tzinfo=UTC)


def test_a_generation_requested_but_not_yet_listed_is_requested_again_after_the_grace() -> None:
    now = START + 10 * DAY
    requested = entry(3, "Requested", window=[date(2026, 12, 1), date(2026, 12, 9)], requested_at=now)
    status = FlywheelStatus(trajectory=[entry(1, "Promoted"), entry(2, "RolledBack"), requested])
    soon = plan_flywheel(flywheel(status), [], now + CREATE_VISIBILITY_GRACE - timedelta(seconds=1))
    assert not soon.actions and soon.requeue_at == now + CREATE_VISIBILITY_GRACE
    assert soon.status.phase == "Running" and soon.status.message == "generation 3 (chat-3) is Requested"
    due = now + CREATE_VISIBILITY_GRACE
    again = plan_flywheel(flywheel(status), [], due)
    (create,) = creates(again)
    assert create.name == "chat-3" and create.body["spec"]["parent"] == "chat-1"
    assert create.body["metadata"]["annotations"][WINDOW_ANNOTATION] == "2026-12-01/2026-12-09"  # its own window
    assert create.since_decision is None  # the trajectory's last entry (itself) has not decided
    assert again.requeue_at == due + CREATE_VISIBILITY_GRACE and not again.events
    unknown = FlywheelStatus(trajectory=[entry(1, "Requested", requested_at=None)])
    result = plan_flywheel(flywheel(unknown), [], now)
    assert not result.actions and result.requeue_at == now + CREATE_VISIBILITY_GRACE


def test_the_earliest_wake_is_the_requeue_time() -> None:
    now = START + 10 * DAY
    status = FlywheelStatus(trajectory=[entry(1, "Requested", requested_at=now - timedelta(seconds=30)),
                                        entry(2, "Requested", requested_at=now - timedelta(seconds=90))])
    result = plan_flywheel(flywheel(status), [], now)
    assert result.requeue_at == now + timedelta(seconds=30)


# ------------------------------------------------------------------------------------- window, body, history
TEMPLATED = "s3://a/{{ flywheel }}/{{ generation }}/{{ window.start }}/{{ window.end }}/{{ window.days }}"


@pytest.mark.parametrize(("canaries", "widen", "first"), [
    ([], True, date(2026, 12, 9)),
    ([datetime(2026, 12, 2, 13, 0, tzinfo=UTC)], True, date(2026, 12, 2)),
    ([datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 12, 4, 23, 0, tzinfo=UTC)], True, date(2026, 12, 4)),
    ([datetime(2026, 12, 10, tzinfo=UTC)], True, date(2026, 12, 9)),  # inside the days already: no widening
    ([datetime(2026, 12, 2, tzinfo=UTC)], False, date(2026, 12, 9)),
])
def test_the_window_is_its_days_up_to_the_start_widened_to_the_latest_canary(canaries, widen, first) -> None:
    now = datetime(2026, 12, 11, 8, 0, tzinfo=UTC)
    history = [entry(i + 1, "RolledBack", canary_started_at=at) for i, at in enumerate(canaries)]
    body = flywheel_body(window={"days": 3, "includePreviousCanary": widen})
    body["spec"]["template"]["spec"]["resources"]["storage"]["uri"] = TEMPLATED
    body["status"] = FlywheelStatus(trajectory=history).to_wire()
    (create,) = creates(plan_flywheel(Flywheel.model_validate(body), [], now))
    number, days = len(history) + 1, (date(2026, 12, 11) - first).days + 1
    assert create.body["metadata"]["annotations"][WINDOW_ANNOTATION] == f"{first}/2026-12-11"
    assert create.body["spec"]["resources"]["storage"]["uri"] == f"s3://a/chat/{number}/{first}/2026-12-11/{days}"


def test_the_generation_body_carries_the_template_metadata_the_owner_and_the_parent() -> None:
    body = flywheel_body()
    body["spec"]["template"]["metadata"] = {"labels": {"team": "chat"}, "annotations": {"note": "weekly"}}
    status = FlywheelStatus(trajectory=[entry(1, "Promoted"), entry(2, "Promoted"), entry(3, "RolledBack")])
    body["status"] = status.to_wire()
    now = START + 5 * DAY
    result = plan_flywheel(Flywheel.model_validate(body), [], now)
    (create,) = creates(result)
    meta = create.body["metadata"]
    assert create.body["apiVersion"] == "characterflywheel.io/v1alpha1" and create.body["kind"] == \
        "FlywheelGeneration"
    assert meta["name"] == "chat-4" and meta["namespace"] == "ns"
    assert meta["labels"] == {"team": "chat", FLYWHEEL_LABEL: "chat"}
    assert meta["annotations"]["note"] == "weekly" and WINDOW_ANNOTATION in meta["annotations"]
    assert meta["ownerReferences"] == [{"apiVersion": "characterflywheel.io/v1alpha1", "kind": "Flywheel",
                                        "name": "chat", "uid": "uid-chat", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert create.body["spec"]["generation"] == 4 and create.body["spec"]["parent"] == "chat-2"
    assert create.since_decision == now - status.trajectory[-1].decided_at
    new = result.status.trajectory[-1]
    assert new.parent == "chat-2" and new.starting_policy == new.deployed_policy == "s3://artifacts/chat-2/rl/model"
    assert result.status.message == "generation 4 (chat-4) requested"
    assert result.requeue_at == now + CREATE_VISIBILITY_GRACE
    bare = flywheel_body()
    for key in ("namespace", "uid"):
        del bare["metadata"][key]
    (create,) = creates(plan_flywheel(Flywheel.model_validate(bare), [], START))
    assert "namespace" not in create.body["metadata"] and "ownerReferences" not in create.body["metadata"]
    assert create.since_decision is None and create.number == 1


def test_the_first_generation_number_comes_from_the_spec() -> None:
    (create,) = creates(plan_flywheel(flywheel(firstGeneration=7), [], START))
    assert create.name == "chat-7" and create.body["spec"]["generation"] == 7


def test_a_template_the_api_refuses_makes_the_flywheel_invalid_and_says_why() -> None:
    # 9 × "{{ flywheel }}" is 126 characters (W&B allows 128); rendered with a 16-character name it is 144
    body = flywheel_body()
    body["metadata"]["name"] = "chatbot-flywheel"
    body["spec"]["template"]["spec"]["tracking"] = {"wandb": {"project": "{{ flywheel }}" * 9,
                                                              "entity": "{{ flywheel }}" * 9}}
    result = plan_flywheel(Flywheel.model_validate(body), [], START)
    message = ("spec.template renders generation 1 (chatbot-flywheel-1) that the API refuses: "
               "spec.tracking.wandb.project: String should have at most 128 characters; "
               "spec.tracking.wandb.entity: String should have at most 128 characters; fix spec.template")
    assert result.status.phase == "Invalid" and result.status.message == message
    assert result.status.next_start_at is None and not result.actions and not result.status.trajectory
    assert result.requeue_at is None
    assert [(e.reason, e.message, e.type) for e in result.events] == [("FlywheelInvalid", message, "Warning")]
    ready = condition(result, "Ready")
    assert (ready.status, ready.reason, ready.message) == ("False", "InvalidTemplate", message)
    # the next plan of an unchanged Invalid Flywheel posts no second Event
    again = plan_flywheel(Flywheel.model_validate({**body, "status": result.status.to_wire()}), [], START + DAY)
    assert again.status.phase == "Invalid" and not again.events


def test_the_history_limit_deletes_the_oldest_listed_generations_but_never_the_next_parent() -> None:
    status = FlywheelStatus(trajectory=[entry(1, "Promoted"), entry(2, "RolledBack"), entry(3, "Failed"),
                                        entry(4, "Promoted"), entry(5, "Observing")])
    listed = [seen(n, "Promoted" if n in (1, 4) else "RolledBack") for n in (1, 2, 3, 4)] + [seen(5)]

    def deleted(limit: int | None, observed=listed) -> list[str]:
        result = plan_flywheel(flywheel(status, historyLimit=limit), observed, START + 6 * DAY)
        return [a.name for a in result.actions if isinstance(a, DeleteGeneration)]

    assert deleted(1) == ["chat-1", "chat-2"]  # chat-4 is kept: the next parent
    assert deleted(0) == ["chat-1", "chat-2", "chat-3"]
    assert deleted(3) == [] and deleted(None) == []
    assert deleted(1, [o for o in listed if o.number != 1]) == ["chat-2"]  # an unlisted one is gone already
    unpromoted = FlywheelStatus(trajectory=[entry(1, "RolledBack"), entry(2, "Failed"), entry(3, "RolledBack")])
    result = plan_flywheel(flywheel(unpromoted, historyLimit=1), [seen(n, "RolledBack") for n in (1, 2, 3)],
                           START + 4 * DAY)
    assert [a.name for a in result.actions if isinstance(a, DeleteGeneration)] == ["chat-1", "chat-2"]


# -------------------------------------------------------------------------------------- events, conditions
def test_the_events_of_a_start_and_of_each_kind_of_decision() -> None:
    first = plan_flywheel(flywheel(window={"days": 7}), [], START)
    assert [(e.reason, e.message, e.type) for e in first.events] == [
        ("GenerationStarted", "generation 1 (chat-1) started from the base policy, traffic 2026-11-25..2026-12-01",
         "Normal")]
    status = FlywheelStatus(trajectory=[entry(1, "Promoted")])
    second = plan_flywheel(flywheel(status, window={"days": 1}), [], START + 2 * DAY)
    assert second.events[0].message == (
        "generation 2 (chat-2) started from parent chat-1, traffic 2026-12-03..2026-12-03")
    flying = FlywheelStatus(trajectory=[entry(1, "Observing")])
    decided = START + 2 * DAY

    def decide(outcome: str, phase: str, reasons: list[str], lift: float | None):
        online = OnlineStatus(decision=OnlineDecision(outcome=outcome, numbers={"breadth.lift": lift})) \
            if lift is not None else None
        observed = seen(1, phase, online=online, promoted_policy="p1" if phase == "Promoted" else None,
                        decision=FinalDecision(outcome=outcome, reasons=reasons, at=decided))
        events = plan_flywheel(flywheel(flying, stopRules={"maxGenerations": 1}), [observed], decided).events
        return [(e.reason, e.message, e.type) for e in events]

    assert decide("PROMOTE", "Promoted", ["breadth won"], 0.0512) == [
        ("GenerationPromoted", "generation 1 (chat-1) Promoted, breadth lift +5.1%: breadth won", "Normal"),
        ("FlywheelFinished", "all 1 generations (stopRules.maxGenerations) have decided; raise it to go on",
         "Normal")]
    assert decide("ROLL_BACK", "RolledBack", [], -0.031)[0] == (
        "GenerationRolledBack", "generation 1 (chat-1) RolledBack, breadth lift -3.1%: ROLL_BACK", "Warning")
    assert decide("FAIL", "Failed", ["stage rl failed"], None)[0] == (
        "GenerationFailed", "generation 1 (chat-1) Failed: stage rl failed", "Warning")


def test_pause_and_resume_events_and_conditions_keep_their_transition_times() -> None:
    two = FlywheelStatus(trajectory=[entry(1, "RolledBack"), entry(2, "RolledBack", reason="worse")])
    rules = {"maxRollbacksInARow": 2}
    t1, t2, t3 = START + 3 * DAY, START + 4 * DAY, START + 5 * DAY
    paused = plan_flywheel(flywheel(two, stopRules=rules), [], t1)
    assert [(e.reason, e.type) for e in paused.events] == [("FlywheelPaused", "Warning")]
    assert paused.events[0].message == paused.status.message
    ready = condition(paused, "Ready")
    assert (ready.status, ready.reason, ready.message, ready.last_transition_time) == (
        "False", "Paused", paused.status.message, t1)
    still = plan_flywheel(flywheel(paused.status, stopRules=rules), [], t2)
    assert not still.events  # announced once
    assert condition(still, "Paused").last_transition_time == t1 and condition(still, "Ready").last_transition_time \
        == t1
    resumed = plan_flywheel(flywheel(still.status, stopRules={**rules, "countFrom": 3}), [], t3)
    assert [e.reason for e in resumed.events] == ["GenerationStarted", "FlywheelResumed"]
    assert resumed.events[1].message == "generation 3 (chat-3) requested" and resumed.events[1].type == "Normal"
    paused_now = condition(resumed, "Paused")
    assert (paused_now.status, paused_now.reason, paused_now.message, paused_now.last_transition_time) == (
        "False", "NotPaused", "", t3)
    ready = condition(resumed, "Ready")
    assert (ready.status, ready.reason, ready.last_transition_time) == ("True", "GenerationInFlight", t3)
    assert condition(resumed, "Finished").last_transition_time == t1  # False throughout


def test_a_stop_rule_that_holds_while_a_generation_flies_shows_in_the_conditions_only() -> None:
    status = FlywheelStatus(trajectory=[entry(1, "RolledBack"), entry(2, "RolledBack"), entry(3, "Observing")])
    result = plan_flywheel(flywheel(status, stopRules={"maxRollbacksInARow": 2}), [seen(3)], START + 4 * DAY)
    assert result.status.phase == "Running" and not result.events and not result.actions
    paused = condition(result, "Paused")  # maxRollbacksInARow was lowered while generation 3 flies
    assert paused.status == "True" and paused.reason == "RollBacksInARow" and "countFrom: 4" in paused.message
    assert condition(result, "Ready").status == "True"
    last = FlywheelStatus(trajectory=[entry(1, "Observing")])
    result = plan_flywheel(flywheel(last, stopRules={"maxGenerations": 1}), [seen(1)], START + DAY)
    finished = condition(result, "Finished")  # maxGenerations is reached, but generation 1 has not decided
    assert (finished.status, finished.reason, finished.message) == ("False", "Turning", "")
    assert result.status.phase == "Running" and condition(result, "Paused").status == "False"


def test_suspending_and_finishing_conditions() -> None:
    suspended = plan_flywheel(flywheel(suspend=True), [], START)
    ready = condition(suspended, "Ready")
    assert (ready.status, ready.reason, ready.message) == ("False", "Suspended",
                                                           "suspended (spec.suspend): no new generation starts")
    assert not suspended.events  # suspending is the user's own act: no Event
    cron = {"policy": "cron", "cron": "0 6 * * *"}
    held = plan_flywheel(flywheel(suspend=True, schedule=cron), [], START)
    waiting = plan_flywheel(flywheel(held.status, schedule=cron), [], START)
    due = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    assert waiting.status.phase == "Waiting" and not waiting.actions
    assert [(e.reason, e.message) for e in waiting.events] == [
        ("FlywheelResumed", f"generation 1 starts at {due.isoformat()} (cron)")]
    done = FlywheelStatus(trajectory=[entry(1, "Promoted")])
    finished = plan_flywheel(flywheel(done, stopRules={"maxGenerations": 1}), [], START + 2 * DAY)
    cond = condition(finished, "Finished")
    assert (cond.status, cond.reason, cond.message) == ("True", "MaxGenerations", finished.status.message)
    assert (condition(finished, "Ready").status, condition(finished, "Ready").reason) == ("False", "Finished")
    assert finished.status.observed_generation == 1
