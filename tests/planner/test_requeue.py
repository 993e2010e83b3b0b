"""`plan()` asks to be called again at the earliest time anything it waits for becomes due (issue 31: requeueing at
the latest wake survived the suite: a retry due in a minute would wait for a Job's five-minute visibility grace)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flywheel_operator.planner.core import JOB_VISIBILITY_GRACE

from tests.planner.harness import World, generation


@pytest.mark.parametrize("backoff", ["1m", "10m"])
def test_requeue_is_the_earliest_of_a_retry_and_a_job_not_yet_seen(backoff: str) -> None:
    """Two reward models run at once; one fails (a retry due after `backoff`) while the other's Job is not visible
    yet (requested again after the grace): the planner wakes at whichever comes first, in either order."""
    world = World(generation(resources={"maxParallelJobs": 2}, retry={"maxAttempts": 3, "backoff": backoff}))
    world.step()
    world.finish("gen2-curate-1")
    world.step()
    started_at = world.now
    assert sorted(world.running()) == ["gen2-reward-pairwise-1", "gen2-reward-pointwise-1"]
    world.finish("gen2-reward-pointwise-1", ok=False)
    del world.jobs["gen2-reward-pairwise-1"]  # requested, not yet seen by the API server's cache
    result = world.step()
    records = {r.name: r for r in result.status.stages}
    retry_at = records["reward-pointwise"].next_attempt_at
    assert records["reward-pointwise"].state == "Retrying" and records["reward-pairwise"].state == "Running"
    wakes = {retry_at, started_at + JOB_VISIBILITY_GRACE}
    assert len(wakes) == 2 and retry_at == world.now + timedelta(minutes=int(backoff[:-1]))
    assert result.requeue_at == min(wakes)
