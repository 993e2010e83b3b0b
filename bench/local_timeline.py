"""Where `make run`'s wall time goes, and which cores sit idle meanwhile (issue 29): a timeline of one run.

Runs `flywheel run examples/local/gen1.yaml` (the Makefile's `run` target) from a clean run directory on a cache
holding only generation 0 (as bench/local.py does), reads its output line by line with the time each line came,
and every 0.5 s reads /proc for the CPU time of every process of the run: the runner, its side worker (the second
traffic source, the report's prefetches), the warm-start server and the stage programs forked from it, the
canary's candidate worker. Per phase of the run (cut at the runner's own lines: traffic, each stage, the A/B
simulation, the report) it writes the wall seconds, the CPU seconds of each kind of process, the cores the run kept
busy on average and the core-seconds it left idle on the machine's cores; and the machine's own busy cores
(other programs included), so a figure taken on a shared machine says how shared it was.

    python bench/local_timeline.py                       # writes bench/results/local_timeline.json
    python bench/local_timeline.py --cache-dir DIR       # a cache that already holds generation 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "local_timeline.json"
SAMPLE_SECONDS = 0.5
TICKS = os.sysconf("SC_CLK_TCK")
PHASE_MARKS = (
    ("generation 0", "generation 0 of the simulated world"),
    ("traffic (user in the runner, internal in the side worker)", "simulating"),
    ("curate", "stage curate started"),
    ("reward models (3 side by side)", "stage reward-"),
    ("sft", "stage sft started"),
    ("rl", "stage rl started"),
    ("eval", "stage eval started"),
    ("A/B simulation", "canary on"),
    ("report", "writing the report"),
)
"""(phase, the first output line that starts it): a phase ends where the next one starts."""


def machine_ticks() -> dict[str, tuple[int, int]]:
    """(idle, total) ticks of each core in /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(v) for v in fields[:8]]
            out[name] = (values[3] + values[4], sum(values))
    return out


def process_tree(root: int) -> dict[int, tuple[int, str]]:
    """{pid: (user + system ticks, kind)} of `root` and every descendant."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    out: dict[int, tuple[int, str]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in ticks:
            out[pid] = (ticks[pid], kind_of(pid, root))
        todo.extend(children.get(pid, []))
    return out


def kind_of(pid: int, root: int) -> str:
    if pid == root:
        return "runner"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "forkserver" in command:
        return "warm server and its children (stages, candidate worker)"
    if "multiprocessing" in command or "spawn_main" in command:
        return "side worker (spawned)"
    return "other"


class Timeline:
    """Samples a process tree's CPU time and the machine's busy cores every SAMPLE_SECONDS."""

    def __init__(self, root: int, started: float) -> None:
        self.root, self.started = root, started
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        before_machine, before = machine_ticks(), process_tree(self.root)
        while not self._stop.wait(SAMPLE_SECONDS):
            machine, tree = machine_ticks(), process_tree(self.root)
            busy = sum(1 - (machine[c][0] - before_machine[c][0]) / max(1, machine[c][1] - before_machine[c][1])
                       for c in machine if c in before_machine)
            spent: dict[str, float] = {}
            for pid, (ticks, kind) in tree.items():
                used = ticks - before[pid][0] if pid in before else ticks
                if used > 0:
                    spent[kind] = spent.get(kind, 0.0) + used / TICKS
            self.samples.append({"t": round(time.monotonic() - self.started, 2), "machine_busy": round(busy, 2),
                                 "cpu": spent})
            before_machine, before = machine, tree

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def phases(lines: list[tuple[float, str]], wall: float) -> list[tuple[str, float, float]]:
    """(phase, start, end) from the run's output lines (PHASE_MARKS; each phase from its first mark)."""
    starts: list[tuple[str, float]] = []
    for phase, mark in PHASE_MARKS:
        found = next((t for t, line in lines if mark in line), None)
        if found is not None and phase not in [p for p, _ in starts]:
            starts.append((phase, found))
    starts.sort(key=lambda item: item[1])
    out = []
    for i, (phase, start) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else wall
        out.append((phase, round(start, 1), round(end, 1)))
    if starts and starts[0][1] > 0:
        out.insert(0, ("start-up (imports, manifest)", 0.0, round(starts[0][1], 1)))
    return out


def summarise(samples: list[dict[str, Any]], cuts: list[tuple[str, float, float]], cores: int) -> list[dict]:
    rows = []
    for phase, start, end in cuts:
        inside = [s for s in samples if start < s["t"] <= end]
        cpu: dict[str, float] = {}
        for sample in inside:
            for kind, seconds in sample["cpu"].items():
                cpu[kind] = cpu.get(kind, 0.0) + seconds
        wall = end - start
        total = sum(cpu.values())
        machine = sum(s["machine_busy"] for s in inside) / len(inside) if inside else None
        rows.append({
            "phase": phase, "start": start, "wall_seconds": round(wall, 1),
            "cpu_seconds": {kind: round(v, 1) for kind, v in sorted(cpu.items(), key=lambda kv: -kv[1])},
            "run_busy_cores": round(total / wall, 2) if wall > 0 else None,
            "idle_core_seconds_left_by_the_run": round(max(0.0, cores * wall - total), 1),
            "machine_busy_cores": None if machine is None else round(machine, 2),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="examples/local/gen1.yaml")
    parser.add_argument("--cache-dir", default=None,
                        help="a cache holding generation 0 (default: build it in a scratch folder first, untimed)")
    parser.add_argument("--scratch", default=None)
    parser.add_argument("--label", default="new", help="the key of this run in the result file")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-timeline-")).resolve()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    cache = scratch / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    if args.cache_dir:
        shutil.copytree(args.cache_dir, cache, ignore=shutil.ignore_patterns("traffic-*", "oracle-*"))
    else:
        code = ("import sys; from pathlib import Path; from flywheel_sim import DEFAULT_WORLD, build_generation0, "
                "load_world; build_generation0(load_world(DEFAULT_WORLD), Path(sys.argv[1]))")
        subprocess.run([sys.executable, "-c", code, str(cache)], check=True, env=env, cwd=ROOT)
    run_dir = scratch / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "flywheel_local.cli", "run", args.manifest, "--run-dir", str(run_dir),
               "--cache-dir", str(cache)]
    load_before = os.getloadavg()
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    with Timeline(proc.pid, started) as timeline:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((round(time.monotonic() - started, 2), line.rstrip()))
        code = proc.wait()
    wall = time.monotonic() - started
    cores = len(os.sched_getaffinity(0))
    rows = summarise(timeline.samples, phases(lines, wall), cores)
    total_cpu = sum(sum(s["cpu"].values()) for s in timeline.samples)
    machine = [s["machine_busy"] for s in timeline.samples]
    record = {
        "command": " ".join(["flywheel run", args.manifest]),
        "exit_code": code, "cores": cores, "wall_seconds": round(wall, 1), "cpu_seconds": round(total_cpu, 1),
        "idle_core_share_left_by_the_run": round(1 - total_cpu / (cores * wall), 3),
        "machine_busy_cores_mean": round(sum(machine) / len(machine), 2) if machine else None,
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
        "summary_line": next((line for _, line in reversed(lines) if line.startswith("done in ")), None),
        "phases": rows,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "output": [f"{t:7.1f}s {line}" for t, line in lines],
    }
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.setdefault("runs", {})[args.label] = record
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.path.insert(0, str(Path(__file__).parent))
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script

    stamp_file("local_timeline", out)  # provenance
    print(f"{'phase':<58} {'wall':>6} {'busy':>5} {'idle core-s':>11} {'machine':>7}")
    for row in rows:
        print(f"{row['phase']:<58} {row['wall_seconds']:>6} {row['run_busy_cores']!s:>5} "
              f"{row['idle_core_seconds_left_by_the_run']:>11} {row['machine_busy_cores']!s:>7}")
    print(f"wall {wall:.1f} s, CPU {total_cpu:.1f} s on {cores} cores; wrote {out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
