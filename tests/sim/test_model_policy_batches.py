"""A model policy's answer to a chat depends on the chat and the call's seed only: the sampler draws every row
from its own stream, so the other chats answered in the same call, their order and the batch size change nothing
(flywheel_trainer.generation.row_streams). The simulator hands a policy every chat waiting at one turn, so before
this a session's answers depended on which other sessions happened to be waiting with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from flywheel_sim import ModelPolicy
from flywheel_sim.policy import system_message
from flywheel_sim.world import World
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPENINGS = ["hi", "tell me about your day", "what do you like?", "one more question, please", "why?"]


def _chats(world: World) -> list[list[dict[str, str]]]:
    chats = []
    for c, character in enumerate(world.characters[:3]):
        for o, opening in enumerate(OPENINGS):
            chat = [{"role": "system", "content": system_message(character)}, {"role": "user", "content": opening}]
            if (c + o) % 2:
                chat += [{"role": "assistant", "content": "sure thing"}, {"role": "user", "content": OPENINGS[o - 1]}]
            chats.append(chat)
    return chats


@pytest.fixture(scope="module")
def policies(gen0_dir: Path, world: World) -> dict[int, ModelPolicy]:
    return {size: ModelPolicy(gen0_dir, name="gen0", max_new_tokens=24, batch_size=size) for size in (1, 4, 256)}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), batch_size=st.sampled_from([1, 4, 256]), seed=st.integers(0, 5))
def test_a_chats_answer_does_not_depend_on_the_other_chats_in_the_call(policies, world, data, batch_size,
                                                                       seed) -> None:
    chats = _chats(world)
    reference = policies[256](chats, seed=seed)
    picked = data.draw(st.lists(st.sampled_from(range(len(chats))), min_size=1, max_size=len(chats), unique=True))
    assert policies[batch_size]([chats[i] for i in picked], seed=seed) == [reference[i] for i in picked]
    assert len(set(reference)) > len(chats) // 2  # answers differ between chats: the policy samples


def test_the_seed_still_changes_the_answers(policies, world) -> None:
    chats = _chats(world)
    assert policies[4](chats, seed=0) == policies[256](chats, seed=0)
    assert policies[4](chats, seed=0) != policies[4](chats, seed=1)
