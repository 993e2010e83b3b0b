"""KServe's validating webhooks, restated from its Go sources at the pinned CRD's commit (github.com/kserve/kserve
aaac4e29; their error sites: tests/schemas/kserve-admission/kserve-webhook.messages.json) for the emulator
(tests/operator/upstream.py).

Each check runs in the order of the Go code and the first failure is returned with KServe's own message (its Go
format string, filled as Go's fmt would), so a test can compare the text a real cluster answers. Which upstream
error site is enforced here, and which cannot apply to what the operator writes, is listed in
tests/schemas/kserve-admission/conformance.yaml; tests/operator/test_kserve_conformance.py keeps the table, the
pinned inventory and these checks in step.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
KNATIVE_AUTOSCALER_CLASS = "autoscaling.knative.dev/class"
KNATIVE_HPA = "hpa.autoscaling.knative.dev"
ISVC_NAME_FORMAT = "[a-z]([-a-z0-9]*[a-z0-9])?"
ALLOWED_AUTOSCALER_CLASSES = ("hpa", "external", "keda", "none")
HPA_METRICS = ("cpu", "memory")
KPA_METRICS = ("concurrency", "rps")
BLOCKED_ENV_VARS = ("PYTHONPATH",)
LOGGER_MODES = ("all", "request", "response")
FRAMEWORKS = (
    "xgboost", "pytorch", "triton", "sklearn", "tensorflow", "onnx", "pmml", "lightgbm", "paddle", "huggingface",
    "model",
)
"""PredictorSpec.GetImplementations' order (predictor.go); a `kserve-container` in `containers` is a custom one."""
PREDICTOR_SPEC_FIELDS = (
    "Name, SKLearn, XGBoost, Tensorflow, PyTorch, Triton, ONNX, HuggingFace, PMML, LightGBM, Paddle, Model, "
    "StorageUris, StorageContainerName, WorkerSpec, PodSpec"
)
"""ExactlyOneErrorFor lists every PredictorSpec field but the last (ComponentExtensionSpec)."""


class Refused(Exception):
    """A webhook's answer: the message KServe returns."""


def go(fmt: str, *args: Any) -> str:
    """Go's fmt for the verbs KServe's messages use (%s %d %q %v %w)."""
    values = iter(args)

    def verb(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        value = next(values)
        return json.dumps(str(value)) if match.group(1) == "q" else str(value)

    return re.sub(r"%([sdqvw%])", verb, fmt)


def fail(fmt: str, *args: Any) -> None:
    raise Refused(go(fmt, *args))


# ------------------------------------------------------------------------ InferenceService (ValidateCreate/Update)
def inference_service(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """ValidateCreate (old None) or ValidateUpdate: [] when admitted, else [KServe's message]."""
    try:
        if old is not None:
            if (new.get("metadata") or {}).get("deletionTimestamp"):
                return []
            _deployment_mode(new, old)
            _predictor_name_change(new, old)
        _validate(new)
    except Refused as exc:
        return [str(exc)]
    return []


def _validate(isvc: dict[str, Any]) -> None:
    meta = isvc.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = isvc.get("spec") or {}
    predictor = spec.get("predictor") or {}
    name = meta.get("name") or ""
    if not re.fullmatch(ISVC_NAME_FORMAT, name):
        fail(
            "the InferenceService \"%s\" is invalid: a InferenceService name must consist of lower case "
            "alphanumeric characters or '-', and must start with alphabetical character. (e.g. \"my-name\" or "
            "\"abc-123\", regex used for validation is '%s')",
            name, ISVC_NAME_FORMAT,
        )
    if AUTOSCALER_CLASS in annotations and annotations[AUTOSCALER_CLASS] not in ALLOWED_AUTOSCALER_CLASSES:
        fail("[%s] is not a supported autoscaler class type", annotations[AUTOSCALER_CLASS])
    _blocked_env_vars(name, spec)
    for container in predictor.get("containers") or []:  # validateCollocationStorageURI
        if container.get("name") == "transformer-container":
            if any(env.get("name") == "STORAGE_URI" for env in container.get("env") or []):
                fail("storage uri should not be specified in transformer container")
            break
    # validatePredictor: a predictor implementation is a container spec whose name KServe sets itself
    for framework in FRAMEWORKS:
        if (predictor.get(framework) or {}).get("name"):
            fail("the 'name' field is not allowed in standard predictor")
    _multiple_storage_uris(spec)
    for component in ("predictor", "transformer", "explainer"):
        if component == "predictor" or spec.get(component) is not None:
            body = spec.get(component) or {}
            if component == "predictor":
                _exactly_one_implementation(body)
            _component_extension(body)
            _autoscaling_extension(annotations, body)
    _canaries(annotations, spec)


def _implementations(predictor: dict[str, Any]) -> list[str]:
    found = [f for f in FRAMEWORKS if predictor.get(f) is not None]
    containers = predictor.get("containers") or []
    found += ["custom" for c in containers if c.get("name") == "kserve-container"]
    if containers and not found:
        found.append("custom")
    return found


def _exactly_one_implementation(predictor: dict[str, Any]) -> None:
    if len(_implementations(predictor)) != 1:
        fail("exactly one of [%s] must be specified in %s", PREDICTOR_SPEC_FIELDS, "PredictorSpec")


def _storage_uri(predictor: dict[str, Any]) -> str | None:
    implementations = _implementations(predictor)
    if not implementations or implementations[0] == "custom":
        return None
    return (predictor.get(implementations[0]) or {}).get("storageUri")


def _blocked_env_vars(name: str, spec: dict[str, Any]) -> None:
    """validateBlockedEnvVars over the predictor's containers, init containers and framework container."""
    predictor = spec.get("predictor") or {}
    groups = [predictor.get("containers") or [], predictor.get("initContainers") or []]
    implementations = _implementations(predictor)
    if implementations and implementations[0] != "custom":
        groups.append([predictor[implementations[0]]])
    for component in ("transformer", "explainer"):
        body = spec.get(component) or {}
        groups += [body.get("containers") or [], body.get("initContainers") or []]
    for containers in groups:
        for container in containers:
            for env in container.get("env") or []:
                if env.get("name") in BLOCKED_ENV_VARS:
                    reason = go("setting %s in container %q is not allowed for security reasons", env["name"],
                                container.get("name") or "")
                    fail("the InferenceService %q is invalid: %w", name, reason)


def _multiple_storage_uris(spec: dict[str, Any]) -> None:
    predictor = spec.get("predictor") or {}
    if _storage_uri(predictor) is not None and predictor.get("storageUris") is not None:
        fail("Setting both StorageURI and StorageURIs is not supported.")


def _component_extension(body: dict[str, Any]) -> None:
    """ComponentExtensionSpec.Validate: containerConcurrency, replicas, logger (component.go)."""
    concurrency = body.get("containerConcurrency")
    if concurrency is not None and concurrency < 0:
        fail("parallelism cannot be less than 0")
    _replicas(body.get("minReplicas"), body.get("maxReplicas") or 0)
    logger = body.get("logger")
    if logger is not None:
        if logger.get("mode") not in LOGGER_MODES:
            fail("invalid logger type")
        storage = logger.get("storage")
        if storage is not None and (
            storage.get("path") is None or storage.get("parameters") is None or storage.get("storageKey") is None
        ):
            fail("invalid logger storage configuration")


def _replicas(minimum: int | None, maximum: int) -> None:
    minimum = 1 if minimum is None else minimum
    if minimum < 0:
        fail("'MinReplicas' cannot be less than 0")
    if maximum < 0:
        fail("'MaxReplicas' cannot be less than 0")
    if minimum > maximum and maximum != 0:
        fail("'MinReplicas' cannot be greater than MaxReplicas")


def _autoscaling_extension(annotations: dict[str, str], body: dict[str, Any]) -> None:
    """validateAutoScalingCompExtension: HPA rules in Standard mode with the hpa class, KPA rules in Knative mode
    (HPA rules there with Knative's hpa class). KEDA's rules are not restated (conformance.yaml)."""
    mode = annotations.get(DEPLOYMENT_MODE)
    if mode == "Standard":
        if annotations.get(AUTOSCALER_CLASS) == "hpa":
            _hpa(body)
    elif annotations.get(KNATIVE_AUTOSCALER_CLASS) == KNATIVE_HPA:
        _hpa(body)
    else:
        _kpa(body)


def _hpa(body: dict[str, Any]) -> None:
    metric = body.get("scaleMetric") or "cpu"
    if metric not in HPA_METRICS:
        fail("[%s] is not a supported metric", metric)
    target = body.get("scaleTarget")
    if target is not None:
        if (metric == "cpu" and target < 1) or target > 100:  # as Go groups it (a memory target > 100 too)
            fail("the target utilization percentage should be a [1-100] integer")
        if metric == "memory" and target < 1:
            fail("the target memory should be greater than 1 MiB")
    for spec in (body.get("autoScaling") or {}).get("metrics") or []:
        if spec.get("type") == "Resource":
            if spec.get("resource") is None:
                fail("metricSpec.Resource is not set for resource metric source type")
        else:
            fail("invalid HPA metric source type with value [%s],valid metric source types are Resource",
                 spec.get("type") or "")


def _kpa(body: dict[str, Any]) -> None:
    if body.get("deploymentStrategy") is not None:
        fail("customizing deploymentStrategy is only supported for raw deployment mode")
    metric = body.get("scaleMetric") or "concurrency"
    if metric not in KPA_METRICS:
        fail("[%s] is not a supported metric", metric)
    target = body.get("scaleTarget")
    if target is not None and metric == "rps" and target < 1:
        fail("the target for rps should be greater than 1")


def _canaries(annotations: dict[str, str], spec: dict[str, Any]) -> None:
    """validateCanarySpecs."""
    canaries = spec.get("canary") or []
    if not canaries:
        return
    if annotations.get(DEPLOYMENT_MODE) != "Standard":
        fail("canary is only supported in %s deployment mode", "Standard")
    stable = spec.get("predictor") or {}
    if _storage_uri(stable) is None and stable.get("model") is None:
        fail("canary requires a stable predictor with a model (multi-model serving is not supported with canary)")
    names: set[str] = set()
    total = 0
    for index, canary in enumerate(canaries):
        predictor = canary.get("predictor") or {}
        name = predictor.get("name") or ""
        if not name:
            fail("canary[%d] predictor.name is required", index)
        if name in names:
            fail("canary predictor.name %q is duplicated", name)
        names.add(name)
        if name == (stable.get("name") or ""):
            fail("canary predictor.name %q conflicts with stable predictor name", name)
        percent = canary.get("trafficPercent") or 0
        if percent < 0 or percent > 100:
            fail("canary %q trafficPercent must be between 0 and 100, got %d", name, percent)
        total += percent
        if len(_implementations(predictor)) != 1:
            reason = go("exactly one of [%s] must be specified in %s", PREDICTOR_SPEC_FIELDS, "PredictorSpec")
            fail("canary %q predictor: %w", name, reason)
        try:
            _component_extension(predictor)
        except Refused as exc:
            fail("canary %q predictor: %w", name, str(exc))
        if predictor.get("workerSpec") is not None:
            fail("canary %q must not set workerSpec (multi-node is not yet supported for canary)", name)
        if (predictor.get("maxReplicas") or 0) > 0:
            fail("canary %q must not set maxReplicas (canary uses fixed replicas)", name)
        for field in ("scaleTarget", "scaleMetric", "autoScaling"):
            if predictor.get(field) is not None:
                fail(f"canary %q must not set {field} (canary uses fixed replicas)", name)
        if predictor.get("minReplicas") is not None:
            stable_min = stable.get("minReplicas")
            stable_min = 1 if stable_min is None else stable_min
            if predictor["minReplicas"] > stable_min:
                fail("canary %q minReplicas (%d) must not exceed stable predictor minReplicas (%d)", name,
                     predictor["minReplicas"], stable_min)
    if total > 100:
        fail("sum of canary trafficPercent values (%d) must be <= 100", total)


def canary_replicas(isvc: dict[str, Any], canary: dict[str, Any]) -> int:
    """canaryReplicaCount (pkg/controller/.../components/predictor.go): what KServe runs the canary with."""
    predictor = canary.get("predictor") or {}
    if predictor.get("minReplicas") is not None:
        return int(predictor["minReplicas"])
    stable = ((isvc.get("spec") or {}).get("predictor") or {}).get("minReplicas")
    return math.ceil((1 if stable is None else stable) * (canary.get("trafficPercent") or 0) / 100)


def _deployment_mode(new: dict[str, Any], old: dict[str, Any]) -> None:
    recorded = (old.get("status") or {}).get("deploymentMode")
    if not recorded:
        return
    recorded = {"RawDeployment": "Standard", "Serverless": "Knative"}.get(recorded, recorded)
    annotations = (new.get("metadata") or {}).get("annotations") or {}
    if DEPLOYMENT_MODE in annotations and annotations[DEPLOYMENT_MODE] != recorded:
        fail("update rejected: deploymentMode cannot be changed from '%s' to '%s'", recorded,
             annotations[DEPLOYMENT_MODE])


def _predictor_name_change(new: dict[str, Any], old: dict[str, Any]) -> None:
    new_predictor = (new.get("spec") or {}).get("predictor") or {}
    old_predictor = (old.get("spec") or {}).get("predictor") or {}
    if (old_predictor.get("name") or "") == (new_predictor.get("name") or ""):
        return
    if (_storage_uri(old_predictor) or "") == (_storage_uri(new_predictor) or ""):
        fail("predictor.name change requires a model change (e.g. storageUri)")


# ------------------------------------------------------------------- (Cluster)ServingRuntime (servingruntime_webhook)
def serving_runtime(new: dict[str, Any], existing: list[dict[str, Any]]) -> list[str]:
    """The (Cluster)ServingRuntimeValidator's answer for `new` among the runtimes of its scope ([] = allowed)."""
    kind, name = new.get("kind") or "ClusterServingRuntime", (new.get("metadata") or {}).get("name") or ""
    spec = new.get("spec") or {}
    if spec.get("disabled"):
        return []
    try:
        previous: dict[str, Any] = {}
        for other in existing:
            other_name = (other.get("metadata") or {}).get("name") or ""
            _priority_same(spec, kind, name)
            _priority(spec, other.get("spec") or {}, other_name, name, kind, new)
            if other_name == name:
                previous = other.get("spec") or {}
        if previous.get("workerSpec") is not None and spec.get("workerSpec") is None:
            fail("the %s %s is invalid: %s", kind, name, "removing workerSpec where it already exists is not allowed")
        for container in spec.get("containers") or []:
            for env in container.get("env") or []:
                if env.get("name") in BLOCKED_ENV_VARS:
                    reason = go("setting %s in container %q is not allowed for security reasons", env["name"],
                                container.get("name") or "")
                    fail("the %s %q is invalid: %s", kind, name, reason)
    except Refused as exc:
        return [str(exc)]
    return []


def _auto_select(model_format: dict[str, Any]) -> bool:
    return bool(model_format.get("autoSelect"))


def _priority_same(spec: dict[str, Any], kind: str, name: str) -> None:
    seen: dict[str, Any] = {}
    for model_format in spec.get("supportedModelFormats") or []:
        if not _auto_select(model_format):
            continue
        format_name = model_format.get("name")
        if format_name in seen:
            if seen[format_name] is not None and model_format.get("priority") is not None and (
                seen[format_name] != model_format["priority"]
            ):
                reason = go("different priorities assigned for the model format %s", format_name)
                where = "%s under the servingruntime %s" if kind == "ServingRuntime" else (
                    "%s under the clusterservingruntime %s")
                fail(where, reason, name)
        else:
            seen[format_name] = model_format.get("priority")


def _priority(spec: dict[str, Any], other: dict[str, Any], other_name: str, name: str, kind: str,
              new: dict[str, Any]) -> None:
    if bool(spec.get("multiModel")) != bool(other.get("multiModel")) or other.get("disabled") or other_name == name:
        return
    if not set(spec.get("protocolVersions") or []) & set(other.get("protocolVersions") or []):
        return
    for theirs in other.get("supportedModelFormats") or []:
        for ours in spec.get("supportedModelFormats") or []:
            same = (theirs.get("name") or "").lower() == (ours.get("name") or "").lower() and theirs.get(
                "version") == ours.get("version")
            if _auto_select(theirs) and _auto_select(ours) and same and theirs.get("priority") is not None and (
                theirs.get("priority") == ours.get("priority")
            ):
                reason = go("same priority assigned for the model format %s", ours.get("name"))
                if kind == "ServingRuntime":
                    fail("%s in the servingruntimes %s and %s in namespace %s", reason, other_name, name,
                         (new.get("metadata") or {}).get("namespace") or "")
                fail("%s in the clusterservingruntimes %s and %s", reason, other_name, name)
