"""Stage `rl`: an optional small DPO patch, then online RL (GRPO by default, or online DPO) on near-policy prompts.

Prompts: `selectionPool` prompts of the curated RL pool are sampled `selectionSamples` times with the starting
policy and scored by the pointwise reward model; RL keeps those with the lowest mean reward, the highest
within-prompt reward variance, or half each (`promptSelection`). Rewards: the pointwise reward model plus
`instructionRewardWeight` × the share of the character's instructions the response follows (programmatic
verifiers). The policy's mean reward on the selected prompts is measured before and after, with the same
sampling seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
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
from flywheel_trainer.placement import trained_for_inference
from flywheel_trainer.progress import attach_progress, generate_reporting
from flywheel_trainer.runtime import existing_path, lora_config, model_source, save_trained, training_kwargs
from flywheel_trainer.style import emoji_count, word_count
from flywheel_trainer.upstream import artifact_path, load_policy, pointwise_reward_name, reward_model_path
from flywheel_trainer.verifiers import instruction_share

Row = dict[str, Any]
STEP_KEYS = {
    "reward": "reward",
    "kl": "kl",
    "objective/kl": "kl",
    "objective/scores": "reward",
    "completions/mean_length": "mean_length_tokens",
    "style/emoji_rate": "emoji_rate",
    "style/mean_words": "mean_words",
    "loss": "loss",
}
"""Per-step log keys of GRPO and online DPO → the names in result.details["steps"]."""


def completion_text(completion: Any) -> str:
    """A TRL completion (conversational list of messages, or plain text) as text."""
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def instruction_reward(prompts: list[Any], completions: list[Any], character: list[str], **kwargs: Any) -> list[float]:
    """TRL reward function: instruction following per completion; logs emoji rate and length per batch."""
    texts = [completion_text(c) for c in completions]
    log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
    if log_metric is not None:
        log_metric("style/emoji_rate", float(np.mean([emoji_count(t) for t in texts])))
        log_metric("style/mean_words", float(np.mean([word_count(t) for t in texts])))
    return [instruction_share(json.loads(c), t) for c, t in zip(character, texts, strict=True)]


def select_prompts(means: np.ndarray, variances: np.ndarray, count: int, how: str) -> list[int]:
    """Indices of the RL prompts: lowest mean reward, highest variance, or half each ("mixed")."""
    by_low = [int(i) for i in np.argsort(means, kind="stable")]
    by_var = [int(i) for i in np.argsort(-variances, kind="stable")]
    if how == "low-score":
        return by_low[:count]
    if how == "high-variance":
        return by_var[:count]
    chosen: list[int] = []
    for low, var in zip(by_low, by_var, strict=True):
        for index in (low, var):
            if len(chosen) < count and index not in chosen:
                chosen.append(index)
    return chosen


def sampled_rewards(
    model: Any,
    tokenizer: Any,
    rm: Any,
    prompts: list[list[dict]],
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> np.ndarray:
    """Pointwise rewards of `samples` sampled responses per prompt, shape (prompts, samples)."""
    from flywheel_trainer.scoring import pointwise_scores

    responses = generate_reporting(
        model,
        tokenizer,
        prompts,
        phase="sample",
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        num_samples=samples,
        seed=seed,
    )
    flat_prompts = [p for p, group in zip(prompts, responses, strict=True) for _ in group]
    flat = [r for group in responses for r in group]
    return pointwise_scores(rm, flat_prompts, flat).reshape(len(prompts), samples)


def dpo_patch(config: StageConfig, policy: str, out: Path) -> tuple[str, dict[str, float]]:
    """Train the DPO patch on at most `maxPairs` pairs; returns the patched model's directory and metrics."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    settings = config.settings.dpo
    if settings.pairs_uri:
        pairs_path = existing_path(settings.pairs_uri, field="settings.dpo.pairsUri")
    else:
        pairs_path = artifact_path(config, "curate", "pairs")
    pairs = read_jsonl(pairs_path)[: settings.max_pairs]
    if not pairs:
        raise StageError(f"settings.dpo: no preference pairs in {pairs_path}; disable the patch or give pairsUri")
    args = DPOConfig(
        **training_kwargs(
            out / SCRATCH,
            seed=config.seed,
            deepspeed_stage=config.deepspeed_stage,
            max_steps=None,
            learning_rate=settings.learning_rate,
        )
        | checkpoint_args(config, "dpo"),
        beta=settings.beta,
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
    )
    model, tokenizer = load_policy(policy, training=True)  # after the config: ZeRO-3 loads it partitioned
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    train_resuming(attach_progress(trainer, "dpo"), config, "dpo")
    save_trained(trainer, out / "dpo_model", tokenizer, merge_lora=False)
    last = next((e for e in reversed(trainer.state.log_history) if "loss" in e), {})
    return str(out / "dpo_model"), {"dpo_pairs": len(pairs), **({"dpo_loss_last": last["loss"]} if last else {})}


def rl_trainer(config: StageConfig, policy: str, rm: Any, dataset: Any, out: Path) -> Any:
    """A GRPO or online-DPO trainer over `dataset` with the reward model plus the instruction reward."""
    settings = config.settings.rl
    common = training_kwargs(
        out / SCRATCH,
        seed=config.seed,
        deepspeed_stage=config.deepspeed_stage,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
    ) | checkpoint_args(config, "rl")
    rewards = [rm.model, instruction_reward]
    reward_tokenizers = [rm.tokenizer, None]
    weights = [1.0, settings.instruction_reward_weight]
    peft = lora_config(settings.lora, task_type="CAUSAL_LM")
    if settings.algorithm == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(
            **common,
            beta=settings.kl_beta,
            num_generations=settings.num_generations,
            per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
            max_completion_length=settings.max_new_tokens,
            temperature=settings.temperature,
            reward_weights=weights,
            model_init_kwargs={"dtype": "float32"},  # fp32 master weights; bf16 is the compute dtype
        )
        return GRPOTrainer(
            model=policy,
            reward_funcs=rewards,
            args=args,
            train_dataset=dataset,
            reward_processing_classes=reward_tokenizers,
            peft_config=peft,
        )
    from transformers import AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    if settings.kl_beta <= 0:
        raise StageError("settings.rl.klBeta must be above 0 for online-dpo (it is the DPO temperature)")
    args = OnlineDPOConfig(
        **common,
        beta=settings.kl_beta,
        per_device_train_batch_size=settings.prompts_per_step,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        reward_weights=weights,
    )
    model, _ = load_policy(policy, training=True)
    return OnlineDPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(policy),
        reward_processing_classes=reward_tokenizers,
        peft_config=peft,
    )


def step_curves(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per-step reward, KL, length and emoji rate from the trainer's log history."""
    steps = []
    for entry in log_history:
        if "step" not in entry or not any(key in entry for key in STEP_KEYS):
            continue
        point = {"step": float(entry["step"])}
        point.update({name: float(entry[key]) for key, name in STEP_KEYS.items() if key in entry})
        steps.append(point)
    return steps


def main(config: StageConfig) -> StageResult:
    from flywheel_trainer.scoring import load_reward_model

    settings = config.settings.rl
    sft_model = config.upstream.get("sft", {}).get("model")
    policy = model_source(sft_model or config.policy, field="upstream.sft.model" if sft_model else "policy")
    pool_path = artifact_path(config, "curate", "rl_prompts")
    pool = read_jsonl(pool_path)[: settings.selection_pool]
    if not pool:
        raise StageError(f"upstream.curate.rl_prompts: {pool_path} holds no prompts")
    name = pointwise_reward_name(config)
    rm = load_reward_model(reward_model_path(config, name), field=f"upstream.reward-{name}.model")
    from datasets import Dataset
    from transformers import set_seed

    set_seed(config.seed)
    sampling = {
        "samples": settings.selection_samples,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "seed": config.seed,
    }

    with atomic_output_dir(config.output_dir) as out:
        metrics: dict[str, float] = {}
        artifacts = {"model": "model", "prompts": "prompts.jsonl"}
        if config.settings.dpo.enabled:
            policy, dpo_metrics = dpo_patch(config, policy, out)
            metrics.update(dpo_metrics)
            artifacts["dpo_model"] = "dpo_model"
        model, tokenizer = load_policy(policy)
        pool_rewards = sampled_rewards(model, tokenizer, rm, [r["prompt"] for r in pool], **sampling)
        chosen = select_prompts(
            pool_rewards.mean(axis=1), pool_rewards.var(axis=1), settings.prompts, settings.prompt_selection
        )
        selected = [pool[i] for i in chosen]
        prompts = [row["prompt"] for row in selected]
        before = pool_rewards[chosen]
        del model
        dataset = Dataset.from_list(
            [{"prompt": row["prompt"], "character": json.dumps(row["character"])} for row in selected]
        )
        trainer = rl_trainer(config, policy, rm, dataset, out)
        train_resuming(attach_progress(trainer), config, "rl")
        trained = save_trained(trainer, out / "model", trainer.processing_class, merge_lora=settings.lora.enabled)
        with trained_for_inference(trainer, trained) as model:  # ZeRO-3: gathered whole on every rank
            after = sampled_rewards(model, trainer.processing_class, rm, prompts, **sampling)
        write_jsonl(
            out / "prompts.jsonl",
            (
                {**row, "reward_before": float(b.mean()), "reward_after": float(a.mean())}
                for row, b, a in zip(selected, before, after, strict=True)
            ),
        )
        steps = step_curves(trainer.state.log_history)
        metrics.update(
            {
                "prompts": len(selected),
                "pool_prompts": len(pool),
                "reward_before": float(before.mean()),
                "reward_after": float(after.mean()),
                "reward_gain": float(after.mean() - before.mean()),
                "steps": trainer.state.global_step,
                "tokens_seen": trainer.state.num_input_tokens_seen,
                **{f"last_{k}": v for k, v in (steps[-1] if steps else {}).items() if k != "step"},
            }
        )
        return finish_result(
            out,
            config.output_dir,
            stage="rl",
            artifacts=artifacts,
            input_digests={**config.upstream_digests, "rl_prompts": sha256_path(pool_path)},
            metrics=metrics,
            details={"algorithm": settings.algorithm, "steps": steps, "log_history": trainer.state.log_history},
        )
