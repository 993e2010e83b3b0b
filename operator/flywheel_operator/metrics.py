"""The operator's Prometheus metrics: one registry, and pure functions that turn a status into samples.

The kopf handlers call `OperatorMetrics.observe(...)` after each status write; everything that decides a
value (`generation_samples`, `stage_events`, `gate_events`) is a pure function of statuses and `now`, so it is
tested without a server. The chart's alerts and the Grafana dashboard use only names defined here and in the
engagement exporter (a test checks both registries).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flywheel_operator.api import FlywheelGenerationStatus, OnlineDecision, Phase, StageRecord
from flywheel_operator.planner import stage_kind

PHASES: tuple[str, ...] = get_args(Phase)

OFFLINE_METRICS: tuple[str, ...] = (
    "win_rate_user",
    "win_rate_internal",
    "instruction_following",
    "violation_rate",
    "false_refusal_rate",
    "emoji_rate",
    "list_rate",
    "mean_length",
    "stock_phrase_rate",
)
"""Values of the `metric` label of `flywheel_offline_metric` (the candidate's evaluation numbers)."""

LIFT_METRICS: tuple[str, ...] = ("breadth", "depth")
LIFT_KEYS: Mapping[str, str] = {
    "estimate": "{metric}.lift",
    "lower": "{metric}.lower",
    "upper": "{metric}.upper",
}
"""`OnlineDecision.numbers` keys read for each `bound` of `flywheel_online_lift` (relative lift, interval)."""

SRM_CHECK = "srm"
GUARDRAIL_CHECK_PREFIX = "guardrail."
"""Check names of the online gate (flywheel_operator.gate.online): `srm`, and `guardrail.<name>` per guardrail
whose interval is in `numbers` as `guardrail.<name>.lower` and its margin as `guardrail.<name>.margin`."""

STAGE_DURATION_BUCKETS: tuple[float, ...] = (
    60, 300, 900, 1800, 3600, 7200, 14400, 28800, 57600, 86400, 172800,
)
"""Stage Jobs run from minutes (curate) to a day or more (RL on many GPUs)."""

STAGE_PHASES: Mapping[str, str] = {  # by stage kind, as in planner.pipeline_steps
    "curate": "Curating",
    "reward": "TrainingRewardModels",
    "sft": "SFT",
    "rl": "RL",
    "eval": "Evaluating",
}


# ------------------------------------------------------------------------------------------- pure part
@dataclass(frozen=True)
class GenerationSamples:
    """Every per-generation gauge value for one status; a key missing means the series is absent."""

    phase: str
    time_in_phase_seconds: float | None
    phase_start_time_seconds: float | None
    """Unix time the phase began: alerts compute its age with `time()`, so it needs no refresh."""
    offline: dict[str, float] = field(default_factory=dict)
    lift: dict[tuple[str, str], float] = field(default_factory=dict)
    """(metric, bound) -> relative lift."""
    srm_detected: float | None = None
    guardrail_breach: dict[str, float] = field(default_factory=dict)
    overfitting_alarm: float | None = None


@dataclass(frozen=True)
class StageEvent:
    """Something that happened to a stage between two statuses: an attempt started, failed, or it finished."""

    stage: str
    kind: str
    """`attempt` (a new attempt started), `failure` (an attempt failed) or `finished` (it succeeded)."""
    duration_seconds: float | None = None
    """For `finished` and `failure`: how long the attempt ran, when known."""


def phase_started_at(status: FlywheelGenerationStatus) -> datetime | None:
    """When the current phase began, from the timestamps the status already carries (None when unknown)."""
    phase = status.phase
    stage_starts = [r.created_at for r in status.stages if STAGE_PHASES.get(stage_kind(r.name)) == phase]
    if stage_starts:
        return min(stage_starts)
    if phase == "OfflineGate" and status.stages:
        finished = [r.finished_at for r in status.stages if r.finished_at is not None]
        return max(finished) if finished else None
    if phase == "Canary" and status.canary is not None:
        return status.canary.requested_at
    if phase == "Observing" and status.canary is not None:
        online_start = status.online.started_at if status.online is not None else None
        return online_start or status.canary.ready_at
    if status.decision is not None and phase in ("Promoted", "RolledBack", "Failed"):
        return status.decision.at
    return None


def _lift(decision: OnlineDecision | None) -> dict[tuple[str, str], float]:
    if decision is None:
        return {}
    lifts: dict[tuple[str, str], float] = {}
    for metric in LIFT_METRICS:
        for bound, template in LIFT_KEYS.items():
            value = decision.numbers.get(template.format(metric=metric))
            if value is not None:
                lifts[(metric, bound)] = float(value)
    return lifts


def _breach(decision: OnlineDecision, check: str) -> float:
    """1 when the guardrail is significantly worse than its margin (the lower bound is above it), else 0.

    A failed check alone is not a breach: it also fails while non-inferiority is not yet shown."""
    lower = decision.numbers.get(f"{check}.lower")
    margin = decision.numbers.get(f"{check}.margin")
    return 1.0 if lower is not None and margin is not None and lower > margin else 0.0


def generation_samples(status: FlywheelGenerationStatus, *, now: datetime) -> GenerationSamples:
    """Map one generation's status onto the per-generation gauges (pure: `now` is an argument)."""
    started = phase_started_at(status)
    offline: dict[str, float] = {}
    if status.offline_gate is not None and status.offline_gate.metrics is not None:
        m = status.offline_gate.metrics
        offline = {
            "win_rate_user": m.win_rate_user,
            "win_rate_internal": m.win_rate_internal,
            "instruction_following": m.instruction_following,
            "violation_rate": m.violation_rate,
            "false_refusal_rate": m.false_refusal_rate,
            **{name: float(getattr(m.style, name)) for name in ("emoji_rate", "list_rate", "mean_length",
                                                                 "stock_phrase_rate")},
        }
        offline = {k: v for k, v in offline.items() if v is not None}
    decision = status.online.decision if status.online is not None else None
    srm: float | None = None
    guardrails: dict[str, float] = {}
    if decision is not None:
        for check in decision.checks:
            if check.name == SRM_CHECK:
                srm = 0.0 if check.passed else 1.0
            elif check.name.startswith(GUARDRAIL_CHECK_PREFIX):
                guardrails[check.name.removeprefix(GUARDRAIL_CHECK_PREFIX)] = _breach(decision, check.name)
    divergence = status.online.divergence if status.online is not None else None
    return GenerationSamples(
        phase=status.phase,
        time_in_phase_seconds=max(0.0, (now - started).total_seconds()) if started is not None else None,
        phase_start_time_seconds=started.timestamp() if started is not None else None,
        offline=offline,
        lift=_lift(decision),
        srm_detected=srm,
        guardrail_breach=guardrails,
        overfitting_alarm=None if divergence is None else (0.0 if divergence.passed else 1.0),
    )


def stage_events(
    previous: FlywheelGenerationStatus | None, current: FlywheelGenerationStatus
) -> list[StageEvent]:
    """What happened to the stages between two statuses: attempts started, attempts failed, stages finished.

    A failure is seen as a stage entering `Retrying` or `Failed`, or as its attempt counter moving on (the
    status skipped `Retrying`). The same pair always gives the same events: the function keeps no state.
    """
    before: dict[str, StageRecord] = {r.name: r for r in (previous.stages if previous else [])}
    events: list[StageEvent] = []
    for record in current.stages:
        old = before.get(record.name)
        old_attempts = old.attempts if old is not None else 0
        kind = stage_kind(record.name)
        failed_attempts_before = _failed_attempts(old)
        failed_attempts_now = _failed_attempts(record)
        for _ in range(max(0, failed_attempts_now - failed_attempts_before)):
            duration = _duration(record) if record.state == "Failed" else None
            events.append(StageEvent(kind, "failure", duration))
        for _ in range(max(0, record.attempts - old_attempts)):
            events.append(StageEvent(kind, "attempt"))
        if record.state == "Succeeded" and (old is None or old.state != "Succeeded"):
            events.append(StageEvent(kind, "finished", _duration(record)))
    return events


def _failed_attempts(record: StageRecord | None) -> int:
    """Attempts of a stage that ended in failure, as far as its record tells."""
    if record is None:
        return 0
    if record.state in ("Retrying", "Failed"):
        return record.attempts
    return record.attempts - 1


def _duration(record: StageRecord) -> float | None:
    if record.finished_at is None:
        return None
    start = record.started_at or record.created_at
    return max(0.0, (record.finished_at - start).total_seconds())


def gate_events(
    previous: FlywheelGenerationStatus | None, current: FlywheelGenerationStatus
) -> list[tuple[str, str]]:
    """New gate verdicts between two statuses as (gate, outcome): offline PASS/FAIL, online the outcome."""
    events: list[tuple[str, str]] = []
    old_offline = previous.offline_gate if previous else None
    new_offline = current.offline_gate
    if new_offline is not None and (old_offline is None or old_offline.at != new_offline.at):
        events.append(("offline", "PASS" if new_offline.passed else "FAIL"))
    old_online = previous.online.decision if previous and previous.online else None
    new_online = current.online.decision if current.online else None
    if new_online is not None and (old_online is None or old_online.at != new_online.at):
        events.append(("online", new_online.outcome))
    return events


def phase_counts(phases: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(namespace, phase) of every generation -> how many are in each phase; every phase of a seen namespace
    is present (zeros included) so a phase that empties drops to 0 instead of going stale."""
    counts: dict[tuple[str, str], int] = {}
    for namespace, phase in phases:
        for p in PHASES:
            counts.setdefault((namespace, p), 0)
        counts[(namespace, phase)] += 1
    return counts


# ---------------------------------------------------------------------------------------- the registry
class OperatorMetrics:
    """The operator's metrics on their own registry, served on --metrics-port (not the process default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        gen = ["namespace", "generation"]
        self.generations = Gauge("flywheel_generations", "FlywheelGenerations by phase.",
                                 ["namespace", "phase"], registry=r)
        self.generation_phase = Gauge("flywheel_generation_phase",
                                      "1 for the phase a generation is in (the phase timeline).",
                                      [*gen, "phase"], registry=r)
        self.time_in_phase = Gauge("flywheel_time_in_phase_seconds",
                                   "Seconds the generation has spent in its current phase.",
                                   [*gen, "phase"], registry=r)
        self.phase_start_time = Gauge("flywheel_phase_start_time_seconds",
                                      "Unix time the generation entered its current phase.",
                                      [*gen, "phase"], registry=r)
        self.stage_duration = Histogram("flywheel_stage_duration_seconds",
                                        "Run time of stage attempts that finished (succeeded or failed).",
                                        ["namespace", "stage"], buckets=STAGE_DURATION_BUCKETS, registry=r)
        self.stage_attempts = Counter("flywheel_stage_attempts", "Stage attempts started.",
                                      ["namespace", "stage"], registry=r)
        self.stage_failures = Counter("flywheel_stage_failures", "Stage attempts that failed.",
                                      ["namespace", "stage"], registry=r)
        self.gate_decisions = Counter("flywheel_gate_decisions", "Verdicts of the offline and online gates.",
                                      ["namespace", "gate", "outcome"], registry=r)
        self.online_lift = Gauge("flywheel_online_lift",
                                 "Relative engagement lift of the candidate (estimate and interval bounds).",
                                 [*gen, "metric", "bound"], registry=r)
        self.offline_metric = Gauge("flywheel_offline_metric", "The candidate's offline evaluation metrics.",
                                    [*gen, "metric"], registry=r)
        self.srm_detected = Gauge("flywheel_srm_detected",
                                  "1 when the online test found a sample-ratio mismatch.", gen, registry=r)
        self.guardrail_breach = Gauge("flywheel_guardrail_breach",
                                      "1 when a guardrail is not non-inferior on the candidate arm.",
                                      [*gen, "guardrail"], registry=r)
        self.overfitting_alarm = Gauge("flywheel_overfitting_alarm",
                                       "1 when offline win rates diverge from the online result (V12 alarm).",
                                       gen, registry=r)
        self._per_generation: tuple[Gauge, ...] = (
            self.generation_phase, self.time_in_phase, self.phase_start_time, self.online_lift,
            self.offline_metric, self.srm_detected, self.guardrail_breach, self.overfitting_alarm,
        )
        self._series: dict[tuple[str, str], dict[Gauge, set[tuple[str, ...]]]] = {}
        """The label values each generation has in each per-generation gauge (what the next write may drop)."""

    def observe(self, namespace: str, name: str, previous: FlywheelGenerationStatus | None,
                current: FlywheelGenerationStatus, *, now: datetime) -> None:
        """Record one status write of generation `namespace/name` (previous: the status before it, if any)."""
        for event in stage_events(previous, current):
            if event.kind == "attempt":
                # prometheus_client shows a counter from its first increment on, at 1; Prometheus' increase()
                # counts nothing for the first sample of a series, so a first failure would never alert. The
                # failure counter of a (namespace, stage) therefore appears at 0 with its first attempt.
                self.stage_failures.labels(namespace, event.stage)
                self.stage_attempts.labels(namespace, event.stage).inc()
            elif event.kind == "failure":
                self.stage_failures.labels(namespace, event.stage).inc()
            if event.kind in ("finished", "failure") and event.duration_seconds is not None:
                self.stage_duration.labels(namespace, event.stage).observe(event.duration_seconds)
        for gate, outcome in gate_events(previous, current):
            self.gate_decisions.labels(namespace, gate, outcome).inc()
        self._set_gauges(namespace, name, generation_samples(current, now=now))

    def _set_gauges(self, namespace: str, name: str, samples: GenerationSamples) -> None:
        """Set the new values, then drop the generation's series that are gone: a scrape never sees a gap."""
        key = (namespace, name)
        wanted: dict[Gauge, dict[tuple[str, ...], float]] = {
            self.generation_phase: {(*key, samples.phase): 1.0},
            self.time_in_phase: ({(*key, samples.phase): samples.time_in_phase_seconds}
                                 if samples.time_in_phase_seconds is not None else {}),
            self.phase_start_time: ({(*key, samples.phase): samples.phase_start_time_seconds}
                                    if samples.phase_start_time_seconds is not None else {}),
            self.offline_metric: {(*key, metric): value for metric, value in samples.offline.items()},
            self.online_lift: {(*key, *labels): value for labels, value in samples.lift.items()},
            self.srm_detected: {key: samples.srm_detected} if samples.srm_detected is not None else {},
            self.guardrail_breach: {(*key, g): value for g, value in samples.guardrail_breach.items()},
            self.overfitting_alarm: ({key: samples.overfitting_alarm}
                                     if samples.overfitting_alarm is not None else {}),
        }
        series = self._series.setdefault(key, {})
        for gauge, values in wanted.items():
            for labels, value in values.items():
                gauge.labels(*labels).set(value)
            for labels in series.get(gauge, set()) - values.keys():  # this generation's only: O(1) in generations
                gauge.remove(*labels)
            series[gauge] = set(values)

    def forget(self, namespace: str, name: str) -> None:
        """Drop every per-generation series of `namespace/name` (when the generation is deleted)."""
        self._series.pop((namespace, name), None)
        for metric in self._per_generation:
            metric.remove_by_labels({"namespace": namespace, "generation": name})

    def set_phase_counts(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace `flywheel_generations` with `phase_counts(...)` of every generation the operator sees."""
        self.generations.clear()
        for (namespace, phase), count in counts.items():
            self.generations.labels(namespace, phase).set(count)


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a scrape of `registry` can show, with the suffixes of metrics without samples yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created", ""),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


METRICS = OperatorMetrics()
"""The process-wide instance the operator serves (tests build their own)."""
