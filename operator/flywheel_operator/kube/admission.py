"""At most N reconciles at once, the waiting ones served by priority: work in flight before new work.

kopf starts a worker per object as its events arrive, so 200 generations applied in the same second become 200
reconciles on one event loop, each a handful of API round trips; a Job that finishes meanwhile waits behind all
of them before the next stage starts. Like the bounded work queue of a controller-runtime controller, the gate
keeps the loop short, and like API Priority and Fairness it lets a running generation's next stage (a Job
event, a timer) overtake the first reconcile of a generation that has not started yet.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import IntEnum

MAX_CONCURRENT_RECONCILES = 16
"""Reconciles in flight at once (`flywheel operator --max-concurrent-reconciles`): each is a few API round trips,
so a handful keeps the API server busy while a finished Job's generation never queues behind hundreds."""


class Priority(IntEnum):
    """Lower goes first."""

    PROGRESS = 0
    """A generation already under way: a child Job finished, a timer (retry, canary poll, gate check) is due."""
    ADMIT = 1
    """A generation seen for the first time, resumed after a restart, or edited."""


class Admission:
    """A priority semaphore: `slot(priority)` waits until fewer than `limit` slots are held and no waiter of a
    higher priority (or an earlier one of the same) is left, then holds one until the block exits."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the reconcile limit must be at least 1, got {limit}")
        self.limit = limit
        self.active = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        """Live waiters (a scan: for tests and debugging, not the hot path)."""
        return sum(1 for _, _, future in self._waiters if not future.done())

    @asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: Priority) -> None:
        if self.active < self.limit:  # a live waiter exists only while every slot is held: release hands it over
            self.active += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot was handed over just as the waiter was cancelled: pass it on
            raise

    def _release(self) -> None:
        """Hand the slot to the first live waiter (the count stays), or give it back."""
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self.active -= 1
