"""The emulator's upstream checks (tests/operator/upstream.py): KServe's CRD schema and webhook rules, core kinds'
schemas. The canary bodies the operator rendered before issue 14 are refused; today's pass in both modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flywheel_operator.api import ServingResources, StorageSpec
from flywheel_operator.kube import canary
from flywheel_operator.planner import DeployCanary, PromoteCanary, RollBackCanary
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.operator import upstream

BEFORE = json.loads((Path(__file__).parent / "data" / "canary-bodies-before-issue-14.json").read_text())
"""What kube/canary.py rendered before issue 14 (generation gen2, 10 %), kept to show the checks refuse it."""
PVC = StorageSpec(pvc="flywheel-artifacts")


def existing(mode: str) -> dict[str, Any]:
    """A production InferenceService as KServe left it in `mode` (annotation and status.deploymentMode)."""
    deployment_mode = canary.DEPLOYMENT_MODES[mode]
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": "hf://org/base"}}
    if mode == "standard":
        predictor["name"] = "control"
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "ml", "annotations": {upstream.DEPLOYMENT_MODE: deployment_mode}},
        "spec": {"predictor": predictor},
        "status": {"deploymentMode": deployment_mode},
    }


def test_the_standard_canary_before_issue_14_breaks_kserves_crd_and_webhook() -> None:
    body = BEFORE["standard"]["create"]
    _, problems = upstream.check_write(body, None)
    assert problems == ["spec.canary.0.predictor.model: 'name' is a required property"]
    assert "canary is only supported in Standard deployment mode" in upstream.kserve_admission(body, None)
    patched = upstream.merge_patch(existing("standard"), BEFORE["standard"]["deployPatch"])
    assert upstream.check_write(patched, existing("standard"))[1] == [
        "spec.canary.0.predictor.model: 'name' is a required property"
    ]


def test_a_cluster_defaulting_to_standard_adds_the_annotation_but_not_the_missing_name() -> None:
    stored, problems = upstream.check_write(BEFORE["standard"]["create"], None, default_mode="Standard")
    assert stored["metadata"]["annotations"] == {upstream.DEPLOYMENT_MODE: "Standard"}
    assert problems == ["spec.canary.0.predictor.model: 'name' is a required property"]


def test_checks_catch_what_the_api_server_refuses() -> None:
    body = existing("standard")
    body["spec"]["canary"] = [{"trafficPercent": 101, "predictor": {"name": "c", "model": {
        "name": "kserve-container", "modelFormat": {"name": "x"}}}}]
    assert upstream.check_write(body, None)[1] == [
        "spec.canary.0.trafficPercent: 101 is greater than the maximum of 100"]
    body["spec"]["canary"][0]["trafficPercent"] = 10
    body["spec"]["canary"][0]["predictor"]["name"] = "control"
    assert upstream.check_write(body, None)[1] == [
        'canary predictor.name "control" conflicts with stable predictor name']
    misspelt = existing("knative")
    misspelt["spec"]["predictor"]["model"]["storageURI"] = "hf://x"
    assert upstream.check_write(misspelt, None)[1] == [
        "spec.predictor.model.storageURI: unknown field (not in the CRD schema)"]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": {
        "containers": [{"name": "c", "image": "i", "gpus": 1}], "restartPolicy": "Never"}}}}
    assert "gpus" in upstream.check_write(job, None)[1][0]
    knative = upstream.merge_patch(existing("standard"), {"metadata": {"annotations": {
        upstream.DEPLOYMENT_MODE: "Knative"}}})
    assert upstream.kserve_admission(knative, existing("standard")) == [
        "update rejected: deploymentMode cannot be changed from 'Standard' to 'Knative'"]


generations = st.from_regex(r"[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,8})?", fullmatch=True)
policies = st.sampled_from(["/artifacts/g/rl/model", "s3://bucket/model", "org/model", "gs://b/m"])


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["standard", "knative"]), generation=generations, percent=st.integers(1, 50),
       candidate=policies, control=policies, created=st.booleans(), promote=st.booleans(),
       gpus=st.integers(0, 8), default_mode=st.sampled_from(["Knative", "Standard"]))
def test_every_body_the_operator_writes_passes_in_both_modes(
    mode: str, generation: str, percent: int, candidate: str, control: str, created: bool, promote: bool,
    gpus: int, default_mode: str,
) -> None:
    """Create (or patch an existing service), then promote or roll back: each write passes KServe's checks."""
    assume(candidate != control)  # a candidate is a new model (KServe refuses a rename without a model change)
    deploy = DeployCanary(inference_service="chat", mode=mode, traffic_percent=percent,  # type: ignore[arg-type]
                          candidate_policy=candidate, control_policy=control)
    if created:
        body = canary.new_inference_service(deploy, generation=generation, namespace="ml", storage=PVC,
                                            serving=ServingResources(gpus=gpus, min_replicas=1 + gpus % 3,
                                                                     max_replicas=gpus or 1))
        stored, problems = upstream.check_write(body, None, default_mode=default_mode)
        assert problems == []
        stored["status"] = {"deploymentMode": canary.DEPLOYMENT_MODES[mode]}
    else:
        stored = existing(mode)
    serving = ServingResources(gpus=gpus, min_replicas=1 + gpus % 3, max_replicas=gpus or 1,
                               service_account_name="kserve-s3")
    patch = canary.deploy_patch(deploy, generation=generation, storage=PVC, serving=serving, isvc=stored)
    new, problems = upstream.check_write(upstream.merge_patch(stored, patch), stored, default_mode=default_mode)
    assert problems == []
    new["status"] = stored["status"]
    end = (
        canary.promote_patch(PromoteCanary(inference_service="chat", mode=mode,  # type: ignore[arg-type]
                                           candidate_policy=candidate), generation=generation, storage=PVC,
                             serving=serving, isvc=new)
        if promote
        else canary.rollback_patch(RollBackCanary(inference_service="chat", mode=mode,  # type: ignore[arg-type]
                                                  control_policy=control), storage=PVC, serving=serving, isvc=new)
    )
    final, problems = upstream.check_write(upstream.merge_patch(new, end), new, default_mode=default_mode)
    assert problems == [], (promote, mode)
    assert canary.holder(final) is None


@pytest.mark.parametrize("plural", ["jobs", "configmaps", "services"])
def test_the_emulator_validates_these_core_kinds(plural: str) -> None:
    from tests.operator.cluster import VALIDATED

    assert plural in VALIDATED and "inferenceservices" in VALIDATED
