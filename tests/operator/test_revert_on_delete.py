"""Revert on delete (issue 24, item 9): a generation holds the revert finalizer only while its canary is live, and
deleting it then rolls the canary back before it goes (Flagger's `revertOnDeletion`). At f9f8494 no finalizer
existed: the generation went at once and the ungated candidate kept serving its share of users."""

from __future__ import annotations

from typing import Any

import pytest
from flywheel_operator.kube.revert import FINALIZER

from tests.operator.cluster import Operator, Readings, World, eventually, generation_body, running_cluster
from tests.operator.test_canary_cluster import play_until
from tests.operator.test_uninstall import delete, stored

pytestmark = pytest.mark.slow
HOLDER = "characterflywheel.io/canary-of"
LONG_CANARY = {"minDuration": "1h", "maxDuration": "2h", "checkInterval": "1s", "readyTimeout": "60s"}


def finalizers(cluster: Any, name: str) -> list[str]:
    return ((stored(cluster, name) or {}).get("metadata") or {}).get("finalizers") or []


@pytest.mark.parametrize("mode", ["standard", "knative"])
async def test_deleting_a_generation_mid_canary_rolls_the_canary_back(mode: str) -> None:
    async with running_cluster() as cluster:  # every write checked as KServe would (the rollback's too)
        await cluster.existing_inference_service(mode)
        before = cluster.objects("inferenceservices")["chat"]["spec"]["predictor"]
        operator = Operator(cluster, Readings(lift={"gen2": 0.0}))
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2", mode=mode, canary={
                "inferenceService": "chat", "mode": mode, **LONG_CANARY}))
            world = World(cluster, mode=mode)
            assert finalizers(cluster, "gen2") == []  # no canary yet: nothing to revert, deletes at once
            await play_until(world, ["gen2"], lambda: cluster.status("gen2").get("phase") == "Observing")
            assert finalizers(cluster, "gen2") == [FINALIZER]
            isvc = cluster.objects("inferenceservices")["chat"]
            assert isvc["metadata"]["annotations"][HOLDER] == "gen2"

            await delete(cluster, "gen2")
            await eventually(lambda: stored(cluster, "gen2") is None, timeout=20)
            isvc = cluster.objects("inferenceservices")["chat"]
        finally:
            await operator.stop()
    assert HOLDER not in isvc["metadata"]["annotations"], "the InferenceService is released"
    predictor = isvc["spec"]["predictor"]
    if mode == "standard":
        assert "canary" not in isvc["spec"] and predictor == before  # stable replicas back as they were
    else:
        assert predictor["canaryTrafficPercent"] == 0  # all users back on the parent's revision
        assert predictor["model"]["storageUri"] == before["model"]["storageUri"]  # the candidate's model is off
    reasons = [event.reason for name, event in operator.events if name == "gen2"]
    assert "CanaryReverted" in reasons


async def test_the_finalizer_goes_when_the_canary_ends() -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service("standard")
        operator = Operator(cluster, Readings(lift={"gen2": 0.3}))
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2"))
            world = World(cluster)
            await play_until(world, ["gen2"], lambda: FINALIZER in finalizers(cluster, "gen2"))
            await world.run(["gen2"])
            await eventually(lambda: finalizers(cluster, "gen2") == [])
            assert cluster.status("gen2")["phase"] == "Promoted"
        finally:
            await operator.stop()
        await delete(cluster, "gen2")  # no operator: a finished generation deletes at once
        await eventually(lambda: stored(cluster, "gen2") is None, timeout=10)


async def test_a_generation_deleted_while_no_operator_runs_is_reverted_when_one_starts() -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service("standard")
        operator = Operator(cluster, Readings(lift={"gen2": 0.0}))
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2", canary={"inferenceService": "chat", **LONG_CANARY}))
            world = World(cluster)
            await play_until(world, ["gen2"], lambda: cluster.status("gen2").get("phase") == "Observing")
            await operator.stop()
            await delete(cluster, "gen2")  # the finalizer keeps it, soft-deleted, until an operator reverts it
            assert stored(cluster, "gen2") is not None and finalizers(cluster, "gen2") == [FINALIZER]
            assert cluster.objects("inferenceservices")["chat"]["spec"].get("canary")
            await operator.start()
            await eventually(lambda: stored(cluster, "gen2") is None, timeout=20)
        finally:
            await operator.stop()
        isvc = cluster.objects("inferenceservices")["chat"]
    assert "canary" not in isvc["spec"] and HOLDER not in isvc["metadata"]["annotations"]
