"""Where the simulation `make run` waits on spends its time (issue 29), this tree against a baseline commit.

The three in-process phases of a local generation, run as the local runner runs them:

- user traffic: `flywheel_local.users._simulate` (what `sim://users?days=2` runs before curate) with generation 0;
- internal traffic: the same for `sim://internal-testers?days=4`;
- A/B simulation: `flywheel_local.canary.SimulatedCanary` deployed and revealed day by day (the control answers in
  this process, the candidate in its PolicyWorker; the pre-period is the user traffic's first day, reused).

Both trees run alternately in this one invocation (`git archive BASE` unpacked in a scratch folder; each run a
subprocess whose PYTHONPATH puts that tree's packages first), on one generation-0 build shared by both. Each run
reports its wall time, its process CPU time (its children's included: the candidate's PolicyWorker), the CPU time
of its parts (sampling: ChatPredictor.respond; writing the logs: write_traffic, the contract check included;
loading the policy; response features) and a SHA-256 of every file it wrote, which must be equal for both trees
(the same seed gives the same bytes). Figures are medians over the repeats with their range; on a shared machine
CPU seconds are the figure to compare, wall seconds move with the load (recorded).

    nice -n 10 python bench/sim_speed.py                        # people=2500, 3 repeats, baseline 08551f1
    nice -n 10 python bench/sim_speed.py --people 0 --repeats 1 # the whole population, as make run simulates it
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "sim_speed.json"
BASE = "08551f1"
PACKAGES = ("operator", "trainer", "sim", "local")
WORLD = ROOT / "examples" / "local" / "world.yaml"
ENV = {"HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONNODEBUGRANGES": "1"}
PHASES = ("user traffic", "internal traffic", "A/B simulation")
WORKER = "SIM_SPEED_WORKER"
"""The environment variable that makes this script one run of one phase (a subprocess of compare)."""
PARTS = ("sampling", "write logs", "load policy", "features")


# ------------------------------------------------------------------------------------------ one run (a subprocess)
def _instrument(parts: dict[str, float]) -> None:
    """Add each part's process CPU seconds to `parts` (the functions are looked up where the phases call them)."""
    import flywheel_sim
    import flywheel_sim.traffic as traffic
    from flywheel_local import users
    from flywheel_trainer.predictor import ChatPredictor

    def timed(owner: Any, name: str, part: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                parts[part] = parts.get(part, 0.0) + time.process_time() - started

        setattr(owner, name, wrapper)

    timed(ChatPredictor, "respond", "sampling")
    timed(flywheel_sim, "write_traffic", "write logs")
    timed(users, "world_policy", "load policy")
    timed(traffic, "response_features", "features")


def _digest(directory: Path) -> str:
    """SHA-256 of the files a phase wrote: the logs, events, sessions and simulation states. The user traffic's
    prefix state counts by its memory and turns (its key is a content address that includes the code's hash);
    the exporter's snapshot, rebuilt from the events, not at all."""
    import pickle

    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("exporter-snapshot")):
        data = path.read_bytes()
        if path.name == "prefix-state.pickle":
            prefix = pickle.loads(data)
            data = prefix["memory"].tobytes() + prefix["turns"].tobytes()
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + data)
    return digest.hexdigest()


def run_phase(phase: str, gen0: Path, scratch: Path, people: int | None, ab_days: int) -> dict[str, Any]:
    """One phase in this process (the subprocess of one tree): its times, parts and output digest."""
    import resource
    from datetime import timedelta

    from flywheel_local import sources, users
    from flywheel_local.canary import SimulatedCanary
    from flywheel_operator.planner import DeployCanary

    parts: dict[str, float] = {}
    _instrument(parts)
    out = scratch / phase.replace(" ", "-").replace("/", "")
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.monotonic(), time.process_time()
    if phase == "A/B simulation":
        prefix = scratch / "ab-prefix"  # the user traffic's first day, as the generation's user traffic leaves it
        if not (prefix / users.PREFIX_FILE).is_file():
            raise SystemExit("run the user traffic phase before the A/B simulation (its first day is the pre-period)")
        canary = SimulatedCanary(out, WORLD, user_traffic=prefix)
        action = DeployCanary(inference_service="chat", mode="standard", traffic_percent=50,
                              candidate_policy=str(gen0.parent.parent / "candidate"), control_policy=str(gen0))
        canary.deploy(action, experiment="gen1", days=ab_days, seed=1, people=people)
        canary.reveal(timedelta(days=ab_days))
        canary.close()
    else:
        source = "user" if phase == "user traffic" else "internal"
        uri = sources.TrafficUri(source=source, days=2 if source == "user" else 4, people=people)
        users._simulate(WORLD, gen0, "generation-0", uri, out, seed=1)
    seconds, cpu_seconds = time.monotonic() - wall, time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if phase == "user traffic":  # keep its first day's end state for the A/B phase's pre-period
        (scratch / "ab-prefix").mkdir(exist_ok=True)
        shutil.copyfile(out / users.PREFIX_FILE, scratch / "ab-prefix" / users.PREFIX_FILE)
    return {"wall_seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds + children.ru_utime
                                                                     + children.ru_stime, 2),
            "parts": {k: round(v, 2) for k, v in parts.items()}, "digest": _digest(out)}


# ------------------------------------------------------------------------------------------------- the comparison
def _tree_env(tree: Path) -> dict[str, str]:
    path = os.pathsep.join(str(tree / p) for p in PACKAGES)
    return {**os.environ, **ENV, "PYTHONPATH": path + os.pathsep + str(ROOT), "OMP_NUM_THREADS": "1"}


def _one(tree: Path, phase: str, gen0: Path, scratch: Path, people: int | None, ab_days: int) -> dict[str, Any]:
    # the run's arguments travel in the environment: kserve (imported by the predictor) parses sys.argv
    work = json.dumps({"phase": phase, "gen0": str(gen0), "scratch": str(scratch), "people": people,
                       "ab_days": ab_days})
    done = subprocess.run([sys.executable, str(Path(__file__).resolve())], env={**_tree_env(tree), WORKER: work},
                          cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{phase} in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(values: list[float]) -> dict[str, float]:
        return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                "max": round(max(values), 2)}

    parts = sorted({p for r in runs for p in r["parts"]})
    return {"wall_seconds": stat([r["wall_seconds"] for r in runs]),
            "cpu_seconds": stat([r["cpu_seconds"] for r in runs]),
            "parts_cpu_seconds": {p: stat([r["parts"].get(p, 0.0) for r in runs]) for p in parts},
            "digest": runs[0]["digest"], "same_bytes_every_repeat": len({r["digest"] for r in runs}) == 1}


def compare(base: str, people: int | None, repeats: int, ab_days: int) -> dict[str, Any]:
    from flywheel_local import sources

    with tempfile.TemporaryDirectory(prefix="sim-speed-") as tmp:
        scratch = Path(tmp)
        base_tree = scratch / "base"
        base_tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", base, *PACKAGES, "examples"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive, check=True)
        gen0 = sources.generation0("sim://generation-0", WORLD, scratch / "cache")
        shutil.copytree(gen0, gen0.parent.parent / "candidate")  # the candidate: the same weights in another directory
        trees = {"base": base_tree, "new": ROOT}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {p: [] for p in PHASES} for t in trees}
        loads = []
        for repeat in range(repeats):
            order = list(trees) if repeat % 2 == 0 else list(reversed(trees))  # alternate who goes first
            for name in order:
                work = scratch / f"{name}-{repeat}"
                work.mkdir()
                for phase in PHASES:
                    loads.append(os.getloadavg()[0])
                    result = _one(trees[name], phase, gen0, work, people, ab_days)
                    runs[name][phase].append(result)
                    print(f"repeat {repeat + 1}/{repeats} {name:4} {phase:16} wall {result['wall_seconds']:6.1f} s "
                          f"cpu {result['cpu_seconds']:6.1f} s {result['parts']}", flush=True)
    phases = {}
    for phase in PHASES:
        old, new = _summary(runs["base"][phase]), _summary(runs["new"][phase])
        phases[phase] = {"base": old, "new": new, "same_bytes_as_base": old["digest"] == new["digest"],
                         "cpu_saved_seconds": round(old["cpu_seconds"]["median"] - new["cpu_seconds"]["median"], 2)}
    return {"phases": phases, "load": {"mean": round(statistics.mean(loads), 2), "max": round(max(loads), 2)}}


def table(phases: dict[str, Any]) -> str:
    lines = ["| phase | part | base CPU s | new CPU s |", "|---|---|---|---|"]
    for phase, row in phases.items():
        lines.append(f"| {phase} | **whole (wall)** | {row['base']['wall_seconds']['median']} | "
                     f"{row['new']['wall_seconds']['median']} |")
        lines.append(f"| {phase} | **whole (CPU)** | {row['base']['cpu_seconds']['median']} | "
                     f"{row['new']['cpu_seconds']['median']} |")
        for part in PARTS:
            old = row["base"]["parts_cpu_seconds"].get(part, {}).get("median", 0.0)
            new = row["new"]["parts_cpu_seconds"].get(part, {}).get("median", 0.0)
            lines.append(f"| {phase} | {part} | {old} | {new} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=BASE, help="baseline commit (default %(default)s)")
    parser.add_argument("--people", type=int, default=2500, help="users simulated (0: the whole population)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ab-days", type=int, default=2, help="A/B days revealed (make run's gen-1 reveals 2)")
    if WORKER in os.environ:
        work = json.loads(os.environ[WORKER])
        print(json.dumps(run_phase(work["phase"], Path(work["gen0"]), Path(work["scratch"]), work["people"],
                                   work["ab_days"])))
        return
    args = parser.parse_args()
    people = args.people or None
    measured = compare(args.base, people, args.repeats, args.ab_days)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "baseline_commit": args.base,
        "settings": {"people": people, "repeats": args.repeats, "ab_days": args.ab_days,
                     "user_days": 2, "internal_days": 4, "world": str(WORLD.relative_to(ROOT))},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **measured,
    }
    print(table(report["phases"]))
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    from bench.provenance import stamp_file  # provenance

    stamp_file("sim_speed", RESULT)  # provenance


if __name__ == "__main__":
    main()
