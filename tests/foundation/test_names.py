"""Derived names fit Kubernetes' limits, and URIs the storage seam cannot read are refused — by `flywheel validate`
(the API models) and by the CRD's CEL rules alike, evaluated here with a CEL interpreter (cel-python)."""

from __future__ import annotations

import re
from typing import Any

import celpy
import pytest
from flywheel_operator.api import names
from flywheel_operator.crd import crd
from flywheel_operator.planner import child_name, pipeline_steps
from flywheel_operator.validation import problems_of
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.foundation.manifests import minimal

SCHEMA = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
DNS_1035 = re.compile(names.DNS_1035)
_CEL = celpy.Environment()


def cel_accepts(rule: str, value: Any) -> bool:
    return bool(_CEL.program(_CEL.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


def crd_accepts(manifest: dict[str, Any]) -> bool:
    """The root rules of the CRD (names over metadata and spec) on a manifest."""
    return all(cel_accepts(rule["rule"], manifest) for rule in SCHEMA["x-kubernetes-validations"])


def field_rules(*path: str) -> list[str]:
    node = SCHEMA
    for part in path:
        node = node["properties"][part]
    return [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]


label = st.from_regex(r"\A[a-z]([-a-z0-9]{0,38}[a-z0-9])?\Z")


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    reward_models = draw(st.lists(label, min_size=1, max_size=4, unique=True))
    manifest = minimal(
        stages={"rewardModels": [{"name": n, "kind": "pointwise"} for n in reward_models]},
        retry={"maxAttempts": draw(st.integers(1, 10))},
        canary={"inferenceService": draw(label), "mode": draw(st.sampled_from(["standard", "knative"]))},
    )
    manifest["metadata"]["name"] = draw(label)
    return manifest


def _every_name(manifest: dict[str, Any]) -> list[str]:
    """Every child name the operator would create for the generation, for every stage and attempt."""
    from flywheel_operator.api import FlywheelGeneration

    generation = FlywheelGeneration.model_validate(manifest)
    stages = [stage for _, step in pipeline_steps(generation) for stage in step]
    attempts = range(1, generation.spec.retry.max_attempts + 1)
    return [child_name(generation.metadata.name, stage, attempt) for stage in stages for attempt in attempts]


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_a_spec_is_refused_exactly_when_a_derived_name_would_break_a_limit(manifest: dict[str, Any]) -> None:
    problems = problems_of(manifest)
    name = manifest["metadata"]["name"]
    children = [
        names.plain_child_name(name, f"reward-{m['name']}", manifest["spec"]["retry"]["maxAttempts"])
        for m in manifest["spec"]["stages"]["rewardModels"]
    ]
    canary = f"{manifest['spec']['canary']['inferenceService']}-candidate-{name}-predictor"
    too_long = any(len(c) > names.CHILD_NAME_LIMIT for c in children) or (
        manifest["spec"]["canary"]["mode"] == "standard" and len(canary) > names.NAME_LIMIT
    )
    assert bool(problems) == too_long, problems
    assert crd_accepts(manifest) == (not too_long)
    for problem in problems:
        assert problem.path.startswith(("spec.stages.rewardModels.", "spec.canary.inferenceService"))
        assert "shorten" in problem.hint
    if not problems:
        for child in _every_name(manifest):
            assert len(child) <= names.CHILD_NAME_LIMIT and DNS_1035.match(child), child


@given(
    st.from_regex(r"\A[a-z][-a-z0-9]{0,80}[a-z0-9]\Z"),
    st.from_regex(r"\A[a-z][-a-z0-9]{0,80}[a-z0-9]\Z"),
    st.integers(1, 10),
)
def test_no_child_name_exceeds_the_limits_even_unvalidated(generation: str, stage: str, attempt: int) -> None:
    name = child_name(generation, stage, attempt)
    assert len(name) <= names.CHILD_NAME_LIMIT
    assert DNS_1035.match(name) and name.endswith(f"-{attempt}")
    assert name == child_name(generation, stage, attempt)  # deterministic: creating it again is idempotent
    if len(names.plain_child_name(generation, stage, attempt)) <= names.CHILD_NAME_LIMIT:
        assert name == f"{generation}-{stage}-{attempt}"
    else:
        assert name != child_name(generation, stage + "x", attempt)


@pytest.mark.parametrize("name", ["15gen", "9", "-gen", "Gen15"])
def test_a_generation_name_must_start_with_a_letter(name: str) -> None:
    manifest = minimal()
    manifest["metadata"]["name"] = name
    (problem,) = problems_of(manifest)
    assert problem.path == "metadata.name" and "start with a lowercase letter" in problem.hint
    assert not crd_accepts(manifest)


@pytest.mark.parametrize(
    ("uri", "readable"),
    [
        ("ftp://host/logs", False),
        ("hf://org/model", False),
        ("https://host/logs.jsonl", False),
        ("s3:///no-bucket", False),
        ("pvc:///no-claim", False),
        ("s3://bucket/logs/", True),
        ("gs://bucket/logs", True),
        ("pvc://claim/logs", True),
        ("file:///data/logs", True),
        ("/data/logs", True),
        ("relative/logs.jsonl", True),
        ("sim://users", True),
    ],
)
def test_uris_the_seam_cannot_read_are_refused_with_field_and_hint(uri: str, readable: bool) -> None:
    problems = problems_of(minimal(data={"userTraffic": {"uri": uri}}))
    assert (problems == []) == readable
    if not readable:
        (problem,) = problems
        assert problem.path == "spec.data.userTraffic.uri"
        assert "s3://<bucket>/<key>" in problem.hint
    (rule,) = field_rules("spec", "data", "userTraffic", "uri")
    assert cel_accepts(rule, uri) == readable


def test_storage_uri_refuses_what_stages_cannot_write_and_names_claims_by_pvc() -> None:
    (problem,) = problems_of(minimal(resources={"storage": {"uri": "ftp://host/out"}}))
    assert problem.path == "spec.resources.storage.uri"
    (problem,) = problems_of(minimal(resources={"storage": {"uri": "pvc://claim/out"}}))
    assert "set `pvc: <claim>`" in problem.message
    assert problems_of(minimal(resources={"storage": {"uri": "s3://bucket/flywheel", "secretRef": "s3-creds",
                                                      "endpointUrl": "http://minio.storage:9000"}})) == []
    (rule,) = field_rules("spec", "resources", "storage", "uri")
    assert not cel_accepts(rule, "sim://users")


@pytest.mark.parametrize("queue", ["q" * 64, "gpu queue", "-gpu"])
def test_a_queue_name_must_be_a_label_value(queue: str) -> None:
    (problem,) = problems_of(minimal(resources={"queueName": queue}))
    assert problem.path == "spec.resources.queueName"
