"""Stage `sft`: rejection sampling over the latest user prompts, then TRL SFTTrainer on the kept responses.

K candidates per prompt come from the policy and from every extra candidate model (K each); each candidate
gets a selection score = w_pointwise · z(pointwise reward) + w_continue · p(continue) + w_thumb · p(thumb up)
+ w_instructions · share of instructions followed − refusalPenalty · [refuses] (the user-signal terms only when
such models are configured; every prompt is a benign user turn, so a refusal is a false refusal). A prompt
keeps its best candidate when it beats the candidates' mean by more than `minScoreMargin` (a prompt whose
candidates are all alike teaches nothing and is rejected; the acceptance rate is reported). Style artifacts of
accepted vs rejected candidates are reported (the report tracks them to catch a selector that rewards emojis or
length).
"""

from __future__ import annotations

import gc
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
from flywheel_trainer.verifiers import instruction_share

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


def select_best(selection: np.ndarray, per_prompt: int, margin: float) -> list[int | None]:
    """Index (within its prompt's candidates) of the kept candidate per prompt, None when none clears the margin."""
    kept: list[int | None] = []
    for group in selection.reshape(-1, per_prompt):
        best = int(np.argmax(group))
        kept.append(best if group[best] - group.mean() > margin else None)
    return kept


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
    del model  # an inference copy (bf16 on CUDA); training loads fp32 masters (flywheel_trainer.placement)
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
    per_prompt = rs.samples_per_prompt * len(per_model)
    responses = [r for i in range(len(prompts)) for samples in per_model for r in samples[i]]
    flat_prompts = [p for p in prompts for _ in range(per_prompt)]
    flat_characters = [c for c in characters for _ in range(per_prompt)]
    scores = selection_scores(config, flat_prompts, responses, flat_characters)
    kept = select_best(scores["selection"], per_prompt, rs.min_score_margin)

    accepted, rejected, train_rows = [], [], []
    for i, best in enumerate(kept):
        group = responses[i * per_prompt : (i + 1) * per_prompt]
        for j, response in enumerate(group):
            (accepted if j == best else rejected).append(response)
        if best is not None:
            train_rows.append({"prompt": prompts[i], "completion": [{"role": "assistant", "content": group[best]}]})
    if not train_rows:
        raise StageError("rejection sampling kept no response; lower settings.sft.rejectionSampling.minScoreMargin")
    chosen_idx = [i * per_prompt + b for i, b in enumerate(kept) if b is not None]

    with atomic_output_dir(config.output_dir) as out:
        trainer = train_sft(config, policy, tokenizer, train_rows, out)
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
            "instruction_following_kept_prompts": float(
                scores["instruction_following"].reshape(-1, per_prompt)[[b is not None for b in kept]].mean()
            ),
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
