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


def test_background_work_holds_at_most_its_share_of_the_slots() -> None:
    assert Admission(16).background_limit == 4
    assert Admission(3).background_limit == 1
    assert Admission(16, background_limit=16).background_limit == 16
    for wrong in (0, 17):
        with pytest.raises(ValueError, match="background limit must be between 1 and the reconcile limit 16"):
            Admission(16, background_limit=wrong)


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(1, 6), share=st.integers(1, 6), work=st.lists(
    st.tuples(st.sampled_from(list(Priority)), st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=30))
def test_background_reconciles_never_hold_more_than_their_limit_and_every_reconcile_runs(
    limit: int, share: int, work: list[tuple[Priority, int, int]]
) -> None:
    """Reconciles of every priority arrive over time (a few loop turns apart) and hold their slot a few turns:
    at no moment are more than `limit` in flight or more than `background_limit` of ADMIT and POLL."""
    gate = Admission(limit, background_limit=min(share, limit))
    in_flight = {"all": 0, "background": 0}
    peak = {"all": 0, "background": 0}
    done = 0

    async def reconcile(priority: Priority, yields: int, delay: int) -> None:
        nonlocal done
        for _ in range(delay):
            await asyncio.sleep(0)
        async with gate.slot(priority):
            counted = ("all", "background") if priority != Priority.PROGRESS else ("all",)
            for what in counted:
                in_flight[what] += 1
                peak[what] = max(peak[what], in_flight[what])
            assert gate.background <= gate.background_limit and gate.active <= gate.limit
            for _ in range(yields):
                await asyncio.sleep(0)
            for what in counted:
                in_flight[what] -= 1
            done += 1

    async def main() -> None:
        await asyncio.gather(*(reconcile(p, y, d) for p, y, d in work))

    asyncio.run(main())
    assert peak["all"] <= limit
    assert peak["background"] <= gate.background_limit
    assert done == len(work)
    assert gate.active == 0 and gate.background == 0 and gate.waiting == 0


def test_a_finished_job_overtakes_admissions_waiting_at_their_cap() -> None:
    """Two slots, one for background work: while an admission holds it, a second admission waits even though a
    slot is free, and a Job event that arrives after it is served at once; the second admission runs when the
    first one ends."""

    async def main() -> list[str]:
        gate = Admission(2, background_limit=1)
        served: list[str] = []
        release = asyncio.Event()
        first = asyncio.create_task(_hold(gate, release))
        await asyncio.sleep(0)
        second = asyncio.create_task(_record(gate, Priority.ADMIT, served, "second admission"))
        await asyncio.sleep(0)
        assert gate.waiting == 1 and gate.active == 1
        job_event = asyncio.create_task(_record(gate, Priority.PROGRESS, served, "job event"))
        await job_event
        assert served == ["job event"] and gate.waiting == 1
        release.set()
        await asyncio.gather(first, second)
        assert gate.active == 0 and gate.background == 0
        return served

    assert asyncio.run(main()) == ["job event", "second admission"]


def test_safety_net_polls_wait_behind_admissions() -> None:
    served = asyncio.run(_queue_behind_a_held_slot(Admission(1), [Priority.POLL, Priority.ADMIT, Priority.PROGRESS]))
    assert served == [2, 1, 0]
