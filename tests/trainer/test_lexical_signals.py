"""Issue 26: the pointwise text score (the lexical head) at generation 1.

- A character's persona words are words distinctive of its responses that no user message contains: its responses
  also name the topics its users ask about, and in a response the user did not ask about them they are off topic,
  not persona (world 108's generation 1 gave the old persona column a negative weight: text agreement 0.604).
- `echo_rare_any` / `character_any`: whether a response picks up the topic / speaks in character at all.
- The head of a preference model also learns from the users' continue/leave signals (reward.signal_pairs,
  `lexicalSignalPairs`), kept off the held-out prompts.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flywheel_operator.api import RewardModelSettings
from flywheel_trainer.lexical import RESPONSE_COLUMNS, Vocabulary, features, fit_pairs
from flywheel_trainer.reward import _lexical_training_pairs, signal_pairs
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

CHARACTERS = (
    ({"role": "system", "content": "You are Keeper Rafi. A kind zookeeper."},
     ("lions", "giraffes", "elephants", "monkeys", "zebras"), ("zoo", "enclosure", "feeding", "keeper")),
    ({"role": "system", "content": "You are Professor Quill. An inventor."},
     ("robots", "rockets", "batteries", "gears", "lasers"), ("lab", "experiment", "gadget", "invention")),
    ({"role": "system", "content": "You are Explorer Amara. She maps jungles."},
     ("volcanoes", "deserts", "glaciers", "camels"), ("compass", "jungle", "tent", "expedition")),
)
SYSTEM, TOPICS, PERSONA = CHARACTERS[0]
FILLER = ("that", "is", "lovely", "truly", "i", "think", "so", "today", "and", "the")


def _prompt(topic: str, opener: str = "tell me about {t}.", system: dict = SYSTEM) -> list[dict[str, str]]:
    return [system, {"role": "user", "content": opener.format(t=topic)}]


def _response(rng: np.random.Generator, word: str) -> str:
    words = list(rng.choice(FILLER, size=int(rng.integers(5, 9))))
    words.insert(int(rng.integers(len(words) + 1)), word)
    return " ".join(words) + "."


def _persona_vs_other_topic(rng: np.random.Generator, n: int) -> tuple[list, list[str], list[str]]:
    """Pairs of three characters where the chosen response uses a persona word and the rejected one names another
    of the character's topics (one the user did not ask about): both are words distinctive of the character."""
    prompts, chosen, rejected = [], [], []
    for i in range(n):
        system, topics, persona = CHARACTERS[i % len(CHARACTERS)]
        topic = str(rng.choice(topics))
        other = str(rng.choice([t for t in topics if t != topic]))
        opener = str(rng.choice(["tell me about {t}.", "i love {t}.", "what about {t}?"]))
        prompts.append(_prompt(topic, opener, system))
        chosen.append(_response(rng, str(rng.choice(persona))))
        rejected.append(_response(rng, other))
    return prompts, chosen, rejected


def test_persona_words_leave_out_the_topics_users_ask_about() -> None:
    rng = np.random.default_rng(0)
    prompts, chosen, rejected = _persona_vs_other_topic(rng, 200)
    vocabulary = Vocabulary.build([*prompts, *prompts], [*chosen, *rejected])
    assert len(vocabulary.characters) == len(CHARACTERS)
    every = set().union(*vocabulary.characters.values())
    assert every >= {w for _, _, persona in CHARACTERS for w in persona}
    assert not every & {t for _, topics, _ in CHARACTERS for t in topics}, "a topic users ask about is no persona"


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_head_prefers_persona_over_naming_another_topic(seed: int) -> None:
    """On fresh pairs the head orders in-character over off-topic responses (the base commit read both as
    persona words: each side had one, every margin was 0, accuracy 1/2)."""
    rng = np.random.default_rng(seed)
    head = fit_pairs(*_persona_vs_other_topic(rng, 200))
    prompts, chosen, rejected = _persona_vs_other_topic(rng, 100)
    margin = head.score(prompts, chosen) - head.score(prompts, rejected)
    assert np.mean(margin > 0) > 0.95
    assert head.response_weights()["character_words"] + head.response_weights()["character_any"] > 0


@given(extra=st.integers(0, 3))
def test_any_columns_say_whether_a_count_is_above_zero(extra: int) -> None:
    vocabulary = Vocabulary(frozenset({"tell", "me", "about"}), {})
    prompt = _prompt("lions")
    plain = features(prompt, "that is lovely.", vocabulary)
    echoing = features(prompt, "lions " * (1 + extra) + "are lovely.", vocabulary)
    assert {"echo_rare_any", "character_any"} <= set(RESPONSE_COLUMNS)
    assert plain["echo_rare_any"] == 0.0 and echoing["echo_rare_any"] == 1.0
    assert echoing["echo_rare"] == 1.0  # distinct words: repeating one does not pile up


def _signal(topic: str, text: str, continued: bool | None) -> dict:
    return {"prompt": _prompt(topic), "completion": [{"role": "assistant", "content": text}], "continued": continued}


def test_signal_pairs_put_continued_over_left_per_context_and_skip_held_out_prompts() -> None:
    rows = [
        _signal("lions", "the zoo has lions.", True),
        _signal("lions", "ok.", False),
        _signal("lions", "fine.", False),
        _signal("lions", "ok. ", False),
        _signal("lions", "no signal here.", None),
        _signal("zebras", "stripes at the zoo.", True),
        _signal("zebras", "meh.", False),
        _signal("monkeys", "a lone continued one.", True),
    ]
    held_out = [{"prompt": _prompt("zebras"), "chosen": [], "rejected": []}]
    pairs = signal_pairs(rows, held_out, 10)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("the zoo has lions.", "ok."), ("the zoo has lions.", "fine."), ("the zoo has lions.", "ok. ")]
    assert all(p["prompt"] == _prompt("lions") for p in pairs)
    assert len(signal_pairs(rows, [], 1)) == 2  # at most one per context: lions and zebras
    same = [_signal("lions", "same.", True), _signal("lions", " same.", False)]
    assert signal_pairs(same, [], 10) == []


def test_the_head_learns_from_signal_pairs_where_preference_pairs_are_few() -> None:
    """Four preference pairs say nothing; the signals' pairs of the same contexts teach persona over off-topic."""
    rng = np.random.default_rng(1)
    prompts, chosen, rejected = _persona_vs_other_topic(rng, 200)
    signals = [row for p, c, r in zip(prompts, chosen, rejected, strict=True)
               for row in (_signal("x", c, True) | {"prompt": p}, _signal("x", r, False) | {"prompt": p})]
    train = [{"prompt": _prompt("lions"), "chosen": [{"content": "ok."}], "rejected": [{"content": "fine."}]}] * 4
    fitted = train + signal_pairs(signals, [], 128)
    head = fit_pairs([r["prompt"] for r in fitted], [r["chosen"][0]["content"] for r in fitted],
                     [r["rejected"][0]["content"] for r in fitted])
    fresh = _persona_vs_other_topic(rng, 100)
    assert np.mean(head.score(fresh[0], fresh[1]) - head.score(fresh[0], fresh[2]) > 0) > 0.95


def test_signal_pairs_come_from_the_curate_stages_signals(tmp_path) -> None:
    path = tmp_path / "signals.jsonl"
    path.write_text('{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", '
                    '"content": "hello!"}], "continued": true}\n{"prompt": [{"role": "user", "content": "hi"}], '
                    '"completion": [{"role": "assistant", "content": "no."}], "continued": false}\n')
    settings_ = RewardModelSettings(name="pointwise", kind="pointwise")
    train: list[dict] = []
    fitted, added = _lexical_training_pairs(settings_, SimpleNamespace(upstream={"curate": {"signals": str(path)}}),
                                            train, [])
    assert added == 1 and fitted[0]["chosen"][0]["content"] == "hello!"
    off = RewardModelSettings(name="pointwise", kind="pointwise", lexicalSignalPairs=0)
    with_signals = SimpleNamespace(upstream={"curate": {"signals": str(path)}})
    assert _lexical_training_pairs(off, with_signals, train, []) == (train, 0)
    # pairs curated without signals (data from elsewhere): the preference pairs alone, and the metric says 0
    assert _lexical_training_pairs(settings_, SimpleNamespace(upstream={"curate": {}}), train, []) == (train, 0)


def test_signal_pairs_setting_defaults_on_and_belongs_to_preference_models() -> None:
    assert RewardModelSettings(name="pointwise", kind="pointwise").signal_pairs_per_context == 128
    assert RewardModelSettings(name="pairwise", kind="pairwise", lexicalSignalPairs=0).signal_pairs_per_context == 0
    user_signal = RewardModelSettings(name="continue", kind="user-signal", signal="continue")
    assert user_signal.signal_pairs_per_context == 0
    # the wire form a Job reads back (defaults dumped) stays valid: unset is not "set to the default"
    wire = user_signal.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert RewardModelSettings.model_validate(wire).signal_pairs_per_context == 0
    with pytest.raises(ValidationError, match="lexicalSignalPairs"):
        RewardModelSettings(name="continue", kind="user-signal", signal="continue", lexicalSignalPairs=8)
    with pytest.raises(ValidationError):
        RewardModelSettings(name="pointwise", kind="pointwise", lexicalSignalPairs=-1)
