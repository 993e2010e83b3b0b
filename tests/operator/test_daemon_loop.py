"""The daemons' loop (kube/handlers.py `watch`): a wake-up that only the poll cap brought is a safety net and
reconciles through `safety_net` (Priority.POLL for generations); a due requeue time and a retry after an API
error reconcile as usual."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from flywheel_operator.kube import handlers
from flywheel_operator.kube.client import ApiError

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class Stopped:
    """kopf.DaemonStopped as the loop uses it: false until stopped, and awaitable."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


def test_only_the_poll_cap_makes_a_safety_net_reconcile(monkeypatch) -> None:
    monkeypatch.setattr(handlers, "TRANSIENT_DELAY", 0.001)
    calls: list[str] = []
    due: list[datetime | None] = [None]

    async def reconcile() -> Any:
        calls.append("reconcile")
        if calls.count("reconcile") == 1:
            raise ApiError(500, "InternalError", "try again")  # retried at once, not as a poll
        due[0] = None
        return "running"

    async def safety_net() -> Any:
        calls.append("safety net")
        due[0] = NOW  # the planner asks to be woken now: the next wake-up is due, not a poll
        return "done" if calls.count("safety net") == 2 else "running"

    async def main() -> None:
        stopped = Stopped()
        await asyncio.wait_for(handlers.watch(
            "test", reconcile, wake=asyncio.Event(), due=lambda: due[0], clock=lambda: NOW, stopped=stopped,  # type: ignore[arg-type]
            poll=0.001, finished=lambda result: result == "done", invalid_delay=None, safety_net=safety_net,
        ), timeout=10)

    asyncio.run(main())
    assert calls == ["safety net", "reconcile", "reconcile", "safety net"]


def test_without_a_safety_net_every_wake_up_reconciles() -> None:
    calls: list[str] = []

    async def reconcile() -> Any:
        calls.append("reconcile")
        return "done" if len(calls) == 2 else "running"

    async def main() -> None:
        await asyncio.wait_for(handlers.watch(
            "test", reconcile, wake=asyncio.Event(), due=lambda: None, clock=lambda: NOW, stopped=Stopped(),  # type: ignore[arg-type]
            poll=0.001, finished=lambda result: result == "done", invalid_delay=None,
        ), timeout=10)

    asyncio.run(main())
    assert calls == ["reconcile", "reconcile"]
