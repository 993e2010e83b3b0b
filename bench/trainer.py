"""Benchmark of the stage programs: tokens/s and peak memory per stage, against a plain-PyTorch baseline.

Runs curate → reward (3 models) → sft → rl → eval on the synthetic log and a tiny Llama-config parent, each
stage as its own `python -m flywheel_trainer.cli` process (as a Job runs it), so each stage's peak resident
memory is its own (os.wait4). tokens/s = tokens the stage's trainer consumed / the stage's wall time
(sampling, scoring and loading included). The baseline, measured in the same run on the same model, is a plain
PyTorch causal-LM training loop; `vs baseline` is stage tokens/s over baseline tokens/s (how much the stage's
sampling, scoring and TRL machinery cost on top of bare training).

GPU throughput and MFU of every stage on a ~1B-parameter model: bench/gpu.py. Writes bench/results/trainer.json.

    python bench/trainer.py [--threads N] [--out bench/results/trainer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, Any] = {
    "rewardModels": [
        {"name": "pointwise", "kind": "pointwise", "learningRate": 3e-3, "epochs": 2, "batchSize": 16},
        {"name": "pairwise", "kind": "pairwise", "learningRate": 3e-3, "epochs": 2, "batchSize": 16},
        {
            "name": "continue",
            "kind": "user-signal",
            "signal": "continue",
            "learningRate": 3e-3,
            "maxSteps": 20,
            "batchSize": 16,
        },
    ],
    "sft": {
        "rejectionSampling": {"samplesPerPrompt": 4, "prompts": 64, "maxNewTokens": 24},
        "learningRate": 1e-3,
        "maxSteps": 16,
        "batchSize": 8,
    },
    "dpo": {"enabled": True, "maxPairs": 32, "learningRate": 1e-4, "batchSize": 8},
    "rl": {
        "numGenerations": 4,
        "prompts": 16,
        "selectionSamples": 4,
        "selectionPool": 64,
        "promptsPerStep": 4,
        "maxSteps": 12,
        "learningRate": 2e-3,
        "maxNewTokens": 24,
        "klBeta": 0.02,
    },
    "eval": {"promptsPerSource": 48, "maxNewTokens": 24},
}


def run_stage(stage: str, name: str, config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one stage in its own process; its wall time, peak RSS and result."""
    config_file = workdir / f"{name}.json"
    config_file.write_text(json.dumps(config))
    command = [sys.executable, "-m", "flywheel_trainer.cli", stage, "--config", str(config_file)]
    started = time.perf_counter()
    with open(workdir / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {name} failed; see {workdir / (name + '.log')}")
    result = json.loads((Path(config["outputDir"]) / "result.json").read_text())
    peak_mib = usage.ru_maxrss / 1024 if platform.system() == "Linux" else usage.ru_maxrss / 2**20
    return {"wall_s": wall, "peak_rss_mib": peak_mib, "result": result}


def baseline_tokens_per_second(policy: Path, records: list[dict[str, Any]], steps: int = 20) -> float:
    """Plain PyTorch causal-LM training throughput of the parent on the log's chats (the same-run baseline)."""
    import torch
    from flywheel_trainer.conversation import to_chat
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(policy)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    texts = [tokenizer.apply_chat_template(to_chat(r), tokenize=False) for r in records]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens, started = 0, time.perf_counter()
    for step in range(steps):
        batch = tokenizer(
            texts[step * 8 % len(texts) :][:8], return_tensors="pt", padding=True, add_special_tokens=False
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - started)


def cpu_chain(workdir: Path) -> dict[str, Any]:
    from flywheel_trainer.synthetic import synthetic_records, write_jsonl

    records = synthetic_records(360)
    log = write_jsonl(records, workdir / "logs" / "traffic.jsonl")
    policy = workdir / "parent"
    # Built in a child process: a child's peak RSS starts at its parent's RSS at fork, so this process must not
    # load torch before the stages run.
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from flywheel_trainer.synthetic import build_tiny_parent; "
            f"build_tiny_parent(__import__('pathlib').Path({str(policy)!r}))",
        ],
        check=True,
        capture_output=True,
    )
    done: dict[str, dict[str, Any]] = {}
    stages: dict[str, dict[str, Any]] = {}
    plan = [("curate", "curate", None)] + [
        ("reward", f"reward-{m['name']}", m["name"]) for m in SETTINGS["rewardModels"]
    ]
    plan += [("sft", "sft", None), ("rl", "rl", None), ("eval", "eval", None)]
    for stage, name, reward_model in plan:
        config = {
            "stage": stage,
            "name": name,
            "generation": "bench",
            "outputDir": str(workdir / name),
            "policy": str(policy),
            "data": {"userTraffic": {"uri": str(log)}},
            "settings": SETTINGS,
            "upstream": {n: r["artifacts"] for n, r in done.items()},
            "upstreamDigests": {n: r["outputDigest"] for n, r in done.items()},
        }
        if reward_model:
            config["rewardModel"] = reward_model
        run = run_stage(stage, name, config, workdir)
        done[name] = run["result"]
        metrics = run["result"]["metrics"]
        tokens = metrics.get("tokens_seen", metrics.get("tokens_generated", 0.0))
        stages[name] = {
            "wall_s": round(run["wall_s"], 2),
            "tokens": int(tokens),
            "tokens_per_s": round(tokens / run["wall_s"], 1),
            "peak_rss_mib": round(run["peak_rss_mib"], 1),
        }
    baseline = baseline_tokens_per_second(policy, records)
    for row in stages.values():
        row["vs_baseline"] = round(row["tokens_per_s"] / baseline, 3) if row["tokens"] else None
    return {"baseline_tokens_per_s": round(baseline, 1), "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (all processes)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "trainer.json"))
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch in every process started here
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        cpu = cpu_chain(Path(tmp))
    print(f"baseline (plain PyTorch LM training): {cpu['baseline_tokens_per_s']:.0f} tokens/s")
    print(f"{'stage':<18}{'wall s':>9}{'tokens':>10}{'tokens/s':>11}{'peak MiB':>10}{'vs base':>9}")
    for name, row in cpu["stages"].items():
        ratio = "-" if row["vs_baseline"] is None else f"{row['vs_baseline']:.3f}"
        print(
            f"{name:<18}{row['wall_s']:>9.1f}{row['tokens']:>10}{row['tokens_per_s']:>11.1f}"
            f"{row['peak_rss_mib']:>10.0f}{ratio:>9}"
        )
    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "threads": args.threads},
        "cpu": cpu,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("trainer", args.out)  # provenance


if __name__ == "__main__":
    main()
