"""Pure builders of the children of a FlywheelGeneration: the stage ConfigMap, Job and headless Service.

No I/O: each function takes the generation and the planner's StartStage and returns the JSON body to POST.
Every child carries an owner reference to the generation (garbage-collected with it) and the labels the
backend lists by. Pods meet the "restricted" Pod Security Standard.
"""

from __future__ import annotations

import json
from typing import Any

from flywheel_operator.api import API_VERSION, KIND, FlywheelGeneration, StageConfig, parse_duration
from flywheel_operator.api.deepspeed import DEEPSPEED_CONFIG_ENV, deepspeed_config
from flywheel_operator.api.models import PodOverrides, StageResources
from flywheel_operator.planner import StartStage
from flywheel_operator.planner.pipeline import PVC_MOUNT, stage_kind

GROUP_PREFIX = "characterflywheel.io"
GENERATION_LABEL = f"{GROUP_PREFIX}/generation"
STAGE_LABEL = f"{GROUP_PREFIX}/stage"
ATTEMPT_LABEL = f"{GROUP_PREFIX}/attempt"
CHILD_LABEL = f"{GROUP_PREFIX}/child"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

CONFIG_DIR = "/etc/flywheel"
CONFIG_FILE = f"{CONFIG_DIR}/stage.yaml"
DEEPSPEED_FILE = f"{CONFIG_DIR}/deepspeed.json"
CONTAINER = "stage"
TERMINATION_LOG = "/dev/termination-log"
RENDEZVOUS_PORT = 29500
FINISHED_JOB_TTL_SECONDS = 7 * 86400
"""Finished Jobs stay a week: long enough for the operator to read them after any outage."""
RUN_AS_USER = 1000
MULTI_NODE_STAGES = frozenset({"reward", "sft", "rl"})
"""Training stages; curate and eval run on one node."""

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
"""Stage pods never reach the Hub: models and data come from the artifact store (the result is reproducible)."""


def labels(generation: FlywheelGeneration, action: StartStage) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": "characterflywheel",
        "app.kubernetes.io/component": "stage",
        "app.kubernetes.io/managed-by": "characterflywheel-operator",
        GENERATION_LABEL: generation.metadata.name,
        STAGE_LABEL: action.stage,
        ATTEMPT_LABEL: str(action.attempt),
        CHILD_LABEL: action.child,
    }
    queue = generation.spec.resources.queue_name
    if queue:
        result[QUEUE_LABEL] = queue
    return result


def owner_reference(generation: FlywheelGeneration) -> dict[str, Any]:
    """Children are deleted with their generation; `controller` marks the operator as their manager."""
    if not generation.metadata.uid:
        raise ValueError(f"generation {generation.metadata.name} has no metadata.uid: read it from the API server")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": generation.metadata.name,
        "uid": generation.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(generation: FlywheelGeneration, action: StartStage, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": generation.metadata.namespace,
        "labels": labels(generation, action),
        "ownerReferences": [owner_reference(generation)],
    }


def uses_deepspeed(config: StageConfig) -> bool:
    return config.deepspeed_stage > 0 and config.stage in MULTI_NODE_STAGES


def config_map(generation: FlywheelGeneration, action: StartStage) -> dict[str, Any]:
    """The stage's config file (JSON is YAML) and, for training stages, the DeepSpeed config the trainer reads."""
    data = {"stage.yaml": json.dumps(action.config.to_wire(), indent=1, sort_keys=True)}
    if uses_deepspeed(action.config):
        data["deepspeed.json"] = json.dumps(deepspeed_config(action.config.deepspeed_stage), indent=1)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(generation, action, action.child),
            "data": data}


def stage_resources(generation: FlywheelGeneration, action: StartStage) -> StageResources:
    """The stage's resolved resources (`resources.stages.<kind>` over the shared block; curate on CPU)."""
    return generation.spec.resources.for_stage(stage_kind(action.stage))


def nodes_for(generation: FlywheelGeneration, action: StartStage) -> int:
    nodes = stage_resources(generation, action).nodes or 1
    return nodes if stage_kind(action.stage) in MULTI_NODE_STAGES else 1


def gpus_for(generation: FlywheelGeneration, action: StartStage) -> int:
    return stage_resources(generation, action).gpus_per_node or 0


def headless_service(generation: FlywheelGeneration, action: StartStage) -> dict[str, Any]:
    """Stable DNS names `<job>-<index>.<service>` for torchrun's rendezvous between the pods of an Indexed Job."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(generation, action, action.child),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {CHILD_LABEL: action.child},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def stage_command(stage: str, *, nodes: int, gpus: int) -> list[str]:
    """`flywheel-train STAGE --config FILE` (under torchrun when several processes train), then the result
    is copied to the termination message, where the operator reads it from the Pod status.

    Any rank's failure fails its pod (torchrun exits non-zero) and so the Job (backoffLimit 0); only node 0
    publishes the result (see kube/termination.py)."""
    program = ["flywheel-train", stage, "--config", CONFIG_FILE]
    if nodes > 1 or gpus > 1:
        program = ["torchrun", "--no-python", *program]  # PET_* variables carry the topology
    report = f"python -m flywheel_operator.kube.termination {CONFIG_FILE} {TERMINATION_LOG}"
    return ["sh", "-c", f'"$@" && exec {report}', "stage", *program]


def _env(generation: FlywheelGeneration, action: StartStage, nodes: int, gpus: int) -> list[dict[str, Any]]:
    env = [{"name": key, "value": value} for key, value in OFFLINE_ENV.items()]
    storage = generation.spec.resources.storage
    cache = f"{PVC_MOUNT}/.cache/huggingface" if storage.pvc else "/tmp/huggingface"
    env += [
        {"name": "HF_HOME", "value": cache},
        {"name": "FLYWHEEL_GENERATION", "value": generation.metadata.name},
        {"name": "FLYWHEEL_STAGE", "value": action.stage},
        {"name": "FLYWHEEL_ATTEMPT", "value": str(action.attempt)},
        {"name": "FLYWHEEL_OUTPUT_DIR", "value": action.config.output_dir},
    ]
    if storage.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": storage.endpoint_url})  # read by the storage seam
    if uses_deepspeed(action.config):
        env.append({"name": DEEPSPEED_CONFIG_ENV, "value": DEEPSPEED_FILE})
    if nodes == 1 and gpus > 1:
        # One pod: torchrun's standalone rendezvous on a free local port; no DNS name, no Service.
        env += [
            {"name": "PET_STANDALONE", "value": "1"},
            {"name": "PET_NPROC_PER_NODE", "value": str(gpus)},
        ]
    elif nodes > 1:
        # Several pods meet at index 0's stable name `<job>-0.<service>`, which the headless Service publishes.
        index = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}
        env += [
            {"name": "PET_NNODES", "value": str(nodes)},
            {"name": "PET_NPROC_PER_NODE", "value": str(max(gpus, 1))},
            {"name": "PET_MASTER_ADDR", "value": f"{action.child}-0.{action.child}"},
            {"name": "PET_MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
            {"name": "PET_NODE_RANK", "valueFrom": index},
        ]
    return env


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def job(generation: FlywheelGeneration, action: StartStage) -> dict[str, Any]:
    """The stage Job: one attempt (backoffLimit 0: the planner owns retries and their backoff).

    Resources and placement are the stage's own (`resources.stages.<kind>` over the shared block), with its pod
    overrides merged in: annotations, extra labels, priority class, affinity, extended resources, tolerations.
    """
    res = generation.spec.resources
    own = stage_resources(generation, action)
    overrides = own.pod_overrides or PodOverrides()
    nodes, gpus = nodes_for(generation, action), gpus_for(generation, action)
    requests: dict[str, str] = {"cpu": str(own.cpu), "memory": str(own.memory)}
    limits: dict[str, str] = {"memory": str(own.memory)}
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    for name, quantity in overrides.extra_resources.items():
        requests[name] = limits[name] = quantity  # extended resources must be requested as much as limited
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": action.child}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if res.storage.pvc:
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {"claimName": res.storage.pvc}})
        mounts.append({"name": "artifacts", "mountPath": PVC_MOUNT})
    pod_labels = {**overrides.labels, **labels(generation, action)}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # stage programs never call the Kubernetes API
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "fsGroupChangePolicy": "OnRootMismatch",  # no recursive chown of a large artifact volume per pod
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": res.image,
                "command": stage_command(stage_kind(action.stage), nodes=nodes, gpus=gpus),
                "env": _env(generation, action, nodes, gpus),
                **({"envFrom": [{"secretRef": {"name": res.storage.secret_ref}}]} if res.storage.secret_ref else {}),
                "resources": {"requests": requests, "limits": limits},
                "volumeMounts": mounts,
                "securityContext": restricted_container_security(),
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "File",
                **({"ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]} if nodes > 1 else {}),
            }
        ],
        "volumes": volumes,
    }
    if own.node_selector:
        pod_spec["nodeSelector"] = dict(own.node_selector)
    tolerations = [*(own.tolerations or []), *overrides.tolerations]
    if tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in tolerations]
    if overrides.affinity:
        pod_spec["affinity"] = overrides.affinity
    if overrides.priority_class_name:
        pod_spec["priorityClassName"] = overrides.priority_class_name
    if res.service_account_name:
        pod_spec["serviceAccountName"] = res.service_account_name
    if nodes > 1:
        pod_spec["subdomain"] = action.child
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": int(parse_duration(res.active_deadline).total_seconds()),
        "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
        "template": {"metadata": {"labels": pod_labels, **({"annotations": dict(overrides.annotations)}
                                                            if overrides.annotations else {})},
                     "spec": pod_spec},
    }
    if nodes > 1:
        spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
    if res.queue_name:
        spec["suspend"] = True  # Kueue admits it by unsuspending
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(generation, action, action.child),
            "spec": spec}


def children(generation: FlywheelGeneration, action: StartStage) -> list[tuple[str, dict[str, Any]]]:
    """(plural, body) of everything one StartStage creates, in creation order (the Job last)."""
    bodies = [("configmaps", config_map(generation, action))]
    if nodes_for(generation, action) > 1:
        bodies.append(("services", headless_service(generation, action)))
    bodies.append(("jobs", job(generation, action)))
    return bodies
