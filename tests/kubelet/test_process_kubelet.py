"""The process kubelet's own rules, on shell pods: DNS only through a headless Service, mounts, failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.kubelet.process_kubelet import ProcessKubelet

LABELS = {"app": "trainer"}
ENV = {"PATH": "/usr/bin:/bin"}


def job(script: str, *, completions: int = 2, subdomain: str | None = "rdzv") -> dict[str, Any]:
    """An Indexed Job whose pods run `script`, with the rendezvous address of index 0 and a ConfigMap."""
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "main",
            "image": "busybox",
            "command": ["sh", "-c", script],
            "env": [
                {"name": "PET_MASTER_ADDR", "value": "train-0.rdzv"},
                {"name": "PET_MASTER_PORT", "value": "29500"},
                {"name": "RANK_FROM_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            ],
            "ports": [{"containerPort": 29500}],
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}],
            "terminationMessagePath": "/dev/termination-log",
        }],
        "volumes": [{"name": "config", "configMap": {"name": "train"}}],
    }
    if subdomain:
        pod["subdomain"] = subdomain
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train", "namespace": "ml"},
            "spec": {"completionMode": "Indexed", "completions": completions, "parallelism": completions,
                     "backoffLimit": 0, "template": {"metadata": {"labels": LABELS}, "spec": pod}}}


CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "train", "namespace": "ml"},
              "data": {"greeting": "hello"}}


def service(selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rdzv", "namespace": "ml"},
            "spec": {"clusterIP": "None", "selector": selector, "ports": [{"port": 29500}]}}


REPORT = 'echo "$PET_MASTER_ADDR $PET_MASTER_PORT $RANK_FROM_INDEX $(cat /etc/app/greeting)" > /dev/termination-log'


def test_pod_names_resolve_through_the_headless_service_only(tmp_path: Path) -> None:
    with_service = ProcessKubelet([CONFIG_MAP, service(LABELS), job(REPORT)], tmp_path / "a", ENV)
    run = with_service.run_job("train", "ml", timeout=30)
    assert run.state == "Complete", run.logs()
    messages = [p.message.split() for p in run.pods]
    assert [m[0] for m in messages] == ["127.0.0.1", "127.0.0.1"]
    assert messages[0][1] == messages[1][1] != "29500"  # one free local port for the Job's container port
    assert [m[2:] for m in messages] == [["0", "hello"], ["1", "hello"]]

    for objects in ([CONFIG_MAP, job(REPORT)],                              # no Service
                    [CONFIG_MAP, service({"app": "other"}), job(REPORT)],  # a Service that selects other pods
                    [CONFIG_MAP, service(LABELS), job(REPORT, subdomain=None)]):  # pods outside the subdomain
        run = ProcessKubelet(objects, tmp_path / "b", ENV).run_job("train", "ml", timeout=30)
        assert {p.message.split()[0] for p in run.pods} == {"train-0.rdzv.invalid"}


def test_one_failed_pod_fails_the_job_and_stops_its_siblings(tmp_path: Path) -> None:
    script = 'if [ "$JOB_COMPLETION_INDEX" = 1 ]; then exit 3; fi; sleep 60'
    run = ProcessKubelet([CONFIG_MAP, job(script)], tmp_path, ENV).run_job("train", "ml", timeout=300)
    assert run.state == "Failed"
    assert [p.exit_code for p in run.pods] == [-9, 3]  # the sibling was stopped (SIGKILL), not left running


def test_a_suspended_job_has_no_pods(tmp_path: Path) -> None:
    body = job(REPORT)
    body["spec"]["suspend"] = True
    with pytest.raises(RuntimeError, match="suspended"):
        ProcessKubelet([CONFIG_MAP, body], tmp_path, ENV).run_job("train", "ml", timeout=30)


def test_backoff_limit_per_index_replaces_a_failed_index_and_an_eviction_counts_without_a_policy(
    tmp_path: Path,
) -> None:
    # index 1 fails on its first pod only (a marker on the shared claim), then succeeds on its replacement
    script = ('if [ "$JOB_COMPLETION_INDEX" = 1 ] && [ ! -e /claim/once ]; then touch /claim/once; exit 3; fi; '
              'echo done > /dev/termination-log')
    body = job(script)
    body["spec"].pop("backoffLimit")
    body["spec"].update(backoffLimitPerIndex=1, maxFailedIndexes=0)
    body["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].append({"name": "claim", "mountPath": "/claim"})
    body["spec"]["template"]["spec"]["volumes"].append({"name": "claim", "persistentVolumeClaim": {"claimName": "c"}})
    run = ProcessKubelet([CONFIG_MAP, body], tmp_path / "a", ENV).run_job("train", "ml", timeout=60)
    assert run.state == "Complete", run.logs()
    assert [(p.index, p.exit_code) for p in run.pods] == [(0, 0), (1, 3), (1, 0)]

    sleeper = job("sleep 30", completions=1)  # backoffLimit 0 and no podFailurePolicy: the eviction fails it
    run = ProcessKubelet([CONFIG_MAP, sleeper], tmp_path / "b", ENV).run_job("train", "ml", timeout=60,
                                                                             evict={0: 1})
    assert (run.state, run.reason) == ("Failed", "BackoffLimitExceeded")
    assert run.pods[0].disrupted and run.pods[0].exit_code == -15
