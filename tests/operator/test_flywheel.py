"""A Flywheel on the strict emulator with kopf's real event loop: generations follow each other, each from the
latest promoted one; a roll-back leaves the parent unchanged; K roll-backs in a row pause the Flywheel with a
condition and an Event; countFrom resumes it. Everything the Flywheel creates passes the FlywheelGeneration CRD's
schema and name rules, and its generations' children pass the emulator's upstream checks (running_cluster)."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.api.flywheel import FLYWHEEL_LABEL, WINDOW_ANNOTATION, FlywheelStatus
from flywheel_operator.crd import crd
from flywheel_operator.kube.client import resource_path

from tests.foundation.test_names import crd_accepts
from tests.operator.cluster import NAMESPACE, TERMINAL, Cluster, Operator, Readings, World, generation_body
from tests.operator.cluster import running_cluster as cluster_running

pytestmark = pytest.mark.slow

GENERATION_SCHEMA = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def flywheel_body(name: str, **spec: Any) -> dict[str, Any]:
    template = copy.deepcopy(generation_body("x")["spec"])
    for key in ("generation", "basePolicy"):
        template.pop(key)
    template["data"]["userTraffic"]["uri"] = "/artifacts/logs/user/{{ window.start }}_{{ window.end }}"
    return {
        "apiVersion": "characterflywheel.io/v1alpha1", "kind": "Flywheel",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1,
                     "resourceVersion": "1"},
        "spec": {"basePolicy": "/artifacts/models/base", "template": {"spec": template}, **spec},
    }


def generations_of(cluster: Cluster, flywheel: str) -> dict[str, dict[str, Any]]:
    return {n: g for n, g in cluster.objects("flywheelgenerations").items()
            if (g["metadata"].get("labels") or {}).get(FLYWHEEL_LABEL) == flywheel}


def flywheel_status(cluster: Cluster, name: str) -> FlywheelStatus:
    return FlywheelStatus.model_validate(cluster.objects("flywheels")[name].get("status") or {})


async def turn(cluster: Cluster, flywheel: str, until, *, timeout: float = 120.0) -> None:
    """Play kubelet and KServe for every generation the Flywheel creates until `until(status)` holds."""
    world = World(cluster)
    deadline = asyncio.get_running_loop().time() + timeout
    while not until(flywheel_status(cluster, flywheel)):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {flywheel_status(cluster, flywheel).to_wire()}")
        names = [n for n, g in generations_of(cluster, flywheel).items()
                 if (g.get("status") or {}).get("phase") not in TERMINAL]
        await world.step(names)
        await asyncio.sleep(0.02)


def check_created(cluster: Cluster, flywheel: str) -> None:
    """Each created generation passes the FlywheelGeneration CRD (schema and CEL name rules), is owned by the
    Flywheel and carries its window."""
    for name, body in generations_of(cluster, flywheel).items():
        document = {k: body[k] for k in ("apiVersion", "kind", "spec")}
        document["metadata"] = {"name": name}
        jsonschema.Draft4Validator(GENERATION_SCHEMA).validate(document)
        assert crd_accepts(document), f"{name} breaks the CRD's name rules"
        (owner,) = body["metadata"]["ownerReferences"]
        assert owner["kind"] == "Flywheel" and owner["uid"] == f"uid-{flywheel}" and owner["controller"]
        assert WINDOW_ANNOTATION in body["metadata"]["annotations"]


async def test_three_generations_with_a_roll_back_in_the_middle() -> None:
    async with cluster_running() as cluster:
        await cluster.existing_inference_service("standard")
        operator = Operator(cluster, Readings(lift={"fw-1": 0.3, "fw-2": -0.3, "fw-3": 0.3}))
        await operator.start()
        try:
            await cluster.api.create(resource_path("flywheels", NAMESPACE),
                                     flywheel_body("fw", stopRules={"maxGenerations": 3}))
            await turn(cluster, "fw", lambda s: s.phase == "Finished")
        finally:
            await operator.stop()
        generations = generations_of(cluster, "fw")
        assert sorted(generations) == ["fw-1", "fw-2", "fw-3"]  # no duplicate, no fourth
        phases = {n: FlywheelGenerationStatus.model_validate(g["status"]).phase for n, g in generations.items()}
        assert phases == {"fw-1": "Promoted", "fw-2": "RolledBack", "fw-3": "Promoted"}
        assert generations["fw-1"]["spec"]["basePolicy"] == "/artifacts/models/base"
        assert generations["fw-2"]["spec"]["parent"] == "fw-1"
        assert generations["fw-3"]["spec"]["parent"] == "fw-1", "the roll-back left the parent unchanged"
        assert [generations[n]["spec"]["generation"] for n in ("fw-1", "fw-2", "fw-3")] == [1, 2, 3]
        check_created(cluster, "fw")
        status = flywheel_status(cluster, "fw")
        assert [(e.name, e.phase, e.decision) for e in status.trajectory] == [
            ("fw-1", "Promoted", "PROMOTE"), ("fw-2", "RolledBack", "ROLL_BACK"), ("fw-3", "Promoted", "PROMOTE")]
        assert status.last_promoted == "fw-3" and status.in_flight is None
        assert status.trajectory[1].deployed_policy == status.trajectory[0].deployed_policy  # unchanged by fw-2
        assert status.trajectory[2].deployed_policy != status.trajectory[0].deployed_policy
        assert all(e.lift is not None and e.lift_interval for e in status.trajectory)
        assert next(c for c in status.conditions if c.type == "Finished").status == "True"
        events = [e.reason for name, e in operator.events if name == "fw"]
        assert events.count("GenerationStarted") == 3 and "FlywheelFinished" in events
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in operator.metrics.registry.collect() for s in family.samples}
        labels = (("event", "started"), ("flywheel", "fw"), ("namespace", NAMESPACE))
        assert samples[("flywheel_flywheel_generations_total", labels)] == 3
        assert samples[("flywheel_flywheel_decision_to_start_seconds_count", (("namespace", NAMESPACE),))] == 2


async def test_pause_after_k_roll_backs_then_resume_with_count_from() -> None:
    async with cluster_running() as cluster:
        await cluster.existing_inference_service("standard")
        operator = Operator(cluster, Readings(lift={"bad-1": -0.3, "bad-2": -0.3, "bad-3": 0.3}))
        await operator.start()
        try:
            await cluster.api.create(resource_path("flywheels", NAMESPACE),
                                     flywheel_body("bad", stopRules={"maxRollbacksInARow": 2}))
            await turn(cluster, "bad", lambda s: s.phase == "Paused")
            await asyncio.sleep(1.0)  # a few daemon polls: still paused, nothing new created
            assert sorted(generations_of(cluster, "bad")) == ["bad-1", "bad-2"]
            status = flywheel_status(cluster, "bad")
            paused = next(c for c in status.conditions if c.type == "Paused")
            assert paused.status == "True" and paused.reason == "RollBacksInARow"
            assert "countFrom: 3" in paused.message
            warnings = [e for name, e in operator.events if name == "bad" and e.reason == "FlywheelPaused"]
            assert len(warnings) == 1 and warnings[0].type == "Warning"
            # both started from the base policy: a roll-back never becomes a parent
            assert all(g["spec"].get("basePolicy") for g in generations_of(cluster, "bad").values())
            # the user fixes the cause and resumes
            await cluster.api.patch(resource_path("flywheels", NAMESPACE, "bad"),
                                    {"spec": {"stopRules": {"maxRollbacksInARow": 2, "countFrom": 3},
                                              "suspend": False}, "metadata": {"generation": 2}})
            await turn(cluster, "bad", lambda s: s.last_promoted == "bad-3")
        finally:
            await operator.stop()
        check_created(cluster, "bad")
        assert generations_of(cluster, "bad")["bad-3"]["spec"]["basePolicy"] == "/artifacts/models/base"
        paused = [s for family in operator.metrics.registry.collect() for s in family.samples
                  if s.name == "flywheel_flywheel_paused" and s.labels["flywheel"] == "bad"]
        assert [s.value for s in paused] == [0.0]


class _Client:
    """A client whose create always answers AlreadyExists (a repeated create after a restart, or a squatter)."""

    def __init__(self, existing: dict[str, Any]) -> None:
        self.existing = existing

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from flywheel_operator.kube.client import ApiError

        raise ApiError(409, "AlreadyExists", "exists")

    async def get(self, path: str) -> dict[str, Any]:
        return self.existing


@pytest.mark.parametrize(("labels", "uid", "ok"), [
    ({FLYWHEEL_LABEL: "fw"}, "uid-fw", True),     # ours, created by an earlier pass: the precondition held
    ({FLYWHEEL_LABEL: "other"}, "uid-fw", False),  # another Flywheel's
    ({}, None, False),                              # a FlywheelGeneration someone wrote by hand
    ({FLYWHEEL_LABEL: "fw"}, "uid-old", False),     # a deleted and re-created Flywheel's leftover
])
async def test_already_exists_is_success_only_for_this_flywheels_generation(labels, uid, ok) -> None:
    from flywheel_operator.api.flywheel import Flywheel
    from flywheel_operator.kube.client import ApiError
    from flywheel_operator.kube.flywheel import FlywheelReconciler
    from flywheel_operator.planner.flywheel import plan_flywheel

    flywheel = Flywheel.model_validate(flywheel_body("fw"))
    (create,) = plan_flywheel(flywheel, [], datetime(2026, 12, 1, tzinfo=UTC)).actions
    existing = {"metadata": {"name": "fw-1", "labels": labels,
                             "ownerReferences": [{"kind": "Flywheel", "uid": uid}] if uid else []}}
    backend = type("Backend", (), {"client": _Client(existing)})()
    reconciler = FlywheelReconciler(generations=type("Reconciler", (), {"backend": backend})())
    if ok:
        await reconciler._act(NAMESPACE, flywheel, create)
    else:
        with pytest.raises(ApiError, match="does not belong to Flywheel fw"):
            await reconciler._act(NAMESPACE, flywheel, create)
