"""What the API server and KServe's webhooks check on a write, enforced by the emulator (tests/operator/cluster.py).

Every object the operator creates or patches is validated as the real cluster would: the merge patch is applied
to the stored object, KServe's defaulting webhook runs, then the result must match the pinned upstream schema
(core kinds: kubernetes-validate's schemas, strict; InferenceService: KServe's CRD `openAPIV3Schema`, pinned under
tests/schemas/, see its README) and pass KServe's validating webhook (tests/operator/kserve_webhook.py). A violation
is answered with 422 like the API server does, and recorded so the test fails.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

from tests.operator import kserve_webhook

SCHEMAS = Path(__file__).parent.parent / "schemas"
KUBERNETES_VERSION = "1.30"
NAMESPACE_POD_SECURITY = "restricted"
"""The emulated namespace's `pod-security.kubernetes.io/enforce` level: stage Jobs must meet it (job_admission.py)."""
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
CUSTOM_SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve-inferenceservice-v1beta1.schema.json.gz",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "kserve-clusterservingruntime-v1alpha1.schema.json.gz",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-servicemonitor-v1.schema.json.gz",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-operator-prometheusrule-v1.schema.json.gz",
}
"""Custom resources the operator writes or the chart installs, by (apiVersion, kind), and their pinned CRD schema."""


@functools.cache
def crd_schema(filename: str) -> jsonschema.protocols.Validator:
    with gzip.open(SCHEMAS / filename, "rt") as f:
        schema = json.load(f)
    return jsonschema.Draft7Validator(schema)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: what the API server stores after an `application/merge-patch+json` PATCH."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def schema_problems(obj: dict[str, Any]) -> list[str]:
    """Where `obj` breaks its kind's upstream schema ([] when it conforms)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CUSTOM_SCHEMAS:
        validator = crd_schema(CUSTOM_SCHEMAS[key])  # type: ignore[index]
        return [
            f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ] + list(unknown_fields(validator.schema, obj))
    validator = core_schema(str(obj.get("apiVersion")), str(obj.get("kind")))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


@functools.cache
def core_schema(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    """kubernetes-validate's strict schema of a core kind, built once (its `validate` rereads the files per call,
    which at hundreds of writes per test is most of the emulator's time)."""
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"kubernetes-json-schema/v{_schema_version()}-local-strict"
    schema = utils.schema_contents(f"{directory}/{kind.lower()}-{group}.json", KUBERNETES_VERSION)
    definitions = utils.schema_contents(f"{directory}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _schema_version() -> str:
    from kubernetes_validate import utils

    return [v for v in utils.all_versions() if utils.major_minor(v) <= KUBERNETES_VERSION][-1]


def unknown_fields(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[str]:
    """Fields a structural CRD schema does not declare: the API server drops them silently (or refuses them
    under `fieldValidation=Strict`, kubectl's default), so a misspelt field would never take effect."""
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, item in value.items():
            if key not in schema["properties"]:
                yield f"{path + '.' if path else ''}{key}: unknown field (not in the CRD schema)"
            else:
                yield from unknown_fields(schema["properties"][key], item, f"{path + '.' if path else ''}{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            yield from unknown_fields(schema["additionalProperties"], item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from unknown_fields(schema["items"], item, f"{path}.{index}")


def kserve_default(isvc: dict[str, Any], *, default_mode: str) -> dict[str, Any]:
    """KServe's mutating webhook (DefaultInferenceService): legacy mode names are normalised, and the annotation
    is added only when the cluster's default mode is Standard; a Knative-default cluster leaves it unset."""
    isvc = copy.deepcopy(isvc)
    annotations = isvc.setdefault("metadata", {}).get("annotations") or {}
    mode = annotations.get(DEPLOYMENT_MODE)
    if mode is not None:
        annotations[DEPLOYMENT_MODE] = {"RawDeployment": "Standard", "Serverless": "Knative"}.get(mode, mode)
    elif default_mode == "Standard":
        annotations[DEPLOYMENT_MODE] = "Standard"
    if annotations:
        isvc["metadata"]["annotations"] = annotations
    return isvc


def kserve_admission(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """KServe's validating webhook (pkg/apis/serving/v1beta1/inference_service_validation.go at the pinned commit):
    every rule that can apply to what the operator writes, with KServe's own message (tests/operator/kserve_webhook.py,
    table: tests/schemas/kserve-admission/conformance.yaml)."""
    return kserve_webhook.inference_service(new, old)


def check_write(
    obj: dict[str, Any], old: dict[str, Any] | None, *, default_mode: str = "Knative"
) -> tuple[dict[str, Any], list[str]]:
    """The object as stored after admission, and the problems that make the API server refuse it."""
    if obj.get("kind") == "InferenceService":
        obj = kserve_default(obj, default_mode=default_mode)
        problems = schema_problems(obj)
        return obj, problems or kserve_admission(obj, old)
    if obj.get("kind") == "Job" and old is None:  # the Job controller's create rules and the namespace's PSS level
        from tests.operator import job_admission

        template = (obj.get("spec") or {}).get("template") or {}
        return obj, schema_problems(obj) or [
            *job_admission.job_problems(obj),
            *job_admission.pod_security_problems(template.get("spec") or {}, NAMESPACE_POD_SECURITY,
                                                 (template.get("metadata") or {}).get("annotations")),
        ]
    return obj, schema_problems(obj)
