"""How good could a reward model trained on these logs be? The trained RMs against a feature-perfect one.

    python bench/rm_ceiling.py --runs RUNS [--world-file FILE] [--chain default]

For every generation of a finished chain (bench/flywheel.py's run directories): the share of its curated
preference pairs whose label the oracle agrees with (how noisy the logged preferences are), the trained
reward models' agreement with the oracle on the held-out pairs of flywheel_local.rm_oracle, and the
baseline measured in the same run on the same pairs: a logistic regression trained on the same logged pairs,
but reading the oracle's own response features (asks back, on topic, persona word, follows the instructions,
capped emojis, emoji overuse, distance from each segment's ideal length) instead of the text. The gap between
the two says whether the reward models are limited by the labels (both low) or by what the tiny model learns
to read from the text (the regression far above). A second regression reads only what the trainer itself can
compute from a response and its character's spec, with no knowledge of the simulator (every rule feature of
flywheel_trainer.rules, which a pointwise reward model can carry next to its text score): how far the rules go
without the text. Both regressions are flywheel_trainer.rules.fit_bradley_terry. Writes
bench/results/rm_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "rm_ceiling.json"
DEFAULT_WORLD = ROOT / "examples" / "local" / "world.yaml"


def logged_character_and_topic(world: Any, row: dict[str, Any]) -> tuple[int, str]:
    """A logged pair's character (its index in the world) and the topic of its last user message, as the
    simulator reads them."""
    from flywheel_sim.grammar import topic_of

    index = next(i for i, c in enumerate(world.characters) if c.id == row["character"]["id"])
    last_user = next(m["content"] for m in reversed(row["prompt"]) if m["role"] == "user")
    return index, topic_of(last_user, world.characters[index])


def feature_vector(world: Any, character_index: int, topic: str, response: str) -> np.ndarray:
    """What the oracle's utility reads from a response, as regression inputs."""
    from flywheel_sim.features import feature_matrix, response_features

    f = response_features(response, world.characters[character_index], topic)
    ideals = sorted({s.preferences.ideal_length for s in world.users.segments})
    lengths = [abs(f.words - ideal) / ideal for ideal in ideals]
    overuse = max(0.0, f.emojis - world.trap.threshold)
    return np.concatenate([feature_matrix([f], world.trap.emoji_cap)[0], lengths, [overuse]])


def measure(directory: Path, world: Any, parent_policy: Any) -> dict[str, Any] | None:
    from flywheel_local import rm_oracle
    from flywheel_sim import response_utility
    from flywheel_trainer.rules import RULES, columns, fit_bradley_terry, pair_differences, rule_differences

    rules = list(RULES)

    pairs_file = directory / "curate" / "pairs.jsonl"
    agreement = rm_oracle.read_agreement(directory)
    if not pairs_file.is_file() or not agreement.get("models"):
        return None
    logged = [json.loads(line) for line in pairs_file.read_text().splitlines() if line.strip()]
    differences, groups = [], {}
    for row in logged:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        index, topic = logged_character_and_topic(world, row)
        differences.append(
            feature_vector(world, index, topic, chosen) - feature_vector(world, index, topic, rejected)
        )
        groups.setdefault((index, topic), []).append((chosen, rejected))
    label_agrees = []
    for (index, topic), pairs in groups.items():  # one utility call per character and topic (it builds the users)
        texts = sorted({text for pair in pairs for text in pair})
        utility = dict(zip(texts, response_utility(world, index, topic, texts), strict=True))
        gap = np.array([utility[chosen] - utility[rejected] for chosen, rejected in pairs])
        label_agrees.extend(gap[np.abs(gap) >= rm_oracle.MIN_UTILITY_GAP] > 0)
    weights = fit_bradley_terry(np.array(differences))
    held_out = rm_oracle.held_out_pairs(world, parent_policy)
    said = np.array([
        (feature_vector(world, p["character"], p["topic"], p["first"])
         - feature_vector(world, p["character"], p["topic"], p["second"])) @ weights
        for p in held_out
    ])
    rule_weights = fit_bradley_terry(pair_differences(rules, logged))
    rules_said = rule_differences(
        rules, [p["spec"] for p in held_out], [p["first"] for p in held_out], [p["second"] for p in held_out]
    ) @ rule_weights
    gaps = np.array([p["gap"] for p in held_out])
    return {
        "generation": directory.name,
        "logged_pairs": len(logged),
        "logged_labels_oracle_agrees": float(np.mean(label_agrees)),
        "logged_labels_judged": len(label_agrees),
        "held_out_pairs": len(held_out),
        "feature_regression_agreement": rm_oracle.agreement(said, gaps),
        "trainer_rules_agreement": rm_oracle.agreement(rules_said, gaps),
        "trainer_rules_weights": dict(zip(columns(rules), map(float, rule_weights), strict=True)),
        "reward_model_agreement": {name: m["oracle_agreement"] for name, m in agreement["models"].items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="bench/flywheel.py's folder of run directories")
    parser.add_argument("--chain", default="default", help="which run directory under --runs")
    parser.add_argument("--world-file", type=Path, default=DEFAULT_WORLD)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    from flywheel_local.report import _model_dir
    from flywheel_local.rm_oracle import load_policy
    from flywheel_local.statusview import generation_dirs
    from flywheel_sim import load_world

    run_dir = args.runs / args.chain
    if not run_dir.is_dir():
        print(f"--runs {args.runs}: no run directory {args.chain}/ (run bench/flywheel.py first)", file=sys.stderr)
        return 2
    world = load_world(args.world_file)
    rows = []
    for directory in generation_dirs(run_dir):
        status = json.loads((directory / "status.json").read_text())
        model = _model_dir(status.get("policy") or "", directory)
        if model is None:
            continue
        row = measure(directory, world, load_policy(model, world, "rm-ceiling-parent"))
        if row is not None:
            rows.append(row)
    if not rows:
        print(f"{run_dir}: no generation with curated pairs and rm_oracle.json", file=sys.stderr)
        return 2
    names = sorted({name for r in rows for name in r["reward_model_agreement"]})
    print(f"{'generation':<11}{'pairs':>7}{'labels right':>14}" + "".join(f"{n:>12}" for n in names)
          + f"{'features':>10}{'rules':>8}")
    for r in rows:
        print(f"{r['generation']:<11}{r['logged_pairs']:>7}{r['logged_labels_oracle_agrees']:>14.3f}"
              + "".join(f"{r['reward_model_agreement'].get(n, float('nan')):>12.3f}" for n in names)
              + f"{r['feature_regression_agreement']:>10.3f}{r['trainer_rules_agreement']:>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(run_dir), "world": str(args.world_file), "rows": rows}, indent=2)
                        + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("rm_ceiling", args.out)  # provenance
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
