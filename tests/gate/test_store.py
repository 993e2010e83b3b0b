"""Events in, sufficient statistics out: the store equals the sums computed from the users themselves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flywheel_operator.gate.events import parse_batch, parse_event
from flywheel_operator.gate.store import DurableStore, EngagementStore
from hypothesis import given, settings
from hypothesis import strategies as st


def exposure(user: str, arm: str = "control", pre: float = 0.0, generation: str = "gen2") -> str:
    return json.dumps({"type": "exposure", "generation": generation, "user": user, "arm": arm, "pre_depth": pre})


def engagement(user: str, turns: int = 1, generation: str = "gen2", **extra: object) -> str:
    return json.dumps({"type": "engagement", "generation": generation, "user": user, "turns": turns, **extra})


def submit(durable: DurableStore, *lines: str) -> list[str]:
    events, errors = parse_batch("\n".join(lines))
    return errors or durable.submit(events)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "click", "generation": "g", "user": "u"}', "type"),
        ('{"type": "exposure", "generation": "g", "user": "u", "arm": "blue"}', "'arm'"),
        ('{"type": "exposure", "generation": "Gen_2", "user": "u", "arm": "control"}', "'generation'"),
        ('{"type": "exposure", "generation": "g", "user": "u", "arm": "control", "pre_depth": -1}', "'pre_depth'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "turns": -2}', "'turns'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "day": -1}', "'day'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "day": 1.5}', "'day'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "turns": 1, "guardrails": {"errors": 3}}', "exceeds"),
        ('{"type": "exposure", "generation": "g", "user": "u", "arm": "control", "colour": 1}', "'colour'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "turns": 1' + "0" * 160 + "}", "'turns'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "turns": true}', "'turns'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "turns": 2.5}', "'turns'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "responses": 1e200}', "'responses'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "day": 100000000000}', "'day'"),
        ('{"type": "engagement", "generation": "g", "user": "u", "latency_seconds": [1e300]}', "'latency_seconds"),
        ('{"type": "exposure", "generation": "g", "user": "u", "arm": "control", "pre_depth": 1e300}', "'pre_depth'"),
        ('{"type": "exposure", "generation": "g", "user": "u", "arm": "control", "pre_depth": NaN}', "'pre_depth'"),
    ],
)
def test_malformed_lines_are_refused_with_their_reason(line: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_event(line)


def test_one_bad_line_refuses_the_whole_batch_with_line_numbers() -> None:
    events, errors = parse_batch(exposure("a") + "\n\n{oops\n" + exposure("b"))
    assert events == []
    assert errors == [errors[0]] and errors[0].startswith("line 3: not JSON")


def test_sums_match_the_users() -> None:
    rng = np.random.default_rng(1)
    durable = DurableStore(None)
    users = {f"u{i}": ("control" if i % 2 else "treatment", float(rng.integers(0, 6))) for i in range(300)}
    depth = dict.fromkeys(users, 0)
    active_days: dict[str, set[int]] = {u: set() for u in users}
    lines = [exposure(u, arm, pre) for u, (arm, pre) in users.items()]
    for _ in range(900):
        user = f"u{rng.integers(0, 300)}"
        turns = int(rng.integers(0, 4))
        day = int(rng.integers(0, 7))  # in any order: late events are normal
        depth[user] += turns
        if turns:
            active_days[user].add(day)
        lines.append(engagement(user, turns, guardrails={"errors": min(turns, 1)}, day=day))
    assert submit(durable, *lines) == []
    control, treatment = durable.store.arm_stats("gen2")
    for arm, stats in (("control", control), ("treatment", treatment)):
        assert stats is not None
        members = [u for u, (a, _) in users.items() if a == arm]
        y = np.array([depth[u] for u in members], dtype=float)
        x = np.array([users[u][1] for u in members])
        assert stats.users == len(members)
        assert stats.engaged_users == sum(len(active_days[u]) >= 2 for u in members)  # the default rule
        assert 0 < stats.engaged_users < int((y > 0).sum())  # coming back is rarer than a turn
        assert stats.depth_sum == pytest.approx(y.sum())
        assert stats.depth_sum_squares == pytest.approx((y**2).sum())
        assert stats.pre_sum == pytest.approx(x.sum())
        assert stats.pre_sum_squares == pytest.approx((x**2).sum())
        assert stats.pre_cross_sum == pytest.approx((x * y).sum())
        assert set(stats.guardrails) >= {"instruction-violations", "false-refusals", "errors"}


def test_a_user_seen_in_both_arms_is_counted_as_a_crossover_and_stays_in_the_first() -> None:
    """Issue 14: the exporter detects users seen in both arms (routing that is not sticky) instead of refusing
    the batch; their turns count in the arm of their first exposure (intention to treat)."""
    durable = DurableStore(None)
    assert submit(durable, exposure("a", "control")) == []
    assert submit(durable, exposure("b", "treatment"), exposure("a", "treatment")) == []
    assert submit(durable, engagement("nobody")) == [] and durable.store.unattributed == 1  # no arm: not counted
    assert submit(durable, engagement("b", arm="control")) == []
    assert durable.store.crossover_users("gen2") == 2
    control, treatment = durable.store.arm_stats("gen2")
    assert control is not None and control.users == 1 and control.depth_sum == 0
    assert treatment is not None and treatment.users == 1 and treatment.depth_sum > 0
    restored = type(durable.store).from_dict(json.loads(json.dumps(durable.store.to_dict())))
    assert restored.crossover_users("gen2") == 2


def test_repeated_exposures_count_once() -> None:
    durable = DurableStore(None)
    assert submit(durable, exposure("a", pre=2), exposure("a", pre=2), engagement("a", 3)) == []
    control, _ = durable.store.arm_stats("gen2")
    assert control is not None and (control.users, control.pre_sum, control.depth_sum) == (1, 2.0, 3.0)


def test_a_restart_loses_no_counts(tmp_path) -> None:
    snapshot = tmp_path / "exporter.json"
    first = DurableStore(snapshot, compact_every=3)
    assert submit(first, exposure("a", pre=1), exposure("b", "treatment"), engagement("a", 2, day=0)) == []
    assert submit(first, engagement("a", 1, day=1), engagement("b", 4, day=0)) == []  # journal only
    before = first.store.arm_stats("gen2")
    assert before[0] is not None and before[0].engaged_users == 1  # a's second day came from the journal
    # a crash: no compaction at shutdown; the journal is replayed over the snapshot
    assert DurableStore(snapshot).store.arm_stats("gen2") == before
    # a crash between writing the snapshot and emptying the journal never double-counts
    journal = snapshot.with_name("exporter.json.journal").read_text()
    first.compact()
    snapshot.with_name("exporter.json.journal").write_text(journal)
    assert DurableStore(snapshot).store.arm_stats("gen2") == before


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 5), st.none() | st.integers(0, 6)), min_size=1, max_size=60),
    st.integers(1, 3),
    st.integers(0, 60),
)
def test_snapshot_round_trip(turns, min_days, split) -> None:
    """A reloaded store holds the same sums and goes on counting the same (active days are state too)."""
    store = EngagementStore(engaged_min_days=min_days)
    for user in range(10):
        store.apply(parse_event(exposure(f"u{user}", "control" if user < 5 else "treatment", pre=user)))
    events = [parse_event(engagement(f"u{user}", k, day=day)) for user, k, day in turns]
    for event in events[:split]:
        store.apply(event)
    again = EngagementStore.from_dict(json.loads(json.dumps(store.to_dict())))
    assert again.arm_stats("gen2") == store.arm_stats("gen2")
    assert (again.sequence, again.engaged_min_days) == (store.sequence, min_days)
    for event in events[split:]:
        store.apply(event)
        again.apply(event)
    assert again.arm_stats("gen2") == store.arm_stats("gen2")


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(["turns", "responses", "pre_depth"]),
    st.integers(-(10**20), 10**200) | st.floats(allow_nan=True, allow_infinity=True),
)
def test_an_event_that_parses_always_applies_to_finite_sums(field, value) -> None:
    """Validation bounds every number, so a checked batch can never fail half-way through being applied."""
    durable = DurableStore(None)
    first = exposure("b", pre=value) if field == "pre_depth" else exposure("b")
    second = engagement("b", 2) if field == "pre_depth" else engagement("b", **{field: value})
    events, errors = parse_batch(first + "\n" + second)
    if errors:
        assert events == []
        return
    assert durable.submit(events) == []
    control, _ = durable.store.arm_stats("gen2")
    assert control is not None and control.depth_sum_squares < 1e30 and (control.pre_cross_sum or 0) < 1e30


def test_a_poison_line_in_the_journal_is_skipped_with_a_logged_error(tmp_path, caplog) -> None:
    """An older exporter journaled `turns=10**160` and then crashed applying it; a restart must come up."""
    snapshot = tmp_path / "exporter.json"
    first = DurableStore(snapshot)
    assert submit(first, exposure("a"), engagement("a", 2)) == []
    poison = {"type": "engagement", "generation": "gen2", "user": "a", "turns": 10**160, "day": 3}
    with snapshot.with_name("exporter.json.journal").open("a") as journal:
        journal.write(json.dumps({"sequence": 3, "event": poison}) + "\n")
        journal.write(json.dumps({"sequence": 4, "event": json.loads(engagement("a", 1, day=4))}) + "\n")
    with caplog.at_level("ERROR", logger="flywheel.exporter"):
        again = DurableStore(snapshot)
    assert again.skipped == 1 and "turns" in caplog.text and "skipped journal record" in caplog.text
    control, _ = again.store.arm_stats("gen2")
    assert control is not None and control.depth_sum == 3 and again.store.sequence == 4
    assert submit(again, engagement("a", 1)) == []
    assert DurableStore(snapshot).store.arm_stats("gen2")[0].depth_sum == 4  # numbering stays aligned


def test_a_user_cannot_accumulate_more_turns_than_sums_can_hold() -> None:
    durable = DurableStore(None)
    assert submit(durable, exposure("a")) == []
    durable.store.users["gen2"]["a"].depth = 10**12 - 1
    errors = submit(durable, engagement("a", 1), engagement("a", 1))
    assert len(errors) == 1 and errors[0].startswith("event 2:") and "turns" in errors[0]
    assert durable.store.users["gen2"]["a"].depth == 10**12 - 1


def test_events_after_a_restart_that_lost_the_state_are_not_refused() -> None:
    """Issue 15, cause 5: the app logs exposure once; the exporter restarts without its snapshot. Its next batch
    (users exposed before the restart, hourly) must be counted, not refused whole."""
    durable = DurableStore(None)  # the restarted exporter: empty
    batch = [
        exposure("new", "treatment"),  # a user exposed after the restart
        engagement("new", 2, day=3),
        engagement("old-1", 3, day=3, arm="control"),  # exposed before the restart: adopted on its arm
        engagement("old-2", 1, day=3, arm="treatment"),
        engagement("old-3", 4, day=3),  # no arm: cannot be attributed, skipped (counted as such)
    ]
    assert submit(durable, *batch) == []
    control, treatment = durable.store.arm_stats("gen2")
    assert control is not None and treatment is not None
    assert (control.users, control.adopted_users, control.depth_sum) == (1, 1, 3.0)
    assert (treatment.users, treatment.adopted_users, treatment.depth_sum) == (2, 1, 3.0)
    assert durable.store.unattributed == 1
    # an adopted user's arm is sticky from then on: a later event from the other arm is a crossover
    assert submit(durable, engagement("old-1", arm="treatment")) == []
    assert durable.store.crossover_users("gen2") == 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=40))
def test_per_user_guardrail_sums_match_the_users(events) -> None:
    """Σ responses², Σ events², Σ events·responses per arm equal those of the users' totals (the user-clustered
    variance of the guardrail rates needs them)."""
    store = EngagementStore()
    for user in range(6):
        store.apply(parse_event(exposure(f"u{user}", "control" if user < 3 else "treatment")))
    responses = np.zeros(6)
    errors = np.zeros(6)
    for user, served, bad in events:
        bad = min(bad, served)
        store.apply(parse_event(engagement(f"u{user}", served, responses=served, guardrails={"errors": bad})))
        responses[user] += served
        errors[user] += bad
    again = EngagementStore.from_dict(json.loads(json.dumps(store.to_dict())))
    for arm, rows in zip(again.arm_stats("gen2"), (slice(0, 3), slice(3, 6)), strict=True):
        assert arm is not None
        r, g = responses[rows], errors[rows]
        assert arm.responses_sum_squares == pytest.approx((r**2).sum())
        assert arm.guardrail_sum_squares["errors"] == pytest.approx((g**2).sum())
        assert arm.guardrail_cross_sums["errors"] == pytest.approx((g * r).sum())
