"""Reward-model quality is shown with its uncertainty: every agreement, accuracy and AUC carries a 95 % interval
and says whether it is better than chance, worse, or indistinguishable (no model is trained here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flywheel_local import rm_oracle
from flywheel_local.report import GenerationRow, _reward_model_rows
from flywheel_local.statusview import render_reward_models
from flywheel_operator.api import FlywheelGenerationStatus
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console


@given(st.floats(0.0, 1.0), st.integers(1, 5000))
@settings(max_examples=100)
def test_a_preference_models_logged_accuracy_is_judged_by_its_interval(accuracy: float, n: int) -> None:
    quality = rm_oracle.logged_quality("pointwise", {"accuracy": accuracy, "held_out_examples": float(n)})
    low, high = quality["interval"]
    assert quality["measure"] == "pair accuracy"
    assert low <= accuracy <= high
    expected = ("better than chance" if low > 0.5 else "worse than chance" if high < 0.5
                else "indistinguishable from chance")
    assert quality["verdict"] == expected


def test_the_verdicts_of_the_last_chain_gen5() -> None:
    """bench/results/flywheel.json's default gen5: the pointwise RM was below chance on its logged pairs while
    the gate used it; the pairwise RM tied every oracle pair."""
    assert rm_oracle.logged_quality("pointwise", {"accuracy": 0.452, "held_out_examples": 635.0})["verdict"] == (
        "worse than chance")
    assert rm_oracle.logged_quality("pairwise", {"accuracy": 0.5, "held_out_examples": 635.0})["verdict"] == (
        "indistinguishable from chance")
    assert rm_oracle.logged_quality("pointwise", {"accuracy": 0.685, "held_out_examples": 343.0})["verdict"] == (
        "better than chance")


def test_a_user_signal_model_is_judged_by_auc_not_by_its_base_rate_accuracy() -> None:
    metrics = {"accuracy": 0.663, "positive_rate": 0.663, "held_out_examples": 833.0}
    assert rm_oracle.logged_quality("user-signal", metrics) == {
        "measure": "ROC AUC", "value": None, "interval": None, "verdict": "not measured"}
    quality = rm_oracle.logged_quality("user-signal", {**metrics, "auc": 0.51, "auc_low": 0.47, "auc_high": 0.55})
    assert quality["value"] == 0.51 and quality["verdict"] == "indistinguishable from chance"


def _measured() -> dict:
    return {
        "format": rm_oracle.FORMAT, "pairs": 316, "parent": "gen4",
        "models": {
            "pointwise": {
                "kind": "pointwise", "oracle_agreement": 0.576, "oracle_agreement_interval": [0.521, 0.630],
                "oracle_verdict": "better than chance",
                "logged": rm_oracle.logged_quality("pointwise", {"accuracy": 0.452, "held_out_examples": 635.0}),
                "logged_accuracy": 0.452, "logged_held_out": 635.0, "ece_calibrated": 0.053, "train_examples": 5397.0,
            },
        },
    }


def test_status_and_report_show_each_interval_and_verdict() -> None:
    console = Console(width=300, record=True)
    for line in render_reward_models(_measured()):
        console.print(line)
    text = console.export_text()
    assert "oracle agreement 0.576 [0.521, 0.630], better than chance" in text
    assert "held-out logged pair accuracy 0.452 [0.414, 0.491] (n=635), worse than chance" in text
    row = GenerationRow(name="gen5", number=5, status=FlywheelGenerationStatus(phase="RolledBack"),
                        rm_oracle=_measured())
    page = _reward_model_rows([row])
    assert "0.576 [0.521, 0.630] (n=316): better than chance" in page
    assert "pair accuracy 0.452 [0.414, 0.491] (n=635): worse than chance" in page


def test_a_measurement_in_an_older_layout_is_not_read_but_measured_again(tmp_path: Path) -> None:
    path = tmp_path / rm_oracle.AGREEMENT_FILE
    older = {key: value for key, value in _measured().items() if key != "format"}
    path.write_text(json.dumps(older))
    assert rm_oracle.read_agreement(tmp_path) == {}
    path.write_text(json.dumps(_measured()))
    assert rm_oracle.read_agreement(tmp_path)["models"]["pointwise"]["oracle_agreement"] == pytest.approx(0.576)


class _LastMessage:
    """A tokenizer stand-in whose chat template is the last message's content."""

    def apply_chat_template(self, chat: list[dict[str, str]], tokenize: bool = False) -> str:
        return chat[-1]["content"]


def test_text_only_agreement_leaves_the_rule_features_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pointwise model whose rules prefer asking back and whose learned part prefers longer answers: on pairs
    where the oracle prefers the longer answer that does not ask back, the whole reward disagrees with the oracle
    and the text-only score agrees; the breakdown by trait counts the pairs that differ in asking back."""
    import numpy as np
    from flywheel_sim import DEFAULT_WORLD, load_world
    from flywheel_trainer import scoring

    monkeypatch.setattr(scoring, "logits_for_texts",
                        lambda model, tokenizer, texts, max_length: np.array([len(t) for t in texts], dtype=float))
    rules = {"features": ["asks-back"], "columns": ["asks_back"], "weights": [100.0], "text_weight": 1.0}
    rm = scoring.RewardModel("pointwise", "pointwise", None, 1.0, None, _LastMessage(), 64, rules=rules)
    world = load_world(DEFAULT_WORLD)
    spec = world.characters[0].to_log()
    prompt = [{"role": "user", "content": "tell me about maps."}]
    pairs = [{"prompt": prompt, "first": "maps are my favourite thing, matey.", "second": "maps?", "gap": 0.4,
              "character": 0, "topic": "maps", "spec": spec},
             {"prompt": prompt, "first": "ok?", "second": "the sea is wide and blue today, matey.", "gap": -0.2,
              "character": 0, "topic": "maps", "spec": spec}]
    assert rm_oracle.model_agreement(rm, pairs) == 0.0
    assert rm_oracle.model_agreement(rm, pairs, text_only=True) == 1.0
    gaps = np.array([p["gap"] for p in pairs])
    said = rm_oracle._preference(rm, pairs, text_only=True)
    traits = rm_oracle.by_trait(said, gaps, rm_oracle.trait_differences(world, pairs))
    assert traits["question"] == {"pairs": 2, "agreement": 1.0}
    assert traits["persona"] == {"pairs": 1, "agreement": 1.0}  # "sea" is one of Captain Rex's persona words
    assert traits["on_topic"] == {"pairs": 0, "agreement": None}
