"""How many draws does the oracle need? Interval width against cost, on a finished flywheel chain's models.

The oracle (flywheel_sim.oracle) evaluates a model on one draw of its sampled responses to the prompt grid; a
verdict on one draw is a coin flip for lifts under about 5 % (issue 26, problem 3). Here every generation's parent
and candidate are evaluated on MAX draws, and for the first S draws (S = 2, 4, 8, …) the bench reports the 95 %
interval's half-width of the depth and breadth lifts, paired (draw d of both models shares its day draws: what
the report uses) and unpaired (what pairing saves), each model's spread across draws, the verdict at each S, and
the seconds a draw costs. The default (flywheel_sim.oracle.DEFAULT_DRAWS) is chosen from this table.

    python bench/oracle.py --runs bench/runs            # the flywheel bench's default chain (bench/runs/default)
    python bench/oracle.py --run-dir DIR --max-draws 16 --generations gen-1,gen-5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "oracle.json"
DEFAULT_WORLD = ROOT / "examples" / "local" / "world.yaml"


def models(run_dir: Path, names: list[str] | None) -> list[tuple[str, str, str]]:
    """(generation, parent model dir, candidate model dir) of each generation with both models on disk."""
    from flywheel_local.report import _model_dir
    from flywheel_local.statusview import generation_dirs
    from flywheel_operator.api import FlywheelGenerationStatus

    out = []
    for directory in generation_dirs(run_dir):
        if names and directory.name not in names:
            continue
        status = FlywheelGenerationStatus.model_validate_json((directory / "status.json").read_text())
        parent, candidate = _model_dir(status.policy, directory), _model_dir(status.candidate_policy, directory)
        if parent and candidate:
            out.append((directory.name, parent, candidate))
    return out


def evaluate(world: Any, model: str, draws: int) -> tuple[list[dict[str, float]], float]:
    """The oracle's figures of `draws` draws of `model`, and the seconds it took."""
    from flywheel_local.users import PredictorPolicy, load_predictor
    from flywheel_sim.oracle import expected_engagement, summarise

    policy = PredictorPolicy(load_predictor("oracle", model, world), "oracle", threads=world.serving.threads)
    started = time.perf_counter()
    expected = expected_engagement(world, policy, draws=draws)
    figures = [summarise(world, e, seed=world.seed, draw=d) for d, e in enumerate(expected)]
    return figures, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs"), help="the flywheel bench's run folder")
    parser.add_argument("--run-dir", help="a chain's run directory (default: RUNS/default)")
    parser.add_argument("--world", default=str(DEFAULT_WORLD))
    parser.add_argument("--max-draws", type=int, default=16)
    parser.add_argument("--generations", help="comma-separated generation names (default: all)")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    from flywheel_sim import load_world
    from flywheel_sim.oracle import paired_lift, unpaired_lift, verdict

    run_dir = Path(args.run_dir) if args.run_dir else Path(args.runs) / "default"
    world = load_world(args.world)
    pairs = models(run_dir, args.generations.split(",") if args.generations else None)
    if not pairs:
        raise SystemExit(f"{run_dir}: no generation with a parent and a candidate model directory; run "
                         "`python bench/flywheel.py --only default` first")
    sizes = [s for s in (2, 4, 8, 16, 32) if s <= args.max_draws]
    cache: dict[str, tuple[list[dict[str, float]], float]] = {}
    rows = []
    for name, parent, candidate in pairs:
        for model in (parent, candidate):
            if model not in cache:
                cache[model] = evaluate(world, model, args.max_draws)
        p, c = cache[parent][0], cache[candidate][0]
        row: dict[str, Any] = {"generation": name, "parent": parent, "candidate": candidate, "by_draws": {}}
        for key in ("depth", "breadth", "compliance"):
            for role, figures in (("parent", p), ("candidate", c)):
                values = [f[key] for f in figures]
                row[f"{role}_{key}_spread"] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values),
                                               "min": min(values), "max": max(values)}
        row["one_draw_depth_lifts"] = [cd["depth"] / pd["depth"] - 1 for pd, cd in zip(p, c, strict=True)]
        for s in sizes:
            entry: dict[str, Any] = {}
            for key in ("depth", "breadth"):
                paired = paired_lift([f[key] for f in p[:s]], [f[key] for f in c[:s]])
                unpaired = unpaired_lift([f[key] for f in p[:s]], [f[key] for f in c[:s]])
                entry[key] = {"lift": paired.estimate, "interval": paired.interval,
                              "paired_half_width": paired.half_width, "unpaired_half_width": unpaired.half_width}
            entry["verdict"] = verdict(paired_lift([f["depth"] for f in p[:s]], [f["depth"] for f in c[:s]]),
                                       paired_lift([f["breadth"] for f in p[:s]], [f["breadth"] for f in c[:s]]))
            row["by_draws"][s] = entry
        rows.append(row)
    seconds = {m: round(t / args.max_draws, 2) for m, (_, t) in cache.items()}
    result = {"run_dir": str(run_dir), "world": args.world, "max_draws": args.max_draws, "rows": rows,
              "seconds_per_draw": seconds, "mean_seconds_per_draw": round(statistics.fmean(seconds.values()), 2)}
    print(f"\n== 95 % half-width of the oracle's lifts (paired / unpaired) by draws; {run_dir}")
    head = f"{'generation':<11} {'draws':>5} {'depth lift':>10} {'± paired':>9} {'± unpaired':>10} " \
           f"{'breadth':>8} {'± paired':>9} {'± unpaired':>10}  verdict"
    print(head + "\n" + "-" * len(head))
    for row in rows:
        for s, e in row["by_draws"].items():
            d, b = e["depth"], e["breadth"]
            print(f"{row['generation']:<11} {s:>5} {d['lift']:>+10.1%} {d['paired_half_width']:>9.1%} "
                  f"{d['unpaired_half_width']:>10.1%} {b['lift']:>+8.1%} {b['paired_half_width']:>9.1%} "
                  f"{b['unpaired_half_width']:>10.1%}  {e['verdict']}")
        one = row["one_draw_depth_lifts"]
        print(f"{'':<11} one draw's depth lift ranged {min(one):+.1%} … {max(one):+.1%}; parent depth sd "
              f"{row['parent_depth_spread']['sd'] / row['parent_depth_spread']['mean']:.1%} of its mean, "
              f"compliance sd {row['parent_compliance_spread']['sd']:.3f}")
    print(f"seconds per draw per model: {result['mean_seconds_per_draw']} (mean over {len(seconds)} models)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("oracle", out)  # provenance
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
