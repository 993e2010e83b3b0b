"""Do the local reward models need their steps? Each trained again at fewer steps and at the old ones, in one run.

    python bench/rm_steps.py CHAIN [CHAIN …] [--before pointwise=300 …] [--after pointwise=150 …]

For every generation of each finished chain (a run directory of bench/flywheel.py, e.g. RUNS/default or
RUNS/generated-112, or bench/local.py's SCRATCH/baseline-chain/default), each reward model is trained twice from the
generation's own stage config, on one thread, two side by side: at `--before` steps (the examples' old counts, the
baseline, measured in the same run) and at `--after` (the current ones). A
reward model's text score is its lexical head plus the transformer's margin at the weight the held-out prompts give
it (lexical.fit_mix: 0 unless the transformer earns it, and then the score is the head's). So the question is not
how good the transformer gets but whether it ever earns a weight, and what the stage writes for the later stages
(`flywheel_reward.json`: the head, the mix, the calibration): the table gives, per generation and model, the
transformer's held-out accuracy (AUC for a user signal) and mix weight at both step counts, the largest difference
between the two `flywheel_reward.json` files, and the training time. Writes bench/results/rm_steps.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "rm_steps.json"
DEFAULT_STEPS = {"pointwise": 150, "pairwise": 150, "continue": 100}
"""examples/local's reward models (gen1.yaml, flywheel.yaml) since this bench."""
BEFORE_STEPS = {"pointwise": 300, "pairwise": 300, "continue": 200}
"""Theirs before it."""


def _steps(values: list[str]) -> dict[str, int]:
    try:
        return {name: int(steps) for name, steps in (v.split("=", 1) for v in values)}
    except ValueError:
        raise SystemExit(f"--before and --after take NAME=STEPS (e.g. pointwise=150), not {' '.join(values)}") from None


def train(config: dict[str, Any], name: str, steps: int, target: Path) -> dict[str, Any]:
    """Train reward model `name` of a generation's stage config at `steps` into `target` (kept: a rerun reuses it);
    its metrics, training seconds and `flywheel_reward.json`."""
    if not (target / "result.json").is_file():
        target.mkdir(parents=True, exist_ok=True)
        config = json.loads(json.dumps(config)) | {"outputDir": str(target)}
        for model in config["settings"]["rewardModels"]:
            if model["name"] == name:
                model["maxSteps"] = steps
        (target / "config.json").write_text(json.dumps(config))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        started = time.monotonic()
        with (target / "stage.log").open("w") as log:
            done = subprocess.run([sys.executable, "-m", "flywheel_trainer.cli", "reward", "--config",
                                   str(target / "config.json")], stdout=log, stderr=subprocess.STDOUT, env=env)
        if done.returncode:
            raise RuntimeError(f"reward model {name} at {steps} steps failed ({done.returncode}): {target}/stage.log")
        (target / "wall_seconds").write_text(f"{time.monotonic() - started:.1f}")
    result = json.loads((target / "result.json").read_text())
    history = result.get("details", {}).get("log_history") or [{}]
    return {"metrics": result["metrics"], "train_seconds": history[-1].get("train_runtime"),
            "stage_seconds": float((target / "wall_seconds").read_text()),
            "reward": json.loads((target / "model" / "flywheel_reward.json").read_text())}


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Every scalar of a JSON value by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in leaves(item, f"{path}[{i}]").items()}
    return {path: value}


def largest_difference(first: Any, second: Any) -> float:
    """The largest absolute difference between two JSON values' numbers (inf where their shapes or texts differ)."""
    a, b = leaves(first), leaves(second)
    if a.keys() != b.keys():
        return float("inf")
    gaps = [abs(float(a[k]) - float(b[k])) if isinstance(a[k], int | float) and isinstance(b[k], int | float)
            else (0.0 if a[k] == b[k] else float("inf")) for k in a]
    return max(gaps, default=0.0)


def row(chain: str, generation: str, name: str, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    quality = "model_auc" if "model_auc" in before["metrics"] or "model_auc" in after["metrics"] else "model_accuracy"
    return {
        "chain": chain, "generation": generation, "model": name, "quality": quality,
        **{f"{key}_{side}": result["metrics"].get(metric) for side, result in (("before", before), ("after", after))
           for key, metric in (("steps", "steps"), ("transformer", quality), ("weight", "model_weight"),
                               ("weight_p", "model_weight_p"), ("accuracy", "accuracy"))},
        "train_seconds_before": before["train_seconds"], "train_seconds_after": after["train_seconds"],
        "stage_seconds_before": before["stage_seconds"], "stage_seconds_after": after["stage_seconds"],
        "reward_json_largest_difference": largest_difference(before["reward"], after["reward"]),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One chain's one reward model over its generations: both step counts side by side."""
    return {
        "generations": len(rows),
        "transformer_mean": [statistics.mean(r[f"transformer_{s}"] for r in rows) for s in ("before", "after")],
        "weighted": [sum(r[f"weight_{s}"] > 0 for r in rows) for s in ("before", "after")],
        "reward_json_unchanged": sum(r["reward_json_largest_difference"] == 0 for r in rows),
        "reward_json_largest_difference": max(r["reward_json_largest_difference"] for r in rows),
        "train_seconds": [round(sum(r[f"train_seconds_{s}"] for r in rows), 1) for s in ("before", "after")],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chains", type=Path, nargs="+", help="run directories of finished chains (gen-N folders)")
    parser.add_argument("--before", nargs="+", default=[f"{k}={v}" for k, v in BEFORE_STEPS.items()],
                        help="the baseline's step counts, NAME=STEPS per reward model")
    parser.add_argument("--after", nargs="+", default=[f"{k}={v}" for k, v in DEFAULT_STEPS.items()],
                        help="the step counts to try, NAME=STEPS per reward model")
    parser.add_argument("--jobs", type=int, default=2, help="trainings side by side, one thread each")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    before, after = _steps(args.before), _steps(args.after)
    if missing := sorted(set(after) - set(before)):
        raise SystemExit(f"--before has no steps for {', '.join(missing)}: give NAME=STEPS for every --after model")
    started = time.monotonic()
    configs = {}
    for chain in args.chains:
        generations = sorted((d for d in chain.iterdir() if d.is_dir() and (d / "configs").is_dir()),
                             key=lambda d: (len(d.name), d.name)) if chain.is_dir() else []
        configs |= {(chain, g.name, name): json.loads(path.read_text()) for g in generations for name in after
                    if (path := g / "configs" / f"{g.name}-reward-{name}-1.json").is_file()}
    if not configs:
        print(f"no reward stage configs of {', '.join(after)} under {', '.join(map(str, args.chains))} (run a chain "
              "first)", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(args.jobs) as pool:  # each training is a process of its own; kept in CHAIN/rm-steps
        jobs = {(key, n): pool.submit(train, config, key[2], n, key[0] / "rm-steps" / key[1] / f"{key[2]}-{n}")
                for key, config in configs.items() for n in (before[key[2]], after[key[2]])}
        trained = {key: job.result() for key, job in jobs.items()}
    rows = [row(chain.name, g, name, trained[(key, before[name])], trained[(key, after[name])])
            for key in configs for chain, g, name in [key]]

    print(f"{'chain':<14} {'generation':<10} {'model':<10} {'steps':>9} {'transformer':>13} {'mix weight':>11} "
          f"{'reward.json Δ':>13} {'train s':>11}")
    for r in rows:
        print(f"{r['chain']:<14} {r['generation']:<10} {r['model']:<10} "
              f"{r['steps_before']:>4.0f}→{r['steps_after']:<4.0f} "
              f"{r['transformer_before'] or 0:>6.3f}→{r['transformer_after'] or 0:.3f} "
              f"{r['weight_before']:>5.2f}→{r['weight_after']:<5.2f} {r['reward_json_largest_difference']:>13.2g} "
              f"{r['train_seconds_before']:>5.1f}→{r['train_seconds_after']:<5.1f}")
    summary = {f"{chain.name}/{name}": summarise(mine) for chain in args.chains for name in after
               if (mine := [r for r in rows if r["chain"] == chain.name and r["model"] == name])}
    for key, s in summary.items():
        print(f"{key}: transformer {s['transformer_mean'][0]:.3f} → {s['transformer_mean'][1]:.3f} (mean of "
              f"{s['generations']}), weighted in {s['weighted'][0]} → {s['weighted'][1]}, flywheel_reward.json "
              f"unchanged in {s['reward_json_unchanged']} (largest difference "
              f"{s['reward_json_largest_difference']:.2g}), training {s['train_seconds'][0]} → "
              f"{s['train_seconds'][1]} s")
    result = {"chains": [str(c) for c in args.chains], "before": before, "after": after, "rows": rows,
              "summary": summary, "wall_seconds": round(time.monotonic() - started, 1), "cpus": os.cpu_count(),
              "load_at_end": list(os.getloadavg())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script

    stamp_file("rm_steps", args.out)  # provenance
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
