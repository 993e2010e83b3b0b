"""bench/operator.py times each Job from the finish that unblocked it: the previous step's last Job, or, under
`resources.maxParallelJobs`, the Job of its own step that freed the slot (that wait is the kubelet's, reported
apart). Checked against the real planner driven through a simulated clock with a known operator latency."""

from __future__ import annotations

import heapq
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.local.bench_modules import load_bench
from tests.planner.harness import World, generation

bench = load_bench("operator")


def _generation(rewards: int, limit: int):
    models = [{"name": f"rm{i}", "kind": "pointwise"} for i in range(rewards)]
    return generation(stages={"rewardModels": models}, resources={"maxParallelJobs": limit})


def simulate(rewards: int, limit: int, durations: list[float], latency: float):
    """The planner (tests/planner/harness.World) reconciles at every Job finish; each Job it starts is created
    `latency` seconds later and finishes its duration after that. Returns the pipeline, creation and finish
    instants, and the finish instant that triggered each creation."""
    world = World(_generation(rewards, limit))
    created: dict[str, float] = {}
    finished: dict[str, float] = {}
    trigger: dict[str, float] = {}
    pending: list[tuple[float, str]] = []

    def reconcile(at: float) -> None:
        seen = len(created)
        world.step()
        for child in world.created[seen:]:
            created[child], trigger[child] = at + latency, at
            heapq.heappush(pending, (at + latency + durations[len(created) % len(durations)], child))

    reconcile(0.0)
    while pending:
        at, child = heapq.heappop(pending)
        finished[child] = at
        world.finish(child)
        reconcile(at)
    assert world.status.offline_gate is not None, "the simulated generation did not train through"
    return bench.Pipeline.of(world.gen), created, finished, trigger


@settings(max_examples=80, deadline=None)
@given(
    rewards=st.integers(1, 4),
    limit=st.integers(1, 4),
    durations=st.lists(st.floats(0.5, 30.0), min_size=1, max_size=9),
    latency=st.floats(0.001, 0.4),
)
def test_every_handoff_is_timed_from_the_finish_that_unblocked_it(rewards, limit, durations, latency):
    pipeline, created, finished, trigger = simulate(rewards, limit, durations, latency)
    assert pipeline.limit == limit
    handoffs = bench.unblocking(pipeline, created, finished, "gen2")
    assert len(handoffs) == len(created) - 1  # every Job but curate
    for h in handoffs:
        assert abs(h.seconds - latency) < 1e-6, h
        assert abs(finished[h.after] - trigger[h.job]) < 1e-6, h  # `after` finished when the creating reconcile ran
    capacity = [h for h in handoffs if h.cause == "capacity"]
    assert len(capacity) == max(0, rewards - limit)
    reward_step = pipeline.steps[1]
    ready = finished[pipeline.steps[0][0]]
    for h in capacity:
        assert h.job in reward_step and h.after in reward_step
        # what the operator did plus what the Job waited for a slot is the whole time since its step was ready
        assert abs(h.seconds + h.capacity_wait_s - (created[h.job] - ready)) < 1e-6
        assert h.capacity_wait_s > 0
    assert all(h.capacity_wait_s == 0.0 for h in handoffs if h.cause == "dependency")


def test_a_capacity_wait_is_not_operator_latency():
    """maxParallelJobs 1, two reward models: the second is created when the first finishes, 10 s after curate."""
    pipeline = bench.Pipeline.of(_generation(2, 1))
    curate, first, second = pipeline.steps[0][0], *pipeline.steps[1]
    created = {curate: 0.0, first: 5.02, second: 15.03}
    finished = {curate: 5.0, first: 15.0, second: 16.0}
    for step in pipeline.steps[2:]:
        created[step[0]], finished[step[0]] = max(finished.values()) + 0.04, max(finished.values()) + 1.0
    by_job = {h.job: h for h in bench.unblocking(pipeline, created, finished, "gen2")}
    assert by_job[first].after == curate and by_job[first].cause == "dependency"
    assert abs(by_job[first].seconds - 0.02) < 1e-9
    assert by_job[second].after == first and by_job[second].cause == "capacity"
    assert abs(by_job[second].seconds - 0.03) < 1e-9 and abs(by_job[second].capacity_wait_s - 10.0) < 1e-9
    assert by_job[pipeline.steps[2][0]].after == second  # sft: from the later reward model
    assert all(abs(h.seconds - 0.04) < 1e-9 for job, h in by_job.items() if job not in (first, second))


def test_a_missing_finish_names_the_job():
    pipeline = bench.Pipeline.of(_generation(2, 2))
    created = {job: 0.0 for step in pipeline.steps for job in step}
    with pytest.raises(RuntimeError, match=f"no finish of Job {pipeline.steps[0][0]} was recorded"):
        bench.unblocking(pipeline, created, {}, "gen2")


def test_the_tail_profile_places_slow_handoffs_against_the_creation_burst():
    """Two generations applied at 0 and 1 s; the second's first Job is created at 8 s, so the burst ends at 8 s.
    A 2 s handoff unblocked at 6 s fell during it, a 1.5 s one at 12 s after it; every other handoff takes 0.1 s.
    The timeline counts per 5 s bin by the unblocking finish, with the operator's requests by kind."""
    pipelines = {}
    for name in ("a", "b"):
        gen = _generation(1, 1)
        gen.metadata.name = name
        pipelines[name] = bench.Pipeline.of(gen)
    clock = bench.Clock()
    clock.applied = {"a": 0.0, "b": 1.0}
    slow = {pipelines["a"].steps[1][0]: (6.0, 2.0), pipelines["b"].steps[2][0]: (12.0, 1.5)}
    for name, first in (("a", 0.5), ("b", 8.0)):
        steps = pipelines[name].steps
        clock.created[steps[0][0]] = first
        at = first
        for previous, step in itertools.pairwise(steps):
            finished, latency = slow.get(step[0], (at + 1.0, 0.1))
            clock.finished[previous[0]] = finished
            clock.created[step[0]] = at = finished + latency
        clock.finished[steps[-1][0]] = at + 1.0
    clock.requests = [(0.2, "PATCH flywheelgenerations/status"), (6.5, "POST jobs"), (6.6, "POST events"),
                      (-1.0, "POST jobs")]  # before the start: not counted
    tail = bench.tail_profile(clock.handoffs(pipelines), clock, pipelines, started=0.0)
    assert tail["over_threshold"] == 2
    assert tail["over_threshold_during_creation_burst"] == 1
    assert tail["creation_burst_s"] == 8.0
    assert tail["admission"]["count"] == 2 and abs(tail["admission"]["max_s"] - 7.0) < 1e-9
    rows = {row["t_s"]: row for row in tail["timeline"]}
    assert rows[5.0]["over"] == 1 and rows[5.0]["max_s"] == 2.0 and rows[5.0]["admissions"] == 1
    assert rows[10.0]["over"] == 1 and rows[10.0]["max_s"] == 1.5
    assert rows[0.0]["admissions"] == 1 and rows[0.0]["PATCH flywheelgenerations/status"] == 1
    assert rows[5.0]["POST jobs"] == 1 and rows[5.0]["POST events"] == 1
    assert sum(row["handoffs"] for row in tail["timeline"]) == len(clock.handoffs(pipelines))
