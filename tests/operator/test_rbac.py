"""The chart's Role grants exactly what the operator calls: the requests are recorded in the emulator across
scenarios that reach every call (both canary modes, a created InferenceService, retries, multi-node stages, an
invalid spec, a refused image) and compared with the rendered Role. The stage allowlist is checked here too."""

from __future__ import annotations

import pytest
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.kube.policy import StagePolicy

from tests.chart.conftest import of_kind, render
from tests.operator.cluster import Cluster, Operator, Readings, World, eventually, generation_body, running_cluster

pytestmark = pytest.mark.slow

PEERING = {("kopf.dev", "kopfpeerings"), ("kopf.dev", "clusterkopfpeerings")}
ALLOWED = StagePolicy(images=("ghcr.io/characterflywheel/trainer:*",), service_accounts=("default", "flywheel-*"))


def chart_role() -> set[tuple[str, str, str]]:
    """(group, resource, verb) the default install's Role grants, the peering rules aside (kopf's, exercised by
    the peering tests of the chart, not in a standalone emulator run)."""
    (role,) = of_kind(render("helm3", None), "Role")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if (group, resource) not in PEERING
    }


async def run_scenarios(cluster: Cluster) -> None:
    await cluster.existing_inference_service("standard")
    readings = Readings(lift={"promoted": 0.3, "rolled-back": -0.3, "multinode": 0.3})
    operator = Operator(cluster, readings, policy=ALLOWED)
    await operator.start()
    try:
        await cluster.apply(generation_body("promoted"))  # standard mode on an existing InferenceService
        await cluster.apply(generation_body("rolled-back", mode="knative", canary={
            **generation_body("x")["spec"]["canary"], "mode": "knative", "inferenceService": "created"}))
        await cluster.apply(generation_body("multinode", resources={"gpusPerNode": 1, "nodes": 2, "cpu": "2",
                                                                      "memory": "8Gi"}))
        await cluster.apply(generation_body("invalid", retry={"maxAttempts": 0}))
        await cluster.apply(generation_body("refused", resources={"image": "docker.io/evil/miner:1"}))
        await cluster.apply(generation_body("siblings", retry={"maxAttempts": 1}, resources={
            "gpusPerNode": 1, "cpu": "2", "memory": "8Gi", "maxParallelJobs": 2}))  # a failed stage's sibling
        world = World(cluster, failing={"promoted-curate-1"})  # one retry
        await world.run(["promoted", "multinode"])
        await World(cluster, mode="knative").run(["rolled-back"])
        await World(cluster, failing={"siblings-reward-pairwise-1"}, held={"siblings-reward-pointwise-1"}).run(
            ["siblings"])
        await eventually(lambda: cluster.status("invalid").get("phase") == "Failed")
        await eventually(lambda: cluster.status("refused").get("phase") == "Failed")
        await flywheel_scenario(cluster, readings)  # creates, deletes (historyLimit) generations, writes its status
    finally:
        await operator.stop()


async def flywheel_scenario(cluster: Cluster, readings: Readings) -> None:
    from flywheel_operator.api import PLURAL
    from flywheel_operator.kube.client import resource_path

    from tests.operator.cluster import NAMESPACE
    from tests.operator.test_flywheel import flywheel_body, turn

    readings.lift.update({"fw-1": 0.3, "fw-2": -0.3})
    await cluster.api.create(resource_path("flywheels", NAMESPACE),
                             flywheel_body("fw", historyLimit=0, stopRules={"maxGenerations": 2}))
    await turn(cluster, "fw", lambda s: s.phase == "Finished" and "fw-2" not in cluster.objects(PLURAL))


async def test_the_role_grants_exactly_the_requests_the_operator_makes() -> None:
    async with running_cluster() as cluster:
        await run_scenarios(cluster)
        assert {cluster.status(n)["phase"] for n in ("promoted", "multinode")} == {"Promoted"}
        assert cluster.status("rolled-back")["phase"] == "RolledBack"
        assert "promoted-curate-2" in cluster.jobs_of("promoted") and cluster.objects("services")
        used = cluster.emulator.permissions
    granted = chart_role()
    assert used - granted == set(), "the operator calls what its Role does not grant"
    assert granted - used == set(), "the Role grants what the operator never calls"


async def test_a_stage_image_or_service_account_outside_the_allowlist_fails_with_the_field() -> None:
    async with running_cluster() as cluster:
        operator = Operator(cluster, Readings(), policy=ALLOWED)
        await operator.start()
        try:
            await cluster.apply(generation_body("image", resources={"image": "docker.io/evil/miner:1"}))
            await cluster.apply(generation_body("account", resources={"serviceAccountName": "cluster-admin-sa"}))
            await cluster.apply(generation_body("allowed", resources={"serviceAccountName": "flywheel-trainer"}))
            await eventually(lambda: all(cluster.status(n).get("phase") for n in ("image", "account", "allowed")))
            await eventually(lambda: cluster.jobs_of("allowed"))
        finally:
            await operator.stop()
        for name, field in (("image", "spec.resources.image"), ("account", "spec.resources.serviceAccountName")):
            status = FlywheelGenerationStatus.model_validate(cluster.status(name))
            assert status.phase == "Failed" and field in (status.message or "")
            assert "--allowed-" in status.decision.reasons[0]
            conditions = {c.type: c.status for c in status.conditions}
            assert conditions["Stalled"] == "True" and conditions["Finished"] == "True"
            assert not cluster.jobs_of(name), "nothing may start"


def test_an_empty_allowlist_allows_any_and_an_unset_account_is_default() -> None:
    from flywheel_operator.api import FlywheelGeneration

    def gen(**resources: object) -> FlywheelGeneration:
        return FlywheelGeneration.model_validate(generation_body("g", resources=resources))

    assert StagePolicy().problems(gen(image="docker.io/anything:1", serviceAccountName="any")) == []
    assert ALLOWED.problems(gen()) == []  # the default trainer image, the `default` account
    assert StagePolicy(service_accounts=("flywheel-*",)).problems(gen())[0].startswith(
        "spec.resources.serviceAccountName: 'default'")
