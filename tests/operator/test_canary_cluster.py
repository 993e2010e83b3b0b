"""The canary on an emulated cluster whose writes are checked like KServe's (issue 14): a new InferenceService in
each mode, the Knative bootstrap order, one canary per InferenceService, a refused write in status, and the arms'
endpoints and salt in status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.arms import assign, endpoint_for

from tests.operator.cluster import Operator, Readings, World, eventually, generation_body, running_cluster

pytestmark = pytest.mark.slow
HOLDER = "characterflywheel.io/canary-of"


@pytest.mark.parametrize("mode", ["standard", "knative"])
async def test_a_new_inference_service_is_accepted_and_publishes_sticky_arms(mode: str) -> None:
    """No production service yet, on a cluster whose KServe defaults to Knative: the operator creates one that
    KServe's CRD and webhook accept (the Standard canary needs its annotation and `model.name`), and while the
    canary is Ready the status names each arm's endpoint and the salt the chat backend hashes users with."""
    async with running_cluster() as cluster:  # fails on any write KServe would refuse
        operator = Operator(cluster, Readings(lift={"gen2": 0.3}))
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2", mode=mode, canary={
                "inferenceService": "chat", "mode": mode, "minDuration": "5s", "maxDuration": "60s",
                "checkInterval": "1s", "readyTimeout": "60s"}))
            world = World(cluster, mode=mode)
            await play_until(world, ["gen2"], lambda: _phase(cluster, "gen2") == "Observing")
            status = FlywheelGenerationStatus.model_validate(cluster.status("gen2"))
            await world.run(["gen2"])
        finally:
            await operator.stop()
    assert status.canary is not None and status.canary.routing is not None
    routing = status.canary.routing.to_wire()
    assert routing["salt"] == "flywheel/gen2/uid-gen2" and routing["trafficPercent"] == 10
    expected = (
        {"control": "http://chat-control-predictor.flywheel.svc.cluster.local",
         "treatment": "http://chat-candidate-gen2-predictor.flywheel.svc.cluster.local"}
        if mode == "standard"
        else {"control": "http://prev-chat-predictor.flywheel.example.com",
              "treatment": "http://latest-chat-predictor.flywheel.example.com"}
    )
    assert routing["endpoints"] == expected
    for user in (f"user-{i}" for i in range(200)):
        arm = assign(user, routing["salt"], 10) or "control"
        assert endpoint_for(user, routing, default="http://chat") == expected[arm]
    assert FlywheelGenerationStatus.model_validate(cluster.status("gen2")).phase == "Promoted"


async def test_knative_candidate_joins_only_after_the_parent_revision_rolled_out() -> None:
    """KServe splits only once a revision has rolled out; a candidate patched in before takes 100 %. The operator
    creates the service serving the parent (with the serving resources) and adds the candidate only after KServe
    reports `latestRolledoutRevision`."""
    async with running_cluster() as cluster:
        operator = Operator(cluster, Readings(lift={"gen2": 0.3}))
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2", mode="knative"))
            world = World(cluster, mode="knative")
            deadline = asyncio.get_running_loop().time() + 60
            while "chat" not in cluster.objects("inferenceservices"):
                assert asyncio.get_running_loop().time() < deadline, "the operator created no InferenceService"
                for job in sorted(cluster.jobs_of("gen2")):
                    if job not in world.finished:
                        world.finished.add(job)
                        await cluster.finish_job(job)
                await asyncio.sleep(0.05)
            looked = _reads_of_inference_services(cluster)
            await eventually(lambda: _reads_of_inference_services(cluster) >= looked + 3)  # three more passes
            isvc = cluster.objects("inferenceservices")["chat"]
            predictor = isvc["spec"]["predictor"]
            assert "canaryTrafficPercent" not in predictor, "the candidate waits for the parent's rollout"
            assert predictor["model"]["storageUri"] == "pvc://flywheel-artifacts/models/base"
            assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
            await cluster.kserve_rolls_out_parent("chat")
            await eventually(lambda: cluster.objects("inferenceservices")["chat"]["spec"]["predictor"].get(
                "canaryTrafficPercent") == 10)
            assert cluster.objects("inferenceservices")["chat"]["spec"]["predictor"]["model"]["storageUri"] == (
                "pvc://flywheel-artifacts/gen2/candidate")
            await world.run(["gen2"])
        finally:
            await operator.stop()


@pytest.mark.parametrize("mode", ["standard", "knative"])
async def test_a_second_generation_on_the_same_inference_service_waits_for_the_first(mode: str) -> None:
    """gen9 reaches its canary while gen2's is observed on the same service: gen9 waits (status says for whom)
    and leaves gen2's canary alone; once gen2 is rolled back, gen9 deploys, is observed and promoted."""
    async with running_cluster() as cluster:
        await cluster.existing_inference_service(mode)
        readings = Readings(lift={"gen2": 0.0, "gen9": 0.3})  # gen2 undecided until the test says otherwise
        operator = Operator(cluster, readings)
        await operator.start()
        try:
            canary = {"inferenceService": "chat", "mode": mode, "minDuration": "4s", "maxDuration": "300s",
                      "checkInterval": "1s", "readyTimeout": "60s"}
            await cluster.apply(generation_body("gen2", mode=mode, canary=canary))
            world = World(cluster, mode=mode)
            await play_until(world, ["gen2"], lambda: _phase(cluster, "gen2") == "Observing")
            await cluster.apply(generation_body("gen9", mode=mode, canary=canary))
            await play_until(world, ["gen9"], lambda: (cluster.status("gen9").get("canary") or {}).get("phase")
                             == "Waiting")
            waiting = cluster.status("gen9")["message"]
            isvc = cluster.objects("inferenceservices")["chat"]
            assert isvc["metadata"]["annotations"][HOLDER] == "gen2", "gen2's canary is left alone"
            readings.lift["gen2"] = -0.3
            await world.run(["gen2", "gen9"])
        finally:
            await operator.stop()
    assert "carries the canary of generation gen2" in waiting
    assert _phase(cluster, "gen2") == "RolledBack" and _phase(cluster, "gen9") == "Promoted"
    reasons = [event.reason for name, event in operator.events if name == "gen9"]
    assert reasons.count("CanaryWaiting") == 1 and "CanaryReady" in reasons


async def test_a_refused_write_is_reported_in_status_and_an_event() -> None:
    """The spec asks for a Standard canary on a service KServe runs in Knative mode: KServe refuses the patch
    (deploymentMode cannot change); the status says so instead of a silent retry loop."""
    async with running_cluster(allow_violations=True) as cluster:
        await cluster.existing_inference_service("knative")
        operator = Operator(cluster, Readings())
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2", mode="standard"))
            world = World(cluster, mode="standard")
            await play_until(world, ["gen2"], lambda: "refused" in (cluster.status("gen2").get("message") or ""))
        finally:
            await operator.stop()
    message = cluster.status("gen2")["message"]
    assert "InferenceService chat was refused by the API server: 422" in message
    assert "deploymentMode cannot be changed from 'Knative' to 'Standard'" in message
    assert [e for n, e in operator.events if n == "gen2" and e.reason == "ChildRefused" and e.type == "Warning"]
    assert cluster.emulator.violations


async def play_until(world: World, names: list[str], done: Callable[[], bool], *, timeout: float = 60.0) -> None:
    """Play the kubelet and KServe for `names` until `done()`; fail (not hang) when it never comes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not done():
        phases = {n: world.cluster.status(n).get("phase") for n in names}
        assert asyncio.get_running_loop().time() < deadline, f"not reached within {timeout}s; phases {phases}"
        await world.step(names)
        await asyncio.sleep(0.05)


def _reads_of_inference_services(cluster) -> int:
    return sum(n for kind, n in cluster.emulator.requests_by_kind.items() if kind.endswith("GET inferenceservices"))


def _phase(cluster, name: str) -> str | None:
    return cluster.status(name).get("phase")
