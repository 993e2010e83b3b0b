"""At most N reconciles at once, the waiting ones served by priority: work in flight before new work.

kopf starts a worker per object as its events arrive, so 200 generations applied in the same second become 200
reconciles on one event loop, each a handful of API round trips; a Job that finishes meanwhile waits behind all
of them before the next stage starts. Like the bounded work queue of a controller-runtime controller, the gate
keeps the loop short, and like API Priority and Fairness it lets a running generation's next stage (a Job
event, a timer) overtake the first reconcile of a generation that has not started yet.

Ordering the waiters is not enough under a burst: a reconcile already admitted keeps its slot for its few round
trips, and each of them goes back into the one event loop's queue behind everything else that is ready. So only a
share of the slots may be held by work that nobody waits on (`background_limit`: new, resumed or edited
generations and the daemons' safety-net polls); the rest stay for running generations, whose reconciles then
share the loop with a handful of admissions, not with sixteen (APF's seats per priority level, in small).
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

BACKGROUND_SHARE = 4
"""Of every this many slots, one may be held by background work (`Admission.background_limit`, at least 1)."""


class Priority(IntEnum):
    """Lower goes first."""

    PROGRESS = 0
    """A generation already under way: a child Job finished, a timer (retry, canary poll, gate check) is due."""
    ADMIT = 1
    """A generation seen for the first time, resumed after a restart, or edited."""
    POLL = 2
    """A daemon's safety-net look at a generation that asked for no wake-up so soon (kube/handlers.py `watch`)."""


class Admission:
    """A priority semaphore: `slot(priority)` waits until fewer than `limit` slots are held and no waiter of a
    higher priority (or an earlier one of the same) is left, then holds one until the block exits. Background
    priorities (all but PROGRESS) hold at most `background_limit` slots between them (default: a quarter of
    `limit`, at least one); a background waiter at that cap lets PROGRESS waiters behind it go first."""

    def __init__(self, limit: int, background_limit: int | None = None) -> None:
        if limit < 1:
            raise ValueError(f"the reconcile limit must be at least 1, got {limit}")
        if background_limit is None:
            background_limit = max(1, limit // BACKGROUND_SHARE)
        if not 1 <= background_limit <= limit:
            raise ValueError(f"the background limit must be between 1 and the reconcile limit {limit}, "
                             f"got {background_limit}")
        self.limit = limit
        self.background_limit = background_limit
        self.active = 0
        self.background = 0
        """Slots held by background priorities (ADMIT, POLL)."""
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
            self._release(priority)

    def _free_for(self, priority: int) -> bool:
        return self.active < self.limit and (priority == Priority.PROGRESS or self.background < self.background_limit)

    def _take(self, priority: int) -> None:
        self.active += 1
        self.background += priority != Priority.PROGRESS

    async def _acquire(self, priority: Priority) -> None:
        # A live waiter exists only while no slot is free for it (every release hands over what it frees), so a
        # slot free for this priority has no waiter of this priority or a higher one left to pass.
        if self._free_for(priority):
            self._take(priority)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(priority)  # the slot was handed over just as the waiter was cancelled: pass it on
            raise

    def _release(self, priority: int) -> None:
        """Give the slot back, then hand free slots to the first live waiters they are free for: PROGRESS ones
        always, background ones below `background_limit` (the slot stays free for PROGRESS otherwise)."""
        self.active -= 1
        self.background -= priority != Priority.PROGRESS
        while self._waiters:
            waiter_priority, _, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            if not self._free_for(waiter_priority):
                return  # the first live waiter is background work at its cap, and so is every one after it
            heapq.heappop(self._waiters)
            self._take(waiter_priority)
            future.set_result(None)
