"""Issue 26 (deployed instruction following): rejection sampling keeps only targets that follow every instruction
and draws more candidates for the prompts where none does yet (flywheel_trainer.sft)."""

from __future__ import annotations

import numpy as np
import pytest
from flywheel_operator.api.models import RejectionSamplingSettings
from flywheel_trainer.sft import (
    group_bounds,
    noncompliant_prompts,
    resample_noncompliant,
    select_best,
    target_repeats,
)
from flywheel_trainer.verifiers import follows_all
from hypothesis import given, settings
from hypothesis import strategies as st

LOWER = {"name": "Baker Greta", "instructions": [{"kind": "lowercase", "value": None}]}
GREET = {
    "name": "Wizard Orrin",
    "instructions": [{"kind": "start_with", "value": "Greetings"}, {"kind": "max_sentences", "value": 2}],
}
FREE = {"name": "Nova"}  # no instructions: every response complies


def test_a_compliant_candidate_beats_a_higher_scoring_one_that_breaks_an_instruction() -> None:
    """On the base commit the argmax of the selection score won: the graded instruction share (2/3 of the way
    there) lost to the reward and user-signal terms, and SFT imitated a broken instruction."""
    selection = np.array([2.0, 1.5, 0.0, 0.0])
    eligible = np.array([False, True, False, False])
    assert select_best(selection, 4, margin=0.25, eligible=eligible) == [1]
    assert select_best(selection, 4, margin=0.25) == [0]  # without the flags: the old rule


def test_a_prompt_without_a_compliant_candidate_is_rejected_and_the_margin_still_applies() -> None:
    selection = np.array([3.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    eligible = np.array([False, False, False, True, True, True])
    assert select_best(selection, 3, margin=0.0, eligible=eligible) == [None, None]


def test_groups_of_different_sizes_are_selected_each_on_its_own() -> None:
    selection = np.array([0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 2.0])
    eligible = np.array([True, True, False, True, True, True, True])
    assert select_best(selection, [3, 4], margin=0.1, eligible=eligible) == [1, 3]
    assert group_bounds([3, 4], 7) == [(0, 3), (3, 7)]
    with pytest.raises(ValueError, match="do not cover"):
        group_bounds([3, 3], 7)
    with pytest.raises(ValueError, match="groups of 4"):
        group_bounds(4, 7)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.floats(-5, 5, allow_nan=False), st.booleans()), min_size=1, max_size=9),
        min_size=1,
        max_size=12,
    ),
    st.floats(0, 2, allow_nan=False),
)
def test_the_pick_is_the_best_eligible_candidate_clearing_the_group_mean(groups, margin) -> None:
    selection = np.array([score for group in groups for score, _ in group])
    eligible = np.array([ok for group in groups for _, ok in group])
    kept = select_best(selection, [len(g) for g in groups], margin, eligible)
    for group, pick in zip(groups, kept, strict=True):
        scores = np.array([s for s, _ in group])
        allowed = [s for s, ok in group if ok]
        if pick is None:
            assert not allowed or max(allowed) - scores.mean() <= margin
        else:
            assert group[pick][1]
            assert group[pick][0] == max(allowed)
            assert group[pick][0] - scores.mean() > margin


def test_only_prompts_without_a_compliant_candidate_are_drawn_again() -> None:
    groups = [["Hello there", "HI"], ["Greetings, friend. Cakes?", "hello"], ["Anything goes."]]
    characters = [LOWER, GREET, FREE]
    asked: list[tuple[list[int], int]] = []

    def draw(indices: list[int], round_: int) -> list[list[str]]:
        asked.append((list(indices), round_))
        return [["STILL LOUD", "still upper? No"] if round_ == 1 else ["all quiet now"] for _ in indices]

    counts = resample_noncompliant(groups, characters, draw, rounds=3)
    assert asked == [([0], 1), ([0], 2)]  # prompt 1 had a compliant candidate, prompt 2 has no instructions
    assert groups[0] == ["Hello there", "HI", "STILL LOUD", "still upper? No", "all quiet now"]
    assert counts == {
        "prompts_without_compliant_candidate": 1,
        "prompts_resampled": 2,
        "prompts_still_without_compliant_candidate": 0,
    }
    assert noncompliant_prompts(groups, characters) == []


def test_no_rounds_draw_nothing_and_report_what_is_missing() -> None:
    groups = [["LOUD"], ["nope"]]

    def draw(indices: list[int], round_: int) -> list[list[str]]:
        raise AssertionError("no round was asked for")

    counts = resample_noncompliant(groups, [LOWER, GREET], draw, rounds=0)
    assert counts["prompts_without_compliant_candidate"] == 2
    assert counts["prompts_still_without_compliant_candidate"] == 2
    assert counts["prompts_resampled"] == 0
    assert groups == [["LOUD"], ["nope"]]


def test_a_draw_that_answers_for_other_prompts_is_an_error() -> None:
    with pytest.raises(ValueError, match="asked for 1"):
        resample_noncompliant([["LOUD"]], [LOWER], lambda indices, round_: [], rounds=1)


def test_compliant_targets_and_one_resampling_round_are_the_defaults() -> None:
    rs = RejectionSamplingSettings()
    assert rs.compliant_targets_only is True
    assert rs.instruction_resamples == 1
    wire = rs.model_dump(by_alias=True)
    assert wire["compliantTargetsOnly"] is True and wire["instructionResamples"] == 1
    with pytest.raises(ValueError, match="instructionResamples"):
        RejectionSamplingSettings.model_validate({"instructionResamples": -1})


def test_the_verifier_agrees_with_the_fixtures() -> None:
    assert not follows_all(LOWER["instructions"], "Hello there", character_name=LOWER["name"])
    assert follows_all(GREET["instructions"], "Greetings, friend. Cakes?", character_name=GREET["name"])


def test_targets_of_rarely_followed_instructions_repeat_more() -> None:
    follows = np.array([1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=float)
    kept = [0, 3, None]
    assert target_repeats(follows, 4, kept, max_repeats=3) == [1, 3]  # 4/4 comply: once; 1/4: 1 + round(1.5)
    assert target_repeats(follows, 4, kept, max_repeats=1) == [1, 1]
    assert target_repeats(follows, [2, 6, 4], [1, 0, None], max_repeats=4) == [1, 3]  # 3 of 6 comply: 1 + 1.5 up
    with pytest.raises(ValueError, match="max_repeats"):
        target_repeats(follows, 4, kept, max_repeats=0)


def test_one_repeat_is_the_default() -> None:
    assert RejectionSamplingSettings().hard_instruction_repeats == 1
