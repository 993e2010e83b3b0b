"""Uninstall leaves nothing hanging: generations carry no finalizer, so they can be deleted with no operator running.

kmock's emulator keeps an object that has finalizers as soft-deleted (deletionTimestamp set) until they are
removed, as the API server does: a finalizer the operator no longer runs to remove would hang `kubectl delete`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from flywheel_operator.api import PLURAL
from flywheel_operator.kube.client import resource_path
from flywheel_operator.kube.handlers import ANNOTATION_PREFIX

from tests.operator.cluster import NAMESPACE, Cluster, Operator, Readings, eventually, generation_body, running_cluster

pytestmark = pytest.mark.slow

OLD_FINALIZER = f"{ANNOTATION_PREFIX}/operator"


def stored(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The generation as stored, soft-deleted or not; None once it is gone."""
    for (resource, _, found), obj in list(cluster.emulator.objects.items()):
        if resource.plural == PLURAL and found == name and not obj.deleted:
            return obj.raw
    return None


async def delete(cluster: Cluster, name: str) -> None:
    async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as client:
        response = await client.delete(resource_path(PLURAL, NAMESPACE, name))
    assert response.status_code in (200, 202), response.text


def series_of(operator: Operator, name: str) -> list[str]:
    return [
        sample.name
        for family in operator.metrics.registry.collect()
        for sample in family.samples
        if sample.labels.get("generation") == name
    ]


async def test_generations_delete_after_the_operator_is_gone() -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service("standard")
        operator = Operator(cluster, Readings())
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2"))
            # an older operator version left its finalizer on this one: the new operator removes it
            await cluster.apply({**generation_body("gen3"), "metadata": {
                **generation_body("gen3")["metadata"], "finalizers": [OLD_FINALIZER]}})
            await eventually(lambda: (cluster.status("gen2").get("phase") == "Curating"
                                      and cluster.status("gen3").get("phase") == "Curating"))
            await eventually(lambda: not (stored(cluster, "gen3") or {})["metadata"].get("finalizers"))
            assert not stored(cluster, "gen2")["metadata"].get("finalizers")  # the daemon runs, unfinalized
        finally:
            await operator.stop()
        # `helm uninstall` removed the operator; the running generations are deleted afterwards
        for name in ("gen2", "gen3"):
            await delete(cluster, name)
            await eventually(lambda name=name: stored(cluster, name) is None, timeout=10)


async def test_deleting_a_running_generation_ends_its_series() -> None:
    async with running_cluster() as cluster:
        await cluster.existing_inference_service("standard")
        operator = Operator(cluster, Readings())
        await operator.start()
        try:
            await cluster.apply(generation_body("gen2"))
            await eventually(lambda: cluster.status("gen2").get("phase") == "Curating")
            await eventually(lambda: series_of(operator, "gen2"))
            await delete(cluster, "gen2")
            await eventually(lambda: stored(cluster, "gen2") is None, timeout=10)
            await eventually(lambda: not series_of(operator, "gen2"), timeout=10)
        finally:
            await operator.stop()
