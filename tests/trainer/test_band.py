"""Issue 26, problem 2: a band that reads gaming, not progress.

The offline band and RL's band control read the pointwise reward model's learned part only (a step up in a rule
feature such as follows-instructions is progress, not gaming), and the band control lands on its target: the
latest checkpoint at or below it, else an interpolation of the weights between the parent and the earliest
checkpoint, bisected on the band prompts; a target it cannot reach is said in the result and the status."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flywheel_operator.api import (
    FlywheelGenerationStatus,
    OfflineGateSpec,
    OfflineMetrics,
    StageConfig,
    StageRecord,
    StyleStats,
)
from flywheel_operator.gate import evaluate_offline
from flywheel_operator.planner.conditions import band_condition
from flywheel_trainer import rl, scoring
from flywheel_trainer.evaluate import band_win_rates
from flywheel_trainer.outputs import StageError, write_jsonl
from flywheel_trainer.rl import WeightLine, band_record, bisect_alpha, choose_checkpoint, pick_band
from flywheel_trainer.scoring import PointwiseParts, RewardModel, pointwise_parts
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = datetime(2026, 12, 6, tzinfo=UTC)
RATE = st.floats(0.0, 1.0, allow_nan=False)


# ------------------------------------------------------------------------------ choosing on synthetic curves
@given(st.lists(RATE, min_size=1, max_size=8), st.floats(0.3, 0.9))
def test_a_checkpoint_at_or_below_the_target_is_the_latest_such(rates: list[float], target: float) -> None:
    curve = [(4 * (i + 1), r) for i, r in enumerate(rates)]
    within = [i for i, r in enumerate(rates) if r <= target]
    assert choose_checkpoint(curve, target) == (within[-1] if within else None)
    if within:
        pick = pick_band(curve, target, lambda alpha: pytest.fail("interpolated although a checkpoint is within"), 4)
        assert (pick.method, pick.index, pick.alpha, pick.win_rate) == ("checkpoint", within[-1], 1.0,
                                                                         rates[within[-1]])
        assert pick.reached and not pick.probes


@settings(max_examples=200)
@given(st.floats(0.52, 0.9), st.floats(0.05, 0.45), st.floats(0.2, 5.0), st.integers(1, 10))
def test_interpolation_lands_at_or_below_the_target_within_the_bisections_resolution(
    target: float, excess: float, power: float, steps: int
) -> None:
    """A win rate rising from the parent's 0.5 (α = 0) to the earliest checkpoint's (α = 1, above the target) along
    any monotone curve: the pick is at or below the target and within 2^-steps below the crossing."""
    first = min(1.0, target + excess)

    def rate(alpha: float) -> float:
        return 0.5 + (first - 0.5) * alpha**power

    crossing = ((target - 0.5) / (first - 0.5)) ** (1 / power)
    pick = pick_band([(4, first), (8, min(1.0, first + 0.05))], target, rate, steps)
    if crossing < 2.0**-steps * (1 + 1e-9):  # the curve crosses at or below the smallest α bisection measures
        assert pick.method == "not-reached" or pick.alpha <= crossing
        return
    assert pick.method == "interpolation" and pick.reached and pick.index == 0
    assert pick.win_rate == rate(pick.alpha) <= target
    assert crossing - 2.0**-steps - 1e-9 <= pick.alpha <= crossing + 1e-9
    assert len(pick.probes) == steps


@given(st.lists(RATE, min_size=1, max_size=6), st.lists(RATE, min_size=1, max_size=8), st.floats(0.3, 0.9))
def test_a_noisy_curve_never_yields_a_pick_above_the_target_that_claims_to_have_reached_it(
    rates: list[float], noise: list[float], target: float
) -> None:
    curve = [(4 * (i + 1), r) for i, r in enumerate(rates)]
    answers = iter(noise * 2)
    pick = pick_band(curve, target, lambda alpha: next(answers), len(noise))
    measured = [r for _, r in curve] + [r for _, r in pick.probes]
    if pick.reached:
        assert pick.win_rate <= target
    else:  # not reached: everything measured was above the target, and the lowest of it is kept
        assert all(r > target for r in measured)
        assert pick.win_rate == min(measured)
    alphas = [a for a, _ in pick.probes]
    assert all(0 < a < 1 for a in alphas) and len(set(alphas)) == len(alphas)


def test_without_interpolation_a_missed_target_keeps_the_lowest_checkpoint_and_says_so() -> None:
    """Gens 1-2 of the unseen world: no checkpoint at or below 0.60. Before issue 26 the band silently kept the
    earliest (here 0.67) and its caption claimed "the latest at or below the target"."""
    curve = [(4, 0.67), (8, 0.65), (12, 0.64), (16, 0.68)]
    pick = pick_band(curve, 0.60, None, 4)
    assert (pick.method, pick.index, pick.win_rate, pick.reached) == ("not-reached", 2, 0.64, False)
    details, metrics = band_record(pick, 0.60, 12, [{"step": float(s), "win_rate": r} for s, r in curve])
    assert details["method"] == "not-reached" and details["reached"] is False
    assert "NOT reached" in details["message"] and "interpolation is off" in details["message"]
    assert metrics["band_reached"] == 0.0 and metrics["band_win_rate_chosen"] == 0.64


def test_bisection_halves_the_bracket_toward_the_target() -> None:
    rates = {0.5: 0.7, 0.25: 0.62, 0.125: 0.58, 0.1875: 0.61}
    alpha, probes = bisect_alpha(rates.__getitem__, 0.60, 4)
    assert alpha == 0.125 and [a for a, _ in probes] == [0.5, 0.25, 0.125, 0.1875]
    assert bisect_alpha(lambda a: 0.9, 0.60, 3) == (None, [(0.5, 0.9), (0.25, 0.9), (0.125, 0.9)])


# ------------------------------------------------------------------------------ interpolating real weights
@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from flywheel_trainer.tinymodel import train_tokenizer

    return train_tokenizer(["ahoy there captain", "the sea is calm today?", "tell me about ships"] * 4, 300)


def _save(model: Any, tokenizer: Any, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _params(directory: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory))
    return {name: tensor.detach() for name, tensor in model.named_parameters()}


def _line(tokenizer: Any, root: Path, *multiples: float) -> tuple[Path, list[Path]]:
    """A tiny parent and models at `multiples` × (another tiny model − parent) from it."""
    import torch
    from flywheel_trainer.tinymodel import tiny_llama

    parent = tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    other = dict(tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=1).named_parameters())
    base = {n: t.detach().clone() for n, t in parent.named_parameters()}
    saved = []
    for k, multiple in enumerate(multiples):
        with torch.no_grad():
            for name, tensor in parent.named_parameters():
                tensor.copy_(base[name] + multiple * (other[name] - base[name]))
        saved.append(_save(parent, tokenizer, root / f"step-{4 * (k + 1)}"))
    with torch.no_grad():
        for name, tensor in parent.named_parameters():
            tensor.copy_(base[name])
    return _save(parent, tokenizer, root / "parent"), saved


def test_an_interpolated_model_lies_between_its_parent_and_the_checkpoint(tokenizer: Any, tmp_path: Path) -> None:
    import torch

    parent, (checkpoint,) = _line(tokenizer, tmp_path, 1.0)
    line = WeightLine(str(parent), checkpoint)
    before, after = _params(parent), _params(checkpoint)
    for alpha in (0.0, 0.3, 1.0):
        got = _params(line.save(alpha, tmp_path / f"alpha-{alpha}"))
        assert got.keys() == before.keys()
        for name, value in got.items():
            expected = before[name] + alpha * (after[name] - before[name])
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
            low, high = torch.minimum(before[name], after[name]), torch.maximum(before[name], after[name])
            assert bool(((value >= low - 1e-6) & (value <= high + 1e-6)).all())
        if alpha == 0.3:  # strictly inside: neither end
            assert any(not torch.equal(got[n], before[n]) and not torch.equal(got[n], after[n]) for n in got)
    assert (tmp_path / "alpha-0.3" / "tokenizer.json").is_file()


def test_models_of_different_shapes_cannot_be_interpolated_and_the_error_names_the_setting(
    tokenizer: Any, tmp_path: Path
) -> None:
    from flywheel_trainer.tinymodel import tiny_llama

    parent = _save(tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2), tokenizer, tmp_path / "p")
    wider = _save(tiny_llama(tokenizer, hidden_size=64, num_layers=1, num_heads=2), tokenizer, tmp_path / "c")
    with pytest.raises(StageError, match="bandInterpolationSteps"):
        WeightLine(str(parent), wider)


BAND_PROMPTS = 7
"""Band prompts of the band-control test: no prompt's threshold i/7 is a bisection point (a dyadic α)."""


def _band_config(tmp_path: Path, parent: Path, target: float, steps: int) -> StageConfig:
    rows = [{"prompt": [{"role": "user", "content": f"ahoy {i}"}], "character": {"name": "Rex", "instructions": []}}
            for i in range(BAND_PROMPTS)]
    write_jsonl(tmp_path / "rl_prompts.jsonl", rows)
    return StageConfig.model_validate({  # the selection pool (1024) is past these rows: the band takes the first
        "stage": "rl", "name": "rl", "generation": "gen1", "outputDir": str(tmp_path / "rl"), "policy": str(parent),
        "data": {"userTraffic": {"uri": str(tmp_path / "traffic.jsonl")}},
        "settings": {"rl": {"bandPrompts": BAND_PROMPTS, "bandTarget": target, "bandInterpolationSteps": steps,
                            "checkpointEvery": 4}},
        "upstream": {"curate": {"rl_prompts": str(tmp_path / "rl_prompts.jsonl")}},
    })


def _position_sampler(parent: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling replaced by where the model lies on the parent→checkpoint line (its α, read from its weights),
    and the learned score of prompt i by 1 when α > i/7: the learned win rate over the parent is (7 + k)/14
    with k the prompts below α, a known curve the real band control and interpolation must land on."""
    before, after = _params(parent), _params(checkpoint)

    def position(model: Any) -> float:
        params = dict(model.named_parameters())
        dot = sum(float(((params[n].detach() - before[n]) * (after[n] - before[n])).sum()) for n in before)
        return dot / sum(float(((after[n] - before[n]) ** 2).sum()) for n in before)

    def sample(model: Any, tokenizer: Any, prompts: list[Any], **_: Any) -> list[list[str]]:
        return [[f"{position(model):.9f}"] for _ in prompts]

    def parts(rm: Any, prompts: Any, responses: list[str], characters: Any = None) -> PointwiseParts:
        learned = np.array([float(float(r) > i / len(responses)) for i, r in enumerate(responses)])
        return PointwiseParts(reward=learned + 3.0, learned=learned)

    monkeypatch.setattr(rl, "generate_reporting", sample)
    monkeypatch.setattr(scoring, "pointwise_parts", parts)


def test_band_control_interpolates_real_weights_until_it_lands_below_the_target(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    parent, checkpoints = _line(tokenizer, tmp_path, 1.0, 2.0)
    _position_sampler(parent, checkpoints[0], monkeypatch)
    config = _band_config(tmp_path, parent, 0.60, 4)
    models = [(4, checkpoints[0]), (8, checkpoints[1])]
    pick, path, curve, probes = rl.band_control(config, None, str(parent), models, tmp_path / "scratch")
    assert [c["win_rate"] for c in curve] == [1.0, 1.0]  # every checkpoint above the target
    # α = 0.5 → 11/14, 0.25 → 9/14, 0.125 → 8/14 (≤ 0.60), 0.1875 → 9/14: the largest α at or below is 0.125
    assert [p["alpha"] for p in probes] == [0.5, 0.25, 0.125, 0.1875]
    assert [round(p["win_rate"] * 14) for p in probes] == [11, 9, 8, 9]
    assert (pick.method, pick.index, pick.alpha, pick.reached) == ("interpolation", 0, 0.125, True)
    assert pick.win_rate == pytest.approx(8 / 14) and pick.win_rate <= 0.60
    got, before, after = _params(path), _params(parent), _params(checkpoints[0])
    for name, value in got.items():
        torch.testing.assert_close(value, before[name] + 0.125 * (after[name] - before[name]), rtol=0, atol=1e-6)
    details, metrics = band_record(pick, 0.60, 4, curve, probes)
    assert details["method"] == "interpolation" and details["alpha"] == 0.125 and "α=0.125" in details["message"]
    assert metrics["band_reached"] == 1.0 and metrics["band_alpha"] == 0.125 and metrics["band_interpolations"] == 4
    assert all("reward_win_rate" in p for p in [*curve, *probes])


def test_band_control_says_when_even_interpolation_cannot_reach_the_target(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target below the parent's own 0.5 cannot be reached: the lowest measured is kept and named."""
    parent, checkpoints = _line(tokenizer, tmp_path, 1.0)
    _position_sampler(parent, checkpoints[0], monkeypatch)
    config = _band_config(tmp_path, parent, 0.45, 3)
    pick, path, curve, probes = rl.band_control(config, None, str(parent), [(4, checkpoints[0])], tmp_path / "s")
    assert pick.method == "not-reached" and not pick.reached
    assert pick.alpha == 0.125 and pick.win_rate == pytest.approx(8 / 14)  # the lowest measured: the smallest α
    assert path.is_dir() and (path / "config.json").is_file()
    details, metrics = band_record(pick, 0.45, 4, curve, probes)
    assert "NOT reached" in details["message"] and metrics["band_reached"] == 0.0


# ------------------------------------------------------------------------------ the status says so
def _status(**metrics: float) -> FlywheelGenerationStatus:
    record = StageRecord(name="rl", state="Succeeded", attempts=1, child="gen1-rl-1", created_at=NOW, metrics=metrics)
    return FlywheelGenerationStatus(phase="Evaluating", stages=[record])


def test_the_status_condition_says_whether_and_how_the_band_target_was_reached() -> None:
    common = {"band_target": 0.6, "band_chosen_step": 4.0}
    missed = band_condition(_status(band_reached=0.0, band_alpha=1.0, band_win_rate_chosen=0.64, **common))
    assert missed is not None and missed[:3] == ("BandTargetReached", "False", "NotReached")
    assert "0.640" in missed[3] and "0.60" in missed[3]
    moved = band_condition(_status(band_reached=1.0, band_alpha=0.25, band_win_rate_chosen=0.58, **common))
    assert moved is not None and moved[1:3] == ("True", "Interpolation") and "0.25 of the way" in moved[3]
    kept = band_condition(_status(band_reached=1.0, band_alpha=1.0, band_win_rate_chosen=0.55, **common))
    assert kept is not None and kept[2] == "Checkpoint"
    assert band_condition(_status(band_chosen_step=4.0)) is None  # a result before issue 26, or no band


# ------------------------------------------------------------------------------ the learned win rate
def _metrics(win_rate: float, n: int) -> OfflineMetrics:
    style = StyleStats(emoji_rate=0.2, list_rate=0.0, mean_length=12.0, stock_phrase_rate=0.0)
    return OfflineMetrics(win_rate_user=win_rate, win_rate_user_n=n, instruction_following=0.9, violation_rate=0.1,
                          false_refusal_rate=0.0, style=style, parent_style=style)


def _band_check(win_rate: float, n: int) -> Any:
    result = evaluate_offline(OfflineGateSpec(), _metrics(win_rate, n), now=NOW)
    return next(c for c in result.checks if c.name == "win-rate-band")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(100, 300), st.floats(0.5, 3.0), st.floats(0.0, 0.4),
       st.one_of(st.just(0.0), st.floats(0.01, 1.0), st.floats(-1.0, -0.01)))
def test_a_candidate_that_only_improves_a_verifier_has_a_learned_win_rate_of_half_and_passes_the_band(
    seed: int, half: int, weight: float, parent_follows: float, text_weight: float
) -> None:
    """The candidate follows every instruction, the parent a share of them, and the text model tells them apart
    no better than a coin (each prompt's text score moved up or down by a hair, as many up as down). The whole
    reward wins most pairs — what the band read before issue 26, and threw the candidate away as gaming the
    reward model; the learned part wins half, and the band lets it through."""
    n = 2 * half
    rng = np.random.default_rng(seed)
    text = rng.normal(size=n)
    jitter = 1e-3 * rng.permutation(np.repeat([1.0, -1.0], half))
    follows = (rng.random(n) < parent_follows).astype(float)
    parent = PointwiseParts(reward=text_weight * text + weight * follows, learned=text_weight * text)
    moved = text_weight * (text + jitter)
    candidate = PointwiseParts(reward=moved + weight * np.ones(n), learned=moved)
    rates = band_win_rates(candidate, parent, {"user": slice(0, n)})
    assert rates["win_rate_user"] == 0.5
    assert rates["reward_win_rate_user"] >= 1 - parent_follows / 2 - 4 / np.sqrt(n)
    assert _band_check(rates["win_rate_user"], n).passed
    assert not _band_check(rates["reward_win_rate_user"], n).passed  # the band on the whole reward: "gaming"


@pytest.fixture(scope="module")
def reward_model(tokenizer: Any) -> RewardModel:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    rules = {"features": ["follows-instructions", "length"], "columns": ["follows_instructions", "words_10",
                                                                          "words_10_squared"],
             "text_weight": 0.4, "weights": [2.0, 0.3, -0.1]}
    return RewardModel(name="pointwise", kind="pointwise", signal=None, temperature=1.0,
                       model=LlamaForSequenceClassification(config).eval(), tokenizer=tokenizer, max_length=128,
                       rules=rules)


ASK = {"name": "Rex", "instructions": [{"kind": "ends_with_question", "value": None}]}
PROMPTS = [[{"role": "user", "content": f"tell me about ships {i}"}] for i in range(6)]
PARENT = ["the sea is calm today", "ahoy there captain", "ships are big", "tell me more", "ahoy", "calm seas"]
CANDIDATE = [f"{text}?" for text in PARENT]


def test_the_learned_part_is_the_text_score_alone_whatever_the_rule_weights(reward_model: RewardModel) -> None:
    from flywheel_trainer.scoring import logits_for_texts, render

    parts = pointwise_parts(reward_model, PROMPTS, CANDIDATE, [ASK] * 6)
    texts = [render(reward_model.tokenizer, p, r) for p, r in zip(PROMPTS, CANDIDATE, strict=True)]
    logits = logits_for_texts(reward_model.model, reward_model.tokenizer, texts, max_length=128)
    np.testing.assert_allclose(parts.learned, 0.4 * logits)
    np.testing.assert_allclose(parts.rules, parts.reward - 0.4 * logits)
    assert np.all(parts.rules > 1.0)  # every candidate ends with a question: the follows-instructions weight 2
    heavier = dataclasses.replace(reward_model, rules={**reward_model.rules, "weights": [9.0, 0.0, 0.0]})
    again = pointwise_parts(heavier, PROMPTS, CANDIDATE, [ASK] * 6)
    np.testing.assert_allclose(again.learned, parts.learned)
    np.testing.assert_allclose(scoring.pointwise_scores(reward_model, PROMPTS, CANDIDATE, [ASK] * 6), parts.reward)


def test_a_text_model_that_learned_nothing_gives_a_learned_win_rate_of_one_half(reward_model: RewardModel) -> None:
    """A reward model whose text head is all zeros: the candidate wins every pair of the whole reward by
    following the instruction, and exactly half of the learned part (all ties)."""
    import copy

    import torch

    blank = copy.deepcopy(reward_model)
    with torch.no_grad():
        blank.model.score.weight.zero_()
    candidate = pointwise_parts(blank, PROMPTS, CANDIDATE, [ASK] * 6)
    parent = pointwise_parts(blank, PROMPTS, PARENT, [ASK] * 6)
    rates = band_win_rates(candidate, parent, {"user": slice(0, 6)})
    assert rates == {"win_rate_user": 0.5, "reward_win_rate_user": 1.0}


def test_the_band_keeps_reading_win_rate_user_now_on_the_learned_part_with_the_whole_rewards_beside_it() -> None:
    """The gate reads `winRateUser` as before; the whole reward's win rates are new and optional."""
    schema = OfflineMetrics.model_json_schema(by_alias=True)["properties"]
    assert "learned part" in schema["winRateUser"]["description"]
    assert {"rewardWinRateUser", "rewardWinRateInternal"} <= set(schema)
    assert "rewardWinRateUser" not in OfflineMetrics.model_json_schema(by_alias=True).get("required", [])
