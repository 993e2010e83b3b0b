"""Per-arm statistics of the simulator's events, folded by the engagement exporter's own store.

The simulator emits exactly what a chat app would POST to `flywheel exporter` (docs/metrics.md), so the
gate sees simulated and real traffic the same way; folding them here with the exporter's store gives the
per-arm sufficient statistics the online gate reads, without a server (tests, benchmarks, reports).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from flywheel_operator.api import ArmStats
from flywheel_operator.gate.events import parse_event
from flywheel_operator.gate.store import DEFAULT_ENGAGED_MIN_DAYS, EngagementStore


def arm_stats(
    events: Iterable[Mapping[str, Any]], generation: str, *, engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS
) -> tuple[ArmStats | None, ArmStats | None]:
    """(control, treatment) sufficient statistics of `generation`'s experiment; None for an arm without users.
    A user is engaged when active on at least `engaged_min_days` distinct days (the exporter's default).

    Raises ValueError naming the event when an event breaks the exporter's schema or its rules (sticky arms,
    exposure before engagement).
    """
    parsed = [parse_event(json.dumps(dict(e))) for e in events]
    store = EngagementStore(engaged_min_days=engaged_min_days)
    errors = store.check(parsed)
    if errors:
        raise ValueError("events the exporter would reject: " + "; ".join(errors[:5]))
    for event in parsed:
        store.apply(event)
    return store.arm_stats(generation)
