"""The operator's metrics: pure mappings from statuses to samples, and the registry that serves them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from flywheel_operator.api import (
    CanaryStatus,
    FlywheelGenerationStatus,
    GateCheck,
    OfflineGateResult,
    OfflineMetrics,
    OnlineDecision,
    OnlineStatus,
    StageRecord,
    StyleStats,
)
from flywheel_operator.metrics import (
    OFFLINE_METRICS,
    PHASES,
    OperatorMetrics,
    gate_events,
    generation_samples,
    phase_counts,
    stage_events,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def record(name: str, state: str, attempts: int, *, started: int = 0, finished: int | None = None) -> StageRecord:
    return StageRecord(
        name=name, state=state, attempts=attempts, child=f"gen15-{name}-{attempts}",
        created_at=T0 + timedelta(minutes=started), started_at=T0 + timedelta(minutes=started),
        finished_at=None if finished is None else T0 + timedelta(minutes=finished),
    )


def status(*stages: StageRecord, phase: str = "Curating", **fields: object) -> FlywheelGenerationStatus:
    return FlywheelGenerationStatus(phase=phase, stages=list(stages), **fields)


def lifecycle(failures: int, succeeds: bool) -> list[FlywheelGenerationStatus]:
    """Every status a stage goes through: attempts that fail and back off, then success or a final failure."""
    states: list[FlywheelGenerationStatus] = [status()]
    attempts = failures + (1 if succeeds else 0)
    for attempt in range(1, attempts + 1):
        states.append(status(record("sft", "Running", attempt, started=10 * attempt)))
        last = attempt == attempts
        if last and succeeds:
            states.append(status(record("sft", "Succeeded", attempt, started=10 * attempt, finished=10 * attempt + 7)))
        elif last:
            states.append(status(record("sft", "Failed", attempt, started=10 * attempt, finished=10 * attempt + 3)))
        else:
            states.append(status(record("sft", "Retrying", attempt, started=10 * attempt)))
    return states


@settings(deadline=None)
@given(
    failures=st.integers(min_value=0, max_value=5),
    succeeds=st.booleans(),
    keep=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_stage_events_count_attempts_and_failures_whatever_statuses_were_seen(
    failures: int, succeeds: bool, keep: list[bool]
) -> None:
    """The operator may miss intermediate statuses (restarts, batched writes): the totals still come out right."""
    states = lifecycle(failures if succeeds else max(failures, 1), succeeds)
    seen = [states[0]] + [s for s, k in zip(states[1:-1], keep, strict=False) if k] + [states[-1]]
    events = [e for before, after in pairwise(seen) for e in stage_events(before, after)]
    final = seen[-1].stages[0]
    assert sum(e.kind == "attempt" for e in events) == final.attempts
    assert sum(e.kind == "failure" for e in events) == final.attempts - (1 if succeeds else 0)
    assert sum(e.kind == "finished" for e in events) == (1 if succeeds else 0)
    assert {e.stage for e in events} == {"sft"}


def test_finished_and_failed_attempts_carry_their_duration() -> None:
    running = status(record("reward-pointwise", "Running", 1, started=0))
    done = status(record("reward-pointwise", "Succeeded", 1, started=0, finished=90))
    (event,) = stage_events(running, done)
    assert (event.stage, event.kind, event.duration_seconds) == ("reward", "finished", 5400.0)
    failed = status(record("rl", "Failed", 1, started=0, finished=30))
    assert [(e.kind, e.duration_seconds) for e in stage_events(status(record("rl", "Running", 1)), failed)] == [
        ("failure", 1800.0)
    ]


def metrics(**overrides: float) -> OfflineMetrics:
    style = StyleStats(emoji_rate=0.25, list_rate=0.125, mean_length=42.0, stock_phrase_rate=0.0625)
    values = dict(win_rate_user=0.6, win_rate_internal=0.55, instruction_following=0.9, violation_rate=0.1,
                  false_refusal_rate=0.02)
    return OfflineMetrics(**{**values, **overrides}, style=style, parent_style=style)


def decision(numbers: dict[str, float], checks: list[GateCheck], at: datetime = T0) -> OnlineDecision:
    return OnlineDecision(outcome="CONTINUE", numbers=numbers, checks=checks, at=at)


def observing(dec: OnlineDecision, **fields: object) -> FlywheelGenerationStatus:
    canary = CanaryStatus(phase="Ready", inference_service="chat", mode="standard", traffic_percent=10,
                          candidate_policy="s3://c", control_policy="s3://p", requested_at=T0, ready_at=T0)
    return status(phase="Observing", canary=canary,
                  online=OnlineStatus(started_at=T0 + timedelta(minutes=5), decision=dec),
                  offline_gate=OfflineGateResult(passed=True, metrics=metrics(), at=T0), **fields)


def test_generation_samples_map_offline_metrics_lift_and_alarms() -> None:
    numbers = {"breadth.lift": 0.02, "breadth.lower": -0.01, "breadth.upper": 0.05, "depth.lift": 0.04,
               "guardrail.errors.lower": 0.007, "guardrail.errors.margin": 0.005,
               "guardrail.false-refusals.lower": -0.02, "guardrail.false-refusals.margin": 0.01}
    checks = [GateCheck(name="srm", passed=False, message="mismatch"),
              GateCheck(name="guardrail.errors", passed=False, message="worse"),
              GateCheck(name="guardrail.false-refusals", passed=False, message="not yet shown")]
    samples = generation_samples(observing(decision(numbers, checks)), now=T0 + timedelta(hours=1, minutes=5))
    assert samples.phase == "Observing" and samples.time_in_phase_seconds == 3600.0
    assert samples.phase_start_time_seconds == (T0 + timedelta(minutes=5)).timestamp()
    assert set(samples.offline) == set(OFFLINE_METRICS) and samples.offline["mean_length"] == 42.0
    assert samples.lift == {("breadth", "estimate"): 0.02, ("breadth", "lower"): -0.01,
                            ("breadth", "upper"): 0.05, ("depth", "estimate"): 0.04}
    assert samples.srm_detected == 1.0
    # A failed guardrail check is a breach only when its lower bound clears the margin.
    assert samples.guardrail_breach == {"errors": 1.0, "false-refusals": 0.0}
    assert samples.overfitting_alarm is None


def test_overfitting_alarm_follows_the_divergence_check() -> None:
    diverged = observing(decision({}, []))
    assert diverged.online is not None
    diverged.online.divergence = GateCheck(name="offline-online-divergence", passed=False, message="V12")
    assert generation_samples(diverged, now=T0).overfitting_alarm == 1.0
    diverged.online.divergence = GateCheck(name="offline-online-divergence", passed=True, message="agrees")
    assert generation_samples(diverged, now=T0).overfitting_alarm == 0.0


def test_a_new_status_has_no_gate_samples_and_an_unknown_phase_start() -> None:
    samples = generation_samples(FlywheelGenerationStatus(), now=T0)
    assert samples.phase == "Pending" and samples.time_in_phase_seconds is None
    assert not samples.offline and not samples.lift and samples.srm_detected is None


def test_gate_events_count_each_verdict_once() -> None:
    first = observing(decision({}, [], at=T0))
    later = observing(decision({}, [], at=T0 + timedelta(minutes=10)))
    assert gate_events(None, first) == [("offline", "PASS"), ("online", "CONTINUE")]
    assert gate_events(first, first) == []
    assert gate_events(first, later) == [("online", "CONTINUE")]


def test_phase_counts_fill_every_phase_of_a_namespace() -> None:
    counts = phase_counts([("a", "RL"), ("a", "RL"), ("b", "Promoted")])
    assert counts[("a", "RL")] == 2 and counts[("a", "Promoted")] == 0 and counts[("b", "Promoted")] == 1
    assert len(counts) == 2 * len(PHASES)


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


def test_observe_moves_the_phase_series_and_forget_drops_the_generation() -> None:
    m = OperatorMetrics(CollectorRegistry())
    curating = status(record("curate", "Running", 1), phase="Curating")
    rl = status(record("curate", "Succeeded", 1, finished=20), record("rl", "Running", 1, started=30), phase="RL")
    m.observe("ns", "gen15", None, curating, now=T0 + timedelta(minutes=10))
    key = {"namespace": "ns", "generation": "gen15"}
    assert _sample(m.registry, "flywheel_generation_phase", {**key, "phase": "Curating"}) == 1
    m.observe("ns", "gen15", curating, rl, now=T0 + timedelta(minutes=40))
    assert _sample(m.registry, "flywheel_generation_phase", {**key, "phase": "Curating"}) is None
    assert _sample(m.registry, "flywheel_generation_phase", {**key, "phase": "RL"}) == 1
    assert _sample(m.registry, "flywheel_time_in_phase_seconds", {**key, "phase": "RL"}) == 600
    assert _sample(m.registry, "flywheel_stage_attempts_total", {"namespace": "ns", "stage": "rl"}) == 1
    assert _sample(m.registry, "flywheel_stage_duration_seconds_count", {"namespace": "ns", "stage": "curate"}) == 1
    m.observe("ns", "gen16", None, curating, now=T0)
    m.forget("ns", "gen15")
    text = generate_latest(m.registry).decode()
    assert 'generation="gen15"' not in text and 'generation="gen16"' in text


def test_phase_counts_replace_the_previous_ones() -> None:
    m = OperatorMetrics(CollectorRegistry())
    m.set_phase_counts(phase_counts([("a", "RL")]))
    m.set_phase_counts(phase_counts([("b", "SFT")]))
    assert _sample(m.registry, "flywheel_generations", {"namespace": "a", "phase": "RL"}) is None
    assert _sample(m.registry, "flywheel_generations", {"namespace": "b", "phase": "SFT"}) == 1
