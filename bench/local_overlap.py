"""The local run's overlaps (issue 29), each measured old against new in this one run, the two alternating.

- report: what the report waits on after a make run, when the reward models' agreement with the oracle was handed
  to the side worker as SFT started. Old (4990565 and before): the side worker read the generation's status.json,
  which the runner writes only after carry_out handed the work over: the reward model that finished last was still
  Running there, so the side worker measured the other two under a key the report found stale, and the report
  measured all three again, on the critical path. New: the status is handed over with the work
  (LocalBackend.status_written). Both start from the same finished make-run generation (--generation) with
  oracle.json and rm_oracle.json removed; the models' oracle draws are given to both as a run leaves them
  (generation 0's kept in the cache, the candidate's prefetched), so the rows differ only by the hand-over.
  Timed: compute_oracle + write_report + the flywheel page, as `flywheel run` ends. Which of the runner's write
  and the side worker's read comes first is a race: `--race window` leaves it to the machine (the runner writes
  after its half-second look at the cores), `--race lost` has the side worker read first, as it did in a make run
  at 4990565 whose report measured the reward models again (rm_oracle.json written during the report).
- traffic: a chain generation's user and internal traffic (the default world, examples/local/gen1.yaml's sources)
  with one thread per stage (`bench/flywheel.py --cpus 1`, as bench/local.py's chain runs). Old: no side worker
  with --cpus 1 (the sources one after another); new: the side worker goes by the machine's cores
  (side_worker_fits), the internal traffic beside the user traffic, forked from the warm server as in a chain's
  later generations (warm.ready_context; the first generation's is spawned). The policy is generation 0 copied out
  of the cache (as a later generation's parent is: nothing cached). The logs of the two are compared byte for byte.

Wall seconds and CPU seconds (this process and its children) per repeat, the median and the spread, the load.

    python bench/local_overlap.py --generation RUN/gen1 --cache-dir RUN_CACHE   # both parts
    python bench/local_overlap.py --only traffic --repeats 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "local_overlap.json"
MANIFEST = ROOT / "examples" / "local" / "gen1.yaml"
SOURCES = ("user_traffic", "internal_traffic")


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function: Any) -> dict[str, float]:
    load = os.getloadavg()[0]
    started, cpu = time.perf_counter(), cpu_seconds()
    function()
    return {"wall_seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(cpu_seconds() - cpu, 2),
            "load": round(load, 2)}


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    walls = [r["wall_seconds"] for r in rows]
    cpus = [r["cpu_seconds"] for r in rows]
    return {"runs": rows, "median_wall_seconds": round(statistics.median(walls), 2),
            "wall_spread": [min(walls), max(walls)], "median_cpu_seconds": round(statistics.median(cpus), 2)}


# ------------------------------------------------------------------------------------------------ report
def _final_and_stale(generation: Path) -> tuple[Any, Any]:
    """The generation's final status, the status.json on disk when carry_out hands the agreement over (the reward
    model that finished last still Running, no SFT record yet) and the status handed over with it."""
    from flywheel_operator.api import FlywheelGenerationStatus

    final = FlywheelGenerationStatus.model_validate_json((generation / "status.json").read_text())
    rewards = [r for r in final.stages if r.name.startswith("reward-")]
    last = max(rewards, key=lambda r: r.finished_at or r.created_at).name
    stale_stages = [r.model_copy(update={"state": "Running", "finished_at": None, "output_digest": None,
                                         "artifacts": {}, "metrics": {}})
                    if r.name == last else r
                    for r in final.stages if r.name in ("curate",) or r.name.startswith("reward-")]
    stale = final.model_copy(update={"stages": stale_stages, "candidate_policy": None, "decision": None,
                                     "phase": "TrainingRewardModels"})
    trained = final.model_copy(update={
        "stages": [r for r in final.stages if r.name in ("curate", "sft") or r.name.startswith("reward-")],
        "candidate_policy": None, "decision": None, "phase": "SFT"})
    return stale, trained


def report_once(label: str, source: Path, cache: Path, scratch: Path, draws: int, candidate_draws: Any,
                race: str) -> dict:
    from flywheel_local import oracle_runs
    from flywheel_local.backend import IDLE_WINDOW_SECONDS, LocalBackend, RunPaths
    from flywheel_local.flywheel_page import write_flywheel_page
    from flywheel_local.report import _model_dir, compute_oracle, write_report
    from flywheel_local.rm_oracle import compute_rm_agreement, prefetch_key
    from flywheel_local.runner import load_manifest
    from flywheel_sim import DEFAULT_WORLD

    run_dir = scratch / f"report-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    generation = run_dir / source.name
    shutil.copytree(source, generation, ignore=shutil.ignore_patterns("report", "oracle.json", "rm_oracle.json"))
    final = (generation / "status.json").read_text()
    stale, trained = _final_and_stale(generation)
    (generation / "status.json").write_text(json.dumps(stale.to_wire()))
    oracle_runs._PREFETCHES.clear()
    backend = LocalBackend(load_manifest(MANIFEST), RunPaths(generation), world_file=DEFAULT_WORLD, cache_dir=cache,
                           warm_start=False, oracle_draws=draws)
    side = backend._side_worker()
    if side is None:
        raise SystemExit("report: this machine's cores hold no side worker (side_worker_fits)")
    side.apply_async(os.getpid).get()  # warm, as in a run: it has simulated the internal traffic by then
    root = generation.resolve()
    if label == "new":
        backend.status_written(trained)
    else:  # 4990565's hand-over: the side worker reads status.json
        oracle_runs.hand_over(prefetch_key(root), side, compute_rm_agreement, root, DEFAULT_WORLD)
    handed = oracle_runs._PREFETCHES[prefetch_key(root)]
    if race == "lost":  # the side worker reads status.json before the runner writes it
        handed.wait()
    else:  # carry_out starts SFT alone: it looks at the cores for IDLE_WINDOW_SECONDS before the runner writes
        time.sleep(IDLE_WINDOW_SECONDS)
    (generation / "status.json").write_text(json.dumps(trained.to_wire()))  # the runner's write after carry_out
    handed.wait()  # done long before the report (SFT, RL, eval, the A/B)
    (generation / "status.json").write_text(final)
    candidate = _model_dir(json.loads(final)["candidatePolicy"], generation)

    class Prefetched:  # the candidate's draws as the side worker leaves them during eval
        def get(self, timeout: float | None = None) -> Any:
            return candidate_draws

        def ready(self) -> bool:
            return True

    oracle_runs._PREFETCHES[oracle_runs.expected_key(DEFAULT_WORLD, candidate, draws)] = Prefetched()

    def report() -> None:
        compute_oracle(run_dir, DEFAULT_WORLD, draws=draws, cache_dir=cache)
        index = write_report(run_dir)
        write_flywheel_page(run_dir, index.parent)

    row = timed(report)
    backend.close()
    agreement = json.loads((generation / "rm_oracle.json").read_text())
    row["rm_oracle_sha256"] = hashlib.sha256(json.dumps(agreement, sort_keys=True).encode()).hexdigest()[:16]
    row["oracle_sha256"] = hashlib.sha256((generation / "oracle.json").read_bytes()).hexdigest()[:16]
    return row


def report_part(source: Path, cache: Path, scratch: Path, repeats: int, race: str) -> dict[str, Any]:
    from flywheel_local.oracle_runs import compute_expected
    from flywheel_local.report import _model_dir
    from flywheel_sim import DEFAULT_WORLD
    from flywheel_sim.oracle import DEFAULT_DRAWS

    status = json.loads((source / "status.json").read_text())
    candidate = _model_dir(status["candidatePolicy"], source)
    print("report: the candidate's oracle draws (untimed: a run prefetches them during eval)", flush=True)
    draws = compute_expected(str(candidate), str(DEFAULT_WORLD), DEFAULT_DRAWS)
    rows: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(repeats):
        for label in ("old", "new") if i % 2 == 0 else ("new", "old"):
            row = report_once(label, source, cache, scratch, DEFAULT_DRAWS, draws, race)
            rows[label].append(row)
            print(f"report {label}: {row}", flush=True)
    out = {label: summary(r) for label, r in rows.items()}
    out["same_oracle_json"] = len({r["oracle_sha256"] for rs in rows.values() for r in rs}) == 1
    out["same_rm_oracle_json"] = len({r["rm_oracle_sha256"] for rs in rows.values() for r in rs}) == 1
    out["race"] = race
    return out


# ------------------------------------------------------------------------------------------------ traffic
def traffic_once(label: str, policy: Path, cache: Path, scratch: Path) -> tuple[dict[str, float], dict[str, str]]:
    from flywheel_local import backend as backend_module
    from flywheel_local.backend import LocalBackend, RunPaths
    from flywheel_local.runner import load_manifest
    from flywheel_sim import DEFAULT_WORLD

    generation = load_manifest(MANIFEST)
    paths = RunPaths(scratch / f"traffic-{label}")
    shutil.rmtree(paths.root, ignore_errors=True)
    backend = LocalBackend(generation, paths, world_file=DEFAULT_WORLD, cache_dir=cache, cpus=1, warm_start=False)
    fits = backend_module.side_worker_fits
    if label == "old":  # 4990565: no side worker when --cpus 1 leaves no room for two one-thread samplers
        backend_module.side_worker_fits = lambda threads, cpus, machine, idle=None: (threads is not None
                                                                                   and 2 * threads <= cpus)
    data = generation.spec.data
    used: list[bool] = []

    outside: list[float] = []

    def simulate() -> None:
        try:
            backend._simulate_sources(SimpleNamespace(data=data), str(policy))  # what render does first
            used.append(backend._side is not None)
            for name in SOURCES:
                backend._resolve_source(getattr(data, name), str(policy))
            outside.append(forked_workers_cpu(backend._side))
        finally:
            backend.close()

    try:
        row = timed(simulate)
    finally:
        backend_module.side_worker_fits = fits
    row["cpu_seconds"] = round(row["cpu_seconds"] + sum(outside), 2)
    row["forked_side_worker_cpu_seconds"] = round(sum(outside), 2)
    row["side_worker"] = bool(used and used[0])
    digests = {f"{source}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()[:16]
               for source in ("user", "internal") for p in sorted(paths.traffic(source).glob("*"))
               if p.is_file() and not p.name.startswith(".")}
    return row, digests


def forked_workers_cpu(pool: Any) -> float:
    """CPU seconds of a pool's workers that are not this process's children (forked from the warm server), which
    RUSAGE_CHILDREN leaves out; spawned ones are counted there once joined."""
    if pool is None:
        return 0.0
    total = 0.0
    for worker in getattr(pool, "_pool", []):
        try:
            fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) != os.getpid():
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def traffic_part(gen0: Path, scratch: Path, repeats: int) -> dict[str, Any]:
    policy = scratch / "parent-model"  # outside the cache: a chain generation's parent
    shutil.rmtree(policy, ignore_errors=True)
    shutil.copytree(gen0, policy)
    cache = scratch / "traffic-cache"
    cache.mkdir(parents=True, exist_ok=True)
    from flywheel_local import warm
    from flywheel_local.backend import _stage_env

    # a chain generation after the first: the warm server has forked stages (untimed), the side worker forks from it
    warm.warm_up(_stage_env(1))
    warm.start(["--help"], scratch / "warm-server.log", _stage_env(1)).wait(600)
    assert warm.ready_context() is not None
    rows: dict[str, list[dict]] = {"old": [], "new": []}
    digests: dict[str, dict[str, str]] = {}
    for i in range(repeats):
        for label in ("old", "new") if i % 2 == 0 else ("new", "old"):
            row, digests[label] = traffic_once(label, policy, cache, scratch)
            rows[label].append(row)
            print(f"traffic {label}: {row}", flush=True)
    out: dict[str, Any] = {label: summary(r) for label, r in rows.items()}
    out["same_logs"] = digests.get("old") == digests.get("new")
    out["files_compared"] = len(digests.get("new", {}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("report", "traffic"), action="append")
    parser.add_argument("--generation", default=None,
                        help="report: a finished make-run generation directory (RUN/gen1)")
    parser.add_argument("--cache-dir", default=None,
                        help="the cache that run used (generation 0 and its oracle draws; traffic: generation 0)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--race", choices=("window", "lost"), default="window",
                        help="report: when the runner writes status.json after the hand-over: after its look at the "
                             "cores (window: which of the two reads first is up to the machine) or only after the "
                             "side worker read it ('lost': the old hand-over's race lost, as in a run whose report "
                             "measured the reward models again); key 'report' or 'report_race_lost'")
    parser.add_argument("--scratch", default=None)
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    for name, value in {"HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
                        "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
        os.environ.setdefault(name, value)
    parts = args.only or ["report", "traffic"]
    if args.cache_dir is None:
        raise SystemExit("--cache-dir: the cache holding generation 0 (and, for the report, its oracle draws)")
    cache = Path(args.cache_dir).resolve()
    gen0 = next(cache.glob("gen0-*"), None)
    if gen0 is None:
        raise SystemExit(f"--cache-dir {cache}: no gen0-* model in it")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-overlap-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    result["machine"] = {"cpus": os.cpu_count(), "load_at_start": [round(v, 2) for v in os.getloadavg()]}
    result["repeats"] = args.repeats
    if "report" in parts:
        if args.generation is None:
            raise SystemExit("--generation: a finished make-run generation directory (RUN/gen1) for the report part")
        key = "report" if args.race == "window" else "report_race_lost"
        result[key] = report_part(Path(args.generation).resolve(), cache, scratch, args.repeats, args.race)
    if "traffic" in parts:
        result["traffic"] = traffic_part(gen0, scratch, args.repeats)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.path.insert(0, str(Path(__file__).parent))
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script

    stamp_file("local_overlap", out)  # provenance
    for part in ("report", "report_race_lost", "traffic"):
        if part in result and part.split("_")[0] in parts:
            old, new = result[part]["old"], result[part]["new"]
            print(f"{part}: old {old['median_wall_seconds']} s wall ({old['median_cpu_seconds']} s CPU), new "
                  f"{new['median_wall_seconds']} s wall ({new['median_cpu_seconds']} s CPU)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
