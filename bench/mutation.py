"""Mutation testing of the modules that decide what users get (issue 31), with mutmut, each module against its own
test folder; writes bench/results/mutation.json.

mutmut (pinned in pyproject's dev extra) rewrites every function of a module into trampolined copies, one per
mutant (an operator flipped, a constant changed, a call argument dropped, ...), and for each mutant runs only the
tests that reach that function; a mutant no test fails on *survived*: a bug of that shape would ship. mutmut names
modules after their path under `src/`, while this repository keeps its packages under `operator/`, `trainer/`, ...
(and `operator` is a standard-library module), so this driver lays out one work folder per test folder under
build/mutation/<group>/ with `src/flywheel_operator` linking to the real package, `tests/` holding that group's tests
and a pyproject.toml that carries the project's pytest settings and the mutmut settings; the other packages come
from PYTHONPATH. mutmut keeps its results there: a later run re-tests only changed functions, the survivors it is
told about and new mutants (`--fresh` starts over).

Equivalent mutants (no test can kill them: the program behaves the same) are listed with a reason in
bench/mutation_equivalents.yaml, keyed by module, function and the changed line before and after, so an entry
stays attached to its code and an entry whose line is gone from its module is reported as stale (one that matches
no survivor of a sample only because the sample did not draw its mutant is listed as not drawn). mutmut does not
mutate decorated functions (properties, pydantic validators); the mutations the issue made by hand there and in
the gate's rules are in bench/mutation_hand.yaml: each is applied to a scratch copy of the package and the named
tests must fail (`hand` in the result).

    python bench/mutation.py --sample 0.05        # a stable 5 % sample of each module (under an hour on 2 cores)
    python bench/mutation.py                      # every mutant (~5,900: several hours)
    python bench/mutation.py --only gate/stats.py # one module; the other modules' results are kept
    python bench/mutation.py --sample 0.05 --rerun-survivors   # the survivors again, after new tests
    python bench/mutation.py --hand-only          # only the hand-made mutations (a few minutes)
    make mutation                                 # the first line, niced, from a fresh machine

Score = killed / (killed + survived), equivalents excluded; mutants no test reaches count as survived; timeouts
(a mutant that makes a test loop) are listed apart and left out of the score. A drawn mutant that was not checked
(a run stopped early) makes the result `"complete": false` and the driver exit 1: run the same command again, it
tests only those. Each run records the machine's load average beside its wall time (the machine may be shared).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "operator" / "flywheel_operator"
RESULT = ROOT / "bench" / "results" / "mutation.json"
EQUIVALENTS = ROOT / "bench" / "mutation_equivalents.yaml"
HAND = ROOT / "bench" / "mutation_hand.yaml"
WORK = ROOT / "build" / "mutation"
TARGET = 0.90


@dataclass(frozen=True)
class Group:
    """Modules tested against one test folder (one mutmut work folder: its test-to-function map is shared)."""

    name: str
    modules: tuple[str, ...]
    """Paths under operator/flywheel_operator/."""
    tests: tuple[str, ...]
    """Test folders or files, relative to the repository root."""


GROUPS = (
    Group(
        "gate",
        ("gate/online.py", "gate/offline.py", "gate/stats.py", "gate/events.py", "gate/readers.py"),
        ("tests/gate",),
    ),
    Group("planner", ("planner/core.py",), ("tests/planner",)),
    Group(  # its own work folder: mutmut's stats and clean runs cover only the tests of the flywheel planner
        "flywheel",
        ("planner/flywheel.py",),
        ("tests/planner/test_flywheel.py", "tests/planner/test_flywheel_rules.py"),
    ),
    Group(
        "arms",
        ("arms.py",),
        ("tests/gate/test_arms.py", "tests/foundation/test_arm_vectors.py", "tests/sim/test_assignment.py"),
    ),
)
PYTEST_ARGS = ["-m", "not slow", "-p", "no:cacheprovider", "--hypothesis-seed=0", "-q"]
"""Slow tests (servers, trained models) are left out: a mutant only they kill counts as survived. Hypothesis runs
with a fixed seed so that a mutant's verdict does not depend on the draw."""

STATUS = {  # mutmut.stats.status_by_exit_code, folded into the result's categories
    "killed": "killed",
    "survived": "survived",
    "no tests": "survived",
    "timeout": "timeout",
    "segfault": "killed",
    "suspicious": "suspicious",
    "caught by type check": "killed",
    "skipped": "skipped",
    "not checked": "not_checked",
    "check was interrupted by user": "not_checked",
}


def sampled(mutant: str, rate: float) -> bool:
    """A stable sample of the mutants: a mutant is in it when the hash of its name falls below `rate`, so the same
    mutants are drawn on every run and a sample is not biased towards the fast ones (mutmut runs those first)."""
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(mutant.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


MIN_SAMPLE = 80
"""With --sample, each module draws at least this many mutants (all of a smaller module)."""


def module_rate(total: int, rate: float) -> float:
    """The share of a module's `total` mutants drawn: `rate`, raised to reach MIN_SAMPLE."""
    return 1.0 if rate >= 1.0 or total <= MIN_SAMPLE else max(rate, MIN_SAMPLE / total)


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """95 % Wilson interval of a share: the score of a sample of mutants estimates the score of all of them."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


# ------------------------------------------------------------------------------------------------- layout
def _module_name(module: str) -> str:
    return "flywheel_operator." + module.removesuffix(".py").replace("/", ".")


def _prepare(group: Group, *, fresh: bool) -> Path:
    """build/mutation/<group>/: src/flywheel_operator → the package, tests/ with the group's tests, pyproject."""
    work = WORK / group.name
    if fresh and work.exists():
        shutil.rmtree(work)
    (work / "src").mkdir(parents=True, exist_ok=True)
    link = work / "src" / "flywheel_operator"
    if not link.is_symlink():
        link.symlink_to(PACKAGE, target_is_directory=True)
    tests = work / "tests"
    if tests.exists():
        shutil.rmtree(tests)
    tests.mkdir()
    for name in ("__init__.py", "conftest.py"):
        shutil.copy2(ROOT / "tests" / name, tests / name)
    for folder in sorted(p for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"):
        (tests / folder.name).symlink_to(folder, target_is_directory=True)  # helpers cross folders (manifests.py)
    for name in ("docs", "examples", "crds", "charts", "scripts"):
        if not (work / name).is_symlink():
            (work / name).symlink_to(ROOT / name, target_is_directory=True)
    if (work / "mutants" / "tests").exists():  # mutmut copies tests/ over an old copy: start it afresh
        shutil.rmtree(work / "mutants" / "tests")
    with open(ROOT / "pyproject.toml", "rb") as f:
        import tomllib

        pytest_ini = tomllib.load(f)["tool"]["pytest"]["ini_options"]
    config = {
        "source_paths": ["src/flywheel_operator"],
        "only_mutate": [f"src/flywheel_operator/{m}" for m in group.modules],
        "pytest_add_cli_args": PYTEST_ARGS,
        "pytest_add_cli_args_test_selection": list(group.tests),
        "use_git_change_detection": False,
        "also_copy": ["docs", "examples", "crds", "charts", "scripts"],  # files the tests read next to tests/
    }
    text = "[tool.pytest.ini_options]\n" + _toml_table(pytest_ini) + "\n[tool.mutmut]\n" + _toml_table(config)
    (work / "pyproject.toml").write_text(text)
    return work


def _toml_table(table: dict) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())


def _environment() -> dict[str, str]:
    """The other packages from the repository; flywheel_operator only from mutmut's mutants/src."""
    paths = [str(ROOT / p) for p in ("trainer", "sim", "local")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1", "PYTHONNODEBUGRANGES": "1"}


def _mutmut(work: Path, args: list[str], log) -> int:
    command = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())", *args]
    log.write(f"$ (cd {work} && mutmut {' '.join(args)})\n")
    log.flush()
    return subprocess.run(command, cwd=work, env=_environment(), stdout=log, stderr=subprocess.STDOUT).returncode


class LoadSampler:
    """The machine's 1-minute load average every `every` seconds while mutmut runs: the wall time of a run on a
    shared machine means little without it (mutmut's workers compete with whatever else runs)."""

    def __init__(self, every: float = 30.0) -> None:
        import threading

        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mutation-load", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        return load_summary(self.samples)


def load_summary(samples: list[float]) -> dict:
    return {"cpus": os.cpu_count(), "load1_min": round(min(samples), 2), "load1_mean": round(sum(samples) /
            len(samples), 2), "load1_max": round(max(samples), 2), "samples": len(samples)}


# ------------------------------------------------------------------------------------------------ results
def _meta(work: Path, module: str) -> dict:
    path = work / "mutants" / "src" / "flywheel_operator" / (module + ".meta")
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _diff(work: Path, mutant: str, module: str) -> str:
    """The mutant's unified diff (of its function), read by mutmut itself from the work folder."""
    here = Path.cwd()
    os.chdir(work)
    try:
        from mutmut.configuration import reset_config
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        reset_config()
        return get_diff_for_mutant(mutant, path=f"src/flywheel_operator/{module}")
    finally:
        os.chdir(here)


def _changed_lines(diff: str) -> tuple[str, str]:
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " ".join(removed), " ".join(added)


def _function_of(mutant: str) -> str:
    """`flywheel_operator.gate.online.xǁMetricVerdictǁbetter__mutmut_3` → `MetricVerdict.better`."""
    key = mutant.rpartition(".")[2].partition("__mutmut_")[0]
    if key.startswith("xǁ"):
        return ".".join(part for part in key[2:].split("ǁ") if part)
    return key.removeprefix("x_")


def _line_of(source: str, function: str, removed: str) -> int | None:
    """The line of the original file the mutant changed: the first line of `function` that reads `removed`."""
    tree = ast.parse(source)
    *classes, name = function.split(".")
    body = tree.body
    for cls in classes:
        body = next((n.body for n in body if isinstance(n, ast.ClassDef) and n.name == cls), [])
    node = next((n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name), None)
    if node is None:
        return None
    lines = source.splitlines()
    first = removed.split(" ")[0] if removed else ""
    for number in range(node.lineno, (node.end_lineno or node.lineno) + 1):
        if removed and lines[number - 1].strip() == removed:
            return number
    for number in range(node.lineno, (node.end_lineno or node.lineno) + 1):
        if first and lines[number - 1].strip().startswith(first):
            return number
    return node.lineno


def _load_equivalents() -> list[dict]:
    entries = yaml.safe_load(EQUIVALENTS.read_text()) or [] if EQUIVALENTS.exists() else []
    for i, entry in enumerate(entries):
        missing = {"module", "function", "before", "after", "reason"} - set(entry)
        if missing:
            raise SystemExit(f"{EQUIVALENTS.name} entry {i}: missing {sorted(missing)} (each entry needs all five)")
    return entries


def _match(entries: list[dict], module: str, function: str, diff: str) -> dict | None:
    """The entry of this mutant: same module, function and changed lines, and (when the entry names a `context`:
    a line the same text occurs on elsewhere in the function) that unchanged line next to the change."""
    before, after = _changed_lines(diff)
    context = {line[1:].strip() for line in diff.splitlines() if line.startswith(" ")}
    for entry in entries:
        if (entry["module"], entry["function"], entry["before"].strip(), entry["after"].strip()) == (
            module, function, before, after,
        ) and (not entry.get("context") or entry["context"].strip() in context):  # fmt: skip
            return entry
    return None


def _summarise(group: Group, module: str, equivalents: list[dict], used: set[int], rate: float = 1.0) -> dict:
    work = WORK / group.name
    meta = _meta(work, module)
    if not meta:
        return {"tests": list(group.tests), "run": False}
    from mutmut.stats import status_by_exit_code

    source = (PACKAGE / module).read_text()
    counts = dict.fromkeys(("killed", "survived", "timeout", "equivalent", "suspicious", "skipped", "not_checked"), 0)
    survivors, equivalent, timeouts = [], [], []
    seconds = 0.0
    rate = module_rate(len(meta["exit_code_by_key"]), rate)
    drawn = {k: v for k, v in meta["exit_code_by_key"].items() if sampled(k, rate)}
    for mutant, code in sorted(drawn.items(), key=lambda kv: _natural(kv[0])):
        status = status_by_exit_code[code]
        category = STATUS.get(status, "suspicious")
        seconds += meta.get("durations_by_key", {}).get(mutant, 0.0) or 0.0
        if category in ("killed", "not_checked", "skipped"):
            counts[category] += 1
            continue
        diff = _diff(work, mutant, module)
        before, _ = _changed_lines(diff)
        function = _function_of(mutant)
        row = {
            "id": mutant,
            "function": function,
            "line": _line_of(source, function, before),
            "status": status,
            "diff": diff,
        }
        entry = _match(equivalents, module, function, diff) if category == "survived" else None
        if entry is not None:
            used.add(id(entry))
            counts["equivalent"] += 1
            equivalent.append({**row, "reason": entry["reason"]})
        elif category == "timeout":
            counts["timeout"] += 1
            timeouts.append(row)
        else:
            counts[category] += 1
            survivors.append(row)
    decided = counts["killed"] + counts["survived"]
    return {
        "tests": list(group.tests),
        "run": True,
        "mutants": len(meta["exit_code_by_key"]),
        "sample_rate": round(rate, 4),
        "sampled": len(drawn),
        **counts,
        "score": round(counts["killed"] / decided, 4) if decided else None,
        "score_interval": wilson(counts["killed"], decided) if rate < 1.0 else None,
        "test_seconds": round(seconds, 1),
        "estimated_all_mutants_test_seconds": round(seconds / rate) if counts["not_checked"] == 0 else None,
        "survivors": survivors,
        "equivalents": equivalent,
        "timeouts": timeouts,
    }


def _estimate(modules: dict[str, dict], workers: int) -> float | None:
    """Seconds a run of every mutant would take with `workers` at once, from the sample's measured test times
    (mutmut's own setup, about three runs of each test folder, comes on top)."""
    parts = [row.get("estimated_all_mutants_test_seconds") for row in modules.values()]
    if not parts or any(p is None for p in parts):
        return None
    return round(sum(parts) / workers)


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


# --------------------------------------------------------------------------------------- hand mutations
def run_hand(log) -> list[dict]:
    """Each hand-made mutation of bench/mutation_hand.yaml applied to a scratch copy of the package: killed when
    its tests fail (pytest exit code 1), survived when they pass."""
    entries = yaml.safe_load(HAND.read_text()) or []
    rows = []
    for entry in entries:
        source_path = PACKAGE / entry["module"]
        text = source_path.read_text()
        found = text.count(entry["before"])
        if found != 1:
            rows.append({**_hand_row(entry), "status": f"stale: `before` found {found} times in {entry['module']}"})
            continue
        with tempfile.TemporaryDirectory(prefix="mutation-hand-") as scratch:
            copy = Path(scratch) / "flywheel_operator"
            shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
            (copy / entry["module"]).write_text(text.replace(entry["before"], entry["after"]))
            env = _environment()
            env["PYTHONPATH"] = os.pathsep.join([scratch, env["PYTHONPATH"], str(ROOT)])
            command = [sys.executable, "-m", "pytest", *PYTEST_ARGS, "-x", *entry["tests"]]
            log.write(f"$ hand mutation {entry['name']}: {' '.join(command)}\n")
            log.flush()
            started = time.monotonic()
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        status = {0: "survived", 1: "killed"}.get(code, f"error (pytest exit code {code})")
        rows.append({**_hand_row(entry), "status": status, "seconds": round(time.monotonic() - started, 1)})
    return rows


def _hand_row(entry: dict) -> dict:
    return {key: entry[key] for key in ("name", "module", "before", "after", "tests")}


# ------------------------------------------------------------------------------------------------- main
def _commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    paths = ["operator/flywheel_operator", "tests"]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *paths))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated modules (e.g. gate/stats.py,arms.py)")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results and test every mutant")
    parser.add_argument("--rerun-survivors", action="store_true", help="test earlier survivors again (new tests)")
    parser.add_argument("--sample", type=float, default=None,
                        help="test a stable share of each module's mutants (e.g. 0.1) and report the score's interval "
                        "(default: every mutant; with --report-only, the kept result's share)")
    parser.add_argument("--hand-only", action="store_true", help="only the hand-made mutations")
    parser.add_argument("--report-only", action="store_true", help="run nothing: summarise the kept results")
    parser.add_argument("--no-hand", action="store_true", help="skip the hand-made mutations")
    parser.add_argument("--log", default=str(WORK / "mutation.log"), help="where mutmut's output goes")
    parser.add_argument("--started", help="ISO time the measurement began (runs spread over several invocations, "
                        "some of them stopped): the wall time is counted from it")
    args = parser.parse_args(argv)
    if args.sample is None:  # a report of a sample run reports that sample, not every mutant as unchecked
        kept = json.loads(RESULT.read_text()).get("sample") if args.report_only and RESULT.exists() else None
        args.sample = kept or 1.0
    known = {m for g in GROUPS for m in g.modules}
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(only) - known)
    if unknown:
        parser.error(f"--only: unknown module(s) {unknown}; known: {sorted(known)}")
    WORK.mkdir(parents=True, exist_ok=True)
    walls: dict[str, dict] = {}
    runs: list[dict] = []
    with open(args.log, "a") as log:
        if not (args.hand_only or args.report_only):
            for group in GROUPS:
                modules = [m for m in group.modules if not only or m in only]
                if not modules:
                    continue
                work = _prepare(group, fresh=args.fresh)
                names = [f"{_module_name(m)}.*" for m in modules] if only else []
                t0 = time.monotonic()
                load = LoadSampler()
                if args.sample < 1.0 or args.rerun_survivors:
                    if not all(_meta(work, m) for m in modules):  # generate the mutants (a name nothing matches)
                        _mutmut(work, ["run", f"{_module_name(modules[0])}.x_generate_only__mutmut_0"], log)
                    names = _pending_names(group, modules, args.sample, survivors=args.rerun_survivors)
                    if not names:
                        load.stop()
                        continue
                code = _mutmut(work, ["run", "--max-children", str(args.max_children), *names], log)
                walls[group.name] = {"wall_seconds": round(time.monotonic() - t0, 1), "modules": modules,
                                     "exit_code": code, "load": load.stop()}
                runs.append({"group": group.name, "mutants": names[:3] + (["…"] if len(names) > 3 else []),
                             "max_children": args.max_children,
        "sample": args.sample, **walls[group.name]})
                print(f"{group.name}: mutmut exited {code} after {walls[group.name]['wall_seconds']:.0f} s "
                      f"({', '.join(modules)})", flush=True)
        hand = None if args.no_hand or args.report_only else run_hand(log)
    previous = json.loads(RESULT.read_text()) if RESULT.exists() else {}  # read late: runs may overlap
    hand = hand if hand is not None else previous.get("hand", [])
    walls = {**previous.get("groups", {}), **walls}
    runs = ([] if args.fresh else previous.get("runs", [])) + runs
    equivalents = _load_equivalents()
    used: set[int] = set()
    modules = {m: _summarise(g, m, equivalents, used, args.sample) for g in GROUPS for m in g.modules}
    unused = [e for e in equivalents if id(e) not in used]
    stale = [e for e in unused if e["before"].strip() not in _source_lines(e["module"])]
    undrawn = [e for e in unused if e not in stale]
    unchecked = {m: r["not_checked"] for m, r in modules.items() if r.get("not_checked")}
    loads = [r["load"] for r in runs if r.get("load")]
    killed = sum(r.get("killed", 0) for r in modules.values())
    survived = sum(r.get("survived", 0) for r in modules.values())
    command = "python bench/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    measured = {"commit": previous.get("commit"), "dirty": previous.get("dirty"), "command": previous.get("command"),
                "reported": {**_commit(), "command": command}} if args.report_only and previous else {
        **_commit(), "command": command}  # a report re-reads the kept verdicts: what was measured stays as it was
    result = {
        "tool": f"mutmut {_version()}",
        **measured,
        "pytest_args": PYTEST_ARGS,
        "max_children": args.max_children,
        "sample": args.sample,
        "wall_seconds": round(
            (datetime.now(UTC) - datetime.fromisoformat(args.started)).total_seconds()
            if args.started else sum(r["wall_seconds"] for r in runs), 1),
        "started": args.started,
        "load": {"cpus": os.cpu_count(), "load1_min": min(x["load1_min"] for x in loads),
                 "load1_max": max(x["load1_max"] for x in loads),
                 "load1_mean": round(sum(x["load1_mean"] * x["samples"] for x in loads)
                                     / sum(x["samples"] for x in loads), 2)} if loads else None,
        "complete": not unchecked,
        "not_checked": unchecked,
        "runs": runs,
        "groups": walls,
        "score": round(killed / (killed + survived), 4) if killed + survived else None,
        "target": TARGET,
        "estimated_all_mutants_wall_seconds": _estimate(modules, args.max_children),
        "modules": modules,
        "stale_equivalents": stale,
        "equivalents_not_drawn": len(undrawn),
        "hand": hand,
    }
    RESULT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("mutation", RESULT)  # provenance
    for module, row in modules.items():
        if row.get("run"):
            print(f"{module:22s} killed {row['killed']:4d}  survived {row['survived']:4d}  timeout {row['timeout']:3d}"
                  f"  equivalent {row['equivalent']:3d}  not checked {row['not_checked']:4d}  score {row['score']}")
        else:
            print(f"{module:22s} not run")
    for row in hand:
        print(f"hand: {row['name']}: {row['status']}")
    print(f"overall score {result['score']} (target {TARGET}); wrote {RESULT.relative_to(ROOT)}")
    if unchecked:  # a run cut short: its score is not the sample's
        print(f"INCOMPLETE: drawn mutants not checked yet {unchecked}; run the same command again (it tests only "
              "those, keeping the other verdicts)", file=sys.stderr)
        return 1
    return 0


def _pending_names(group: Group, modules: list[str], rate: float, *, survivors: bool) -> list[str]:
    """The sampled mutants of `modules` not checked yet (and with `survivors`, the earlier survivors: mutmut keeps
    old verdicts unless a mutant is named)."""
    from mutmut.stats import status_by_exit_code

    again = ("not checked",) + (("survived", "no tests", "timeout", "suspicious") if survivors else ())
    names = []
    for module in modules:
        codes = _meta(WORK / group.name, module).get("exit_code_by_key", {})
        share = module_rate(len(codes), rate)
        for mutant, code in codes.items():
            if sampled(mutant, share) and status_by_exit_code[code] in again:
                names.append(mutant)
    return names


def _source_lines(module: str) -> set[str]:
    path = PACKAGE / module
    return {line.strip() for line in path.read_text().splitlines()} if path.exists() else set()


def _version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    sys.exit(main())
