"""Revert on delete: deleting a generation while its canary is live rolls the canary back (Flagger's
`revertOnDeletion`), so an ungated candidate never keeps serving its share of users.

A generation holds the finalizer `characterflywheel.io/revert-canary` only while its canary is live: it is added
before the candidate is put on the InferenceService and removed once the canary ends (promoted or rolled back). So
a generation without a live canary deletes at once, with or without a running operator (docs/operator.md,
"Deleting a generation"); one with a live canary waits for the operator to roll it back, as its users' arm must
end first. `kubectl patch fwg NAME --type=merge -p '{"metadata":{"finalizers":null}}'` releases it by hand when no
operator will run again (the canary then stays on the InferenceService).
"""

from __future__ import annotations

import logging
from typing import Any

from flywheel_operator.api import FlywheelGeneration, FlywheelGenerationSpec
from flywheel_operator.kube import canary
from flywheel_operator.kube.client import ApiError, KubeClient, resource_path
from flywheel_operator.planner import RollBackCanary

log = logging.getLogger(__name__)

FINALIZER = "characterflywheel.io/revert-canary"
LIVE = ("Deploying", "Ready")
"""Canary phases in which users may be on the candidate (Deploying: it may be on the InferenceService already)."""


def _meta(generation: FlywheelGeneration | dict[str, Any]) -> dict[str, Any]:
    if isinstance(generation, dict):
        return generation.get("metadata") or {}
    return generation.metadata.model_extra or {}  # finalizers, deletionTimestamp: kept as they came


def finalizers(generation: FlywheelGeneration | dict[str, Any]) -> list[str]:
    return list(_meta(generation).get("finalizers") or [])


def deleting(generation: FlywheelGeneration | dict[str, Any]) -> bool:
    return bool(_meta(generation).get("deletionTimestamp"))


def _path(namespace: str, name: str) -> str:
    return resource_path("flywheelgenerations", namespace, name)


async def hold(client: KubeClient, generation: FlywheelGeneration) -> bool:
    """Add the finalizer before the candidate goes on the InferenceService; False (and nothing added) when the
    generation is being deleted: no new canary then."""
    if deleting(generation):
        return False
    held = finalizers(generation)
    if FINALIZER not in held:
        namespace, name = generation.metadata.namespace or "", generation.metadata.name
        await client.patch(_path(namespace, name), {"metadata": {"finalizers": [*held, FINALIZER]}})
        (generation.metadata.model_extra or {})["finalizers"] = [*held, FINALIZER]
    return True


async def release(client: KubeClient, namespace: str, name: str) -> None:
    """Remove the finalizer (read fresh: other controllers' finalizers stay); nothing when it is not there."""
    try:
        body = await client.get(_path(namespace, name))
    except ApiError as exc:
        if exc.status == 404:
            return
        raise
    held = finalizers(body)
    if FINALIZER in held:
        rest = [f for f in held if f != FINALIZER]
        version = (body.get("metadata") or {}).get("resourceVersion")
        meta: dict[str, Any] = {"finalizers": rest or None}
        if version:
            meta["resourceVersion"] = version  # another writer in between: 409, and the caller retries
        await client.patch(_path(namespace, name), {"metadata": meta})


async def revert(client: KubeClient, body: dict[str, Any]) -> str | None:
    """A generation marked for deletion that holds the finalizer: roll back the canary it still carries, then
    release it. Returns what was done (for an Event), None when there was nothing to roll back."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta.get("name") or ""
    status = body.get("status") or {}
    live = status.get("canary") or {}
    spec = FlywheelGenerationSpec.model_validate(body.get("spec") or {})
    service = live.get("inferenceService") or spec.canary.inference_service
    done = None
    isvc = None
    if not live or live.get("phase") in LIVE:
        try:
            isvc = await client.get(resource_path("inferenceservices", namespace, service))
        except ApiError as exc:
            if exc.status != 404:
                raise
    control = live.get("controlPolicy") or status.get("policy")
    if isvc is not None and canary.holder(isvc) == name and control:
        action = RollBackCanary(inference_service=service, mode=live.get("mode") or spec.canary.mode,
                                control_policy=control)
        patch = canary.rollback_patch(action, storage=spec.resources.storage, serving=canary.serving_of(spec),
                                      isvc=isvc)
        await client.patch(resource_path("inferenceservices", namespace, service), patch)
        done = f"deleted while its canary was live: InferenceService {service} rolled back to {control}"
    elif isvc is not None and canary.holder(isvc) == name:
        log.warning("%s/%s: deleted with its canary on %s but no parent policy known; releasing only",
                    namespace, name, service)
    await release(client, namespace, name)
    return done
