"""The Flywheel on a cluster: kopf handlers that list a Flywheel's generations, call the pure `plan_flywheel` and
carry out its actions (create the next FlywheelGeneration, delete those past historyLimit), then write the status.

- create / resume / update(spec) reconcile now; a daemon per Flywheel sleeps until the plan's `requeue_at` (the
  schedule, a create not yet visible) capped by `poll`;
- a FlywheelGeneration event (labelled with FLYWHEEL_LABEL) whose phase changed reconciles its Flywheel at once,
  so the next generation starts within the handling latency of the decision;
- creates carry a precondition: the name is derived from the Flywheel and the number, so the API server answers a
  repeated create with AlreadyExists (409), which is success when the object is this Flywheel's generation and an
  error naming the squatter otherwise. After a crash between the create and the status write, the next reconcile
  sees the generation in the list (or asks again after a grace, same name), never creating a second one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from flywheel_operator.api import GROUP, PLURAL, TERMINAL_PHASES, VERSION, FlywheelGenerationStatus
from flywheel_operator.api.flywheel import (
    FLYWHEEL_LABEL,
    FLYWHEEL_PLURAL,
    WINDOW_ANNOTATION,
    Flywheel,
    FlywheelStatus,
    window_of,
)
from flywheel_operator.kube.backend import merge_patch
from flywheel_operator.kube.client import ApiError, resource_path
from flywheel_operator.kube.reconciler import InvalidSpec, Reconciler
from flywheel_operator.planner import Event
from flywheel_operator.planner.flywheel import (
    CreateGeneration,
    DeleteGeneration,
    FlywheelPlan,
    ObservedGeneration,
    plan_flywheel,
)
from flywheel_operator.validation import problems_of_error

log = logging.getLogger(__name__)
Key = tuple[str, str]


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def observation(body: dict[str, Any]) -> ObservedGeneration | None:
    """A listed FlywheelGeneration as the planner sees it (None when it has no generation number)."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    if not isinstance(spec.get("generation"), int):
        return None
    try:
        status = FlywheelGenerationStatus.model_validate(body.get("status") or {})
    except ValidationError:
        status = None
    return ObservedGeneration(
        name=meta.get("name", ""), number=spec["generation"], status=status, parent=spec.get("parent"),
        window=window_of((meta.get("annotations") or {}).get(WINDOW_ANNOTATION)),
        created_at=_time(meta.get("creationTimestamp")))


def owned_by(body: dict[str, Any], flywheel: Flywheel) -> bool:
    """Created by this Flywheel: its owner reference's uid when both have one, else its label."""
    meta = body.get("metadata") or {}
    if (meta.get("labels") or {}).get(FLYWHEEL_LABEL) != flywheel.metadata.name:
        return False
    uids = [ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("kind") == flywheel.kind]
    return not uids or flywheel.metadata.uid is None or flywheel.metadata.uid in uids


@dataclass
class FlywheelReconciler:
    """One reconcile of one Flywheel at a time; shares the generation Reconciler's client, clock, events, metrics."""

    generations: Reconciler
    requeue_at: dict[Key, datetime | None] = field(default_factory=dict)
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    _wake: dict[Key, asyncio.Event] = field(default_factory=dict)

    def wake_event(self, key: Key) -> asyncio.Event:
        return self._wake.setdefault(key, asyncio.Event())

    @property
    def client(self):
        return self.generations.backend.client

    async def reconcile(self, namespace: str, name: str) -> FlywheelPlan | None:
        """Reconcile `namespace/name`; None when it is gone. Raises InvalidSpec or ApiError."""
        key = (namespace, name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            try:
                body = await self.client.get(resource_path(FLYWHEEL_PLURAL, namespace, name))
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                return None
            old_status = body.get("status") or {}
            body.setdefault("metadata", {}).setdefault("namespace", namespace)
            try:
                flywheel = Flywheel.model_validate({k: body.get(k) for k in ("apiVersion", "kind", "metadata",
                                                                           "spec", "status")})
            except ValidationError as exc:
                errors = [str(p) for p in problems_of_error(exc)]
                await self._reject(body, errors, old_status)
                raise InvalidSpec("; ".join(errors)) from exc
            items = await self.client.list(resource_path(PLURAL, namespace), {FLYWHEEL_LABEL: name})
            observed = [o for item in items if owned_by(item, flywheel) and (o := observation(item)) is not None]
            now = self.generations.clock()
            result = plan_flywheel(flywheel, observed, now)
            for action in result.actions:
                await self._act(namespace, flywheel, action)
            new_status = result.status.to_wire()
            if new_status != old_status:
                await self.client.patch(resource_path(FLYWHEEL_PLURAL, namespace, name, "status"),
                                        {"status": merge_patch(old_status, new_status)})
                previous = FlywheelStatus.model_validate(old_status) if old_status else None
                self.generations.metrics.flywheels.observe(namespace, name, previous, result.status)
            for event in result.events:
                self.generations.post_event(body, event)
            self.requeue_at[key] = result.requeue_at
        self.wake_event(key).set()
        return result

    async def _act(self, namespace: str, flywheel: Flywheel, action: CreateGeneration | DeleteGeneration) -> None:
        if isinstance(action, CreateGeneration):
            try:
                await self.client.create(resource_path(PLURAL, namespace), action.body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                existing = await self.client.get(resource_path(PLURAL, namespace, action.name))
                if not owned_by(existing, flywheel):  # a name this Flywheel must use is taken by someone else
                    raise ApiError(409, "AlreadyExists", f"FlywheelGeneration {action.name} exists and does not "
                                   f"belong to Flywheel {flywheel.metadata.name}: delete or rename it") from exc
                return  # created by an earlier pass: the precondition held
            if action.since_decision is not None:
                self.generations.metrics.flywheels.decision_to_start.labels(namespace).observe(
                    max(action.since_decision.total_seconds(), 0.0))
        else:
            try:
                await self.client.delete(resource_path(PLURAL, namespace, action.name))
            except ApiError as exc:
                if exc.status != 404:
                    raise

    async def _reject(self, body: dict[str, Any], errors: list[str], old_status: dict[str, Any]) -> None:
        meta = body["metadata"]
        status = FlywheelStatus.model_validate(old_status) if old_status else FlywheelStatus()
        status.phase, status.message = "Invalid", ("invalid spec: " + "; ".join(errors))[:500]
        new_status = status.to_wire()
        if new_status != old_status:
            await self.client.patch(resource_path(FLYWHEEL_PLURAL, meta["namespace"], meta["name"], "status"),
                                    {"status": merge_patch(old_status, new_status)})
            self.generations.post_event(body, Event("InvalidSpec", status.message or "invalid spec", "Warning"))

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        for table in (self.requeue_at, self._locks, self._wake):
            table.pop(key, None)
        self.generations.metrics.flywheels.forget(namespace, name)


def register_flywheels(registry: kopf.OperatorRegistry, reconciler: Reconciler, *, poll: float = 60.0,
                       without_finalizer: Any = None) -> FlywheelReconciler:
    """Add the Flywheel handlers to `registry` (kube/handlers.register calls this)."""
    flywheels = FlywheelReconciler(reconciler)
    resource = {"group": GROUP, "version": VERSION, "plural": FLYWHEEL_PLURAL, "registry": registry}

    async def reconcile_or_raise(namespace: str, name: str) -> None:
        try:
            await flywheels.reconcile(namespace, name)
        except InvalidSpec as exc:
            raise kopf.PermanentError(f"invalid Flywheel spec: {exc}") from exc
        except ApiError as exc:
            raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=1.0 if exc.transient else 30.0) from exc

    @kopf.on.create(**resource)
    async def _flywheel_created(namespace: str, name: str, **_: Any) -> None:
        await reconcile_or_raise(namespace, name)

    @kopf.on.resume(**resource)
    async def _flywheel_resumed(namespace: str, name: str, **_: Any) -> None:
        await reconcile_or_raise(namespace, name)

    @kopf.on.update(**resource, field="spec")
    async def _flywheel_updated(namespace: str, name: str, **_: Any) -> None:
        await reconcile_or_raise(namespace, name)

    @kopf.on.event(**resource)
    async def _flywheel_deleted(event: kopf.RawEvent, namespace: str, name: str, **_: Any) -> None:
        if event.get("type") == "DELETED":
            flywheels.forget(namespace, name)

    @kopf.daemon(**resource, cancellation_timeout=1.0)
    async def _turn(namespace: str, name: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        from flywheel_operator.kube.handlers import watch

        def finished(result: Any) -> bool:
            if result is None:
                flywheels.forget(namespace, name)
                return True
            return False

        await watch(
            f"Flywheel {namespace}/{name}", lambda: flywheels.reconcile(namespace, name),
            wake=flywheels.wake_event((namespace, name)), due=lambda: flywheels.requeue_at.get((namespace, name)),
            clock=reconciler.clock, stopped=stopped, poll=poll, finished=finished, invalid_delay=poll,
        )

    if without_finalizer is not None:
        without_finalizer(registry, _turn)

    phases: dict[Key, str] = {}

    @kopf.on.event(GROUP, VERSION, PLURAL, labels={FLYWHEEL_LABEL: kopf.PRESENT}, registry=registry)
    async def _generation_changed(body: kopf.Body, namespace: str, name: str, labels: kopf.Labels,
                                  **_: Any) -> None:
        phase = (body.get("status") or {}).get("phase") or "Pending"
        if phases.get((namespace, name)) == phase:
            return
        phases[(namespace, name)] = phase
        owner = labels[FLYWHEEL_LABEL]
        try:
            await flywheels.reconcile(namespace, owner)
        except InvalidSpec:
            pass  # the Flywheel's own handlers report it
        except ApiError as exc:
            log.warning("reconcile of Flywheel %s/%s after a generation event failed; its daemon retries: %s",
                        namespace, owner, exc)
            flywheels.requeue_at[(namespace, owner)] = reconciler.clock() + timedelta(seconds=1.0)
            flywheels.wake_event((namespace, owner)).set()
        if phase in TERMINAL_PHASES:
            phases.pop((namespace, name), None)

    return flywheels
