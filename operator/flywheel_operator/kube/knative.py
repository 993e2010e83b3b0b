"""Knative mode: the candidate is the predictor's latest revision beside the parent's rolled-out one.

KServe splits `canaryTrafficPercent` between them only once a first revision has rolled out (before that the
latest revision takes 100 %), so a created InferenceService serves the parent alone until KServe reports
`latestRolledoutRevision`; only then does the candidate join. With `serving.kserve.io/enable-tag-routing` KServe
tags the two revisions `latest` and `prev`, and Knative gives each tag its own URL: those are the arms' endpoints.
The per-request split stays as a capacity hint for the main URL; sticky arms come from the endpoints.
"""

from __future__ import annotations

from typing import Any

from flywheel_operator.api import ServingResources, StorageSpec
from flywheel_operator.kube.canary import (
    HOLDER_ANNOTATION,
    annotations,
    condition,
    inference_service,
    model,
)
from flywheel_operator.planner import CanaryObservation, DeployCanary, PromoteCanary, RollBackCanary


def new_inference_service(
    action: DeployCanary, *, generation: str, namespace: str, storage: StorageSpec, serving: ServingResources
) -> dict[str, Any]:
    spec = {"predictor": {"model": model(action.control_policy, storage, serving)}}
    return inference_service(action, mode="knative", generation=generation, namespace=namespace, spec=spec)


def ready_for_candidate(isvc: dict[str, Any]) -> bool:
    """The parent's revision has rolled out: from now on a canary percentage splits instead of replacing it."""
    status = isvc.get("status") or {}
    component = (status.get("components") or {}).get("predictor") or {}
    reconciled = (isvc.get("metadata") or {}).get("generation") is None or (status.get("observedGeneration") or 0) >= (
        isvc.get("metadata") or {}
    ).get("generation", 0)
    return (
        reconciled
        and (condition(status, "Ready") or {}).get("status") == "True"
        and bool(component.get("latestRolledoutRevision"))
    )


def deploy_patch(action: DeployCanary, *, generation: str, storage: StorageSpec) -> dict[str, Any]:
    predictor = {"canaryTrafficPercent": action.traffic_percent, "model": model(action.candidate_policy, storage)}
    return {"metadata": {"annotations": annotations("knative", generation)}, "spec": {"predictor": predictor}}


def promote_patch(action: PromoteCanary, *, generation: str, storage: StorageSpec) -> dict[str, Any]:
    """All traffic to the latest revision (the candidate)."""
    release = {"annotations": {HOLDER_ANNOTATION: None}}
    return {"metadata": release, "spec": {"predictor": {"canaryTrafficPercent": None}}}


def rollback_patch(action: RollBackCanary, *, storage: StorageSpec | None = None) -> dict[str, Any]:
    """All traffic to the previous rolled-out revision (the parent), as KServe documents a rollback."""
    return {"metadata": {"annotations": {HOLDER_ANNOTATION: None}}, "spec": {"predictor": {"canaryTrafficPercent": 0}}}


def observe(isvc: dict[str, Any], *, generation: str, traffic_percent: int) -> CanaryObservation:
    status = isvc.get("status") or {}
    ready_condition = condition(status, "Ready") or {}
    component = (status.get("components") or {}).get("predictor") or {}
    traffic = component.get("traffic") or []
    latest = next((t for t in traffic if t.get("latestRevision")), {})
    previous = next((t for t in traffic if t.get("tag") == "prev"), {})
    revisions = {
        key: component[key]
        for key in ("latestCreatedRevision", "latestReadyRevision", "latestRolledoutRevision",
                    "previousRolledoutRevision")
        if component.get(key)
    }
    endpoints = {arm: t["url"] for arm, t in (("treatment", latest), ("control", previous)) if t.get("url")}
    serving = (
        ready_condition.get("status") == "True"
        and bool(component.get("latestCreatedRevision"))
        and component.get("latestCreatedRevision") == component.get("latestReadyRevision")
        and latest.get("percent") == traffic_percent
    )
    message = ready_condition.get("message") or None
    if serving and len(endpoints) < 2:
        message = "KServe reports no `latest`/`prev` tag URLs: is serving.kserve.io/enable-tag-routing honoured?"
    return CanaryObservation(
        ready=serving and len(endpoints) == 2,
        message=message,
        traffic_percent=latest.get("percent"),
        revisions=revisions,
        endpoints=endpoints,
    )
