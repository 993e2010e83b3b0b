"""The whole chain curate → reward (pointwise, pairwise, user-signal) → sft → rl (DPO patch + GRPO) → eval on a
tiny Llama-config model, on CPU, through the same entry points the Jobs use, asserting behaviour."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from flywheel_operator.api import OfflineMetrics, StageConfig, StageResult
from flywheel_trainer import cli
from flywheel_trainer.outputs import RESULT_FILE, combined_digest, read_jsonl, sha256_path
from flywheel_trainer.synthetic import synthetic_records
from flywheel_trainer.turns import assistant_turns

pytestmark = pytest.mark.slow

REWARD_MODELS = [
    {
        "name": "pointwise",
        "kind": "pointwise",
        "learningRate": 3e-3,
        "epochs": 2,
        "batchSize": 16,
        "ruleFeatures": ["asks-back", "follows-instructions", "length"],  # every stage downstream scores with them
    },
    {"name": "pairwise", "kind": "pairwise", "learningRate": 3e-3, "epochs": 2, "batchSize": 16},
    {
        "name": "continue",
        "kind": "user-signal",
        "signal": "continue",
        "learningRate": 3e-3,
        "maxSteps": 20,
        "batchSize": 16,
    },
]
SETTINGS: dict[str, Any] = {
    "rewardModels": REWARD_MODELS,
    "sft": {
        "rejectionSampling": {"samplesPerPrompt": 4, "prompts": 32, "maxNewTokens": 24, "instructionWeight": 3.0},
        "learningRate": 1e-3,
        "maxSteps": 4,
        "batchSize": 8,
    },
    "dpo": {"enabled": True, "maxPairs": 16, "learningRate": 1e-4, "batchSize": 8},
    "rl": {
        "numGenerations": 4,
        "prompts": 12,
        "selectionSamples": 4,
        "selectionPool": 32,
        "promptsPerStep": 4,
        "maxSteps": 8,
        "learningRate": 2e-3,
        "maxNewTokens": 24,
        "klBeta": 0.02,
        "checkpointEvery": 4,
        "bandPrompts": 16,
        "bandInterpolationSteps": 0,  # RL's own climb is tested here; the band's pull toward the parent in test_band
    },
    "eval": {"promptsPerSource": 24, "maxNewTokens": 24},
}


def _config(
    stage: str, name: str, root: Path, policy: Path, log: Path, done: dict[str, StageResult], **extra: Any
) -> dict[str, Any]:
    return {
        "stage": stage,
        "name": name,
        "generation": "gen1",
        "outputDir": str(root / name),
        "policy": str(policy),
        "data": {"userTraffic": {"uri": str(log)}},
        "settings": SETTINGS,
        "seed": 0,
        "upstream": {n: r.artifacts for n, r in done.items()},
        "upstreamDigests": {n: r.output_digest for n, r in done.items()},
        **extra,
    }


@pytest.fixture(scope="module")
def chain(
    tmp_path_factory: pytest.TempPathFactory, synthetic_log: Path, tiny_parent: Path, single_torch_thread: None
) -> dict[str, StageResult]:
    root = tmp_path_factory.mktemp("chain")
    done: dict[str, StageResult] = {}
    # curate goes through the command line with a YAML file, as in a Job
    config_file = root / "curate.yaml"
    config_file.write_text(yaml.safe_dump(_config("curate", "curate", root, tiny_parent, synthetic_log, done)))
    assert cli.main(["curate", "--config", str(config_file)]) == 0
    done["curate"] = StageResult.model_validate_json((root / "curate" / RESULT_FILE).read_text())
    for model in REWARD_MODELS:
        name = f"reward-{model['name']}"
        config = _config("reward", name, root, tiny_parent, synthetic_log, done, rewardModel=model["name"])
        done[name] = cli.run_stage(StageConfig.model_validate(config))
    for stage in ("sft", "rl", "eval"):
        done[stage] = cli.run_stage(
            StageConfig.model_validate(_config(stage, stage, root, tiny_parent, synthetic_log, done))
        )
    return done


def test_pointwise_reward_model_separates_held_out_pairs(chain: dict[str, StageResult]) -> None:
    from flywheel_trainer.scoring import load_reward_model, pointwise_scores

    assert chain["reward-pointwise"].metrics["accuracy"] > 0.9
    # a fresh held-out set the reward model never saw: good and bad replies to new conversations
    rm = load_reward_model(chain["reward-pointwise"].artifacts["model"], field="test")
    prompts, chosen, rejected, characters = [], [], [], []
    for record in synthetic_records(80, seed=99):
        for turn in assistant_turns(record):
            for bad in turn.rejected:
                prompts.append(turn.context)
                chosen.append(turn.response)
                rejected.append(bad)
                characters.append(turn.character)
    assert len(prompts) >= 20
    margin = pointwise_scores(rm, prompts, chosen, characters) - pointwise_scores(rm, prompts, rejected, characters)
    assert float(np.mean(margin > 0)) > 0.9


def test_rule_features_are_fitted_next_to_the_text_and_need_the_character(chain: dict[str, StageResult]) -> None:
    """The pointwise model's reward is a × text logit + fitted rule weights; scoring it without characters is an
    error that says so, and the stage reports the text score's own accuracy beside the combined one."""
    from flywheel_trainer.outputs import StageError
    from flywheel_trainer.scoring import load_reward_model, pointwise_scores, text_scores

    result = chain["reward-pointwise"]
    meta = json.loads((Path(result.artifacts["model"]) / "flywheel_reward.json").read_text())
    rules = meta["rules"]
    assert rules["features"] == ["asks-back", "follows-instructions", "length"]
    assert rules["columns"] == ["asks_back", "follows_instructions", "words_10", "words_10_squared"]
    assert len(rules["weights"]) == 4 and rules["text_weight"] > 0
    assert 0.0 <= result.metrics["text_accuracy"] <= 1.0
    assert result.metrics["rule_weight_asks_back"] == rules["weights"][0]
    rm = load_reward_model(result.artifacts["model"], field="test")
    prompt = [{"role": "user", "content": "hi"}]
    character = {"name": "Rex", "instructions": [{"kind": "ends_with_question", "value": None}]}
    with pytest.raises(StageError, match="rule features"):
        pointwise_scores(rm, [prompt], ["ahoy"])
    text = text_scores(rm, [prompt], ["ahoy there?"])  # the learned part: the logit mixed with the lexical head
    # "ahoy there?" asks back, follows the instruction and is 2 words long
    by_hand = rules["text_weight"] * text[0] + np.dot(rules["weights"], [1.0, 1.0, 0.2, 0.04])
    assert pointwise_scores(rm, [prompt], ["ahoy there?"], [character])[0] == pytest.approx(by_hand)


def test_every_reward_model_mixes_its_logit_with_a_lexical_head(chain: dict[str, StageResult]) -> None:
    """The lexical head is fitted on the same data and mixed with the model's logit (flywheel_trainer.lexical); the
    stage says what each part reads alone, and a pairwise model stays free of position bias with it."""
    from flywheel_trainer.scoring import (
        load_reward_model,
        logits_for_texts,
        pairwise_probabilities,
        render,
        signal_probabilities,
        text_scores,
    )

    for name in ("reward-pointwise", "reward-pairwise", "reward-continue"):
        result = chain[name]
        meta = json.loads((Path(result.artifacts["model"]) / "flywheel_reward.json").read_text())
        assert set(meta["lexical"]) == {"head", "model_weight", "lexical_weight", "bias"}, name
        assert result.metrics["lexical_columns"] == len(meta["lexical"]["head"]["columns"]) > 3, name
        assert result.metrics["lexical_weight"] == meta["lexical"]["lexical_weight"], name
    assert {"model_accuracy", "lexical_accuracy", "text_accuracy"} <= set(chain["reward-pointwise"].metrics)
    assert {"model_auc", "lexical_auc"} <= set(chain["reward-continue"].metrics)
    prompts = [[{"role": "user", "content": "hi! tell me about maps."}]] * 2
    first, second = ["maps are fun, matey. what about you?", "the weather is nice"], ["hi", "maps! 🎉"]
    pairwise = load_reward_model(chain["reward-pairwise"].artifacts["model"], field="test")
    forward, backward = pairwise_probabilities(pairwise, prompts, first, second), pairwise_probabilities(
        pairwise, prompts, second, first)
    np.testing.assert_allclose(forward + backward, 1.0)
    signal = load_reward_model(chain["reward-continue"].artifacts["model"], field="test")
    lexical, logits = signal.lexical, logits_for_texts(
        signal.model, signal.tokenizer, [render(signal.tokenizer, p, r) for p, r in zip(prompts, first, strict=True)],
        max_length=signal.max_length)
    by_hand = (lexical["model_weight"] * logits + lexical["lexical_weight"] * signal.lexical_head.score(prompts, first)
               + lexical["bias"])
    np.testing.assert_allclose(text_scores(signal, prompts, first), by_hand)
    np.testing.assert_allclose(signal_probabilities(signal, prompts, first),
                               1.0 / (1.0 + np.exp(-by_hand / signal.temperature)), atol=1e-9)


def test_reward_models_report_calibration(chain: dict[str, StageResult]) -> None:
    for name in ("reward-pointwise", "reward-pairwise", "reward-continue"):
        metrics = chain[name].metrics
        for key in ("accuracy", "ece", "ece_calibrated"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["temperature"] > 0
    signal = chain["reward-continue"].metrics  # chance-free quality of an unbalanced signal, with its interval
    assert 0.0 <= signal["auc_low"] <= signal["auc"] <= signal["auc_high"] <= 1.0
    assert "auc" not in chain["reward-pointwise"].metrics


def test_rl_raises_the_policys_mean_reward_on_its_prompts(chain: dict[str, StageResult]) -> None:
    from flywheel_trainer.generation import generate
    from flywheel_trainer.scoring import load_reward_model, pointwise_scores
    from flywheel_trainer.upstream import load_policy

    rl = chain["rl"]
    rm = load_reward_model(chain["reward-pointwise"].artifacts["model"], field="test")
    rows = read_jsonl(rl.artifacts["prompts"])
    prompts = [row["prompt"] for row in rows]
    assert len(prompts) == SETTINGS["rl"]["prompts"]

    def mean_reward(source: str) -> float:
        model, tokenizer = load_policy(source)
        responses = generate(model, tokenizer, prompts, max_new_tokens=24, temperature=1.0, num_samples=4, seed=7)
        flat_prompts = [p for p in prompts for _ in range(4)]
        flat_characters = [row["character"] for row in rows for _ in range(4)]
        flat = [r for group in responses for r in group]
        return float(pointwise_scores(rm, flat_prompts, flat, flat_characters).mean())

    before, after = mean_reward(rl.artifacts["dpo_model"]), mean_reward(rl.artifacts["model"])
    assert after > before
    assert rl.metrics["reward_after"] > rl.metrics["reward_before"]
    steps = rl.details["steps"]
    assert len(steps) == SETTINGS["rl"]["maxSteps"]
    assert {"reward", "kl", "mean_length_tokens", "emoji_rate"} <= set(steps[0])


def test_rejection_sampling_prefers_candidates_that_follow_the_instructions(chain: dict[str, StageResult]) -> None:
    sft = chain["sft"]
    assert sft.metrics["instruction_following_selected"] > sft.metrics["instruction_following_kept_prompts"]
    assert sft.metrics["acceptance_rate"] < 1.0  # the default margin rejects prompts whose candidates are alike
    selected = read_jsonl(sft.artifacts["selected"])
    assert all(0.0 <= row["scores"]["instruction_following"] <= 1.0 for row in selected)
    # issue 26: by default a target follows every instruction of its character (compliantTargetsOnly)
    assert all(row["scores"]["follows_all"] == 1.0 for row in selected)
    assert sft.metrics["follows_all_rate_selected"] == 1.0
    assert sft.metrics["prompts_resampled"] == sft.metrics["prompts_without_compliant_candidate"]
    assert sft.metrics["refusal_rate_selected"] <= sft.metrics["refusal_rate_all"]
    assert all(row["scores"]["refusal"] in (0.0, 1.0) for row in selected)


def test_every_rate_is_a_probability(chain: dict[str, StageResult]) -> None:
    offline = OfflineMetrics.model_validate(chain["eval"].details["offline_metrics"])
    assert offline.pairwise_win_rate_user is not None
    for result in chain.values():
        for key, value in result.metrics.items():
            rate = key.endswith(("_rate", "accuracy", "ece", "ece_calibrated", "instruction_following"))
            if rate or (key.startswith(("win_rate", "pairwise_win_rate")) and not key.endswith("_n")):
                assert 0.0 <= value <= 1.0, (result.stage, key, value)
    report = chain["eval"].details
    assert set(report["style_by_stage"]) == {"sft", "dpo", "rl"}
    prompts = report["prompts"]
    assert offline.win_rate_user_n == prompts["user"] and offline.benign_prompts == prompts["user"]
    assert offline.win_rate_internal_n == prompts["internal"] and offline.style_responses == sum(prompts.values())
    assert set(offline.style_difference_sd) == {"emoji_rate", "list_rate", "mean_length", "stock_phrase_rate"}


def test_eval_reports_the_paired_statistic_of_the_band_against_the_pairwise_judge(
    chain: dict[str, StageResult],
) -> None:
    """Issue 26: the eval stage scores both models on each user prompt and reports their per-prompt correlation
    and the judge's ties, which the offline band's paired interval of the gap reads."""
    offline = OfflineMetrics.model_validate(chain["eval"].details["offline_metrics"])
    assert offline.pairwise_win_correlation_user is not None and -1.0 <= offline.pairwise_win_correlation_user <= 1.0
    assert offline.pairwise_ties_user is not None and 0 <= offline.pairwise_ties_user <= offline.win_rate_user_n
    metrics = chain["eval"].metrics
    assert metrics["pairwise_win_correlation_user"] == offline.pairwise_win_correlation_user
    assert metrics["pairwise_ties_user"] == offline.pairwise_ties_user


def test_stage_results_chain_by_digest(chain: dict[str, StageResult]) -> None:
    upstream_of = {
        "reward-pointwise": ["curate"],
        "sft": ["curate", "reward-pointwise", "reward-continue"],
        "rl": ["curate", "sft", "reward-pointwise"],
        "eval": ["curate", "sft", "rl", "reward-pairwise"],
    }
    for stage, parents in upstream_of.items():
        for parent in parents:
            assert chain[stage].input_digests[parent] == chain[parent].output_digest, (stage, parent)
    for result in chain.values():
        on_disk = {key: sha256_path(path) for key, path in result.artifacts.items()}
        assert combined_digest(on_disk) == result.output_digest
        written = json.loads((Path(result.artifacts[next(iter(result.artifacts))]).parent / RESULT_FILE).read_text())
        assert StageResult.model_validate(written) == result


def test_outputs_hold_no_scratch_or_partial_files(chain: dict[str, StageResult]) -> None:
    root = Path(chain["curate"].artifacts["report"]).parent.parent
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    for result in chain.values():
        assert not (Path(result.artifacts[next(iter(result.artifacts))]).parent / "scratch").exists()


def test_rl_band_picks_the_latest_checkpoint_within_the_target_and_reports_the_curve(
    chain: dict[str, StageResult],
) -> None:
    rl = chain["rl"]
    band = rl.details["band"]
    curve = band["curve"]
    assert [c["step"] for c in curve] == [4.0, 8.0]
    assert all(0.0 <= c["win_rate"] <= 1.0 and c["prompts"] == 16 for c in curve)
    assert all(0.0 <= c["reward_win_rate"] <= 1.0 for c in curve)  # the whole reward's, beside the learned part's
    within = [c["step"] for c in curve if c["win_rate"] <= band["target"]]
    if within:
        assert (band["method"], band["chosen_step"], band["alpha"]) == ("checkpoint", within[-1], 1.0)
    elif SETTINGS["rl"]["bandInterpolationSteps"]:  # issue 26: interpolated toward the earliest checkpoint
        assert band["method"] in ("interpolation", "not-reached") and band["chosen_step"] == curve[0]["step"]
        assert len(band["probes"]) == SETTINGS["rl"]["bandInterpolationSteps"]
        assert all(0 < p["alpha"] < 1 for p in band["probes"])
    else:  # no interpolation: said not reached, the lowest checkpoint kept (never silently the earliest)
        assert band["method"] == "not-reached" and not band["probes"]
        assert band["win_rate"] == min(c["win_rate"] for c in curve)
    assert band["reached"] == (band["win_rate"] <= band["target"]) == (band["method"] != "not-reached")
    assert rl.metrics["band_chosen_step"] == band["chosen_step"]
    assert rl.metrics["band_reached"] == float(band["reached"]) and rl.metrics["band_alpha"] == band["alpha"]


def test_eval_band_win_rate_reads_the_learned_part_and_the_whole_rewards_is_beside_it(
    chain: dict[str, StageResult],
) -> None:
    offline = OfflineMetrics.model_validate(chain["eval"].details["offline_metrics"])
    metrics = chain["eval"].metrics
    assert offline.reward_win_rate_user is not None and offline.reward_win_rate_internal is not None
    assert metrics["reward_win_rate_user"] == offline.reward_win_rate_user
    assert "rm_text_weight" in metrics  # the pointwise model has rule features: its text weight is reported


def test_eval_judges_the_band_with_the_user_signal_model(chain: dict[str, StageResult]) -> None:
    """Issue 26 (h26b): the band's judge is the user-signal model, scored on the same user prompts, with the
    statistics the band's paired interval reads and whether its verdicts are the optimised model's on every one."""
    offline = OfflineMetrics.model_validate(chain["eval"].details["offline_metrics"])
    assert offline.judge_model == "continue (user-signal)"
    assert offline.judge_win_rate_user is not None and 0.0 <= offline.judge_win_rate_user <= 1.0
    assert offline.judge_ties_user is not None and 0 <= offline.judge_ties_user <= offline.win_rate_user_n
    assert offline.judge_win_correlation_user is not None and -1.0 <= offline.judge_win_correlation_user <= 1.0
    assert chain["eval"].metrics["judge_identical_user"] == float(offline.judge_identical_user)
