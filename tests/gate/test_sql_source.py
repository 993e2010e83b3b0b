"""The SQL source (issue 30): one query over the event log gives the exporter's exact ArmStats and so the same
gate decision; proven on DuckDB (embedded), on Spark in local mode and through SQLAlchemy (SQLite)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flywheel_operator.api import ArmStats, OnlineReading
from flywheel_operator.api.models import PromotionSpec
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.online import evaluate_online
from flywheel_operator.gate.sqlsource import SqlReader, build_query, engine_dialect
from flywheel_operator.gate.store import SqliteStore
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.gate.arms import plan_of

START = datetime(2026, 3, 2, tzinfo=UTC)
COLUMNS = (
    "event_time TIMESTAMP, type VARCHAR, generation VARCHAR, namespace VARCHAR, user_id VARCHAR, arm VARCHAR, "
    "pre_depth DOUBLE, turns BIGINT, responses BIGINT, day BIGINT, instruction_violations BIGINT, "
    "false_refusals BIGINT, errors BIGINT"
)
GUARDRAILS = ("instruction-violations", "false-refusals", "errors")


def rows_of(events: list[dict]) -> list[tuple]:
    """The event log rows of exporter events, one second apart (the log's order is the exporter's order)."""
    rows = []
    for index, event in enumerate(events):
        guardrails = event.get("guardrails", {})
        rows.append(
            (
                (START + timedelta(seconds=index)).replace(tzinfo=None),
                event["type"],
                event["generation"],
                event.get("namespace"),
                event["user"],
                event.get("arm"),
                event.get("pre_depth"),
                event.get("turns"),
                event.get("responses"),
                event.get("day"),
                *(guardrails.get(name, 0) for name in GUARDRAILS),
            )
        )
    return rows


def duckdb_with(events: list[dict]):
    import duckdb

    connection = duckdb.connect()
    connection.execute(f"CREATE TABLE chat_events ({COLUMNS})")
    if events:
        connection.executemany(f"INSERT INTO chat_events VALUES ({', '.join('?' * 13)})", rows_of(events))
    return connection


def write_parquet(events: list[dict], path: Path) -> None:
    connection = duckdb_with(events)
    connection.execute(f"COPY chat_events TO '{path}' (FORMAT parquet)")
    connection.close()


def promotion(**sql) -> PromotionSpec:
    return PromotionSpec.model_validate({"source": {"sql": {"maxEventAge": None, **sql}}})


def exporter_reading(events: list[dict], generation: str = "gen2", batch: int = 7, min_days: int = 2) -> OnlineReading:
    """What the gate reads from the exporter (through Prometheus: the promotion's guardrails only)."""
    store = SqliteStore(None, engaged_min_days=min_days)
    parsed = [parse_event(json.dumps(event)) for event in events]
    for start in range(0, len(parsed), batch):
        assert store.submit(parsed[start : start + batch]) == []
    control, treatment = store.arm_stats(generation)
    now = START + timedelta(days=7)
    if control is None or treatment is None:
        return OnlineReading(at=now, error="an arm has no users")

    def seen(stats: ArmStats) -> ArmStats:
        keep = lambda sums: {k: v for k, v in sums.items() if k in GUARDRAILS}  # noqa: E731
        return stats.model_copy(
            update={
                "guardrails": keep(stats.guardrails),
                "guardrail_sum_squares": keep(stats.guardrail_sum_squares),
                "guardrail_cross_sums": keep(stats.guardrail_cross_sums),
            }
        )

    return OnlineReading(
        at=now, control=seen(control), treatment=seen(treatment), crossover_users=store.crossover_users(generation)
    )


def sql_reading(events: list[dict], **sql) -> OnlineReading:
    connection = duckdb_with(events)
    reader = SqlReader(promotion(table="chat_events", **sql), run=lambda q: connection.execute(q).fetchall())
    return reader.read(generation="gen2", namespace="default", now=START + timedelta(days=7))


def decision(reading: OnlineReading):
    return evaluate_online(
        plan_of(PromotionSpec(), 50),  # the plan the operator freezes at the canary's start (issue 25)
        reading,
        elapsed=timedelta(days=7),
        previous=None,
        now=START + timedelta(days=7),
    )


USERS = [f"user-{i}" for i in range(14)]
event = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("exposure"),
            "generation": st.sampled_from(["gen2", "gen2", "gen3"]),
            "user": st.sampled_from(USERS),
            "arm": st.sampled_from(["control", "treatment"]),
            "pre_depth": st.integers(0, 40).map(lambda q: q / 4),  # quarters: every sum exact in binary
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("engagement"),
            "generation": st.sampled_from(["gen2", "gen2", "gen3"]),
            "user": st.sampled_from(USERS),
            "turns": st.one_of(st.integers(0, 5), st.integers(6, 10**5)),  # large ones: log(1 + depth) (issue 25)
            "day": st.integers(0, 6),
        },
        optional={
            "arm": st.sampled_from(["control", "treatment"]),
            "responses": st.integers(0, 5),
            "guardrails": st.fixed_dictionaries({}, optional={name: st.integers(0, 5) for name in GUARDRAILS}),
        },
    ),
)


def valid(raw: dict) -> dict:
    """Guardrail counts within the event's responses (the exporter refuses more)."""
    if raw["type"] == "engagement" and "guardrails" in raw:
        served = raw.get("responses", raw["turns"])
        raw = {**raw, "guardrails": {k: min(v, served) for k, v in raw["guardrails"].items()}}
    return raw


@settings(max_examples=60, deadline=None)
@given(st.lists(event.map(valid), min_size=1, max_size=60), st.integers(1, 3))
def test_the_exporter_and_the_sql_source_give_identical_arm_stats_and_decisions(events, min_days) -> None:
    """Exposure order, adoption, unattributed engagement, crossovers both ways, repeated exposures, other
    generations, zero-turn events and out-of-order days: every ArmStats field equal, and the same decision."""
    got = sql_reading(events, engagedMinDays=min_days)
    expected = exporter_reading(events, min_days=min_days)
    if expected.error is not None:  # an arm nobody was exposed to: no data either way
        assert got.error is not None and "no user exposed" in got.error
        return
    assert got.error is None and got == expected
    assert got.control is not None and got.control.depth_log_sum is not None  # the log-scale sums too (issue 25)
    assert decision(got).model_dump() == decision(expected).model_dump()


def simulated_week(users: int = 400, seed: int = 3) -> list[dict]:
    """A 7-day A/B test of the simulator's shape: exposure, then sessions on some days; treatment a bit deeper."""
    import random

    rng = random.Random(seed)
    events = []
    for index in range(users):
        arm = "treatment" if index % 2 else "control"
        user = f"sim-{index}"
        events.append(
            {"type": "exposure", "generation": "gen2", "user": user, "arm": arm, "pre_depth": rng.randint(0, 9)}
        )
        for day in range(7):
            if rng.random() < (0.45 if arm == "treatment" else 0.35):
                turns = rng.randint(1, 6)
                bad = int(rng.random() < 0.05)
                events.append(
                    {
                        "type": "engagement",
                        "generation": "gen2",
                        "user": user,
                        "turns": turns,
                        "day": day,
                        "responses": turns,
                        "guardrails": {"errors": bad},
                    }
                )
    return events


def test_a_simulated_week_reads_the_same_from_parquet_with_the_same_decision(tmp_path: Path) -> None:
    events = simulated_week()
    write_parquet(events, tmp_path / "events.parquet")
    reader = SqlReader(promotion(url="duckdb:///:memory:", parquet=str(tmp_path / "*.parquet")))
    got = reader.read(generation="gen2", namespace="default", now=START + timedelta(days=7))
    expected = exporter_reading(events, batch=1000)
    assert got.error is None and got == expected
    verdict = decision(got)
    assert verdict.model_dump() == decision(expected).model_dump()


def test_a_stale_log_or_a_failing_engine_is_no_data(tmp_path: Path) -> None:
    events = simulated_week(40)
    connection = duckdb_with(events)
    stale = SqlReader(promotion(table="chat_events", maxEventAge="30m"), run=lambda q: connection.execute(q).fetchall())
    reading = stale.read(generation="gen2", namespace="default", now=START + timedelta(days=7))
    assert reading.error is not None and "stale" in reading.error
    missing = SqlReader(promotion(table="no_such_table"), run=lambda q: connection.execute(q).fetchall())
    reading = missing.read(generation="gen2", namespace="default", now=START)
    assert reading.error is not None and "no_such_table" in reading.error and not reading.has_data
    nobody = SqlReader(promotion(table="chat_events"), run=lambda q: connection.execute(q).fetchall())
    assert "no user exposed to control and treatment" in nobody.read(generation="gen9", namespace="x", now=START).error


def test_the_source_names_the_field_to_fix() -> None:
    with pytest.raises(ValidationError, match="exactly one of `table`"):
        promotion(table="a", parquet="s3://b/*.parquet")
    with pytest.raises(ValidationError, match="table"):
        promotion(table="events; DROP TABLE users")
    assert engine_dialect(promotion(table="t", url="trino://gw:8080/hive").source.sql) == "trino"
    assert engine_dialect(promotion(table="t", url="local[2]").source.sql) == "spark"
    with pytest.raises(ValueError, match="DuckDB or Spark only"):
        build_query(
            promotion(parquet="x.parquet", url="sqlite://").source.sql, GUARDRAILS, generation="g", namespace="n"
        )


def test_other_engines_get_the_query_in_their_dialect_through_sqlalchemy(tmp_path: Path) -> None:
    """SQLAlchemy + sqlglot: SQLite here (any SQLAlchemy URL works the same way); identical to the exporter."""
    import sqlalchemy

    events = simulated_week(120, seed=5)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE TABLE chat_events ({COLUMNS.replace('VARCHAR', 'TEXT')})"))
        connection.execute(
            sqlalchemy.text("INSERT INTO chat_events VALUES (:t, :ty, :g, :ns, :u, :a, :p, :tu, :r, :d, :iv, :fr, :e)"),
            [
                dict(zip(["t", "ty", "g", "ns", "u", "a", "p", "tu", "r", "d", "iv", "fr", "e"], row, strict=True))
                for row in rows_of(events)
            ],
        )
    engine.dispose()
    reader = SqlReader(promotion(url=f"sqlite:///{tmp_path / 'log.db'}", table="chat_events"))
    got = reader.read(generation="gen2", namespace="default", now=START + timedelta(days=7))
    assert got.error is None, got.error
    assert got == exporter_reading(events, batch=500)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a JRE (scripts/install-test-tools.sh)")
def test_spark_in_local_mode_reads_the_same_arm_stats_and_decision(tmp_path: Path) -> None:
    """A distributed engine: Spark (pyspark, local[2]) runs the sqlglot translation over the Parquet log."""
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    events = simulated_week(300, seed=11)
    write_parquet(events, tmp_path / "part-0.parquet")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("flywheel-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    try:
        reader = SqlReader(promotion(url="local[2]", parquet=str(tmp_path / "*.parquet")))
        got = reader.read(generation="gen2", namespace="default", now=START + timedelta(days=7))
    finally:
        session.stop()
    assert got.error is None, got.error
    expected = exporter_reading(events, batch=1000)
    assert got == expected
    assert decision(got).model_dump() == decision(expected).model_dump()


def test_the_operator_reads_the_sql_source_when_it_is_set() -> None:
    """kube.backend's reader goes through reader_for: SQL when promotion.source.sql is set, else Prometheus."""
    from flywheel_operator.gate.readers import PrometheusReader, reader_for

    assert isinstance(reader_for(promotion(table="chat_events")), SqlReader)
    assert isinstance(reader_for(PromotionSpec()), PrometheusReader)


def test_parquet_on_s3_reads_through_the_operators_filesystem_with_the_same_statistics(
    s3: str, tmp_path: Path
) -> None:
    """s3:// Parquet is read through flywheel_operator.storage's fsspec filesystem (credentials and the S3-compatible
    endpoint from the environment), registered with DuckDB: a real S3 server, no DuckDB extension download."""
    from flywheel_operator import storage

    events = simulated_week(60)
    write_parquet(events, tmp_path / "part-0.parquet")
    storage.put_file(tmp_path / "part-0.parquet", f"{s3}/chat-logs/part-0.parquet")
    reader = SqlReader(promotion(parquet=f"{s3}/chat-logs/*.parquet"))
    got = reader.read(generation="gen2", namespace="default", now=START + timedelta(days=7))
    assert got.error is None and got == exporter_reading(events, batch=1000)


def test_an_engine_that_cannot_read_the_files_is_no_data_with_its_reason(s3: str) -> None:
    """A bucket that holds no such files: the reading says why, the gate continues (no data, no decision)."""
    reader = SqlReader(promotion(parquet=f"{s3}/no-such-prefix/*.parquet"))
    reading = reader.read(generation="gen2", namespace="default", now=START)
    assert not reading.has_data and reading.error.startswith("the SQL source at duckdb:///:memory: failed")
