"""Issue 25 (h25): the per-arm sums of log(1 + per-user depth) end to end (exporter store → Prometheus series →
readers → ArmStats → SQL source → gate), the refusal without them, their range checks, and the reader that reads
the frozen plan's queries."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from flywheel_operator.api import ArmStats, OnlineReading, PromotionSpec
from flywheel_operator.api.readings import LOG_DEPTH_UNIT
from flywheel_operator.gate import evaluate_online, plan_edits
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.readers import PrometheusReader, frozen_promotion, reader_for
from flywheel_operator.gate.store import (
    DurableStore,
    EngagementStore,
    SqliteStore,
    log_depth_units,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gate.arms import NOW, log_depth, plan_of, reading, simulate_arm
from tests.gate.test_exporter import post, samples, start
from tests.gate.test_readers import SPEC, answers, transport
from tests.gate.test_store import engagement, exposure

USERS = 6
turns_lists = st.lists(st.tuples(st.integers(0, USERS - 1), st.integers(0, 400)), min_size=1, max_size=40)


def expected_units(depths: np.ndarray) -> tuple[int, int]:
    units = [log_depth_units(int(d)) for d in depths]
    return sum(units), sum(u * u for u in units)


def fold(store, events: list[tuple[int, int]]) -> np.ndarray:
    """Users 0-2 in control, 3-5 in treatment; each event adds turns to a user. Returns the users' depths."""
    lines = [exposure(f"u{u}", "control" if u < 3 else "treatment") for u in range(USERS)]
    lines += [engagement(f"u{u}", turns, day=i % 7) for i, (u, turns) in enumerate(events)]
    parsed = [parse_event(line) for line in lines]
    if isinstance(store, EngagementStore):
        for event in parsed:
            store.apply(event)
    else:
        assert store.submit(parsed) == []
    depths = np.zeros(USERS, dtype=np.int64)
    for u, turns in events:
        depths[u] += turns
    return depths


@settings(max_examples=40, deadline=None)
@given(turns_lists)
def test_both_stores_keep_the_log_depth_sums_exact_as_depths_grow(events) -> None:
    """Updated by the difference old → new of each user's term, the arm totals equal the sums over the users'
    final depths exactly (integers of 1/65536), in the in-memory store, its snapshot and the SQLite store."""
    for store in (EngagementStore(), SqliteStore(None)):
        depths = fold(store, events)
        control, treatment = store.arm_stats("gen2")
        for arm, rows in ((control, slice(0, 3)), (treatment, slice(3, 6))):
            units, squares = expected_units(depths[rows])
            assert arm is not None
            assert arm.depth_log_sum == units * LOG_DEPTH_UNIT
            assert arm.depth_log_sum_squares == squares * LOG_DEPTH_UNIT**2
            assert arm.depth_log_sum == pytest.approx(np.log1p(depths[rows]).sum(), abs=3 * 2**-17)
            assert not arm.range_problems()
        if isinstance(store, EngagementStore):
            again = EngagementStore.from_dict(json.loads(json.dumps(store.to_dict())))
            assert again.arm_stats("gen2") == (control, treatment)


def test_a_snapshot_from_before_the_log_sums_rebuilds_them_from_the_users(tmp_path: Path) -> None:
    """Every user's depth is kept, so totals saved without the log-scale sums get them back exactly on load (the
    JSON snapshot and the SQLite state)."""
    events = [(0, 3), (1, 40), (3, 7), (4, 1), (4, 900), (5, 0)]
    memory = EngagementStore()
    fold(memory, events)
    want = memory.arm_stats("gen2")
    old = memory.to_dict()
    for row in old["arms"]:
        del row["depth_log_units"], row["depth_log_units_squared"]
    assert EngagementStore.from_dict(json.loads(json.dumps(old))).arm_stats("gen2") == want

    path = tmp_path / "state.db"
    sqlite = SqliteStore(path, checkpoint_every=0)
    fold(sqlite, events)
    assert sqlite.arm_stats("gen2") == want
    sqlite.close()
    import sqlite3

    with sqlite3.connect(path) as db:  # what an exporter of the previous version left
        for experiment, arm, totals in db.execute("SELECT experiment, arm, totals FROM arms").fetchall():
            row = json.loads(totals)
            del row["depth_log_units"], row["depth_log_units_squared"]
            db.execute(
                "UPDATE arms SET totals = ? WHERE experiment = ? AND arm = ?", (json.dumps(row), experiment, arm)
            )
    reopened = SqliteStore(path, checkpoint_every=0)
    assert reopened.arm_stats("gen2") == want
    reopened.close()


def test_the_exporter_exports_the_log_depth_sums_as_counters() -> None:
    server = start(DurableStore(None))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            post(client, exposure("a", "control"), exposure("b", "control"), engagement("a", 3), engagement("a", 4))
            post(client, engagement("b", 1))
            metrics = samples(client)
    finally:
        server.shutdown()
        server.server_close()
    control = (("arm", "control"), ("generation", "gen2"))
    units = [log_depth_units(7), log_depth_units(1)]
    assert metrics[("flywheel_depth_log_turns_total", control)] == sum(units) * LOG_DEPTH_UNIT
    assert metrics[("flywheel_depth_log_turns_squared_total", control)] == sum(u * u for u in units) * 2.0**-32
    assert metrics[("flywheel_depth_log_turns_total", control)] == pytest.approx(math.log(8) + math.log(2), abs=1e-4)


def with_log_answers(table: dict, *, control: ArmStats, treatment: ArmStats) -> dict:
    queries = SPEC.queries
    for arm, stats in (("control", control), ("treatment", treatment)):
        labels = {"arm": arm, "generation": "gen2", "namespace": "ns"}
        table[queries.depth_log_sum.format(**labels)] = stats.depth_log_sum
        table[queries.depth_log_sum_squares.format(**labels)] = stats.depth_log_sum_squares
    return table


def test_the_prometheus_reader_reads_the_log_depth_sums() -> None:
    from tests.gate.test_readers import ARMS

    arms = {
        arm: stats.model_copy(update={"depth_log_sum": 900.0 + i, "depth_log_sum_squares": 4000.0 + i})
        for i, (arm, stats) in enumerate(ARMS.items())
    }
    table = with_log_answers(answers(), control=arms["control"], treatment=arms["treatment"])
    client = httpx.Client(transport=transport(table), base_url=SPEC.prometheus_url)
    got = PrometheusReader(SPEC, client=client, sleep=lambda _: None).read(generation="gen2", namespace="ns", now=NOW)
    assert got.has_data and got.control is not None and got.treatment is not None
    assert (got.control.depth_log_sum, got.treatment.depth_log_sum_squares) == (900.0, 4001.0)


def test_without_the_log_depth_sums_depth_is_refused_with_the_fix() -> None:
    """An exporter of the previous version: depth is not judged (neither way) and the reason names the series,
    the query fields and the fix; nothing is promoted on it, and no silent fallback to raw depth happens."""
    rng = np.random.default_rng(1)
    control = simulate_arm(rng, 20_000)
    treatment = simulate_arm(rng, 20_000, depth_scale=1.3)  # a large depth win: would promote with the sums
    plan = plan_of(PromotionSpec(novelty_window="0d"))
    with_sums = evaluate_online(plan, reading(control, treatment), elapsed=timedelta(days=7), previous=None, now=NOW)
    assert with_sums.outcome == "PROMOTE"
    old = {"depth_log_sum": None, "depth_log_sum_squares": None}
    decision = evaluate_online(
        plan,
        reading(control.model_copy(update=old), treatment.model_copy(update=old)),
        elapsed=timedelta(days=7),
        previous=None,
        now=NOW,
    )
    assert decision.outcome != "PROMOTE" and "depth.lift" not in decision.numbers
    why = " ".join(decision.reasons)
    assert "depth is refused" in why and "flywheel_depth_log_turns_total" in why
    assert "promotion.queries.depthLogSum" in why


def test_depth_harm_is_judged_on_the_log_scale() -> None:
    """Most users lose a tenth of their turns while one whale's turns keep the treatment's mean depth up: the
    mean of depth cannot tell, the mean of log(1 + depth) rolls the canary back."""
    rng = np.random.default_rng(7)
    users = 20_000
    base = np.exp(rng.normal(1.0, 1.0, size=(2, users)))
    depth = {"control": base[0], "treatment": base[1] * 0.9}
    depth["treatment"][0] += depth["control"].sum() - depth["treatment"].sum()  # equal Σdepth in both arms

    def arm(d: np.ndarray) -> ArmStats:
        units = log_depth(d)
        return ArmStats(
            users=users,
            engaged_users=users // 2,
            depth_sum=float(d.sum()),
            depth_sum_squares=float((d * d).sum()),
            depth_log_sum=float(units.sum()) * LOG_DEPTH_UNIT,
            depth_log_sum_squares=float((units**2).sum()) * LOG_DEPTH_UNIT**2,
        )

    plan = plan_of(PromotionSpec(guardrails=[]))
    decision = evaluate_online(
        plan, reading(arm(depth["control"]), arm(depth["treatment"])), elapsed=timedelta(hours=30), previous=None,
        now=NOW,
    )  # fmt: skip
    assert abs(decision.numbers["depth.lift"]) < 1e-9  # the raw lift is 0
    assert decision.numbers["depth.log_lift"] < -0.05
    assert decision.outcome == "ROLL_BACK"
    assert any("depth is significantly worse" in r and "log-scale lift" in r for r in decision.reasons)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
def test_log_depth_sums_of_real_users_always_pass_the_range_checks(depths) -> None:
    d = np.array(depths, dtype=float)
    units = log_depth(d)
    arm = ArmStats(
        users=len(depths),
        engaged_users=0,
        depth_sum=float(d.sum()),
        depth_sum_squares=float((d * d).sum()),
        depth_log_sum=float(units.sum()) * LOG_DEPTH_UNIT,
        depth_log_sum_squares=float((units**2).sum()) * LOG_DEPTH_UNIT**2,
    )
    assert arm.range_problems() == []


GOOD = ArmStats(users=10, engaged_users=5, depth_sum=20.0, depth_sum_squares=80.0, depth_log_sum=8.0,
                depth_log_sum_squares=9.0)  # fmt: skip


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        ({"depth_log_sum": 50.0, "depth_log_sum_squares": 2600.0}, "Jensen"),  # mean log(1+d) > log(1 + mean d)
        ({"depth_log_sum": 10.0, "depth_log_sum_squares": 0.5}, "below (Σlog(1+depth))²/users"),
        ({"depth_log_sum": 3.0, "depth_log_sum_squares": 100.0}, "above (Σlog(1+depth))²"),
        ({"depth_log_sum": 8.0, "depth_log_sum_squares": 90.0, "depth_sum_squares": 85.0}, "above Σdepth²"),
        ({"users": 0, "engaged_users": 0, "depth_sum": 0.0, "depth_sum_squares": 0.0}, "over 0 users"),
    ],
)
def test_impossible_log_depth_sums_are_range_problems(update: dict, fragment: str) -> None:
    assert GOOD.range_problems() == []
    problems = GOOD.model_copy(update=update).range_problems()
    assert any(fragment in p for p in problems), problems


def test_a_reading_with_impossible_log_depth_sums_is_refused_as_no_data() -> None:
    bad = GOOD.model_copy(update={"depth_log_sum": 50.0, "depth_log_sum_squares": 2600.0})
    decision = evaluate_online(
        plan_of(PromotionSpec()), OnlineReading(at=NOW, control=GOOD, treatment=bad), elapsed=timedelta(days=2),
        previous=None, now=NOW,
    )  # fmt: skip
    assert decision.outcome == "CONTINUE" and "out of range" in decision.reasons[0] and "Jensen" in decision.reasons[0]


def test_the_reader_reads_the_frozen_plans_queries_not_the_live_specs(monkeypatch) -> None:
    """Editing `promotion.queries` during a live canary changes nothing the gate reads: the operator's reader
    takes its templates (and Prometheus URL) from status.online.plan; the planner reports the edit as ignored."""
    import asyncio

    from flywheel_operator.api import CanarySpec
    from flywheel_operator.kube import backend

    frozen = PromotionSpec(prometheus_url="http://frozen.test:9090")
    plan = plan_of(frozen)
    edited = frozen.model_copy(
        update={
            "prometheus_url": "http://edited.test:9090",
            "queries": frozen.queries.model_copy(update={"depth_sum": "sum(some_other_series)"}),
        }
    )
    status = {"online": {"plan": plan.model_dump(mode="json", by_alias=True)}}
    assert frozen_promotion(edited, status) == frozen
    assert frozen_promotion(edited, {}) == edited  # no plan yet: the spec's
    assert isinstance(reader_for(frozen_promotion(edited, status)), PrometheusReader)
    canary = CanarySpec(inference_service="chat", traffic_percent=50, min_duration="1d", max_duration="7d")
    assert {"promotion.queries", "promotion.prometheusUrl"} <= set(plan_edits(plan, edited, canary))

    seen: list[PromotionSpec] = []

    def read(self, **_: object) -> OnlineReading:
        seen.append(self.promotion)
        return OnlineReading(at=NOW, error="test")

    monkeypatch.setattr(PrometheusReader, "read", read)

    from types import SimpleNamespace

    generation = SimpleNamespace(
        spec=SimpleNamespace(promotion=edited),
        status={"online": {"plan": plan.model_dump(mode="json", by_alias=True)}, "canary": {}},
        metadata=SimpleNamespace(name="gen2", namespace="ns"),
    )
    asyncio.run(backend.prometheus_reader(generation, NOW))  # type: ignore[arg-type]
    assert seen == [frozen]


@pytest.mark.parametrize("engine", ["duckdb", "sqlite"])
def test_sql_engines_round_log_depth_to_the_exporters_integers(engine: str) -> None:
    """The SQL source's `FLOOR(LN(1 + depth) * 65536 + 0.5)` gives the exporter's `log_depth_units` for every depth
    up to 200,000 and for large ones: the two sources' log-scale sums are the same integers, not merely close."""
    depths = [*range(200_001), *(10**k + j for k in range(6, 13) for j in (-1, 0, 1))]
    query = "SELECT d, CAST(FLOOR(LN(1 + CAST(d AS DOUBLE)) * 65536 + 0.5) AS BIGINT) FROM depths"
    if engine == "duckdb":
        import duckdb

        db = duckdb.connect()
        db.execute("CREATE TABLE depths (d BIGINT)")
        db.executemany("INSERT INTO depths VALUES (?)", [(d,) for d in depths[:2000]])
        db.execute("INSERT INTO depths SELECT * FROM range(2000, 200001)")
        db.executemany("INSERT INTO depths VALUES (?)", [(d,) for d in depths[200_001:]])
    else:
        import sqlite3

        import sqlglot

        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE depths (d INTEGER)")
        db.executemany("INSERT INTO depths VALUES (?)", [(d,) for d in depths])
        query = sqlglot.transpile(query, read="duckdb", write="sqlite")[0]
    got = dict(db.execute(query).fetchall())
    assert len(got) == len(depths)
    assert all(got[d] == log_depth_units(d) for d in depths)
