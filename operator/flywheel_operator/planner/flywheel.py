"""`plan_flywheel(flywheel, observed_generations, now) -> FlywheelPlan`: when a Flywheel starts its next generation.

Pure, like `plan(generation, observed)`: no I/O and no clock (time arrives as `now`). The kopf handlers and the
local runner list the Flywheel's generations (by the FLYWHEEL_LABEL), call this, carry out the actions and write
the returned status. Rules:

- never two generations of one Flywheel in flight (`concurrencyPolicy: Forbid`): the next starts only once every
  earlier one is Promoted, RolledBack, Failed or gone;
- the parent is always the latest promoted generation (the first one, and every one before any promotion, starts
  from `spec.basePolicy`); a generation that fails or rolls back leaves the parent unchanged;
- the traffic window covers the `window.days` days up to the start day and, widened back, the previous canary's
  days;
- names are derived from the Flywheel and the number, so a restart at any point re-requests the same object
  (created with a precondition: the create fails with AlreadyExists) and never a second one;
- stop rules (maxGenerations, K roll-backs in a row, M plateau generations in a row, suspend) are evaluated on
  the trajectory; a pause sets the `Paused` condition with its reason and posts one Event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from flywheel_operator.api import (
    API_VERSION,
    KIND,
    Condition,
    FlywheelGeneration,
    FlywheelGenerationStatus,
)
from flywheel_operator.api.flywheel import (
    FINISHED_PHASES,
    FLYWHEEL_LABEL,
    WINDOW_ANNOTATION,
    Flywheel,
    FlywheelStatus,
    TrajectoryEntry,
    generation_name,
    interval_seconds,
    render_template,
)
from flywheel_operator.planner.actions import Event

CREATE_VISIBILITY_GRACE = timedelta(minutes=2)
"""A requested generation not seen for this long is requested again (same name: at most one ever exists)."""
PRIMARY_LIFT = "breadth"
"""The lift the trajectory and the plateau rule read (the report's primary engagement metric)."""


@dataclass(frozen=True)
class ObservedGeneration:
    """One of the Flywheel's generations as a backend saw it (listed by FLYWHEEL_LABEL)."""

    name: str
    number: int
    status: FlywheelGenerationStatus | None = None
    parent: str | None = None
    """Its spec.parent (None: it started from basePolicy)."""
    window: tuple[date, date] | None = None
    """Its traffic window (WINDOW_ANNOTATION)."""
    created_at: datetime | None = None


@dataclass(frozen=True)
class CreateGeneration:
    """Create `body` (a FlywheelGeneration) unless an object of its name exists; AlreadyExists is success."""

    name: str
    number: int
    body: dict[str, Any]
    since_decision: timedelta | None = None
    """Time from the previous generation's decision to this start (the metric), None for the first."""


@dataclass(frozen=True)
class DeleteGeneration:
    """Delete a finished generation beyond `historyLimit` (its children go with their owner references)."""

    name: str


FlywheelAction = CreateGeneration | DeleteGeneration


@dataclass(frozen=True)
class FlywheelPlan:
    actions: tuple[FlywheelAction, ...]
    status: FlywheelStatus
    events: tuple[Event, ...] = field(default=())
    requeue_at: datetime | None = None


def plan_flywheel(flywheel: Flywheel, observed: Sequence[ObservedGeneration], now: datetime) -> FlywheelPlan:
    """Decide what the Flywheel does next given its generations as `observed` at `now`."""
    previous = FlywheelStatus.model_validate(flywheel.status or {})
    status = previous.model_copy(deep=True)
    status.observed_generation = flywheel.metadata.generation
    spec = flywheel.spec
    seen = {o.number: o for o in observed if o.name == generation_name(flywheel.metadata.name, o.number)}
    actions: list[FlywheelAction] = []
    events: list[Event] = []
    wake: list[datetime] = []

    _absorb(status, seen, spec.base_policy)
    _summarise(status, flywheel)
    requested = [e for e in status.trajectory if e.phase == "Requested"]
    in_flight = [e for e in status.trajectory if e.phase not in FINISHED_PHASES]
    stop = _stop_reason(status, flywheel)

    if in_flight:
        entry = in_flight[0]
        status.phase, status.next_start_at = "Running", None
        status.message = f"generation {entry.number} ({entry.name}) is {entry.phase}"
        for entry in requested:  # created but not seen yet: ask again after a grace (idempotent by name)
            due = (entry.requested_at or now) + CREATE_VISIBILITY_GRACE
            if now >= due:
                rebuilt = _build(flywheel, status, entry.number, now, window=entry.window)
                if isinstance(rebuilt, CreateGeneration):
                    actions.append(rebuilt)
                wake.append(now + CREATE_VISIBILITY_GRACE)
            else:
                wake.append(due)
    elif stop is not None:
        status.phase, status.message, status.next_start_at = stop[0], stop[2], None
    else:
        due = _next_start(flywheel, status, now)
        number = _next_number(flywheel, status)
        if due > now:
            status.phase, status.next_start_at = "Waiting", due
            status.message = f"generation {number} starts at {due.isoformat()} ({spec.schedule.policy})"
            wake.append(due)
        else:
            built = _build(flywheel, status, number, now, window=None)
            if isinstance(built, str):
                status.phase, status.message, status.next_start_at = "Invalid", built[:500], None
            else:
                actions.append(built)
                window = built.body["metadata"]["annotations"][WINDOW_ANNOTATION].split("/")
                status.trajectory.append(TrajectoryEntry(
                    number=number, name=built.name, phase="Requested", parent=built.body["spec"].get("parent"),
                    starting_policy=status.deployed_policy, deployed_policy=status.deployed_policy,
                    window=[date.fromisoformat(d) for d in window], requested_at=now))
                status.trajectory.sort(key=lambda e: e.number)
                status.phase, status.next_start_at = "Running", None
                status.message = f"generation {number} ({built.name}) requested"
                wake.append(now + CREATE_VISIBILITY_GRACE)
    _summarise(status, flywheel)
    actions += _history(flywheel, status, seen)
    events += _transition_events(previous, status)
    _conditions(status, previous, flywheel, now, stop)
    return FlywheelPlan(tuple(actions), status, tuple(events), min(wake, default=None))


# ----------------------------------------------------------------------------------------------- trajectory
def _absorb(status: FlywheelStatus, seen: dict[int, ObservedGeneration], base_policy: str) -> None:
    """Fold what was observed into the trajectory: one entry per generation number, never two."""
    for number, generation in sorted(seen.items()):
        entry = status.entry(number)
        if entry is None:
            entry = TrajectoryEntry(number=number, name=generation.name, phase="Pending",
                                    requested_at=generation.created_at)
            status.trajectory.append(entry)
        if entry.phase in FINISHED_PHASES:
            continue  # decided generations never change (a later history deletion must not undo them)
        entry.parent = generation.parent
        if generation.window is not None:
            entry.window = list(generation.window)
        observed = generation.status or FlywheelGenerationStatus()
        entry.phase = observed.phase
        entry.starting_policy = observed.policy or entry.starting_policy
        if observed.offline_gate is not None and observed.offline_gate.metrics is not None:
            entry.offline_win_rate = observed.offline_gate.metrics.win_rate_user
        if observed.online is not None:
            entry.canary_started_at = observed.online.started_at or entry.canary_started_at
            if observed.online.decision is not None:
                numbers = observed.online.decision.numbers
                entry.lift = numbers.get(f"{PRIMARY_LIFT}.lift")
                lower, upper = numbers.get(f"{PRIMARY_LIFT}.lower"), numbers.get(f"{PRIMARY_LIFT}.upper")
                entry.lift_interval = [lower, upper] if lower is not None and upper is not None else None
                entry.depth_lift = numbers.get("depth.lift")
        if observed.canary is not None and entry.canary_started_at is None:
            entry.canary_started_at = observed.canary.ready_at
        if observed.decision is not None:
            entry.decision = observed.decision.outcome
            entry.decided_at = observed.decision.at
            entry.reason = observed.decision.reasons[0][:300] if observed.decision.reasons else None
        if observed.phase == "Promoted":
            entry.deployed_policy = observed.promoted_policy
    for entry in status.trajectory:  # seen once, gone before deciding: deleted by someone; do not wait for ever
        if entry.number not in seen and entry.phase not in FINISHED_PHASES and entry.phase != "Requested":
            entry.phase, entry.decision = "Deleted", "FAIL"
            entry.reason = "the FlywheelGeneration was deleted before it decided"
    status.trajectory.sort(key=lambda e: e.number)
    deployed = base_policy
    for entry in status.trajectory:  # what served users after each generation
        if entry.phase == "Promoted" and entry.deployed_policy:
            deployed = entry.deployed_policy
        elif entry.phase in FINISHED_PHASES:
            entry.deployed_policy = deployed


def _summarise(status: FlywheelStatus, flywheel: Flywheel) -> None:
    """Counters and the columns of `kubectl get fw` from the trajectory."""
    trajectory = status.trajectory
    promoted = [e for e in trajectory if e.phase == "Promoted"]
    status.last_promoted = promoted[-1].name if promoted else None
    status.deployed_policy = (promoted[-1].deployed_policy if promoted else None) or flywheel.spec.base_policy
    flying = next((e for e in trajectory if e.phase not in FINISHED_PHASES), None)
    status.in_flight = flying.name if flying else None
    status.in_flight_phase = flying.phase if flying else None
    finished = [e for e in trajectory if e.phase in FINISHED_PHASES]
    counted = [e for e in finished if e.number >= flywheel.spec.stop_rules.count_from]
    status.promotions_in_a_row = _trailing(finished, lambda e: e.phase == "Promoted")
    status.rollbacks_in_a_row = _trailing(counted, lambda e: e.phase != "Promoted")
    status.plateau_in_a_row = _trailing(counted, _plateau)
    if status.rollbacks_in_a_row:
        status.streak = f"{status.rollbacks_in_a_row} rolled back"
    elif status.promotions_in_a_row:
        status.streak = f"{status.promotions_in_a_row} promoted"
    else:
        status.streak = None


def _trailing(entries: list[TrajectoryEntry], test: Any) -> int:
    count = 0
    for entry in reversed(entries):
        if not test(entry):
            break
        count += 1
    return count


def _plateau(entry: TrajectoryEntry) -> bool:
    """INCONCLUSIVE, or promoted with a primary lift whose interval includes 0 (a promotion on depth alone)."""
    if entry.decision == "INCONCLUSIVE":
        return True
    if entry.phase == "Promoted" and entry.lift_interval is not None:
        lower, upper = entry.lift_interval
        return lower <= 0.0 <= upper
    return False


def parent_of(status: FlywheelStatus) -> TrajectoryEntry | None:
    """The latest promoted generation: every new generation's parent."""
    return next((e for e in reversed(status.trajectory) if e.phase == "Promoted"), None)


# ---------------------------------------------------------------------------------------------- stop rules
StopPhase = Literal["Paused", "Suspended", "Finished"]


def _stop_reason(status: FlywheelStatus, flywheel: Flywheel) -> tuple[StopPhase, str, str] | None:
    """(phase, condition reason, message) when no new generation may start, None otherwise."""
    spec, rules = flywheel.spec, flywheel.spec.stop_rules
    started = len(status.trajectory)
    if rules.max_generations is not None and started >= rules.max_generations:
        return ("Finished", "MaxGenerations",
                f"all {rules.max_generations} generations (stopRules.maxGenerations) have decided; raise it to go on")
    if rules.max_rollbacks_in_a_row is not None and status.rollbacks_in_a_row >= rules.max_rollbacks_in_a_row:
        last = status.trajectory[-1].number
        return ("Paused", "RollBacksInARow",
                f"paused: {status.rollbacks_in_a_row} generations in a row rolled back or failed "
                f"(stopRules.maxRollbacksInARow {rules.max_rollbacks_in_a_row}; the last, {last}: "
                f"{status.trajectory[-1].reason or status.trajectory[-1].decision}); fix the cause, then set "
                f"spec.stopRules.countFrom: {last + 1} to resume")
    if rules.plateau_generations is not None and status.plateau_in_a_row >= rules.plateau_generations:
        last = status.trajectory[-1].number
        return ("Paused", "Plateau",
                f"paused: {status.plateau_in_a_row} generations in a row without a clear lift (INCONCLUSIVE or a "
                f"breadth interval including 0; stopRules.plateauGenerations {rules.plateau_generations}); change "
                f"the recipe, then set spec.stopRules.countFrom: {last + 1} to resume")
    if spec.suspend:
        return "Suspended", "Suspended", "suspended (spec.suspend): no new generation starts"
    return None


# ------------------------------------------------------------------------------------------------ schedule
def _next_number(flywheel: Flywheel, status: FlywheelStatus) -> int:
    return status.trajectory[-1].number + 1 if status.trajectory else flywheel.spec.first_generation


def _next_start(flywheel: Flywheel, status: FlywheelStatus, now: datetime) -> datetime:
    """Earliest start of the next generation; nothing is in flight when this is asked."""
    schedule = flywheel.spec.schedule
    last = status.trajectory[-1] if status.trajectory else None
    decided = None
    if last is not None:
        decided = last.decided_at or last.requested_at or now
    if schedule.policy == "on-decision":
        return decided or now
    if schedule.policy == "interval":
        if last is None or last.requested_at is None:
            return now
        return max(decided or now, last.requested_at + timedelta(seconds=interval_seconds(schedule)))
    from cronsim import CronSim

    anchor = decided or flywheel.metadata.creation_timestamp or now
    # the first cron time at or after the anchor (CronSim yields times strictly after its start)
    return next(iter(CronSim(schedule.cron or "", anchor - timedelta(seconds=1))))


def traffic_window(flywheel: Flywheel, status: FlywheelStatus, start: datetime) -> tuple[date, date]:
    """[first day, last day] of the traffic generation N+1 trains on: `window.days` days up to the start day,
    widened back to the first day of the latest canary (so it covers the days the parent's users were watched)."""
    last_day = start.date()
    first_day = last_day - timedelta(days=flywheel.spec.window.days - 1)
    if flywheel.spec.window.include_previous_canary:
        canary = next((e.canary_started_at for e in reversed(status.trajectory) if e.canary_started_at), None)
        if canary is not None:
            first_day = min(first_day, canary.date())
    return first_day, last_day


# ------------------------------------------------------------------------------------------------- building
def _build(flywheel: Flywheel, status: FlywheelStatus, number: int, now: datetime,
           window: list[date] | None) -> CreateGeneration | str:
    """The generation `number` as the API server should store it, or why the template cannot make one."""
    first_day, last_day = (window[0], window[1]) if window else traffic_window(flywheel, status, now)
    name = generation_name(flywheel.metadata.name, number)
    variables = {
        "flywheel": flywheel.metadata.name,
        "generation": str(number),
        "window.start": first_day.isoformat(),
        "window.end": last_day.isoformat(),
        "window.days": str((last_day - first_day).days + 1),
    }
    template = flywheel.spec.template
    spec = render_template(template.spec.to_wire(), variables)
    parent = next((e for e in reversed(status.trajectory) if e.phase == "Promoted" and e.number < number), None)
    spec["generation"] = number
    if parent is not None:
        spec["parent"] = parent.name
    else:
        spec["basePolicy"] = flywheel.spec.base_policy
    meta = flywheel.metadata
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {**template.metadata.labels, FLYWHEEL_LABEL: meta.name},
        "annotations": {**template.metadata.annotations,
                        WINDOW_ANNOTATION: f"{first_day.isoformat()}/{last_day.isoformat()}"},
    }
    if meta.namespace:
        metadata["namespace"] = meta.namespace
    if meta.uid:
        metadata["ownerReferences"] = [{
            "apiVersion": flywheel.api_version, "kind": flywheel.kind, "name": meta.name, "uid": meta.uid,
            "controller": True, "blockOwnerDeletion": True}]
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
    try:
        FlywheelGeneration.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return (f"spec.template renders generation {number} ({name}) that the API refuses: {problems}; fix "
                "spec.template")
    previous = status.trajectory[-1] if status.trajectory else None
    since = now - previous.decided_at if previous is not None and previous.decided_at is not None else None
    return CreateGeneration(name=name, number=number, body=body, since_decision=since)


def _history(flywheel: Flywheel, status: FlywheelStatus, seen: dict[int, ObservedGeneration]) -> list[FlywheelAction]:
    """Delete the oldest finished generations beyond historyLimit; never the latest promoted (the next parent)."""
    limit = flywheel.spec.history_limit
    if limit is None:
        return []
    keep = parent_of(status)
    finished = [e for e in status.trajectory if e.phase in FINISHED_PHASES and e.number in seen
                and (keep is None or e.number != keep.number)]
    excess = len(finished) - limit
    return [DeleteGeneration(e.name) for e in finished[:max(excess, 0)]]


# ------------------------------------------------------------------------------------- events and conditions
def _transition_events(previous: FlywheelStatus, status: FlywheelStatus) -> list[Event]:
    events = []
    for entry in status.trajectory:
        before = previous.entry(entry.number)
        if before is None and entry.phase == "Requested":
            parent = f"parent {entry.parent}" if entry.parent else "the base policy"
            events.append(Event("GenerationStarted", f"generation {entry.number} ({entry.name}) started from {parent}, "
                                f"traffic {entry.window[0]}..{entry.window[1]}" if entry.window else
                                f"generation {entry.number} ({entry.name}) started from {parent}"))
        if entry.phase in FINISHED_PHASES and (before is None or before.phase not in FINISHED_PHASES):
            lift = f", breadth lift {entry.lift:+.1%}" if entry.lift is not None else ""
            events.append(Event(
                f"Generation{entry.phase}",
                f"generation {entry.number} ({entry.name}) {entry.phase}{lift}: {entry.reason or entry.decision}",
                "Normal" if entry.phase == "Promoted" else "Warning"))
    if status.phase != previous.phase and status.phase in ("Paused", "Finished", "Invalid"):
        events.append(Event(f"Flywheel{status.phase}", status.message or status.phase,
                            "Normal" if status.phase == "Finished" else "Warning"))
    if previous.phase in ("Paused", "Suspended") and status.phase in ("Running", "Waiting"):
        events.append(Event("FlywheelResumed", status.message or "resumed"))
    return events


def _set(conditions: list[Condition], previous: list[Condition], type_: str, value: bool, reason: str, message: str,
         now: datetime, observed_generation: int | None) -> None:
    text = "True" if value else "False"
    old = next((c for c in previous if c.type == type_), None)
    stamp = old.last_transition_time if old is not None and old.status == text else now
    conditions.append(Condition(type=type_, status=text, reason=reason, message=message[:1000],
                                last_transition_time=stamp, observed_generation=observed_generation))


def _conditions(status: FlywheelStatus, previous: FlywheelStatus, flywheel: Flywheel, now: datetime,
                stop: tuple[StopPhase, str, str] | None) -> None:
    generation = flywheel.metadata.generation
    conditions: list[Condition] = []
    paused = status.phase == "Paused" or (stop is not None and stop[0] == "Paused")
    _set(conditions, previous.conditions, "Paused", paused, stop[1] if paused and stop else "NotPaused",
         stop[2] if paused and stop else "", now, generation)
    finished = stop is not None and stop[0] == "Finished" and status.phase == "Finished"
    _set(conditions, previous.conditions, "Finished", finished, "MaxGenerations" if finished else "Turning",
         status.message or "" if finished else "", now, generation)
    ready = status.phase in ("Running", "Waiting")
    reason = {"Running": "GenerationInFlight", "Waiting": "WaitingForSchedule", "Paused": "Paused",
              "Suspended": "Suspended", "Finished": "Finished", "Invalid": "InvalidTemplate"}.get(status.phase,
                                                                                                 status.phase)
    _set(conditions, previous.conditions, "Ready", ready, reason, status.message or "", now, generation)
    status.conditions = conditions
