"""Pure parts of the stages: calibration, MinHash dedup, stratified sampling, privacy rules, prompt selection,
rejection-sampling selection, instruction rewards, win rates."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from flywheel_trainer.calibration import calibration_report, expected_calibration_error, roc_auc, sigmoid
from flywheel_trainer.dedup import keep_first_of_clusters, near_duplicate_clusters
from flywheel_trainer.evaluate import instruction_rates, win_rate
from flywheel_trainer.privacy import pii_kinds
from flywheel_trainer.reward import pair_accuracy
from flywheel_trainer.rl import PolicyReward, choose_checkpoint, select_prompts
from flywheel_trainer.sampling import grouped_split, stratified_sample, stratified_split
from flywheel_trainer.sft import select_best
from hypothesis import given, settings
from hypothesis import strategies as st


def test_ece_is_zero_for_calibrated_and_large_for_overconfident_predictions() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    labels = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert expected_calibration_error(p, labels) < 0.02
    overconfident = np.where(p > 0.5, 0.99, 0.01)
    assert expected_calibration_error(overconfident, labels) > 0.2


def test_temperature_scaling_fixes_overconfidence_without_changing_accuracy() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 1.5, 4000)
    labels = (rng.uniform(0, 1, true_logits.size) < sigmoid(true_logits)).astype(int)
    report = calibration_report(true_logits * 4, labels)
    assert report["temperature"] == pytest.approx(4, rel=0.15)
    assert report["ece_calibrated"] < report["ece"] / 3
    assert report["accuracy"] == pytest.approx(float(np.mean((true_logits > 0) == labels)))


@pytest.mark.parametrize("seed", [2, 3])
def test_cross_fitted_calibration_of_a_pairwise_layout_is_not_split_by_class(seed: int) -> None:
    """The pairwise model scores each held-out pair forward (label 1) then backward (label 0): a split by index
    parity would fit T on one class per half and, with any position bias, wreck the calibrated ECE (issue 16:
    0.68-0.74)."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0, 1.5, 300)
    correct = rng.uniform(0, 1, margin.size) < sigmoid(margin)
    chosen_better = margin * np.where(correct, 1, -1)
    position_bias = 1.0
    logits = np.ravel(np.column_stack([chosen_better + position_bias, -chosen_better + position_bias]))
    report = calibration_report(logits, [1, 0] * margin.size)
    assert report["ece_calibrated"] < 0.1


@given(
    st.lists(st.floats(-6, 6).filter(lambda x: abs(x) > 1e-3), min_size=1, max_size=60),
    st.floats(0.5, 5.0),
    st.floats(0.2, 5.0),
)
@settings(max_examples=60)
def test_a_pairwise_models_accuracy_averages_both_orders_whatever_its_position_bias(
    chosen_better: list[float], bias: float, temperature: float
) -> None:
    """A model that always prefers the first position scores 0.5 per presentation (each pair once right, once
    wrong) whatever it knows; per pair, averaged over both orders as the model is used, its knowledge shows."""
    margin = np.array(chosen_better)
    logits = np.ravel(np.column_stack([margin + bias, -margin + bias]))
    report = pair_accuracy(logits, temperature)
    truth = np.mean(margin > 0)
    assert report["accuracy"] == pytest.approx(truth)
    assert report["position_bias"] > 0
    if np.all(np.abs(margin) < bias):
        assert report["presentation_accuracy"] == 0.5


@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=1, max_size=80))
@settings(max_examples=80)
def test_roc_auc_is_the_share_of_positive_negative_pairs_ordered_right_whatever_the_base_rate(
    examples: list[tuple[int, bool]],
) -> None:
    """A user-signal model's AUC: every positive against every negative, ties half; its interval holds it; a
    monotone rescaling of the scores changes nothing; one class alone has no AUC."""
    scores = np.array([float(s) for s, _ in examples])
    labels = np.array([int(y) for _, y in examples])
    found = roc_auc(scores, labels)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if positives.size == 0 or negatives.size == 0:
        assert found is None
        return
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in positives for n in negatives])
    assert found["auc"] == pytest.approx(brute)
    assert 0.0 <= found["auc_low"] <= found["auc"] <= found["auc_high"] <= 1.0
    assert roc_auc(np.exp(scores / 3.0) - 7.0, labels)["auc"] == pytest.approx(brute)


def test_a_classifier_that_always_says_the_common_class_is_accurate_but_at_chance_by_auc() -> None:
    """Two users in three continue: a model that says "continues" for everyone is 2/3 accurate and knows nothing."""
    labels = np.array([1, 1, 0] * 200)
    constant = np.full(labels.size, 3.0)
    assert calibration_report(constant, labels)["accuracy"] == pytest.approx(2 / 3)
    found = roc_auc(constant, labels)
    assert found["auc"] == 0.5 and found["auc_low"] < 0.5 < found["auc_high"]
    informative = labels + np.random.default_rng(0).normal(0, 0.5, labels.size)
    assert roc_auc(informative, labels)["auc_low"] > 0.8


def test_minhash_clusters_near_duplicates_and_keeps_distinct_texts() -> None:
    base = "the starship captain tells a long story about comets and moons and the quiet of deep space tonight"
    texts = [
        base,
        base + " friend",
        "a gardener explains how roses need sun water and patience every spring day",
        base.replace("tonight", "today"),
        "short",
    ]
    clusters = near_duplicate_clusters(texts, threshold=0.7)
    assert clusters[0] == clusters[1] == clusters[3] == 0
    assert clusters[2] == 2 and clusters[4] == 4
    assert keep_first_of_clusters(texts, threshold=0.7) == [True, False, True, False, True]
    assert all(keep_first_of_clusters(texts, threshold=1.0)[i] for i in (0, 1, 2, 4))


@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=80), st.integers(0, 100), st.integers(0, 5))
@settings(max_examples=60, deadline=None)
def test_stratified_sample_keeps_proportions(strata: list[str], size: int, seed: int) -> None:
    items = list(enumerate(strata))
    sample = stratified_sample(items, size, stratum=lambda item: item[1], seed=seed)
    assert len(sample) == min(size, len(items))
    assert sample == sorted(sample)
    counts, picked = Counter(strata), Counter(s for _, s in sample)
    for key, count in counts.items():
        assert abs(picked[key] - len(sample) * count / len(items)) < 1 + 1e-9


@given(st.lists(st.sampled_from("xy"), min_size=2, max_size=50), st.floats(0.01, 0.9))
@settings(max_examples=40, deadline=None)
def test_stratified_split_is_a_partition_with_a_nonempty_hold_out(strata: list[str], fraction: float) -> None:
    items = list(enumerate(strata))
    kept, held = stratified_split(items, fraction, stratum=lambda item: item[1], seed=0)
    assert held and sorted(kept + held) == items


@given(st.lists(st.tuples(st.sampled_from("xy"), st.integers(0, 6)), min_size=2, max_size=60), st.floats(0.01, 0.9))
@settings(max_examples=40, deadline=None)
def test_grouped_split_keeps_every_group_on_one_side(rows: list[tuple[str, int]], fraction: float) -> None:
    items = [(index, stratum, group) for index, (stratum, group) in enumerate(rows)]
    kept, held = grouped_split(items, fraction, group=lambda item: item[2], stratum=lambda item: item[1], seed=0)
    assert sorted(kept + held) == items
    assert not {item[2] for item in kept} & {item[2] for item in held}
    assert held or len({item[2] for item in items}) < 2


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("write to ana.lopez@mail.example.org", ["email"]),
        ("call me on (555) 123-4567", ["phone"]),
        ("+44 20 7946 0958", ["phone"]),
        ("account 123456789012", ["phone", "digit_run"]),
        ("i have 3 cats and 12 fish", []),
        ("it was 1999, a good year", []),
        ("see you at 10:30", []),
    ],
)
def test_personal_data_rules(text: str, kinds: list[str]) -> None:
    assert pii_kinds(text) == kinds


def test_prompt_selection_takes_low_scores_high_variance_or_both() -> None:
    means = np.array([0.0, -3.0, 1.0, -1.0, 2.0])
    variances = np.array([0.1, 0.0, 5.0, 0.2, 3.0])
    assert select_prompts(means, variances, 2, "low-score") == [1, 3]
    assert select_prompts(means, variances, 2, "high-variance") == [2, 4]
    assert select_prompts(means, variances, 3, "mixed") == [1, 2, 3]


def test_rejection_sampling_keeps_the_best_candidate_above_the_margin() -> None:
    selection = np.array([0.1, 0.9, 0.2, 0.5, 0.5, 0.5])
    assert select_best(selection, 3, margin=0.0) == [1, None]  # a best that is no better than the rest is no pick
    assert select_best(selection, 3, margin=0.3) == [1, None]
    assert select_best(selection, 3, margin=0.6) == [None, None]


def test_the_default_rejection_sampling_margin_rejects_some_prompts() -> None:
    """Issue 16: margin 0 accepted every prompt (acceptance 1.0) however little its best stood out."""
    from flywheel_operator.api.models import RejectionSamplingSettings

    margin = RejectionSamplingSettings().min_score_margin
    rng = np.random.default_rng(0)
    selection = rng.normal(0, 0.3, (200, 4)) + rng.choice([0.0, 2.0], (200, 4), p=[0.8, 0.2])
    kept = select_best(selection.ravel(), 4, margin=margin)
    assert 0.2 < sum(k is not None for k in kept) / len(kept) < 0.9


def test_rl_reward_is_p_beats_parent_plus_instructions_minus_length_emoji_and_refusal_penalties() -> None:
    character = json.dumps(
        {
            "name": "Rex",
            "instructions": [{"kind": "no_emoji", "value": None}, {"kind": "ends_with_question", "value": None}],
        }
    )
    refusal = "I'm sorry, but I can't talk about ships?"
    texts = ["what now?", "ok 🙂", "fine 🙂 fine 🙂 fine 🙂 fine?", refusal]
    scored_for: list[dict] = []

    def score(prompts: list, texts: list[str], characters: list[dict]) -> np.ndarray:
        scored_for.extend(characters)
        return np.array([2.0, 0.0, 2.0, 2.0])

    reward = PolicyReward(
        score,
        temperature=2.0,
        instruction_weight=1.0,
        length_penalty=0.5,
        emoji_penalty=0.1,
        refusal_penalty=1.5,
    )
    logged: dict[str, float] = {}
    rewards = reward(
        prompts=[[], [], [], []],
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        character=[character] * 4,
        parent_reward=[0.0, 0.0, 2.0, 0.0],
        parent_words=[2.0, 2.0, 2.0, 8.0],
        parent_emojis=[0.0, 0.0, 1.0, 0.0],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    # 4 words against the parent's 2 (+100 %) and 3 emojis against its 1; the refusal follows both instructions
    # and the RM likes it as much as the first answer, but it refuses a benign prompt
    assert rewards == pytest.approx(
        [sigmoid(1.0) + 1.0, 0.5 + 0.0 - 0.1, 0.5 + 0.5 - 0.5 * 1.0 - 0.1 * 2.0, sigmoid(1.0) + 1.0 - 1.5]
    )
    assert scored_for == [json.loads(character)] * 4  # the reward model reads each rollout's character
    assert logged["style/emoji_rate"] == pytest.approx(1.0)
    assert logged["style/refusal_rate"] == pytest.approx(0.25)
    assert logged["reward/p_beats_parent"] == pytest.approx((2 * sigmoid(1.0) + 1.0) / 4)


def test_win_rate_counts_ties_half_and_instruction_rates_skip_characters_without_instructions() -> None:
    assert win_rate(np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, -1.0])) == pytest.approx(0.625)
    rows = [
        {"character": {"name": "Sage", "instructions": [{"kind": "ends_with_question", "value": None}]}},
        {
            "character": {
                "name": "Sage",
                "instructions": [{"kind": "ends_with_question", "value": None}, {"kind": "no_emoji", "value": None}],
            }
        },
        {"character": {"name": "Nova", "instructions": []}},
    ]
    rates = instruction_rates(rows, ["how are you?", "hi 🙂?", "anything"])
    assert rates["instruction_following"] == pytest.approx(0.5)
    assert rates["violation_rate"] == pytest.approx(0.5)
    assert rates["instruction_level_following"] == pytest.approx(2 / 3)


def test_the_band_picks_the_latest_checkpoint_at_or_below_the_target() -> None:
    """Issue 16: a run that overshoots the band is stopped at the right checkpoint instead of thrown away."""
    curve = [(4, 0.52), (8, 0.58), (12, 0.63), (16, 0.69)]
    assert choose_checkpoint(curve, 0.60) == 1
    assert choose_checkpoint([(4, 0.55), (8, 0.70), (12, 0.59)], 0.60) == 2
    assert choose_checkpoint([(4, 0.66), (8, 0.70)], 0.60) is None  # issue 26: never silently the earliest
    assert choose_checkpoint(curve, 0.70) == 3
