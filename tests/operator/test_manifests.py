"""Pure builders of the stage children: validated against the Kubernetes 1.30 schemas, field by field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kubernetes_validate
import pytest
import yaml
from flywheel_operator.api import StageConfig
from flywheel_operator.api.deepspeed import deepspeed_config
from flywheel_operator.kube import manifests
from flywheel_operator.planner import Observed, StartStage, plan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.planner.harness import generation


def start(stage: str = "curate", **spec: Any) -> tuple[Any, StartStage]:
    gen = generation(**spec)
    gen.metadata.namespace = "ml"
    first = plan(gen, Observed(now=datetime(2026, 11, 23, tzinfo=UTC))).actions[0]
    assert isinstance(first, StartStage)
    kind = "reward" if stage.startswith("reward-") else stage
    config = first.config.model_copy(update={"stage": kind, "name": stage, "output_dir": f"/artifacts/gen2/{stage}"})
    return gen, StartStage(stage=stage, child=f"gen2-{stage}-1", attempt=1, config=config)


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


def test_single_node_job() -> None:
    gen, action = start("sft", resources={"gpusPerNode": 1, "nodeSelector": {"gpu": "h100"},
                                          "serviceAccountName": "trainer", "activeDeadline": "2h",
                                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                           "effect": "NoSchedule"}]})
    job = manifests.job(gen, action)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert job["metadata"]["name"] == "gen2-sft-1" and job["metadata"]["namespace"] == "ml"
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 7200
    assert spec["podFailurePolicy"] == manifests.pod_failure_policy()
    assert spec["ttlSecondsAfterFinished"] == manifests.FINISHED_JOB_TTL_SECONDS
    assert "completionMode" not in spec and "suspend" not in spec
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["serviceAccountName"] == "trainer"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["restartPolicy"] == "Never" and "subdomain" not in pod
    c = container(job)
    assert c["image"] == gen.spec.resources.image
    assert c["command"] == ["flywheel-train", "sft", "--config", "/etc/flywheel/stage.yaml"]  # exec'd: PID 1
    assert "torchrun" not in c["command"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "flywheel-artifacts"}} in pod["volumes"]
    values = env(job)
    assert "HF_HUB_OFFLINE" not in values and "TRANSFORMERS_OFFLINE" not in values  # a cluster pod is online
    assert values["HF_HOME"] == "/artifacts/.cache/huggingface" and values["TMPDIR"] == "/scratch"
    assert values["DEEPSPEED_CONFIG"] == manifests.DEEPSPEED_FILE
    assert "PET_NNODES" not in values


def test_restricted_pod_security() -> None:
    gen, action = start("rl")
    pod = manifests.job(gen, action)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                  "seccompProfile": {"type": "RuntimeDefault"}}
    allowed = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected", "downwardAPI", "ephemeral",
               "csi", "name"}
    assert all(set(v) <= allowed for v in pod["volumes"])


def test_multi_node_indexed_job_with_rendezvous_service() -> None:
    gen, action = start("rl", resources={"nodes": 4, "gpusPerNode": 8})
    bodies = dict(manifests.children(gen, action))
    job, service = bodies["jobs"], bodies["services"]
    assert [p for p, _ in manifests.children(gen, action)] == ["configmaps", "services", "jobs"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"] == "gen2-rl-1"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {manifests.CHILD_LABEL: "gen2-rl-1"}
    values = env(job)
    assert values["PET_NNODES"] == "4" and values["PET_NPROC_PER_NODE"] == "8"
    assert values["PET_MASTER_ADDR"] == "gen2-rl-1-0.gen2-rl-1"
    assert values["PET_NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert container(job)["command"][:3] == ["torchrun", "--no-python", "flywheel-train"]


def test_one_node_with_several_gpus_rendezvous_locally_without_a_service() -> None:
    """One pod: torchrun's standalone rendezvous; a `<job>-0.<job>` name would not resolve without a Service."""
    gen, action = start("eval", resources={"nodes": 1, "gpusPerNode": 4})
    bodies = dict(manifests.children(gen, action))
    assert "services" not in bodies
    job = bodies["jobs"]
    values = env(job)
    assert values["PET_STANDALONE"] == "1" and values["PET_NPROC_PER_NODE"] == "4"
    assert not {"PET_MASTER_ADDR", "PET_NNODES", "PET_NODE_RANK"} & set(values)
    assert "subdomain" not in job["spec"]["template"]["spec"]
    assert container(job)["command"][:3] == ["torchrun", "--no-python", "flywheel-train"]


def test_curate_and_eval_stay_single_node_and_curate_needs_no_gpu() -> None:
    gen, curate = start("curate", resources={"nodes": 4, "gpusPerNode": 8})
    job = manifests.job(gen, curate)
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]
    assert [p for p, _ in manifests.children(gen, curate)] == ["configmaps", "jobs"]
    gen, evaluation = start("eval", resources={"nodes": 4, "gpusPerNode": 8})
    assert manifests.nodes_for(gen, evaluation) == 1


GPU_PLACEMENT: dict[str, Any] = {
    "gpusPerNode": 8, "nodes": 4, "cpu": "64", "memory": "900Gi",
    "nodeSelector": {"nvidia.com/gpu.product": "H100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "podOverrides": {"extraResources": {"rdma/ib": "1"}, "priorityClassName": "training",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "ib-sriov"}},
}


def test_curate_runs_as_a_modest_cpu_pod_off_the_gpu_nodes() -> None:
    gen, curate = start("curate", resources=GPU_PLACEMENT)
    job = manifests.job(gen, curate)
    pod = job["spec"]["template"]["spec"]
    assert container(job)["resources"] == {"requests": {"cpu": "4", "memory": "32Gi", "ephemeral-storage": "16Gi"},
                                           "limits": {"memory": "32Gi"}}
    assert not {"nodeSelector", "tolerations", "priorityClassName", "affinity"} & set(pod)
    assert "annotations" not in job["spec"]["template"]["metadata"]
    gen, curate = start("curate", resources={**GPU_PLACEMENT, "stages": {"curate": {"cpu": "8"}}})
    requests = container(manifests.job(gen, curate))["resources"]["requests"]
    assert requests == {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "16Gi"}  # unset fields: CPU defaults


def test_training_stages_take_the_shared_block_and_its_pod_overrides() -> None:
    gen, sft = start("sft", resources=GPU_PLACEMENT)
    job = manifests.job(gen, sft)
    pod, resources = job["spec"]["template"]["spec"], container(job)["resources"]
    assert resources["requests"] == {"cpu": "64", "memory": "900Gi", "nvidia.com/gpu": "8", "rdma/ib": "1",
                                     "ephemeral-storage": "16Gi"}
    assert resources["limits"] == {"memory": "900Gi", "nvidia.com/gpu": "8", "rdma/ib": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and pod["priorityClassName"] == "training"
    assert job["spec"]["template"]["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/networks": "ib-sriov"}
    assert job["spec"]["completions"] == 4


def test_per_stage_overrides_replace_gpus_nodes_memory_and_pod_additions() -> None:
    affinity = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50,
                "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": {"team": "ml"}}}}]}}
    stages = {
        "reward": {"nodes": 1, "gpusPerNode": 2, "memory": "160Gi"},
        "eval": {"gpusPerNode": 1, "podOverrides": {"affinity": affinity, "labels": {"team": "ml"},
                                                     "tolerations": [{"key": "spot", "operator": "Exists"}]}},
    }
    gen, reward = start("reward-pointwise", resources={**GPU_PLACEMENT, "stages": stages})
    bodies = dict(manifests.children(gen, reward))
    assert "services" not in bodies  # one node now: standalone rendezvous
    requests = container(bodies["jobs"])["resources"]["requests"]
    assert (requests["nvidia.com/gpu"], requests["memory"], requests["rdma/ib"]) == ("2", "160Gi", "1")
    assert env(bodies["jobs"])["PET_NPROC_PER_NODE"] == "2"
    gen, evaluation = start("eval", resources={**GPU_PLACEMENT, "stages": stages})
    job = manifests.job(gen, evaluation)
    pod = job["spec"]["template"]["spec"]
    assert pod["affinity"] == affinity and "priorityClassName" not in pod  # the stage's overrides replace
    assert "rdma/ib" not in container(job)["resources"]["requests"]
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu", "spot"]  # the shared ones, then its own
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert job["spec"]["template"]["metadata"]["labels"][manifests.CHILD_LABEL] == "gen2-eval-1"


def test_single_node_stages_refuse_several_nodes() -> None:
    with pytest.raises(ValueError, match=r"resources\.stages\.eval\.nodes"):
        start("eval", resources={"stages": {"eval": {"nodes": 2}}})


def test_stage_pods_mount_no_token_and_skip_the_recursive_chown() -> None:
    for stage in ("curate", "sft"):
        gen, action = start(stage)
        pod = manifests.job(gen, action)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_kueue_queue_suspends_and_labels() -> None:
    gen, action = start("sft", resources={"queueName": "gpu-queue"})
    job = manifests.job(gen, action)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][manifests.QUEUE_LABEL] == "gpu-queue"


def test_config_map_round_trips_the_stage_config_and_carries_deepspeed() -> None:
    """The ConfigMap carries the shared builder's DeepSpeed config (tests/trainer/test_deepspeed.py shows the
    trainer reads it and DeepSpeed accepts it); stages without DeepSpeed get neither the file nor the env."""
    gen, action = start("sft", resources={"deepspeedStage": 3})
    body = manifests.config_map(gen, action)
    assert StageConfig.model_validate(yaml.safe_load(body["data"]["stage.yaml"])) == action.config
    assert yaml.safe_load(body["data"]["deepspeed.json"]) == deepspeed_config(3)
    gen, curate = start("curate")
    assert "deepspeed.json" not in manifests.config_map(gen, curate)["data"]
    assert "DEEPSPEED_CONFIG" not in env(manifests.job(gen, curate))
    gen, plain = start("sft", resources={"deepspeedStage": 0})
    assert "deepspeed.json" not in manifests.config_map(gen, plain)["data"]
    assert "DEEPSPEED_CONFIG" not in env(manifests.job(gen, plain))


def test_object_store_storage_mounts_no_pvc() -> None:
    gen, action = start("sft", resources={"storage": {"uri": "s3://bucket/flywheel"}})
    pod = manifests.job(gen, action)["spec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    assert env(manifests.job(gen, action))["FLYWHEEL_OUTPUT_DIR"] == "/artifacts/gen2/sft"


def test_owner_reference_needs_a_uid() -> None:
    gen, action = start()
    gen.metadata.uid = None
    with pytest.raises(ValueError, match=r"metadata\.uid"):
        manifests.job(gen, action)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stage=st.sampled_from(["curate", "reward-pointwise", "sft", "rl", "eval"]),
    nodes=st.integers(1, 8),
    gpus=st.integers(0, 8),
    queue=st.one_of(st.none(), st.just("q")),
    deepspeed=st.sampled_from([0, 2, 3]),
    overrides=st.booleans(),
)
def test_every_child_is_a_valid_kubernetes_object(stage: str, nodes: int, gpus: int, queue: str | None,
                                                  deepspeed: int, overrides: bool) -> None:
    resources: dict[str, Any] = {"nodes": nodes, "gpusPerNode": gpus, "deepspeedStage": deepspeed}
    if queue:
        resources["queueName"] = queue
    if overrides:
        resources.update({key: GPU_PLACEMENT[key] for key in ("nodeSelector", "tolerations", "podOverrides")})
        resources["podOverrides"] = {**GPU_PLACEMENT["podOverrides"], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}
        resources["stages"] = {"reward": {"gpusPerNode": 1, "memory": "64Gi"}, "curate": {"cpu": "2"}}
    gen, action = start(stage, resources=resources)
    for _, body in manifests.children(gen, action):
        kubernetes_validate.validate(body, "1.30", strict=True)
        assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-gen2"
