"""`plan(generation, observed) -> Plan`: the whole reconcile decision, as a pure function.

No I/O and no clock: time arrives as `observed.now`. The planner advances the status as far as the observation
allows (a fixpoint), so planning again on the same observation adds nothing. The kopf handlers and the local
runner only carry out the actions and write the returned status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import ValidationError

from flywheel_operator import gate
from flywheel_operator.api import (
    TERMINAL_PHASES,
    CanaryRouting,
    CanaryStatus,
    FinalDecision,
    FlywheelGeneration,
    FlywheelGenerationStatus,
    OfflineMetrics,
    OnlineDecision,
    OnlineReading,
    OnlineStatus,
    StageRecord,
    parse_duration,
)
from flywheel_operator.planner.actions import (
    Action,
    DeployCanary,
    Event,
    Plan,
    PromoteCanary,
    RollBackCanary,
    StartStage,
)
from flywheel_operator.planner.conditions import update_conditions
from flywheel_operator.planner.observed import Observed
from flywheel_operator.planner.pipeline import backoff, child_name, pipeline_steps, stage_config

JOB_VISIBILITY_GRACE = timedelta(minutes=5)
"""A requested Job not seen for this long is requested again (same name, so at most one ever exists)."""
READINGS_KEPT = 20
"""Online readings kept in status; Prometheus keeps the full series."""
CANARY_POLL = timedelta(seconds=30)
"""How often to look at a canary that is still becoming Ready."""


@dataclass
class _Work:
    """What one planning pass accumulates besides the status."""

    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    wake: list[datetime] = field(default_factory=list)


def plan(generation: FlywheelGeneration, observed: Observed) -> Plan:
    """Decide what to do next for `generation` given what the backend `observed`."""
    previous = FlywheelGenerationStatus.model_validate(generation.status or {})
    # The status to advance: validated again rather than deep-copied (every field is typed down to scalars, so
    # it shares nothing with `previous` or the body; pydantic's deepcopy of the models was 5x the validation).
    status = FlywheelGenerationStatus.model_validate(generation.status or {})
    status.observed_generation = generation.metadata.generation
    work = _Work()
    if status.phase not in TERMINAL_PHASES:
        for _ in range(64):  # each pass moves at least one step; a pipeline has far fewer
            before = status.model_dump()
            _advance(generation, status, observed, work)
            if status.model_dump() == before or status.phase in TERMINAL_PHASES:
                break
    update_conditions(status, previous, generation, observed.now)
    requeue = None if status.phase in TERMINAL_PHASES else min(work.wake, default=None)
    return Plan(actions=tuple(work.actions), status=status, events=tuple(work.events), requeue_at=requeue)


def _advance(generation: FlywheelGeneration, status: FlywheelGenerationStatus, observed: Observed, work: _Work) -> None:
    """One pass: record what finished, then start what may start."""
    _absorb_jobs(generation, status, observed, work)
    if status.phase in TERMINAL_PHASES:
        return
    if status.policy is None and not _resolve_policy(generation, status, observed, work):
        return
    if generation.spec.suspend:
        status.phase, status.message = "Suspended", "spec.suspend is true: nothing new starts until it is false"
        return
    if not _run_pipeline(generation, status, observed, work):
        return
    if status.offline_gate is None or not status.offline_gate.passed:
        return  # the gate runs when eval's result is absorbed; a failed gate already ended the generation
    _run_canary(generation, status, observed, work)


# ------------------------------------------------------------------------------------------------ stages
def _absorb_jobs(
    generation: FlywheelGeneration, status: FlywheelGenerationStatus, observed: Observed, work: _Work
) -> None:
    """Fold finished Jobs into their stage records (also while suspended: a finished Job is a fact)."""
    now = observed.now
    for record in status.stages:
        job = observed.jobs.get(record.child)
        if record.state != "Running" or job is None:
            continue
        if job.state == "Running" and record.started_at is None:
            record.started_at = job.started_at or now
        elif job.state == "Succeeded":
            failure = _succeed(generation, status, record, job.result, now, work)
            if failure:
                _fail_attempt(generation, record, failure, now, work)
        elif job.state == "Failed":
            message = job.message or "the Job failed without a message"
            if job.permanent:
                _fail_permanently(record, message, now, work)
            else:
                _fail_attempt(generation, record, message, now, work)
        if record.state == "Failed":
            _finish(
                status,
                "Failed",
                "FAIL",
                [f"stage {record.name} failed {record.attempts} time(s): {record.message}"],
                now,
                work,
                event=Event("GenerationFailed", f"stage {record.name} failed: {record.message}", "Warning"),
            )
            return


def _succeed(
    generation: FlywheelGeneration,
    status: FlywheelGenerationStatus,
    record: StageRecord,
    result,
    now: datetime,
    work: _Work,
) -> str | None:
    """Record a successful stage; returns why the success does not count, if it does not."""
    if result is None:
        return "the stage finished but its result.json is missing or unreadable"
    if record.name == "rl" and "model" not in result.artifacts:
        return "the rl stage's result.json names no 'model' artifact"
    if record.name == "eval":
        try:
            metrics = OfflineMetrics.model_validate(result.details.get("offline_metrics") or {})
        except ValidationError as exc:
            return f"the eval stage's result.json has no valid details.offline_metrics: {exc.errors()[0]['msg']}"
        verdict = gate.evaluate_offline(generation.spec.offline_gate, metrics, now=now)
        status.offline_gate = verdict
        outcome = "passed" if verdict.passed else "failed: " + "; ".join(verdict.reasons)
        work.events.append(Event("OfflineGate", f"offline gate {outcome}", "Normal" if verdict.passed else "Warning"))
    record.state, record.finished_at, record.message = "Succeeded", now, None
    record.metrics = dict(result.metrics)
    record.artifacts = dict(result.artifacts)
    record.output_digest = result.output_digest
    if record.name == "rl":
        status.candidate_policy = result.artifacts["model"]
    work.events.append(Event("StageSucceeded", f"stage {record.name} succeeded (attempt {record.attempts})"))
    if status.offline_gate is not None and not status.offline_gate.passed and record.name == "eval":
        _finish(
            status,
            "RolledBack",
            "ROLL_BACK",
            [f"offline gate: {r}" for r in status.offline_gate.reasons],
            now,
            work,
            event=None,
        )
    return None


def _fail_attempt(
    generation: FlywheelGeneration, record: StageRecord, message: str, now: datetime, work: _Work
) -> None:
    retry = generation.spec.retry
    record.message = message
    if record.attempts >= retry.max_attempts:
        record.state, record.finished_at = "Failed", now
        work.events.append(Event("StageFailed", f"stage {record.name} failed for good: {message}", "Warning"))
        return
    record.state, record.next_attempt_at = "Retrying", now + backoff(retry, record.attempts)
    work.events.append(
        Event(
            "StageRetrying",
            f"stage {record.name} attempt {record.attempts} failed ({message}); "
            f"retrying at {record.next_attempt_at.isoformat()}",
            "Warning",
        )
    )


def _fail_permanently(record: StageRecord, message: str, now: datetime, work: _Work) -> None:
    """A failure retrying cannot fix (exit code 2, a StageError): the stage fails now, whatever attempts are left."""
    record.message = f"{message} (a permanent error: not retried)"
    record.state, record.finished_at = "Failed", now
    work.events.append(Event("StageFailed", f"stage {record.name} failed for good: {record.message}", "Warning"))


def _resolve_policy(
    generation: FlywheelGeneration, status: FlywheelGenerationStatus, observed: Observed, work: _Work
) -> bool:
    """Fix the starting policy once: basePolicy, or the parent's promoted policy. False while waiting."""
    spec = generation.spec
    if spec.base_policy is not None:
        status.policy = spec.base_policy
        return True
    parent = observed.parent
    if parent is not None and parent.phase == "Promoted" and parent.promoted_policy:
        status.policy = parent.promoted_policy
        return True
    if parent is not None and parent.phase in TERMINAL_PHASES:
        _finish(
            status,
            "Failed",
            "FAIL",
            [
                f"parent {spec.parent} ended {parent.phase} and has no promoted policy; "
                "point spec.parent at a promoted generation or give spec.basePolicy"
            ],
            observed.now,
            work,
            event=Event("ParentNotPromoted", f"parent {spec.parent} ended {parent.phase}", "Warning"),
        )
        return False
    status.phase = "Pending"
    status.message = (
        f"waiting for parent {spec.parent} to be promoted"
        if parent is not None
        else f"parent {spec.parent} not found in this namespace; waiting for it"
    )
    work.wake.append(observed.now + timedelta(minutes=1))
    return False


def _run_pipeline(
    generation: FlywheelGeneration, status: FlywheelGenerationStatus, observed: Observed, work: _Work
) -> bool:
    """Start or wait for the stages of the first unfinished step. True once every stage has succeeded.

    At most `resources.maxParallelJobs` stages of a step run at once; the others start, in order, as those end.
    """
    now = observed.now
    limit = generation.spec.resources.max_parallel_jobs
    for phase, stages in pipeline_steps(generation):
        running = sum(1 for s in stages if (r := status.record(s)) is not None and r.state == "Running")
        for stage in stages:
            record = status.record(stage)
            if record is None:
                if running < limit:
                    _start(generation, status, stage, 1, now, work)
                    running += 1
            elif record.state == "Retrying" and record.next_attempt_at is not None:
                if now < record.next_attempt_at:
                    work.wake.append(record.next_attempt_at)
                elif running < limit:
                    _start(generation, status, stage, record.attempts + 1, now, work)
                    running += 1
            elif record.state == "Running" and record.child not in observed.jobs:
                if now - record.created_at >= JOB_VISIBILITY_GRACE:
                    _start(generation, status, stage, record.attempts, now, work)  # same name: re-request
                else:
                    work.wake.append(record.created_at + JOB_VISIBILITY_GRACE)
        unfinished = [s for s in stages if (r := status.record(s)) is None or r.state != "Succeeded"]
        if unfinished:
            status.phase, status.stage = phase, ", ".join(unfinished)
            status.message = f"{phase}: waiting for {', '.join(unfinished)}"
            return False
    status.stage = None
    return True


def _start(
    generation: FlywheelGeneration,
    status: FlywheelGenerationStatus,
    stage: str,
    attempt: int,
    now: datetime,
    work: _Work,
) -> None:
    child = child_name(generation.metadata.name, stage, attempt)
    config = stage_config(generation, status, stage)
    work.actions.append(StartStage(stage=stage, child=child, attempt=attempt, config=config))
    record = status.record(stage)
    rerequest = record is not None and record.attempts == attempt
    if record is None:
        status.stages.append(StageRecord(name=stage, state="Running", attempts=attempt, child=child, created_at=now))
    else:
        record.state, record.attempts, record.child = "Running", attempt, child
        record.created_at, record.started_at, record.next_attempt_at = now, None, None
    if rerequest:
        work.events.append(Event("StageRequested", f"{child} was not seen; requested again", "Warning"))
    else:
        work.events.append(Event("StageStarted", f"stage {stage} started as {child} (attempt {attempt})"))


# ------------------------------------------------------------------------------------------------ canary
def _run_canary(
    generation: FlywheelGeneration, status: FlywheelGenerationStatus, observed: Observed, work: _Work
) -> None:
    spec, now = generation.spec, observed.now
    canary = status.canary
    if canary is None or canary.phase == "Waiting":
        assert status.candidate_policy is not None and status.policy is not None
        if canary is None:
            canary = status.canary = CanaryStatus(
                phase="Waiting",
                inference_service=spec.canary.inference_service,
                mode=spec.canary.mode,
                traffic_percent=spec.canary.traffic_percent,
                candidate_policy=status.candidate_policy,
                control_policy=status.policy,
                requested_at=now,
                routing=CanaryRouting(salt=_salt(generation), traffic_percent=spec.canary.traffic_percent),
            )
        if observed.canary_holder is not None:
            _wait_for_holder(canary, observed.canary_holder, status, now, work)
            return
        canary.phase, canary.requested_at, canary.message = "Deploying", now, None
        work.actions.append(deploy_action(canary))
        work.events.append(
            Event("CanaryDeploying", f"serving {status.candidate_policy} to {spec.canary.traffic_percent}% of users")
        )
        status.phase, status.message = "Canary", "waiting for the canary to become Ready"
        work.wake.append(now + CANARY_POLL)
        return
    if canary.phase == "Deploying":
        seen = observed.canary
        if observed.canary_holder is not None:  # lost a race for the service: nothing of ours is on it
            canary.phase = "Waiting"
            _wait_for_holder(canary, observed.canary_holder, status, now, work)
            return
        if seen is not None and seen.ready:
            canary.phase, canary.ready_at, canary.message = "Ready", now, seen.message
            canary.revisions = dict(seen.revisions)
            if canary.routing is not None:
                canary.routing.endpoints = dict(seen.endpoints)
            status.online = OnlineStatus(
                started_at=now,
                next_check_at=now,
                plan=gate.decision_plan(
                    spec.promotion, spec.canary, now=now, spec_generation=generation.metadata.generation
                ),
            )
            status.phase, status.message = "Observing", "canary Ready: measuring engagement"
            work.events.append(Event("CanaryReady", f"canary on {canary.inference_service} is Ready"))
        elif now - canary.requested_at >= parse_duration(spec.canary.ready_timeout):
            why = f"the canary did not become Ready within {spec.canary.ready_timeout}"
            if seen is not None and seen.message:
                why += f": {seen.message}"
            _end_canary(status, "ROLL_BACK", [why], now, work)
        else:
            canary.message = seen.message if seen is not None else canary.message
            work.wake.append(now + CANARY_POLL)
        return
    if canary.phase == "Ready":
        _observe(generation, status, observed, work)


def _salt(generation: FlywheelGeneration) -> str:
    """The experiment's salt: a generation of the same name created again is a new experiment."""
    meta = generation.metadata
    return f"{meta.namespace or ''}/{meta.name}/{meta.uid or ''}"


def deploy_action(canary: CanaryStatus) -> DeployCanary:
    """The DeployCanary a Deploying canary was requested with (carried out over several reconciles in Knative)."""
    return DeployCanary(
        inference_service=canary.inference_service,
        mode=canary.mode,
        traffic_percent=canary.traffic_percent,
        candidate_policy=canary.candidate_policy,
        control_policy=canary.control_policy,
    )


def _wait_for_holder(
    canary: CanaryStatus, holder: str, status: FlywheelGenerationStatus, now: datetime, work: _Work
) -> None:
    """Another generation's canary is on the InferenceService: one experiment per service, so wait for its end
    (the ready timeout counts from the deployment, not from the wait)."""
    message = (
        f"InferenceService {canary.inference_service} carries the canary of generation {holder}; "
        "this canary is deployed once that one is promoted or rolled back"
    )
    if canary.message != message:
        work.events.append(Event("CanaryWaiting", message))
    canary.message = message
    status.phase, status.message = "Canary", message
    work.wake.append(now + CANARY_POLL)


def _observe(generation: FlywheelGeneration, status: FlywheelGenerationStatus, observed: Observed, work: _Work) -> None:
    """Take a due reading, let the online gate decide with the frozen plan, act on PROMOTE / ROLL_BACK /
    INCONCLUSIVE. Edits of `promotion` or the canary's timings during the canary are ignored with a Warning."""
    now = observed.now
    online = status.online
    assert online is not None and online.started_at is not None and online.next_check_at is not None
    if online.plan is None:  # a canary started by an operator that did not freeze plans: freeze what is there now
        online.plan = gate.decision_plan(
            generation.spec.promotion, generation.spec.canary, now=now, spec_generation=generation.metadata.generation
        )
    decision_plan = online.plan
    _warn_ignored_edits(generation, online, work)
    max_duration = parse_duration(decision_plan.max_duration)
    grace = parse_duration(decision_plan.final_look_grace)
    interval = _cadence(decision_plan, online.readings[-1] if online.readings else None)
    if now < online.next_check_at:
        work.wake.append(online.next_check_at)
        return
    reading = observed.online
    if reading is None or (online.readings and reading.at <= online.readings[-1].at):
        if now - online.started_at < max_duration + grace:
            work.wake.append(now + interval)
            return
        reading = OnlineReading(at=now, error="no reading was taken before maxDuration + finalLookGrace")
    online.readings = [*online.readings, reading][-READINGS_KEPT:]
    decision = gate.evaluate_online(
        decision_plan,
        reading,
        elapsed=now - online.started_at,
        previous=online.decision,
        now=now,
    )
    online.decision = decision
    elapsed = now - online.started_at
    interval = _cadence(decision_plan, reading)
    next_check = now + interval
    if elapsed < max_duration < next_check - online.started_at:
        next_check = online.started_at + max_duration  # the last look is at maxDuration, not a cadence later
    elif elapsed >= max_duration:
        next_check = min(next_check, now + FINAL_LOOK_RETRY)
    online.next_check_at = next_check
    status.lift = _lift_summary(decision)
    status.decision_summary = decision.outcome
    if decision.outcome in ("PROMOTE", "ROLL_BACK", "INCONCLUSIVE"):
        _end_canary(status, decision.outcome, decision.reasons, now, work)
    else:
        work.wake.append(online.next_check_at)


FINAL_LOOK_RETRY = timedelta(minutes=5)
"""How often the last look retries a failed reading within `finalLookGrace`."""


def _cadence(decision_plan, last: OnlineReading | None) -> timedelta:
    """How often to read: `checkInterval`, or the shortest serving guardrail `interval` when that is shorter and
    the reader serves serving metrics (the SRE guardrails roll back within minutes; the statistical tests hold at
    any cadence). A reader without them (the local runner) keeps `checkInterval`."""
    intervals = [parse_duration(decision_plan.check_interval)]
    if last is not None and last.serving is not None:
        intervals += [parse_duration(g.interval) for g in decision_plan.promotion.serving_guardrails]
    return min(intervals)


def _warn_ignored_edits(generation: FlywheelGeneration, online, work: _Work) -> None:
    """A Warning Event, once per spec generation, naming the decision settings edited during the live canary."""
    assert online.plan is not None
    spec_generation = generation.metadata.generation
    if spec_generation is not None and spec_generation == online.ignored_spec_generation:
        return
    edits = gate.plan_edits(online.plan, generation.spec.promotion, generation.spec.canary)
    if not edits:
        return
    online.ignored_spec_generation = spec_generation
    work.events.append(
        Event(
            "PlanFrozen",
            f"ignored edits of {', '.join(edits)} during the live canary: the gate decides with the plan frozen at "
            f"{online.plan.frozen_at.isoformat()} (status.online.plan); changing the rules after a peek would break "
            "its error rates. Start a new generation to test with other settings",
            "Warning",
        )
    )


def _end_canary(status: FlywheelGenerationStatus, outcome: str, reasons: list[str], now: datetime, work: _Work) -> None:
    """PROMOTE sends all traffic to the candidate; ROLL_BACK and INCONCLUSIVE send it back to the parent."""
    canary = status.canary
    assert canary is not None
    if canary.routing is not None:
        canary.routing.endpoints = {}  # the chat backend sends everybody to the InferenceService's own URL again
    promote = outcome == "PROMOTE"
    if promote:
        work.actions.append(
            PromoteCanary(
                inference_service=canary.inference_service, mode=canary.mode, candidate_policy=canary.candidate_policy
            )
        )
        canary.phase, status.promoted_policy = "Promoted", canary.candidate_policy
    else:
        work.actions.append(
            RollBackCanary(
                inference_service=canary.inference_service, mode=canary.mode, control_policy=canary.control_policy
            )
        )
        canary.phase = "RolledBack"
    if status.online is not None and status.online.decision is not None:
        _check_divergence(status, status.online.decision, work)
    summary = "; ".join(reasons)
    event = (
        Event("Promoted", f"promoted: {summary}")
        if promote
        else Event("RolledBack", f"rolled back ({outcome}): {summary}", "Warning")
    )
    _finish(status, "Promoted" if promote else "RolledBack", outcome, reasons, now, work, event=event)


def _check_divergence(status: FlywheelGenerationStatus, decision: OnlineDecision, work: _Work) -> None:
    """The V12 alarm: a large offline reward-model gain that users did not confirm online."""
    metrics = status.offline_gate.metrics if status.offline_gate else None
    if metrics is None:
        return
    check = gate.detect_divergence(metrics, decision)
    if status.online is not None:
        status.online.divergence = check
    if not check.passed:
        work.events.append(Event("OfflineOnlineDivergence", check.message, "Warning"))


def _finish(
    status: FlywheelGenerationStatus,
    phase: str,
    outcome: str,
    reasons: list[str],
    now: datetime,
    work: _Work,
    event: Event | None,
) -> None:
    status.phase = phase  # type: ignore[assignment]
    status.stage = None
    status.decision = FinalDecision(outcome=outcome, reasons=reasons or ["no reason given"], at=now)  # type: ignore[arg-type]
    status.decision_summary = outcome
    status.message = "; ".join(reasons)[:500] if reasons else None
    if event is not None:
        work.events.append(event)


def _lift_summary(decision: OnlineDecision) -> str | None:
    """The LIFT printer column: relative depth and breadth lifts, e.g. `depth +4.1% breadth +0.8%`."""
    parts = [
        f"{name} {decision.numbers[key]:+.1%}"
        for name, key in (("depth", "depth.lift"), ("breadth", "breadth.lift"))
        if key in decision.numbers
    ]
    return " ".join(parts) or None
