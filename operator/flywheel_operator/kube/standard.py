"""Standard mode (KServe ≥ 0.20, `serving.kserve.io/deploymentMode: Standard`): the candidate is an entry of
`spec.canary[]` with its own predictor name, so KServe runs it as its own Deployment and Service
`<isvc>-<name>-predictor` beside the stable predictor's. Those two Services are the arms' endpoints: they exist with
stock KServe, whereas a weighted split needs its Gateway API integration and is per request anyway.
"""

from __future__ import annotations

from typing import Any

from flywheel_operator.api import ServingResources, StorageSpec
from flywheel_operator.kube.canary import (
    HOLDER_ANNOTATION,
    annotations,
    canary_name,
    condition,
    inference_service,
    model,
)
from flywheel_operator.planner import CanaryObservation, DeployCanary, PromoteCanary, RollBackCanary

CONTROL_PREDICTOR = "control"


def service_url(isvc: str, namespace: str, predictor: str | None) -> str:
    """The in-cluster URL of a predictor's Service (KServe's `PredictorServiceName`)."""
    name = f"{isvc}-{predictor}-predictor" if predictor else f"{isvc}-predictor"
    return f"http://{name}.{namespace}.svc.cluster.local"


def _canary_entry(action: DeployCanary, generation: str, storage: StorageSpec) -> dict[str, Any]:
    predictor = {"name": canary_name(generation), "model": model(action.candidate_policy, storage)}
    return {"trafficPercent": action.traffic_percent, "predictor": predictor}


def new_inference_service(
    action: DeployCanary, *, generation: str, namespace: str, storage: StorageSpec, serving: ServingResources
) -> dict[str, Any]:
    """The parent as the stable predictor `control` and the candidate as the canary (KServe gives it the stable
    predictor's resources)."""
    control = {"name": CONTROL_PREDICTOR, "model": model(action.control_policy, storage, serving)}
    spec = {"predictor": control, "canary": [_canary_entry(action, generation, storage)]}
    return inference_service(action, mode="standard", generation=generation, namespace=namespace, spec=spec)


def ready_for_candidate(isvc: dict[str, Any]) -> bool:
    return True  # the canary is a Deployment of its own: it takes traffic only once KServe reports it ready


def deploy_patch(action: DeployCanary, *, generation: str, storage: StorageSpec) -> dict[str, Any]:
    return {
        "metadata": {"annotations": annotations("standard", generation)},
        "spec": {"canary": [_canary_entry(action, generation, storage)]},
    }


def promote_patch(action: PromoteCanary, *, generation: str, storage: StorageSpec) -> dict[str, Any]:
    """The candidate becomes the stable predictor (a new name with a new model, as KServe's webhook requires)."""
    predictor = {"name": canary_name(generation), "model": model(action.candidate_policy, storage)}
    return {"metadata": {"annotations": {HOLDER_ANNOTATION: None}}, "spec": {"predictor": predictor, "canary": None}}


def rollback_patch(action: RollBackCanary, *, storage: StorageSpec | None = None) -> dict[str, Any]:
    return {"metadata": {"annotations": {HOLDER_ANNOTATION: None}}, "spec": {"canary": None}}


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
