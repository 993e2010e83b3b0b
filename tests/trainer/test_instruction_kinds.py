"""Issue 26: instruction following per instruction kind, in the SFT stage's metrics (candidates vs kept targets)
and the eval stage's (candidate vs parent), so a run says which instruction its policy breaks."""

from __future__ import annotations

from flywheel_trainer.sft import kind_following
from flywheel_trainer.verifiers import following_by_kind, follows_all
from hypothesis import given
from hypothesis import strategies as st

LOWER = {"name": "Maestro Carla", "instructions": [{"kind": "lowercase", "value": None},
                                                  {"kind": "ends_with_question", "value": None}]}
WORDY = {"name": "Painter Mira", "instructions": [{"kind": "include_word", "value": "splendid"}]}
PLAIN = {"name": "Surfer Kai", "instructions": []}


def test_each_kind_is_counted_over_the_responses_whose_character_carries_it() -> None:
    characters = [LOWER, LOWER, LOWER, WORDY, WORDY, PLAIN]
    responses = ["what about drums?", "What about drums?", "the song is calling me.", "splendid, truly.", "nice.",
                 "Anything."]
    assert following_by_kind(characters, responses) == {
        "ends_with_question": (2, 3),
        "include_word": (1, 2),
        "lowercase": (2, 3),
    }


def test_no_instructions_no_kinds() -> None:
    assert following_by_kind([PLAIN, {"name": "x"}], ["Hi.", "HEY"]) == {}


texts = st.sampled_from(["what about drums?", "What about drums?", "the song is calling me.", "splendid, truly?",
                         "SPLENDID", "nice."])


@given(st.lists(st.tuples(st.sampled_from([LOWER, WORDY, PLAIN]), texts), min_size=1, max_size=30))
def test_a_response_following_every_instruction_keeps_each_kind(pairs: list[tuple[dict, str]]) -> None:
    characters, responses = [c for c, _ in pairs], [r for _, r in pairs]
    by_kind = following_by_kind(characters, responses)
    for kind, (kept, n) in by_kind.items():
        carrying = [(c, r) for c, r in pairs if any(i["kind"] == kind for i in c["instructions"])]
        assert n == len(carrying) and 0 <= kept <= n
        compliant = sum(follows_all(c["instructions"], r, character_name=c["name"]) for c, r in carrying)
        assert kept >= compliant  # following every instruction implies keeping this one


def test_sft_reports_candidates_and_targets_per_kind() -> None:
    characters = [LOWER, LOWER, LOWER, LOWER]
    responses = ["What about drums?", "the song is calling me.", "what about drums?", "What now."]
    out = kind_following(characters, responses, chosen=[2])
    assert out["kind_following_lowercase_all"] == 0.5
    assert out["kind_following_ends_with_question_all"] == 0.5
    assert out["kind_following_lowercase_selected"] == 1.0
    assert out["kind_targets_lowercase"] == 1.0
