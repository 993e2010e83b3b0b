"""Serving capacity and identity of the canaries the operator writes (issue 24, items 7 and 13).

Standard mode: KServe runs a canary with fixed replicas (its webhook refuses autoscaling there), by default
ceil(stable minReplicas × share): sized for the quietest hour while the chat backend sends the canary its share of
users at every hour. The operator sizes it from the stable predictor's peak and raises the stable predictor by as
much, so that KServe taking the canary's replicas out of it leaves the stable predictor its own. KServe's sizing
and its stable-predictor adjustment are restated from its controller (pkg/controller/v1beta1/inferenceservice/
components/predictor.go: canaryReplicaCount, adjustStableMinReplicasForCanaries).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from flywheel_operator.api import ServingResources, StorageSpec
from flywheel_operator.kube import canary
from flywheel_operator.kube.policy import StagePolicy
from flywheel_operator.planner import DeployCanary, PromoteCanary, RollBackCanary
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.operator import kserve_webhook, upstream
from tests.planner.harness import generation

PVC = StorageSpec(pvc="flywheel-artifacts")


def deploy(mode: str, percent: int) -> DeployCanary:
    return DeployCanary(inference_service="chat", mode=mode, traffic_percent=percent,  # type: ignore[arg-type]
                        candidate_policy="/artifacts/gen2/rl/model", control_policy="/artifacts/gen1/rl/model")


def existing_standard(least: int | None, most: int | None) -> dict[str, Any]:
    predictor: dict[str, Any] = {"name": "control", "model": {
        "modelFormat": {"name": "characterflywheel-chat"}, "storageUri": "pvc://flywheel-artifacts/gen1/rl/model"}}
    if least is not None:
        predictor["minReplicas"] = least
    if most is not None:
        predictor["maxReplicas"] = most
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "ml", "annotations": {upstream.DEPLOYMENT_MODE: "Standard"}},
        "spec": {"predictor": predictor}, "status": {"deploymentMode": "Standard"},
    }


def kserve_runs(isvc: dict[str, Any]) -> tuple[int, int]:
    """(stable least replicas, canary replicas) once KServe reports the canary ready."""
    entry = isvc["spec"]["canary"][0]
    count = kserve_webhook.canary_replicas(isvc, entry)
    least = isvc["spec"]["predictor"].get("minReplicas")
    least = 1 if least is None else least
    return max(least - count, 1), count


@settings(max_examples=80, deadline=None)
@given(least=st.one_of(st.none(), st.integers(1, 12)), most=st.one_of(st.none(), st.integers(0, 40)),
       percent=st.integers(1, 50), retried=st.booleans(), promote=st.booleans())
def test_a_standard_canary_gets_its_share_of_the_stable_peak_and_the_stable_predictor_keeps_its_own(
    least: int | None, most: int | None, percent: int, retried: bool, promote: bool
) -> None:
    """Item 7 of issue 24. At f9f8494 the canary entry carried no replicas: KServe ran ceil(min × share)."""
    stable = existing_standard(least, most)
    assume(upstream.check_write(stable, None)[1] == [])  # what KServe admitted before the canary
    own_least = 1 if least is None else least
    peak = max(own_least, most or 0)
    patch = canary.deploy_patch(deploy("standard", percent), generation="gen2", storage=PVC, isvc=stable)
    deployed, problems = upstream.check_write(upstream.merge_patch(stable, patch), stable)
    assert problems == []
    if retried:  # a lost answer: the same patch again on what was stored must not raise the stable twice
        patch = canary.deploy_patch(deploy("standard", percent), generation="gen2", storage=PVC, isvc=deployed)
        deployed, problems = upstream.check_write(upstream.merge_patch(deployed, patch), deployed)
        assert problems == []
    stable_runs, canary_runs = kserve_runs(deployed)
    assert canary_runs == max(1, math.ceil(peak * percent / 100))
    assert stable_runs == own_least
    end = (canary.promote_patch(PromoteCanary(inference_service="chat", mode="standard",  # type: ignore[arg-type]
                                              candidate_policy="/artifacts/gen2/rl/model"),
                                generation="gen2", storage=PVC, isvc=deployed) if promote
           else canary.rollback_patch(RollBackCanary(inference_service="chat", mode="standard",  # type: ignore[arg-type]
                                                     control_policy="/artifacts/gen1/rl/model"), isvc=deployed))
    final, problems = upstream.check_write(upstream.merge_patch(deployed, end), deployed)
    assert problems == []
    for key, value in (("minReplicas", least), ("maxReplicas", most)):
        assert final["spec"]["predictor"].get(key) == value
    assert canary.STABLE_REPLICAS_ANNOTATION not in final["metadata"]["annotations"]


@pytest.mark.parametrize("least, most, percent, expected", [(1, 1, 10, (2, 1)), (2, 20, 10, (4, 2)),
                                                            (1, 10, 50, (6, 5))])
def test_a_created_standard_service_starts_raised_by_the_canary(
    least: int, most: int, percent: int, expected: tuple[int, int]
) -> None:
    serving = ServingResources(min_replicas=least, max_replicas=most)
    body = canary.new_inference_service(deploy("standard", percent), generation="gen2", namespace="ml", storage=PVC,
                                        serving=serving)
    assert upstream.check_write(body, None)[1] == []
    assert (body["spec"]["predictor"]["minReplicas"], body["spec"]["canary"][0]["predictor"]["minReplicas"]) == (
        expected)
    assert kserve_runs(body) == (least, expected[1])


def test_a_created_knative_service_autoscales_every_revision_between_the_replicas() -> None:
    serving = ServingResources(min_replicas=1, max_replicas=8)
    body = canary.new_inference_service(deploy("knative", 10), generation="gen2", namespace="ml", storage=PVC,
                                        serving=serving)
    assert upstream.check_write(body, None)[1] == []
    assert (body["spec"]["predictor"]["minReplicas"], body["spec"]["predictor"]["maxReplicas"]) == (1, 8)


def test_the_serving_account_defaults_to_the_stages_and_is_on_every_predictor_the_candidate_runs_in() -> None:
    """Item 13 of issue 24: at f9f8494 no predictor had a ServiceAccount, so KServe's storage initializer had no
    credentials for an s3:// model."""
    stages = generation(resources={"serviceAccountName": "flywheel-trainer"})
    assert canary.serving_of(stages.spec).service_account_name == "flywheel-trainer"
    own = generation(resources={"serviceAccountName": "flywheel-trainer"},
                     canary={"inferenceService": "chat", "serving": {"serviceAccountName": "kserve-s3"}})
    serving = canary.serving_of(own.spec)
    assert serving.service_account_name == "kserve-s3"
    assert canary.serving_of(generation().spec).service_account_name is None  # the namespace's default
    created = canary.new_inference_service(deploy("standard", 10), generation="gen2", namespace="ml", storage=PVC,
                                           serving=serving)
    assert created["spec"]["predictor"]["serviceAccountName"] == "kserve-s3"
    assert created["spec"]["canary"][0]["predictor"]["serviceAccountName"] == "kserve-s3"
    patched = canary.deploy_patch(deploy("standard", 10), generation="gen2", storage=PVC, serving=serving,
                                  isvc=existing_standard(None, None))
    assert patched["spec"]["canary"][0]["predictor"]["serviceAccountName"] == "kserve-s3"
    knative = canary.deploy_patch(deploy("knative", 10), generation="gen2", storage=PVC, serving=serving)
    assert knative["spec"]["predictor"]["serviceAccountName"] == "kserve-s3"
    assert upstream.check_write(created, None)[1] == []


def test_a_serving_account_outside_the_operators_allowlist_is_refused_with_the_field() -> None:
    spec = generation(resources={"serviceAccountName": "flywheel-trainer"},
                      canary={"inferenceService": "chat", "serving": {"serviceAccountName": "cluster-admin"}})
    problems = StagePolicy(service_accounts=("flywheel-*",)).problems(spec)
    assert problems == [
        "spec.canary.serving.serviceAccountName: 'cluster-admin' is not allowed by this operator "
        "(--allowed-service-account flywheel-*); use an allowed ServiceAccount, or ask the cluster admin to allow it"]
