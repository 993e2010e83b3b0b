"""A generation that ends stops what it still runs (issue 24, item 12): its sibling Jobs are deleted through the
emulated API server (with the `delete` verb the chart's Role grants), so a failed reward model's siblings stop
holding GPUs."""

from __future__ import annotations

import pytest

from tests.operator.cluster import Operator, Readings, World, generation_body, running_cluster

pytestmark = pytest.mark.slow


async def test_a_failed_stage_deletes_its_running_sibling_jobs() -> None:
    async with running_cluster() as cluster:
        operator = Operator(cluster, Readings())
        await operator.start()
        try:
            await cluster.apply(generation_body(
                "siblings", retry={"maxAttempts": 1, "backoff": "1s"},
                resources={"gpusPerNode": 1, "cpu": "2", "memory": "8Gi", "maxParallelJobs": 2}))
            # pairwise fails for good while pointwise still trains
            world = World(cluster, failing={"siblings-reward-pairwise-1"}, held={"siblings-reward-pointwise-1"})
            await world.run(["siblings"])
        finally:
            await operator.stop()
        status = cluster.status("siblings")
        assert status["phase"] == "Failed"
        assert "siblings-reward-pointwise-1" not in cluster.jobs_of("siblings")  # deleted
        assert set(cluster.jobs_of("siblings")) == {"siblings-curate-1", "siblings-reward-pairwise-1"}
