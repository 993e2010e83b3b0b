"""Stage `reward`: train one configured reward model (config.reward_model names it) on the curated data.

- `pointwise`: Bradley–Terry on preference pairs with TRL's RewardTrainer (reward centering); drives RL and
  rejection sampling and gives the offline win rates.
- `pairwise`: both responses in one input, a logit for "A is better"; every pair is shown in both orders so
  position carries no signal.
- `user-signal`: a classifier of p(continue) or p(thumb up) on served responses (the report found these noisy
  and used them only to select rejection-sampling data).

A pointwise model may also carry rule features (flywheel_trainer.rules): the rules' weights are fitted by
Bradley–Terry on the training pairs, the text score's non-negative weight on top of them on the held-out pairs
(fit_rules); its held-out accuracy is that of the combined reward (cross-fitted), and `text_accuracy` the text
score's alone.

Every kind also learns a lexical head by default (`lexicalHead`; flywheel_trainer.lexical): a sparse linear model
over the response's words in its context, fitted on the same training pairs or labels, whose score is mixed with
the model's logit: the head at weight 1 (its weights were fitted on the training data), the model's logit by a
non-negative weight fitted on the held-out data (lexical.fit_mix; cross-fitted for the reported figures). The mix is the
model's learned text score: `model_accuracy` / `lexical_accuracy` (ROC AUC `model_auc` / `lexical_auc` for a
user-signal model) say what each part reads alone on the held-out data. A preference model's head also learns from
the users' own signals (`lexicalSignalPairs`, signal_pairs): on the training prompts, each response users continued
after over each one they left, served for the same context, as extra Bradley–Terry pairs (`lexical_signal_pairs`
says how many). Generation 1 learns from generation 0's logs alone, whose varied lengths and emojis make curation
drop most candidate pairs; the signals are several times as many comparisons of the same kind.

Every kind ends in one logit; held-out accuracy and expected calibration error are reported before and after
temperature scaling, and the fitted temperature is saved with the model. A pairwise model's accuracy is per pair,
averaged over both orders as it is used (its per-presentation accuracy and position bias are reported too). A
user-signal model's accuracy is mostly the signal's base rate, so its ROC AUC (chance: 1/2) is reported with a
95 % interval.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from flywheel_operator.api import RewardModelSettings, StageConfig, StageResult

from flywheel_trainer.calibration import calibration_report, roc_auc, sigmoid
from flywheel_trainer.checkpoints import checkpoint_args, train_resuming
from flywheel_trainer.lexical import LexicalModel, _prompt_key, fit_labels, fit_mix, fit_on_top, mix_evidence
from flywheel_trainer.lexical import fit_pairs as fit_lexical_pairs
from flywheel_trainer.outputs import (
    SCRATCH,
    StageError,
    atomic_output_dir,
    finish_result,
    read_jsonl,
    sha256_path,
)
from flywheel_trainer.placement import training_dtype
from flywheel_trainer.progress import attach_progress
from flywheel_trainer.rules import columns, fit_bradley_terry, pair_differences
from flywheel_trainer.runtime import existing_path, model_source, save_trained, training_kwargs
from flywheel_trainer.scoring import (
    fit_context,
    logits_for_texts,
    order_averaged,
    render,
    render_pair,
    write_metadata,
)

Row = dict[str, Any]
SIGNAL_COLUMNS = {"continue": "continued", "thumb-up": "thumb_up"}


def reward_settings(config: StageConfig) -> RewardModelSettings:
    """The settings of the reward model this Job trains."""
    models = {m.name: m for m in config.settings.reward_models}
    if config.reward_model not in models:
        raise StageError(
            f"rewardModel: {config.reward_model!r} is not in settings.rewardModels; choose one of {sorted(models)}"
        )
    return models[config.reward_model]


def split_held_out(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, held_out) by prompt, so no context is on both sides; at least one context is held out."""

    def key(row: Row) -> str:
        return hashlib.sha256(f"{seed}:{row['prompt']}".encode()).hexdigest()

    contexts = sorted({key(row) for row in rows})
    if len(contexts) < 2:
        raise StageError("the reward model needs data from at least two prompts; curate produced fewer")
    held = set(contexts[: max(1, round(len(contexts) * fraction))])
    return [r for r in rows if key(r) not in held], [r for r in rows if key(r) in held]


def _upstream(config: StageConfig, artifact: str) -> Path:
    uri = config.upstream.get("curate", {}).get(artifact)
    if uri is None:
        raise StageError(f"upstream.curate.{artifact} is missing: the reward stage needs the curate stage's output")
    return existing_path(uri, field=f"upstream.curate.{artifact}")


def fit_pairs(rows: list[Row], tokenizer: Any, max_length: int) -> tuple[list[Row], int, int]:
    """Pairs whose context is trimmed from the left so that both responses fit in `max_length` tokens (TRL's
    RewardTrainer silently drops longer pairs); returns (pairs, how many were trimmed, how many cannot fit)."""
    fitted, trimmed, dropped, _ = fit_pairs_tokenized(rows, tokenizer, max_length)
    return fitted, trimmed, dropped


def fit_pairs_tokenized(
    rows: list[Row], tokenizer: Any, max_length: int
) -> tuple[list[Row], int, int, dict[str, list[list[int]]]]:
    """`fit_pairs` and the fitted pairs' `pair_token_ids`: a pair that fits with its whole prompt keeps the ids
    its fit was tested on (the same text as the trainer's, when each side is one plain assistant message), so
    only the trimmed and the unusual pairs are tokenized again."""
    fitted, trimmed, dropped, kept_ids = [], 0, 0, []
    for r, (chosen, rejected) in zip(rows, _whole_prompt_ids(tokenizer, rows), strict=True):
        fits = max(len(chosen), len(rejected)) <= max_length
        responses = [r["chosen"][0]["content"], r["rejected"][0]["content"]]
        chat = list(r["prompt"]) if fits else fit_context(tokenizer, r["prompt"], responses, max_length)
        if chat is None:
            dropped += 1
            continue
        trimmed += len(chat) < len(r["prompt"])
        fitted.append({**r, "prompt": chat})
        kept_ids.append((chosen, rejected) if fits and _plain_sides(r) else None)
    again = pair_token_ids(tokenizer, [f for f, kept in zip(fitted, kept_ids, strict=True) if kept is None])
    retokenized = iter(zip(again["chosen_ids"], again["rejected_ids"], strict=True))
    pairs = [kept if kept is not None else next(retokenized) for kept in kept_ids]
    return fitted, trimmed, dropped, {"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]}


def _whole_prompt_ids(tokenizer: Any, rows: list[Row]) -> list[tuple[list[int], list[int]]]:
    """Per pair, the ids of each response rendered after the whole prompt: fit_context's first test, in one
    batched tokenizer call for all pairs (most fit, and fit_context then tokenizes only the rest, one at a time)."""
    texts = [render(tokenizer, r["prompt"], r[side][0]["content"]) for r in rows for side in ("chosen", "rejected")]
    ids = _token_ids(tokenizer, texts)
    return list(zip(ids[0::2], ids[1::2], strict=True))


def _plain_sides(row: Row) -> bool:
    """Whether each side of a pair is one assistant message with nothing but its content: then `render` gives
    the text the trainer renders from the prompt and the side (pair_token_ids)."""
    return all(row[s] == [{"role": "assistant", "content": row[s][0]["content"]}] for s in ("chosen", "rejected"))


def _token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """The ids of rendered chat texts, as apply_chat_template(tokenize=True) gives them, in one batched call."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def pair_token_ids(tokenizer: Any, rows: list[Row]) -> dict[str, list[list[int]]]:
    """`chosen_ids` and `rejected_ids` of preference pairs as TRL's RewardTrainer tokenizes them (the prompt and the
    response through the chat template, then the tokenizer without special tokens), in one batched call per side:
    given them, the trainer skips its own tokenization, one example at a time through datasets.map."""
    return {
        f"{side}_ids": _token_ids(
            tokenizer, [tokenizer.apply_chat_template(r["prompt"] + r[side], tokenize=False) for r in rows]
        )
        for side in ("chosen", "rejected")
    }


def _train_pointwise(
    settings: RewardModelSettings,
    base: str,
    train: list[Row],
    args: dict,
    tokenizer: Any,
    stage: StageConfig | None = None,
    token_ids: dict[str, list[list[int]]] | None = None,
) -> Any:
    """`token_ids`: the training pairs' pair_token_ids when the caller has them (fit_pairs_tokenized)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    config = RewardConfig(
        **args, center_rewards_coefficient=settings.center_rewards_coefficient or None, max_length=settings.max_length
    )  # before the model: under ZeRO-3 the model then loads partitioned (zero.Init)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=training_dtype())
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = Dataset.from_dict(pair_token_ids(tokenizer, train) if token_ids is None else token_ids)
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    return _train(trainer, stage)


def _text_margins(model: Any, tokenizer: Any, rows: list[Row], max_length: int) -> np.ndarray:
    """Text score of each pair's chosen response minus its rejected one."""
    chosen = [render(tokenizer, r["prompt"], r["chosen"][0]["content"]) for r in rows]
    rejected = [render(tokenizer, r["prompt"], r["rejected"][0]["content"]) for r in rows]
    return logits_for_texts(model, tokenizer, chosen, max_length=max_length) - logits_for_texts(
        model, tokenizer, rejected, max_length=max_length
    )


def _check_characters(settings: RewardModelSettings, rows: list[Row]) -> None:
    """Rule features read each pair's character: fail before training when a row has none."""
    if not settings.rule_features:
        return
    missing = next((i for i, r in enumerate(rows) if not isinstance(r.get("character"), dict)), None)
    if missing is not None:
        raise StageError(
            f"settings.rewardModels[{settings.name}].ruleFeatures: preference pair {missing} has no `character` "
            "(name and instructions, as the curate stage writes it); give pairs with characters or remove ruleFeatures"
        )


def fit_rules(
    features: list[str], train: list[Row], held_out: list[Row], held_text: np.ndarray, seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Rule weights by Bradley–Terry on the training pairs (the rules are fixed functions: in-sample is fair, and
    thousands of pairs weigh a handful of columns), then the text score's non-negative weight on top of them on the
    held-out pairs, where the text model's margins are not its own training data (on the training pairs it is
    overconfident and would undo the rules). The rules keep their fitted weights: rescaling them on the held-out
    pairs too let a dozen held-out prompts shrink them to 0 or reverse them (a reward against following the
    instructions; bench/rm_seeds.py). Returns the scoring.RewardModel.rules entry and the held-out combined
    margins, each from the text weight fitted on the other half of the held-out pairs (cross-fitted, so the
    reported accuracy is out of sample)."""
    rule_weights = fit_bradley_terry(pair_differences(features, train))
    held_rules = pair_differences(features, held_out) @ rule_weights
    text_weight = fit_on_top(held_text, held_rules)[0] if len(held_out) else 1.0
    combined = held_rules + text_weight * held_text
    halves = np.array_split(np.random.default_rng(seed).permutation(len(held_out)), 2)
    if min(map(len, halves)) > 0:
        for fit_on, score in (halves, halves[::-1]):
            weight = fit_on_top(held_text[fit_on], held_rules[fit_on])[0]
            combined[score] = held_rules[score] + weight * held_text[score]
    rules = {"features": list(features), "columns": columns(features), "text_weight": float(text_weight),
             "weights": [float(w) for w in rule_weights]}
    return rules, combined


def _rule_metrics(rules: dict[str, Any]) -> dict[str, float]:
    """What the rules add: every fitted weight (the text score's own accuracy is `text_accuracy`)."""
    return {"text_weight": rules["text_weight"],
            **{f"rule_weight_{c}": w for c, w in zip(rules["columns"], rules["weights"], strict=True)}}


def _pair_accuracy(margins: np.ndarray) -> float:
    """Share of pairs a margin (chosen minus rejected) orders right, ties half."""
    return float(np.mean((margins > 0) + 0.5 * (margins == 0))) if len(margins) else 0.0


def _halves(n: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), 2)


def _subset(groups: list[str] | None, rows: np.ndarray) -> list[str] | None:
    return None if groups is None else [groups[i] for i in rows]


def mix_pair_margins(
    model: np.ndarray, lexical: np.ndarray, seed: int, groups: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (model, lexical) of two held-out margin columns (chosen minus rejected; lexical.fit_mix: the head at
    1, the model's Bradley–Terry weight on top, kept only where it earns it on held-out prompts when `groups`
    gives each pair's prompt), and the mixed margins cross-fitted: each half mixed by the weights fitted on the
    other half."""
    both = np.column_stack([model, lexical])
    weights = fit_mix(both, groups=groups)[0]
    crossed = both @ weights
    halves = _halves(len(both), seed)
    if min(map(len, halves)) > 0:
        for fit_on, score in (halves, halves[::-1]):
            crossed[score] = both[score] @ fit_mix(both[fit_on], groups=_subset(groups, fit_on))[0]
    return weights, crossed


def mix_signal_logits(
    model: np.ndarray, lexical: np.ndarray, labels: np.ndarray, seed: int, groups: list[str] | None = None
) -> tuple[tuple[float, float, float], np.ndarray]:
    """Weights (model, lexical, bias) of two held-out logit columns for binary labels (lexical.fit_mix: the head
    at 1, the model's logistic weight and a bias on top, the weight kept only where it earns it on held-out prompts
    when `groups` gives each row's prompt), and the mixed logits cross-fitted on halves."""
    both = np.column_stack([model, lexical])
    (w_model, w_lexical), bias = fit_mix(both, labels, groups)
    crossed = both @ [w_model, w_lexical] + bias
    halves = _halves(len(both), seed)
    if min(map(len, halves)) > 0 and all(len(set(labels[h].tolist())) == 2 for h in halves):
        for fit_on, score in (halves, halves[::-1]):
            w, b = fit_mix(both[fit_on], labels[fit_on], _subset(groups, fit_on))
            crossed[score] = both[score] @ w + b
    return (float(w_model), float(w_lexical), float(bias)), crossed


def _prompt_groups(rows: list[Row]) -> list[str]:
    """Each row's prompt (the unit the held-out rows are clustered in: lexical.mix_evidence)."""
    return [_prompt_key(r["prompt"]) for r in rows]


def _lexical_entry(head: LexicalModel, model_weight: float, lexical_weight: float, bias: float = 0.0) -> dict:
    return {"head": head.to_json(), "model_weight": float(model_weight), "lexical_weight": float(lexical_weight),
            "bias": float(bias)}


def _lexical_metrics(entry: dict[str, Any]) -> dict[str, float]:
    head = entry["head"]
    return {"model_weight": entry["model_weight"], "lexical_weight": entry["lexical_weight"],
            "lexical_ridge": head["ridge"], "lexical_columns": len(head["columns"])}


def _responses(rows: list[Row], key: str) -> list[str]:
    return [r[key][0]["content"] for r in rows]


def _train(trainer: Any, stage: StageConfig | None) -> Any:
    """Train with progress lines; resuming from (and writing) the stage's checkpoints when `stage` is given."""
    if stage is None:
        attach_progress(trainer).train()
        return trainer
    return train_resuming(attach_progress(trainer), stage, "reward")


def _classifier_examples(settings: RewardModelSettings, rows: list[Row], tokenizer: Any) -> tuple[list[str], list[int]]:
    """Texts and binary labels of a pairwise or user-signal model."""
    texts, labels = [], []
    if settings.kind == "pairwise":
        for r in rows:
            chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
            texts += [
                render_pair(tokenizer, r["prompt"], chosen, rejected),
                render_pair(tokenizer, r["prompt"], rejected, chosen),
            ]
            labels += [1, 0]
    else:
        column = SIGNAL_COLUMNS[settings.signal]
        for r in rows:
            texts.append(render(tokenizer, r["prompt"], r["completion"][0]["content"]))
            labels.append(int(bool(r[column])))
    return texts, labels


def _train_classifier(
    settings: RewardModelSettings,
    base: str,
    texts: list[str],
    labels: list[int],
    args: dict,
    tokenizer: Any,
    stage: StageConfig | None = None,
) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    training_args = TrainingArguments(**args, remove_unused_columns=False)  # before the model (ZeRO-3)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, problem_type="multi_label_classification", dtype=training_dtype()
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    encoded = tokenizer(texts, truncation=True, max_length=settings.max_length, add_special_tokens=False)
    dataset = Dataset.from_dict({**encoded, "labels": [[float(y)] for y in labels]})
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    return _train(trainer, stage)


def pair_accuracy(logits: np.ndarray, temperature: float) -> dict[str, float]:
    """A pairwise model's held-out accuracy as it is used (scoring.pairwise_probabilities): per pair, the
    probability averaged over both presentation orders (the held-out logits alternate forward, backward). The
    per-presentation accuracy of calibration_report is 0.5 exactly for a model that always prefers one
    position, whatever it knows; `position_bias` is its mean P(first shown better) − 0.5."""
    p = sigmoid(logits / temperature)
    forward, backward = p[0::2], p[1::2]
    chosen_better = order_averaged(forward, backward)
    return {
        "presentation_accuracy": float(np.mean((logits > 0) == np.tile([True, False], forward.size))),
        "accuracy": float(np.mean((chosen_better > 0.5) + 0.5 * (chosen_better == 0.5))),
        "position_bias": float(np.mean((forward + backward) / 2.0) - 0.5),
    }


# --- issue 26: the lexical head also learns from the users' signals (h26rm) ------------------------------------
def signal_pairs(signals: list[Row], held_out: list[Row], max_per_context: int) -> list[Row]:
    """Preference pairs from the curate stage's user signals: per context (prompt), each response the user went on
    after (`continued`) over each one a user left after, served for the same context, at most `max_per_context` of
    them, identical responses skipped. Contexts of `held_out` (the preference pairs kept out of training) are left
    out, so the held-out pairs the mix is weighed on stay out of the head's training data."""
    held = {_prompt_key(r["prompt"]) for r in held_out}
    by_context: dict[str, list[Row]] = {}
    for row in signals:
        key = _prompt_key(row["prompt"])
        if key not in held and row.get("continued") is not None:
            by_context.setdefault(key, []).append(row)
    pairs: list[Row] = []
    for rows in by_context.values():
        went_on = [r["completion"] for r in rows if r["continued"]]
        left = [r["completion"] for r in rows if not r["continued"]]
        kept = 0
        for chosen in went_on:
            for rejected in left:
                if kept == max_per_context:
                    break
                if chosen[0]["content"].strip() != rejected[0]["content"].strip():
                    pairs.append({"prompt": rows[0]["prompt"], "chosen": chosen, "rejected": rejected})
                    kept += 1
    return pairs


def _lexical_training_pairs(
    settings: RewardModelSettings, config: StageConfig, train: list[Row], held_out: list[Row]
) -> tuple[list[Row], int]:
    """The pairs a preference model's lexical head fits: its training pairs and, with `lexicalSignalPairs`, the
    pairs of the users' signals (signal_pairs); and how many of the latter (the stage's `lexical_signal_pairs`
    metric: 0 also where the curate stage gave no `signals`, as for data curated elsewhere with pairs only)."""
    per_context = settings.signal_pairs_per_context
    if not per_context or "signals" not in config.upstream.get("curate", {}):
        return train, 0
    extra = signal_pairs(read_jsonl(_upstream(config, "signals")), held_out, per_context)
    return train + extra, len(extra)
# --- end issue 26 ---------------------------------------------------------------------------------------------


def _pointwise_lexical(
    train: list[Row], held_out: list[Row], model_margin: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, float]]:
    """Fit the lexical head on the training pairs (`train`: with the users' signal pairs, _lexical_training_pairs)
    and its mix with the model's held-out margins: (the held-out margins mixed by the weights fitted on all of them,
    the same cross-fitted, the lexical entry of the model's metadata, its metrics with `model_accuracy` and
    `lexical_accuracy`)."""
    head = fit_lexical_pairs([r["prompt"] for r in train], _responses(train, "chosen"), _responses(train, "rejected"))
    prompts = [r["prompt"] for r in held_out]
    lexical_margin = head.score(prompts, _responses(held_out, "chosen")) - head.score(
        prompts, _responses(held_out, "rejected"))
    groups = _prompt_groups(held_out)
    weights, crossed = mix_pair_margins(model_margin, lexical_margin, seed, groups)
    entry = _lexical_entry(head, *weights)
    metrics = _lexical_metrics(entry) | {"model_accuracy": _pair_accuracy(model_margin),
                                         "lexical_accuracy": _pair_accuracy(lexical_margin)}
    p_value = mix_evidence(model_margin, lexical_margin, groups)
    if p_value is not None:
        metrics["model_weight_p"] = p_value
    return np.column_stack([model_margin, lexical_margin]) @ weights, crossed, entry, metrics


def _classifier_lexical(
    settings: RewardModelSettings,
    train: list[Row],
    held_out: list[Row],
    model_logits: np.ndarray,
    labels: np.ndarray,
    seed: int,
    fitting: dict[str, float],
) -> tuple[list[float], dict[str, Any], dict[str, float]]:
    """The lexical head of a pairwise or user-signal model, fitted on its training data, and its held-out logits
    mixed with the model's (cross-fitted: the calibration and accuracy reported are out of sample)."""
    if settings.kind == "pairwise":
        head = fit_lexical_pairs(
            [r["prompt"] for r in train], _responses(train, "chosen"), _responses(train, "rejected"))
        prompts = [r["prompt"] for r in held_out]
        margin = head.score(prompts, _responses(held_out, "chosen")) - head.score(
            prompts, _responses(held_out, "rejected"))
        lexical_logits = np.column_stack([margin, -margin]).ravel()  # the forward, backward order of the held-out
        sign = np.where(labels == 1, 1.0, -1.0)
        both = np.column_stack([model_logits, lexical_logits]) * sign[:, None]
        pairs = np.repeat(np.arange(len(margin)), 2)
        groups = [g for g in _prompt_groups(held_out) for _ in range(2)]
        weights = fit_mix(both, groups=groups)[0]
        columns = np.column_stack([model_logits, lexical_logits])
        crossed = columns @ weights
        halves = _halves(len(margin), seed)
        if min(map(len, halves)) > 0:
            for fit_on, score in (halves, halves[::-1]):
                rows, scored = np.isin(pairs, fit_on), np.isin(pairs, score)
                crossed[scored] = columns[scored] @ fit_mix(both[rows], groups=_subset(groups, np.flatnonzero(rows)))[0]
        entry = _lexical_entry(head, *weights)
        quality = {"model_accuracy": pair_accuracy(model_logits, 1.0)["accuracy"],
                   "lexical_accuracy": _pair_accuracy(margin)}
    else:
        column = SIGNAL_COLUMNS[settings.signal]
        head = fit_labels([r["prompt"] for r in train], _responses(train, "completion"),
                          [int(bool(r[column])) for r in train])
        lexical_logits = head.score([r["prompt"] for r in held_out], _responses(held_out, "completion"))
        (w_model, w_lexical, bias), crossed = mix_signal_logits(model_logits, lexical_logits, labels, seed,
                                                                _prompt_groups(held_out))
        entry = _lexical_entry(head, w_model, w_lexical, bias)
        model_auc, lexical_auc = roc_auc(model_logits, labels), roc_auc(lexical_logits, labels)
        quality = {"model_auc": model_auc["auc"] if model_auc else None,
                   "lexical_auc": lexical_auc["auc"] if lexical_auc else None}
    return list(crossed), entry, fitting | _lexical_metrics(entry) | {k: v for k, v in quality.items() if v is not None}


def main(config: StageConfig) -> StageResult:

    settings = reward_settings(config)
    base = model_source(
        settings.base_model or config.policy,
        field=f"settings.rewardModels[{settings.name}].baseModel" if settings.base_model else "policy",
    )
    artifact = "pairs" if settings.kind in ("pointwise", "pairwise") else "signals"
    data_path = _upstream(config, artifact)
    rows = read_jsonl(data_path)
    if settings.kind == "user-signal":
        rows = [r for r in rows if r.get(SIGNAL_COLUMNS[settings.signal]) is not None]
    train, held_out = split_held_out(rows, settings.held_out_fraction, config.seed)
    from transformers import AutoTokenizer, set_seed

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    with atomic_output_dir(config.output_dir) as out:
        args = training_kwargs(
            out / SCRATCH,
            seed=config.seed,
            deepspeed_stage=config.deepspeed_stage,
            max_steps=settings.max_steps,
            learning_rate=settings.learning_rate,
        ) | {"per_device_train_batch_size": settings.batch_size, "num_train_epochs": settings.epochs}
        args |= checkpoint_args(config, "reward")
        fitting: dict[str, float] = {}
        rules: dict[str, Any] | None = None
        lexical: dict[str, Any] | None = None
        if settings.kind == "pointwise":
            train, fitting["context_trimmed"], fitting["dropped_too_long"], train_ids = fit_pairs_tokenized(
                train, tokenizer, settings.max_length
            )
            if not train:
                raise StageError(
                    f"settings.rewardModels[{settings.name}].maxLength={settings.max_length}: no training pair fits; "
                    "raise maxLength"
                )
            _check_characters(settings, train + held_out)
            trainer = _train_pointwise(settings, base, train, args, tokenizer, config, token_ids=train_ids)
            model = trainer.model
            margin = _text_margins(model, tokenizer, held_out, settings.max_length)
            crossed = margin
            if settings.lexical_head:
                head_pairs, fitting["lexical_signal_pairs"] = _lexical_training_pairs(settings, config, train, held_out)
                margin, crossed, lexical, measured = _pointwise_lexical(head_pairs, held_out, margin, config.seed)
                fitting |= measured
            fitting["text_accuracy"] = _pair_accuracy(crossed)
            if settings.rule_features:
                rules, combined = fit_rules(settings.rule_features, train, held_out, margin, config.seed)
                fitting |= _rule_metrics(rules)
                margin = combined
            held_logits, held_labels = [*margin, *(-margin)], [1] * len(margin) + [0] * len(margin)
        else:
            texts, labels = _classifier_examples(settings, train, tokenizer)
            trainer = _train_classifier(settings, base, texts, labels, args, tokenizer, config)
            held_texts, held_labels = _classifier_examples(settings, held_out, tokenizer)
            model = trainer.model
            held_logits = list(logits_for_texts(model, tokenizer, held_texts, max_length=settings.max_length))
            if settings.lexical_head:
                head_rows = train
                if settings.kind == "pairwise":
                    head_rows, fitting["lexical_signal_pairs"] = _lexical_training_pairs(
                        settings, config, train, held_out)
                held_logits, lexical, fitting = _classifier_lexical(
                    settings, head_rows, held_out, np.asarray(held_logits), np.asarray(held_labels), config.seed,
                    fitting
                )
        calibration = calibration_report(held_logits, held_labels)
        if settings.kind == "pairwise":
            calibration |= pair_accuracy(np.asarray(held_logits, dtype=float), calibration["temperature"])
        if settings.kind == "user-signal":
            calibration |= roc_auc(held_logits, held_labels) or {}
        save_trained(trainer, out / "model", tokenizer, merge_lora=False)
        write_metadata(
            out / "model",
            name=settings.name,
            kind=settings.kind,
            signal=settings.signal,
            temperature=calibration["temperature"],
            max_length=settings.max_length,
            rules=rules,
            lexical=lexical,
        )
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        metrics = {
            **calibration,
            "train_examples": len(train),
            **fitting,
            "held_out_examples": len(held_out),
            "positive_rate": sum(held_labels) / max(len(held_labels), 1),
            **({"train_loss_first": losses[0], "train_loss_last": losses[-1]} if losses else {}),
            "steps": trainer.state.global_step,
            "tokens_seen": trainer.state.num_input_tokens_seen,
        }
        return finish_result(
            out,
            config.output_dir,
            stage="reward",
            artifacts={"model": "model"},
            input_digests={**config.upstream_digests, artifact: sha256_path(data_path)},
            metrics=metrics,
            details={"reward_model": settings.model_dump(mode="json"), "log_history": trainer.state.log_history},
        )
