"""Breadth's numerator: a user is engaged once active (≥ 1 turn) on `engaged_min_days` distinct days.

The day of exposure is a visit every exposed user makes, so counting "≥ 1 turn" made engaged == exposed on both
arms; coming back on another day is what can differ between arms.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from flywheel_operator.gate.events import EngagementEvent, parse_event, utc_day, with_day
from flywheel_operator.gate.store import DurableStore, EngagementStore
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gate.test_store import engagement, exposure, submit

USERS = 6
# (user, turns, day or None for an undated event)
ENGAGEMENTS = st.lists(
    st.tuples(st.integers(0, USERS - 1), st.integers(0, 3), st.none() | st.integers(0, 5)), max_size=80
)


def exposed_store(min_days: int) -> EngagementStore:
    store = EngagementStore(engaged_min_days=min_days)
    for user in range(USERS):
        store.apply(parse_event(exposure(f"u{user}", "control" if user % 2 else "treatment")))
    return store


def engaged(store: EngagementStore) -> dict[str, int]:
    control, treatment = store.arm_stats("gen2")
    assert control is not None and treatment is not None
    return {"control": control.engaged_users, "treatment": treatment.engaged_users}


def test_one_day_of_turns_is_not_engagement_coming_back_is() -> None:
    store = exposed_store(2)
    for line in (engagement("u0", 3, day=4), engagement("u0", 1, day=4), engagement("u1", 2, day=4)):
        store.apply(parse_event(line))
    assert engaged(store) == {"control": 0, "treatment": 0}
    store.apply(parse_event(engagement("u1", 0, day=5)))  # a day without a turn is not an active day
    assert engaged(store) == {"control": 0, "treatment": 0}
    store.apply(parse_event(engagement("u0", 1, day=2)))  # late event of an earlier day: days arrive in any order
    assert engaged(store) == {"control": 0, "treatment": 1}
    store.apply(parse_event(engagement("u0", 1, day=9)))  # already engaged: counted once
    assert engaged(store) == {"control": 0, "treatment": 1}


def test_the_rule_is_a_parameter() -> None:
    lines = [engagement("u0", 1, day=0), engagement("u0", 1, day=1), engagement("u0", 1, day=3)]
    counts = []
    for min_days in (1, 2, 3, 4):
        store = exposed_store(min_days)
        for line in lines:
            store.apply(parse_event(line))
        counts.append(engaged(store)["treatment"])
    assert counts == [1, 1, 1, 0]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_engaged_min_days_must_be_a_whole_number_of_days(bad: object) -> None:
    with pytest.raises(ValueError, match="engaged_min_days must be a whole number ≥ 1"):
        EngagementStore(engaged_min_days=bad)  # type: ignore[arg-type]


def test_undated_turns_never_invent_a_return_visit() -> None:
    store = exposed_store(2)
    for line in (engagement("u0", 2), engagement("u0", 5)):
        store.apply(parse_event(line))
    assert engaged(store)["treatment"] == 0  # undated turns: one active day, whichever it was
    store.apply(parse_event(engagement("u0", 1, day=3)))
    assert engaged(store)["treatment"] == 0  # the undated day may have been day 3
    store.apply(parse_event(engagement("u0", 1)))
    assert engaged(store)["treatment"] == 0
    store.apply(parse_event(engagement("u0", 1, day=4)))
    assert engaged(store)["treatment"] == 1


@settings(max_examples=60, deadline=None)
@given(ENGAGEMENTS, st.integers(1, 4))
def test_engaged_only_grows_and_never_exceeds_the_users(events, min_days) -> None:
    store = exposed_store(min_days)
    previous = engaged(store)
    for user, turns, day in events:
        store.apply(parse_event(engagement(f"u{user}", turns, day=day)))
        now = engaged(store)
        assert all(now[arm] >= previous[arm] for arm in now)  # a counter: Prometheus may rate() it
        control, treatment = store.arm_stats("gen2")
        assert control is not None and treatment is not None
        assert control.engaged_users <= control.users and treatment.engaged_users <= treatment.users
        previous = now


@settings(max_examples=60, deadline=None)
@given(ENGAGEMENTS)
def test_one_day_reproduces_the_old_rule_of_any_turn(events) -> None:
    store = exposed_store(1)
    depth = [0] * USERS
    for user, turns, day in events:
        store.apply(parse_event(engagement(f"u{user}", turns, day=day)))
        depth[user] += turns
    assert engaged(store) == {
        "control": sum(d > 0 for u, d in enumerate(depth) if u % 2),
        "treatment": sum(d > 0 for u, d in enumerate(depth) if not u % 2),
    }


@settings(max_examples=60, deadline=None)
@given(ENGAGEMENTS, st.integers(1, 4))
def test_dated_events_count_distinct_active_days(events, min_days) -> None:
    store = exposed_store(min_days)
    days: list[set[int]] = [set() for _ in range(USERS)]
    for user, turns, day in events:
        day = 0 if day is None else day
        store.apply(parse_event(engagement(f"u{user}", turns, day=day)))
        if turns:
            days[user].add(day)
    assert engaged(store) == {
        "control": sum(len(d) >= min_days for u, d in enumerate(days) if u % 2),
        "treatment": sum(len(d) >= min_days for u, d in enumerate(days) if not u % 2),
    }
    # compact: each user keeps at most `min_days` days, however many they were active on
    assert all(len(state.days) <= min_days for state in store.users["gen2"].values())


def test_utc_day_and_receipt_days() -> None:
    assert utc_day(datetime(1970, 1, 1, 23, 59, tzinfo=UTC)) == 0
    assert utc_day(datetime(2026, 11, 23, 23, 30, tzinfo=UTC)) == utc_day(datetime(2026, 11, 23, tzinfo=UTC))
    east = datetime(2026, 11, 23, 23, 0, tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))  # already the 24th there
    assert utc_day(east) == utc_day(datetime(2026, 11, 23, tzinfo=UTC))  # the UTC day, not the local one
    with pytest.raises(ValueError, match="timezone-aware"):
        utc_day(datetime(2026, 11, 23))
    events = [parse_event(line) for line in (exposure("a"), engagement("a", 1), engagement("a", 1, day=2))]
    stamped = with_day(events, 7)
    assert stamped[0] == events[0]
    assert [e.day for e in stamped[1:] if isinstance(e, EngagementEvent)] == [7, 2]


def test_snapshot_of_another_rule_is_refused_by_name(tmp_path) -> None:
    snapshot = tmp_path / "exporter.json"
    first = DurableStore(snapshot, engaged_min_days=3)
    assert submit(first, exposure("a"), engagement("a", 1, day=0)) == []
    first.compact()
    with pytest.raises(ValueError, match=r"engaged_min_days=3, not 2; run with --engaged-min-days 3") as caught:
        DurableStore(snapshot)
    assert str(snapshot) in str(caught.value)
    assert DurableStore(snapshot, engaged_min_days=3).store.arm_stats("gen2") == first.store.arm_stats("gen2")


def version_1_snapshot() -> dict:
    """What the exporter wrote before active days (engaged = depth > 0): user a with 3 turns, b with none."""
    totals = {
        "users": 1,
        "engaged": 1,
        "depth_sum": 3.0,
        "depth_sum_squares": 9.0,
        "pre_sum": 0.0,
        "pre_sum_squares": 0.0,
        "pre_cross_sum": 0.0,
        "responses": 3,
        "guardrails": {"instruction-violations": 0, "false-refusals": 0, "errors": 0},
        "latency_buckets": [0] * 9,
        "latency_sum": 0.0,
        "latency_count": 0,
    }
    empty = {**totals, "engaged": 0, "depth_sum": 0.0, "depth_sum_squares": 0.0, "responses": 0}
    return {
        "version": 1,
        "sequence": 3,
        "users": {"gen2": {"a": ["control", 3, 0.0], "b": ["treatment", 0, 0.0]}},
        "arms": [
            {"generation": "gen2", "arm": "control", **totals},
            {"generation": "gen2", "arm": "treatment", **empty},
        ],
    }


def test_a_version_1_snapshot_goes_on_under_its_own_rule_or_is_refused_clearly(tmp_path) -> None:
    snapshot = tmp_path / "exporter.json"
    snapshot.write_text(json.dumps(version_1_snapshot()))
    with pytest.raises(ValueError, match=r"version 1.*--engaged-min-days 1"):
        DurableStore(snapshot)
    durable = DurableStore(snapshot, engaged_min_days=1)
    assert submit(durable, engagement("a", 1, day=5), engagement("b", 2, day=5)) == []
    control, treatment = durable.store.arm_stats("gen2")
    assert control is not None and treatment is not None
    assert (control.engaged_users, control.depth_sum, control.depth_sum_squares) == (1, 4.0, 16.0)
    assert treatment.engaged_users == 1
    durable.compact()
    assert json.loads(snapshot.read_text())["version"] == 2
    with pytest.raises(ValueError, match="snapshot version 7"):
        EngagementStore.from_dict({**version_1_snapshot(), "version": 7})


def test_receipt_day_is_journaled_so_a_replay_counts_the_same_days(tmp_path) -> None:
    snapshot = tmp_path / "exporter.json"
    durable = DurableStore(snapshot)
    day = utc_day(datetime(2026, 11, 23, tzinfo=UTC))
    events = [parse_event(line) for line in (exposure("a"), engagement("a", 1))]
    assert durable.submit(with_day(events, day)) == []
    assert durable.submit(with_day([parse_event(engagement("a", 1))], day + 1)) == []
    assert durable.store.arm_stats("gen2")[0].engaged_users == 1  # type: ignore[union-attr]
    journal = [json.loads(line) for line in snapshot.with_name("exporter.json.journal").read_text().splitlines()]
    assert [record["event"].get("day") for record in journal] == [None, day, day + 1]
    assert DurableStore(snapshot).store.arm_stats("gen2") == durable.store.arm_stats("gen2")
