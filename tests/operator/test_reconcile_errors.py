"""`flywheel_reconcile_errors_total`: every reconcile that ends in an error is counted by reason, so the dashboard
panel and the FlywheelReconcileErrors alert see an operator that keeps failing (issue 28, point 7)."""

from __future__ import annotations

from typing import Any

import pytest
from flywheel_operator.kube.client import ApiError
from flywheel_operator.kube.reconciler import InvalidSpec, Reconciler
from flywheel_operator.kube.views import WatchedState
from flywheel_operator.metrics import OperatorMetrics
from prometheus_client import CollectorRegistry


class _Backend:
    """Only what a failing reconcile touches: the generation read, and the status write of a rejection."""

    def __init__(self, outcome: ApiError | dict[str, Any]) -> None:
        self.outcome = outcome
        self.writes: list[dict[str, Any]] = []
        self.view = WatchedState()  # no watch: every read is a GET

    async def get_generation(self, namespace: str, name: str) -> dict[str, Any]:
        if isinstance(self.outcome, ApiError):
            raise self.outcome
        return self.outcome

    async def write_status(self, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(new)
        return new


def _count(metrics: OperatorMetrics, namespace: str, reason: str) -> float | None:
    return metrics.registry.get_sample_value("flywheel_reconcile_errors_total",
                                             {"namespace": namespace, "reason": reason})


@pytest.mark.parametrize(
    ("outcome", "error", "reason"),
    [
        (ApiError(503, "ServiceUnavailable", "etcd leader changed"), ApiError, "api_transient"),
        (ApiError(0, "Timeout", "read timed out"), ApiError, "api_transient"),
        (ApiError(403, "Forbidden", "cannot get flywheelgenerations"), ApiError, "api_refused"),
        ({"apiVersion": "characterflywheel.io/v1alpha1", "kind": "FlywheelGeneration",
          "metadata": {"name": "gen2", "namespace": "characters", "uid": "u-1"},
          "spec": {"generation": "two"}}, InvalidSpec, "invalid_spec"),
    ],
)
async def test_each_failed_reconcile_is_counted_by_reason(outcome: Any, error: type[Exception], reason: str) -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    reconciler = Reconciler(backend=_Backend(outcome), metrics=metrics, post_event=lambda body, event: None)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(error):
            await reconciler.reconcile("characters", "gen2")
    assert _count(metrics, "characters", reason) == 2
    others = {"api_transient", "api_refused", "invalid_spec"} - {reason}
    assert all(_count(metrics, "characters", other) is None for other in others)
