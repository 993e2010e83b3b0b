"""Stage `sft`: rejection sampling over the latest user prompts, then TRL SFTTrainer on the kept responses.

K candidates per prompt come from the policy and from every extra candidate model (K each); each candidate
gets a selection score = w_pointwise · z(pointwise reward) + w_continue · p(continue) + w_thumb · p(thumb up)
+ w_instructions · share of instructions followed − refusalPenalty · [refuses] (the user-signal terms only when
such models are configured; every prompt is a benign user turn, so a refusal is a false refusal). A prompt
keeps its best candidate when it beats the candidates' mean by more than `minScoreMargin` (a prompt whose
candidates are all alike teaches nothing and is rejected; the acceptance rate is reported). Style artifacts of
accepted vs rejected candidates are reported (the report tracks them to catch a selector that rewards emojis or
length).

Instruction following (issue 26): with `compliantTargetsOnly` a prompt's target comes only from the candidates
that follow every instruction of its character (the best of them by the selection score), so SFT never imitates a
broken instruction; the prompts where no candidate complies get `instructionResamples` extra rounds of K draws
from the policy first. Both are off when `instructionWeight` is 0.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flywheel_operator.api import StageConfig, StageResult

from flywheel_trainer.checkpoints import checkpoint_args, train_resuming
from flywheel_trainer.outputs import (
    SCRATCH,
    StageError,
    atomic_output_dir,
    finish_result,
    read_jsonl,
    sha256_path,
    write_jsonl,
)
from flywheel_trainer.progress import attach_progress, generate_reporting
from flywheel_trainer.runtime import lora_config, model_source, save_trained, training_kwargs
from flywheel_trainer.style import is_refusal, style_stats
from flywheel_trainer.upstream import (
    artifact_path,
    load_policy,
    pointwise_reward_name,
    reward_model_path,
    signal_model_names,
)
from flywheel_trainer.verifiers import following_by_kind, follows_all, instruction_share

Chat = list[dict[str, str]]


def sample_candidates(
    source: str,
    prompts: list[Chat],
    *,
    k: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    sampler: str = "generate",
    model: Any = None,
    tokenizer: Any = None,
) -> list[list[str]]:
    """K sampled responses per prompt from one model (loaded from `source` unless given), by the `sampler`
    backend (flywheel_trainer.generation.SAMPLERS)."""
    if model is None:
        model, tokenizer = load_policy(source)
    return generate_reporting(
        model,
        tokenizer,
        prompts,
        phase="sample",
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        num_samples=k,
        seed=seed,
        sampler=sampler,
    )


def selection_scores(
    config: StageConfig, prompts: list[Chat], responses: list[str], characters: list[dict[str, Any]]
) -> dict[str, np.ndarray]:
    """Each scorer's values for the flat (prompt, response, character) list, and the weighted selection score:
    the standardised pointwise reward, the user-signal probabilities, and the share of the character's
    instructions followed (the report's steerability stream, here scored by the verifiers)."""
    from flywheel_trainer.scoring import load_reward_model, pointwise_scores, signal_probabilities

    rs = config.settings.sft.rejection_sampling
    name = pointwise_reward_name(config)
    rm = load_reward_model(reward_model_path(config, name), field=f"upstream.reward-{name}.model")
    reward = pointwise_scores(rm, prompts, responses, characters)
    scores = {"reward": reward}
    total = rs.pointwise_weight * (reward - reward.mean()) / (reward.std() + 1e-6)
    del rm
    weights = {"continue": rs.continue_weight, "thumb-up": rs.thumb_up_weight}
    for signal, model_name in signal_model_names(config).items():
        signal_rm = load_reward_model(
            reward_model_path(config, model_name), field=f"upstream.reward-{model_name}.model"
        )
        probability = signal_probabilities(signal_rm, prompts, responses)
        scores[f"p_{signal.replace('-', '_')}"] = probability
        total = total + weights[signal] * probability
        del signal_rm
    following = np.array([instruction_share(c, r) for c, r in zip(characters, responses, strict=True)])
    scores["instruction_following"] = following
    refusals = np.array([is_refusal(r) for r in responses], dtype=float)
    scores["refusal"] = refusals
    scores["selection"] = total + rs.instruction_weight * following - rs.refusal_penalty * refusals
    return scores


def group_bounds(sizes: int | Sequence[int], total: int) -> list[tuple[int, int]]:
    """(start, end) of each prompt's candidates in a flat list of `total`: `sizes` is one count for every prompt
    or each prompt's own count (prompts that were resampled have more)."""
    if isinstance(sizes, int):
        if sizes < 1 or total % sizes:
            raise ValueError(f"{total} candidates do not split into groups of {sizes}")
        sizes = [sizes] * (total // sizes)
    if sum(sizes) != total or any(n < 1 for n in sizes):
        raise ValueError(f"group sizes {list(sizes)} do not cover {total} candidates")
    ends = np.cumsum(sizes)
    return [(int(end - n), int(end)) for n, end in zip(sizes, ends, strict=True)]


def select_best(
    selection: np.ndarray,
    per_prompt: int | Sequence[int],
    margin: float,
    eligible: np.ndarray | None = None,
) -> list[int | None]:
    """Index (within its prompt's candidates) of the kept candidate per prompt, None when none clears the margin.
    `per_prompt` is the group size, or each prompt's; with `eligible` (a flag per candidate) the pick is the best
    eligible candidate and a prompt with none is rejected. The margin is over the mean of the whole group."""
    kept: list[int | None] = []
    for start, end in group_bounds(per_prompt, len(selection)):
        group = selection[start:end]
        allowed = np.ones(end - start, dtype=bool) if eligible is None else np.asarray(eligible[start:end], bool)
        if not allowed.any():
            kept.append(None)
            continue
        best = int(np.argmax(np.where(allowed, group, -np.inf)))
        kept.append(best if group[best] - group.mean() > margin else None)
    return kept


def resample_noncompliant(
    groups: list[list[str]],
    characters: Sequence[dict[str, Any]],
    draw: Callable[[list[int], int], list[list[str]]],
    *,
    rounds: int,
) -> dict[str, int]:
    """Up to `rounds` rounds of `draw(prompt indices, round)` (more candidates for each of those prompts, appended
    to `groups` in place) for the prompts none of whose candidates yet follows every instruction. Returns the
    counts the stage reports: prompts without a compliant candidate before, draws made, and prompts still without."""
    missing = noncompliant_prompts(groups, characters)
    counts = {"prompts_without_compliant_candidate": len(missing), "prompts_resampled": 0}
    for round_ in range(1, rounds + 1):
        if not missing:
            break
        extra = draw(missing, round_)
        if len(extra) != len(missing):
            raise ValueError(f"a resampling round drew for {len(extra)} prompts, asked for {len(missing)}")
        for i, samples in zip(missing, extra, strict=True):
            groups[i].extend(samples)
        counts["prompts_resampled"] += len(missing)
        still = noncompliant_prompts([groups[i] for i in missing], [characters[i] for i in missing])
        missing = [missing[j] for j in still]
    counts["prompts_still_without_compliant_candidate"] = len(missing)
    return counts


def target_repeats(
    follows: np.ndarray,
    per_prompt: int | Sequence[int],
    kept: Sequence[int | None],
    max_repeats: int,
    shares: Sequence[float] | None = None,
) -> list[int]:
    """How many times each kept target enters the SFT data: 1 + round((max_repeats − 1) × (1 − f)), f the share of
    its prompt's candidates that follow every instruction (or `shares`, one per prompt, e.g. `character_shares`),
    so the instructions the policy rarely follows get more of the gradient (1 for every target when `max_repeats`
    is 1)."""
    if max_repeats < 1:
        raise ValueError(f"max_repeats must be >= 1, got {max_repeats}")
    bounds = group_bounds(per_prompt, len(follows))
    if shares is not None and len(shares) != len(bounds):
        raise ValueError(f"{len(shares)} shares for {len(bounds)} prompts")
    repeats = []
    for i, ((start, end), best) in enumerate(zip(bounds, kept, strict=True)):
        if best is not None:
            share = float(np.mean(follows[start:end])) if shares is None else float(shares[i])
            repeats.append(1 + int(np.floor((max_repeats - 1) * (1.0 - share) + 0.5)))  # half rounds up
    return repeats


def character_shares(
    follows: np.ndarray, per_prompt: int | Sequence[int], characters: Sequence[dict[str, Any]]
) -> list[float]:
    """Per prompt: the share of candidates following every instruction over all the prompts of its character
    (same name and instructions). Issue 26: with K = 4 a prompt's own share is 0, ¼, … and noisy; pooled over a
    character it says which characters' instructions the policy breaks (a `lowercase` character near 0.5 where
    the others are near 0.85), so `hardInstructionRepeats` gives their targets the larger share of SFT."""
    bounds = group_bounds(per_prompt, len(follows))
    if len(characters) != len(bounds):
        raise ValueError(f"{len(characters)} characters for {len(bounds)} prompts")
    keys = [repr((c.get("name", ""), c.get("instructions") or [])) for c in characters]
    totals: dict[str, list[float]] = {}
    for key, (start, end) in zip(keys, bounds, strict=True):
        tally = totals.setdefault(key, [0.0, 0.0])
        tally[0] += float(np.sum(follows[start:end]))
        tally[1] += end - start
    return [totals[key][0] / totals[key][1] for key in keys]


def kind_following(characters: Sequence[dict[str, Any]], responses: Sequence[str], chosen: Sequence[int]) -> dict:
    """Per instruction kind, the share of all candidates (`kind_following_<kind>_all`) and of the kept targets
    (`kind_following_<kind>_selected`) that keep it, and how many targets carry it (`kind_targets_<kind>`): which
    instructions the policy breaks, and how much of the SFT data teaches each (issue 26)."""
    out: dict[str, float] = {}
    for kind, (kept, n) in following_by_kind(characters, responses).items():
        out[f"kind_following_{kind}_all"] = kept / n
    chosen_kinds = following_by_kind([characters[i] for i in chosen], [responses[i] for i in chosen])
    for kind, (kept, n) in chosen_kinds.items():
        out[f"kind_following_{kind}_selected"] = kept / n
        out[f"kind_targets_{kind}"] = float(n)
    return out


def noncompliant_prompts(groups: Sequence[Sequence[str]], characters: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the prompts none of whose candidates follows every instruction of the prompt's character."""
    return [
        i
        for i, (group, character) in enumerate(zip(groups, characters, strict=True))
        if not any(
            follows_all(character.get("instructions") or [], r, character_name=character.get("name", "")) for r in group
        )
    ]


def train_sft(config: StageConfig, model: Any, tokenizer: Any, rows: list[dict[str, Any]], out: Any) -> Any:
    """SFTTrainer on `rows`; `model` is a model or a source to load with fp32 masters once the config exists
    (so ZeRO-3 loads it partitioned)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    settings = config.settings.sft
    args = SFTConfig(
        **training_kwargs(
            out / SCRATCH,
            seed=config.seed,
            deepspeed_stage=config.deepspeed_stage,
            max_steps=settings.max_steps,
            learning_rate=settings.learning_rate,
        )
        | checkpoint_args(config, "sft"),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        max_length=settings.max_length,
        activation_checkpointing=settings.activation_checkpointing,
        torch_compile=settings.compile,
    )
    if isinstance(model, str):
        model, _ = load_policy(model, training=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(settings.lora, task_type="CAUSAL_LM"),
    )
    return train_resuming(attach_progress(trainer), config, "sft")


def main(config: StageConfig) -> StageResult:

    rs = config.settings.sft.rejection_sampling
    policy = model_source(config.policy, field="policy")
    candidates = [
        model_source(m, field=f"settings.sft.rejectionSampling.candidateModels[{i}]")
        for i, m in enumerate(rs.candidate_models)
    ]
    prompts_path = artifact_path(config, "curate", "sft_prompts")
    rows = read_jsonl(prompts_path)[: rs.prompts]
    prompts = [row["prompt"] for row in rows]
    characters = [row.get("character") or {} for row in rows]
    if not prompts:
        raise StageError(f"upstream.curate.sft_prompts: {prompts_path} holds no prompts to sample for")
    from transformers import set_seed

    set_seed(config.seed)

    model, tokenizer = load_policy(policy)
    per_model = [
        sample_candidates(
            policy,
            prompts,
            k=rs.samples_per_prompt,
            max_new_tokens=rs.max_new_tokens,
            temperature=rs.temperature,
            seed=config.seed,
            sampler=rs.sampler,
            model=model,
            tokenizer=tokenizer,
        )
    ]
    if candidates:  # one model in memory at a time; a resampling round reloads the policy
        model = None
        gc.collect()
    for index, source in enumerate(candidates, start=1):
        per_model.append(
            sample_candidates(
                source,
                prompts,
                k=rs.samples_per_prompt,
                max_new_tokens=rs.max_new_tokens,
                temperature=rs.temperature,
                seed=config.seed + index,
                sampler=rs.sampler,
            )
        )
        gc.collect()
    groups = [[r for samples in per_model for r in samples[i]] for i in range(len(prompts))]
    by_instructions = rs.instruction_weight > 0

    def draw(indices: list[int], round_: int) -> list[list[str]]:
        return sample_candidates(
            policy,
            [prompts[i] for i in indices],
            k=rs.samples_per_prompt,
            max_new_tokens=rs.max_new_tokens,
            temperature=rs.temperature,
            seed=config.seed + 1000 * round_,
            sampler=rs.sampler,
            model=model,
            tokenizer=tokenizer,
        )

    resampling = resample_noncompliant(
        groups, characters, draw, rounds=rs.instruction_resamples if by_instructions else 0
    )
    model = None  # an inference copy (bf16 on CUDA); training loads fp32 masters (flywheel_trainer.placement)
    gc.collect()
    sizes = [len(group) for group in groups]
    responses = [r for group in groups for r in group]
    flat_prompts = [p for p, n in zip(prompts, sizes, strict=True) for _ in range(n)]
    flat_characters = [c for c, n in zip(characters, sizes, strict=True) for _ in range(n)]
    scores = selection_scores(config, flat_prompts, responses, flat_characters)
    scores["follows_all"] = (scores["instruction_following"] >= 1.0).astype(float)
    eligible = scores["follows_all"] > 0 if rs.compliant_targets_only and by_instructions else None
    kept = select_best(scores["selection"], sizes, rs.min_score_margin, eligible)
    bounds = group_bounds(sizes, len(responses))

    accepted, rejected, train_rows = [], [], []
    for i, best in enumerate(kept):
        group = groups[i]
        for j, response in enumerate(group):
            (accepted if j == best else rejected).append(response)
        if best is not None:
            train_rows.append({"prompt": prompts[i], "completion": [{"role": "assistant", "content": group[best]}]})
    if not train_rows:
        raise StageError(
            "rejection sampling kept no response; lower settings.sft.rejectionSampling.minScoreMargin"
            + (", raise instructionResamples or turn compliantTargetsOnly off" if eligible is not None else "")
        )
    chosen_idx = [bounds[i][0] + b for i, b in enumerate(kept) if b is not None]
    kept_mask = np.zeros(len(responses), dtype=bool)
    for (start, end), best in zip(bounds, kept, strict=True):
        kept_mask[start:end] = best is not None

    pooled = rs.hard_instruction_share == "character"
    shares = character_shares(scores["follows_all"], sizes, characters) if pooled else None
    repeats = target_repeats(
        scores["follows_all"], sizes, kept, rs.hard_instruction_repeats if by_instructions else 1, shares
    )
    training_rows = [row for row, n in zip(train_rows, repeats, strict=True) for _ in range(n)]

    with atomic_output_dir(config.output_dir) as out:
        trainer = train_sft(config, policy, tokenizer, training_rows, out)
        save_trained(trainer, out / "model", tokenizer, merge_lora=config.settings.sft.lora.enabled)
        write_jsonl(
            out / "selected.jsonl",
            (
                {**row, "scores": {k: float(v[idx]) for k, v in scores.items()}}
                for row, idx in zip(train_rows, chosen_idx, strict=True)
            ),
        )
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        accepted_style = style_stats(accepted)
        rejected_style = style_stats(rejected) if rejected else accepted_style
        metrics = {
            "prompts": len(prompts),
            "candidates": len(responses),
            "kept": len(train_rows),
            "acceptance_rate": len(train_rows) / len(prompts),
            "mean_reward_all": float(scores["reward"].mean()),
            "mean_reward_selected": float(scores["reward"][chosen_idx].mean()),
            "instruction_following_all": float(scores["instruction_following"].mean()),
            "instruction_following_selected": float(scores["instruction_following"][chosen_idx].mean()),
            "refusal_rate_all": float(scores["refusal"].mean()),
            "refusal_rate_selected": float(scores["refusal"][chosen_idx].mean()),
            "instruction_following_kept_prompts": float(scores["instruction_following"][kept_mask].mean()),
            "follows_all_rate_all": float(scores["follows_all"].mean()),
            "follows_all_rate_selected": float(scores["follows_all"][chosen_idx].mean()),
            **resampling,
            **kind_following(flat_characters, responses, chosen_idx),
            "training_rows": len(training_rows),
            **({"train_loss_first": losses[0], "train_loss_last": losses[-1]} if losses else {}),
            "steps": trainer.state.global_step,
            "tokens_seen": trainer.state.num_input_tokens_seen,
            **{f"accepted_{k}": v for k, v in accepted_style.model_dump().items()},
            **{f"rejected_{k}": v for k, v in rejected_style.model_dump().items()},
        }
        return finish_result(
            out,
            config.output_dir,
            stage="sft",
            artifacts={"model": "model", "selected": "selected.jsonl"},
            input_digests={**config.upstream_digests, "sft_prompts": sha256_path(prompts_path)},
            metrics=metrics,
            details={
                "style": {"accepted": accepted_style.model_dump(), "rejected": rejected_style.model_dump()},
                "log_history": trainer.state.log_history,
            },
        )
