"""Stage `eval`: the candidate against its parent on held-out user and internal prompts (never trained on).

Writes the OfflineMetrics the offline gate reads: reward-model win rates per traffic source (pointwise and,
when configured, pairwise; internal ones stay None when no internal prompts were evaluated; the pointwise ones
the band reads on the reward model's learned part only, `band_win_rates`; with the pairwise model's, their
paired statistic, `judge_statistics`; the band's judge, the user-signal model's text score when one is configured,
`signal_judge_statistics`), instruction
following and violations by the programmatic verifiers, the false-refusal rate over benign prompts (the
held-out user prompts: internal testers push characters to break rules on purpose), and style artifacts of the
candidate and the parent, each with the n behind it and the spread of the per-prompt style differences, so
the gate can put an interval on every check. Style is also measured after each
training stage (SFT, the DPO patch when it ran, RL), each with its drift against the parent, so a reward
hack shows where it started. Every model answers the same prompts with the same sampling seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flywheel_operator.api import OfflineMetrics, StageConfig, StageResult, StyleStats

from flywheel_trainer.outputs import StageError, atomic_output_dir, finish_result, read_jsonl, sha256_path
from flywheel_trainer.progress import generate_reporting
from flywheel_trainer.runtime import model_source
from flywheel_trainer.scoring import PointwiseParts
from flywheel_trainer.serving import eval_sampling
from flywheel_trainer.style import is_refusal, style_difference_sd, style_sd, style_stats
from flywheel_trainer.upstream import (
    artifact_path,
    load_policy,
    optional_artifact,
    pairwise_model_name,
    pointwise_reward_name,
    reward_model_path,
    signal_model_names,
)
from flywheel_trainer.verifiers import following_by_kind, follows_all, violations

SOURCES = ("user", "internal")
SAMPLE_RESPONSES = 20
"""Prompt/response examples of each source kept in the report for people to read."""


def wins(candidate: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Per prompt: 1 where the candidate scores higher, ½ on a tie, 0 where the parent does."""
    return (candidate > parent) + 0.5 * (candidate == parent)


def win_rate(candidate: np.ndarray, parent: np.ndarray) -> float:
    """Share of prompts where the candidate scores higher; ties count half."""
    return float(np.mean(wins(candidate, parent)))


def judge_statistics(
    learned_candidate: np.ndarray, learned_parent: np.ndarray, p_better: np.ndarray
) -> dict[str, float]:
    """The band's paired statistic on one source's prompts (issue 26): the correlation, prompt by prompt, of the
    pointwise RM's win on its learned part (the optimised model) with the pairwise RM's (the independent judge:
    P(candidate better) above ½), and the prompts the judge could not order (P exactly ½).

    With both win rates and n it gives the paired interval of their gap that the offline band reads
    (`flywheel_operator.gate.offline.paired_difference_interval`): two models that both see a real step up win
    on the same prompts, and their gap is known far better than either rate alone. The correlation is 0 when
    either model gave one verdict on every prompt (no covariance)."""
    ours = wins(learned_candidate, learned_parent)
    judge = wins(p_better, np.full(len(p_better), 0.5))
    return {"pairwise_win_correlation": win_correlation(ours, judge), "pairwise_ties": int(np.sum(p_better == 0.5))}


def win_correlation(ours: np.ndarray, judge: np.ndarray) -> float:
    """Pearson correlation of two per-prompt win vectors, clipped to [-1, 1]; 0 without covariance (either side
    gave one verdict on every prompt) or with fewer than two prompts."""
    if len(ours) > 1 and ours.std() > 0 and judge.std() > 0:
        return float(np.clip(np.corrcoef(ours, judge)[0, 1], -1.0, 1.0))
    return 0.0


def signal_judge_statistics(
    learned_candidate: np.ndarray, learned_parent: np.ndarray, judge_candidate: np.ndarray, judge_parent: np.ndarray
) -> dict[str, float | bool]:
    """The band's judge on one source's prompts, from another model's scores of the same responses (the user-signal
    model's text score: fitted on users' continuation signals, not on the preference pairs the optimised pointwise
    model learned from, and never RL's reward): its win rate, the per-prompt correlation of its wins with the
    optimised model's learned-part wins (0 without covariance), the prompts it scored even, and whether its
    verdict equals the optimised model's on every prompt (`judge_identical`: the same function there, as the
    pairwise model is whenever its network weight is 0 and its lexical head was fitted on the same pairs)."""
    ours = wins(learned_candidate, learned_parent)
    judge = wins(judge_candidate, judge_parent)
    return {"judge_win_rate": float(np.mean(judge)), "judge_win_correlation": win_correlation(ours, judge),
            "judge_ties": int(np.sum(judge == 0.5)), "judge_identical": bool(np.array_equal(ours, judge))}


def band_win_rates(candidate: PointwiseParts, parent: PointwiseParts, ranges: dict[str, slice]) -> dict[str, float]:
    """The pointwise RM's win rates of the candidate over the parent per traffic source (`ranges`: source →
    its prompts): `win_rate_<source>` on the learned part only, the one the offline band reads, and
    `reward_win_rate_<source>` on the whole reward.

    The rule features (follows-instructions and the other verifier and style checks) are what they measure: a
    real step up in following instructions wins most pairs of the whole reward, which the band would read as
    gaming the reward model (issue 26). Each rule has its own offline check (instruction following, false
    refusals, style drift); the band watches the text model, the part a policy can push up without changing what
    any rule checks."""
    rates: dict[str, float] = {}
    for source, prompts in ranges.items():
        rates[f"win_rate_{source}"] = win_rate(candidate.learned[prompts], parent.learned[prompts])
        rates[f"reward_win_rate_{source}"] = win_rate(candidate.reward[prompts], parent.reward[prompts])
    return rates


def instruction_rates(rows: list[dict[str, Any]], responses: list[str]) -> dict[str, float]:
    """Prompt-level following (all instructions kept) and instruction-level following, over responses whose
    character has instructions; violation rate = share of those responses breaking at least one."""
    followed, kept_instructions, total_instructions, counted = 0, 0, 0, 0
    for row, response in zip(rows, responses, strict=True):
        instructions = row["character"].get("instructions") or []
        if not instructions:
            continue
        name = row["character"]["name"]
        counted += 1
        followed += follows_all(instructions, response, character_name=name)
        total_instructions += len(instructions)
        kept_instructions += len(instructions) - len(violations(instructions, response, character_name=name))
    if counted == 0:
        return {
            "instruction_following": 1.0,
            "violation_rate": 0.0,
            "instruction_level_following": 1.0,
            "responses_with_instructions": 0.0,
        }
    return {
        "instruction_following": followed / counted,
        "violation_rate": 1.0 - followed / counted,
        "instruction_level_following": kept_instructions / total_instructions,
        "responses_with_instructions": float(counted),
    }


def style_drift(style: StyleStats, parent: StyleStats) -> dict[str, float | None]:
    """Relative change of each style artifact over the parent; None where the parent's value is 0."""
    ours, theirs = style.model_dump(), parent.model_dump()
    return {k: (ours[k] - theirs[k]) / theirs[k] if theirs[k] > 0 else None for k in ours}


def respond(
    source: str,
    prompts: list[list[dict]],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    sampler: str = "generate",
) -> tuple[list[str], int]:
    """One sampled response per prompt from the model at `source` (by the `sampler` backend), and how many
    tokens they hold."""
    import gc

    model, tokenizer = load_policy(source)
    outputs = generate_reporting(
        model,
        tokenizer,
        prompts,
        phase="generate",
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        num_samples=1,
        seed=seed,
        sampler=sampler,
    )
    del model
    gc.collect()
    responses = [group[0] for group in outputs]
    tokens = sum(len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"])
    return responses, tokens


def main(config: StageConfig) -> StageResult:
    from flywheel_trainer.scoring import load_reward_model, pairwise_probabilities, pointwise_parts, text_scores

    settings = config.settings.eval
    parent = model_source(config.policy, field="policy")
    stage_models: dict[str, str] = {
        "sft": model_source(str(artifact_path(config, "sft", "model")), field="upstream.sft.model")
    }
    if (dpo := optional_artifact(config, "rl", "dpo_model")) is not None:
        stage_models["dpo"] = str(dpo)
    if (rl := optional_artifact(config, "rl", "model")) is not None:
        stage_models["rl"] = model_source(str(rl), field="upstream.rl.model")
    candidate_stage = list(stage_models)[-1]
    prompt_paths = {s: artifact_path(config, "curate", f"eval_{s}") for s in SOURCES}
    rows = {s: read_jsonl(path)[: settings.prompts_per_source] for s, path in prompt_paths.items()}
    if not rows["user"]:
        raise StageError(f"upstream.curate.eval_user: {prompt_paths['user']} holds no prompts to evaluate on")
    all_rows = rows["user"] + rows["internal"]
    prompts = [row["prompt"] for row in all_rows]
    generation = {
        **eval_sampling(settings.max_new_tokens, settings.temperature),  # unset: as served (issue 26)
        "seed": config.seed,
        "sampler": settings.sampler,
    }
    responses, tokens_generated = {}, 0
    for stage, source in {"parent": parent, **stage_models}.items():
        responses[stage], tokens = respond(source, prompts, **generation)
        tokens_generated += tokens
    candidate = responses[candidate_stage]
    split = len(rows["user"])

    name = pointwise_reward_name(config)
    rm = load_reward_model(reward_model_path(config, name), field=f"upstream.reward-{name}.model")
    characters = [row["character"] for row in all_rows]
    text_weight = rm.rules["text_weight"] if rm.rules else None
    cand_parts = pointwise_parts(rm, prompts, candidate, characters)
    parent_parts = pointwise_parts(rm, prompts, responses["parent"], characters)
    cand_scores, parent_scores = cand_parts.reward, parent_parts.reward
    del rm
    ranges = {"user": slice(0, split), "internal": slice(split, len(all_rows))}
    have_internal = bool(rows["internal"])
    wins = band_win_rates(
        cand_parts, parent_parts, {s: r for s, r in ranges.items() if s == "user" or have_internal}
    )
    pairwise: dict[str, float] = {}
    judged: dict[str, float] = {}
    judge: dict[str, Any] = {}
    if (pairwise_name := pairwise_model_name(config)) is not None:
        pairwise_rm = load_reward_model(
            reward_model_path(config, pairwise_name), field=f"upstream.reward-{pairwise_name}.model"
        )
        p_better = pairwise_probabilities(pairwise_rm, prompts, candidate, responses["parent"])
        pairwise = {
            s: win_rate(p_better[r], np.full(r.stop - r.start, 0.5))
            for s, r in ranges.items()
            if s == "user" or have_internal
        }
        user = ranges["user"]
        judged = judge_statistics(cand_parts.learned[user], parent_parts.learned[user], p_better[user])
        judge = {"judge_model": f"{pairwise_name} (pairwise)", **signal_judge_statistics(
            cand_parts.learned[user], parent_parts.learned[user], p_better[user], np.full(split, 0.5))}
    if (signal_name := next(iter(signal_model_names(config).values()), None)) is not None:
        signal_rm = load_reward_model(
            reward_model_path(config, signal_name), field=f"upstream.reward-{signal_name}.model"
        )
        user_prompts = prompts[:split]
        judge = {"judge_model": f"{signal_name} (user-signal)", **signal_judge_statistics(
            cand_parts.learned[:split], parent_parts.learned[:split],
            text_scores(signal_rm, user_prompts, candidate[:split]),
            text_scores(signal_rm, user_prompts, responses["parent"][:split]))}
        del signal_rm

    benign = slice(0, split)
    rates = instruction_rates(all_rows, candidate)
    parent_rates = instruction_rates(all_rows, responses["parent"])
    parent_style = style_stats(responses["parent"])
    by_stage = {stage: style_stats(texts) for stage, texts in responses.items() if stage != "parent"}
    offline = OfflineMetrics(
        win_rate_user=wins["win_rate_user"],
        win_rate_internal=wins.get("win_rate_internal"),
        reward_win_rate_user=wins["reward_win_rate_user"],
        reward_win_rate_internal=wins.get("reward_win_rate_internal"),
        pairwise_win_rate_user=pairwise.get("user"),
        pairwise_win_rate_internal=pairwise.get("internal"),
        instruction_following=rates["instruction_following"],
        violation_rate=rates["violation_rate"],
        false_refusal_rate=float(np.mean([is_refusal(r) for r in candidate[benign]])),
        style=by_stage[candidate_stage],
        parent_style=parent_style,
        win_rate_user_n=split,
        win_rate_internal_n=len(all_rows) - split,
        instruction_responses=int(rates["responses_with_instructions"]),
        benign_prompts=split,
        style_responses=len(candidate),
        style_difference_sd=style_difference_sd(candidate, responses["parent"]),
        style_sd=style_sd(candidate),
        parent_style_sd=style_sd(responses["parent"]),
        pairwise_win_correlation_user=judged.get("pairwise_win_correlation"),
        pairwise_ties_user=judged.get("pairwise_ties"),
        judge_model=judge.get("judge_model"),
        judge_win_rate_user=judge.get("judge_win_rate"),
        judge_win_correlation_user=judge.get("judge_win_correlation"),
        judge_ties_user=judge.get("judge_ties"),
        judge_identical_user=judge.get("judge_identical"),
    )
    metrics = {
        k: v
        for k, v in offline.model_dump(
            exclude={"style", "parent_style", "style_difference_sd", "style_sd", "parent_style_sd", "judge_model"}
        ).items()
        if v is not None
    }
    if offline.judge_identical_user is not None:  # a stage metric is a number: 1.0 when the judge is the same function
        metrics["judge_identical_user"] = float(offline.judge_identical_user)
    metrics.update({f"style_{k}": v for k, v in offline.style.model_dump().items()})
    metrics.update({f"parent_style_{k}": v for k, v in parent_style.model_dump().items()})
    metrics.update({k: v for k, v in rates.items() if k not in metrics})
    metrics.update({f"parent_{k}": v for k, v in parent_rates.items()})
    for prefix, texts in (("", candidate), ("parent_", responses["parent"])):  # issue 26: which instruction breaks
        by_kind = following_by_kind([row["character"] for row in all_rows], texts)
        metrics.update({f"{prefix}kind_following_{kind}": kept / n for kind, (kept, n) in by_kind.items()})
    metrics["parent_false_refusal_rate"] = float(np.mean([is_refusal(r) for r in responses["parent"][benign]]))
    metrics["mean_reward_candidate"] = float(cand_scores.mean())
    metrics["mean_reward_parent"] = float(parent_scores.mean())
    metrics["mean_learned_reward_candidate"] = float(cand_parts.learned.mean())
    metrics["mean_learned_reward_parent"] = float(parent_parts.learned.mean())
    if text_weight is not None:
        metrics["rm_text_weight"] = float(text_weight)
    metrics["tokens_generated"] = tokens_generated
    report = {
        "candidate_stage": candidate_stage,
        "prompts": {s: len(r) for s, r in rows.items()},
        "internal_prompts_missing": not have_internal,
        "style_by_stage": {
            s: {"style": st.model_dump(), "drift_vs_parent": style_drift(st, parent_style)}
            for s, st in by_stage.items()
        },
        "parent_style": parent_style.model_dump(),
        "samples": [
            {
                "source": "user" if i < split else "internal",
                "prompt": all_rows[i]["prompt"][-1]["content"],
                "parent": responses["parent"][i],
                "candidate": candidate[i],
            }
            for i in range(min(SAMPLE_RESPONSES, len(all_rows)))
        ],
    }
    with atomic_output_dir(config.output_dir) as out:
        Path(out / "report.json").write_text(
            json.dumps({**report, "offline_metrics": offline.to_wire(), "metrics": metrics}, indent=2), encoding="utf-8"
        )
        inputs = {f"eval_{s}": sha256_path(path) for s, path in prompt_paths.items()}
        return finish_result(
            out,
            config.output_dir,
            stage="eval",
            artifacts={"report": "report.json"},
            input_digests={**config.upstream_digests, **inputs},
            metrics=metrics,
            details={"offline_metrics": offline.to_wire(), **report},
        )
