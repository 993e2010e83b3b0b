"""The Job controller's and Pod Security admission rules the emulator enforces on stage Jobs (issue 24): the
conformance tables cover every error site of the pinned upstream inventories, every enforced rule refuses what
the API server refuses with its message, and the stage Jobs the operator renders pass them all."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flywheel_operator.kube import manifests

from tests.operator import job_admission as ja
from tests.operator.test_manifests import start


def stage_job(stage: str = "rl", **resources: Any) -> dict[str, Any]:
    gen, action = start(stage, resources=resources)
    return manifests.job(gen, action)


def test_the_job_table_covers_every_message_of_the_pinned_source() -> None:
    missing = [e for e in ja.job_inventory() if ja.job_verdict(e) is None]
    assert missing == [], f"messages of the pinned Job validation the table lacks: {missing}"
    listed = {e["message"] for e in ja.job_inventory()}
    assert set(ja.JOB_TABLE) <= listed, f"table entries the pinned source no longer has: {set(ja.JOB_TABLE) - listed}"
    for message, (verdict, why) in ja.JOB_TABLE.items():
        assert verdict in ("enforced", "n/a") and why, message
        if verdict == "enforced":
            assert why.startswith(ja.T) and why.removeprefix(ja.T) in globals(), (message, why)


def test_the_pod_security_table_covers_every_check_of_the_pinned_standard() -> None:
    assert sorted(c["id"] for c in ja.pss_inventory()) == sorted(ja.PSS_TABLE)
    for check_id, (verdict, why) in ja.PSS_TABLE.items():
        if verdict == "enforced":
            assert why.removeprefix(ja.T) in globals(), (check_id, why)


@pytest.mark.parametrize(("stage", "resources"), [("curate", {}), ("sft", {"gpusPerNode": 8}),
                                                  ("rl", {"nodes": 4, "gpusPerNode": 8}),
                                                  ("reward-pointwise", {"nodes": 100, "gpusPerNode": 8})])
def test_every_stage_job_passes_the_job_rules_and_the_restricted_standard(stage: str, resources: Any) -> None:
    job = stage_job(stage, **resources)
    assert ja.job_problems(job) == []
    assert ja.pod_security_problems(job["spec"]["template"]["spec"], "restricted") == []


def test_indexed_job_rules() -> None:
    job = stage_job("rl", nodes=4, gpusPerNode=8)
    bad = copy.deepcopy(job)
    bad["spec"].pop("completions")
    assert "spec.completions: Required value: when completion mode is Indexed" in ja.job_problems(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["completionMode"] = "Ordered"
    assert any("spec.completionMode: Unsupported value" in p for p in ja.job_problems(bad))
    bad = copy.deepcopy(job)
    bad["spec"]["parallelism"] = 100_001
    assert any("must be less than or equal to 100000 when completion mode is Indexed" in p
               for p in ja.job_problems(bad))
    bad = copy.deepcopy(job)
    bad["metadata"]["name"] = "g" * 62
    assert any("will not able to create pod with invalid DNS label" in p for p in ja.job_problems(bad))


def test_backoff_limit_per_index_rules() -> None:
    single, indexed = stage_job("sft", gpusPerNode=8), stage_job("rl", nodes=4, gpusPerNode=8)
    bad = copy.deepcopy(single)
    bad["spec"]["backoffLimitPerIndex"] = 2  # only an Indexed Job counts per index
    assert "spec.backoffLimitPerIndex: Invalid value: 2: requires indexed completion mode" in ja.job_problems(bad)
    bad = copy.deepcopy(indexed)
    bad["spec"].pop("backoffLimitPerIndex")
    assert "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified" in ja.job_problems(bad)
    bad = copy.deepcopy(indexed)
    bad["spec"]["maxFailedIndexes"] = 5
    assert "spec.maxFailedIndexes: Invalid value: 5: must be less than or equal to completions" in ja.job_problems(bad)
    huge = copy.deepcopy(indexed)
    huge["spec"].update(completions=200_000, parallelism=20_000, maxFailedIndexes=None)
    huge["spec"].pop("maxFailedIndexes")
    problems = ja.job_problems(huge)
    assert "spec.maxFailedIndexes: Required value: must be specified when completions is above 100000" in problems
    assert any("when completions are above 100000 and used with backoff limit per index" in p for p in problems)
    huge["spec"]["maxFailedIndexes"] = 100_001
    assert "spec.maxFailedIndexes: Invalid value: 100001: must be less than or equal to 100000" in ja.job_problems(huge)


def test_pod_failure_policy_rules() -> None:
    job = stage_job("sft", gpusPerNode=8)
    cases: list[tuple[Any, str]] = [
        (lambda s: s["template"]["spec"].update(restartPolicy="OnFailure"),
         'only "Never" is supported when podFailurePolicy is specified'),
        (lambda s: s["template"]["spec"].update(restartPolicy="Always"), 'valid values: "OnFailure", "Never"'),
        (lambda s: s["template"]["spec"].update(restartPolicy="Sometimes"), 'Unsupported value: "Sometimes"'),
        (lambda s: s["podFailurePolicy"]["rules"].extend([s["podFailurePolicy"]["rules"][0]] * 19),
         "Too many: 21: must have at most 20 items"),
        (lambda s: s["podFailurePolicy"]["rules"][0].update(action=""), 'action: Required value: valid values'),
        (lambda s: s["podFailurePolicy"]["rules"][0].update(action="FailIndex"),
         "requires the backoffLimitPerIndex to be set"),
        (lambda s: s["podFailurePolicy"]["rules"][0].update(action="Retry"), 'Unsupported value: "Retry"'),
        (lambda s: s["podFailurePolicy"]["rules"][0].update(onPodConditions=[{"type": "X", "status": "True"}]),
         "specifying both OnExitCodes and OnPodConditions is not supported"),
        (lambda s: s["podFailurePolicy"]["rules"][0].pop("onExitCodes"),
         "specifying one of OnExitCodes and OnPodConditions is required"),
        (lambda s: s["podFailurePolicy"]["rules"][1].update(onPodConditions=[{"type": "X", "status": "True"}] * 21),
         "Too many: 21: must have at most 20 items"),
        (lambda s: s["podFailurePolicy"]["rules"][1]["onPodConditions"][0].update(status=""),
         "status: Required value: valid values"),
        (lambda s: s["podFailurePolicy"]["rules"][1]["onPodConditions"][0].update(status="Yes"),
         'Unsupported value: "Yes"'),
        (lambda s: s["podFailurePolicy"]["rules"][0]["onExitCodes"].update(operator=""),
         "operator: Required value: valid values"),
        (lambda s: s["podFailurePolicy"]["rules"][0]["onExitCodes"].update(operator="Between"),
         'Unsupported value: "Between"'),
        (lambda s: s["podFailurePolicy"]["rules"][0]["onExitCodes"].update(containerName="trainer"),
         "must be one of the container or initContainer names in the pod template"),
        (lambda s: s["podFailurePolicy"]["rules"][0]["onExitCodes"].update(values=[]),
         "at least one value is required"),
        (lambda s: s["podFailurePolicy"]["rules"][0]["onExitCodes"].update(values=list(range(1, 257))),
         "Too many: 256: must have at most 255 items"),
        (lambda s: s["podFailurePolicy"]["rules"][0]["onExitCodes"].update(values=[0, 2]),
         "must not be 0 for the In operator"),
        (lambda s: s["podFailurePolicy"]["rules"][0]["onExitCodes"].update(values=[2, 2]), "Duplicate value: 2"),
        (lambda s: s["podFailurePolicy"]["rules"][0]["onExitCodes"].update(values=[3, 2]), "must be ordered"),
        (lambda s: s.update(podReplacementPolicy="TerminatingOrFailed"),
         'spec.podReplacementPolicy: Unsupported value: "TerminatingOrFailed": supported values: "Failed"'),
    ]
    for change, message in cases:
        bad = copy.deepcopy(job)
        change(bad["spec"])
        assert any(message in p for p in ja.job_problems(bad)), (message, ja.job_problems(bad))


def test_pod_security_restricted() -> None:
    pod = stage_job("sft", gpusPerNode=8)["spec"]["template"]["spec"]
    cases: list[tuple[Any, str]] = [
        (lambda p: p.update(hostNetwork=True), "host namespaces"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath volumes"),
        (lambda p: p["containers"][0].setdefault("ports", []).append({"containerPort": 1, "hostPort": 1}),
         "hostPort"),
        (lambda p: p["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
         "forbidden AppArmor profile"),
        (lambda p: p["securityContext"].update(seLinuxOptions={"user": "root"}), "seLinuxOptions"),
        (lambda p: p["containers"][0]["securityContext"].update(procMount="Unmasked"), "procMount"),
        (lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile"),
        (lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
         "forbidden sysctls"),
        (lambda p: p["volumes"].append({"name": "g", "gitRepo": {"repository": "x"}}), "restricted volume types"),
        (lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
         "restricted volume types"),
        (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
         "allowPrivilegeEscalation != false"),
        (lambda p: (p["containers"][0]["securityContext"].pop("runAsNonRoot"),
                    p["securityContext"].pop("runAsNonRoot")), "runAsNonRoot != true"),
        (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser=0"),
        (lambda p: (p["containers"][0]["securityContext"].pop("seccompProfile"),
                    p["securityContext"].pop("seccompProfile")), "seccompProfile"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
         "unrestricted capabilities"),
    ]
    for change, reason in cases:
        bad = copy.deepcopy(pod)
        change(bad)
        assert any(p.startswith(reason) for p in ja.pod_security_problems(bad, "restricted")), reason


def test_rdma_pods_need_a_privileged_namespace() -> None:
    """IPC_LOCK (pinned memory for the RDMA verbs) is outside both the baseline and the restricted standard."""
    pod = stage_job("sft", gpusPerNode=8, podOverrides={"extraResources": {"rdma/ib": "1"}})["spec"]["template"]["spec"]
    restricted = ja.pod_security_problems(pod, "restricted")
    assert any(p.startswith("unrestricted capabilities") and "IPC_LOCK" in p for p in restricted)
    assert any(p.startswith("non-default capabilities") for p in ja.pod_security_problems(pod, "baseline"))
    assert ja.pod_security_problems(pod, "privileged") == []
