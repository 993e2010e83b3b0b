"""KServe canaries: what both deployment modes share (the model, its storage, the deployment-mode annotation, which
generation holds the InferenceService) and the dispatch to the module of each mode (pure: bodies in, bodies out).

- `kube/knative.py`: the candidate becomes the predictor's latest revision, reached through its `latest` tag URL,
  the parent through `prev` (Knative tag routing).
- `kube/standard.py`: the candidate is an entry of `spec.canary[]`, reached through its own predictor Service.

Either way each arm has its own endpoint, published with the salt in `status.canary.routing`, and the chat backend
sends each user to their arm's endpoint by the salted hash of `flywheel_operator.arms`: arms are sticky per user
whatever KServe's per-request split does (docs/install.md, "Sticky arms").

The InferenceService serves production, so it is never owned by a generation; a missing one is created serving
the parent. Its `characterflywheel.io/canary-of` annotation names the generation whose canary it carries, so a
second generation waits instead of overwriting it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from kubernetes.client import ApiClient

from flywheel_operator import storage as storage_seam
from flywheel_operator.api import FlywheelGenerationSpec, ServingResources, StorageSpec, names
from flywheel_operator.planner import CanaryObservation, DeployCanary, PromoteCanary, RollBackCanary

KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
RUNTIME = "characterflywheel-chat"
"""The runtime's name when FLYWHEEL_SERVING_RUNTIME is unset: the trainer image's ChatPredictor (KServe v1 protocol)."""
RUNTIME_ENV = "FLYWHEEL_SERVING_RUNTIME"
"""Set by the chart to the (Cluster)ServingRuntime it installs, named per release (`<fullname>-chat`)."""
MODEL_FORMAT = "characterflywheel-chat"
CONTAINER = "kserve-container"
"""KServe's predictor container name. Its CRD requires `model.name` on a `spec.canary[]` entry, and its validating
webhook refuses any `name` on `spec.predictor.model` ("the 'name' field is not allowed in standard predictor"):
only a canary's model carries it."""
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
DEPLOYMENT_MODES = {"knative": "Knative", "standard": "Standard"}
HOLDER_ANNOTATION = "characterflywheel.io/canary-of"
"""The generation whose canary the InferenceService carries (absent when none)."""
STABLE_REPLICAS_ANNOTATION = "characterflywheel.io/stable-replicas"
"""Standard mode: the stable predictor's own `minReplicas`/`maxReplicas` (JSON) while a canary runs beside it; the
operator raises them by the canary's replicas (KServe takes a ready canary's replicas out of the stable predictor's
least replicas) and puts them back when the canary ends."""

_SERIALIZER = ApiClient()


def to_json(model: Any) -> Any:
    """A kserve/kubernetes model as the API server's camelCase JSON, without Nones."""
    return _SERIALIZER.sanitize_for_serialization(model)


def canary_name(generation: str) -> str:
    """The canary's predictor name in standard mode (Deployment `<isvc>-<name>-predictor`; its length is checked
    by the API, api/names.py)."""
    return names.canary_predictor_name(generation)


def storage_uri(policy: str, storage: StorageSpec) -> str:
    """Where KServe loads a policy from: object-store and pvc:// URIs stay, a path under the artifact PVC becomes
    `pvc://<claim>/<path>`, a bare name is a Hugging Face model id (`hf://`)."""
    if storage_seam.scheme(policy) or policy.startswith("/"):
        # a path outside the artifact store stays as it is: KServe reports it and the canary never becomes Ready
        return storage_seam.serving_uri(policy, storage.pvc)
    return f"hf://{policy}"


def model(
    policy: str, storage: StorageSpec, serving: ServingResources | None = None, *, canary: bool = False
) -> dict[str, Any]:
    """The predictor's model: the chart's ChatPredictor runtime loading `policy`; with `serving`, its resources.
    Only a `spec.canary[]` entry's model is named (`canary=True`), as KServe's CRD and webhook each require."""
    # Plain JSON (the InferenceService's camelCase keys): the operator image carries no kserve package.
    spec: dict[str, Any] = {
        **({"name": CONTAINER} if canary else {}),
        "modelFormat": {"name": MODEL_FORMAT},
        "runtime": os.environ.get(RUNTIME_ENV) or RUNTIME,
        "storageUri": storage_uri(policy, storage),
    }
    if serving is not None:
        requests = {"cpu": serving.cpu, "memory": serving.memory}
        limits: dict[str, Any] = {"memory": serving.memory}
        if serving.gpus:
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(serving.gpus)
        spec["resources"] = {"requests": requests, "limits": limits}
    return spec


def serving_of(spec: FlywheelGenerationSpec) -> ServingResources:
    """`spec.canary.serving` with its ServiceAccount resolved (unset: the stages' `resources.serviceAccountName`)."""
    serving = spec.canary.serving
    account = serving.service_account_name or spec.resources.service_account_name
    return serving.model_copy(update={"service_account_name": account})


def account(serving: ServingResources | None) -> dict[str, str]:
    """The predictor's `serviceAccountName` (KServe's storage initializer fetches the model with its credentials)."""
    return {"serviceAccountName": serving.service_account_name} if serving and serving.service_account_name else {}


def replicas(predictor: dict[str, Any]) -> tuple[int, int]:
    """A predictor's least and most replicas as KServe reads them (minReplicas unset: 1; maxReplicas unset or 0:
    the least)."""
    least = predictor.get("minReplicas")
    least = 1 if least is None else int(least)
    return least, max(least, int(predictor.get("maxReplicas") or 0))


def canary_replicas(stable_min: int, stable_max: int, traffic_percent: int) -> int:
    """Replicas of a Standard-mode canary: the stable predictor's peak scaled to the canary's share of users (the
    chat backend sends each arm its share whatever the load), at least one. KServe's own default,
    ceil(stable minReplicas × share), sizes it for the quietest hour instead."""
    return max(1, math.ceil(max(stable_min, stable_max) * traffic_percent / 100))


def recorded_replicas(isvc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stable predictor's own replicas saved while a canary runs (None: none saved)."""
    text = (((isvc or {}).get("metadata") or {}).get("annotations") or {}).get(STABLE_REPLICAS_ANNOTATION)
    return json.loads(text) if text else None


def inference_service(
    action: DeployCanary, *, mode: str, generation: str, namespace: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """A new InferenceService named by the action, carrying the mode's annotations and the holder."""
    return {
        "apiVersion": KSERVE_API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": action.inference_service,
            "namespace": namespace,
            "annotations": annotations(mode, generation),
        },
        "spec": spec,
    }


def annotations(mode: str, generation: str | None) -> dict[str, str | None]:
    """The deployment mode KServe's webhook needs (a canary is refused without `Standard`), tag routing for
    Knative's per-arm URLs, and the holder (None removes it in a merge patch)."""
    wanted: dict[str, str | None] = {DEPLOYMENT_MODE_ANNOTATION: DEPLOYMENT_MODES[mode], HOLDER_ANNOTATION: generation}
    if mode == "knative":
        wanted["serving.kserve.io/enable-tag-routing"] = "true"
    return wanted


def carries(isvc: dict[str, Any], mode: str, generation: str) -> bool:
    """Has the candidate of `generation` been put on `isvc` (held by it, canary requested)?"""
    spec = isvc.get("spec") or {}
    if holder(isvc) != generation:
        return False
    if mode == "knative":
        return (spec.get("predictor") or {}).get("canaryTrafficPercent") is not None
    return any((c.get("predictor") or {}).get("name") == canary_name(generation) for c in spec.get("canary") or [])


def holder(isvc: dict[str, Any] | None) -> str | None:
    """The generation whose canary `isvc` carries."""
    return (((isvc or {}).get("metadata") or {}).get("annotations") or {}).get(HOLDER_ANNOTATION) or None


def _mode(mode: str) -> Any:
    from flywheel_operator.kube import knative, standard

    return knative if mode == "knative" else standard


def new_inference_service(
    action: DeployCanary, *, generation: str, namespace: str, storage: StorageSpec, serving: ServingResources
) -> dict[str, Any]:
    """The whole InferenceService when none exists yet, serving the parent (Knative: the candidate joins later,
    once the parent's revision has rolled out; Standard: the candidate is the canary from the start)."""
    return _mode(action.mode).new_inference_service(
        action, generation=generation, namespace=namespace, storage=storage, serving=serving
    )


def ready_for_candidate(isvc: dict[str, Any], mode: str) -> bool:
    """May the candidate be added now? Knative splits only after a first revision has rolled out."""
    return _mode(mode).ready_for_candidate(isvc)


def deploy_patch(
    action: DeployCanary,
    *,
    generation: str,
    storage: StorageSpec,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge patch that adds the candidate as the canary of the existing InferenceService `isvc` (its stable
    predictor sizes a Standard-mode canary; `serving` gives the predictor's ServiceAccount)."""
    return _mode(action.mode).deploy_patch(action, generation=generation, storage=storage, serving=serving, isvc=isvc)


def promote_patch(
    action: PromoteCanary,
    *,
    generation: str,
    storage: StorageSpec,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge patch that sends all traffic to the candidate and releases the InferenceService."""
    return _mode(action.mode).promote_patch(action, generation=generation, storage=storage, serving=serving, isvc=isvc)


def rollback_patch(
    action: RollBackCanary,
    *,
    storage: StorageSpec | None = None,
    serving: ServingResources | None = None,
    isvc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge patch that sends all traffic back to the parent, removes the candidate's model and releases the
    InferenceService."""
    return _mode(action.mode).rollback_patch(action, storage=storage, serving=serving, isvc=isvc)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def observe(isvc: dict[str, Any] | None, *, mode: str, generation: str, traffic_percent: int) -> CanaryObservation:
    """Is the canary serving its share, and at which endpoint is each arm? Read from KServe's status."""
    if isvc is None:
        return CanaryObservation(ready=False, message="the InferenceService does not exist (yet)")
    status = isvc.get("status") or {}
    meta_generation = (isvc.get("metadata") or {}).get("generation")
    observed_generation = status.get("observedGeneration")
    if meta_generation is not None and observed_generation is not None and observed_generation < meta_generation:
        return CanaryObservation(ready=False, message="KServe has not reconciled the latest spec yet")
    return _mode(mode).observe(isvc, generation=generation, traffic_percent=traffic_percent)
