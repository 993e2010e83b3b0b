"""Issue 26: `hardInstructionShare: character` pools how rarely a character's instructions are followed over all
its prompts' candidates, so the targets of the character the policy fails (a `lowercase` one) get the repeats."""

from __future__ import annotations

import numpy as np
import pytest
from flywheel_operator.api import RejectionSamplingSettings
from flywheel_trainer.sft import character_shares, target_repeats
from hypothesis import given
from hypothesis import strategies as st

HARD = {"name": "Luna", "instructions": [{"kind": "lowercase", "value": None}]}
EASY = {"name": "Rex", "instructions": [{"kind": "max_words", "value": 30}]}


def test_shares_are_pooled_over_each_characters_prompts() -> None:
    follows = np.array([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1], dtype=float)  # 3 prompts of 4 candidates
    shares = character_shares(follows, 4, [HARD, HARD, EASY])
    assert shares == [0.375, 0.375, 1.0]  # Luna: 3 of 8 over both prompts, whatever each prompt drew


def test_character_shares_give_the_hard_characters_targets_the_repeats() -> None:
    follows = np.array([1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    kept = [0, 0, 0]
    assert target_repeats(follows, 4, kept, 3) == [1, 3, 1]  # per prompt: 4/4, 1/4, 4/4
    shares = character_shares(follows, 4, [HARD, HARD, EASY])
    # Luna pooled: 5 of 8 → 1 + round(0.75) for both of her prompts, also the one whose 4 draws all complied
    assert target_repeats(follows, 4, kept, 3, shares) == [2, 2, 1]


def test_same_name_other_instructions_is_another_character() -> None:
    other = {"name": "Luna", "instructions": []}
    assert character_shares(np.array([0, 0, 1, 1], dtype=float), 2, [HARD, other]) == [0.0, 1.0]


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="characters for"):
        character_shares(np.ones(4), 2, [HARD])
    with pytest.raises(ValueError, match="shares for"):
        target_repeats(np.ones(4), 2, [0, 0], 3, [0.5])


@given(st.lists(st.tuples(st.booleans(), st.lists(st.booleans(), min_size=1, max_size=6)), min_size=1, max_size=12),
       st.integers(1, 4))
def test_pooled_share_is_the_characters_compliant_fraction(prompts: list[tuple[bool, list[bool]]], most: int) -> None:
    characters = [HARD if hard else EASY for hard, _ in prompts]
    sizes = [len(group) for _, group in prompts]
    follows = np.array([f for _, group in prompts for f in group], dtype=float)
    shares = character_shares(follows, sizes, characters)
    for hard in (True, False):
        mine = [f for (h, group) in prompts if h == hard for f in group]
        for share, (h, _) in zip(shares, prompts, strict=True):
            if h == hard:
                assert share == pytest.approx(float(np.mean(mine)))
    repeats = target_repeats(follows, sizes, [0] * len(prompts), most, shares)
    assert all(1 <= r <= most for r in repeats)


def test_the_setting_defaults_to_the_prompt_and_names_its_choices() -> None:
    assert RejectionSamplingSettings().hard_instruction_share == "prompt"
    assert RejectionSamplingSettings.model_validate({"hardInstructionShare": "character"}).hard_instruction_share \
        == "character"
    with pytest.raises(ValueError, match="'prompt' or 'character'"):
        RejectionSamplingSettings.model_validate({"hardInstructionShare": "kind"})


@pytest.mark.parametrize("example", ["gen1.yaml", "flywheel.yaml"])
def test_the_local_examples_pool_the_repeats_over_the_character(example: str) -> None:
    from pathlib import Path

    import yaml

    text = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "local" / example).read_text())
    spec = text["spec"] if "stages" in text["spec"] else text["spec"]["template"]["spec"]
    sampling = spec["stages"]["sft"]["rejectionSampling"]
    assert sampling["hardInstructionShare"] == "character" and sampling["hardInstructionRepeats"] > 1
