"""The chart's ClusterServingRuntime runs in a namespace labelled `pod-security.kubernetes.io/enforce: restricted`
(issue 24, item 8): the predictor container KServe builds from it meets the Pod Security Standards' restricted
profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/, Kubernetes 1.30), as PodSecurity
admission checks it, and KServe's ServingRuntime webhook admits it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.operator import kserve_webhook

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """PodSecurity admission's `restricted` checks of a pod spec, in its words (`check: detail`); [] = allowed."""
    spec = pod.get("spec") or {}
    pod_context = spec.get("securityContext") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    found = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(f"host namespaces: {key}=true")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            unsafe = sorted(kinds - RESTRICTED_VOLUMES)
            found.append(f"restricted volume types: volume {volume.get('name')!r} uses {unsafe}")
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    for container in containers:
        name = container.get("name")
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            found.append(f"privileged: container {name!r} must not set securityContext.privileged=true")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            found.append(f"hostPort: container {name!r} uses a hostPort")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"allowPrivilegeEscalation != false: container {name!r} must set "
                         "securityContext.allowPrivilegeEscalation=false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"unrestricted capabilities: container {name!r} must set securityContext.capabilities.drop="
                         "[\"ALL\"] and add at most NET_BIND_SERVICE")
        if set(capabilities.get("add") or []) - BASELINE_CAPABILITIES:
            found.append(f"capabilities: container {name!r} adds capabilities beyond the baseline")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"runAsNonRoot != true: pod or container {name!r} must set securityContext.runAsNonRoot=true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"runAsUser=0: container {name!r} must not run as user 0")
        seccomp = (context.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"seccompProfile: pod or container {name!r} must set securityContext.seccompProfile.type to "
                         "\"RuntimeDefault\" or \"Localhost\"")
    return found


KSERVE_API = ("--api-versions", "serving.kserve.io/v1alpha1/ClusterServingRuntime")
"""The chart renders its runtime only where KServe's API is served."""


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    from tests.chart.conftest import render

    (found,) = [d for d in render("helm3", None, *KSERVE_API) if d["kind"] == "ClusterServingRuntime"]
    return found


def predictor_pod(runtime: dict[str, Any]) -> dict[str, Any]:
    """The predictor pod KServe builds from the runtime (its containers, no pod-level security context) with the
    model volume KServe mounts for a pvc:// storageUri."""
    containers = copy.deepcopy(runtime["spec"]["containers"])
    for container in containers:
        container.setdefault("volumeMounts", []).append({"name": "kserve-pvc-source", "mountPath": "/mnt/pvc"})
    return {"spec": {"containers": containers, "volumes": [
        {"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": "flywheel-artifacts"}}]}}


def test_the_predictor_pod_meets_the_restricted_profile(runtime: dict[str, Any]) -> None:
    """At f9f8494 the container set no seccompProfile and a restricted namespace refused every predictor pod."""
    assert restricted_violations(predictor_pod(runtime)) == []
    assert kserve_webhook.serving_runtime(runtime, []) == []


def test_the_check_refuses_what_a_restricted_namespace_refuses(runtime: dict[str, Any]) -> None:
    pod = predictor_pod(runtime)
    del pod["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    assert restricted_violations(pod) == [
        "seccompProfile: pod or container 'kserve-container' must set securityContext.seccompProfile.type to "
        "\"RuntimeDefault\" or \"Localhost\""]
    pod["spec"]["securityContext"] = {"seccompProfile": {"type": "RuntimeDefault"}}  # a pod-level profile counts
    assert restricted_violations(pod) == []
    pod["spec"]["containers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    pod["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert [v.split(":")[0] for v in restricted_violations(pod)] == [
        "restricted volume types", "unrestricted capabilities", "capabilities"]
