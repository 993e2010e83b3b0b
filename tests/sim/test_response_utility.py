"""The oracle's truth about single responses, which reward models are measured against."""

from __future__ import annotations

import numpy as np
from flywheel_local.rm_oracle import agreement
from flywheel_sim import load_world, response_utility
from flywheel_sim.world import DEFAULT_WORLD


def test_users_prefer_on_topic_questions_and_punish_emoji_overuse() -> None:
    world = load_world(DEFAULT_WORLD)
    rex = next(i for i, c in enumerate(world.characters) if c.id == "captain-rex")
    good, flat = "ahoy matey, treasure is on my ship. do you like treasure?", "the weather is nice today."
    one, spam = good + " 🙂", good + " 🙂🙂🙂🙂"
    utility = response_utility(world, rex, "treasure", [good, flat, one, spam])
    assert utility[0] > utility[1]
    assert utility[2] > utility[0]  # one emoji pulls on the spot and stays under the trap's threshold
    assert utility[3] < utility[2]  # four are felt now and paid for in skipped visits


def test_agreement_counts_orderings_and_ties_half() -> None:
    gaps = np.array([1.0, -0.5, 0.2, -2.0])
    assert agreement(np.array([3.0, -1.0, 0.1, -0.1]), gaps) == 1.0
    assert agreement(-np.array([3.0, -1.0, 0.1, -0.1]), gaps) == 0.0
    assert agreement(np.array([0.0, -1.0, -0.1, -0.1]), gaps) == 0.625
