"""Is a reward model's quality a coin flip on its seed? One generation's pointwise reward model trained again at
several seeds, and its held-out split redrawn, each scored against the oracle.

    python bench/rm_seeds.py --runs RUNS generated-100/gen-1 generated-100/gen-2 [--seeds 1 2 3] [--splits 20]

For each CHAIN/GEN of a finished chain (bench/flywheel.py's run directories; the world file is
RUNS/worlds/CHAIN.yaml, or examples/local/world.yaml for a chain without one), on the oracle's held-out pairs of
the generation's parent's answers (flywheel_local.rm_oracle):

- `splits`: the held-out split alone, no network trained. For each of --splits seeds of the reward stage's split
  (flywheel_trainer.reward.split_held_out), the lexical head fitted on the training side
  (flywheel_trainer.lexical.fit_pairs): how many prompts and pairs the held-out side holds, the head's accuracy on
  them, the weight the held-out data alone would give it (a non-negative Bradley–Terry fit, as the stage mixed
  before), and its agreement with the oracle. The held-out figure swings with which dozen prompts it holds;
  the oracle's verdict on the same head barely moves.
- `seeds`: the pointwise reward model retrained from the generation's own stage config at each of --seeds (the
  seed sets the held-out split, the initialisation and the data order), its text-only part (rule features left
  out) scored on the oracle's pairs five ways: the model alone, the lexical head alone, the mix the current code
  saved (flywheel_trainer.lexical.fit_mix: the model's weight kept only where it earns it on held-out prompts,
  lexical.mix_evidence), and two baselines measured in the same run from the same held-out margins: `previous_mix`
  (the code at dec93f8: the head at 1, the model's weight fitted on the held-out rows as if independent) and
  `held_out_only_mix` (both weights fitted non-negative on the held-out pairs, the code before that), which
  leaves a constant score when both parts read at or below chance there. With rule features, the whole reward
  too (`oracle_with_rules`): the saved one (rules at their training-pair weights, the text's weight on top) and
  the baseline (text and rules both rescaled on the held-out pairs, which can shrink or reverse the rules).

`summary`: mean, minimum and standard deviation of each text-only figure over every generation and seed.

Every stage runs on one thread (OMP_NUM_THREADS=1). Writes bench/results/rm_seeds.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "rm_seeds.json"
DEFAULT_WORLD = ROOT / "examples" / "local" / "world.yaml"
MODEL = "pointwise"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _contexts(rows: list[dict[str, Any]]) -> int:
    return len({json.dumps(r["prompt"]) for r in rows})


def _responses(rows: list[dict[str, Any]], key: str) -> list[str]:
    return [r[key][0]["content"] for r in rows]


def _head_margin(head: Any, rows: list[dict[str, Any]]) -> np.ndarray:
    prompts = [r["prompt"] for r in rows]
    return head.score(prompts, _responses(rows, "chosen")) - head.score(prompts, _responses(rows, "rejected"))


def held_out_only_mix(columns: np.ndarray) -> np.ndarray:
    """The baseline: (model, lexical) weights both fitted non-negative on the held-out margins alone."""
    from flywheel_trainer.lexical import MIX_RIDGE, _fit

    return _fit(np.asarray(columns, dtype=float), None, MIX_RIDGE, nonnegative=True)[0]


def splits(rows: list[dict[str, Any]], fraction: float, count: int, oracle: dict[str, Any]) -> dict[str, Any]:
    """The lexical head over `count` held-out splits (no network trained)."""
    from flywheel_local import rm_oracle
    from flywheel_trainer.lexical import fit_pairs
    from flywheel_trainer.reward import split_held_out

    per_split = []
    for seed in range(count):
        train, held = split_held_out(rows, fraction, seed)
        head = fit_pairs([r["prompt"] for r in train], _responses(train, "chosen"), _responses(train, "rejected"))
        margin = _head_margin(head, held)
        said = head.score(oracle["prompts"], oracle["first"]) - head.score(oracle["prompts"], oracle["second"])
        per_split.append({
            "split_seed": seed, "held_out_pairs": len(held), "held_out_prompts": _contexts(held),
            "held_out_accuracy": float(np.mean((margin > 0) + 0.5 * (margin == 0))),
            "held_out_only_weight": float(held_out_only_mix(margin[:, None])[0]),
            "oracle_agreement": rm_oracle.agreement(said, oracle["gaps"]),
        })

    def spread(key: str) -> dict[str, float]:
        values = np.array([s[key] for s in per_split])
        return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)), "min": float(values.min()),
                "max": float(values.max())}

    return {"prompts": _contexts(rows), "pairs": len(rows), "held_out_accuracy": spread("held_out_accuracy"),
            "oracle_agreement": spread("oracle_agreement"), "held_out_prompts": spread("held_out_prompts"),
            "zeroed_by_held_out_only": sum(s["held_out_only_weight"] == 0.0 for s in per_split),
            "per_split": per_split}


def retrain(directory: Path, seed: int, work: Path) -> Path:
    """The pointwise reward model trained again from the generation's own config at `seed` (cached in `work`)."""
    target = work / directory.parent.name / directory.name / f"seed-{seed}"
    if (target / "reward" / "result.json").is_file():
        return target / "reward"
    target.mkdir(parents=True, exist_ok=True)
    config = json.loads((directory / "configs" / f"{directory.name}-reward-{MODEL}-1.json").read_text())
    config |= {"outputDir": str(target / "reward"), "seed": seed}
    (target / "reward.json").write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with (target / "reward.log").open("w") as log:
        done = subprocess.run([sys.executable, "-m", "flywheel_trainer.cli", "reward", "--config",
                               str(target / "reward.json")], stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"retraining {directory} at seed {seed} failed ({done.returncode}); see {target}/reward.log")
    return target / "reward"


def seed_row(directory: Path, seed: int, work: Path, oracle: dict[str, Any]) -> dict[str, Any]:
    """One retrained pointwise model's held-out figures and its text-only oracle agreement four ways."""
    from flywheel_local import rm_oracle
    from flywheel_trainer.lexical import _prompt_key, fit_mix, mix_evidence
    from flywheel_trainer.reward import _text_margins, split_held_out
    from flywheel_trainer.rules import fit_bradley_terry, pair_differences, rule_differences
    from flywheel_trainer.scoring import load_reward_model, logits_for_texts, render

    out = retrain(directory, seed, work)
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    rm = load_reward_model(out / "model", field=f"retrained {directory.name} seed {seed}")
    config = json.loads((out.parent / "reward.json").read_text())
    fraction = next(m["heldOutFraction"] for m in config["settings"]["rewardModels"] if m["name"] == MODEL)
    train, held = split_held_out(_read_jsonl(directory / "curate" / "pairs.jsonl"), fraction, seed)
    held_columns = np.column_stack([_text_margins(rm.model, rm.tokenizer, held, rm.max_length),
                                    _head_margin(rm.lexical_head, held)])

    def logits(texts: list[str]) -> np.ndarray:
        return logits_for_texts(rm.model, rm.tokenizer, [render(rm.tokenizer, p, t) for p, t in
                                                          zip(oracle["prompts"], texts, strict=True)],
                                max_length=rm.max_length)

    oracle_columns = np.column_stack([
        logits(oracle["first"]) - logits(oracle["second"]),
        rm.lexical_head.score(oracle["prompts"], oracle["first"]) - rm.lexical_head.score(oracle["prompts"],
                                                                                       oracle["second"]),
    ])
    saved = np.array([rm.lexical["model_weight"], rm.lexical["lexical_weight"]])
    baseline = held_out_only_mix(held_columns)
    groups = [_prompt_key(r["prompt"]) for r in held]
    previous = fit_mix(held_columns)[0]  # dec93f8: no prompt groups, the model's weight fitted row by row

    def agreement(weights: np.ndarray) -> float:
        return rm_oracle.agreement(oracle_columns @ weights, oracle["gaps"])

    with_rules = {}
    if rm.rules:  # the whole reward: the saved one, and the held-out-only baseline (text and rules rescaled there)
        features = rm.rules["features"]
        rule_weights = fit_bradley_terry(pair_differences(features, train))
        oracle_rules = rule_differences(features, oracle["specs"], oracle["first"], oracle["second"])
        saved_reward = rm.rules["text_weight"] * (oracle_columns @ saved) + oracle_rules @ np.asarray(
            rm.rules["weights"])
        held_rules = pair_differences(features, held) @ rule_weights
        text_scale, rule_scale = fit_bradley_terry(np.column_stack([held_columns @ baseline, held_rules]))
        baseline_reward = text_scale * (oracle_columns @ baseline) + rule_scale * (oracle_rules @ rule_weights)
        with_rules = {"oracle_with_rules": {"saved": rm_oracle.agreement(saved_reward, oracle["gaps"]),
                                            "held_out_only": rm_oracle.agreement(baseline_reward, oracle["gaps"])},
                      "rule_scale_held_out_only": float(rule_scale)}

    return {
        "seed": seed, "held_out_pairs": len(held), "held_out_prompts": _contexts(held),
        "stage_metrics": {k: metrics.get(k) for k in (
            "accuracy", "text_accuracy", "model_accuracy", "lexical_accuracy", "model_weight", "lexical_weight",
            "text_weight", "train_loss_first", "train_loss_last", "temperature") if metrics.get(k) is not None},
        "weights": {"saved": saved.tolist(), "previous": previous.tolist(), "held_out_only": baseline.tolist()},
        "model_weight_p": mix_evidence(held_columns[:, 0], held_columns[:, 1], groups),
        "oracle_text_only": {"model_alone": agreement(np.array([1.0, 0.0])),
                             "lexical_alone": agreement(np.array([0.0, 1.0])),
                             "saved_mix": agreement(saved), "previous_mix": agreement(previous),
                             "held_out_only_mix": agreement(baseline)},
        **with_rules,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each text-only oracle figure over every generation and seed: mean, min, sd and the mean per generation."""
    keys = rows[0]["seeds"][0]["oracle_text_only"] if rows and rows[0]["seeds"] else {}
    summary = {}
    for key in keys:
        values = np.array([s["oracle_text_only"][key] for r in rows for s in r["seeds"]])
        summary[key] = {"mean": float(values.mean()), "min": float(values.min()),
                        "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                        "per_generation": {r["generation"]: float(np.mean([s["oracle_text_only"][key]
                                                                           for s in r["seeds"]])) for r in rows}}
    return summary


def oracle_pairs(world: Any, directory: Path) -> dict[str, Any]:
    """The oracle's held-out pairs of the generation's parent's answers, as columns."""
    from flywheel_local import rm_oracle
    from flywheel_local.report import _model_dir

    status = json.loads((directory / "status.json").read_text())
    parent = _model_dir(status.get("policy"), directory)
    if parent is None:
        raise SystemExit(f"{directory}: its parent model {status.get('policy')!r} is missing (run the chain again)")
    pairs = rm_oracle.held_out_pairs(world, rm_oracle.load_policy(parent, world, "rm-seeds-parent"))
    return {"parent": parent, "prompts": [p["prompt"] for p in pairs], "first": [p["first"] for p in pairs],
            "second": [p["second"] for p in pairs], "gaps": np.array([p["gap"] for p in pairs]),
            "specs": [p["spec"] for p in pairs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="bench/flywheel.py's folder of run directories")
    parser.add_argument("generations", nargs="+", help="CHAIN/GEN under --runs, e.g. generated-100/gen-2")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--splits", type=int, default=20, help="held-out splits of the lexical-head-only part")
    parser.add_argument("--train-dir", type=Path, help="where the models train again (default: RUNS/rm-seeds)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    from flywheel_sim import load_world

    started = time.monotonic()
    work = args.train_dir or args.runs / "rm-seeds"
    rows = []
    for name in args.generations:
        directory = args.runs / name
        if not (directory / "curate" / "pairs.jsonl").is_file():
            print(f"{directory}: no curated pairs (run bench/flywheel.py first)", file=sys.stderr)
            return 2
        chain_world = args.runs / "worlds" / f"{directory.parent.name}.yaml"
        world_file = chain_world if chain_world.is_file() else DEFAULT_WORLD
        world = load_world(world_file)
        oracle = oracle_pairs(world, directory)
        config = json.loads((directory / "configs" / f"{directory.name}-reward-{MODEL}-1.json").read_text())
        fraction = next(m["heldOutFraction"] for m in config["settings"]["rewardModels"] if m["name"] == MODEL)
        row = {"generation": name, "world": str(world_file), "oracle_pairs": len(oracle["gaps"]),
               "chain_seed": config["seed"],
               "splits": splits(_read_jsonl(directory / "curate" / "pairs.jsonl"), fraction, args.splits, oracle),
               "seeds": [seed_row(directory, seed, work, oracle) for seed in args.seeds]}
        rows.append(row)
        s = row["splits"]
        print(f"\n{name}: {s['pairs']} logged pairs over {s['prompts']} prompts; {row['oracle_pairs']} oracle pairs")
        print(f"  lexical head over {args.splits} held-out splits: held-out prompts "
              f"{s['held_out_prompts']['min']:.0f}-{s['held_out_prompts']['max']:.0f}; held-out accuracy "
              f"{s['held_out_accuracy']['mean']:.3f} ± {s['held_out_accuracy']['sd']:.3f} "
              f"[{s['held_out_accuracy']['min']:.3f}, {s['held_out_accuracy']['max']:.3f}]; oracle "
              f"{s['oracle_agreement']['mean']:.3f} ± {s['oracle_agreement']['sd']:.3f} "
              f"[{s['oracle_agreement']['min']:.3f}, {s['oracle_agreement']['max']:.3f}]; "
              f"zeroed by a held-out-only mix in {s['zeroed_by_held_out_only']} of {args.splits}")
        print(f"  {'seed':>6}{'held-out':>10}{'model':>8}{'lexical':>9}  text-only oracle: {'model':>7}{'lexical':>9}"
              f"{'saved mix':>11}{'(weight, p)':>16}{'previous mix':>14}{'(weight)':>10}{'held-out-only mix':>19}")
        for r in row["seeds"]:
            m, o = r["stage_metrics"], r["oracle_text_only"]
            p = "—" if r["model_weight_p"] is None else f"{r['model_weight_p']:.2f}"
            print(f"  {r['seed']:>6}{m['accuracy']:>10.3f}{m['model_accuracy']:>8.3f}{m['lexical_accuracy']:>9.3f}"
                  f"{'':>19}{o['model_alone']:>7.3f}{o['lexical_alone']:>9.3f}{o['saved_mix']:>11.3f}"
                  f"{'(' + format(r['weights']['saved'][0], '.2f') + ', ' + p + ')':>16}{o['previous_mix']:>14.3f}"
                  f"{'(' + format(r['weights']['previous'][0], '.2f') + ')':>10}{o['held_out_only_mix']:>19.3f}"
                  + (f"   with rules: saved {r['oracle_with_rules']['saved']:.3f}, held-out-only "
                     f"{r['oracle_with_rules']['held_out_only']:.3f}" if "oracle_with_rules" in r else ""), flush=True)
    summary = summarise(rows)
    print(f"\ntext-only oracle agreement over {len(rows)} generations x {len(args.seeds)} seeds:")
    print(f"  {'':<18}{'mean':>7}{'min':>7}{'sd':>7}   per generation (mean)")
    for key, figures in summary.items():
        per = "  ".join(f"{g}: {v:.3f}" for g, v in figures["per_generation"].items())
        print(f"  {key:<18}{figures['mean']:>7.3f}{figures['min']:>7.3f}{figures['sd']:>7.3f}   {per}")
    result = {"runs": str(args.runs), "model": MODEL, "seeds": args.seeds, "split_count": args.splits,
              "summary": summary, "rows": rows, "wall_seconds": round(time.monotonic() - started, 1),
              "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("rm_seeds", args.out)  # provenance
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
