"""The exporter in the chart (issue 30 and issue 24 item 11): N shards as a StatefulSet, the SQLite state on the
volume, and a writers' token that GitOps renders do not rotate."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.chart.conftest import NAMESPACE, of_kind, render

SHARDED = ("--set", "exporter.enabled=true", "--set", "exporter.shards=3")


def _container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def test_shards_are_a_statefulset_whose_pods_find_their_shard_and_their_own_volume() -> None:
    from flywheel_operator.gate.shards import parse_shard_index

    docs = render("helm3", None, *SHARDED)
    (workload,) = of_kind(docs, "StatefulSet")
    assert not [d for d in of_kind(docs, "Deployment") if "exporter" in d["metadata"]["name"]]
    assert not of_kind(docs, "PersistentVolumeClaim")  # each shard's claim comes from the template
    name = workload["metadata"]["name"]
    assert workload["spec"]["replicas"] == 3 and workload["spec"]["serviceName"] == name
    (template,) = workload["spec"]["volumeClaimTemplates"]
    container = _container(workload)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == template["metadata"]["name"]]
    (state,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--state=")]
    assert state.rsplit("/", 1)[0] == mount["mountPath"]
    assert "--shards=3" in container["args"] and "--shard-index=$(POD_NAME)" in container["args"]
    (pod_name,) = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # the StatefulSet's pods are <name>-0 … <name>-2: the ordinal is the shard
    assert [parse_shard_index(f"{name}-{i}", 3) for i in range(3)] == [0, 1, 2]
    (service,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == name]
    assert service["spec"]["clusterIP"] == "None"  # per-pod DNS for writers; every pod is scraped
    for doc in (workload, service):
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_one_shard_stays_a_deployment_on_its_claim_with_the_state_database() -> None:
    docs = render("helm3", None, "--set", "exporter.enabled=true")
    assert not of_kind(docs, "StatefulSet")
    (workload,) = [d for d in of_kind(docs, "Deployment") if "exporter" in d["metadata"]["name"]]
    args = _container(workload)["args"]
    assert "--state=/var/lib/flywheel-exporter/state.db" in args
    assert "--snapshot=/var/lib/flywheel-exporter/snapshot.json" in args  # imported once on upgrade
    assert not [a for a in args if a.startswith("--shard")]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("--set", "exporter.persistence.existingClaim=mine"), "each shard gets its own claim"),
        (("--set", "exporter.snapshotPath=/elsewhere/snapshot.json"), "directory of exporter.statePath"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_fix(values: tuple[str, ...], message: str) -> None:
    from tests.chart.conftest import CHART, RELEASE, helm_binary, run

    result = run([helm_binary("helm3"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *SHARDED, *values])
    assert result.returncode != 0 and message in result.stderr


def test_under_gitops_an_existing_secret_keeps_every_render_identical_and_the_token_file_live() -> None:
    """`helm template` (Argo CD, Flux) cannot `lookup`: the chart-made token is new on every render (shown here).
    With exporter.auth.existingSecret the renders are byte-identical; the token is mounted as a whole-Secret
    volume (no subPath), so the kubelet's updates reach the file the exporter re-reads (--token-grace)."""
    same = [("--set", "exporter.port=9101"), ("--set", "exporter.metricsPort=9102")]  # defaults: two fresh renders
    first = render("helm3", None, "--set", "exporter.enabled=true", *same[0])
    second = render("helm3", None, "--set", "exporter.enabled=true", *same[1])
    assert of_kind(first, "Secret")[0]["data"]["token"] != of_kind(second, "Secret")[0]["data"]["token"]
    own = ("--set", "exporter.enabled=true", "--set", "exporter.auth.existingSecret=chat-writer-token")
    renders = [render("helm3", None, *own, *values) for values in same]
    assert renders[0] == renders[1] and not of_kind(renders[0], "Secret")
    (workload,) = [d for d in of_kind(renders[0], "Deployment") if "exporter" in d["metadata"]["name"]]
    container = _container(workload)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "writer-token"]
    assert "subPath" not in mount and "--token-grace=600" in container["args"]
    (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == "writer-token"]
    assert volume["secret"]["secretName"] == "chat-writer-token"
