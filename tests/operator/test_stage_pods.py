"""Stage pods on a real GPU cluster (issue 24): online Hub access with a token and a cache volume, scratch on an
emptyDir with an ephemeral-storage request, a pod failure policy, the rendezvous timeout, a queue per stage,
RDMA's IPC_LOCK and PID 1 — each rendered body also validated against the Kubernetes 1.30 schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from flywheel_operator.api import FlywheelGeneration
from flywheel_operator.kube import manifests

from tests.operator.test_manifests import GPU_PLACEMENT, container, env, start

ROOT = Path(__file__).resolve().parents[2]
S3 = {"storage": {"uri": "s3://bucket/flywheel", "secretRef": "flywheel-s3"}}


def volumes(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}


def mounts(job: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(job)["volumeMounts"]}


def test_cluster_pods_reach_the_hub_with_a_token_and_a_shared_cache() -> None:
    gen, action = start("sft", resources={**S3, "hub": {"tokenSecret": "hf-token", "cachePvc": "hf-models"}})
    job = manifests.job(gen, action)
    values = env(job)
    assert not {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"} & set(values)
    assert values["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}  # required: fails loudly
    assert values["HF_HOME"] == manifests.HF_CACHE_MOUNT == mounts(job)["hf-cache"]
    assert volumes(job)["hf-cache"] == {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-models"}}
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_offline_is_a_choice_and_without_a_cache_claim_hf_home_is_on_scratch() -> None:
    gen, action = start("sft", resources={**S3, "hub": {"offline": True}})
    values = env(manifests.job(gen, action))
    assert values["HF_HUB_OFFLINE"] == values["TRANSFORMERS_OFFLINE"] == "1"
    assert values["HF_HOME"] == "/scratch/huggingface" and "HF_TOKEN" not in values


def test_scratch_is_an_emptydir_with_an_ephemeral_storage_request_sized_from_the_spec() -> None:
    hub_candidate = {"sft": {"rejectionSampling": {"candidateModels": ["meta-llama/Llama-3.1-70B-Instruct"]}}}
    gen, action = start("sft", resources=S3, stages=hub_candidate)
    job = manifests.job(gen, action)
    # 16Gi base + 200Gi for the uncached Hub model + 200Gi policy + 200Gi checkpoint shards from the object store
    assert volumes(job)["scratch"]["emptyDir"] == {"sizeLimit": "616Gi"}
    assert container(job)["resources"]["requests"]["ephemeral-storage"] == "616Gi"
    assert mounts(job)["scratch"] == "/scratch"
    values = env(job)
    assert values["TMPDIR"] == "/scratch" and values["FLYWHEEL_CACHE_DIR"] == "/scratch/cache"
    gen, action = start("sft", resources={**S3, "hub": {"cachePvc": "hf-models"}}, stages=hub_candidate)
    assert volumes(manifests.job(gen, action))["scratch"]["emptyDir"] == {"sizeLimit": "416Gi"}  # cached on a claim
    gen, action = start("sft", resources={**S3, "scratch": {"size": "1500Gi"}})
    job = manifests.job(gen, action)
    assert volumes(job)["scratch"]["emptyDir"] == {"sizeLimit": "1500Gi"}
    assert container(job)["resources"]["requests"]["ephemeral-storage"] == "1500Gi"
    gen, action = start("sft", resources={**S3, "scratch": {"size": "64Gi", "medium": "Memory"}})
    job = manifests.job(gen, action)
    assert volumes(job)["scratch"]["emptyDir"] == {"sizeLimit": "64Gi", "medium": "Memory"}
    assert "ephemeral-storage" not in container(job)["resources"]["requests"]  # tmpfs counts against memory
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_disruptions_are_ignored_and_a_permanent_error_fails_the_job_at_once() -> None:
    gen, action = start("sft", resources={"gpusPerNode": 8})
    spec = manifests.job(gen, action)["spec"]
    assert spec["backoffLimit"] == 0 and "backoffLimitPerIndex" not in spec
    fail, ignore = spec["podFailurePolicy"]["rules"]
    assert fail == {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In", "values": [2]}}
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # what a podFailurePolicy requires


def test_a_multi_node_job_restarts_each_node_a_few_times_and_waits_long_at_the_rendezvous() -> None:
    gen, action = start("rl", resources={"nodes": 4, "gpusPerNode": 8, "restartsPerNode": 3,
                                         "rendezvousTimeout": "45m"})
    job = manifests.job(gen, action)
    spec = job["spec"]
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (3, 0) and "backoffLimit" not in spec
    assert spec["podFailurePolicy"] == manifests.pod_failure_policy()
    assert env(job)["PET_RDZV_CONF"] == "timeout=2700,join_timeout=2700"
    kubernetes_validate.validate(job, "1.30", strict=True)
    gen, action = start("rl", resources={"nodes": 2, "gpusPerNode": 8})
    assert env(manifests.job(gen, action))["PET_RDZV_CONF"] == "timeout=1800,join_timeout=1800"  # 30m default


def test_the_container_command_is_the_program_itself_so_sigterm_reaches_torchrun() -> None:
    for stage, resources in (("curate", {}), ("rl", {"nodes": 2, "gpusPerNode": 8})):
        gen, action = start(stage, resources=resources)
        job = manifests.job(gen, action)
        command = container(job)["command"]
        assert command[0] in ("flywheel-train", "torchrun") and "sh" not in command and "-c" not in command
        assert env(job)[manifests.TERMINATION_ENV] == container(job)["terminationMessagePath"]


def test_cpu_stages_do_not_wait_in_the_gpu_queue() -> None:
    gen, curate = start("curate", resources={**GPU_PLACEMENT, "queueName": "gpu-training"})
    job = manifests.job(gen, curate)
    assert manifests.QUEUE_LABEL not in job["metadata"]["labels"] and "suspend" not in job["spec"]
    gen, sft = start("sft", resources={**GPU_PLACEMENT, "queueName": "gpu-training"})
    job = manifests.job(gen, sft)
    assert job["metadata"]["labels"][manifests.QUEUE_LABEL] == "gpu-training" and job["spec"]["suspend"] is True
    stages = {"curate": {"queueName": "cpu-batch"}, "eval": {"queueName": ""}}
    gen, curate = start("curate", resources={**GPU_PLACEMENT, "queueName": "gpu-training", "stages": stages})
    assert manifests.job(gen, curate)["metadata"]["labels"][manifests.QUEUE_LABEL] == "cpu-batch"
    gen, evaluation = start("eval", resources={**GPU_PLACEMENT, "queueName": "gpu-training", "stages": stages})
    assert manifests.QUEUE_LABEL not in manifests.job(gen, evaluation)["metadata"]["labels"]


@pytest.mark.parametrize(("extra", "added"), [({"rdma/ib": "1"}, ["IPC_LOCK"]),
                                              ({"nvidia.com/mlnxnics": "1", "rdma/hca_shared": "1"}, ["IPC_LOCK"]),
                                              ({"example.com/fpga": "1"}, None)])
def test_rdma_pods_keep_drop_all_and_add_ipc_lock(extra: dict[str, str], added: list[str] | None) -> None:
    gen, sft = start("sft", resources={"podOverrides": {"extraResources": extra}})
    capabilities = container(manifests.job(gen, sft))["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"] and capabilities.get("add") == added


def test_gen15_renders_valid_jobs_for_every_stage_as_written() -> None:
    """examples/gen15.yaml as shipped: a Hub candidate with a token and a cache claim, an S3 store."""
    manifest = yaml.safe_load((ROOT / "examples" / "gen15.yaml").read_text())
    manifest["metadata"]["uid"] = "uid-gen15"
    gen = FlywheelGeneration.model_validate(manifest)
    assert gen.spec.resources.hub.token_secret and gen.spec.resources.hub.cache_pvc
    for stage in ("curate", "reward-pointwise", "sft", "rl", "eval"):
        _, action = start(stage)  # the planner's StartStage for that stage; rendered for gen15
        for _, body in manifests.children(gen, action):
            kubernetes_validate.validate(body, "1.30", strict=True)
        values = env(manifests.job(gen, action))
        assert "HF_HUB_OFFLINE" not in values and values["HF_HOME"] == manifests.HF_CACHE_MOUNT
