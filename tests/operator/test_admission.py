"""The reconcile admission gate: never more than its limit at once, waiting reconciles served by priority."""

from __future__ import annotations

import asyncio

import pytest
from flywheel_operator.kube.admission import Admission, Priority
from hypothesis import given, settings
from hypothesis import strategies as st


async def _hold(gate: Admission, release: asyncio.Event) -> None:
    async with gate.slot(Priority.ADMIT):
        await release.wait()


async def _record(gate: Admission, priority: Priority, served: list, name: object) -> None:
    async with gate.slot(priority):
        served.append(name)
        await asyncio.sleep(0)


async def _queue_behind_a_held_slot(gate: Admission, priorities: list[Priority]) -> list[int]:
    """Hold every slot, queue one waiter per priority (in order), then release: the order they were served."""
    served: list[int] = []
    release = asyncio.Event()
    holders = [asyncio.create_task(_hold(gate, release)) for _ in range(gate.limit)]
    await asyncio.sleep(0)
    waiters = []
    for index, priority in enumerate(priorities):
        waiters.append(asyncio.create_task(_record(gate, priority, served, index)))
        await asyncio.sleep(0)  # each waiter queues before the next arrives
    assert gate.waiting == len(priorities)
    release.set()
    await asyncio.gather(*holders, *waiters)
    return served


@settings(max_examples=60, deadline=None)
@given(priorities=st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=12))
def test_waiters_are_served_by_priority_then_arrival(priorities: list[Priority]) -> None:
    served = asyncio.run(_queue_behind_a_held_slot(Admission(1), priorities))
    assert served == sorted(range(len(priorities)), key=lambda i: (priorities[i], i))


@settings(max_examples=40, deadline=None)
@given(limit=st.integers(1, 6), work=st.lists(st.tuples(st.sampled_from(list(Priority)), st.integers(0, 3)),
                                              min_size=1, max_size=30))
def test_never_more_than_the_limit_in_flight_and_every_reconcile_runs(
    limit: int, work: list[tuple[Priority, int]]
) -> None:
    gate = Admission(limit)
    in_flight = 0
    peak = 0
    done = 0

    async def reconcile(priority: Priority, yields: int) -> None:
        nonlocal in_flight, peak, done
        async with gate.slot(priority):
            in_flight += 1
            peak = max(peak, in_flight)
            for _ in range(yields):
                await asyncio.sleep(0)
            in_flight -= 1
            done += 1

    async def main() -> None:
        await asyncio.gather(*(reconcile(p, y) for p, y in work))

    asyncio.run(main())
    assert peak <= limit
    assert done == len(work)
    assert gate.active == 0 and gate.waiting == 0


def test_a_cancelled_waiter_gives_its_place_away() -> None:
    async def main() -> list[str]:
        gate = Admission(1)
        served: list[str] = []
        release = asyncio.Event()
        held = asyncio.create_task(_hold(gate, release))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(_record(gate, Priority.PROGRESS, served, "cancelled"))
        later = asyncio.create_task(_record(gate, Priority.ADMIT, served, "later"))
        await asyncio.sleep(0)
        doomed.cancel()
        release.set()
        await asyncio.gather(held, later)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert gate.active == 0
        return served

    assert asyncio.run(main()) == ["later"]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0)
