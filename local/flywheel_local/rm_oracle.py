"""Reward models against the hidden truth: does each generation's reward model order responses as the
simulator's oracle does? (Benchmarks, `flywheel status` and the report only; the trainer and the gates never
see it, as they would not in production.)

Held-out pairs: the generation's parent answers every character × topic × opening of the world SAMPLES times
(fresh sampling seeds, so none of these responses was in the training logs); every two different answers to
the same opening are a pair, kept when the oracle's utilities (flywheel_sim.response_utility) differ by at
least MIN_UTILITY_GAP. A model agrees on a pair when it orders the two as the utilities do: the pointwise model
by its reward, the pairwise model by P(first better) against 1/2, a user-signal model by its probability
(ties count half). `text_only_oracle_agreement` is the same for the model's learned part alone: a pointwise
model's rule features left out (flywheel_trainer.scoring.text_scores: its logit mixed with its lexical head);
pairwise and user-signal models carry no rules, so theirs is their whole agreement. `by_trait` breaks the
text-only agreement down by what tells a pair's two answers apart for the oracle (asks back, on topic, persona
word, follows the instructions, emoji count): pairs that differ in that feature, with their count. Next to it:
the model's quality and calibration on its held-out logged data (the reward stage's metrics), which measure
agreement with logged user behaviour, not with the truth: per-pair accuracy for
preference models, ROC AUC for user-signal classifiers (whose accuracy is mostly the signal's base rate). Each
comes with its 95 % interval and says whether it is better than chance (1/2), worse, or indistinguishable.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.gate.offline import wilson_interval

AGREEMENT_FILE = "rm_oracle.json"
SAMPLES = 3
"""Answers per opening: 3 give up to 3 pairs per opening (the default world has 100 openings, so ~250 pairs
survive the utility-gap filter: more than the 200 the issue asks for, in seconds)."""
MIN_UTILITY_GAP = 0.05
"""Pairs the oracle itself barely separates (same features) are ties of the truth and are left out."""
SEED = 777
"""Sampling seed of the held-out answers (the traffic simulator uses the generation's seeds)."""
FORMAT = 3
"""Version of rm_oracle.json's layout: a file of another version is measured again (2: intervals, verdicts and
the logged quality measure of each model; 3: the text-only agreement and its breakdown by trait)."""
TRAITS = ("question", "on_topic", "persona", "compliant", "emojis")


def held_out_pairs(world: Any, policy: Any) -> list[dict[str, Any]]:
    """Pairs of the parent's answers with the oracle's utilities: [{"prompt", "first", "second", "gap",
    "character" (its index in the world), "spec" (the character as curated rows give it to the trainer,
    Character.to_log: what a reward model's rule features read), "topic"}]."""
    from flywheel_sim import response_utility, system_message
    from flywheel_sim.grammar import OPENERS
    from flywheel_sim.people import build_people

    contexts = [
        (ci, topic, [{"role": "system", "content": system_message(c)},
                     {"role": "user", "content": opener.format(topic=topic)}])
        for ci, c in enumerate(world.characters)
        for topic in c.topics
        for opener in OPENERS
    ]
    answers = [policy([chat for _, _, chat in contexts], seed=SEED + k) for k in range(SAMPLES)]
    specs = [c.to_log() for c in world.characters]
    users = build_people(world, "user", world.seed)
    pairs = []
    for index, (ci, topic, chat) in enumerate(contexts):
        texts = list(dict.fromkeys(a[index] for a in answers))
        utility = response_utility(world, ci, topic, texts, people=users)
        for i, j in itertools.combinations(range(len(texts)), 2):
            gap = float(utility[i] - utility[j])
            if abs(gap) >= MIN_UTILITY_GAP:
                pairs.append({"prompt": chat, "first": texts[i], "second": texts[j], "gap": gap, "character": ci,
                              "spec": specs[ci], "topic": topic})
    return pairs


def agreement(model_says_first: np.ndarray, gaps: np.ndarray) -> float:
    """Share of pairs ordered as the oracle orders them; `model_says_first` > 0 means first preferred, 0 a tie."""
    truth = np.sign(gaps)
    said = np.sign(model_says_first)
    return float(np.mean((said == truth) + 0.5 * (said == 0)))


def chance_verdict(interval: tuple[float, float] | list[float] | None) -> str:
    """Where a 95 % interval of an agreement, accuracy or AUC lies against chance (1/2)."""
    if interval is None:
        return "not measured"
    low, high = interval
    if low > 0.5:
        return "better than chance"
    if high < 0.5:
        return "worse than chance"
    return "indistinguishable from chance"


def logged_quality(kind: str, metrics: dict[str, float]) -> dict[str, Any]:
    """The chance-free quality of a reward model on its held-out logged data, from the reward stage's metrics:
    per-pair accuracy (Wilson interval over the held-out pairs) for preference models, ROC AUC for user-signal
    classifiers (None when the stage did not report it)."""
    if kind == "user-signal":
        if "auc" not in metrics:
            return {"measure": "ROC AUC", "value": None, "interval": None, "verdict": chance_verdict(None)}
        interval = [metrics["auc_low"], metrics["auc_high"]]
        return {"measure": "ROC AUC", "value": metrics["auc"], "interval": interval,
                "verdict": chance_verdict(interval)}
    accuracy, n = metrics.get("accuracy"), metrics.get("held_out_examples")
    interval = None if accuracy is None or not n else list(wilson_interval(accuracy, int(n)))
    return {"measure": "pair accuracy", "value": accuracy, "interval": interval, "verdict": chance_verdict(interval)}


def with_interval(value: float | None, interval: list[float] | None) -> str:
    """"0.576 [0.521, 0.630]", "0.576" without an interval, "—" when not measured (for the status and the report)."""
    if value is None:
        return "—"
    return f"{value:.3f}" if interval is None else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def model_agreement(rm: Any, pairs: list[dict[str, Any]], *, text_only: bool = False) -> float:
    """Share of held-out `pairs` that reward model `rm` orders as the oracle does (ties half); `text_only`: by
    its learned part alone (a pointwise model's rule features left out)."""
    return agreement(_preference(rm, pairs, text_only=text_only), np.array([p["gap"] for p in pairs]))


def trait_differences(world: Any, pairs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per trait of TRAITS, which pairs' two answers differ in it (flywheel_sim.features.response_features)."""
    from flywheel_sim.features import response_features

    def traits(p: dict[str, Any], text: str) -> Any:
        return response_features(text, world.characters[p["character"]], p["topic"])

    first = [traits(p, p["first"]) for p in pairs]
    second = [traits(p, p["second"]) for p in pairs]
    return {t: np.array([getattr(a, t) != getattr(b, t) for a, b in zip(first, second, strict=True)], dtype=bool)
            for t in TRAITS}


def by_trait(said: np.ndarray, gaps: np.ndarray, differs: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """{trait: {"pairs": n, "agreement": share (None without pairs)}} over the pairs that differ in each trait."""
    return {t: {"pairs": int(mask.sum()), "agreement": agreement(said[mask], gaps[mask]) if mask.any() else None}
            for t, mask in differs.items()}


def load_policy(model: str, world: Any, name: str = "rm-oracle-parent") -> Any:
    """A policy model directory as the simulator's policy (the parent whose answers make the held-out pairs)."""
    from flywheel_local.users import PredictorPolicy, load_predictor

    return PredictorPolicy(load_predictor(name, model, world), model, threads=world.serving.threads)


def _preference(rm: Any, pairs: list[dict[str, Any]], *, text_only: bool = False) -> np.ndarray:
    return _preferences(rm, pairs)[text_only]


def _preferences(rm: Any, pairs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """How much `rm` prefers each pair's first answer: by its whole output and by its learned part alone (the
    same for all but a pointwise model with rule features, whose text scores both come from: one forward pass
    per answer, not two)."""
    from flywheel_trainer.scoring import pairwise_probabilities, parts_from_text, signal_probabilities, text_scores

    prompts = [p["prompt"] for p in pairs]
    first, second = [p["first"] for p in pairs], [p["second"] for p in pairs]
    if rm.kind == "pairwise":
        said = pairwise_probabilities(rm, prompts, first, second) - 0.5
        return said, said
    if rm.kind == "pointwise":
        specs = [p["spec"] for p in pairs]
        text_first, text_second = text_scores(rm, prompts, first), text_scores(rm, prompts, second)
        reward_first = parts_from_text(rm, text_first, first, specs).reward
        reward_second = parts_from_text(rm, text_second, second, specs).reward
        return reward_first - reward_second, text_first - text_second
    said = signal_probabilities(rm, prompts, first) - signal_probabilities(rm, prompts, second)
    return said, said


def measure_generation(directory: Path, world: Any, policy_for: Any,
                       status: FlywheelGenerationStatus | None = None) -> dict[str, Any]:
    """Every reward model of one generation against the oracle on the parent's held-out pairs (`status`: the
    generation's status, default its status.json)."""
    from flywheel_trainer.scoring import load_reward_model

    if status is None:
        status = FlywheelGenerationStatus.model_validate_json((directory / "status.json").read_text())
    models = {
        r.name.removeprefix("reward-"): r
        for r in status.stages
        if r.name.startswith("reward-") and r.state == "Succeeded" and "model" in r.artifacts
    }
    if not models or status.policy is None:
        return {}
    parent = policy_for(status.policy, directory)
    if parent is None:
        return {}
    pairs = held_out_pairs(world, parent)
    gaps = np.array([p["gap"] for p in pairs])
    differs = trait_differences(world, pairs)
    result: dict[str, Any] = {"pairs": len(pairs), "parent": parent.name, "models": {}}
    for name, record in sorted(models.items()):
        rm = load_reward_model(record.artifacts["model"], field=f"status.stages[{record.name}].artifacts.model")
        said, text_said = _preferences(rm, pairs) if pairs else (None, None)
        agreed = None if said is None else agreement(said, gaps)
        oracle_interval = None if agreed is None else list(wilson_interval(agreed, len(pairs)))
        text_agreed = None if text_said is None else agreement(text_said, gaps)
        result["models"][name] = {
            "kind": rm.kind,
            "oracle_agreement": agreed,
            "oracle_agreement_interval": oracle_interval,
            "oracle_verdict": chance_verdict(oracle_interval),
            "text_only_oracle_agreement": text_agreed,
            "text_only_oracle_agreement_interval": None if text_agreed is None else list(
                wilson_interval(text_agreed, len(pairs))),
            "by_trait": {} if text_said is None else by_trait(text_said, gaps, differs),
            "logged": logged_quality(rm.kind, record.metrics),
            "logged_accuracy": record.metrics.get("accuracy"),
            "logged_held_out": record.metrics.get("held_out_examples"),
            "ece_calibrated": record.metrics.get("ece_calibrated"),
            "train_examples": record.metrics.get("train_examples"),
        }
    return result


def prefetch_key(generation_dir: Path) -> str:
    """The key under which a generation's agreement is handed to the runner's side worker
    (LocalBackend.status_written; flywheel_local.oracle_runs.hand_over) and waited for by the report."""
    return f"rm-agreement:{Path(generation_dir).resolve()}"


def compute_rm_agreement(run_dir: Path, world_file: Path, statuses: Mapping[str, str] | None = None) -> None:
    """`<gen>/rm_oracle.json` for every generation of `run_dir` whose reward models are trained (cached by the
    reward stages' output digests).

    `statuses`: a generation's status as JSON by its resolved directory, read instead of its status.json: the
    runner's side worker is handed the status the runner is about to write (LocalBackend.status_written), so it
    never measures from a status.json one step behind (reward models still Running: a key the report would find
    stale, measuring again on the critical path)."""
    from flywheel_sim import load_world

    from flywheel_local.report import _model_dir
    from flywheel_local.statusview import generation_dirs
    from flywheel_local.users import torch_threads

    world = load_world(world_file)
    loaded: dict[str, Any] = {}

    def policy_for(policy: str, directory: Path) -> Any:
        model = _model_dir(policy, directory)
        if model is None:
            return None
        if model not in loaded:
            loaded[model] = load_policy(model, world)
        return loaded[model]

    for directory in generation_dirs(run_dir):
        given = (statuses or {}).get(str(Path(directory).resolve()))
        status = FlywheelGenerationStatus.model_validate_json(
            given if given is not None else (directory / "status.json").read_text())
        key = sorted((r.name, r.output_digest or "") for r in status.stages if r.name.startswith("reward-"))
        path = directory / AGREEMENT_FILE
        known = json.loads(path.read_text()) if path.is_file() else {}
        if known.get("key") == [list(k) for k in key] and known.get("models") and known.get("format") == FORMAT:
            continue
        with torch_threads(world.serving.threads):  # as its sampling is (PredictorPolicy), so is its scoring
            measured = measure_generation(directory, world, policy_for, status)
        if measured:
            path.write_text(json.dumps({"format": FORMAT, "key": key, **measured}, indent=2) + "\n")


def read_agreement(directory: Path) -> dict[str, Any]:
    """A generation's rm_oracle.json, or {} when not measured (or measured in an older layout)."""
    try:
        measured = json.loads((directory / AGREEMENT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return measured if measured.get("format") == FORMAT else {}
