"""kopf's real event loop against kmock's emulator: a generation walks every stage to Promoted or RolledBack.

The test plays the kubelet (finishing stage Jobs with the result in the termination message) and KServe
(rolling out the canary); the Prometheus reading is the seam `Readings` (the gate's own tests cover PromQL).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.kube.manifests import CHILD_LABEL

from tests.operator.cluster import NAMESPACE, Operator, Readings, World, generation_body, running_cluster

pytestmark = pytest.mark.slow

MODEL = {"modelFormat": {"name": "characterflywheel-chat"}, "runtime": "characterflywheel-chat"}
"""The model of every stable predictor the operator writes: the chart's ChatPredictor runtime (no `name`: KServe's
webhook refuses one there)."""
STAGES = ["curate", "reward-pointwise", "reward-pairwise", "sft", "rl", "eval"]


@pytest.mark.parametrize("mode", ["standard", "knative"])
@pytest.mark.parametrize(
    ("lift", "phase", "outcome"), [(0.3, "Promoted", "PROMOTE"), (-0.3, "RolledBack", "ROLL_BACK")]
)
async def test_generation_walks_every_stage_to_its_decision(mode: str, lift: float, phase: str, outcome: str) -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service(mode)
        readings = Readings(lift={"gen2": lift})
        operator = Operator(cluster, readings)
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2", mode=mode))
            await World(cluster, mode=mode).run(["gen2"])
        finally:
            await operator.stop()

        status = FlywheelGenerationStatus.model_validate(cluster.status("gen2"))
        assert status.phase == phase
        assert status.decision is not None and status.decision.outcome == outcome
        assert [r.name for r in status.stages] == STAGES
        assert all(r.state == "Succeeded" and r.attempts == 1 for r in status.stages)
        assert sorted(cluster.jobs_of("gen2")) == sorted(f"gen2-{s}-1" for s in STAGES)
        assert status.online is not None and status.online.readings, "every reading is recorded in status"
        assert status.online.decision is not None and status.online.decision.outcome == outcome
        assert status.canary is not None and status.canary.mode == mode
        assert status.canary.revisions, "revisions seen at readiness are recorded"
        conditions = {c.type: c.status for c in status.conditions}
        assert conditions["Promoted"] == ("True" if outcome == "PROMOTE" else "False")
        assert conditions["Finished"] == "True"  # `kubectl wait --for=condition=Finished` returns on both

        isvc = cluster.objects("inferenceservices")["chat"]
        candidate = "pvc://flywheel-artifacts/gen2/candidate"
        parent = "pvc://flywheel-artifacts/models/base"
        if mode == "standard":
            assert "canary" not in isvc["spec"]
            predictor = isvc["spec"]["predictor"]
            if outcome == "PROMOTE":
                assert predictor == {"name": "candidate-gen2",
                                     "model": {**MODEL, "storageUri": candidate}}
            else:
                assert predictor == {"name": "control",
                                     "model": {"modelFormat": {"name": "huggingface"}, "storageUri": parent}}
            assert status.canary.revisions == {"predictor": "control", "canary": "candidate-gen2"}
        else:
            predictor = isvc["spec"]["predictor"]
            if outcome == "PROMOTE":
                assert predictor["model"] == {**MODEL, "storageUri": candidate}
                assert "canaryTrafficPercent" not in predictor
            else:  # the rejected model is off the predictor: its revision has no route, Knative removes its pods
                assert predictor["model"] == {**MODEL, "storageUri": parent}
                assert predictor["canaryTrafficPercent"] == 0 and predictor["minReplicas"] == 0
            assert status.canary.revisions["latestReadyRevision"] == "chat-predictor-00002"
            assert status.canary.revisions["previousRolledoutRevision"] == "chat-predictor-00001"

        assert "characterflywheel.io/canary-of" not in isvc["metadata"]["annotations"], "the service is released"
        assert status.canary.routing is not None and status.canary.routing.endpoints == {}, "arms end with the test"

        reasons = [event.reason for name, event in operator.events if name == "gen2"]
        assert reasons.count("StageStarted") == len(STAGES)
        assert reasons.count("StageSucceeded") == len(STAGES)
        assert {"OfflineGate", "CanaryDeploying", "CanaryReady", "Promoted" if lift > 0 else "RolledBack"} <= set(
            reasons
        )
        posted = {e.get("reason") for e in cluster.objects("events").values()
                  if e.get("involvedObject", {}).get("name") == "gen2"}
        assert "StageStarted" in posted, "plan events reach the API server as Kubernetes Events"
        assert readings.calls >= 1


async def _inference_service_in_canary(mode: str, body: dict[str, Any]) -> dict[str, Any]:
    """The production InferenceService once generation gen2 (`body`) has reached Canary in KServe `mode`."""
    async with running_cluster() as cluster:
        await cluster.existing_inference_service(mode)
        operator = Operator(cluster, Readings(lift={"gen2": 0.0}))
        await operator.start()
        try:
            await cluster.apply(body)
            world = World(cluster, mode=mode)
            while cluster.status("gen2").get("phase") != "Canary":
                await world.step(["gen2"])
                await _tick()
            return cluster.objects("inferenceservices")["chat"]
        finally:
            await operator.stop()


async def test_standard_canary_body_while_observing() -> None:
    """The InferenceService while the canary serves 10 %: the control predictor's model untouched and its least
    replicas raised by the canary's (KServe takes them back out once the canary is ready), one canary entry with
    fixed replicas sized to the stable predictor's peak times 10 %."""
    isvc = await _inference_service_in_canary("standard", generation_body("gen2", mode="standard", canary={
        "inferenceService": "chat", "mode": "standard", "trafficPercent": 10, "minDuration": "1s",
        "maxDuration": "60s", "checkInterval": "1s"}))
    assert isvc["spec"]["predictor"] == {
        "name": "control",
        "minReplicas": 2,
        "model": {"modelFormat": {"name": "huggingface"}, "storageUri": "pvc://flywheel-artifacts/models/base"},
    }
    assert isvc["spec"]["canary"] == [{
        "trafficPercent": 10,
        "predictor": {"name": "candidate-gen2", "minReplicas": 1,
                      "model": {"name": "kserve-container", **MODEL,
                                "storageUri": "pvc://flywheel-artifacts/gen2/candidate"}},
    }]
    assert isvc["metadata"]["annotations"] == {
        "serving.kserve.io/deploymentMode": "Standard", "characterflywheel.io/canary-of": "gen2",
        "characterflywheel.io/stable-replicas": '{"maxReplicas": null, "minReplicas": null}'}


async def test_knative_canary_body_while_observing() -> None:
    isvc = await _inference_service_in_canary("knative", generation_body("gen2", mode="knative"))
    assert isvc["spec"]["predictor"] == {
        "canaryTrafficPercent": 10,
        "model": {**MODEL, "storageUri": "pvc://flywheel-artifacts/gen2/candidate"},
    }
    assert isvc["metadata"]["annotations"] == {
        "serving.kserve.io/deploymentMode": "Knative", "serving.kserve.io/enable-tag-routing": "true",
        "characterflywheel.io/canary-of": "gen2"}


async def test_failed_job_is_retried_and_child_generation_starts_from_promoted_parent() -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service("standard")
        operator = Operator(cluster, Readings(lift={"gen2": 0.3, "gen3": 0.3}))
        await operator.start()
        try:
            await cluster.apply(generation_body("gen3", parent="gen2"))
            await cluster.apply(generation_body("gen2"))
            world = World(cluster, failing={"gen2-sft-1"})
            await world.run(["gen2", "gen3"], timeout=90)
        finally:
            await operator.stop()
        gen2 = FlywheelGenerationStatus.model_validate(cluster.status("gen2"))
        gen3 = FlywheelGenerationStatus.model_validate(cluster.status("gen3"))
        sft = gen2.record("sft")
        assert sft is not None and sft.attempts == 2 and sft.child == "gen2-sft-2"
        assert "gen2-sft-1" in cluster.jobs_of("gen2") and "gen2-sft-2" in cluster.jobs_of("gen2")
        assert gen2.phase == "Promoted" and gen2.promoted_policy == "/artifacts/gen2/candidate"
        assert gen3.policy == gen2.promoted_policy, "the child starts from its parent's promoted policy"
        assert gen3.phase == "Promoted"
        reasons = [event.reason for name, event in operator.events if name == "gen2"]
        assert "StageRetrying" in reasons


async def test_children_are_owned_labelled_and_restricted() -> None:
    async with running_cluster() as cluster:
        operator = Operator(cluster, Readings())
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2"))
            while "gen2-curate-1" not in cluster.objects("jobs"):
                await _tick()
        finally:
            await operator.stop()
        job = cluster.objects("jobs")["gen2-curate-1"]
        config = cluster.objects("configmaps")["gen2-curate-1"]
        for child in (job, config):
            assert child["metadata"]["ownerReferences"] == [{
                "apiVersion": "characterflywheel.io/v1alpha1", "kind": "FlywheelGeneration", "name": "gen2",
                "uid": "uid-gen2", "controller": True, "blockOwnerDeletion": True}]
            assert child["metadata"]["namespace"] == NAMESPACE
        pod = job["spec"]["template"]
        assert pod["metadata"]["labels"][CHILD_LABEL] == "gen2-curate-1"
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


async def test_invalid_spec_fails_with_condition_and_event() -> None:
    async with running_cluster() as cluster:
        operator = Operator(cluster, Readings())
        await operator.start()
        try:
            body = generation_body("bad")
            body["spec"]["canary"]["minDuration"] = "90s"
            body["spec"]["canary"]["maxDuration"] = "60s"
            await cluster.apply(body)
            while cluster.status("bad").get("phase") != "Failed":
                await _tick()
            for _ in range(20):  # kopf gives up on the handler (PermanentError): no Job ever appears
                await _tick()
        finally:
            await operator.stop()
        status = cluster.status("bad")
        assert "minDuration" in status["message"]
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
        assert not cluster.jobs_of("bad")
        assert [e.reason for n, e in operator.events if n == "bad"] == ["InvalidSpec"]


async def _tick() -> None:
    await asyncio.sleep(0.05)
