"""KServe canaries in both deployment modes, built with the kserve SDK's models (pure: bodies in, bodies out).

- Knative: the candidate becomes the predictor's model with `canaryTrafficPercent: P`; KServe splits traffic
  between the latest revision and the previous rolled-out one (tag `prev`). Promote removes the percentage
  (100 % to the latest), roll back sets it to 0 (all traffic to `prev`).
- Standard (KServe ≥ 0.20): the candidate is an entry of `spec.canary[]` with its own predictor name; promote
  retargets `spec.predictor` to it and removes the entry, roll back removes the entry.

The InferenceService serves production, so it is never owned by a generation; a missing one is created
serving the parent, with the canary.
"""

from __future__ import annotations

from typing import Any

from kserve import (
    V1beta1CanarySpec,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
)
from kubernetes.client import ApiClient, V1ObjectMeta

from flywheel_operator import storage as storage_seam
from flywheel_operator.api import StorageSpec, names
from flywheel_operator.planner import CanaryObservation, DeployCanary, PromoteCanary, RollBackCanary

KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
MODEL_FORMAT = "huggingface"
CONTROL_PREDICTOR = "control"

_SERIALIZER = ApiClient()


def to_json(model: Any) -> Any:
    """A kserve/kubernetes model as the API server's camelCase JSON, without Nones and without the empty
    strings the generated models default to (V1beta1ModelSpec.name is the container name, empty means unset)."""
    return _drop_empty(_SERIALIZER.sanitize_for_serialization(model))


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_empty(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


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


def model(policy: str, storage: StorageSpec) -> V1beta1ModelSpec:
    model_format = V1beta1ModelFormat(name=MODEL_FORMAT)
    return V1beta1ModelSpec(model_format=model_format, storage_uri=storage_uri(policy, storage))


def new_inference_service(
    action: DeployCanary, *, generation: str, namespace: str, storage: StorageSpec
) -> dict[str, Any]:
    """The whole InferenceService when none exists yet: the parent serves, the candidate is the canary."""
    control = V1beta1PredictorSpec(model=model(action.control_policy, storage))
    spec = V1beta1InferenceServiceSpec(predictor=control)
    if action.mode == "standard":
        control.name = CONTROL_PREDICTOR
        spec.canary = [_standard_canary(action, generation, storage)]
    isvc = V1beta1InferenceService(
        api_version=KSERVE_API_VERSION,
        kind="InferenceService",
        metadata=V1ObjectMeta(name=action.inference_service, namespace=namespace),
        spec=spec,
    )
    return to_json(isvc)


def _standard_canary(action: DeployCanary, generation: str, storage: StorageSpec) -> V1beta1CanarySpec:
    predictor = V1beta1PredictorSpec(name=canary_name(generation), model=model(action.candidate_policy, storage))
    return V1beta1CanarySpec(traffic_percent=action.traffic_percent, predictor=predictor)


def deploy_patch(action: DeployCanary, *, generation: str, storage: StorageSpec) -> dict[str, Any]:
    """Merge patch that adds the candidate as the canary of an existing InferenceService."""
    if action.mode == "knative":
        predictor = V1beta1PredictorSpec(
            canary_traffic_percent=action.traffic_percent, model=model(action.candidate_policy, storage)
        )
        return {"spec": {"predictor": to_json(predictor)}}
    return {"spec": {"canary": [to_json(_standard_canary(action, generation, storage))]}}


def promote_patch(action: PromoteCanary, *, generation: str, storage: StorageSpec) -> dict[str, Any]:
    """Merge patch that sends all traffic to the candidate."""
    if action.mode == "knative":
        return {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    candidate = model(action.candidate_policy, storage)
    predictor = to_json(V1beta1PredictorSpec(name=canary_name(generation), model=candidate))
    return {"spec": {"predictor": predictor, "canary": None}}


def rollback_patch(action: RollBackCanary) -> dict[str, Any]:
    """Merge patch that sends all traffic back to the parent."""
    if action.mode == "knative":
        return {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    return {"spec": {"canary": None}}


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def observe(isvc: dict[str, Any] | None, *, mode: str, generation: str, traffic_percent: int) -> CanaryObservation:
    """Is the canary serving its share? Reads the InferenceService status as KServe writes it in each mode."""
    if isvc is None:
        return CanaryObservation(ready=False, message="the InferenceService does not exist (yet)")
    status = isvc.get("status") or {}
    meta_generation = (isvc.get("metadata") or {}).get("generation")
    observed_generation = status.get("observedGeneration")
    if meta_generation is not None and observed_generation is not None and observed_generation < meta_generation:
        return CanaryObservation(ready=False, message="KServe has not reconciled the latest spec yet")
    ready_condition = _condition(status, "Ready") or {}
    if mode == "standard":
        name = canary_name(generation)
        entry = next((c for c in status.get("canaryStatuses") or [] if c.get("name") == name), None)
        canary_ready = _condition(status, "CanaryReady") or {}
        if entry is None:
            return CanaryObservation(ready=False, message=canary_ready.get("message") or f"no canaryStatuses[{name}]")
        predictor = ((isvc.get("spec") or {}).get("predictor") or {}).get("name") or ""
        return CanaryObservation(
            ready=bool(entry.get("ready")),
            message=canary_ready.get("message") or None,
            traffic_percent=entry.get("trafficPercent"),
            revisions={"predictor": predictor, "canary": name},
        )
    component = (status.get("components") or {}).get("predictor") or {}
    latest = next((t for t in component.get("traffic") or [] if t.get("latestRevision")), {})
    revisions = {
        key: component[key]
        for key in ("latestCreatedRevision", "latestReadyRevision", "latestRolledoutRevision",
                    "previousRolledoutRevision")
        if component.get(key)
    }
    ready = (
        ready_condition.get("status") == "True"
        and bool(component.get("latestCreatedRevision"))
        and component.get("latestCreatedRevision") == component.get("latestReadyRevision")
        and latest.get("percent") == traffic_percent
    )
    return CanaryObservation(
        ready=ready,
        message=ready_condition.get("message") or None,
        traffic_percent=latest.get("percent"),
        revisions=revisions,
    )
