"""Which change to the pointwise reward model's training lifts its agreement with the oracle? One at a time.

    python bench/rm_levers.py --runs RUNS [--chain default] [--generations gen1 gen3] [--jobs 2]

For generations of a finished chain (bench/flywheel.py's run directories), the pointwise reward model is trained
again from the generation's own stage configs with one change at a time, and every variant, like the chain's
own model, is scored against the oracle on the same held-out pairs of the parent's answers
(flywheel_local.rm_oracle). The variants: other training seeds (how far the measurement moves by
chance: the seed also redraws the logged held-out split), twice the steps, 32 pairs a step, all of the
generation's user traffic instead of the manifest's sample, generation 0 as the backbone instead of the parent,
wider or deeper backbones pretrained exactly like generation 0 (same corpus, steps and tokenizer), and rule
features next to the text score (flywheel_trainer.rules; the chain's own model may already carry them).
Every stage runs on one thread. Writes bench/results/rm_levers.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "rm_levers.json"
DEFAULT_WORLD = ROOT / "examples" / "local" / "world.yaml"
STAGE = "reward-pointwise"


@dataclass(frozen=True)
class Variant:
    name: str
    change: str
    seed_offset: int = 0
    """Added to the generation's own training seed (the chain gives generation N seed N)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Overrides of the pointwise model's settings.rewardModels entry (API field names)."""
    user_sample: int | None = None
    """userTraffic.sampleSize of a fresh curate run (None: reuse the chain's curated pairs)."""
    backbone: tuple[int, int] | None = None
    """(hidden size, layers) of a backbone pretrained like generation 0; (0, 0) is generation 0 itself."""


VARIANTS = (
    Variant("seed+100", "another training seed (and held-out split)", seed_offset=100),
    Variant("seed+200", "a third training seed (and held-out split)", seed_offset=200),
    Variant("steps-600", "600 steps instead of 300", settings={"maxSteps": 600}),
    Variant("batch-32", "32 pairs a step, 100 steps at 2e-3", settings={"batchSize": 32, "maxSteps": 100,
                                                                         "learningRate": 2e-3}),
    Variant("all-traffic", "all user traffic (no sample), 600 steps", settings={"maxSteps": 600},
            user_sample=1_000_000),
    Variant("generation-0", "generation 0 as the backbone, not the parent", backbone=(0, 0)),
    Variant("h128-l2", "backbone 128 wide, 2 layers (generation 0's recipe)", backbone=(128, 2)),
    Variant("h128-l4", "backbone 128 wide, 4 layers (generation 0's recipe)", backbone=(128, 4)),
    Variant("rule-features", "rule features: asks back, follows the instructions, length",
            settings={"ruleFeatures": ["asks-back", "follows-instructions", "length"]}),
)


def _config(directory: Path, stage: str) -> dict[str, Any]:
    return json.loads((directory / "configs" / f"{directory.name}-{stage}-1.json").read_text())


def _run_stage(command: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}")


def backbone_dir(world: Any, shape: tuple[int, int], cache: Path) -> Path:
    """Generation 0 of `world`, or a model of another shape pretrained by the same recipe (cached by content)."""
    from flywheel_sim import build_generation0

    if shape != (0, 0):
        world = world.model_copy(update={"generation0": world.generation0.model_copy(
            update={"hidden_size": shape[0], "num_layers": shape[1]})})
    return build_generation0(world, cache)


def variant_configs(
    directory: Path, variant: Variant, target: Path, backbones: dict[tuple[int, int], Path]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the curate config to run first, or None to reuse the chain's pairs; the reward config) of one variant:
    the generation's own configs with the variant's one change, writing under `target`."""
    curate = None
    curated = directory / "curate"
    if variant.user_sample is not None:
        curate = _config(directory, "curate")
        curate["outputDir"] = str(target / "curate")
        curate["data"]["userTraffic"]["sampleSize"] = variant.user_sample
        curated = target / "curate"
    reward = json.loads(json.dumps(_config(directory, STAGE)).replace(str(directory / "curate"), str(curated)))
    reward["outputDir"] = str(target / "reward")
    reward["seed"] += variant.seed_offset
    for model in reward["settings"]["rewardModels"]:
        if model["name"] == reward["rewardModel"]:
            model.update(variant.settings)
            if variant.backbone is not None:
                model["baseModel"] = str(backbones[variant.backbone])
    return curate, reward


def run_variant(directory: Path, variant: Variant, out: Path, backbones: dict[tuple[int, int], Path]) -> dict:
    """Train the variant's pointwise model (after its curate stage when the data change); its result.json."""
    target = out / directory.name / variant.name
    target.mkdir(parents=True, exist_ok=True)
    curate, reward = variant_configs(directory, variant, target, backbones)
    for stage, config in (("curate", curate), ("reward", reward)):
        if config is None or (target / stage / "result.json").is_file():
            continue
        (target / f"{stage}.json").write_text(json.dumps(config))
        _run_stage([sys.executable, "-m", "flywheel_trainer.cli", stage, "--config", str(target / f"{stage}.json")],
               target / f"{stage}.log")
    return {"model": target / "reward" / "model", **json.loads((target / "reward" / "result.json").read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="bench/flywheel.py's folder of run directories")
    parser.add_argument("--chain", default="default", help="which run directory under --runs")
    parser.add_argument("--generations", nargs="+", default=["gen1", "gen3"])
    parser.add_argument("--world-file", type=Path, default=DEFAULT_WORLD)
    parser.add_argument("--work", type=Path, help="where variants train (default: RUNS/rm-levers)")
    parser.add_argument("--cache-dir", type=Path, help="backbone cache (default: RUNS/rm-levers/cache)")
    parser.add_argument("--jobs", type=int, default=2, help="variants trained side by side, one thread each")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    from flywheel_local import rm_oracle
    from flywheel_local.report import _model_dir
    from flywheel_operator.gate.offline import wilson_interval
    from flywheel_sim import load_world
    from flywheel_trainer.scoring import load_reward_model

    started = time.monotonic()
    work = args.work or args.runs / "rm-levers"
    cache = args.cache_dir or work / "cache"
    directories = [args.runs / args.chain / g for g in args.generations]
    missing = [str(d) for d in directories if not (d / STAGE / "result.json").is_file()]
    if missing:
        print(f"no finished {STAGE} stage in {', '.join(missing)} (run bench/flywheel.py first)", file=sys.stderr)
        return 2
    world = load_world(args.world_file)
    shapes = sorted({v.backbone for v in VARIANTS if v.backbone is not None})
    with ThreadPoolExecutor(args.jobs) as pool:  # the builds and the trainings are processes or release the GIL
        backbones = dict(zip(shapes, pool.map(lambda s: backbone_dir(world, s, cache), shapes), strict=True))
        jobs = {(d.name, v.name): pool.submit(run_variant, d, v, work, backbones) for d in directories for v in VARIANTS
                if not (v.backbone == (0, 0) and d.name == "gen1")}  # gen1's parent is generation 0 already
        trained = {key: job.result() for key, job in jobs.items()}

    rows = []
    for directory in directories:
        status = json.loads((directory / "status.json").read_text())
        parent = rm_oracle.load_policy(_model_dir(status["policy"], directory), world, "rm-levers-parent")
        pairs = rm_oracle.held_out_pairs(world, parent)
        own = {"model": directory / STAGE / "model", **json.loads((directory / STAGE / "result.json").read_text())}
        candidates = [("as trained", "the chain's own model", own)] + [
            (v.name, v.change, trained[(directory.name, v.name)])
            for v in VARIANTS
            if (directory.name, v.name) in trained
        ]
        for name, change, result in candidates:
            model = load_reward_model(str(result["model"]), field=f"{name}.model")
            agreed = rm_oracle.model_agreement(model, pairs)
            low, high = wilson_interval(agreed, len(pairs))
            history = result.get("details", {}).get("log_history") or [{}]
            rows.append({
                "generation": directory.name, "variant": name, "change": change,
                "oracle_agreement": agreed, "oracle_interval": [low, high], "oracle_pairs": len(pairs),
                "logged_accuracy": result["metrics"].get("accuracy"),
                "train_examples": result["metrics"].get("train_examples"),
                "steps": result["metrics"].get("steps"),
                "train_seconds": history[-1].get("train_runtime"),
            })
            print(f"{directory.name:<6} {name:<13} {agreed:.3f} [{low:.3f}, {high:.3f}]  logged "
                  f"{result['metrics'].get('accuracy', float('nan')):.3f}  trained on "
                  f"{result['metrics'].get('train_examples', 0):.0f}  {history[-1].get('train_runtime', 0):.0f} s  "
                  f"{change}", flush=True)
    baseline = {r["generation"]: r["oracle_agreement"] for r in rows if r["variant"] == "as trained"}
    seeds = {g: [r["oracle_agreement"] for r in rows if r["generation"] == g
                 and r["variant"] in ("as trained", "seed+100", "seed+200")] for g in baseline}
    result = {
        "chain": str(args.runs / args.chain),
        "rows": rows,
        "seed_spread": {g: [min(v), max(v)] for g, v in seeds.items()},
        "best_variant": {g: max((r for r in rows if r["generation"] == g), key=lambda r: r["oracle_agreement"])
                         ["variant"] for g in baseline},
        "reaches_0_70": sorted({f"{r['generation']}:{r['variant']}" for r in rows if r["oracle_agreement"] >= 0.70}),
        "wall_seconds": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("rm_levers", args.out)  # provenance
    print(f"seed spread {result['seed_spread']}; at or above 0.70: {result['reaches_0_70'] or 'none'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
