"""The warehouse-native reader: each arm's exact `ArmStats` from one SQL query over the chat backend's event log.

The event log has one row per event the chat backend would POST to the exporter (docs/metrics.md, "The SQL
source"): `event_time`, `type` ('exposure' | 'engagement'), `generation`, `namespace`, `user_id`, `arm`,
`pre_depth`, `turns`, `responses`, `day`, and one count column per guardrail. The query applies the exporter's
rules (gate.store) to it, in event order:

- a user belongs to the arm of their first exposure, or of their first engagement naming an arm when no
  exposure came before it (an *adopted* user); engagement before either names no arm and is not counted;
- every engagement from that event on counts in that arm (intention to treat); a later event naming the other
  arm makes the user a crossover;
- depth, responses and guardrail events are summed per user, then per arm with their squares and cross
  products, and so is each user's log(1 + depth) in whole units of 1/65536 (the exporter's integers); a user is
  engaged when active (turns > 0) on at least `engaged_min_days` distinct days.

So the exporter and the query give the same `ArmStats` for the same events (tests/gate/test_sql_source.py):
"in event order" is `event_time` order, and the events of a user at the very instant of the event that created
them count with it (an exposure creates the user before an engagement of the same instant does).

The query is hash aggregations and one hash join, no sort: the users' creation times, the events from then on
per user (with engaged read from the first and last active day when `engaged_min_days` ≤ 2, or per user-day
otherwise), then the arms. It is written once, in DuckDB's dialect, and translated by sqlglot for every other
engine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from flywheel_operator.api import ArmStats, OnlineReading
from flywheel_operator.api.durations import parse_duration
from flywheel_operator.api.models import PromotionSpec, SqlSource
from flywheel_operator.gate.store import log_depth_sums

ARMS = ("control", "treatment")
SPARK_SCHEMES = ("spark://", "sc://", "k8s://", "local", "yarn")
SQLALCHEMY_DIALECTS = {
    "postgresql": "postgres",
    "mssql": "tsql",
    "awsathena": "athena",
    "databricks": "databricks",
    "hive": "hive",
    "mysql": "mysql",
    "mariadb": "mysql",
    "oracle": "oracle",
    "redshift": "redshift",
    "snowflake": "snowflake",
    "bigquery": "bigquery",
    "trino": "trino",
    "presto": "presto",
    "clickhouse": "clickhouse",
    "sqlite": "sqlite",
    "duckdb": "duckdb",
}
"""SQLAlchemy dialect name -> sqlglot dialect (the same name where it is the same)."""

_QUERY = """
WITH ev AS (
    SELECT
        user_id AS u,
        type AS t,
        arm AS a,
        CASE WHEN arm = 'treatment' THEN 1 ELSE 0 END AS b,
        CASE WHEN type = 'exposure' OR arm IS NOT NULL THEN 1 ELSE 0 END AS eligible,
        CASE WHEN type = 'exposure' THEN 0 ELSE 1 END AS tie,
        COALESCE(pre_depth, 0) AS pre,
        COALESCE(turns, 1) AS turns,
        COALESCE(responses, turns, 1) AS served,
        COALESCE(CAST(day AS BIGINT), DATE_DIFF('day', CAST('1970-01-01' AS DATE), CAST(event_time AS DATE))) AS d,
        event_time AS ts
        {guardrail_columns}
    FROM {relation}
    WHERE generation = {generation} AND (namespace = {namespace} OR namespace IS NULL)
),
firsts AS (
    -- when each user was created: their first exposure, or first engagement naming an arm
    SELECT u, MIN(CASE WHEN eligible = 1 THEN ts END) AS t0 FROM ev GROUP BY u
),
counted AS (
    -- the user's events from then on: earlier engagement names no arm and is not counted
    SELECT e.*, f.t0 FROM ev AS e JOIN firsts AS f ON e.u = f.u WHERE e.ts >= f.t0
),
{per_user}
users AS (
    -- c = 2·tie + arm of the creating event (an exposure first, at the same instant): its arm and whether the
    -- user was adopted (created by an engagement); a crossover named the other arm later
    SELECT
        c % 2 AS b,
        CASE WHEN c >= 2 THEN 1 ELSE 0 END AS adopted,
        COALESCE(pre, 0) AS pre,
        depth,
        served,
        {guardrail_names}
        days,
        CASE WHEN c % 2 = 1 THEN named_control ELSE named_treatment END AS crossed,
        last_ts,
        -- the user's log(1 + depth) in whole units of 1/65536, as the exporter counts it (gate.store)
        CAST(FLOOR(LN(1 + CAST(depth AS DOUBLE)) * 65536 + 0.5) AS BIGINT) AS lu
    FROM per_user
)
SELECT
    CASE WHEN b = 1 THEN 'treatment' ELSE 'control' END AS arm,
    COUNT(*) AS users,
    SUM(CASE WHEN days >= {engaged_min_days} THEN 1 ELSE 0 END) AS engaged,
    SUM(CAST(depth AS DOUBLE)) AS depth_sum,
    SUM(CAST(depth AS DOUBLE) * depth) AS depth_sum_squares,
    SUM(CAST(pre AS DOUBLE)) AS pre_sum,
    SUM(CAST(pre AS DOUBLE) * pre) AS pre_sum_squares,
    SUM(CAST(pre AS DOUBLE) * depth) AS pre_cross_sum,
    SUM(CAST(served AS DOUBLE)) AS responses,
    SUM(CAST(served AS DOUBLE) * served) AS responses_sum_squares,
    {guardrail_totals}
    SUM(adopted) AS adopted,
    SUM(crossed) AS crossed,
    MAX(last_ts) AS last_event,
    SUM(lu) AS depth_log_units,
    SUM(lu * lu) AS depth_log_units_squared
FROM users
GROUP BY b
ORDER BY b
"""

_PER_USER_SUMS = """
        MIN(CASE WHEN ts = t0 AND eligible = 1 THEN 2 * tie + b END) AS c,
        MAX(CASE WHEN ts = t0 AND t = 'exposure' THEN pre END) AS pre,
        SUM(CASE WHEN t = 'engagement' THEN turns ELSE 0 END) AS depth,
        SUM(CASE WHEN t = 'engagement' THEN served ELSE 0 END) AS served,
        {guardrail_sums}
        MAX(CASE WHEN a = 'treatment' THEN 1 ELSE 0 END) AS named_treatment,
        MAX(CASE WHEN a = 'control' THEN 1 ELSE 0 END) AS named_control,
        MAX(ts) AS last_ts"""

_FEW_DAYS = """per_user AS (
    -- engaged after 1 or 2 distinct active days: the first and last active day tell (one pass, no DISTINCT)
    SELECT
        {sums},
        CASE
            WHEN MAX(CASE WHEN t = 'engagement' AND turns > 0 THEN d END)
                 > MIN(CASE WHEN t = 'engagement' AND turns > 0 THEN d END) THEN 2
            WHEN MAX(CASE WHEN t = 'engagement' AND turns > 0 THEN d END) IS NOT NULL THEN 1
            ELSE 0
        END AS days
    FROM counted
    GROUP BY u
),"""

_MANY_DAYS = """per_user_day AS (
    -- per user and day first (plain sums, no DISTINCT); then each active day counts once
    SELECT
        u,
        {sums},
        MAX(CASE WHEN t = 'engagement' AND turns > 0 THEN 1 ELSE 0 END) AS active
    FROM counted
    GROUP BY u, d
),
per_user AS (
    SELECT
        MIN(c) AS c,
        MAX(pre) AS pre,
        SUM(depth) AS depth,
        SUM(served) AS served,
        {guardrail_user_sums}
        MAX(named_treatment) AS named_treatment,
        MAX(named_control) AS named_control,
        MAX(last_ts) AS last_ts,
        SUM(active) AS days
    FROM per_user_day
    GROUP BY u
),"""
_PLACEHOLDER = "flywheel_event_log_relation"


def _string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def engine_dialect(source: SqlSource) -> str:
    """The sqlglot dialect the query is written out in."""
    if source.dialect:
        return source.dialect
    url = source.url
    if url.startswith("duckdb:"):
        return "duckdb"
    if url.startswith(SPARK_SCHEMES):
        return "spark"
    from sqlalchemy.engine import make_url

    name = make_url(url).get_backend_name()
    return SQLALCHEMY_DIALECTS.get(name, name)


def relation(source: SqlSource, dialect: str) -> str:
    """The FROM clause of the event log, in the engine's own syntax."""
    if source.table is not None:
        return source.table
    assert source.parquet is not None
    if dialect == "duckdb":
        return f"read_parquet({_string(source.parquet)})"
    if dialect == "spark":
        return f"parquet.`{source.parquet.replace('`', '')}`"
    raise ValueError(
        f"promotion.source.sql.parquet is read by DuckDB or Spark only, not by {dialect!r}; "
        "point `table` at an external table over the files instead"
    )


def guardrail_column(source: SqlSource, name: str) -> str:
    return source.guardrail_columns.get(name) or name.replace("-", "_")


def build_query(source: SqlSource, guardrails: Sequence[str], *, generation: str, namespace: str) -> str:
    """The one query, in the engine's dialect: one row per arm with every sum of `ArmStats`."""
    import sqlglot

    dialect = engine_dialect(source)
    columns = [guardrail_column(source, name) for name in guardrails]
    for column in columns:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column):
            raise ValueError(f"guardrail column {column!r} is not a plain SQL identifier; set guardrailColumns")
    k = range(len(columns))
    sums = _PER_USER_SUMS.strip().format(
        guardrail_sums="".join(f"SUM(CASE WHEN t = 'engagement' THEN g{i} ELSE 0 END) AS g{i}," for i in k)
    )
    per_user = (_FEW_DAYS if source.engaged_min_days <= 2 else _MANY_DAYS).format(
        sums=sums, guardrail_user_sums="".join(f"SUM(g{i}) AS g{i}," for i in k)
    )
    text = _QUERY.format(
        relation=_PLACEHOLDER,
        generation=_string(generation),
        namespace=_string(namespace),
        engaged_min_days=int(source.engaged_min_days),
        guardrail_columns="".join(f", COALESCE({c}, 0) AS g{i}" for i, c in zip(k, columns, strict=True)),
        per_user=per_user,
        guardrail_names="".join(f"g{i}," for i in k),
        guardrail_totals="".join(
            f"SUM(CAST(g{i} AS DOUBLE)) AS g{i}_sum, SUM(CAST(g{i} AS DOUBLE) * g{i}) AS g{i}_squares, "
            f"SUM(CAST(g{i} AS DOUBLE) * served) AS g{i}_cross,"
            for i in k
        ),
    )
    if dialect != "duckdb":
        text = sqlglot.transpile(text, read="duckdb", write=dialect, pretty=True)[0]
    # the relation goes in after translation: Spark's parquet.`glob` is not DuckDB syntax
    return text.replace(_PLACEHOLDER, relation(source, dialect))


Runner = Callable[[str], list[tuple]]
"""Runs a query and returns its rows (tuples, columns in the query's order)."""


def runner_for(source: SqlSource) -> tuple[Runner, Callable[[], None]]:
    """(run, close) for the source's engine."""
    url = source.url
    if url.startswith("duckdb:"):
        import duckdb

        path = url.removeprefix("duckdb:").removeprefix("///") or ":memory:"
        connection = duckdb.connect(path, read_only=path != ":memory:")
        if source.parquet and source.parquet.startswith(("s3://", "gs://", "gcs://", "http://", "https://")):
            _object_store(connection, source.parquet)
        return (lambda query: connection.execute(query).fetchall()), connection.close
    if url.startswith(SPARK_SCHEMES):
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.appName("flywheel-gate")
        session = (builder.remote(url) if url.startswith("sc://") else builder.master(url)).getOrCreate()
        return (lambda query: [tuple(row) for row in session.sql(query).collect()]), (lambda: None)
    from sqlalchemy import create_engine, text

    engine = create_engine(url)

    def run(query: str) -> list[tuple]:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]

    return run, engine.dispose


def _object_store(connection: Any, uri: str) -> None:
    """Let DuckDB read Parquet on object storage. s3:// and gs:// go through the operator's own fsspec filesystem
    (flywheel_operator.storage: the same credentials, AWS_* environment and S3-compatible endpoint as every other
    object-store read), registered with DuckDB, so no DuckDB extension has to be downloaded at run time (a cluster
    may not reach DuckDB's extension repository). http(s):// needs the httpfs extension in the image."""
    from flywheel_operator import storage

    if storage.scheme(uri) in ("s3", "gs", "gcs"):
        fs, _ = storage.filesystem(uri)
        connection.register_filesystem(fs)
        return
    connection.execute("LOAD httpfs")


@dataclass
class SqlReader:
    """The gate's reader over `promotion.source.sql`: one query per look, both arms at once."""

    promotion: PromotionSpec
    run: Runner | None = None
    """Runs the query; None: opened from `source.url` for each read (and closed after it)."""

    @property
    def source(self) -> SqlSource:
        assert self.promotion.source.sql is not None, "SqlReader needs promotion.source.sql"
        return self.promotion.source.sql

    def read(
        self, *, generation: str, namespace: str, now: datetime, revisions: dict[str, str] | None = None
    ) -> OnlineReading:
        """Both arms' sums from the event log; with `revisions`, the hard SRE guardrails' serving windows from
        Prometheus, where KServe exports them whatever the engagement source (readers.PrometheusReader)."""
        reading = self._read_sums(generation=generation, namespace=namespace, now=now)
        if revisions and self.promotion.serving_guardrails:
            import httpx

            from flywheel_operator.gate.readers import PrometheusReader

            prometheus = PrometheusReader(self.promotion)
            with httpx.Client(base_url=self.promotion.prometheus_url, timeout=prometheus.timeout) as client:
                serving = prometheus.read_serving(client, namespace=namespace, revisions=revisions, now=now)
            reading = reading.model_copy(update={"serving": serving})
        return reading

    def _read_sums(self, *, generation: str, namespace: str, now: datetime) -> OnlineReading:
        guardrails = [g.name for g in self.promotion.guardrails]
        try:
            query = build_query(self.source, guardrails, generation=generation, namespace=namespace)
        except ValueError as exc:
            return OnlineReading(at=now, error=str(exc))
        close: Callable[[], None] = lambda: None  # noqa: E731
        try:
            run = self.run
            if run is None:
                run, close = runner_for(self.source)
            rows = run(query)
        except Exception as exc:  # any driver's error: the reading is no data, with the engine's message
            return OnlineReading(
                at=now,
                error=f"the SQL source at {self.source.url} failed: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}",
            )
        finally:
            close()
        return reading_from_rows(
            rows, guardrails, now=now, max_event_age=self.source.max_event_age, generation=generation
        )


def reading_from_rows(
    rows: Sequence[Sequence[Any]],
    guardrails: Sequence[str],
    *,
    now: datetime,
    generation: str,
    max_event_age: str | None = None,
) -> OnlineReading:
    """The query's rows (one per arm) as the gate's reading; a missing arm or a stale log is no data."""
    by_arm = {row[0]: row for row in rows}
    missing = [arm for arm in ARMS if arm not in by_arm]
    if missing:
        return OnlineReading(at=now, error=f"no user exposed to {' and '.join(missing)} of {generation!r} in the log")
    stats: dict[str, ArmStats] = {}
    crossed = 0
    latest: datetime | None = None
    try:
        for arm in ARMS:
            values = list(by_arm[arm])
            (_, users, engaged, depth, depth2, pre, pre2, pre_cross, responses, responses2), rest = (
                values[:10],
                values[10:],
            )
            per_guardrail = rest[: 3 * len(guardrails)]
            adopted, crossed_arm, last_event, log_units, log_squares = rest[3 * len(guardrails) :]
            log_sum, log_sum_squares = log_depth_sums(_whole_units(log_units), _whole_units(log_squares))
            sums = {
                name: tuple(_number(v) for v in per_guardrail[3 * i : 3 * i + 3]) for i, name in enumerate(guardrails)
            }
            stats[arm] = ArmStats(
                users=_count(users),
                engaged_users=_count(engaged),
                depth_sum=_number(depth),
                depth_sum_squares=_number(depth2),
                pre_sum=_number(pre),
                pre_sum_squares=_number(pre2),
                pre_cross_sum=_number(pre_cross),
                responses=_count(responses),
                guardrails={name: s[0] for name, s in sums.items()},
                responses_sum_squares=_number(responses2),
                guardrail_sum_squares={name: s[1] for name, s in sums.items()},
                guardrail_cross_sums={name: s[2] for name, s in sums.items()},
                adopted_users=_count(adopted),
                depth_log_sum=log_sum,
                depth_log_sum_squares=log_sum_squares,
            )
            crossed += _count(crossed_arm)
            moment = _moment(last_event)
            if moment is not None and (latest is None or moment > latest):
                latest = moment
    except (ValidationError, ValueError, TypeError) as exc:
        return OnlineReading(at=now, error=f"inconsistent sums from the SQL source: {exc}")
    if max_event_age is not None and latest is not None:
        age = now - latest
        if age > parse_duration(max_event_age):
            return OnlineReading(
                at=now,
                error=f"the latest event of {generation!r} in the log is {age.total_seconds():.0f}s old (limit "
                f"{max_event_age}, stale): is the chat backend still writing its event log?",
            )
    try:
        return OnlineReading(at=now, control=stats["control"], treatment=stats["treatment"], crossover_users=crossed)
    except ValidationError as exc:
        return OnlineReading(at=now, error=f"inconsistent sums from the SQL source: {exc.errors()[0]['msg']}")


def _number(value: Any) -> float:
    number = 0.0 if value is None else float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"a sum is {value}")
    return number


def _count(value: Any) -> int:
    number = _number(value)
    if number < 0 or number != round(number):
        raise ValueError(f"a count is {value}, not a whole number")
    return round(number)


def _whole_units(value: Any) -> int:
    """An integer sum of log-depth units, exactly as the engine returned it (an int, a HUGEINT, a Decimal)."""
    if value is None:
        return 0
    if isinstance(value, float):
        return _count(value)
    number = int(value)
    if number < 0 or number != value:
        raise ValueError(f"a log-depth sum is {value}, not a whole number of units")
    return number


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None
