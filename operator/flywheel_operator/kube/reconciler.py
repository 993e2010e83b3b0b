"""One reconcile of one generation: read it, observe, plan, act, write the status once (skipped when unchanged).

Every kopf handler (create, resume, update, the per-generation daemon, Job events) calls `Reconciler.reconcile`;
a lock per generation serialises them, and each reconcile reads the generation's latest state (from the watch's
index, with this operator's own last status write; kube/views.py), so the order in which the triggers arrive
does not matter. Actions run before the status write: after a crash the status is behind
the world, never ahead of it, and the idempotent actions are simply repeated.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from flywheel_operator.api import (
    TERMINAL_PHASES,
    Condition,
    FinalDecision,
    FlywheelGeneration,
    FlywheelGenerationStatus,
)
from flywheel_operator.kube import revert
from flywheel_operator.kube.admission import MAX_CONCURRENT_RECONCILES, Admission, Priority
from flywheel_operator.kube.backend import KubernetesBackend
from flywheel_operator.kube.client import ApiError
from flywheel_operator.kube.policy import StagePolicy
from flywheel_operator.kube.views import StatusLedger
from flywheel_operator.metrics import PHASES, OperatorMetrics
from flywheel_operator.planner import Action, Event, Plan, StartStage, plan
from flywheel_operator.validation import problems_of_error

log = logging.getLogger(__name__)

EventPoster = Callable[[dict[str, Any], Event], None]
Key = tuple[str, str]


class InvalidSpec(Exception):
    """The generation cannot be parsed: retrying will not help (the handlers raise kopf.PermanentError)."""


def _uid(body: dict[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid") or "")


def utcnow() -> datetime:
    return datetime.now(UTC)


def describe(action: Action) -> str:
    """The child an action writes, as `kubectl` names it."""
    if isinstance(action, StartStage):
        return f"stage {action.stage} (Job {action.child})"
    return f"{type(action).__name__} on InferenceService {action.inference_service}"


def invalid_status(errors: list[str], now: datetime, previous: dict[str, Any] | None) -> FlywheelGenerationStatus:
    """Failed with the validation errors, a Stalled condition and a FAIL decision; nothing is started."""
    message = "invalid spec: " + "; ".join(errors)
    old = FlywheelGenerationStatus.model_validate(previous) if previous else None
    stamp = old.decision.at if old is not None and old.decision is not None else now
    return FlywheelGenerationStatus(
        phase="Failed",
        message=message[:500],
        decision_summary="FAIL",
        decision=FinalDecision(outcome="FAIL", reasons=errors, at=stamp),
        conditions=[
            Condition(
                type="Ready", status="False", reason="InvalidSpec", message=message[:1000], last_transition_time=stamp
            ),
            Condition(
                type="Stalled", status="True", reason="InvalidSpec", message=message[:1000], last_transition_time=stamp
            ),
            Condition(type="Reconciling", status="False", reason="InvalidSpec", last_transition_time=stamp),
            # terminal like every Failed generation, so `kubectl wait --for=condition=Finished` returns
            Condition(
                type="Finished", status="True", reason="Failed", message=message[:1000], last_transition_time=stamp
            ),
        ],
    )


@dataclass
class Reconciler:
    backend: KubernetesBackend
    metrics: OperatorMetrics
    post_event: EventPoster
    clock: Callable[[], datetime] = utcnow
    admission: Admission = field(default_factory=lambda: Admission(MAX_CONCURRENT_RECONCILES))
    policy: StagePolicy = field(default_factory=StagePolicy)
    """Images and ServiceAccounts stage Jobs may use; a generation asking for others fails before any action."""
    requeue_at: dict[Key, datetime | None] = field(default_factory=dict)
    """Latest wake-up time each generation's planner asked for (the daemon sleeps until it)."""
    ledger: StatusLedger = field(default_factory=StatusLedger)
    """Statuses this operator wrote that the watch may not show yet (kube/views.py)."""
    cached_reads: int = 0
    """Reconciles that read their generation from the watch's index rather than a GET (tests and debugging)."""
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    _wake: dict[Key, asyncio.Event] = field(default_factory=dict)
    _phases: dict[Key, str] = field(default_factory=dict)
    _counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(namespace, phase) -> generations in it, kept with `_phases` (no walk over every generation per change)."""

    def wake_event(self, key: Key) -> asyncio.Event:
        return self._wake.setdefault(key, asyncio.Event())

    async def reconcile(self, namespace: str, name: str, *, priority: Priority = Priority.PROGRESS) -> Plan | None:
        """`_reconcile`, counting each error in `flywheel_reconcile_errors` by reason (the dashboard and the
        FlywheelReconcileErrors alert read it)."""
        try:
            return await self._reconcile(namespace, name, priority=priority)
        except InvalidSpec:
            self.metrics.reconcile_errors.labels(namespace, "invalid_spec").inc()
            raise
        except ApiError as exc:
            reason = "api_transient" if exc.transient else "api_refused"
            self.metrics.reconcile_errors.labels(namespace, reason).inc()
            raise

    async def _reconcile(self, namespace: str, name: str, *, priority: Priority) -> Plan | None:
        """Reconcile `namespace/name` once admitted at `priority` (the slot is taken before the generation's lock,
        so a lock holder always runs); None when it is gone or being deleted. Raises InvalidSpec or ApiError."""
        key = (namespace, name)
        async with self.admission.slot(priority), self._locks.setdefault(key, asyncio.Lock()):
            body = await self._read(key)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                return None
            old_status = body.get("status") or {}
            body["metadata"] = {**(body.get("metadata") or {}), "namespace": namespace}
            try:
                generation = FlywheelGeneration.model_validate(
                    {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status")}
                )
            except ValidationError as exc:
                errors = [str(problem) for problem in problems_of_error(exc)]
                await self._reject(body, errors, old_status)
                raise InvalidSpec("; ".join(errors)) from exc
            refused = [] if old_status.get("phase") in TERMINAL_PHASES else self.policy.problems(generation)
            if refused:  # a finished generation keeps its outcome when the allowlist changes later
                await self._reject(body, refused, old_status)
                raise InvalidSpec("; ".join(refused))
            now = self.clock()
            observed = await self.backend.observe(generation, now)
            result = plan(generation, observed)
            for action in result.actions:
                try:
                    await self.backend.act(generation, action)
                except ApiError as exc:
                    if not exc.transient:
                        await self._refused(body, old_status, action, exc)
                    raise
            new_status = result.status.to_wire()
            if result.status.phase in TERMINAL_PHASES and old_status.get("phase") not in TERMINAL_PHASES:
                stopped = await self.backend.stop_active_jobs(namespace, name)  # e.g. a failed stage's siblings
                if stopped:
                    self.post_event(body, Event("JobsStopped", f"deleted running Jobs {', '.join(stopped)}"))
            if new_status != old_status:
                await self._write_status(body, old_status, new_status)
                previous = FlywheelGenerationStatus.model_validate(old_status) if old_status else None
                self.metrics.observe(namespace, name, previous, result.status, now=now)
                await self._track(generation, body, previous, result.status)
            elif key not in self._phases:
                self.metrics.observe(namespace, name, None, result.status, now=now)
            for event in result.events:
                self.post_event(body, event)
            self._set_phase(key, result.status.phase)
            self.requeue_at[key] = result.requeue_at
        self.wake_event(key).set()
        return result

    async def _read(self, key: Key) -> dict[str, Any] | None:
        """The generation to reconcile (a body this call may change): the watch's latest body with, as its status,
        the last one this operator wrote, when the watch has shown only statuses this operator wrote (kube/views.py
        `StatusLedger`), or none at all (a new generation: its first reconcile, under a burst of creations, needs
        no GET); otherwise, or when the index is unbound or has not seen the generation, a GET (which starts the
        ledger over: once per generation after a restart). Either way no decision is taken on a status older than
        this operator's last write, as with a GET every time."""
        watched = self.backend.view.generation(*key)
        if watched is not None:
            status = self.ledger.settle(key, _uid(watched), watched.get("status") or {})
            if status is not None:
                self.cached_reads += 1
                watched["status"] = status
                return watched
        body = await self.backend.get_generation(*key)
        if body is not None:
            self.ledger.seed(key, _uid(body), body.get("status") or {})
        return body

    async def _write_status(self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        """The one status write of a reconcile; the ledger learns what the API server stored. A failed write
        leaves the ledger as it was: the watch then shows a status it does not know (the write may still have
        happened) or the old one, and the next reconcile reads accordingly."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        self.ledger.wrote(key, _uid(body), await self.backend.write_status(*key, old, new))

    async def _track(self, generation: FlywheelGeneration, body: dict[str, Any],
                     previous: FlywheelGenerationStatus | None, status: FlywheelGenerationStatus) -> None:
        """Log the gates' results to the generation's MLflow run, register a promoted model (spec.tracking)."""
        tracking = generation.spec.tracking
        if tracking is None or tracking.mlflow is None:
            return
        from flywheel_operator import tracking as tracker

        registered = tracking.mlflow.registered_model or generation.spec.canary.inference_service
        for note in await asyncio.to_thread(tracker.record, tracking.mlflow, generation.metadata.name, previous,
                                            status, registered_model=registered):
            self.post_event(body, Event("Tracking", note[:1000], "Warning" if note.startswith("tracking:") else
                                        "Normal"))

    async def revert_deleted(self, namespace: str, name: str) -> None:
        """A generation marked for deletion while it holds the revert finalizer: roll its live canary back and
        release it (kube/revert.py), under the generation's lock so that no reconcile is half-way through
        deploying the candidate."""
        key = (namespace, name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            body = await self.backend.get_generation(namespace, name)
            if body is None or revert.FINALIZER not in revert.finalizers(body):
                return
            body.setdefault("metadata", {}).setdefault("namespace", namespace)
            done = await revert.revert(self.backend.client, body)
            if done is not None:
                self.post_event(body, Event("CanaryReverted", done, "Warning"))

    async def _refused(self, body: dict[str, Any], old_status: dict[str, Any], action: Action, exc: ApiError) -> None:
        """The API server refused a child (403, 404, 422…): retrying alone will not fix it, so the status says
        what and why and a Warning Event is posted once; the plan's own status is not written (its actions did
        not happen) and the handlers retry with their backoff, in case the cause is fixed outside."""
        status = FlywheelGenerationStatus.model_validate(old_status or {})
        status.message = f"{describe(action)} was refused by the API server: {exc}"[:500]
        new_status = status.to_wire()
        if new_status != old_status:
            await self._write_status(body, old_status, new_status)
            self.post_event(body, Event("ChildRefused", status.message, "Warning"))

    async def _reject(self, body: dict[str, Any], errors: list[str], old_status: dict[str, Any]) -> None:
        meta = body["metadata"]
        status = invalid_status(errors, self.clock(), old_status or None)
        new_status = status.to_wire()
        if new_status != old_status:
            await self._write_status(body, old_status, new_status)
            self.post_event(body, Event("InvalidSpec", status.message or "invalid spec", "Warning"))
        self._set_phase((meta["namespace"], meta["name"]), "Failed")

    def _set_phase(self, key: Key, phase: str) -> None:
        old = self._phases.get(key)
        if old != phase:
            namespace = key[0]
            seen = any(self._counts[(namespace, p)] > 0 for p in PHASES)
            if old is not None:
                self._counts[(namespace, old)] -= 1
            self._counts[(namespace, phase)] += 1
            self._phases[key] = phase
            if not seen:
                self._publish_counts()  # a new namespace: all its phases appear
                return
            # The namespace's series exist: only the changed ones move (what a full publish would give).
            for changed in (old, phase):
                if changed is not None:
                    self.metrics.generations.labels(namespace, changed).set(self._counts[(namespace, changed)])

    def _publish_counts(self) -> None:
        """`flywheel_generations`: what `metrics.phase_counts` gives for `_phases` (every phase of a namespace
        that has generations, zeros included)."""
        namespaces = {namespace for (namespace, _), count in self._counts.items() if count > 0}
        self.metrics.set_phase_counts({(ns, p): self._counts[(ns, p)] for ns in sorted(namespaces) for p in PHASES})

    def forget(self, namespace: str, name: str) -> None:
        """The generation was deleted: drop its series and bookkeeping."""
        key = (namespace, name)
        phase = self._phases.get(key)
        if phase is not None:
            self._counts[(namespace, phase)] -= 1
        for table in (self._phases, self.requeue_at, self._locks, self._wake):
            table.pop(key, None)
        self.ledger.forget(key)
        self.metrics.forget(namespace, name)
        self._publish_counts()
