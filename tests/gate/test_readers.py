"""The PromQL reader through a fake transport: empty, NaN, stale, errors and outages are "no data", never 0."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from flywheel_operator.api import ArmStats, PromotionSpec
from flywheel_operator.gate import evaluate_online
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.readers import PrometheusReader, read_local
from flywheel_operator.gate.store import EngagementStore

from tests.gate.arms import NOW, plan_of
from tests.gate.test_store import engagement, exposure

SPEC = PromotionSpec(prometheus_url="http://prometheus.test:9090")
ARMS = {
    "control": ArmStats(
        users=1000,
        engaged_users=600,
        depth_sum=2500,
        depth_sum_squares=30000,
        pre_sum=2000,
        pre_sum_squares=20000,
        pre_cross_sum=15000,
        responses=2600,
        guardrails={"instruction-violations": 30, "false-refusals": 10, "errors": 2},
    ),
    "treatment": ArmStats(
        users=1010,
        engaged_users=640,
        depth_sum=2700,
        depth_sum_squares=33000,
        pre_sum=2010,
        pre_sum_squares=20500,
        pre_cross_sum=16000,
        responses=2800,
        guardrails={"instruction-violations": 28, "false-refusals": 9, "errors": 3},
    ),
}


def answers(generation: str = "gen2") -> dict[str, float]:
    """What a Prometheus holding ARMS answers to each templated query."""
    queries = SPEC.queries
    table: dict[str, float] = {}
    for arm, stats in ARMS.items():
        labels = {"arm": arm, "generation": generation, "namespace": "ns"}
        table[queries.users.format(**labels)] = stats.users
        table[queries.engaged.format(**labels)] = stats.engaged_users
        table[queries.depth_sum.format(**labels)] = stats.depth_sum
        table[queries.depth_sum_squares.format(**labels)] = stats.depth_sum_squares
        table[queries.pre_sum.format(**labels)] = stats.pre_sum
        table[queries.pre_sum_squares.format(**labels)] = stats.pre_sum_squares
        table[queries.pre_cross_sum.format(**labels)] = stats.pre_cross_sum
        table[queries.responses.format(**labels)] = stats.responses
        for name, count in stats.guardrails.items():
            table[queries.guardrail.format(**labels, guardrail=name)] = count
    table[queries.last_event.format(generation=generation, namespace="ns")] = NOW.timestamp() - 60
    return table


def transport(table: dict[str, object], *, age: float = 0.0, log: list | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        if log is not None:
            log.append(query)
        at = float(request.url.params["time"]) - age
        value = table.get(query)
        if isinstance(value, Exception):
            raise value
        if isinstance(value, httpx.Response):
            return value
        result = [] if value is None else [{"metric": {}, "value": [at, str(value)]}]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})

    return httpx.MockTransport(handle)


def reader(table: dict, **kwargs: object) -> PrometheusReader:
    age = kwargs.pop("age", 0.0)
    client = httpx.Client(transport=transport(table, age=age), base_url=SPEC.prometheus_url)
    return PrometheusReader(SPEC, client=client, sleep=lambda _: None, **kwargs)


def test_reads_both_arms_from_the_templates() -> None:
    reading = reader(answers()).read(generation="gen2", namespace="ns", now=NOW)
    assert reading.has_data
    assert reading.control == ARMS["control"] and reading.treatment == ARMS["treatment"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"users": None}, "no series"),
        ({"users": "NaN"}, "NaN"),
        ({"depth_sum": "+Inf"}, "Inf"),
        ({"users": 10.5}, "whole count"),
        ({"engaged": 5000}, "inconsistent"),
        ({"depth_sum": -3}, "inconsistent"),
        ({"pre_cross_sum": -1}, "inconsistent"),
        ({"users": httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse"})}, "parse"),
        ({"users": httpx.Response(503, text="overloaded")}, "503"),
        ({"users": httpx.ConnectError("refused")}, "unreachable"),
    ],
)
def test_bad_answers_are_no_data(change: dict, fragment: str) -> None:
    table = answers()
    labels = {"arm": "treatment", "generation": "gen2", "namespace": "ns"}
    for field, value in change.items():
        table[getattr(SPEC.queries, field).format(**labels)] = value
    reading = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert not reading.has_data and reading.control is None
    assert fragment in (reading.error or "")


def test_stale_samples_are_no_data() -> None:
    reading = reader(answers(), age=3600).read(generation="gen2", namespace="ns", now=NOW)
    assert "stale" in (reading.error or "")


def test_missing_optional_series_only_disable_cuped_or_a_guardrail() -> None:
    table = answers()
    labels = {"arm": "control", "generation": "gen2", "namespace": "ns"}
    del table[SPEC.queries.pre_cross_sum.format(**labels)]
    del table[SPEC.queries.guardrail.format(**labels, guardrail="errors")]
    reading = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert reading.has_data and reading.control is not None
    assert reading.control.pre_cross_sum is None and "errors" not in reading.control.guardrails


def test_transient_errors_are_retried() -> None:
    calls: list[str] = []
    table = answers()
    first = SPEC.queries.users.format(arm="control", generation="gen2", namespace="ns")
    flaky = {"count": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        calls.append(query)
        if query == first and flaky["count"] < 2:
            flaky["count"] += 1
            raise httpx.ReadTimeout("slow")
        at = float(request.url.params["time"])
        result = [{"metric": {}, "value": [at, str(table[query])]}] if query in table else []
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})

    client = httpx.Client(transport=httpx.MockTransport(handle), base_url=SPEC.prometheus_url)
    waits: list[float] = []
    reading = PrometheusReader(SPEC, client=client, sleep=waits.append).read(generation="gen2", namespace="ns", now=NOW)
    assert reading.has_data
    assert calls.count(first) == 3 and waits == [0.5, 1.0]


def test_a_prometheus_outage_continues_until_max_duration_then_is_inconclusive() -> None:
    outage = {query: httpx.ConnectError("connection refused") for query in answers()}
    previous = None
    outcomes = []
    for hours in (1, 30, 100, 167, 168, 169.5, 170, 200):  # issue 25: the last look waits finalLookGrace (2h)
        reading = reader(outage).read(generation="gen2", namespace="ns", now=NOW)
        previous = evaluate_online(
            plan_of(SPEC),
            reading,
            elapsed=timedelta(hours=hours),
            previous=previous,
            now=NOW,
        )
        outcomes.append(previous.outcome)
        assert any("no data" in r for r in previous.reasons)
    assert outcomes == ["CONTINUE"] * 6 + ["INCONCLUSIVE"] * 2


CROSSOVER = SPEC.queries.crossover.format(generation="gen2", namespace="ns")


def test_the_crossover_count_is_read_and_no_series_is_zero() -> None:
    table = answers()
    assert reader(table).read(generation="gen2", namespace="ns", now=NOW).crossover_users == 0  # none crossed yet
    table[CROSSOVER] = 25
    reading = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert reading.has_data and reading.crossover_users == 25


@pytest.mark.parametrize(
    ("value", "fragment"), [(2.5, "whole count"), (-1, "whole count"), ("NaN", "NaN"), (5000, "crossoverUsers")]
)
def test_a_crossover_count_that_is_no_count_of_the_exposed_users_is_no_data(value: object, fragment: str) -> None:
    table = {**answers(), CROSSOVER: value}
    reading = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert not reading.has_data and fragment in (reading.error or "")


def test_local_reader_reads_the_store() -> None:
    store = EngagementStore()
    assert "no user exposed" in (read_local(store, generation="gen2", now=NOW).error or "")
    for line in (exposure("a", pre=1), exposure("b", "treatment"), engagement("a", 2)):
        store.apply(parse_event(line))
    reading = read_local(store, generation="gen2", now=NOW)
    assert reading.has_data and reading.control is not None and reading.control.depth_sum == 2
    assert reading.crossover_users == 0
    store.apply(parse_event(exposure("a", "treatment")))  # a control user seen in the treatment arm
    assert read_local(store, generation="gen2", now=NOW).crossover_users == 1


@pytest.mark.parametrize("count", [-500, 2.5, -0.5])
def test_a_guardrail_count_that_is_not_a_whole_non_negative_number_is_no_data_and_never_promotes(count) -> None:
    """A treatment false-refusal count of -500 used to hide a real harm and let the candidate PROMOTE."""
    table = answers()
    labels = {"arm": "treatment", "generation": "gen2", "namespace": "ns"}
    table[SPEC.queries.guardrail.format(**labels, guardrail="false-refusals")] = count
    reading = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert not reading.has_data and "false-refusals" in (reading.error or "") and "whole count" in reading.error
    decision = evaluate_online(
        plan_of(SPEC),
        reading,
        elapsed=timedelta(hours=25),
        previous=None,
        now=NOW,
    )
    assert decision.outcome == "CONTINUE" and any("no data" in reason for reason in decision.reasons)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("field", ["depth_sum", "depth_sum_squares", "pre_sum", "pre_cross_sum", "guardrails"])
def test_arm_stats_refuse_infinite_and_nan_sums(field: str, value: float) -> None:
    raw = ARMS["control"].model_dump()
    raw[field] = {"errors": value} if field == "guardrails" else value
    with pytest.raises(ValueError, match=r"finite|greater than or equal"):
        ArmStats.model_validate(raw)


def test_events_that_stopped_flowing_are_stale_no_data() -> None:
    """The sums are aggregated instant queries, always evaluated at `now`: only the exporter's last-event time
    shows that the chat backend stopped posting, and then the gate must not decide on frozen sums."""
    table = answers()
    last = SPEC.queries.last_event.format(generation="gen2", namespace="ns")
    table[last] = NOW.timestamp() - 2 * 3600
    reading = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert not reading.has_data and "stale" in (reading.error or "") and "latest engagement event" in reading.error
    del table[last]
    assert "no series" in (reader(table).read(generation="gen2", namespace="ns", now=NOW).error or "")
    unchecked = SPEC.model_copy(update={"queries": SPEC.queries.model_copy(update={"last_event": ""})})
    client = httpx.Client(transport=transport(table), base_url=SPEC.prometheus_url)
    assert PrometheusReader(unchecked, client=client).read(generation="gen2", namespace="ns", now=NOW).has_data


def test_default_queries_select_the_generations_namespace() -> None:
    names = ("users", "engaged", "depth_sum", "depth_sum_squares", "pre_sum", "responses", "guardrail", "crossover")
    for name in names:
        query = getattr(SPEC.queries, name).format(arm="control", generation="gen2", namespace="ns", guardrail="g")
        assert 'namespace="ns"' in query, name
