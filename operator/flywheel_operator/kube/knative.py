"""Knative mode: the candidate is the predictor's latest revision beside the parent's rolled-out one.

KServe splits `canaryTrafficPercent` between them only once a first revision has rolled out (before that the
latest revision takes 100 %), so a created InferenceService serves the parent alone until KServe reports
`latestRolledoutRevision`; only then does the candidate join. With `serving.kserve.io/enable-tag-routing` KServe
tags the two revisions `latest` and `prev`, and Knative gives each tag its own URL: those are the arms' endpoints.
The per-request split stays as a capacity hint for the main URL; sticky arms come from the endpoints.
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
    condition,
    inference_service,
    model,
    recorded_replicas,
)
from flywheel_operator.planner import CanaryObservation, DeployCanary, PromoteCanary, RollBackCanary


def new_inference_service(
    action: DeployCanary, *, generation: str, namespace: str, storage: StorageSpec, serving: ServingResources
) -> dict[str, Any]:
    """The parent alone: Knative scales every revision on its own load between the predictor's replicas, so the
    candidate's revision, once it joins, is sized by its own share of users."""
    predictor = {
        "minReplicas": serving.min_replicas,
        "maxReplicas": max(serving.min_replicas, serving.max_replicas),
        **account(serving),
        "model": model(action.control_policy, storage, serving),
    }
    spec = {"predictor": predictor}
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


def deploy_patch(
    action: DeployCanary,
    *,
    generation: str,
    storage: StorageSpec,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The candidate as the latest revision at its share; least replicas a rollback set to 0 come back."""
    predictor: dict[str, Any] = {
        "canaryTrafficPercent": action.traffic_percent,
        **account(serving),
        "model": model(action.candidate_policy, storage),
    }
    wanted = annotations("knative", generation)
    saved = recorded_replicas(isvc)
    if saved is not None:
        predictor["minReplicas"] = saved.get("minReplicas")
        wanted[STABLE_REPLICAS_ANNOTATION] = None
    return {"metadata": {"annotations": wanted}, "spec": {"predictor": predictor}}


def promote_patch(
    action: PromoteCanary,
    *,
    generation: str,
    storage: StorageSpec,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All traffic to the latest revision (the candidate)."""
    release = {"annotations": {HOLDER_ANNOTATION: None}}
    return {"metadata": release, "spec": {"predictor": {"canaryTrafficPercent": None}}}


def rollback_patch(
    action: RollBackCanary,
    *,
    storage: StorageSpec | None = None,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All traffic to the previous rolled-out revision (the parent) at once, and the rejected model off the
    predictor. `canaryTrafficPercent: 0` alone (KServe's documented rollback) keeps the candidate as the tagged
    latest revision: routable at 0 %, so Knative holds it at the predictor's least replicas, a GPU each. Here the
    parent's model goes back on the predictor with `minReplicas: 0`: its new revision becomes the latest, at 0 %
    and allowed to scale to zero, so the candidate's revision has no route left and Knative removes its pods; the
    parent keeps serving from its rolled-out revision (whose least replicas are its own). The predictor's
    `minReplicas` is saved in an annotation and comes back with the next candidate. Without `storage` only the
    traffic moves."""
    predictor: dict[str, Any] = {"canaryTrafficPercent": 0}
    metadata: dict[str, Any] = {"annotations": {HOLDER_ANNOTATION: None}}
    if storage is not None:
        current = ((isvc or {}).get("spec") or {}).get("predictor") or {}
        saved = recorded_replicas(isvc) or {"minReplicas": current.get("minReplicas")}
        predictor.update({"minReplicas": 0, **account(serving), "model": model(action.control_policy, storage)})
        metadata["annotations"][STABLE_REPLICAS_ANNOTATION] = json.dumps(saved, sort_keys=True)
    return {"metadata": metadata, "spec": {"predictor": predictor}}


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
