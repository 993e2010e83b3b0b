"""The Helm chart with real helm 3 and helm 4: lint, render, validate every manifest, and its behaviours."""

from __future__ import annotations

import filecmp
import json

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from tests.chart.conftest import (
    ALL_FEATURES,
    CHART,
    HELMS,
    NAMESPACE,
    ROOT,
    VALUES,
    helm_binary,
    of_kind,
    render,
    run,
)
from tests.operator import upstream

K8S_VERSIONS = ("1.30.0", latest_version())
CUSTOM_GROUPS = ("kopf.dev/", "characterflywheel.io/")
MONITORING = "monitoring.coreos.com/v1"
KSERVE = ("--api-versions", "serving.kserve.io/v1alpha1/ClusterServingRuntime")


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("values", VALUES)
def test_lint_strict_passes(helm: str, values: str) -> None:
    args = [helm_binary(helm), "lint", "--strict", str(CHART)]
    if VALUES[values] is not None:
        args += ["-f", str(VALUES[values])]
    result = run(args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_manifest_validates(helm: str, values: str, version: str) -> None:
    values_file = VALUES[values]
    # with KServe's API announced, so the serving runtime renders and is validated too
    docs = render(helm, None if values_file is None else str(values_file), *KSERVE)
    crds = {d["spec"]["names"]["kind"]: d for d in of_kind(docs, "CustomResourceDefinition")}
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            _validate_against_crd(doc, crds[doc["kind"]])
        elif doc["apiVersion"].startswith("serving.kserve.io/") or doc["apiVersion"] == MONITORING:
            # KServe's and prometheus-operator's CRD schemas, pinned in tests/schemas (rules also by promtool)
            assert upstream.schema_problems(doc) == [], doc["kind"]
        else:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError as exc:  # pragma: no cover - names the kind that has no schema
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: no Kubernetes {version} schema ({exc})")


def _validate_against_crd(doc: dict, crd: dict) -> None:
    version = doc["apiVersion"].split("/")[1]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    # A CRD's schema is OpenAPI 3.0: draft-4 semantics (boolean exclusiveMinimum), x-kubernetes-* ignored.
    jsonschema.Draft4Validator(served["schema"]["openAPIV3Schema"]).validate(doc)


def test_the_chart_installs_the_runtime_the_operator_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The canary's model names the chart's ClusterServingRuntime (its name reaches the operator through
    FLYWHEEL_SERVING_RUNTIME), serving the trainer image's ChatPredictor (KServe v1 protocol, as `flywheel run`
    serves locally)."""
    from flywheel_operator.api import StorageSpec
    from flywheel_operator.kube import canary

    docs = render("helm3", None, *KSERVE)
    (runtime,) = [d for d in docs if d["kind"] == "ClusterServingRuntime"]
    (deployment,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    monkeypatch.setenv(canary.RUNTIME_ENV, env[canary.RUNTIME_ENV])
    assert canary.model("s3://b/p", StorageSpec.model_validate({"uri": "s3://b/"}))["runtime"] == (
        runtime["metadata"]["name"]
    )
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == [canary.MODEL_FORMAT]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == canary.CONTAINER and container["image"].startswith("ghcr.io/characterflywheel/trainer:")
    assert container["command"] == ["python", "-m", "flywheel_trainer.predictor"]
    assert "--model_name={{.Name}}" in container["args"] and "--model_dir=/mnt/models" in container["args"]
    assert runtime["spec"]["protocolVersions"] == ["v1"]


def test_chart_crds_are_the_generated_ones() -> None:
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert top, "crds/ is empty: run `make crd`"
    for name in top:
        assert filecmp.cmp(ROOT / "crds" / name, CHART / "crds" / name, shallow=False), (
            f"charts/characterflywheel/crds/{name} differs from crds/{name}: copy crds/{name} into the chart"
        )


def test_example_generation_validates_against_the_crd() -> None:
    crd = yaml.safe_load((CHART / "crds" / "flywheelgenerations.yaml").read_text())
    for doc in yaml.safe_load_all((ROOT / "examples" / "gen15.yaml").read_text()):
        _validate_against_crd(doc, crd)


def _rules(docs: tuple[dict, ...], kind: str) -> dict[tuple[str, str], set[str]]:
    (role,) = of_kind(docs, kind)[:1] or [None]
    assert role is not None, f"no {kind} rendered"
    verbs: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs.setdefault((group, resource), set()).update(rule["verbs"])
    return verbs


OPERATOR_VERBS = {  # what tests/operator/test_rbac.py records the operator calling in the emulator
    ("characterflywheel.io", "flywheelgenerations"): {"get", "list", "watch", "patch"},
    ("characterflywheel.io", "flywheelgenerations/status"): {"patch"},
    ("characterflywheel.io", "flywheelgenerations/finalizers"): {"update"},
    ("batch", "jobs"): {"create", "list", "watch", "delete"},
    ("", "pods"): {"list"},
    ("", "configmaps"): {"create"},
    ("", "services"): {"create"},
    ("", "events"): {"create"},
    ("serving.kserve.io", "inferenceservices"): {"create", "get", "patch"},
}
OPERATOR_VERBS = {  # Flywheels (kube/flywheel.py): their generations are created and deleted (historyLimit)
    **OPERATOR_VERBS,
    ("characterflywheel.io", "flywheelgenerations"): OPERATOR_VERBS[("characterflywheel.io", "flywheelgenerations")]
    | {"create", "delete"},
    ("characterflywheel.io", "flywheels"): {"get", "list", "watch", "patch"},
    ("characterflywheel.io", "flywheels/status"): {"patch"},
    ("characterflywheel.io", "flywheels/finalizers"): {"update"},
}
PEERING_VERBS = {"get", "list", "watch", "patch"}


def test_default_install_is_namespaced_with_exactly_the_operator_verbs(default_render: tuple[dict, ...]) -> None:
    assert not of_kind(default_render, "ClusterRole") and not of_kind(default_render, "ClusterRoleBinding")
    (role,) = of_kind(default_render, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _rules(default_render, "Role") == {**OPERATOR_VERBS, ("kopf.dev", "kopfpeerings"): PEERING_VERBS}
    (deployment,) = of_kind(default_render, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={NAMESPACE}" in args and "--standalone" in args
    assert "--allowed-image=ghcr.io/characterflywheel/trainer:*" in args  # the stage allowlist is on by default
    assert "--allowed-service-account=default" in args
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_all_namespaces_gets_a_cluster_role_and_cluster_peering() -> None:
    docs = render("helm3", None, "--set", "watch.allNamespaces=true", "--set", "peering.enabled=true",
                  "--set", "operator.replicas=2")
    assert not of_kind(docs, "Role")
    assert _rules(docs, "ClusterRole") == {**OPERATOR_VERBS, ("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS}
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    assert [p["metadata"]["name"] for p in of_kind(docs, "ClusterKopfPeering")] == ["characterflywheel"]
    args = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and "--peering=characterflywheel" in args


def test_watched_namespaces_get_one_role_and_peering_each(all_features: tuple[dict, ...]) -> None:
    for kind in ("Role", "RoleBinding", "KopfPeering"):
        assert sorted(d["metadata"]["namespace"] for d in of_kind(all_features, kind)) == ["characters", "research"]


def test_no_wildcards_and_no_secrets_in_any_role(all_features: tuple[dict, ...]) -> None:
    for kind in ("Role", "ClusterRole"):
        for role in of_kind(all_features, kind):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
                assert "secrets" not in rule["resources"]


def test_several_replicas_without_peering_are_refused() -> None:
    result = run([helm_binary("helm3"), "template", "x", str(CHART), "--set", "operator.replicas=2"])
    assert result.returncode != 0 and "peering.enabled" in result.stderr


def test_values_schema_rejects_misspelt_keys() -> None:
    result = run([helm_binary("helm3"), "template", "x", str(CHART), "--set", "exporter.enable=true"])
    assert result.returncode != 0 and "enable" in result.stderr


def test_pods_meet_the_restricted_security_profile(all_features: tuple[dict, ...]) -> None:
    for deployment in of_kind(all_features, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert {"livenessProbe", "readinessProbe", "resources"} <= container.keys()


def test_service_monitor_scrapes_ports_the_services_expose(all_features: tuple[dict, ...]) -> None:
    (monitor,) = of_kind(all_features, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in of_kind(all_features, "Service")
                if selector.items() <= s["metadata"]["labels"].items()]
    ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "http-metrics"}
    assert ports == {"metrics", "http", "http-metrics"}  # the exporter's events port is not scraped
    assert all(e["honorLabels"] for e in monitor["spec"]["endpoints"])


WRITER_LABEL = {"characterflywheel.io/exporter-writer": "true"}


def test_only_labelled_writers_with_the_secret_token_reach_the_exporter_events_port() -> None:
    """Defaults: a Secret with a random token, mounted and passed as --token-file; the events port admits only pods
    with the writer label, the read-only metrics port (the one scraped and probed) every scraper."""
    docs = render("helm3", None, "--set", "exporter.enabled=true")
    (secret,) = of_kind(docs, "Secret")
    assert secret["metadata"]["name"] == "flywheel-characterflywheel-exporter-writer" and secret["data"]["token"]
    (pod,) = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment") if "exporter" in d["metadata"]["name"]]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "writer-token"]
    assert f"--token-file={mount['mountPath']}/token" in container["args"] and mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "writer-token"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert container["livenessProbe"]["httpGet"]["port"] == "http-metrics"
    (policy,) = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-exporter")]
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert rules.keys() == {"http", "http-metrics"} and rules["http-metrics"] is None
    assert rules["http"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": WRITER_LABEL}}]
    own = render("helm3", None, "--set", "exporter.enabled=true", "--set", "exporter.auth.existingSecret=chat-token")
    assert not of_kind(own, "Secret")
    (pod,) = [d["spec"]["template"]["spec"] for d in of_kind(own, "Deployment") if "exporter" in d["metadata"]["name"]]
    assert [v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "writer-token"] == ["chat-token"]


def _exporter_pod(docs: tuple[dict, ...]) -> dict:
    (pod,) = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment") if "exporter" in d["metadata"]["name"]]
    return pod


def test_exporter_snapshot_lives_on_a_claim_by_default() -> None:
    """A rescheduled exporter pod must find its snapshot and journal: the default is a PVC the chart creates."""
    docs = render("helm3", None, "--set", "exporter.enabled=true")
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    pod = _exporter_pod(docs)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "snapshot"]
    assert volume == {"name": "snapshot", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    (container,) = pod["containers"]
    (snapshot,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--snapshot=")]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "snapshot"]
    assert snapshot.rsplit("/", 1)[0] == mount["mountPath"]
    assert of_kind(docs, "Deployment")[-1]["spec"]["strategy"]["type"] == "Recreate"  # one pod holds the claim
    ephemeral = render("helm3", None, "--set", "exporter.enabled=true", "--set", "exporter.persistence.enabled=false")
    assert not of_kind(ephemeral, "PersistentVolumeClaim")
    assert next(v for v in _exporter_pod(ephemeral)["volumes"] if v["name"] == "snapshot")["emptyDir"]
    own = render("helm3", None, "--set", "exporter.enabled=true", "--set", "exporter.persistence.existingClaim=mine")
    assert not of_kind(own, "PersistentVolumeClaim")
    assert next(v for v in _exporter_pod(own)["volumes"] if v["name"] == "snapshot")["persistentVolumeClaim"] == {
        "claimName": "mine"}


def test_dashboard_config_map_carries_the_committed_dashboard(all_features: tuple[dict, ...]) -> None:
    (config_map,) = [c for c in of_kind(all_features, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = json.loads((CHART / "dashboards" / "characterflywheel.json").read_text())
    assert json.loads(config_map["data"]["characterflywheel.json"]) == committed


def test_optional_features_are_off_by_default(default_render: tuple[dict, ...]) -> None:
    kinds = {d["kind"] for d in default_render}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "KopfPeering", "ConfigMap"}
    assert [d["metadata"]["name"] for d in of_kind(default_render, "Deployment")] == ["flywheel-characterflywheel"]
    assert ALL_FEATURES.exists()


def test_crd_validation_catches_a_wrong_field_type() -> None:
    crd = yaml.safe_load((CHART / "crds" / "flywheelgenerations.yaml").read_text())
    doc = yaml.safe_load((ROOT / "examples" / "gen15.yaml").read_text())
    doc["spec"]["generation"] = "fifteen"
    with pytest.raises(jsonschema.ValidationError, match="fifteen"):
        _validate_against_crd(doc, crd)


@pytest.mark.parametrize("values", VALUES)
def test_notes_render_the_next_steps(values: str) -> None:
    args = [helm_binary("helm4"), "install", "flywheel", str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    if VALUES[values] is not None:
        args += ["-f", str(VALUES[values])]
    result = run(args)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -f examples/gen15.yaml" in notes and "kubectl get fwg" in notes
    assert ("/events" in notes) == (values == "all-features")


def _subcommands() -> set[str]:
    from flywheel_operator.cli import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return set(action.choices)


@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("component", ["operator", "exporter"])
def test_container_args_parse_with_the_flywheel_cli(values: str, component: str) -> None:
    """The chart and `flywheel` agree on the command line (the image's entrypoint is `flywheel`)."""
    from flywheel_operator.cli import build_parser

    if component not in _subcommands():
        pytest.skip(f"`flywheel {component}` is not registered in flywheel_operator.cli yet")
    values_file = VALUES[values]
    docs = render("helm3", None if values_file is None else str(values_file))
    pods = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    if not pods:
        pytest.skip(f"no {component} Deployment with {values} values")
    args = pods[0]["containers"][0]["args"]
    assert args[0] == component
    build_parser().parse_args(args)
