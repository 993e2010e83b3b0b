"""`flywheel exporter`: the engagement exporter. POST /events (JSON lines), GET /metrics, GET /healthz.

It turns exposure and engagement events into the per-arm sufficient statistics the online gate needs, exported
as Prometheus counters labelled with `generation` and `arm` (names and meaning in docs/metrics.md). A custom
collector reads the store at scrape time, so a restart that reloads the snapshot resumes every counter where it
was.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from flywheel_operator.gate.events import parse_batch, utc_day, with_day
from flywheel_operator.gate.store import DEFAULT_ENGAGED_MIN_DAYS, LATENCY_BUCKETS, DurableStore, EngagementStore

LOG = logging.getLogger("flywheel.exporter")
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest POST body accepted; bigger batches get a 413 and should be split."""

ARM_LABELS = ["generation", "arm"]
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("flywheel_users_exposed", "users", "Users exposed to the arm (n)."),
    (
        "flywheel_users_engaged",
        "engaged",
        "Exposed users active (≥ 1 turn) on at least the exporter's --engaged-min-days distinct days "
        "(breadth numerator).",
    ),
    ("flywheel_depth_turns", "depth_sum", "Σ depth over exposed users; depth = user turns since exposure."),
    ("flywheel_depth_turns_squared", "depth_sum_squares", "Σ depth² over exposed users."),
    ("flywheel_pre_depth_turns", "pre_sum", "CUPED: Σ pre-period depth X over exposed users."),
    ("flywheel_pre_depth_turns_squared", "pre_sum_squares", "CUPED: Σ X² over exposed users."),
    ("flywheel_pre_depth_cross_turns", "pre_cross_sum", "CUPED: Σ X·depth over exposed users."),
    ("flywheel_responses", "responses", "Responses served to exposed users (guardrail denominator)."),
)
"""(metric name without `_total`, ArmTotals field, help text) of every per-arm counter."""
GUARDRAIL_METRIC = "flywheel_guardrail_events"
LATENCY_METRIC = "flywheel_response_latency_seconds"
EVENTS_METRIC = "flywheel_exporter_events"
CROSSOVER_METRIC = "flywheel_crossover_users"
"""Users seen in both arms, per generation (gate.crossover judges the share of flywheel_users_exposed)."""
METRIC_NAMES: tuple[str, ...] = (
    *(f"{name}_total" for name, _, _ in COUNTERS),
    f"{GUARDRAIL_METRIC}_total",
    LATENCY_METRIC,
    f"{EVENTS_METRIC}_total",
    f"{CROSSOVER_METRIC}_total",
)
"""Every series name family the exporter exposes (the chart's alerts and dashboard may use only these)."""


class StoreCollector(Collector):
    """Reads the store at scrape time: counters survive restarts because the store does."""

    def __init__(self, durable: DurableStore, outcomes: dict[str, int]) -> None:
        self.durable = durable
        self.outcomes = outcomes

    def collect(self) -> Iterator[Metric]:
        store: EngagementStore = self.durable.store
        with store.lock:
            arms = {key: (totals, dict(totals.guardrails)) for key, totals in store.arms.items()}
            outcomes = dict(self.outcomes)
            crossovers = {generation: len(users) for generation, users in store.crossovers.items()}
            latency = {key: (list(t.latency_buckets), t.latency_sum, t.latency_count) for key, t in store.arms.items()}
        for name, attribute, documentation in COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=ARM_LABELS)
            for (generation, arm), (totals, _) in sorted(arms.items()):
                family.add_metric([generation, arm], float(getattr(totals, attribute)))
            yield family
        guardrails = CounterMetricFamily(
            GUARDRAIL_METRIC,
            "Guardrail events (instruction violations, false refusals, errors) among responses served.",
            labels=[*ARM_LABELS, "guardrail"],
        )
        for (generation, arm), (_, counts) in sorted(arms.items()):
            for guardrail, count in sorted(counts.items()):
                guardrails.add_metric([generation, arm, guardrail], float(count))
        yield guardrails
        histogram = HistogramMetricFamily(LATENCY_METRIC, "Latency of responses served.", labels=ARM_LABELS)
        for (generation, arm), (buckets, total, count) in sorted(latency.items()):
            cumulative = [(f"{bound:g}", float(n)) for bound, n in zip(LATENCY_BUCKETS, buckets, strict=True)]
            histogram.add_metric([generation, arm], [*cumulative, ("+Inf", float(count))], total)
        yield histogram
        events = CounterMetricFamily(EVENTS_METRIC, "Event lines received, by outcome.", labels=["outcome"])
        for outcome in ("accepted", "rejected"):
            events.add_metric([outcome], float(outcomes.get(outcome, 0)))
        yield events
        crossed = CounterMetricFamily(CROSSOVER_METRIC, "Exposed users seen in both arms (arms not sticky).",
                                      labels=["generation"])
        for generation, count in sorted(crossovers.items()):
            crossed.add_metric([generation], float(count))
        yield crossed


class ExporterServer(ThreadingHTTPServer):
    """The HTTP server with its store and registry attached (handlers reach them through `self.server`)."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], durable: DurableStore, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        super().__init__(address, ExporterHandler)
        self.durable = durable
        # Receipt time: engagement events without `day` are counted on its UTC day (events.with_day).
        self.clock = clock or (lambda: datetime.now(UTC))
        self.outcomes = {"accepted": 0, "rejected": 0}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(durable, self.outcomes))

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class ExporterHandler(BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}; use POST /events, GET /metrics or /healthz"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/events":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}; POST JSON lines to /events"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes; split it"})
            self.close_connection = True
            return
        body = self.rfile.read(length)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self._reject(["body is not UTF-8 text"], lines=1)
            return
        events, errors = parse_batch(text)
        if not errors:
            events = with_day(events, utc_day(self.server.clock()))
            errors = self.server.durable.submit(events)
        lines = sum(1 for line in text.splitlines() if line.strip())
        if errors:
            self._reject(errors, lines=lines)
            return
        with self.server.durable.store.lock:
            self.server.outcomes["accepted"] += len(events)
        self._json(HTTPStatus.OK, {"accepted": len(events)})

    def _reject(self, errors: list[str], *, lines: int) -> None:
        with self.server.durable.store.lock:
            self.server.outcomes["rejected"] += lines
        self._json(
            HTTPStatus.BAD_REQUEST,
            {"error": f"batch refused, nothing counted: {errors[0]}", "errors": errors, "accepted": 0},
        )

    def _json(self, status: HTTPStatus, payload: dict) -> None:
        self._send(status, (json.dumps(payload) + "\n").encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        LOG.debug("%s " + format, self.address_string(), *args)


def make_server(
    host: str, port: int, durable: DurableStore, *, clock: Callable[[], datetime] | None = None
) -> ExporterServer:
    """Bind (port 0 picks a free one); the caller runs `serve_forever` and later `shutdown`."""
    return ExporterServer((host, port), durable, clock=clock)


def serve(host: str, port: int, snapshot: Path | None, *, engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS) -> int:
    """Run until SIGTERM or Ctrl-C, then write the snapshot so a restart loses no counts. Returns 2, having logged
    why, when the settings or the snapshot are unusable (e.g. a snapshot counted under another engaged_min_days)."""
    try:
        durable = DurableStore(snapshot, engaged_min_days=engaged_min_days)
    except ValueError as exc:
        LOG.error("%s", exc)
        return 2
    server = make_server(host, port, durable)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    LOG.info(
        "engagement exporter on http://%s:%d (snapshot: %s; engaged = active on ≥ %d distinct days)",
        host,
        server.port,
        snapshot or "none",
        engaged_min_days,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        durable.compact()
    return 0
