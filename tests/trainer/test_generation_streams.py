"""row_streams mixes all rows' keys at once; these are the keys of the per-prompt loop it replaced (7aecc2b), so
every seeded sample stays what it was."""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st


def _row_streams_one_prompt_at_a_time(prompts: list[list[int]], draws: int, seed: int) -> np.ndarray:
    from flywheel_trainer.generation import _splitmix64

    seen: dict[bytes, int] = {}
    keys = np.empty((len(prompts), draws), dtype=np.uint64)
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    for index, prompt in enumerate(prompts):
        content = np.asarray(prompt, dtype=np.int64).tobytes()
        occurrence = seen.get(content, 0)
        seen[content] = occurrence + 1
        digest = hashlib.blake2b(content, digest_size=8, person=b"flywheel-row").digest()
        key = _splitmix64(np.array([int.from_bytes(digest, "little")], dtype=np.uint64) ^ base)
        key = _splitmix64(key + np.uint64(occurrence))
        keys[index] = _splitmix64(key[0] + np.arange(draws, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03))
    return keys


@settings(max_examples=300, deadline=None)
@given(
    prompts=st.lists(st.lists(st.integers(0, 2**31), max_size=5), max_size=12),
    draws=st.integers(1, 5),
    seed=st.integers(-(2**70), 2**70),
    repeat=st.integers(1, 3),
)
def test_row_streams_are_the_keys_of_the_loop_over_prompts(prompts, draws, seed, repeat) -> None:
    from flywheel_trainer.generation import row_streams

    prompts = prompts * repeat  # identical prompts count their occurrences
    keys = row_streams(prompts, draws, seed)
    assert keys.dtype == np.uint64 and keys.shape == (len(prompts), draws)
    assert np.array_equal(keys, _row_streams_one_prompt_at_a_time(prompts, draws, seed))
