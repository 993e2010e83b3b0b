"""The chart as platform teams install it (issue 28, point 7): as a subchart, without KServe or with it, two
releases side by side, into a namespace without cluster-wide rights, behind a Prometheus with relabelings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, HELMS, NAMESPACE, helm_binary, of_kind, render, run
from tests.operator import upstream

CLUSTER_RUNTIME = ("--api-versions", "serving.kserve.io/v1alpha1/ClusterServingRuntime")
NAMESPACED_RUNTIME = ("--api-versions", "serving.kserve.io/v1alpha1/ServingRuntime")
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime", "ClusterKopfPeering",
                  "CustomResourceDefinition", "Namespace", "PriorityClass", "StorageClass", "PersistentVolume",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
EVERYTHING_ON = ("--set", "exporter.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
                 "--set", "prometheusRule.enabled=true", "--set", "dashboard.enabled=true",
                 "--set", "peering.enabled=true")


def _runtimes(docs: tuple[dict, ...]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("ClusterServingRuntime", "ServingRuntime")]


def _operator_env(docs: tuple[dict, ...]) -> dict[str, str]:
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("characterflywheel")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("helm", HELMS)
def test_the_chart_works_as_a_subchart_with_global_values(helm: str, tmp_path: Path) -> None:
    """Helm hands every subchart the parent's `global` values; a schema without `global` refuses them all."""
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "characterflywheel")
    (parent / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": "platform", "version": "1.0.0"}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.example.com", "storageClass": "fast"},
        "characterflywheel": {"exporter": {"enabled": True}},
    }))
    result = run([helm_binary(helm), "template", "platform", str(parent), "--namespace", NAMESPACE])
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {"Deployment", "Role", "Service"} <= {d["kind"] for d in docs}
    assert any(d["kind"] == "Deployment" and d["metadata"]["name"].endswith("exporter") for d in docs)
    # the schema still refuses what it does not know, next to `global`
    bad = run([helm_binary(helm), "template", "platform", str(parent), "--set", "characterflywheel.imagePullPolicy=x"])
    assert bad.returncode != 0 and "imagePullPolicy" in bad.stderr


def test_no_serving_runtime_without_kserves_api() -> None:
    """Without KServe's CRDs, creating a (Cluster)ServingRuntime would fail the whole install."""
    assert _runtimes(render("helm3", None)) == []
    assert _runtimes(render("helm3", None, *NAMESPACED_RUNTIME)) == []  # the kind asked for is not served
    (runtime,) = _runtimes(render("helm3", None, *CLUSTER_RUNTIME))
    assert runtime["kind"] == "ClusterServingRuntime"
    assert upstream.schema_problems(runtime) == []


def test_two_releases_get_their_own_runtime_and_each_operator_names_its_own() -> None:
    names = []
    for release in ("flywheel", "research"):
        result = run([helm_binary("helm3"), "template", release, str(CHART), "--namespace", NAMESPACE,
                      *CLUSTER_RUNTIME])
        assert result.returncode == 0, result.stderr
        docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
        (runtime,) = _runtimes(docs)
        assert _operator_env(docs)["FLYWHEEL_SERVING_RUNTIME"] == runtime["metadata"]["name"]
        names.append(runtime["metadata"]["name"])
    assert names == ["flywheel-characterflywheel-chat", "research-characterflywheel-chat"]


def test_an_own_runtime_is_named_when_the_chart_creates_none() -> None:
    docs = render("helm3", None, "--set", "servingRuntime.create=false", "--set", "servingRuntime.name=my-chat",
                  *CLUSTER_RUNTIME)
    assert _runtimes(docs) == [] and _operator_env(docs)["FLYWHEEL_SERVING_RUNTIME"] == "my-chat"
    result = run([helm_binary("helm3"), "template", "r", str(CHART), "--set", "servingRuntime.create=false"])
    assert result.returncode != 0 and "servingRuntime.name is required" in result.stderr


def test_images_are_pulled_if_not_present_by_default() -> None:
    docs = render("helm3", None, "--set", "exporter.enabled=true", *CLUSTER_RUNTIME)
    policies = [c["imagePullPolicy"] for d in of_kind(docs, "Deployment")
                for c in d["spec"]["template"]["spec"]["containers"]]
    (runtime,) = _runtimes(docs)
    policies += [c["imagePullPolicy"] for c in runtime["spec"]["containers"]]
    assert len(policies) == 3 and set(policies) == {"IfNotPresent"}


def test_runtime_image_is_pinned_by_digest_when_given() -> None:
    digest = "sha256:" + "ab" * 32
    (runtime,) = _runtimes(render("helm3", None, "--set", f"servingRuntime.image.digest={digest}", *CLUSTER_RUNTIME))
    assert runtime["spec"]["containers"][0]["image"] == f"ghcr.io/characterflywheel/trainer@{digest}"


def test_service_monitor_carries_relabelings_on_both_endpoints(tmp_path: Path) -> None:
    values = tmp_path / "relabel.yaml"
    relabelings = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    metric_relabelings = [{"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}]
    values.write_text(yaml.safe_dump({"exporter": {"enabled": True}, "metrics": {"serviceMonitor": {
        "enabled": True, "relabelings": relabelings, "metricRelabelings": metric_relabelings}}}))
    (monitor,) = of_kind(render("helm3", str(values)), "ServiceMonitor")
    assert len(monitor["spec"]["endpoints"]) == 2
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["relabelings"] == relabelings and endpoint["metricRelabelings"] == metric_relabelings
    assert upstream.schema_problems(monitor) == []
    (plain,) = of_kind(render("helm3", None, "--set", "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert all("relabelings" not in e and "metricRelabelings" not in e for e in plain["spec"]["endpoints"])


@pytest.mark.parametrize("helm", HELMS)
def test_a_namespace_admin_can_install_everything_without_cluster_rights(helm: str) -> None:
    """`--skip-crds` (an administrator applies the CRDs once) with `servingRuntime.kind=ServingRuntime`: every
    object the release creates is namespaced, so a Role with rights in the namespace is enough."""
    result = run([helm_binary(helm), "template", "flywheel", str(CHART), "--namespace", NAMESPACE, "--skip-crds",
                  "--set", "servingRuntime.kind=ServingRuntime", *EVERYTHING_ON, *NAMESPACED_RUNTIME,
                  *CLUSTER_RUNTIME])
    assert result.returncode == 0, result.stderr
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    assert not [d["kind"] for d in docs if d["kind"] in CLUSTER_SCOPED]
    (runtime,) = _runtimes(docs)
    assert runtime["kind"] == "ServingRuntime" and runtime["metadata"]["namespace"] == NAMESPACE
    assert _operator_env(docs)["FLYWHEEL_SERVING_RUNTIME"] == runtime["metadata"]["name"]
    # KServe's ServingRuntime and ClusterServingRuntime share one spec schema
    assert upstream.schema_problems({**runtime, "kind": "ClusterServingRuntime"}) == []
    # the default is cluster-scoped where KServe is installed: the switch is what makes the difference
    default = render(helm, None, *CLUSTER_RUNTIME)
    assert [d["kind"] for d in default if d["kind"] in CLUSTER_SCOPED] == ["CustomResourceDefinition"] * len(
        of_kind(default, "CustomResourceDefinition")) + ["ClusterServingRuntime"]


def test_a_per_namespace_runtime_with_all_namespaces_is_refused() -> None:
    result = run([helm_binary("helm3"), "template", "r", str(CHART), "--set", "watch.allNamespaces=true",
                  "--set", "servingRuntime.kind=ServingRuntime", *NAMESPACED_RUNTIME])
    assert result.returncode != 0 and "with watch.allNamespaces use ClusterServingRuntime" in result.stderr


def test_notes_say_the_default_images_are_not_published() -> None:
    def notes(*extra: str) -> str:
        result = run([helm_binary("helm4"), "install", "flywheel", str(CHART), "--namespace", NAMESPACE,
                      "--dry-run=client", *extra])
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]

    assert "No images are published" in notes() and "docs/install.md, section 0" in notes()
    assert "No images are published" not in notes("--set", "image.repository=registry.example.com/ml/operator")
