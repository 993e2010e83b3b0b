"""The readers at their edges (issue 31: mutants `make mutation` found surviving): the per-user guardrail sums,
the serving windows of an idle or unknown revision, and the local reader's words."""

from __future__ import annotations

import httpx
import pytest
from flywheel_operator.gate.readers import PrometheusReader, read_local
from flywheel_operator.gate.store import EngagementStore

from tests.gate.arms import NOW
from tests.gate.test_readers import ARMS, SPEC, answers, transport

REVISIONS = {"treatment": "chat-predictor-00003", "control": "chat-predictor-00002"}


def reader(table: dict) -> PrometheusReader:
    client = httpx.Client(base_url=SPEC.prometheus_url, transport=transport(table))
    return PrometheusReader(SPEC, client=client, sleep=lambda _: None)


def test_the_per_user_guardrail_sums_are_read_per_guardrail() -> None:
    table: dict[str, object] = dict(answers())
    queries = SPEC.queries
    for arm, stats in ARMS.items():
        labels = {"arm": arm, "generation": "gen2", "namespace": "ns"}
        table[queries.responses_sum_squares.format(**labels)] = 4.0 * stats.responses
        for name, count in stats.guardrails.items():
            table[queries.guardrail_sum_squares.format(**labels, guardrail=name)] = count + 1
            table[queries.guardrail_cross_sum.format(**labels, guardrail=name)] = 2.0 * count
    got = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert got.has_data and got.control is not None, got.error
    assert got.control.responses_sum_squares == 4.0 * ARMS["control"].responses
    assert got.control.guardrail_sum_squares == {n: c + 1 for n, c in ARMS["control"].guardrails.items()}
    assert got.control.guardrail_cross_sums == {n: 2.0 * c for n, c in ARMS["control"].guardrails.items()}
    # one guardrail's per-user sums missing: only that guardrail lacks them
    labels = {"arm": "control", "generation": "gen2", "namespace": "ns", "guardrail": "errors"}
    del table[queries.guardrail_sum_squares.format(**labels)]
    partial = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert partial.control is not None and "errors" not in partial.control.guardrail_sum_squares
    assert set(partial.control.guardrail_sum_squares) == {"instruction-violations", "false-refusals"}


def serving_table(requests: dict[str, object]) -> dict[str, object]:
    table: dict[str, object] = dict(answers())
    queries = SPEC.serving_queries
    for arm, revision in REVISIONS.items():
        labels = {"namespace": "ns", "revision": revision, "window": "2m"}
        if requests[arm] is not None:
            table[queries.requests.format(**labels)] = requests[arm]
        table[queries.errors.format(**labels)] = 3
        table[queries.latency_p95.format(**labels)] = 0.7
    return table


def test_an_idle_revision_has_zero_requests_and_no_latency() -> None:
    """No request series (an idle canary) is 0 requests, not an error; p95 is read only where requests came, and
    only for the latency guardrail."""
    got = reader(serving_table({"control": 500, "treatment": None})).read(
        generation="gen2", namespace="ns", now=NOW, revisions=REVISIONS
    )
    assert got.serving is not None and got.serving.errors == {}
    latency = got.serving.windows["latency-p95"]
    assert latency["treatment"].requests == 0.0 and latency["treatment"].latency_p95_seconds is None
    assert latency["control"].requests == 500 and latency["control"].latency_p95_seconds == 0.7
    errors = got.serving.windows["errors"]
    assert errors["control"].latency_p95_seconds is None and errors["control"].errors == 3


def test_a_revision_not_known_is_reported_per_guardrail() -> None:
    got = reader(serving_table({"control": 500, "treatment": 500})).read(
        generation="gen2", namespace="ns", now=NOW, revisions={"treatment": "chat-predictor-00003"}
    )
    assert got.serving is not None and got.serving.windows == {}
    assert got.serving.errors == {"errors": "no control revision known", "latency-p95": "no control revision known"}
    assert got.has_data  # the engagement reading does not depend on it


def test_the_local_reader_names_the_arms_without_users() -> None:
    empty = read_local(EngagementStore(), generation="gen2", now=NOW)
    assert empty.error == "no user exposed to control and treatment of 'gen2' yet" and not empty.has_data


def scripted(answers_: list[httpx.Response], seen: list[httpx.Request]) -> PrometheusReader:
    """A reader whose Prometheus gives `answers_` in turn (then the last one again)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers_[min(len(seen) - 1, len(answers_) - 1)]

    client = httpx.Client(base_url=SPEC.prometheus_url, transport=httpx.MockTransport(handle))
    return PrometheusReader(SPEC, client=client, sleep=lambda _: None, timeout=7.0)


def ask(prometheus: PrometheusReader, query: str) -> float:
    assert prometheus.client is not None
    return prometheus._value(prometheus.client, query, NOW)


def vector(*values: float) -> httpx.Response:
    result = [{"metric": {}, "value": [NOW.timestamp(), str(v)]} for v in values]
    return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})


def test_a_query_sends_its_time_and_timeout_and_retries_a_500() -> None:
    seen: list[httpx.Request] = []
    value = ask(scripted([httpx.Response(500, text="busy"), vector(3.0)], seen), "up")
    assert value == 3.0 and len(seen) == 2
    assert seen[0].url.params["timeout"] == "7s" and seen[0].url.params["time"] == f"{NOW.timestamp():.3f}"
    assert seen[0].url.path == "/api/v1/query" and seen[0].url.params["query"] == "up"


def test_errors_are_no_data_with_prometheus_words() -> None:
    from flywheel_operator.gate.readers import NoData

    long = "x" * 300
    with pytest.raises(NoData) as error:
        ask(scripted([httpx.Response(503, text=long)], []), "up")
    assert str(error.value) == f"Prometheus answered 503: {'x' * 200} (after 3 attempts)"
    bad = httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error at 3"})
    with pytest.raises(NoData) as error:
        ask(scripted([bad], []), "up(")
    assert str(error.value) == "query 'up(' failed: bad_data: parse error at 3"
    with pytest.raises(NoData, match="returned 2 series; the template must aggregate to one"):
        ask(scripted([vector(1.0, 2.0)], []), "up")


def test_a_scalar_answer_is_read() -> None:
    scalar = httpx.Response(200, json={"status": "success", "data": {"resultType": "scalar",
                                                                      "result": [NOW.timestamp(), "42"]}})
    assert ask(scripted([scalar], []), "scalar(up)") == 42.0


def test_a_fractional_engaged_count_is_named() -> None:
    table: dict[str, object] = dict(answers())
    table[SPEC.queries.engaged.format(arm="control", generation="gen2", namespace="ns")] = 600.5
    got = reader(table).read(generation="gen2", namespace="ns", now=NOW)
    assert got.error == "engaged = 600.5 is not a non-negative whole count; check the query template"


def test_without_a_client_the_reader_opens_one_on_the_promotion_url(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[dict] = []
    real = httpx.Client

    def client(**kwargs: object) -> httpx.Client:
        opened.append(kwargs)
        return real(transport=transport(answers()), **kwargs)

    monkeypatch.setattr(httpx, "Client", client)
    got = PrometheusReader(SPEC, timeout=4.0).read(generation="gen2", namespace="ns", now=NOW)
    assert got.has_data, got.error
    assert opened == [{"base_url": SPEC.prometheus_url, "timeout": 4.0}]
