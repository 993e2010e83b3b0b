"""Simulator benchmark: generation 0's build time and simulated responses per second with batched generation.

Prints a table and writes bench/results/sim.json. The baseline, measured in the same run, is the same
traffic generated one chat at a time (batch size 1); the target is >= 200 responses/s on two CPU cores and a
generation-0 build within 180 s.

    .venv/bin/python bench/sim.py [--people 4000] [--days 1] [--cache DIR] [--out bench/results/sim.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml
from flywheel_sim import (
    DEFAULT_WORLD,
    ModelPolicy,
    ScriptedPolicy,
    build_generation0,
    parse_world,
    simulate_traffic,
)

TARGET_RESPONSES_PER_SECOND = 200.0
TARGET_BUILD_SECONDS = 180.0


def measure(world, policy, *, days: int, max_people: int | None) -> dict[str, float]:
    started, cpu = time.perf_counter(), time.process_time()
    result = simulate_traffic(world, {"control": policy}, days=days, seed=0, max_people=max_people)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    return {
        "responses": result.responses,
        "seconds": seconds,
        "per_second": result.responses / seconds,
        "cpu_seconds": cpu_seconds,
        "per_cpu_second": result.responses / cpu_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=4000, help="simulated users (the world's default: 1000)")
    parser.add_argument("--days", type=int, default=1, help="simulated days of the batched run")
    parser.add_argument("--baseline-people", type=int, default=150, help="users of the unbatched baseline run")
    parser.add_argument("--cache", help="generation-0 cache directory (default: a fresh temporary one)")
    parser.add_argument("--out", default="bench/results/sim.json")
    args = parser.parse_args()

    data = yaml.safe_load(DEFAULT_WORLD.read_text())
    data["users"]["size"] = args.people
    world = parse_world(data)
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(args.cache or scratch)
        started, cpu = time.perf_counter(), time.process_time()
        model_dir = build_generation0(world, cache)
        build_seconds, build_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        meta = json.loads((model_dir / "sim_gen0.json").read_text())

        batched = ModelPolicy.for_world(model_dir, world, name="gen0")
        batched([[{"role": "user", "content": "hi"}]], seed=0)  # load the model outside the timing
        unbatched = ModelPolicy(
            model_dir,
            name="gen0",
            batch_size=1,
            max_new_tokens=world.serving.max_new_tokens,
            context_exchanges=world.serving.context_exchanges,
            threads=world.serving.threads,
        )
        unbatched([[{"role": "user", "content": "hi"}]], seed=0)
        rows = {
            "batched": measure(world, batched, days=args.days, max_people=None),
            "unbatched (baseline)": measure(world, unbatched, days=1, max_people=args.baseline_people),
            "scripted (no model)": measure(world, ScriptedPolicy(world), days=args.days, max_people=None),
        }

    speedup = rows["batched"]["per_second"] / rows["unbatched (baseline)"]["per_second"]
    print(
        f"generation 0: built in {build_seconds:.1f} s, {build_cpu_seconds:.1f} CPU s ({meta['steps']} steps,"
        f" {meta['parameters']:,} parameters,"
        f" final loss {meta['final_loss']:.3f}, corpus compliance {meta['corpus']['compliance']:.2f});"
        f" target <= {TARGET_BUILD_SECONDS:.0f} s"
    )
    print(f"{'run':<22}{'responses':>10}{'seconds':>10}{'resp/s':>10}{'CPU s':>10}{'resp/CPU s':>12}")
    for name, row in rows.items():
        print(
            f"{name:<22}{row['responses']:>10.0f}{row['seconds']:>10.1f}{row['per_second']:>10.1f}"
            f"{row['cpu_seconds']:>10.1f}{row['per_cpu_second']:>12.1f}"
        )
    print(
        f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (resp/CPU s is what an"
        " idle core would give a one-thread policy)"
    )
    print(f"batched vs unbatched: {speedup:.1f}x; target >= {TARGET_RESPONSES_PER_SECOND:.0f} resp/s batched")

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()[0]},
        "people": args.people,
        "days": args.days,
        "generation0": {"build_seconds": build_seconds, "build_cpu_seconds": build_cpu_seconds, **meta},
        "runs": rows,
        "speedup": speedup,
        "targets": {"responses_per_second": TARGET_RESPONSES_PER_SECOND, "build_seconds": TARGET_BUILD_SECONDS},
        "meets_targets": {
            "responses_per_second": rows["batched"]["per_second"] >= TARGET_RESPONSES_PER_SECOND,
            "build_seconds": build_seconds <= TARGET_BUILD_SECONDS,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("sim", out)  # provenance
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
