"""Stage `rl`: an optional small DPO patch, then online RL (GRPO by default, or online DPO) on near-policy prompts.

Prompts: `selectionPool` prompts of the curated RL pool are sampled `selectionSamples` times with the starting
policy and scored by the pointwise reward model; RL keeps those with the lowest mean reward, the highest
within-prompt reward variance, or half each (`promptSelection`). The policy's mean reward on the selected
prompts is measured before and after, with the same sampling seed.

The reward of a rollout y to prompt x has one documented scale (PolicyReward), every term in [0, 1] per unit:

    P(y beats the parent) + instructionRewardWeight × share of instructions followed
      − lengthPenalty × relative length increase over the parent − emojiPenalty × extra emojis over the parent
      − refusalPenalty × [y refuses]   (every RL prompt is a benign user turn: a refusal is a false refusal)

P(y beats the parent) = sigmoid((RM(x, y) − mean RM of the starting policy's samples on x) / T), the Bradley–Terry
probability with T the RM's fitted temperature (or `rewardTemperature`); the "parent" statistics are those of the
selection samples drawn on x before training. The RM is called through the same left-truncating scorer as
everywhere else, so a long context never cuts off the response.

The band as a control (`checkpointEvery`): the policy is kept every N steps; each checkpoint and the parent
answer `bandPrompts` curated prompts that RL never sees, and the candidate is the latest checkpoint whose win
rate over the parent stays at or below `bandTarget` — the win rate the offline band reads, of the reward model's
learned part (rule features left out: flywheel_trainer.evaluate.band_win_rates). When every checkpoint is above
the target, the weights are interpolated linearly between the parent and the earliest checkpoint, α bisected
(`bandInterpolationSteps`) on the same prompts, and the candidate is the largest α measured at or below the
target. When that fails too (or interpolation is off), the model with the lowest measured win rate is kept and
the result says the target was not reached. The curve, the interpolation probes and how the target was met
(`checkpoint`, `interpolation` or `not-reached`) are in the result (metrics `band_*`, details["band"]).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flywheel_operator.api import StageConfig, StageResult
from transformers import TrainerCallback

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
from flywheel_trainer.style import emoji_count, is_refusal, word_count
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
    "style/refusal_rate": "refusal_rate",
    "reward/p_beats_parent": "p_beats_parent",
    "reward/instruction_following": "instruction_following",
    "loss": "loss",
}
"""Per-step log keys of GRPO and online DPO → the names in result.details["steps"]."""


def completion_text(completion: Any) -> str:
    """A TRL completion (conversational list of messages, or plain text) as text."""
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


class CheckpointSaver(TrainerCallback):
    """Trainer callback: the policy (LoRA merged) and its tokenizer every `every` steps, in `directory/step-N`."""

    def __init__(self, directory: Path, every: int) -> None:
        self.directory, self.every = directory, every
        self.saved: list[tuple[int, Path]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import copy

        step = state.global_step
        if step % self.every or step >= state.max_steps or not args.should_save:
            return
        model = kwargs["model"]
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        target = self.directory / f"step-{step}"
        model.save_pretrained(target)
        kwargs["processing_class"].save_pretrained(target)
        self.saved.append((step, target))


def win_rate(candidate: np.ndarray, parent: np.ndarray) -> float:
    """Share of prompts where the candidate's reward is higher; ties count half."""
    return float(np.mean((candidate > parent) + 0.5 * (candidate == parent)))


def choose_checkpoint(curve: list[tuple[int, float]], target: float) -> int | None:
    """Index in `curve` ([(step, win rate)] by step) of the latest point at or below `target`; None when none is."""
    within = [i for i, (_, rate) in enumerate(curve) if rate <= target]
    return within[-1] if within else None


# --- issue 26: the band lands on its target (h26b) -------------------------------------------------------------
BandMethod = Literal["checkpoint", "interpolation", "not-reached"]


@dataclass(frozen=True)
class BandPick:
    """How the band control chose the candidate: the checkpoint `index` of the curve, at weight `alpha` toward it
    from the parent (1: the checkpoint itself), and its measured win rate."""

    method: BandMethod
    index: int
    alpha: float
    win_rate: float
    probes: tuple[tuple[float, float], ...] = ()
    """The interpolations measured, (α, win rate) in the order they were measured."""

    @property
    def reached(self) -> bool:
        return self.method != "not-reached"


def bisect_alpha(
    measure: Callable[[float], float], target: float, steps: int
) -> tuple[float | None, list[tuple[float, float]]]:
    """Bisect α in (0, 1) for `steps` measurements of `measure(α)` (the win rate of parent + α × (checkpoint −
    parent), known above `target` at α = 1): the largest α measured at or below `target` (None when none was)
    and every (α, win rate) measured. Each measurement halves the bracket [at or below, above]; a noisy,
    non-monotone win rate can only make the answer smaller, never one measured above the target."""
    low, high = 0.0, 1.0
    best: float | None = None
    probes: list[tuple[float, float]] = []
    for _ in range(steps):
        alpha = (low + high) / 2
        rate = measure(alpha)
        probes.append((alpha, rate))
        if rate <= target:
            low, best = alpha, alpha
        else:
            high = alpha
    return best, probes


def pick_band(
    curve: list[tuple[int, float]],
    target: float,
    interpolate: Callable[[float], float] | None,
    steps: int,
) -> BandPick:
    """The band's choice: the latest checkpoint at or below `target`; else, when `interpolate` (the win rate of an
    interpolation toward the earliest checkpoint, by α) is given and `steps` > 0, the largest bisected α at or
    below it; else (not reached) the lowest win rate measured, a checkpoint or an interpolation (the earliest,
    the smallest α, on ties)."""
    if not curve:
        raise ValueError("the band needs at least one checkpoint")
    index = choose_checkpoint(curve, target)
    if index is not None:
        return BandPick("checkpoint", index, 1.0, curve[index][1])
    probes: list[tuple[float, float]] = []
    if interpolate is not None and steps > 0:
        alpha, probes = bisect_alpha(interpolate, target, steps)
        if alpha is not None:
            rate = next(r for a, r in probes if a == alpha)
            return BandPick("interpolation", 0, alpha, rate, tuple(probes))
    measured = [(rate, 0, alpha) for alpha, rate in sorted(probes)] + [
        (rate, i, 1.0) for i, (_, rate) in enumerate(curve)
    ]
    rate, index, alpha = min(measured, key=lambda m: m[0])
    return BandPick("not-reached", index, alpha, rate, tuple(probes))


class WeightLine:
    """The models on the line between two with the same parameters: parent + α × (checkpoint − parent), tensor by
    tensor in fp32 (a bf16 sum would lose a fine-tune's small steps). Holds three copies of the weights in CPU
    memory: the parent's, the difference and the model written out."""

    def __init__(self, parent: str, checkpoint: str | Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        start = dict(AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32).named_parameters())
        self.base: dict[str, Any] = {}
        self.step: dict[str, Any] = {}
        for name, tensor in self.model.named_parameters():
            other = start.get(name)
            if other is None or other.shape != tensor.shape:
                found = "missing" if other is None else f"of shape {tuple(other.shape)}"
                raise StageError(
                    f"settings.rl.bandInterpolationSteps: the parent {parent} cannot be interpolated with the "
                    f"checkpoint {checkpoint}: parameter {name} of shape {tuple(tensor.shape)} is {found} in the "
                    "parent; set bandInterpolationSteps: 0"
                )
            self.base[name] = other.detach()  # the parent model itself goes; its tensors stay here
            self.step[name] = tensor.detach() - self.base[name]
        del start

    def save(self, alpha: float, directory: Path) -> Path:
        """The model at `alpha` (0: the parent, 1: the checkpoint) saved with the checkpoint's tokenizer."""
        import torch

        with torch.no_grad():
            for name, tensor in self.model.named_parameters():
                torch.add(self.base[name], self.step[name], alpha=alpha, out=tensor.data)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory


def band_control(
    config: StageConfig, rm: Any, parent: str, models: list[tuple[int, Path]], scratch: Path
) -> tuple[BandPick, Path, list[dict[str, float]], list[dict[str, float]]]:
    """Each model's learned-part RM win rate over the parent on the band prompts (and the whole reward's beside
    it); interpolations toward the earliest checkpoint under `scratch` when every one is above the target.
    Returns the pick, the chosen model's directory, the curve and the interpolations measured."""
    import gc

    from flywheel_trainer.scoring import pointwise_parts

    settings = config.settings.rl
    rows = read_jsonl(artifact_path(config, "curate", "rl_prompts"))
    rows = rows[settings.selection_pool : settings.selection_pool + settings.band_prompts] or rows[
        : settings.band_prompts
    ]
    prompts = [r["prompt"] for r in rows]
    characters = [r["character"] for r in rows]

    def scores(source: str | Path) -> Any:
        model, tokenizer = load_policy(str(source))
        answers = generate_reporting(
            model, tokenizer, prompts, phase="band", max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature, num_samples=1, seed=config.seed + 17, sampler=settings.sampler,
        )
        del model
        gc.collect()
        return pointwise_parts(rm, prompts, [a[0] for a in answers], characters)

    baseline = scores(parent)

    def point(source: str | Path) -> dict[str, float]:
        parts = scores(source)
        return {"win_rate": win_rate(parts.learned, baseline.learned),
                "reward_win_rate": win_rate(parts.reward, baseline.reward), "prompts": float(len(prompts))}

    curve = [{"step": float(step), **point(path)} for step, path in models]
    line: list[WeightLine] = []
    probes: dict[float, tuple[Path, dict[str, float]]] = {}

    def interpolate(alpha: float) -> float:
        if not line:
            line.append(WeightLine(parent, models[0][1]))
        directory = line[0].save(alpha, scratch / f"band-alpha-{alpha:.6f}")
        probes[alpha] = directory, {"alpha": alpha, **point(directory)}
        within = [a for a, (_, p) in probes.items() if p["win_rate"] <= settings.band_target]
        keep = {max(within, default=None), min(probes, key=lambda a: probes[a][1]["win_rate"])}
        for other, (kept, _) in probes.items():  # only a possible choice stays on disk
            if other not in keep:
                shutil.rmtree(kept, ignore_errors=True)
        return probes[alpha][1]["win_rate"]

    pick = pick_band([(int(c["step"]), c["win_rate"]) for c in curve], settings.band_target, interpolate,
                     settings.band_interpolation_steps)
    line.clear()
    chosen = probes[pick.alpha][0] if pick.alpha < 1.0 else models[pick.index][1]
    return pick, chosen, curve, [p for _, p in probes.values()]


def band_summary(pick: BandPick, target: float, curve: list[dict[str, float]],
                 probes: list[dict[str, float]]) -> str:
    """One sentence on how the band chose the candidate, for people (details["band"]["message"])."""
    step = int(curve[pick.index]["step"])
    rates = ", ".join(f"{c['win_rate']:.3f} at step {int(c['step'])}" for c in curve)
    if pick.method == "checkpoint":
        return f"kept RL step {step}, the latest checkpoint at or below the {target:.2f} target ({rates})."
    tried = ", ".join(f"{p['win_rate']:.3f} at α={p['alpha']:g}" for p in probes)
    if pick.method == "interpolation":
        return (f"every checkpoint was above the {target:.2f} target ({rates}); kept the parent's weights moved "
                f"α={pick.alpha:g} of the way to step {step}'s, at {pick.win_rate:.3f} (bisection: {tried}).")
    where = f"step {step}" if pick.alpha == 1.0 else f"α={pick.alpha:g} toward step {step}"
    return (f"target {target:.2f} NOT reached: every checkpoint was above it ({rates})"
            + (f" and every interpolation too ({tried})" if probes else " and interpolation is off")
            + f"; kept the lowest, {where} at {pick.win_rate:.3f}.")


def band_record(
    pick: BandPick, target: float, step: int, curve: list[dict[str, float]],
    probes: list[dict[str, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """details["band"] and the `band_*` metrics of a pick (`step`: the checkpoint it kept or moved toward;
    `probes`: the interpolations as band_control measured them, by default the pick's own (α, win rate))."""
    probes = probes if probes is not None else [{"alpha": alpha, "win_rate": rate} for alpha, rate in pick.probes]
    details = {
        "target": target, "chosen_step": step, "curve": curve, "method": pick.method, "reached": pick.reached,
        "alpha": pick.alpha, "win_rate": pick.win_rate, "probes": probes,
        "message": band_summary(pick, target, curve, probes),
    }
    metrics = {
        "band_target": target,
        "band_reached": float(pick.reached),
        "band_alpha": pick.alpha,
        "band_chosen_step": float(step),
        "band_win_rate_chosen": pick.win_rate,
        "band_win_rate_last": curve[-1]["win_rate"],
        "band_checkpoints": float(len(curve)),
        "band_interpolations": float(len(probes)),
    }
    return details, metrics
# --- end issue 26 ----------------------------------------------------------------------------------------------


class PolicyReward:
    """The RL reward of module docstring's formula, as a TRL reward function (extra dataset columns:
    `character`, `parent_reward`, `parent_words`, `parent_emojis`)."""

    __name__ = "policy_reward"

    def __init__(
        self,
        score: Callable[[list[Any], list[str], list[dict[str, Any]]], np.ndarray],
        *,
        temperature: float,
        instruction_weight: float,
        length_penalty: float,
        emoji_penalty: float,
        refusal_penalty: float,
    ) -> None:
        self.score, self.temperature = score, temperature
        self.instruction_weight = instruction_weight
        self.length_penalty, self.emoji_penalty = length_penalty, emoji_penalty
        self.refusal_penalty = refusal_penalty

    def terms(
        self, prompts: list[Any], texts: list[str], character: list[str], parent_reward: list[float],
        parent_words: list[float], parent_emojis: list[float],
    ) -> dict[str, np.ndarray]:
        """Each term of the reward per rollout, and their weighted sum under `reward`."""
        from flywheel_trainer.calibration import sigmoid

        characters = [json.loads(c) for c in character]
        scores = self.score([list(p) for p in prompts], texts, characters)
        beats = sigmoid((scores - np.asarray(parent_reward, dtype=float)) / self.temperature)
        following = np.array([instruction_share(c, t) for c, t in zip(characters, texts, strict=True)])
        words = np.array([word_count(t) for t in texts], dtype=float)
        emojis = np.array([emoji_count(t) for t in texts], dtype=float)
        longer = np.maximum(0.0, words / np.maximum(np.asarray(parent_words, dtype=float), 1.0) - 1.0)
        extra_emojis = np.maximum(0.0, emojis - np.asarray(parent_emojis, dtype=float))
        refusals = np.array([is_refusal(t) for t in texts], dtype=float)
        reward = (
            beats
            + self.instruction_weight * following
            - self.length_penalty * longer
            - self.emoji_penalty * extra_emojis
            - self.refusal_penalty * refusals
        )
        return {"p_beats_parent": beats, "instruction_following": following, "length_increase": longer,
                "extra_emojis": extra_emojis, "refusals": refusals, "words": words, "emojis": emojis,
                "reward": reward}

    def __call__(
        self, prompts: list[Any], completions: list[Any], character: list[str], parent_reward: list[float],
        parent_words: list[float], parent_emojis: list[float], **kwargs: Any,
    ) -> list[float]:
        texts = [completion_text(c) for c in completions]
        terms = self.terms(prompts, texts, character, parent_reward, parent_words, parent_emojis)
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if log_metric is not None:
            log_metric("style/emoji_rate", float(terms["emojis"].mean()))
            log_metric("style/mean_words", float(terms["words"].mean()))
            log_metric("reward/p_beats_parent", float(terms["p_beats_parent"].mean()))
            log_metric("reward/instruction_following", float(terms["instruction_following"].mean()))
            log_metric("style/refusal_rate", float(terms["refusals"].mean()))
        return [float(r) for r in terms["reward"]]


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
    characters: list[dict[str, Any]],
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    sampler: str = "generate",
) -> tuple[np.ndarray, list[list[str]]]:
    """Pointwise rewards of `samples` sampled responses per prompt, shape (prompts, samples), and the responses
    (sampled by the `sampler` backend)."""
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
        sampler=sampler,
    )
    flat_prompts = [p for p, group in zip(prompts, responses, strict=True) for _ in group]
    flat = [r for group in responses for r in group]
    flat_characters = [c for c, group in zip(characters, responses, strict=True) for _ in group]
    return pointwise_scores(rm, flat_prompts, flat, flat_characters).reshape(len(prompts), samples), responses


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
    """A GRPO or online-DPO trainer over `dataset` with PolicyReward."""
    settings = config.settings.rl
    common = training_kwargs(
        out / SCRATCH,
        seed=config.seed,
        deepspeed_stage=config.deepspeed_stage,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
    ) | checkpoint_args(config, "rl")
    from flywheel_trainer.scoring import pointwise_scores

    rewards = [
        PolicyReward(
            lambda prompts, texts, characters: pointwise_scores(rm, prompts, texts, characters),
            temperature=settings.reward_temperature or rm.temperature,
            instruction_weight=settings.instruction_reward_weight,
            length_penalty=settings.length_penalty,
            emoji_penalty=settings.emoji_penalty,
            refusal_penalty=settings.refusal_penalty,
        )
    ]
    reward_tokenizers = [None]
    weights = [1.0]
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
        "sampler": settings.sampler,
    }

    with atomic_output_dir(config.output_dir) as out:
        metrics: dict[str, float] = {}
        artifacts = {"model": "model", "prompts": "prompts.jsonl"}
        if config.settings.dpo.enabled:
            policy, dpo_metrics = dpo_patch(config, policy, out)
            metrics.update(dpo_metrics)
            artifacts["dpo_model"] = "dpo_model"
        model, tokenizer = load_policy(policy)
        pool_rewards, pool_responses = sampled_rewards(
            model, tokenizer, rm, [r["prompt"] for r in pool], [r["character"] for r in pool], **sampling
        )
        chosen = select_prompts(
            pool_rewards.mean(axis=1), pool_rewards.var(axis=1), settings.prompts, settings.prompt_selection
        )
        selected = [pool[i] for i in chosen]
        prompts = [row["prompt"] for row in selected]
        characters = [row["character"] for row in selected]
        before = pool_rewards[chosen]
        del model
        dataset = Dataset.from_list(
            [
                {
                    "prompt": row["prompt"],
                    "character": json.dumps(row["character"]),
                    "parent_reward": float(pool_rewards[i].mean()),
                    "parent_words": float(np.mean([word_count(r) for r in pool_responses[i]])),
                    "parent_emojis": float(np.mean([emoji_count(r) for r in pool_responses[i]])),
                }
                for i, row in zip(chosen, selected, strict=True)
            ]
        )
        trainer = rl_trainer(config, policy, rm, dataset, out)
        saver = CheckpointSaver(out / SCRATCH / "checkpoints", settings.checkpoint_every or settings.max_steps)
        if settings.checkpoint_every:
            trainer.add_callback(saver)
        train_resuming(attach_progress(trainer), config, "rl")
        trained = save_trained(trainer, out / "model", trainer.processing_class, merge_lora=settings.lora.enabled)
        band: dict[str, Any] = {}
        if settings.checkpoint_every:
            del trained
            models = [*saver.saved, (trainer.state.global_step, out / "model")]
            pick, path, curve, probes = band_control(
                config, rm, model_source(config.policy, field="policy"), models, out / SCRATCH / "band"
            )
            step = models[pick.index][0]
            if path != out / "model":
                shutil.rmtree(out / "model")
                shutil.copytree(path, out / "model")
            band, band_metrics = band_record(pick, settings.band_target, step, curve, probes)
            metrics.update(band_metrics)
            trained, _ = load_policy(str(out / "model"))
            after, _ = sampled_rewards(trained.eval(), trainer.processing_class, rm, prompts, characters, **sampling)
        else:
            with trained_for_inference(trainer, trained) as model:  # ZeRO-3: gathered whole on every rank
                after, _ = sampled_rewards(model, trainer.processing_class, rm, prompts, characters, **sampling)
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
            details={
                "algorithm": settings.algorithm,
                "steps": steps,
                "band": band,
                "log_history": trainer.state.log_history,
            },
        )
