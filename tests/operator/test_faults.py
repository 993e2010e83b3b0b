"""Faults: the operator killed and restarted throughout a generation, and API errors on 10 % of its requests.

The counts (restarts, injected faults) are printed for the closing report (`pytest -s`) and asserted as
minimums, so a test that silently stopped injecting would fail.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from flywheel_operator.api import FlywheelGenerationStatus

from tests.operator.cluster import (
    TERMINAL,
    Cluster,
    Operator,
    Readings,
    World,
    generation_body,
    operator_settings,
    running_cluster,
)

pytestmark = pytest.mark.slow

STAGES = ["curate", "reward-pointwise", "reward-pairwise", "sft", "rl", "eval"]


def snapshot(cluster: Cluster, name: str) -> tuple[str, dict[str, str], int]:
    """(phase, stage -> state, readings) of the generation: what must never go backwards."""
    status = cluster.status(name)
    stages = {s["name"]: s["state"] for s in status.get("stages") or []}
    return status.get("phase") or "", stages, len((status.get("online") or {}).get("readings") or [])


def never_lost(before: tuple[str, dict[str, str], int], after: tuple[str, dict[str, str], int]) -> list[str]:
    problems = []
    for stage, state in before[1].items():
        if stage not in after[1]:
            problems.append(f"stage {stage} vanished from status")
        elif state == "Succeeded" and after[1][stage] != "Succeeded":
            problems.append(f"stage {stage} went from Succeeded to {after[1][stage]}")
    if after[2] < before[2] and after[0] not in TERMINAL:
        problems.append(f"online readings went from {before[2]} to {after[2]}")
    return problems


@pytest.mark.parametrize("mode", ["standard", "knative"])
async def test_restarts_at_every_point_keep_one_job_per_stage_and_the_decision(mode: str) -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service(mode)
        operator = Operator(cluster, Readings(lift={"gen2": 0.3}))
        kills_after_create: list[str] = []

        def kill_after_job_create(request: Any) -> None:
            """A crash between creating a Job and writing the status that records it (the hardest point)."""
            name = (request.data or {}).get("metadata", {}).get("name", "")
            if request.resource.plural == "jobs" and operator._task is not None and len(kills_after_create) < 3:
                kills_after_create.append(name)
                with contextlib.suppress(RuntimeError):  # the loop may be closing already
                    operator._loop.call_soon_threadsafe(operator._task.cancel)

        cluster.emulator.on_create = kill_after_job_create
        world = World(cluster, mode=mode)
        problems: list[str] = []
        await operator.start()
        canary = {"inferenceService": "chat", "mode": mode, "minDuration": "6s", "maxDuration": "60s",
                  "checkInterval": "1s"}  # several readings, so restarts land in the observation phase too
        await cluster.apply(generation_body("gen2", mode=mode, canary=canary))
        restarts = 0
        try:
            for _ in range(60):
                before = snapshot(cluster, "gen2")
                if before[0] in TERMINAL:
                    break
                await _until_progress(cluster, before)
                await operator.stop(abrupt=restarts % 2 == 0)
                await world.step(["gen2"])  # the world moves on while the operator is down
                await operator.start()
                restarts += 1
                problems += never_lost(before, snapshot(cluster, "gen2"))
            await world.run(["gen2"], timeout=60)
        finally:
            await operator.stop()
        status = FlywheelGenerationStatus.model_validate(cluster.status("gen2"))
        print(f"\n[faults] mode={mode}: {restarts} restarts ({len(kills_after_create)} right after a Job create), "
              f"phase {status.phase}, jobs {len(cluster.jobs_of('gen2'))}")
        assert restarts >= 10
        assert kills_after_create, "the crash between Job creation and status write was exercised"
        assert problems == []
        assert status.phase == "Promoted" and status.decision is not None and status.decision.outcome == "PROMOTE"
        assert sorted(cluster.jobs_of("gen2")) == sorted(f"gen2-{s}-1" for s in STAGES), "no duplicate Job"
        assert all(r.attempts == 1 and r.state == "Succeeded" for r in status.stages)


async def _until_progress(cluster: Cluster, before: tuple[str, dict[str, str], int], timeout: float = 5.0) -> None:
    """Wait until the status or the set of Jobs moved (or a short while passed: restarting idle is a point too)."""
    jobs = set(cluster.jobs_of("gen2"))
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if snapshot(cluster, "gen2") != before or set(cluster.jobs_of("gen2")) != jobs:
            return
        await asyncio.sleep(0.02)


async def test_api_errors_on_ten_percent_of_requests_do_not_stop_generations() -> None:
    names = ["gen2", "gen3"]

    def settings() -> Any:
        s = operator_settings()
        s.networking.request_timeout = 0.6
        return s

    async with running_cluster(fault_rate=0.1, delay=1.0, seed=7) as cluster:
        operator = Operator(cluster, Readings(lift={"gen2": 0.3, "gen3": -0.3}), client_timeout=0.6,
                            settings=settings)
        await operator.start()
        try:
            for name in names:  # one production InferenceService per generation: canaries never share one
                canary = {"inferenceService": f"chat-{name}", "minDuration": "1s", "maxDuration": "60s",
                          "checkInterval": "1s"}
                await cluster.existing_inference_service("standard", f"chat-{name}")
                await cluster.apply(generation_body(name, canary=canary))
            await World(cluster).run(names, timeout=120)
        finally:
            await operator.stop()
        faults = cluster.emulator.faults
        total = cluster.emulator.requests
        print(f"\n[faults] {sum(faults.values())} of {total} operator requests failed ({faults}); "
              f"gen2 {cluster.status('gen2')['phase']}, gen3 {cluster.status('gen3')['phase']}")
        assert sum(faults.values()) >= 10 and min(faults.values()) >= 1
        assert 0.05 <= sum(faults.values()) / total <= 0.15
        assert cluster.status("gen2")["phase"] == "Promoted", cluster.status("gen2").get("message")
        assert cluster.status("gen3")["phase"] == "RolledBack"
        for name in names:
            assert sorted(cluster.jobs_of(name)) == sorted(f"{name}-{s}-1" for s in STAGES), "no duplicate Job"
