"""A policy call shared by two processes answers as one process does (issue 29): each takes whole batches of the
call's plan (generation.SamplingRequest.batches), whose prompts, padding and random streams come from the whole
call, so the runner's traffic can use the core its side worker leaves idle without changing a byte of the logs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flywheel_local import users
from flywheel_sim import DEFAULT_WORLD, load_world
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BATCH = 3
"""Sequences per batch of the small-batch world: a dozen chats make several batches."""


def _chats(count: int) -> list[list[dict[str, str]]]:
    system = {"role": "system", "content": "You are Luna."}
    topics = ["stars", "moon", "sky", "tea", "rain", "a long walk by the sea", "music"]
    return [[system, {"role": "user", "content": f"tell me about {topics[i % len(topics)]}{'!' * (i // 7)}"}]
            for i in range(count)]


@pytest.fixture(scope="module")
def small_batches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default world with BATCH sequences per serving batch (a world file: the worker process loads it)."""
    data = yaml.safe_load(DEFAULT_WORLD.read_text())
    data["serving"]["batch_size"] = BATCH
    path = tmp_path_factory.mktemp("world") / "world.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def policy(gen0: Path, small_batches: Path) -> users.PredictorPolicy:
    return users.world_policy("gen0", gen0, load_world(small_batches))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 14), mine=st.sets(st.integers(0, 4)), reverse=st.booleans(), seed=st.integers(0, 99))
def test_shares_merged_are_the_whole_call(policy: users.PredictorPolicy, count: int, mine: set[int],
                                          reverse: bool, seed: int) -> None:
    chats = _chats(count)
    whole = policy(chats, seed=seed)

    def taken(numbers: list[int]) -> list[int]:
        return numbers[::-1] if reverse else numbers  # the order a process takes them in does not matter

    first = policy.share(chats, seed=seed, batches=lambda n: taken([i for i in range(n) if i in mine]))
    second = policy.share(chats, seed=seed, batches=lambda n: taken([i for i in range(n) if i not in mine]))
    assert all((a is None) != (b is None) for a, b in zip(first, second, strict=True))  # each chat answered once
    assert [a if a is not None else b for a, b in zip(first, second, strict=True)] == whole


def test_shared_batches_hands_each_number_once() -> None:
    import multiprocessing

    counter = multiprocessing.get_context("spawn").Value("q", 0)
    here, there = users.shared_batches(counter)(5), users.shared_batches(counter)(5)
    taken = [next(here), next(there), next(there), next(here), *here, *there]
    assert sorted(taken) == [0, 1, 2, 3, 4]


def test_a_split_policy_answers_as_one_process(gen0: Path, small_batches: Path,
                                               policy: users.PredictorPolicy) -> None:
    chats = _chats(14)
    split = users.SplitPolicy(users.world_policy("gen0", gen0, load_world(small_batches)), gen0, small_batches)
    try:
        assert split(chats, seed=3) == policy(chats, seed=3)  # before or after the worker is ready, the same
        worker = split.worker
        while not worker.ready():  # waits for the worker's model, not for a time
            worker._connection.poll(None)
        assert worker.failure is None
        # the worker alone takes every batch when this process takes none
        with worker.counter.get_lock():
            worker.counter.value = 0
        worker.submit(chats, seed=4, share=True)
        assert worker.result() == policy(chats, seed=4)
        for seed in (5, 6):
            assert split(chats, seed=seed) == policy(chats, seed=seed)
    finally:
        split.close()


def test_a_worker_that_cannot_load_leaves_the_calls_to_this_process(gen0: Path, tmp_path: Path,
                                                                     policy: users.PredictorPolicy,
                                                                     small_batches: Path) -> None:
    split = users.SplitPolicy(users.world_policy("gen0", gen0, load_world(small_batches)), tmp_path / "missing",
                              small_batches)
    try:
        while not split.worker.ready():
            split.worker._connection.poll(None)
        assert split.worker.failure is not None and "missing" in split.worker.failure
        assert split(_chats(5), seed=1) == policy(_chats(5), seed=1)
    finally:
        split.close()
