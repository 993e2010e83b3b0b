"""A pointwise reward model's whole and text-only agreement come from one forward pass per answer, with the same
preferences, bit for bit, as scoring each way on its own (pointwise_scores, then text_scores)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flywheel_local import rm_oracle
from flywheel_sim import DEFAULT_WORLD, load_world
from flywheel_trainer import scoring
from flywheel_trainer.rules import RULES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WORDS = ["matey", "sea", "maps", "ok", "no", "why?", "tell me more?", "🙂", "I can't help with that.", "the", "sure"]
answers = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)
COLUMNS = sum(len(columns) for columns in RULES.values())


class _LastMessage:
    """A tokenizer stand-in whose chat template is the last message's content."""

    def apply_chat_template(self, chat: list[dict[str, str]], tokenize: bool = False) -> str:
        return chat[-1]["content"]


def _logits(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    """A stand-in text logit with a fractional part, so sums round as real ones do."""
    return np.array([np.sin(sum(map(ord, t)) * 0.7311) * 3.1 for t in texts], dtype=float)


@given(
    pairs=st.lists(st.tuples(answers, answers), min_size=1, max_size=20),
    features=st.lists(st.sampled_from(sorted(RULES)), unique=True, max_size=len(RULES)),
    weights=st.lists(st.floats(-5, 5, allow_nan=False), min_size=COLUMNS, max_size=COLUMNS),
    text_weight=st.floats(0.01, 3.0),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_one_pass_gives_both_preferences_of_two(
    monkeypatch: pytest.MonkeyPatch,
    pairs: list[tuple[str, str]],
    features: list[str],
    weights: list[float],
    text_weight: float,
) -> None:
    calls = []
    monkeypatch.setattr(scoring, "logits_for_texts", lambda *a, **k: calls.append(1) or _logits(*a, **k))
    columns = [c for f in features for c in RULES[f]]
    rules = (
        {"features": features, "columns": columns, "weights": weights[: len(columns)], "text_weight": text_weight}
        if features
        else None
    )
    rm = scoring.RewardModel("pointwise", "pointwise", None, 1.0, None, _LastMessage(), 64, rules=rules)
    spec = load_world(DEFAULT_WORLD).characters[0].to_log()
    prompt = [{"role": "user", "content": "tell me about maps."}]
    held_out = [
        {"prompt": prompt, "first": a, "second": b, "gap": 0.1, "character": 0, "topic": "maps", "spec": spec}
        for a, b in pairs
    ]
    prompts, first, second = [prompt] * len(pairs), [a for a, _ in pairs], [b for _, b in pairs]
    specs = [spec] * len(pairs)

    whole, text_only = rm_oracle._preferences(rm, held_out)
    assert len(calls) == 2
    expected_whole = scoring.pointwise_scores(rm, prompts, first, specs) - scoring.pointwise_scores(
        rm, prompts, second, specs
    )
    expected_text = scoring.text_scores(rm, prompts, first) - scoring.text_scores(rm, prompts, second)
    assert whole.tobytes() == expected_whole.tobytes()
    assert text_only.tobytes() == (expected_text if rules else expected_whole).tobytes()
