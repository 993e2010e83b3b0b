"""The readers at their edges (issue 31: mutants `make mutation` found surviving): the per-user guardrail sums,
the serving windows of an idle or unknown revision, and the local reader's words."""

from __future__ import annotations

import httpx
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
