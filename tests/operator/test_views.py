"""The watch's in-memory views (kube/views.py): kopf's indexes follow the watch events, a reconcile reads its
generation and Jobs from them instead of a GET and a list, and falls back to the API whenever a view is behind
or shows what this operator did not write; a generation converges either way (issue 29)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.kube.backend import KubernetesBackend
from flywheel_operator.kube.reconciler import Reconciler
from flywheel_operator.kube.views import StatusLedger, WatchedState
from flywheel_operator.metrics import OperatorMetrics
from hypothesis import given
from hypothesis import strategies as st

from tests.operator.cluster import NAMESPACE, Operator, Readings, World, eventually, generation_body, running_cluster

STAGES = ["curate", "reward-pointwise", "reward-pairwise", "sft", "rl", "eval"]
KEY = (NAMESPACE, "gen2")

statuses = st.dictionaries(st.sampled_from(["phase", "stage", "message"]), st.text(max_size=3), max_size=3)


# ------------------------------------------------------------------------------------------ the ledger
@given(writes=st.lists(statuses, min_size=1, max_size=8), data=st.data())
def test_a_watch_behind_by_any_number_of_own_writes_yields_the_newest(writes: list[dict[str, Any]], data) -> None:
    ledger = StatusLedger()
    seed: dict[str, Any] = {"phase": "Pending"}
    ledger.seed(KEY, "u1", seed)
    for status in writes:
        ledger.wrote(KEY, "u1", status)
    shown = data.draw(st.sampled_from([seed, *writes]), label="what the watch shows")
    assert ledger.settle(KEY, "u1", shown) == writes[-1]
    assert ledger.settle(KEY, "u1", writes[-1]) == writes[-1], "the watch catching up keeps the newest"


@given(writes=st.lists(statuses, max_size=5), foreign=statuses)
def test_a_status_nobody_here_wrote_or_another_object_means_a_fresh_read(writes, foreign) -> None:
    ledger = StatusLedger()
    ledger.seed(KEY, "u1", {"phase": "Pending"})
    for status in writes:
        ledger.wrote(KEY, "u1", status)
    if foreign in [{"phase": "Pending"}, *writes]:
        return
    assert ledger.settle(KEY, "u1", foreign) is None
    assert ledger.settle(KEY, "u1", {"phase": "Pending"}) is None, "once unknown, only a fresh read seeds it again"
    ledger.seed(KEY, "u1", {"phase": "Pending"})
    assert ledger.settle(KEY, "u2", {"phase": "Pending"}) is None, "a re-created generation is another object"
    assert ledger.settle((NAMESPACE, "never-read"), "u1", {"phase": "Curating"}) is None, "a status never read"


def test_a_watch_further_behind_than_the_limit_is_read_again() -> None:
    ledger = StatusLedger(limit=3)
    assert ledger.settle(KEY, "u1", {}) == {}, "a new generation: the watch has all of it"
    for n in range(3):
        ledger.wrote(KEY, "u1", {"n": n})
    assert ledger.settle(KEY, "u1", {}) is None, "still no status in the watch after three writes: read it"
    assert ledger.settle(KEY, "u1", {}) is None
    ledger.seed(KEY, "u1", {"n": 2})
    assert ledger.settle(KEY, "u1", {}) is None, "the watch shows no status any more: someone cleared it"
    ledger.forget(KEY)  # deleted
    assert ledger.settle(KEY, "u2", {}) == {}, "created again: a new generation"


# --------------------------------------------------------------------------- the reconciler's read
@dataclass
class CountingClient:
    """The API server's copy of one generation; counts GETs."""

    body: dict[str, Any]
    gets: int = 0
    patches: list[dict[str, Any]] = field(default_factory=list)

    async def get(self, path: str) -> dict[str, Any]:
        self.gets += 1
        return {**self.body, "status": dict(self.body.get("status") or {})}

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.patches.append(dict(body))
        self.body["status"] = {**(self.body.get("status") or {}), **body["status"]}
        return {**self.body}


async def test_the_reconciler_reads_its_own_writes_through_a_lagging_watch_and_others_with_a_get() -> None:
    stored = generation_body("gen2")
    client = CountingClient(stored)
    watched: dict[tuple[str, str], list[dict[str, Any]]] = {}
    backend = KubernetesBackend(client, view=WatchedState(generations=watched, jobs={}))  # type: ignore[arg-type]
    reconciler = Reconciler(backend=backend, metrics=OperatorMetrics(), post_event=lambda body, event: None)

    assert await reconciler._read(KEY) is not None and client.gets == 1, "not in the index yet: a GET"
    reconciler.ledger.forget(KEY)
    watched[KEY] = [{**stored, "status": {}}]  # the watch's copy, before any write of this operator
    assert (await reconciler._read(KEY))["status"] == {} and client.gets == 1, "a new generation: no GET"
    await reconciler._write_status(await reconciler._read(KEY), {}, {"phase": "Curating"})
    assert (await reconciler._read(KEY))["status"] == {"phase": "Curating"} and client.gets == 1, (
        "its own write while the watch is behind: no GET")
    watched[KEY] = [{**stored, "status": {"phase": "Curating"}}]
    assert (await reconciler._read(KEY))["status"] == {"phase": "Curating"} and client.gets == 1
    client.body["status"] = {"phase": "Curating", "message": "edited by hand"}
    watched[KEY] = [{**stored, "status": dict(client.body["status"])}]
    assert (await reconciler._read(KEY))["status"]["message"] == "edited by hand" and client.gets == 2, (
        "a status this operator did not write: a GET")
    assert (await reconciler._read(KEY))["status"]["message"] == "edited by hand" and client.gets == 2
    watched[KEY] = [{**stored, "metadata": {**stored["metadata"], "uid": "uid-recreated"}, "status": {
        "phase": "Curating"}}]
    await reconciler._read(KEY)
    assert client.gets == 3, "another object of the same name: a GET"
    reconciler.ledger.forget(KEY)  # an operator restarted: generations with a status are read once
    watched[KEY] = [{**stored, "status": dict(client.body["status"])}]
    await reconciler._read(KEY)
    await reconciler._read(KEY)
    assert client.gets == 4


# ------------------------------------------------------------------------- kopf's real event loop
def api_reads(cluster: Any, plural: str) -> int:
    """The operator's GETs (reads and lists) of `plural`, as the emulator counted them."""
    return sum(n for kind, n in cluster.emulator.requests_by_kind.items()
               if kind.split()[-1] == plural and kind.split()[0].endswith("GET"))


@pytest.mark.slow
async def test_the_indexes_follow_the_watch_and_replace_the_reads() -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service("standard")
        operator = Operator(cluster, Readings(lift={"gen2": 0.3}))
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2"))
            assert operator.reconciler is not None
            view, backend = operator.reconciler.backend.view, operator.reconciler.backend

            def indexed_jobs() -> dict[str, str]:
                return {j.observation.name: j.observation.state for j in view.jobs_of(*KEY) or []}

            await eventually(lambda: indexed_jobs() == {"gen2-curate-1": "Pending"})
            await eventually(lambda: (view.generation(*KEY) or {}).get("status") == cluster.status("gen2"))
            await cluster.finish_job("gen2-curate-1")
            await eventually(lambda: indexed_jobs().get("gen2-curate-1") == "Succeeded")
            await eventually(lambda: "gen2-reward-pointwise-1" in indexed_jobs())
            await World(cluster).run(["gen2"])
            await eventually(lambda: (view.generation(*KEY) or {}).get("status") == cluster.status("gen2"))
        finally:
            await operator.stop()

    status = FlywheelGenerationStatus.model_validate(cluster.status("gen2"))
    assert status.phase == "Promoted"
    assert [r.name for r in status.stages] == STAGES and all(r.attempts == 1 for r in status.stages)
    assert backend.index_reads >= len(STAGES), "the Jobs came from the index"
    assert operator.reconciler.cached_reads >= len(STAGES), "the generation came from the index"
    assert api_reads(cluster, "flywheelgenerations") < operator.reconciler.cached_reads
    assert api_reads(cluster, "jobs") < backend.index_reads


class LaggingView(WatchedState):
    """A watch that stays behind: the generation as first seen (its status never moves on), no Job newer than the
    first of each generation, no pod."""

    def __init__(self) -> None:
        super().__init__()
        self.first_body: dict[tuple[str, str], dict[str, Any]] = {}
        self.first_job: dict[tuple[str, str], str] = {}

    def generation(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = super().generation(namespace, name)
        if body is not None:
            body = self.first_body.setdefault((namespace, name), body)
        return None if body is None else dict(body)

    def jobs_of(self, namespace: str, name: str) -> list[Any] | None:
        jobs = super().jobs_of(namespace, name)
        if not jobs:
            return jobs
        first = self.first_job.setdefault((namespace, name), jobs[0].observation.name)
        return [job for job in jobs if job.observation.name == first]

    def first_message(self, namespace: str, child: str) -> str | None:
        return None


class LaggingOperator(Operator):
    def _reconciler(self) -> Reconciler:
        reconciler = super()._reconciler()
        reconciler.backend.view = LaggingView()
        reconciler.ledger = StatusLedger(limit=2)  # after two writes the stale status is no longer bridged
        return reconciler


@pytest.mark.slow
async def test_a_generation_converges_when_the_views_stay_behind() -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service("standard")
        operator = LaggingOperator(cluster, Readings(lift={"gen2": 0.3}))
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2"))
            await World(cluster).run(["gen2"])
        finally:
            await operator.stop()

    status = FlywheelGenerationStatus.model_validate(cluster.status("gen2"))
    assert status.phase == "Promoted"
    assert [r.name for r in status.stages] == STAGES and all(r.attempts == 1 for r in status.stages)
    assert sorted(cluster.jobs_of("gen2")) == sorted(f"gen2-{s}-1" for s in STAGES), "no Job requested twice"
    reasons = [event.reason for name, event in operator.events if name == "gen2"]
    assert "StageRequested" not in reasons, "no Job was taken as lost"
    assert api_reads(cluster, "jobs") >= len(STAGES) - 1, "Jobs the index had not seen were listed"
    assert api_reads(cluster, "pods") >= len(STAGES), "results the index had not seen were listed"
    assert api_reads(cluster, "flywheelgenerations") >= len(STAGES), "the stale status sent reads to the API"
