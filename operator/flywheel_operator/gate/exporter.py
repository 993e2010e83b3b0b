"""`flywheel exporter`: the engagement exporter. POST /events (JSON lines), GET /metrics, GET /healthz.

Only the chat backend may write: with a token configured, POST /events needs `Authorization: Bearer <token>`
(compared in constant time); a refused write is counted and logged without its body. An optional second,
read-only listener serves /metrics and /healthz alone, so a NetworkPolicy can admit scrapers to it without
admitting them to the events port.

It turns exposure and engagement events into the per-arm sufficient statistics the online gate needs, exported
as Prometheus counters labelled with `generation` and `arm` (names and meaning in docs/metrics.md). A custom
collector reads the store at scrape time, so a restart that reloads the snapshot resumes every counter where it
was.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from flywheel_operator.gate.events import experiment_labels, parse_batch, utc_day, with_day
from flywheel_operator.gate.shards import shard_of
from flywheel_operator.gate.store import (
    DEFAULT_CACHE_MIB,
    DEFAULT_ENGAGED_MIN_DAYS,
    LATENCY_BUCKETS,
    ArmTotals,
    DurableStore,
    SqliteStore,
    log_depth_sums,
)

Store = DurableStore | SqliteStore
"""Either store: SqliteStore (the default, `--state`) or the JSON snapshot store (`--snapshot` alone, legacy)."""

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
    ("flywheel_responses_squared", "responses_sum_squares", "Σ over users of (responses served to the user)²."),
    (
        "flywheel_users_adopted",
        "adopted",
        "Users first seen through an engagement event naming their arm (exposure lost in a restart).",
    ),
    # issue 25 (h25): the log-scale depth sums of the gate's deterioration tests on depth
    (
        "flywheel_depth_log_turns",
        "depth_log_sum",
        "Σ log(1 + depth) over exposed users (each term in whole units of 1/65536).",
    ),
    ("flywheel_depth_log_turns_squared", "depth_log_sum_squares", "Σ log(1 + depth)² over exposed users."),
)
"""(metric name without `_total`, ArmStats field, help text) of every per-arm counter."""
GUARDRAIL_METRIC = "flywheel_guardrail_events"
PER_USER_GUARDRAIL_METRICS = (
    ("flywheel_guardrail_events_squared", "guardrail_sum_squares", "Σ over users of (the user's guardrail events)²."),
    (
        "flywheel_guardrail_events_cross",
        "guardrail_cross_sums",
        "Σ over users of (the user's guardrail events) × (the user's responses).",
    ),
)
"""Per-user sums of the guardrail rates' user-clustered variance (absent for totals from an older snapshot)."""
LATENCY_METRIC = "flywheel_response_latency_seconds"
EVENTS_METRIC = "flywheel_exporter_events"
LAST_EVENT_METRIC = "flywheel_exporter_last_event_timestamp_seconds"
REFUSED_WRITES_METRIC = "flywheel_exporter_refused_writes"
REFUSED_REASONS = ("missing-token", "wrong-token")
"""Why a POST /events was refused before its body was read (`reason` label of REFUSED_WRITES_METRIC)."""
CROSSOVER_METRIC = "flywheel_crossover_users"
"""Users seen in both arms, per generation (gate.crossover judges the share of flywheel_users_exposed)."""
METRIC_NAMES: tuple[str, ...] = (
    *(f"{name}_total" for name, _, _ in COUNTERS),
    f"{GUARDRAIL_METRIC}_total",
    *(f"{name}_total" for name, _, _ in PER_USER_GUARDRAIL_METRICS),
    LATENCY_METRIC,
    f"{EVENTS_METRIC}_total",
    f"{REFUSED_WRITES_METRIC}_total",
    LAST_EVENT_METRIC,
    f"{CROSSOVER_METRIC}_total",
)
"""Every series name family the exporter exposes (the chart's alerts and dashboard may use only these)."""


def _counter_value(totals: ArmTotals, attribute: str) -> float:
    """One per-arm counter: a field of the totals, or a log-scale depth sum in its exported unit."""
    if attribute in ("depth_log_sum", "depth_log_sum_squares"):
        log_sum, log_squares = log_depth_sums(totals.depth_log_units, totals.depth_log_units_squared)
        return log_sum if attribute == "depth_log_sum" else log_squares
    return float(getattr(totals, attribute))


def _arm_labels(key: str, arm: str) -> dict[str, str]:
    return {**experiment_labels(key), "arm": arm}


class StoreCollector(Collector):
    """Reads the store at scrape time: counters survive restarts because the store does."""

    def __init__(
        self,
        durable: Store,
        outcomes: dict[str, int],
        last_events: dict[str, float] | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.durable = durable
        self.outcomes = outcomes
        self.last_events = last_events if last_events is not None else {}
        self.lock = lock or threading.Lock()

    def collect(self) -> Iterator[Metric]:
        totals_by_arm, unattributed, crossovers = self.durable.totals()
        arms = {key: (totals, dict(totals.guardrails)) for key, totals in totals_by_arm.items()}
        per_user = {
            key: {attribute: dict(getattr(t, attribute)) for _, attribute, _ in PER_USER_GUARDRAIL_METRICS}
            for key, t in totals_by_arm.items()
            if t.per_user_sums
        }
        latency = {key: (list(t.latency_buckets), t.latency_sum, t.latency_count) for key, t in totals_by_arm.items()}
        with self.lock:
            outcomes = dict(self.outcomes, unattributed=unattributed)
            last_events = dict(self.last_events)
        # Samples carry `namespace` only for experiments whose events named one (events.experiment_labels).
        for name, attribute, documentation in COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=ARM_LABELS)
            for (key, arm), (totals, _) in sorted(arms.items()):
                if attribute == "responses_sum_squares" and not totals.per_user_sums:
                    continue
                family.add_sample(f"{name}_total", _arm_labels(key, arm), _counter_value(totals, attribute))
            yield family
        guardrails = CounterMetricFamily(
            GUARDRAIL_METRIC,
            "Guardrail events (instruction violations, false refusals, errors) among responses served.",
            labels=[*ARM_LABELS, "guardrail"],
        )
        for (key, arm), (_, counts) in sorted(arms.items()):
            for guardrail, count in sorted(counts.items()):
                guardrails.add_sample(
                    f"{GUARDRAIL_METRIC}_total", {**_arm_labels(key, arm), "guardrail": guardrail}, float(count)
                )
        yield guardrails
        for name, attribute, documentation in PER_USER_GUARDRAIL_METRICS:
            family = CounterMetricFamily(name, documentation, labels=[*ARM_LABELS, "guardrail"])
            for (key, arm), sums in sorted(per_user.items()):
                for guardrail, value in sorted(sums[attribute].items()):
                    family.add_sample(f"{name}_total", {**_arm_labels(key, arm), "guardrail": guardrail}, float(value))
            yield family
        histogram = HistogramMetricFamily(LATENCY_METRIC, "Latency of responses served.", labels=ARM_LABELS)
        for (key, arm), (buckets, total, count) in sorted(latency.items()):
            labels = _arm_labels(key, arm)
            for bound, n in [*zip((f"{b:g}" for b in LATENCY_BUCKETS), buckets, strict=True), ("+Inf", count)]:
                histogram.add_sample(f"{LATENCY_METRIC}_bucket", {**labels, "le": bound}, float(n))
            histogram.add_sample(f"{LATENCY_METRIC}_count", labels, float(count))
            histogram.add_sample(f"{LATENCY_METRIC}_sum", labels, float(total))
        yield histogram
        last = GaugeMetricFamily(
            LAST_EVENT_METRIC,
            "Unix time of the latest accepted event of each experiment (since this exporter process started): the "
            "gate's staleness check.",
            labels=["generation"],
        )
        for key, seconds in sorted(last_events.items()):
            last.add_sample(LAST_EVENT_METRIC, experiment_labels(key), seconds)
        yield last
        events = CounterMetricFamily(EVENTS_METRIC, "Event lines received, by outcome.", labels=["outcome"])
        for outcome in ("accepted", "rejected", "unattributed"):
            events.add_metric([outcome], float(outcomes.get(outcome, 0)))
        yield events
        refused = CounterMetricFamily(
            REFUSED_WRITES_METRIC, "POST /events refused for want of the writers' bearer token.", labels=["reason"]
        )
        for reason in REFUSED_REASONS:
            refused.add_metric([reason], float(outcomes.get(reason, 0)))
        yield refused
        crossed = CounterMetricFamily(
            CROSSOVER_METRIC, "Exposed users seen in both arms (arms not sticky).", labels=["generation"]
        )
        for key, count in sorted(crossovers.items()):
            crossed.add_sample(f"{CROSSOVER_METRIC}_total", experiment_labels(key), float(count))
        yield crossed


class ExporterServer(ThreadingHTTPServer):
    """The HTTP server with its store and registry attached (handlers reach them through `self.server`)."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        durable: Store,
        *,
        clock: Callable[[], datetime] | None = None,
        token: str | TokenFile | None = None,
        writes_to: ExporterServer | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        """`token`: the writers' bearer token, fixed or re-read from its file (None: anyone may write, for
        in-process use and tests only). `writes_to`: make this a read-only listener that shows that server's
        metrics. `shard`: (index, shards) when this exporter holds one shard of the users (gate.shards)."""
        super().__init__(address, ExporterHandler)
        self.durable = durable
        # Receipt time: engagement events without `day` are counted on its UTC day (events.with_day).
        self.clock = clock or (lambda: datetime.now(UTC))
        self.token = TokenFile.fixed(token) if isinstance(token, str) else token
        self.shard = shard
        self.read_only = writes_to is not None
        if writes_to is not None:
            self.outcomes, self.registry = writes_to.outcomes, writes_to.registry
            self.last_events, self.stats_lock = writes_to.last_events, writes_to.stats_lock
            return
        self.outcomes = {"accepted": 0, "rejected": 0, **dict.fromkeys(REFUSED_REASONS, 0)}
        self.last_events: dict[str, float] = {}
        """Experiment key -> receipt time (Unix seconds) of its latest accepted event."""
        self.stats_lock = threading.Lock()
        """Guards `outcomes` and `last_events` (the store has its own lock)."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(durable, self.outcomes, self.last_events, self.stats_lock))

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
        if self.server.read_only:
            self._drain()
            self._json(
                HTTPStatus.METHOD_NOT_ALLOWED, {"error": "this port is read-only; POST events to the events port"}
            )
            return
        if path != "/events":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}; POST JSON lines to /events"})
            return
        refusal = self._authenticate()
        if refusal is not None:
            self._refuse(refusal)
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
        received = self.server.clock()
        lines = sum(1 for line in text.splitlines() if line.strip())
        if not errors and self.server.shard is not None:
            misrouted = self._misrouted(events)
            if misrouted:
                self._reject(misrouted, lines=lines, status=HTTPStatus.MISDIRECTED_REQUEST)
                return
        if not errors:
            events = with_day(events, utc_day(received))
            key = (self.headers.get("Idempotency-Key") or "").strip()[:200] or None
            errors = self.server.durable.submit(events, batch_key=key)
        if errors:
            self._reject(errors, lines=lines)
            return
        with self.server.stats_lock:
            self.server.outcomes["accepted"] += len(events)
            for event in events:
                self.server.last_events[event.experiment] = received.timestamp()
        self._json(HTTPStatus.OK, {"accepted": len(events)})

    def _misrouted(self, events: list) -> list[str]:
        """Reasons for events of users another shard owns (a writer not routing by gate.shards.shard_of)."""
        assert self.server.shard is not None
        index, shards = self.server.shard
        errors = []
        for number, event in enumerate(events, start=1):
            owner = shard_of(event.user, shards)
            if owner != index:
                errors.append(
                    f"event {number}: user {event.user!r} belongs to shard {owner} of {shards}, not to this shard "
                    f"({index}); route each event to shard sha256(user)[:8] % {shards} (docs/metrics.md, shards)"
                )
        return errors

    def _authenticate(self) -> str | None:
        """None when the writer may post; else the refusal reason (a REFUSED_REASONS entry)."""
        if self.server.token is None:
            return None
        scheme, _, credential = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return "missing-token"
        sent = credential.strip().encode()
        # every accepted token is compared (constant time each), so timing tells nothing of which one matched
        matches = [hmac.compare_digest(sent, token) for token in self.server.token.accepted()]
        return None if any(matches) else "wrong-token"

    def _refuse(self, reason: str) -> None:
        """401. The body is drained unparsed (never counted or logged) so the connection stays usable; one over
        MAX_BODY_BYTES is not drained and the connection closes instead."""
        with self.server.stats_lock:
            self.server.outcomes[reason] += 1
        length = int(self.headers.get("Content-Length") or 0)
        LOG.warning(
            "refused POST /events from %s: %s (body of %d bytes dropped unread)",
            self.address_string(),
            reason.replace("-", " "),
            length,
        )
        self._drain()
        self._json(
            HTTPStatus.UNAUTHORIZED,
            {"error": f"{reason}: send `Authorization: Bearer <token>` with the token from the writers' Secret"},
            headers={"WWW-Authenticate": 'Bearer realm="flywheel-exporter"'},
        )

    def _drain(self) -> None:
        """Read and drop the request body, so the connection can carry the next request; close it instead when the
        body is over MAX_BODY_BYTES."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                break
            length -= len(chunk)

    def _reject(self, errors: list[str], *, lines: int, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        with self.server.stats_lock:
            self.server.outcomes["rejected"] += lines
        self._json(
            status,
            {"error": f"batch refused, nothing counted: {errors[0]}", "errors": errors, "accepted": 0},
        )

    def _json(self, status: HTTPStatus, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, (json.dumps(payload) + "\n").encode(), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        LOG.debug("%s " + format, self.address_string(), *args)


def make_server(
    host: str,
    port: int,
    durable: Store,
    *,
    clock: Callable[[], datetime] | None = None,
    token: str | TokenFile | None = None,
    shard: tuple[int, int] | None = None,
) -> ExporterServer:
    """Bind (port 0 picks a free one); the caller runs `serve_forever` and later `shutdown`."""
    return ExporterServer((host, port), durable, clock=clock, token=token, shard=shard)


def make_metrics_server(host: str, port: int, events: ExporterServer) -> ExporterServer:
    """A read-only listener (GET /metrics and /healthz; POST answers 405) showing `events`' counters."""
    return ExporterServer((host, port), events.durable, writes_to=events)


def read_token(path: Path) -> str:
    """The writers' bearer token from a file (a mounted Secret); ValueError naming the file when unusable."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the writers' token file {path}: {exc.strerror}") from exc
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ValueError(
            f"the writers' token in {path} must be at least 16 characters without whitespace; "
            "generate one with `openssl rand -hex 24`"
        )
    return token


DEFAULT_TOKEN_GRACE = 600.0
"""Seconds the previous token is still accepted after the file changed (writers re-read the Secret too)."""


class TokenFile:
    """The writers' bearer token, re-read when its file changes (a rotated Secret: the kubelet swaps the mounted
    file in place within about a minute, and GitOps tools may rotate a chart-made token on every render).

    The file is checked at most every `check_every` seconds (a stat, no read unless it changed). After a change
    the previous token is still accepted for `grace` seconds, so writers that re-read the Secret a little later
    lose no batch; 0 stops it at once (a leaked token). A changed file that is not a usable token is logged and
    ignored: the tokens in force stay.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        grace: float = DEFAULT_TOKEN_GRACE,
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        token: str | None = None,
    ) -> None:
        if grace < 0:
            raise ValueError(f"--token-grace must be ≥ 0 seconds, got {grace}")
        self.path, self.grace, self.check_every, self.clock = path, grace, check_every, clock
        self.current = (token if token is not None else read_token(path)).encode()  # type: ignore[arg-type]
        self.previous: bytes | None = None
        self.previous_until = 0.0
        self.reloads = 0
        self._stamp = self._stat()
        self._checked = clock()
        self._lock = threading.Lock()

    @classmethod
    def fixed(cls, token: str) -> TokenFile:
        """A token that never changes (in-process use and tests)."""
        return cls(None, token=token)

    def _stat(self) -> tuple[int, ...] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)  # follows the Secret volume's symlinks: a swap changes the inode
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def accepted(self) -> list[bytes]:
        """The tokens a writer may send now: the current one, and the previous one within its grace period."""
        with self._lock:
            now = self.clock()
            if self.path is not None and now - self._checked >= self.check_every:
                self._checked = now
                self._refresh(now)
            if self.previous is not None and now < self.previous_until:
                return [self.current, self.previous]
            return [self.current]

    def _refresh(self, now: float) -> None:
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            token = read_token(self.path).encode()  # type: ignore[arg-type]
        except ValueError as exc:
            LOG.error("%s; the writers' token in force stays", exc)
            return
        if token == self.current:
            return
        self.previous, self.previous_until = self.current, now + self.grace
        self.current = token
        self.reloads += 1
        LOG.info(
            "reloaded the writers' token from %s (the previous one is accepted for %.0f s more)", self.path, self.grace
        )


def open_store(
    state: Path | None,
    snapshot: Path | None,
    *,
    engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS,
    cache_mib: int = DEFAULT_CACHE_MIB,
) -> Store:
    """The store `serve` runs on. `state`: the SQLite database (the default store); a JSON `snapshot` given too
    is imported into a new database once (then renamed `*.imported`). `snapshot` alone: the JSON snapshot store
    of earlier versions (whole-state rewrites; fine for thousands of users, not millions). Neither: in memory."""
    if state is None and snapshot is not None:
        LOG.warning("--snapshot without --state: the JSON snapshot store rewrites all state; use --state for scale")
        return DurableStore(snapshot, engaged_min_days=engaged_min_days)
    store = SqliteStore(state, engaged_min_days=engaged_min_days, cache_mib=cache_mib)
    journal = snapshot.with_name(snapshot.name + ".journal") if snapshot is not None else None
    if state is not None and snapshot is not None and (snapshot.exists() or (journal and journal.exists())):
        legacy = DurableStore(snapshot, engaged_min_days=engaged_min_days)
        try:
            copied = store.import_legacy(legacy.store)
        except ValueError:
            store.close()
            raise
        for path in (snapshot, journal):
            if path is not None and path.exists():
                path.rename(path.with_name(path.name + ".imported"))
        LOG.info("imported %d users of snapshot %s into %s", copied, snapshot, state)
    return store


def serve(
    host: str,
    port: int,
    snapshot: Path | None,
    *,
    engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS,
    token_file: Path | None = None,
    metrics_port: int | None = None,
    state: Path | None = None,
    shard: tuple[int, int] | None = None,
    token_grace: float = DEFAULT_TOKEN_GRACE,
    cache_mib: int = DEFAULT_CACHE_MIB,
) -> int:
    """Run until SIGTERM or Ctrl-C, then fold the store to disk so a restart reads no log. Returns 2, having
    logged why, when the settings or the stored state are unusable (e.g. counted under another engaged_min_days).
    Without `token_file` anyone who reaches the port may write events (the CLI asks for that explicitly)."""
    try:
        token = TokenFile(token_file, grace=token_grace) if token_file is not None else None
        durable = open_store(state, snapshot, engaged_min_days=engaged_min_days, cache_mib=cache_mib)
    except ValueError as exc:
        LOG.error("%s", exc)
        return 2
    server = make_server(host, port, durable, token=token, shard=shard)
    metrics = make_metrics_server(host, metrics_port, server) if metrics_port is not None else None
    if metrics is not None:
        threading.Thread(target=metrics.serve_forever, daemon=True).start()
    if token is None:
        LOG.warning("POST /events is open to anyone who reaches port %d: no --token-file", server.port)

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    LOG.info(
        "engagement exporter on http://%s:%d (state: %s; %s; engaged = active on ≥ %d distinct days)",
        host,
        server.port,
        state or snapshot or "in memory",
        f"shard {shard[0]} of {shard[1]}" if shard else "all users",
        engaged_min_days,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
        durable.close()
    return 0
