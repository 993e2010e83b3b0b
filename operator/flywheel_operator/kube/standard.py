"""Standard mode (KServe ≥ 0.20, `serving.kserve.io/deploymentMode: Standard`): the candidate is an entry of
`spec.canary[]` with its own predictor name, so KServe runs it as its own Deployment and Service
`<isvc>-<name>-predictor` beside the stable predictor's. Those two Services are the arms' endpoints: they exist with
stock KServe, whereas a weighted split needs its Gateway API integration and is per request anyway.

KServe runs the canary with fixed replicas (its webhook refuses autoscaling on a canary), ceil(stable minReplicas ×
share) unless told: the operator sizes it from the stable predictor's peak instead (`canary_replicas`) and raises
the stable predictor by as much, since KServe takes a ready canary's replicas out of the stable predictor's least
replicas; the stable predictor's own replicas are saved in an annotation and put back when the canary ends.
"""

from __future__ import annotations

import json
from typing import Any

from flywheel_operator.api import ServingResources, StorageSpec
from flywheel_operator.kube.canary import (
    HOLDER_ANNOTATION,
    STABLE_REPLICAS_ANNOTATION,
    account,
    annotations,
    canary_name,
    canary_replicas,
    condition,
    inference_service,
    model,
    recorded_replicas,
    replicas,
)
from flywheel_operator.planner import CanaryObservation, DeployCanary, PromoteCanary, RollBackCanary

CONTROL_PREDICTOR = "control"


def service_url(isvc: str, namespace: str, predictor: str | None) -> str:
    """The in-cluster URL of a predictor's Service (KServe's `PredictorServiceName`)."""
    name = f"{isvc}-{predictor}-predictor" if predictor else f"{isvc}-predictor"
    return f"http://{name}.{namespace}.svc.cluster.local"


def _canary_entry(
    action: DeployCanary, generation: str, storage: StorageSpec, count: int, serving: ServingResources | None
) -> dict[str, Any]:
    predictor = {
        "name": canary_name(generation),
        "minReplicas": count,
        **account(serving),
        "model": model(action.candidate_policy, storage, canary=True),
    }
    return {"trafficPercent": action.traffic_percent, "predictor": predictor}


def _sized(
    stable: dict[str, Any], saved: dict[str, Any] | None, traffic_percent: int
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """The canary's replicas, the stable predictor's raised replicas and its own (saved) ones. KServe refuses a
    canary with more least replicas than the stable predictor's and, once the canary is ready, takes them out of the
    stable predictor's: raising the stable predictor by the canary's count keeps its own capacity."""
    own = saved or {"minReplicas": stable.get("minReplicas"), "maxReplicas": stable.get("maxReplicas")}
    least, most = replicas(own)
    count = canary_replicas(least, most, traffic_percent)
    raised = {"minReplicas": least + count}
    if own.get("maxReplicas"):  # 0 or unset: no upper limit of its own to keep above the least
        raised["maxReplicas"] = max(most, least + count)
    return count, raised, own


def new_inference_service(
    action: DeployCanary, *, generation: str, namespace: str, storage: StorageSpec, serving: ServingResources
) -> dict[str, Any]:
    """The parent as the stable predictor `control` and the candidate as the canary (KServe gives it the stable
    predictor's resources and ServiceAccount)."""
    own = {"minReplicas": serving.min_replicas, "maxReplicas": max(serving.min_replicas, serving.max_replicas)}
    count, raised, own = _sized(own, None, action.traffic_percent)
    control = {
        "name": CONTROL_PREDICTOR,
        **raised,
        **account(serving),
        "model": model(action.control_policy, storage, serving),
    }
    spec = {"predictor": control, "canary": [_canary_entry(action, generation, storage, count, serving)]}
    body = inference_service(action, mode="standard", generation=generation, namespace=namespace, spec=spec)
    body["metadata"]["annotations"][STABLE_REPLICAS_ANNOTATION] = json.dumps(own, sort_keys=True)
    return body


def ready_for_candidate(isvc: dict[str, Any]) -> bool:
    return True  # the canary is a Deployment of its own: it takes traffic only once KServe reports it ready


def deploy_patch(
    action: DeployCanary,
    *,
    generation: str,
    storage: StorageSpec,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The candidate as the canary, sized from the stable predictor of `isvc` (saved replicas first: a retried
    patch must not raise them twice)."""
    stable = ((isvc or {}).get("spec") or {}).get("predictor") or {}
    count, raised, own = _sized(stable, recorded_replicas(isvc), action.traffic_percent)
    saved = {STABLE_REPLICAS_ANNOTATION: json.dumps(own, sort_keys=True)}
    return {
        "metadata": {"annotations": {**annotations("standard", generation), **saved}},
        "spec": {"predictor": raised, "canary": [_canary_entry(action, generation, storage, count, serving)]},
    }


def _release(isvc: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The annotations and the stable predictor's replicas that end a canary: the holder goes and the stable
    predictor gets its own replicas back (untouched when none were saved)."""
    own = recorded_replicas(isvc)
    metadata = {"annotations": {HOLDER_ANNOTATION: None, STABLE_REPLICAS_ANNOTATION: None}}
    restored = {} if own is None else {"minReplicas": own.get("minReplicas"), "maxReplicas": own.get("maxReplicas")}
    return metadata, restored


def promote_patch(
    action: PromoteCanary,
    *,
    generation: str,
    storage: StorageSpec,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The candidate becomes the stable predictor (a new name with a new model, as KServe's webhook requires), with
    the stable predictor's own replicas."""
    metadata, restored = _release(isvc)
    predictor = {
        "name": canary_name(generation),
        **restored,
        **account(serving),
        "model": model(action.candidate_policy, storage),
    }
    return {"metadata": metadata, "spec": {"predictor": predictor, "canary": None}}


def rollback_patch(
    action: RollBackCanary,
    *,
    storage: StorageSpec | None = None,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The canary entry goes (KServe deletes its Deployment and Service) and the stable predictor its raise."""
    metadata, restored = _release(isvc)
    spec: dict[str, Any] = {"canary": None}
    if restored:
        spec["predictor"] = restored
    return {"metadata": metadata, "spec": spec}


def observe(isvc: dict[str, Any], *, generation: str, traffic_percent: int) -> CanaryObservation:
    status = isvc.get("status") or {}
    meta = isvc.get("metadata") or {}
    name = canary_name(generation)
    entry = next((c for c in status.get("canaryStatuses") or [] if c.get("name") == name), None)
    canary_ready = condition(status, "CanaryReady") or {}
    if entry is None:
        return CanaryObservation(ready=False, message=canary_ready.get("message") or f"no canaryStatuses[{name}]")
    stable = ((isvc.get("spec") or {}).get("predictor") or {}).get("name") or ""
    namespace = meta.get("namespace") or ""
    return CanaryObservation(
        ready=bool(entry.get("ready")),
        message=canary_ready.get("message") or None,
        traffic_percent=entry.get("trafficPercent"),
        revisions={"predictor": stable, "canary": name},
        endpoints={
            "control": service_url(meta.get("name") or "", namespace, stable or None),
            "treatment": service_url(meta.get("name") or "", namespace, name),
        },
    )
