"""Loading trained reward models and scoring responses with them (rejection sampling, RL selection, eval).

Every reward model is a sequence classifier with one logit, saved with `flywheel_reward.json` (its kind,
signal and fitted temperature; for a pointwise model with rule features, the fitted weights of its text score and
of each rule column, flywheel_trainer.rules). Inputs are rendered with the tokenizer's chat template exactly as TRL's
RewardTrainer and GRPOTrainer render them, so training and scoring see the same text. Texts longer than the
model's `max_length` lose tokens from the LEFT (the oldest context), never the response being scored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flywheel_trainer.calibration import sigmoid
from flywheel_trainer.outputs import StageError
from flywheel_trainer.rules import rule_matrix

METADATA_FILE = "flywheel_reward.json"
SCORE_BATCH = 32
Chat = list[dict[str, str]]


@dataclass
class RewardModel:
    """A loaded reward model and what it predicts."""

    name: str
    kind: str
    signal: str | None
    temperature: float
    model: Any
    tokenizer: Any
    max_length: int
    rules: dict[str, Any] | None = None
    """{"features": [...], "columns": [...], "weights": [...], "text_weight": a}: the reward is a × the text
    score + weights · rule columns; None: the text score alone."""
    lexical: dict[str, Any] | None = None
    """{"head": flywheel_trainer.lexical.LexicalModel JSON, "model_weight": m, "lexical_weight": l, "bias": c}: the
    text score is m × the model's logit + l × the lexical head's score (+ c); None: the model's logit alone."""
    lexical_head: Any = None
    """The parsed lexical head (filled from `lexical`)."""

    def __post_init__(self) -> None:
        if self.lexical and self.lexical_head is None:
            from flywheel_trainer.lexical import LexicalModel

            self.lexical_head = LexicalModel.from_json(self.lexical["head"])


def render(tokenizer: Any, prompt: Chat, response: str) -> str:
    """The chat-template text of a prompt followed by one assistant response."""
    return tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)


def render_pair(tokenizer: Any, prompt: Chat, first: str, second: str) -> str:
    """The pairwise model's input: both responses in one assistant turn, labelled A and B."""
    return render(tokenizer, prompt, f"Response A:\n{first}\n\nResponse B:\n{second}")


def load_reward_model(path: str | Path, *, field: str) -> RewardModel:
    """Load a reward model written by the reward stage; the error names the config field when it is missing."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flywheel_trainer.placement import load_inference
    from flywheel_trainer.runtime import existing_path

    directory = existing_path(str(path), field=field)
    meta_file = directory / METADATA_FILE
    if not meta_file.is_file():
        raise StageError(f"{field}: {directory} is not a reward model written by the reward stage (no {METADATA_FILE})")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    # scoring-only: a whole bf16 copy on this rank's GPU, or one copy sharded over a group of GPUs
    model = load_inference(AutoModelForSequenceClassification.from_pretrained, str(directory))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return RewardModel(
        name=meta["name"],
        kind=meta["kind"],
        signal=meta.get("signal"),
        temperature=float(meta["temperature"]),
        model=model,
        tokenizer=tokenizer,
        max_length=int(meta["max_length"]),
        rules=meta.get("rules"),
        lexical=meta.get("lexical"),
    )


def logits_for_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int) -> np.ndarray:
    """The first logit of a sequence classifier for each text, in batches (right padding; a text over
    `max_length` tokens keeps its last `max_length`, so the response at its end is always scored)."""
    from flywheel_trainer.placement import across_ranks, sharded_inference

    if sharded_inference():  # only the group leaders hold the sharded models: they score, every rank gets all
        return np.asarray(across_ranks(list(texts), lambda share: list(
            _logits(model, tokenizer, share, max_length=max_length))), dtype=float)
    return _logits(model, tokenizer, texts, max_length=max_length)


def _logits(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int) -> np.ndarray:
    import torch

    from flywheel_trainer.placement import compute_autocast

    out: list[float] = []
    device = next(model.parameters()).device
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    for start in range(0, len(texts), SCORE_BATCH):
        batch = tokenizer(
            list(texts[start : start + SCORE_BATCH]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=False,
        ).to(device)
        with torch.inference_mode(), compute_autocast():
            out.extend(model(**batch).logits[:, 0].float().cpu().tolist())
    return np.asarray(out, dtype=float)


def fit_context(tokenizer: Any, prompt: Chat, responses: Sequence[str], max_length: int) -> Chat | None:
    """`prompt` without its oldest non-system messages, as few dropped as needed for every response rendered
    after it to fit in `max_length` tokens; None when even the last message and the system prompt do not fit."""
    system = [m for m in prompt[:1] if m["role"] == "system"]
    rest = list(prompt[len(system) :])
    while True:
        chat = [*system, *rest]
        if all(len(tokenizer(render(tokenizer, chat, r), add_special_tokens=False)["input_ids"]) <= max_length
               for r in responses):
            return chat
        if len(rest) <= 1:
            return None
        rest = rest[1:]


def pointwise_scores(
    rm: RewardModel,
    prompts: Sequence[Chat],
    responses: Sequence[str],
    characters: Sequence[Mapping[str, Any]] | None = None,
) -> np.ndarray:
    """Bradley–Terry rewards (higher is better) of each response to its prompt; a model with rule features also
    reads each response's character (a curated row's `character`: name and instructions)."""
    return pointwise_parts(rm, prompts, responses, characters).reward


@dataclass(frozen=True)
class PointwiseParts:
    """A pointwise reward split into what was learned from text and what the rule features add."""

    reward: np.ndarray
    """The whole reward, as RL and rejection sampling use it: learned + rules."""
    learned: np.ndarray
    """The text model's share of it (text weight × text logit; the logit itself for a model without rule
    features): the only part a policy can push up without changing what the rules check, so the win-rate band
    reads it (flywheel_trainer.evaluate)."""

    @property
    def rules(self) -> np.ndarray:
        """What the rule features add (zeros for a model without them)."""
        return self.reward - self.learned


def pointwise_parts(
    rm: RewardModel,
    prompts: Sequence[Chat],
    responses: Sequence[str],
    characters: Sequence[Mapping[str, Any]] | None = None,
) -> PointwiseParts:
    """`pointwise_scores` of each response with its learned part beside it, from one forward pass."""
    if rm.rules and characters is None:  # before the model runs: a missing argument is not worth a forward pass
        raise StageError(f"reward model {rm.name} has rule features ({', '.join(rm.rules['features'])}): "
                         "score it with each response's character")
    return parts_from_text(rm, text_scores(rm, prompts, responses), responses, characters)


def parts_from_text(
    rm: RewardModel,
    text: np.ndarray,
    responses: Sequence[str],
    characters: Sequence[Mapping[str, Any]] | None = None,
) -> PointwiseParts:
    """`pointwise_parts` from the responses' `text_scores`, for a caller that reads the text scores too
    (flywheel_local.rm_oracle's text-only agreement) and so runs the model once, not twice."""
    if not rm.rules:
        return PointwiseParts(reward=text, learned=text)
    learned = rm.rules["text_weight"] * text
    values = rule_matrix(rm.rules["features"], characters, responses)
    return PointwiseParts(reward=learned + values @ np.asarray(rm.rules["weights"], dtype=float), learned=learned)


def text_scores(rm: RewardModel, prompts: Sequence[Chat], responses: Sequence[str]) -> np.ndarray:
    """The learned part of a pointwise or user-signal model's logit, rule features left out: the model's logit,
    mixed with its lexical head's score when it has one (flywheel_trainer.lexical)."""
    texts = [render(rm.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    logits = logits_for_texts(rm.model, rm.tokenizer, texts, max_length=rm.max_length)
    if not rm.lexical:
        return logits
    return mix_lexical(rm.lexical, logits, rm.lexical_head.score(prompts, responses))


def mix_lexical(lexical: Mapping[str, Any], logits: np.ndarray, lexical_scores: np.ndarray) -> np.ndarray:
    """A model's logits mixed with its lexical head's scores by the weights fitted in the reward stage."""
    model = float(lexical["model_weight"]) * np.asarray(logits, dtype=float)
    return model + float(lexical["lexical_weight"]) * np.asarray(lexical_scores, dtype=float) + float(lexical["bias"])


def signal_probabilities(rm: RewardModel, prompts: Sequence[Chat], responses: Sequence[str]) -> np.ndarray:
    """Calibrated probability of the user signal (p(continue) or p(thumb up)) for each response."""
    return sigmoid(text_scores(rm, prompts, responses) / rm.temperature)


def pairwise_probabilities(
    rm: RewardModel, prompts: Sequence[Chat], first: Sequence[str], second: Sequence[str]
) -> np.ndarray:
    """Calibrated P(first better than second), averaged over both presentation orders (no position bias)."""
    forward = [render_pair(rm.tokenizer, p, a, b) for p, a, b in zip(prompts, first, second, strict=True)]
    backward = [render_pair(rm.tokenizer, p, b, a) for p, a, b in zip(prompts, first, second, strict=True)]
    logit_forward = logits_for_texts(rm.model, rm.tokenizer, forward, max_length=rm.max_length)
    logit_backward = logits_for_texts(rm.model, rm.tokenizer, backward, max_length=rm.max_length)
    if rm.lexical:  # the head scores each response alone: A's score minus B's is its pairwise logit
        margin = rm.lexical_head.score(prompts, first) - rm.lexical_head.score(prompts, second)
        logit_forward = mix_lexical(rm.lexical, logit_forward, margin)
        logit_backward = mix_lexical(rm.lexical, logit_backward, -margin)
    return order_averaged(sigmoid(logit_forward / rm.temperature), sigmoid(logit_backward / rm.temperature))


def order_averaged(p_forward: np.ndarray, p_backward: np.ndarray) -> np.ndarray:
    """P(A better than B) from a pairwise model's P(first shown better) on (A, B) and on (B, A)."""
    return (p_forward + 1.0 - p_backward) / 2.0


def write_metadata(
    directory: Path,
    *,
    name: str,
    kind: str,
    signal: str | None,
    temperature: float,
    max_length: int,
    rules: dict[str, Any] | None = None,
    lexical: dict[str, Any] | None = None,
) -> None:
    meta = {"name": name, "kind": kind, "signal": signal, "temperature": temperature, "max_length": max_length}
    if rules:
        meta["rules"] = rules
    if lexical:
        meta["lexical"] = lexical
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
