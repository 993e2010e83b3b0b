"""Local speed (issue 29): `make run` and the 5-generation local chain, this tree against a baseline commit.

Both trees run back to back in this one invocation, each from a clean run directory and a fresh cache that holds
only the generation-0 build (built once beforehand and shared: `make run` is measured after set-up, as users meet
it the second time). The baseline tree is `git archive BASE` unpacked in a scratch folder; each run is a
subprocess whose PYTHONPATH puts that tree's packages first.

- make run: `flywheel run examples/local/gen1.yaml` (the Makefile's `run` target) with its wall time, the
  runner's own phase summary (generation 0, simulated traffic, the A/B simulation, the report) and each stage's
  run time from status.json; then the same command again on the warm cache ("second run": what caching by
  content saves a person who runs it twice).
- chain: what `python bench/flywheel.py --only default --cpus 1` runs (the Flywheel of
  examples/local/flywheel.yaml through the product path, gen-1 … gen-5, every stage on one thread, as
  bench/results/flywheel.json was measured), its wall time without the oracle, and its decisions: promotions
  per generation, the band's checkpoint, the measured lifts, and the digest of every candidate model, so
  "the same decisions" can be checked model by model against the baseline and against flywheel.json.

The load average is sampled every 5 s during each run (mean and max) and recorded with it: figures from this
shared 2-core machine vary with the load.

    python bench/local.py                          # both parts, baseline d32e63f
    python bench/local.py --only make-run          # one part
    python bench/local.py --base d32e63f --repeats 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "local.json"
STAGES_RESULT = ROOT / "bench" / "results" / "local_stages.json"
FLYWHEEL_RESULT = ROOT / "bench" / "results" / "history" / "flywheel@9b8bf5b.json"  # the committed chain
BASE = "d32e63f"
PACKAGES = ("operator", "trainer", "sim", "local", ".")
ENV = {"HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONNODEBUGRANGES": "1"}
TARGETS = {"make_run_seconds": 120.0, "chain_seconds": 600.0}
"""Issue 29: `make run` within 2 min, the 5-generation local chain within 10 min, on 2 idle cores."""


class LoadSampler:
    """The 1-minute load average every `every` seconds while a run lasts."""

    def __init__(self, every: float = 5.0) -> None:
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {"start": round(self.samples[0], 2), "mean": round(sum(self.samples) / len(self.samples), 2),
                "max": round(max(self.samples), 2), "end": round(self.samples[-1], 2)}


def baseline_tree(ref: str, folder: Path) -> Path:
    """The tree of commit `ref`, unpacked from `git archive` (no worktree, no checkout of this repository)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True,
                            text=True).stdout.strip()
    tree = folder / f"tree-{commit[:12]}"
    if not (tree / "Makefile").is_file():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def tree_env(tree: Path) -> dict[str, str]:
    path = os.pathsep.join(str(tree / p) for p in PACKAGES)
    return {**os.environ, **ENV, "PYTHONPATH": path}


def commit_of(tree: Path) -> str:
    if tree == ROOT:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    return tree.name.removeprefix("tree-")


def build_generation0(tree: Path, cache: Path) -> Path:
    """Build (or find) generation 0 of the default world with `tree`'s code; returns its directory."""
    code = ("import sys; from pathlib import Path; from flywheel_sim import DEFAULT_WORLD, build_generation0, "
            "load_world; print(build_generation0(load_world(DEFAULT_WORLD), Path(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, str(cache)], cwd=tree, env=tree_env(tree), check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return Path(out)


def fresh_cache(folder: Path, gen0: Path) -> Path:
    """A cache folder holding only the generation-0 build (copied), as after set-up."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(gen0, folder / gen0.name)
    return folder


def run_logged(command: list[str], tree: Path, log: Path) -> tuple[float, int, dict[str, float]]:
    log.parent.mkdir(parents=True, exist_ok=True)
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with LoadSampler() as load, log.open("w") as handle:
        started = time.perf_counter()
        code = subprocess.run(command, cwd=tree, env=tree_env(tree), stdout=handle, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, code, {**load.summary(), "cpu_seconds": round(cpu, 1)}


def stage_seconds(generation_dir: Path) -> dict[str, float]:
    """Each stage's run time (from its start to its finish) in a generation's status.json."""
    status = json.loads((generation_dir / "status.json").read_text())
    out: dict[str, float] = {}
    for record in status.get("stages", []):
        if record.get("startedAt") and record.get("finishedAt"):
            from datetime import datetime

            seconds = (datetime.fromisoformat(record["finishedAt"]) - datetime.fromisoformat(record["startedAt"]))
            out[record["name"]] = round(seconds.total_seconds(), 1)
    return out


_PHASE = re.compile(r"([A-Za-z/0-9 -]+?) (\d+(?:\.\d+)?)(s| min)$")


def phase_summary(log: Path) -> dict[str, float]:
    """The runner's `done in X min: phase Ns, ...` line as {phase: seconds} (stages included)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("done in ")]
    if not lines:
        return {}
    out: dict[str, float] = {}
    for part in lines[-1].split(": ", 1)[1].split(", "):
        match = _PHASE.match(part.strip())
        if match:
            value = float(match.group(2)) * (60 if match.group(3) == " min" else 1)
            out[match.group(1).strip()] = value
    return out


def make_run(tree: Path, scratch: Path, gen0: Path, label: str, second: bool = True) -> dict[str, Any]:
    """`flywheel run examples/local/gen1.yaml` from a clean run directory and a cache holding generation 0, then
    again from a clean run directory on the cache the first run left."""
    cache = fresh_cache(scratch / f"{label}-cache", gen0)
    rows = {}
    for attempt in ("first", "second") if second else ("first",):
        run_dir = scratch / f"{label}-make-run-{attempt}"
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [sys.executable, "-m", "flywheel_local.cli", "run", "examples/local/gen1.yaml", "--run-dir",
                   str(run_dir), "--cache-dir", str(cache)]
        log = scratch / f"{label}-make-run-{attempt}.log"
        seconds, code, load = run_logged(command, tree, log)
        status = json.loads((run_dir / "gen1" / "status.json").read_text())
        rows[attempt] = {
            "wall_seconds": round(seconds, 1),
            "exit_code": code,
            "load": load,
            "phases": phase_summary(log),
            "stages": stage_seconds(run_dir / "gen1"),
            "phase": status.get("phase"),
            "decision": (status.get("decision") or {}).get("outcome"),
            "candidate_digest": model_digest(status.get("candidatePolicy")),
        }
        print(f"{label} make run ({attempt}): {seconds:.1f} s, {rows[attempt]['phase']}, load {load}", flush=True)
    return {"tree": commit_of(tree), **rows}


def model_digest(path: str | None) -> str | None:
    """SHA-256 of a model directory's weights (model.safetensors), None when there is none."""
    if not path or not (Path(path) / "model.safetensors").is_file():
        return None
    return hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()[:16]


def chain(tree: Path, scratch: Path, gen0: Path, label: str, generations: int) -> dict[str, Any]:
    """The default world's chain as bench/flywheel.py runs it (--only default --cpus 1), without its oracle."""
    cache = fresh_cache(scratch / f"{label}-chain-cache", gen0)
    runs = scratch / f"{label}-chain"
    shutil.rmtree(runs, ignore_errors=True)
    command = [sys.executable, "bench/flywheel.py", "--only", "default", "--cpus", "1", "--no-summary",
               "--generations", str(generations), "--runs", str(runs), "--cache-dir", str(cache)]
    log = scratch / f"{label}-chain.log"
    seconds, code, load = run_logged(command, tree, log)
    wall = json.loads((runs / "default" / "bench-wall.json").read_text()) \
        if (runs / "default" / "bench-wall.json").is_file() else {}
    print(f"{label} chain: {seconds:.1f} s (chain {wall.get('wall_seconds')} s), load {load}", flush=True)
    return {"tree": commit_of(tree), "exit_code": code, "wall_seconds": wall.get("wall_seconds"),
            "process_seconds": round(seconds, 1), "load": load, "generations": decisions(runs / "default")}


def decisions(run_dir: Path) -> list[dict[str, Any]]:
    """Per generation: the decision, its reasons, the band's checkpoint, measured lifts, the candidate's digest
    and every stage's run time."""
    from flywheel_local.statusview import generation_dirs

    out = []
    for directory in generation_dirs(run_dir) if run_dir.is_dir() else []:
        status = json.loads((directory / "status.json").read_text())
        decision = status.get("decision") or {}
        rl = directory / "rl" / "result.json"
        band = json.loads(rl.read_text()).get("details", {}).get("band", {}) if rl.is_file() else {}
        gate = status.get("offlineGate") or {}
        out.append({
            "generation": directory.name,
            "phase": status.get("phase"),
            "decision": decision.get("outcome"),
            "promoted": status.get("phase") == "Promoted",
            "reasons": decision.get("reasons", []),
            "offline_gate_passed": gate.get("passed"),
            "band_step": band.get("chosen_step"),
            "candidate_digest": model_digest(status.get("candidatePolicy")),
            "stages": stage_seconds(directory),
        })
    return out


MATCHED = ("decision", "band_step", "win_rate_user", "win_rate_internal", "instruction_following_eval",
           "measured_depth_lift", "measured_breadth_lift", "emoji_rate")
"""What a generation of the chain is compared on: the decision and the numbers it was made from (the offline
metrics of the eval stage and the lifts the online gate measured). Equal to the last digit means the same
sampled responses, reward models and traffic: the same run."""


def measured_rows(run_dir: Path) -> list[dict[str, Any]]:
    """bench/flywheel.py's rows of a chain, reduced to MATCHED (no oracle needed)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from flywheel import rows  # bench/flywheel.py

    out = []
    for row in rows(run_dir):
        reduced = {"generation": row["generation"], "promoted": row["promoted"]}
        reduced.update({key: row.get(key) for key in MATCHED if key != "band_step"})
        reduced["band_step"] = (row.get("band") or {}).get("chosen_step")
        out.append(reduced)
    return out


def committed_chain() -> list[dict[str, Any]]:
    """The default world's chain in bench/results/flywheel.json, reduced to MATCHED."""
    if not FLYWHEEL_RESULT.is_file():
        return []
    rows = json.loads(FLYWHEEL_RESULT.read_text()).get("worlds", {}).get("default", {}).get("rows", [])
    out = []
    for r in rows:
        reduced = {"generation": r["generation"], "promoted": r["promoted"]}
        reduced.update({key: r.get(key) for key in MATCHED if key != "band_step"})
        reduced["band_step"] = (r.get("band") or {}).get("chosen_step")
        out.append(reduced)
    return out


def compare(chains: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Generation by generation against the baseline run (when measured) and bench/results/flywheel.json: the
    same promotion, and which of MATCHED differ."""
    new = chains.get("new", [])
    others = {"baseline": chains.get("baseline", []), "committed": committed_chain()}
    rows = []
    for i, row in enumerate(new):
        entry: dict[str, Any] = {"generation": row["generation"], "new": row}
        for label, other in others.items():
            if i < len(other):
                entry[f"same_promotion_as_{label}"] = row["promoted"] == other[i]["promoted"]
                entry[f"differs_from_{label}"] = {k: [row.get(k), other[i].get(k)] for k in MATCHED
                                                  if row.get(k) != other[i].get(k)}
        rows.append(entry)
    return {"compared_on": list(MATCHED), "rows": rows,
            "all_promotions_match_committed": bool(rows) and all(r.get("same_promotion_as_committed") for r in rows),
            "identical_to_committed": bool(rows) and all(r.get("differs_from_committed") == {} for r in rows)}


SAMPLING_CODE = r"""
import json, sys, time
import torch
from flywheel_sim import DEFAULT_WORLD, load_world, system_message
from flywheel_local.users import load_predictor

world = load_world(DEFAULT_WORLD)
predictor = load_predictor("generation-0", sys.argv[1], world)
chats = []
for i in range(int(sys.argv[2])):
    character = world.characters[i % len(world.characters)]
    topic = character.topics[(i // len(world.characters)) % len(character.topics)]
    chats.append([{"role": "system", "content": system_message(character)},
                  {"role": "user", "content": f"hi! tell me about {topic}."}])
rows, answers = {}, {}
for threads in (torch.get_num_threads(), world.serving.threads or torch.get_num_threads()):
    torch.set_num_threads(threads)
    started = time.perf_counter()
    answers[threads] = predictor.respond(chats, seed=1)
    rows[f"{threads} thread(s)"] = round(time.perf_counter() - started, 2)
first, last = answers.values()
rows["same_responses"] = sum(a == b for a, b in zip(first, last)) / len(first)
print(json.dumps(rows))
"""


PROFILE_CODE = r"""
import cProfile, json, os, pstats, sys, time
from flywheel_local.commands import run_command

run_dir, cache, out = sys.argv[1], sys.argv[2], sys.argv[3]
profile = cProfile.Profile()
started = time.perf_counter()
profile.enable()
try:
    code = run_command("examples/local/gen1.yaml", run_dir=run_dir, cache_dir=cache)
except KeyboardInterrupt:
    code = 130
profile.disable()
profile.dump_stats(out)
print(json.dumps({"wall_seconds": time.perf_counter() - started, "exit_code": code}))
"""
BREAKDOWN = (
    ("runner total", "commands.py", "run_command"),
    ("simulated traffic, user + internal (LocalBackend._simulate_sources: internal in the side worker)", "backend.py",
     "_simulate_sources"),
    ("  user traffic in the runner's process (LocalBackend._resolve_source)", "backend.py", "_resolve_source"),
    ("  sampling the policy's responses (flywheel_trainer.generation.generate)", "generation.py", "generate"),
    ("  checking the logs against the contract (write_conversations)", "conversation.py", "write_conversations"),
    ("  response features (flywheel_sim.features.response_features)", "features.py", "response_features"),
    ("  people's reactions (flywheel_sim.people.react)", "people.py", "react"),
    ("  building the population (flywheel_sim.people.build_people)", "people.py", "build_people"),
    ("waiting on stage subprocesses (Runner._wait)", "runner.py", "_wait"),
    ("the A/B simulation (LocalBackend._deploy + observe)", "backend.py", "observe"),
    ("the report with the oracle (compute_oracle)", "report.py", "compute_oracle"),
    ("  oracle draws not kept in the cache, side by side (oracle_runs.expected_for)", "oracle_runs.py",
     "expected_for"),
    ("  reward models against the oracle, alongside (compute_rm_agreement)", "rm_oracle.py", "compute_rm_agreement"),
)
"""Rows of the profile breakdown: (label, file name, function) — the function's cumulative time."""


def cumulative_seconds(stats_file: Path, rows: tuple[tuple[str, str, str], ...]) -> dict[str, float]:
    """Cumulative seconds of each (label, file name, function) row in a cProfile dump: the largest entry when
    several match, so nested calls are not added twice."""
    import pstats

    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    out = {}
    for label, file_name, function in rows:
        seconds = [ct for (path, _, name), (_, _, _, ct, _) in stats.items()
                   if name == function and path.endswith(file_name)]
        out[label] = round(max(seconds), 1) if seconds else 0.0
    return out


def profile(tree: Path, scratch: Path, gen0: Path, label: str) -> dict[str, Any]:
    """`flywheel run examples/local/gen1.yaml` with the runner process under cProfile (the stage programs run as
    subprocesses: their times come from status.json)."""
    cache = fresh_cache(scratch / f"{label}-profile-cache", gen0)
    run_dir = scratch / f"{label}-profile-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    stats_file = scratch / f"{label}.prof"
    log = scratch / f"{label}-profile.log"
    command = [sys.executable, "-c", PROFILE_CODE, str(run_dir), str(cache), str(stats_file)]
    seconds, code, load = run_logged(command, tree, log)
    return {"tree": commit_of(tree), "wall_seconds": round(seconds, 1), "exit_code": code, "load": load,
            "runner_process": cumulative_seconds(stats_file, BREAKDOWN), "phases": phase_summary(log),
            "stages": stage_seconds(run_dir / "gen1") if (run_dir / "gen1" / "status.json").is_file() else {}}


def sampling(tree: Path, gen0: Path, chats: int = 2300) -> dict[str, Any]:
    """What the runner's thread count costs the simulated users' sampling: the first turn of a simulated day
    (`chats` opening chats, the world's serving batch size) answered by generation 0 on torch's default thread
    count — what the runner used before — and on the world's `serving.threads`, back to back in one process."""
    with LoadSampler() as load:
        out = subprocess.run([sys.executable, "-c", SAMPLING_CODE, str(gen0), str(chats)], cwd=tree,
                             env=tree_env(tree), check=True, capture_output=True, text=True).stdout
    return {"chats": chats, "seconds": json.loads(out.strip().splitlines()[-1]), "load": load.summary()}


STAGES = ("curate", "reward-pointwise", "reward-pairwise", "reward-continue", "sft", "rl", "eval")
"""make run's stage programs, in the order they run (the three reward models side by side)."""
STAGE_CODE = r"""
import cProfile, json, os, sys, time
config, out, stats = sys.argv[1], sys.argv[2], sys.argv[3]
import datasets, torch, transformers, trl  # what the warm start's forkserver imports (warm_preload): off the clock
from flywheel_trainer import cli, curate, evaluate, reward, rl, sft
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer
from trl import GRPOTrainer, RewardTrainer, SFTTrainer
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from flywheel_trainer.cli import main
started, cpu = time.perf_counter(), time.process_time()
profile = cProfile.Profile() if stats else None
if profile is not None:
    profile.enable()
code = main([json.load(open(config))["stage"], "--config", config])
if profile is not None:
    profile.disable()
    profile.dump_stats(stats)
print(json.dumps({"exit_code": code, "seconds": time.perf_counter() - started,
                  "cpu_seconds": time.process_time() - cpu}))
"""
"""One stage program in a process of its own, its libraries imported before the clock starts (as the warm start
forks it: flywheel_local.warm), optionally under cProfile."""
STAGE_BREAKDOWN = (
    ("training (transformers Trainer.train)", "trainer.py", "train"),
    ("  backward", "graph.py", "_engine_run_backward"),
    ("  activation recompute in the backward (torch.utils.checkpoint)", "checkpoint.py", "recompute_fn"),
    ("  GRPO's sampling and rewards (GRPOTrainer._generate_and_score_completions)", "grpo_trainer.py",
     "_generate_and_score_completions"),
    ("sampling (flywheel_trainer.generation.generate_tokens)", "generation.py", "generate_tokens"),
    ("reward-model scoring (flywheel_trainer.scoring)", "scoring.py", "pointwise_scores"),
    ("dataset preparation (datasets map)", "arrow_dataset.py", "map"),
    ("model loading (from_pretrained)", "modeling_utils.py", "from_pretrained"),
    ("saving (save_pretrained)", "modeling_utils.py", "save_pretrained"),
    ("imports after the warm start's preload", "<frozen importlib._bootstrap>", "_find_and_load"),
)
"""Rows of a stage's profile: (label, file name, function), the function's cumulative seconds (the largest entry
when several match: nested calls are not added twice)."""


def stage_breakdown(stats_file: Path) -> dict[str, float]:
    """STAGE_BREAKDOWN's rows and the whole stage program (flywheel_trainer.cli.main) in a stage's profile."""
    return cumulative_seconds(stats_file, (*STAGE_BREAKDOWN, ("stage program (flywheel_trainer.cli.main)", "cli.py",
                                                              "main")))


def run_stage(tree: Path, config: Path, out: Path, threads: int, stats: Path | None = None) -> dict[str, Any]:
    """`config`'s stage program with `tree`'s code on `threads` torch threads, writing into `out`: its seconds,
    process CPU seconds and the digest of every model it wrote."""
    data = json.loads(config.read_text())
    data["outputDir"] = str(out)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(out.name + ".json")
    path.write_text(json.dumps(data))
    env = tree_env(tree) | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", STAGE_CODE, str(path), str(out), str(stats or "")], cwd=tree,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{config.name} with {tree}: {done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    digests = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
               for p in sorted([*out.rglob("model.safetensors"), *out.rglob("*.jsonl")])}
    result = json.loads((out / "result.json").read_text())
    return {"seconds": round(row["seconds"], 1), "cpu_seconds": round(row["cpu_seconds"], 1), "digests": digests,
            "metrics": {k: v for k, v in result.get("metrics", {}).items() if isinstance(v, (int, float))}}


def stages(trees: dict[str, Path], run_dir: Path, scratch: Path, repeats: int, threads: tuple[int, ...],
           profile_stages: bool, names: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Every stage program of one make-run generation (`run_dir`: its configs and upstream outputs are the inputs)
    run again by each tree, the trees alternating, `repeats` times, on one torch thread (what `--cpus 1` and stages
    side by side run on) and on each of `threads` more (what a stage alone gets on idle cores): seconds, CPU
    seconds and whether the weights are the same, byte for byte."""
    out: dict[str, Any] = {"inputs": str(run_dir), "repeats": repeats, "rows": {}}
    for stage in names:
        config = run_dir / "configs" / f"{run_dir.name}-{stage}-1.json"
        if not config.is_file():
            continue
        row: dict[str, Any] = {}
        for count in (1, *threads):
            for _ in range(repeats):
                for label, tree in trees.items():
                    if count != 1 and label != "new":
                        continue
                    key = f"{label}@{count}"
                    with LoadSampler() as load:
                        measured = run_stage(tree, config, scratch / "stages" / f"{stage}-{label}-{count}", count)
                    entry = row.setdefault(key, {"seconds": [], "cpu_seconds": [], "load": [], "digests": None,
                                                 "metrics": measured["metrics"]})
                    entry["seconds"].append(measured["seconds"])
                    entry["cpu_seconds"].append(measured["cpu_seconds"])
                    entry["load"].append(load.summary()["mean"])
                    if entry["digests"] not in (None, measured["digests"]):
                        entry["digests_vary"] = True
                    entry["digests"] = measured["digests"]
                    print(f"{stage} {key}: {measured['seconds']} s ({measured['cpu_seconds']} s CPU), "
                          f"load {entry['load'][-1]}", flush=True)
        for entry in row.values():
            entry["median_seconds"] = sorted(entry["seconds"])[len(entry["seconds"]) // 2]
            entry["median_cpu_seconds"] = sorted(entry["cpu_seconds"])[len(entry["cpu_seconds"]) // 2]
            entry["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if profile_stages and "new" in trees:
            stats = scratch / "stages" / f"{stage}.prof"
            run_stage(trees["new"], config, scratch / "stages" / f"{stage}-profile", 1, stats)
            row["profile_new@1"] = stage_breakdown(stats)
        out["rows"][stage] = row
    return out


def compared(row: dict[str, Any]) -> dict[str, Any]:
    """A stage's row with its comparisons worked out from the entries it holds now (`TREE@THREADS`, each from the
    run named by its `measured_at`): a later run that re-measures a column gets comparisons with it, never ones
    left from the column it replaced."""
    entries = {key: value for key, value in row.items() if "@" in key and isinstance(value, dict)
               and "digests" in value}
    out = {key: value for key, value in row.items() if key in entries or key.startswith("profile")}
    if "baseline@1" in entries and "new@1" in entries:
        before, after = entries["baseline@1"], entries["new@1"]
        out["same_weights_as_baseline"] = before["digests"] == after["digests"]
        out["same_metrics_as_baseline"] = before["metrics"] == after["metrics"]
        cpu = before["median_cpu_seconds"]
        out["cpu_saved"] = round(1 - after["median_cpu_seconds"] / cpu, 3) if cpu else None
    for key in sorted(entries):
        label, count = key.split("@")
        if label == "new" and count != "1" and "new@1" in entries:
            out[f"same_weights_on_{count}_threads"] = entries[key]["digests"] == entries["new@1"]["digests"]
            out[f"same_metrics_on_{count}_threads"] = entries[key]["metrics"] == entries["new@1"]["metrics"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=BASE, help="baseline commit (default %(default)s)")
    parser.add_argument("--only", choices=("profile", "sampling", "make-run", "chain", "stages"), action="append",
                        help="run only these parts ('stages' is never run by default)")
    parser.add_argument("--stage-inputs", default=None,
                        help="stages: a make-run generation directory whose configs and upstream outputs the stages "
                             "rerun (default: a make run of the new tree in --scratch)")
    parser.add_argument("--stage-repeats", type=int, default=1, help="stages: runs per tree and thread count")
    parser.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES),
                        help="stages: which stage programs (default all; rows merge into the result file)")
    parser.add_argument("--stage-threads", type=int, nargs="*", default=[2],
                        help="stages: thread counts beside one to run the new tree on (default 2)")
    parser.add_argument("--profile-stages", action="store_true",
                        help="stages: also run each stage of the new tree once under cProfile (stage_breakdown)")
    parser.add_argument("--tree", choices=("baseline", "new"), action="append",
                        help="measure only these trees (default both; a later run fills in the other)")
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--summarise", action="store_true",
                        help="measure nothing: compare the chains already in --scratch (finished or not)")
    parser.add_argument("--no-second", action="store_true", help="make run: skip the second run on the warm cache")
    parser.add_argument("--scratch", default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--out", default=None,
                        help=f"result file (default {RESULT.relative_to(ROOT)}; {STAGES_RESULT.relative_to(ROOT)} for "
                             "--only stages alone)")
    args = parser.parse_args(argv)
    parts = args.only or ["sampling", "make-run", "chain"]
    name = "local_stages" if parts == ["stages"] else "local"  # the provenance entry (bench/provenance.py)
    args.out = args.out or str(STAGES_RESULT if name == "local_stages" else RESULT)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-local-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    trees = {"baseline": baseline_tree(args.base, scratch), "new": Path(os.environ.get("BENCH_LOCAL_TREE", ROOT))}
    trees = {label: tree for label, tree in trees.items() if not args.tree or label in args.tree}
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_at_start": os.getloadavg()}
    result["baseline_commit"] = args.base
    result["targets"] = TARGETS
    if args.summarise:
        chains = result.setdefault("chain", {})
        for label in ("baseline", "new"):
            run_dir = scratch / f"{label}-chain" / "default"
            if run_dir.is_dir() and label in chains:
                chains[label]["generations"] = decisions(run_dir)
        chains["decisions"] = compare({k: measured_rows(scratch / f"{k}-chain" / "default")
                                       for k in ("baseline", "new") if (scratch / f"{k}-chain" / "default").is_dir()})
        out.write_text(json.dumps(result, indent=2) + "\n")
        from provenance import stamp_file  # provenance: bench/provenance.py, beside this script

        stamp_file("local", out)  # provenance
        print(json.dumps(chains["decisions"], indent=1))
        return 0
    gen0_cache = scratch / "gen0"
    needs_gen0 = set(parts) - {"stages"} or ("stages" in parts and not args.stage_inputs)
    gen0 = {label: build_generation0(tree, gen0_cache) for label, tree in trees.items()} if needs_gen0 else {}
    if "profile" in parts:
        result["breakdown"] = {label: profile(tree, scratch, gen0[label], label) for label, tree in trees.items()}
    if "sampling" in parts:
        result["sampling_threads"] = sampling(trees.get("new", ROOT), gen0.get("new") or next(iter(gen0.values())))
        print("sampling:", json.dumps(result["sampling_threads"]), flush=True)
    if "make-run" in parts:
        runs = result.setdefault("make_run", {})
        for label, tree in trees.items():
            runs[label] = make_run(tree, scratch, gen0[label], label, second=not args.no_second)
            runs[label]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if "stages" in parts:
        inputs = Path(args.stage_inputs) if args.stage_inputs else None
        if inputs is None:
            make_run(trees.get("new", ROOT), scratch, gen0.get("new") or next(iter(gen0.values())), "inputs",
                     second=False)
            inputs = scratch / "inputs-make-run-first" / "gen1"
        measured = stages(trees, inputs.resolve(), scratch, args.stage_repeats, tuple(args.stage_threads),
                          args.profile_stages, tuple(args.stages))
        runs = result.setdefault("stages", {}).setdefault("runs", [])  # one entry per invocation, rows merged
        runs.append({key: measured[key] for key in ("inputs", "repeats")} | {
            "stages": list(measured["rows"]), "threads": args.stage_threads, "profile": args.profile_stages,
            "trees": {label: commit_of(tree) for label, tree in trees.items()},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        rows = result["stages"].setdefault("rows", {})
        for stage, row in measured["rows"].items():  # a later run adds its columns (a tree, threads, a profile)
            rows[stage] = compared({**rows.get(stage, {}), **row})
    if "chain" in parts:
        chains = result.setdefault("chain", {})
        for label, tree in trees.items():
            chains[label] = chain(tree, scratch, gen0[label], label, args.generations)
            chains[label]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        chains["decisions"] = compare({k: measured_rows(scratch / f"{k}-chain" / "default")
                                       for k in ("baseline", "new") if (scratch / f"{k}-chain" / "default").is_dir()})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script

    if name == "local_stages":  # two benches, one script: the name says which result this is
        stamp_file("local_stages", out)  # provenance
    else:
        stamp_file("local", out)  # provenance
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
