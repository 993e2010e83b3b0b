"""KServe admission conformance: the table (tests/schemas/kserve-admission/conformance.yaml) lists every error site of
the pinned webhook sources; each enforced rule's example is refused by the emulator with KServe's own message; the
operator's InferenceService bodies of f9f8494 are refused, today's pass (tests/operator/test_upstream.py has the
property test over every body), and the chart's ClusterServingRuntime passes the ServingRuntime webhook."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator import kserve_webhook, upstream

ROOT = Path(__file__).parent.parent.parent
PINNED = ROOT / "tests" / "schemas" / "kserve-admission"
TABLE = yaml.safe_load((PINNED / "conformance.yaml").read_text())["rules"]
AT_F9F8494 = json.loads((Path(__file__).parent / "data" / "canary-bodies-at-f9f8494.json").read_text())
"""What kube/canary.py rendered at f9f8494 (generation gen2, 10 %, parent gen1): `name` on predictor.model."""

INVENTORY = PINNED / "kserve-webhook.messages.json"
"""The error sites of the pinned webhook sources, extracted by scripts/kserve_webhook_inventory.py (data only)."""
COMMIT = "aaac4e294dae2c7b1aa1886447793f3aa1c30912"


def error_sites(inventory: Path | None = None) -> set[tuple[str, str]]:
    """(file, message) of every error site of the pinned KServe webhook sources, from the inventory."""
    data = json.loads((inventory or INVENTORY).read_text())
    files = {f["file"] for f in data["files"]}
    assert all(m["file"] in files for m in data["messages"]), "a message of a file the inventory does not pin"
    return {(m["file"], m["message"]) for m in data["messages"]}


def coverage(inventory: Path | None = None) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(sites the conformance table lacks, table rows no pinned site has)."""
    sites, listed = error_sites(inventory), {(rule["file"], rule["message"]) for rule in TABLE}
    return sites - listed, listed - sites


def pattern(message: str) -> re.Pattern[str]:
    """A Go format string as a regex over the text it produces."""
    parts = re.split(r"(%[sdqvw])", message)
    return re.compile("".join(
        {"%d": r"-?\d+", "%q": r'"(?:[^"\\]|\\.)*"'}.get(p, r".*") if re.fullmatch(r"%[sdqvw]", p) else re.escape(p)
        for p in parts
    ))


def test_the_inventory_pins_the_kserve_sources_at_the_crds_commit() -> None:
    data = json.loads(INVENTORY.read_text())
    assert data["source"] == "github.com/kserve/kserve" and data["commit"] == COMMIT
    assert {r["file"] for r in TABLE} <= {f["file"] for f in data["files"]}  # predictor.go: the implementations
    for f in data["files"]:
        assert f["path"].endswith("/" + f["file"]) and re.fullmatch(r"[0-9a-f]{64}", f["sha256"]), f
    assert len(error_sites()) > 60  # the extraction found KServe's sites


def test_the_table_lists_every_error_site_of_the_pinned_sources_and_nothing_else() -> None:
    listed = {(rule["file"], rule["message"]) for rule in TABLE}
    assert len(listed) == len(TABLE), "a site is listed twice"
    missing, stale = coverage()
    assert missing == set(), "error sites of the pinned KServe sources the conformance table does not list"
    assert stale == set(), "rows of the conformance table that no pinned source has (stale)"
    for rule in TABLE:
        assert rule["status"] in ("enforced", "not-applicable"), rule
        assert ("example" in rule) == (rule["status"] == "enforced") and ("reason" in rule) != ("example" in rule)


def test_the_completeness_check_catches_a_new_and_a_removed_upstream_message(tmp_path: Path) -> None:
    data = json.loads(INVENTORY.read_text())
    removed = data["messages"].pop(0)
    gone = [m for m in data["messages"] if (m["file"], m["message"]) == (removed["file"], removed["message"])]
    data["messages"] = [m for m in data["messages"] if m not in gone]
    data["messages"].append({"file": "component.go", "function": "extra", "line": 1, "call": "errors.New",
                             "message": "brand new rule"})
    (tmp_path / "inventory.json").write_text(json.dumps(data))
    missing, stale = coverage(tmp_path / "inventory.json")
    assert missing == {("component.go", "brand new rule")}
    assert stale == {(removed["file"], removed["message"])}


def test_the_extractor_finds_every_kind_of_error_site(tmp_path: Path) -> None:
    """scripts/kserve_webhook_inventory.py on a made-up package in kserve's layout: literals, `+` concatenations,
    package constants (from another file of the package), webhook denials and field.Invalid details, in order."""
    spec = importlib.util.spec_from_file_location("inventory", ROOT / "scripts" / "kserve_webhook_inventory.py")
    assert spec and spec.loader
    extractor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extractor)
    for path in extractor.FILES:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("package p\n")
    (tmp_path / extractor.FILES[1]).write_text('package v1beta1\n\nconst (\n\tTooBig = "%s is too big"\n)\n')
    (tmp_path / extractor.FILES[0]).write_text(
        'package v1beta1\n\nfunc check(n int) error {\n\tif n > 1 {\n\t\treturn fmt.Errorf(TooBig, n)\n\t}\n'
        '\treturn errors.New("a \\"quoted\\" " +\n\t\t"joined message")\n}\n\n'
        'func (v *Validator) Handle() admission.Response {\n'
        '\treturn admission.Denied(fmt.Sprintf("the %s is invalid", v.Name))\n}\n\n'
        'func spec() field.ErrorList {\n\treturn field.ErrorList{field.Invalid(\n\t\tfield.NewPath("spec"),\n'
        '\t\tx,\n\t\t"must be set"))}\n}\n')
    data = extractor.inventory(tmp_path, "0" * 40)
    assert [(m["function"], m["call"], m.get("constant"), m["message"]) for m in data["messages"]] == [
        ("check", "fmt.Errorf", "TooBig", "%s is too big"),
        ("check", "errors.New", None, 'a "quoted" joined message'),
        ("Validator.Handle", "admission.Denied(fmt.Sprintf)", None, "the %s is invalid"),
        ("spec", "field.Invalid", None, "must be set"),
    ]
    assert data["files"][0]["sha256"] == hashlib.sha256((tmp_path / extractor.FILES[0]).read_bytes()).hexdigest()


def base_inference_service() -> dict[str, Any]:
    """A Standard-mode InferenceService with a canary, as the operator writes it: admitted."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "ml", "annotations": {upstream.DEPLOYMENT_MODE: "Standard"}},
        "spec": {
            "predictor": {"name": "control", "minReplicas": 2, "maxReplicas": 4, "model": {
                "modelFormat": {"name": "characterflywheel-chat"}, "runtime": "characterflywheel-chat",
                "storageUri": "pvc://a/gen1"}},
            "canary": [{"trafficPercent": 10, "predictor": {"name": "candidate-gen2", "minReplicas": 1, "model": {
                "name": "kserve-container", "modelFormat": {"name": "characterflywheel-chat"},
                "runtime": "characterflywheel-chat", "storageUri": "pvc://a/gen2"}}}],
        },
        "status": {"deploymentMode": "Standard"},
    }


KSERVE_API = ("--api-versions", "serving.kserve.io/v1alpha1/ClusterServingRuntime")
"""The chart renders its runtime only where KServe's API is served."""


@pytest.fixture(scope="module")
def chart_runtime() -> dict[str, Any]:
    from tests.chart.conftest import render

    (runtime,) = [d for d in render("helm3", None, *KSERVE_API) if d["kind"] == "ClusterServingRuntime"]
    return runtime


def test_the_valid_bodies_are_admitted(chart_runtime: dict[str, Any]) -> None:
    body = base_inference_service()
    assert upstream.check_write(body, None) == (body, [])
    assert kserve_webhook.inference_service(body, copy.deepcopy(body)) == []
    assert kserve_webhook.serving_runtime(chart_runtime, []) == []
    assert kserve_webhook.serving_runtime(chart_runtime, [copy.deepcopy(chart_runtime)]) == []  # an upgrade


ENFORCED = [rule for rule in TABLE if rule["status"] == "enforced"]


@pytest.mark.parametrize("rule", ENFORCED, ids=[f"{r['check']}:{r['message'][:40]}" for r in ENFORCED])
def test_each_enforced_rule_refuses_its_example_with_kserves_message(
    rule: dict[str, Any], chart_runtime: dict[str, Any]
) -> None:
    example = rule["example"]
    if "runtime" in example:
        runtime = upstream.merge_patch(chart_runtime, example["runtime"])
        existing = [upstream.merge_patch(other, {"metadata": {"name": chart_runtime["metadata"]["name"]}})
                    if other["metadata"]["name"] == "$CHART_RUNTIME" else other for other in example["existing"]]
        problems = kserve_webhook.serving_runtime(runtime, existing)
    else:
        base = base_inference_service()
        new = upstream.merge_patch(base, example["patch"])
        old = upstream.merge_patch(base, example["old"]) if "old" in example else None
        problems = kserve_webhook.inference_service(new, old)
    assert len(problems) == 1, problems
    assert pattern(rule["message"]).search(problems[0]), (rule["message"], problems[0])


@pytest.mark.parametrize("mode", ["standard", "knative"])
def test_the_bodies_of_f9f8494_are_refused_with_kserves_message(mode: str) -> None:
    """Item 1 of issue 24: `name` on spec.predictor.model. Standard: the create and the promotion are refused;
    Knative: the create and the candidate's patch (the emulator answers them 422, so no canary ever ran)."""
    refused = "the 'name' field is not allowed in standard predictor"
    bodies = AT_F9F8494[mode]
    _, problems = upstream.check_write(bodies["create"], None)
    assert problems == [refused]
    stored = {**bodies["create"], "status": {"deploymentMode": canary_mode(mode)}}
    if mode == "knative":
        stored["spec"]["predictor"]["model"].pop("name")  # as if the create had gone through
        patched = upstream.merge_patch(stored, bodies["deployPatch"])
        assert upstream.check_write(patched, stored)[1] == [refused]
    else:
        stored["spec"]["predictor"]["model"].pop("name")
        deployed = upstream.merge_patch(stored, bodies["deployPatch"])
        assert upstream.check_write(deployed, stored)[1] == []  # a canary entry's model must be named
        promoted = upstream.merge_patch(deployed, bodies["promotePatch"])
        assert upstream.check_write(promoted, deployed)[1] == [refused]


def canary_mode(mode: str) -> str:
    return {"standard": "Standard", "knative": "Knative"}[mode]
