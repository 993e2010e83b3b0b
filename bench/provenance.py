"""Where each bench result comes from: the commit it measured and the hash of the files it depends on.

Every bench script stamps the JSON it writes (`stamp_file(NAME, path)` right after the write) with

    "provenance": {"bench", "script", "command", "commit", "measured_at", "dirty",
                   "depends_on_sha256", "depends_on": {path: sha256[:16], ...}}

`depends_on` covers the files BENCHES declares for NAME (the bench script and the product modules it exercises);
`dirty` says whether any of them differed from the commit at measurement. tests/foundation/test_bench_results.py
fails when a committed result's hash differs from the current files' hash, so a figure measured on other code
cannot be quoted as current. A result that cannot be re-measured now is archived under
bench/results/history/NAME@COMMIT.json, where it stays citable with the commit it measured.

    python -m bench.provenance status            # every result: current, stale (which files changed) or unstamped
    python -m bench.provenance backfill [NAME …] # stamp legacy results from git history (never the current tree)
    python -m bench.provenance archive NAME      # move a stale result to bench/results/history/NAME@COMMIT.json

The hash is over the files' contents (CRLF read as LF) in sorted path order, never over mtimes; a line with a
`# provenance` comment is not hashed (the stamping call itself is not part of what a bench measures).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = "bench/results"
HISTORY = "bench/results/history"
MARKER = b"# provenance"
SHORT = 7
LISTED = 8
"""Files named per kind of change in a stale result's message (`status` and the test)."""


@dataclass(frozen=True)
class Bench:
    """One bench result: the script that writes it, the files it depends on (globs) and how to re-measure it."""

    script: str
    depends_on: tuple[str, ...]
    command: str
    note: str = ""
    """Where the command needs more than the repository (a GPU, a finished chain)."""
    needs: tuple[str, ...] = ()
    """Benches whose output this one reads (run first by `run`)."""
    gpu: bool = False
    """Measures a GPU: `run` skips it on a machine without one."""
    in_make_bench: bool = True
    """Part of `make bench` (`run` with no names); False for a bench with its own make target."""

    @property
    def patterns(self) -> tuple[str, ...]:
        return (self.script, *self.depends_on)


OPERATOR = "operator/flywheel_operator"
OPERATOR_CORE = (f"{OPERATOR}/__init__.py", f"{OPERATOR}/storage.py", f"{OPERATOR}/api/*.py")
"""What every bench loads of the operator package (the API models)."""
GATE = f"{OPERATOR}/gate/*.py"
STAGE_PROGRAMS = (
    "trainer/flywheel_trainer/**/*.py",
    *(f"{OPERATOR}/{m}.py" for m in ("capacity", "tracking", "kube/__init__", "kube/termination")),
)
"""The stage programs (flywheel_trainer) and the operator modules they import."""
SIM = ("sim/flywheel_sim/**/*.py", f"{OPERATOR}/arms.py", GATE)
"""The simulated world and what it imports of the operator (arm assignment, the gate's events and store)."""
CHAIN = (
    *OPERATOR_CORE,
    *SIM,
    *STAGE_PROGRAMS,
    f"{OPERATOR}/planner/*.py",
    f"{OPERATOR}/validation.py",
    "local/flywheel_local/**/*.py",
    "examples/local/*.yaml",
)
"""A local flywheel chain: the planner, the local runner, the stage programs and the world (flywheel_local)."""

BENCHES: dict[str, Bench] = {
    "exporter": Bench(
        "bench/exporter.py",
        (*OPERATOR_CORE, GATE, f"{OPERATOR}/cli.py", f"{OPERATOR}/kube/__init__.py", f"{OPERATOR}/kube/admission.py"),
        "python bench/exporter.py",
    ),
    "flywheel": Bench(
        "bench/flywheel.py",
        (*CHAIN, "bench/worlds/*.yaml"),
        "python bench/flywheel.py --only default --cpus 1 && python bench/flywheel.py --summarise",
    ),
    "gate": Bench("bench/gate.py", (*OPERATOR_CORE, GATE), "python bench/gate.py"),
    "gate_reset": Bench("bench/gate.py", (*OPERATOR_CORE, GATE), "python bench/gate.py --reset 40"),
    "gpu": Bench(
        "bench/gpu.py",
        (*OPERATOR_CORE, *STAGE_PROGRAMS),
        "python bench/gpu.py",
        "on one GPU; --tiny is the CPU smoke run",
        gpu=True,
    ),
    "operator": Bench(
        "bench/operator.py",
        (
            f"{OPERATOR}/**/*.py",
            "tests/__init__.py",
            "tests/foundation/__init__.py",
            "tests/foundation/manifests.py",
            "tests/operator/__init__.py",
            "tests/operator/cluster.py",
            "tests/operator/kserve_webhook.py",
            "tests/operator/upstream.py",
            "tests/planner/__init__.py",
            "tests/planner/harness.py",
        ),
        "python bench/operator.py",
    ),
    "predictor_load": Bench(
        "bench/predictor_load.py", (*OPERATOR_CORE, *STAGE_PROGRAMS), "python bench/predictor_load.py --repeats 3"
    ),
    "rm_ceiling": Bench(
        "bench/rm_ceiling.py",
        CHAIN,
        "python bench/rm_ceiling.py --runs bench/runs",
        "on the flywheel bench's default chain (bench/runs/default)",
        needs=("flywheel",),
    ),
    "rm_levers": Bench(
        "bench/rm_levers.py",
        CHAIN,
        "python bench/rm_levers.py --runs bench/runs",
        "on the flywheel bench's default chain (bench/runs/default)",
        needs=("flywheel",),
    ),
    "rm_steps": Bench(
        "bench/rm_steps.py",
        (*OPERATOR_CORE, *STAGE_PROGRAMS),
        "python bench/rm_steps.py bench/runs/default bench/runs/generated-112 bench/runs/generated-113",
        "on finished chains (bench/flywheel.py --only default, and --only generated for the generated worlds)",
        needs=("flywheel",),
    ),
    "rm_seeds": Bench(
        "bench/rm_seeds.py",
        CHAIN,
        "python bench/rm_seeds.py --runs bench/runs default/gen-1 default/gen-2 default/gen-3 --splits 5",
        "on the flywheel bench's default-world chain (bench/runs/default: the development world, where reward settings "
        "are chosen; generated worlds judge); retrains the pointwise reward model",
        needs=("flywheel",),
    ),
    "rm_text": Bench(
        "bench/rm_text.py",
        (*CHAIN, "bench/rm_ceiling.py"),
        "python bench/rm_text.py --runs bench/runs --generations gen-1",
        "on the flywheel bench's default chain (bench/runs/default); retrains its reward models",
    ),
    # issue 26 (h26rm): the pointwise text score's lexical head, base commit vs current, on saved generations
    "rm_heads": Bench(
        "bench/rm_text.py",
        (*OPERATOR_CORE, *SIM, *STAGE_PROGRAMS,
         *(f"local/flywheel_local/{m}.py" for m in ("__init__", "report", "rm_oracle", "statusview", "users"))),
        "python bench/rm_text.py --heads RUNS/generated-108/gen-1 ... (the command in the result's provenance)",
        "on saved bench/flywheel.py run directories of development worlds (seeds 100-111, the default world)",
        needs=("flywheel",),
    ),
    "sim": Bench(
        "bench/sim.py",
        (
            *OPERATOR_CORE,
            *SIM,
            "trainer/flywheel_trainer/__init__.py",
            "trainer/flywheel_trainer/style.py",
            "trainer/flywheel_trainer/verifiers.py",
            "examples/local/world.yaml",
        ),
        "python bench/sim.py",
    ),
    # issue 26 (h26o): the oracle's draws, the A/B window's breadth, generation 0 across machines
    "oracle": Bench(
        "bench/oracle.py",
        CHAIN,
        "python bench/oracle.py --runs bench/runs",
        "on the flywheel bench's default chain (bench/runs/default)",
    ),
    "breadth": Bench(
        "bench/breadth.py",
        (*OPERATOR_CORE, *SIM, *(f"trainer/flywheel_trainer/{m}.py" for m in ("__init__", "conversation", "style",
                                                                               "verifiers")),
         "examples/local/world.yaml"),
        "python bench/breadth.py",
    ),
    "repro": Bench("bench/repro.py", (*OPERATOR_CORE, *SIM, *STAGE_PROGRAMS, "examples/local/world.yaml"),
                   "python bench/repro.py"),
    "trainer": Bench("bench/trainer.py", (*OPERATOR_CORE, *STAGE_PROGRAMS), "python bench/trainer.py --threads 1"),
    # Benches added in the same session (issues 29 and 31), declared here so that their results can be stamped.
    "local": Bench(
        "bench/local.py",
        (*CHAIN, f"{OPERATOR}/cli.py", f"{OPERATOR}/kube/__init__.py", f"{OPERATOR}/kube/admission.py"),
        "python bench/local.py",
    ),
    "sampler": Bench("bench/sampler.py", (*OPERATOR_CORE, *STAGE_PROGRAMS, *SIM, "examples/local/world.yaml"),
                     "python bench/sampler.py"),
    # issue 29 (h29sim): the simulated traffic and A/B days make run waits on, this tree against its base
    "sim_speed": Bench(
        "bench/sim_speed.py",
        (*OPERATOR_CORE, *SIM, *STAGE_PROGRAMS, f"{OPERATOR}/planner/*.py", "local/flywheel_local/**/*.py",
         "examples/local/world.yaml"),
        "python bench/sim_speed.py",
    ),
    # issue 29 (h29stg): make run's stage programs rerun on one generation's inputs, this tree against a baseline
    "local_stages": Bench(
        "bench/local.py",
        (*CHAIN, f"{OPERATOR}/cli.py", f"{OPERATOR}/kube/__init__.py", f"{OPERATOR}/kube/admission.py"),
        "python bench/local.py --only stages --base 08551f1 --profile-stages",
        "reruns the stages of one make run (a fresh one in the scratch folder, or --stage-inputs DIR)",
    ),
    # issue 29 (h29wall): make run's timeline (which cores sit idle in which phase), and the overlaps measured old
    # against new in one run
    "local_timeline": Bench(
        "bench/local_timeline.py",
        (*CHAIN, f"{OPERATOR}/cli.py", f"{OPERATOR}/kube/__init__.py", f"{OPERATOR}/kube/admission.py"),
        "python bench/local_timeline.py",
        "one make run on 2 cores; its figures depend on the machine's load (recorded beside them)",
        in_make_bench=False,
    ),
    "local_overlap": Bench(
        "bench/local_overlap.py",
        (*CHAIN, f"{OPERATOR}/cli.py", f"{OPERATOR}/kube/__init__.py", f"{OPERATOR}/kube/admission.py"),
        "python bench/local_overlap.py --generation DIR",
        "on a finished make-run generation directory (DIR: e.g. bench/local_timeline.py's scratch run/gen1)",
        in_make_bench=False,
    ),
    # issue 26 (h26g): the win-rate band replayed, old rule against new, on finished generations
    "band_replay": Bench(
        "bench/band_replay.py",
        CHAIN,
        "python bench/band_replay.py --runs bench/runs --reeval /tmp/band-reeval",
        "on finished flywheel runs (bench/flywheel.py's run folder: the generated-world suite and the trap probe); "
        "re-runs their eval stages",
    ),
    # issue 26 (h26b): the band's judges re-scored on saved models, on progress and on a gaming candidate
    "band_judge": Bench(
        "bench/band_judge.py",
        CHAIN,
        "python bench/band_judge.py --runs bench/runs",
        "on finished generated-world runs (bench/flywheel.py --only generated); re-scores their saved models",
        in_make_bench=False,
    ),
    "mutation": Bench(
        "bench/mutation.py",
        (
            "bench/mutation_*.yaml",
            *OPERATOR_CORE,
            GATE,
            f"{OPERATOR}/planner/*.py",
            f"{OPERATOR}/arms.py",
            "tests/conftest.py",
            "tests/gate/**/*.py",
            "tests/planner/**/*.py",
            "tests/foundation/test_arm_vectors.py",
            "tests/sim/test_assignment.py",
            "tests/sim/test_aa.py",
        ),
        "make mutation",
        "about an hour on 2 cores",
        in_make_bench=False,
    ),
}
"""Every bench result under bench/results/, by name (bench/results/NAME.json)."""


# ---------------------------------------------------------------------------------------------------------------
# Files and hashes


def _pattern(glob: str) -> re.Pattern[str]:
    """A path glob as a regex over repository-relative POSIX paths: `**/` any folders, `*` and `?` within one."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matching(patterns: Iterable[str], paths: Iterable[str]) -> list[str]:
    """The paths (repository-relative, POSIX) that any of the globs match, sorted."""
    compiled = [_pattern(p) for p in patterns]
    return sorted({p for p in paths if "__pycache__" not in p.split("/") and any(c.match(p) for c in compiled)})


def worktree_paths(patterns: Iterable[str], root: Path = REPO) -> list[str]:
    """The files on disk under `root` that the globs match (only the folders the globs can reach are walked)."""
    patterns = list(patterns)
    found: set[str] = set()
    for glob in patterns:
        parts = glob.split("/")
        fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
        base = root.joinpath(*parts[:fixed])
        if base.is_file():
            found.add(base.relative_to(root).as_posix())
            continue
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            found.update((Path(folder) / f).relative_to(root).as_posix() for f in files)
    return matching(patterns, found)


def normalised(data: bytes) -> bytes:
    """The bytes a hash covers: CRLF read as LF, lines with a `# provenance` comment (the stamping call) left out."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    return b"\n".join(line for line in lines if MARKER not in line)


def file_digests(contents: Mapping[str, bytes]) -> dict[str, str]:
    """sha256 of each file's normalised content, by path, in sorted path order."""
    return {path: hashlib.sha256(normalised(contents[path])).hexdigest() for path in sorted(contents)}


def combined_digest(digests: Mapping[str, str]) -> str:
    """One sha256 over the sorted (path, file digest) pairs: independent of mtimes, checkout and listing order."""
    lines = "".join(f"{path}\0{digests[path]}\n" for path in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def worktree_contents(paths: Iterable[str], root: Path = REPO) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in paths}


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], input=stdin, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    if done.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


class GitError(RuntimeError):
    """git could not answer (no repository, or a commit this clone does not hold)."""


def git_paths(commit: str, root: Path = REPO) -> list[str]:
    """Every file path in `commit`'s tree."""
    return [p for p in _git(root, "ls-tree", "-r", "-z", "--name-only", commit).decode().split("\0") if p]


def git_contents(commit: str, paths: Iterable[str], root: Path = REPO) -> dict[str, bytes]:
    """The files' contents at `commit` (git cat-file --batch), by path; a path not in that tree is left out."""
    paths = list(paths)
    if not paths:
        return {}
    raw = _git(root, "cat-file", "--batch", stdin="".join(f"{commit}:{p}\n" for p in paths).encode())
    contents, at = {}, 0
    for path in paths:
        end = raw.index(b"\n", at)
        header = raw[at:end].split()
        if header[-1] == b"missing":
            at = end + 1
            continue
        size = int(header[2])
        contents[path] = raw[end + 1 : end + 1 + size]
        at = end + 1 + size + 1
    return contents


def head_commit(root: Path = REPO) -> str:
    return _git(root, "rev-parse", "HEAD").decode().strip()


def has_commit(commit: str, root: Path = REPO) -> bool:
    try:
        _git(root, "cat-file", "-e", f"{commit}^{{commit}}")
    except GitError:
        return False
    return True


def current_digests(name: str, root: Path = REPO) -> dict[str, str]:
    """NAME's dependencies as they are on disk now."""
    return file_digests(worktree_contents(worktree_paths(BENCHES[name].patterns, root), root))


def digests_at(name: str, commit: str, root: Path = REPO) -> dict[str, str]:
    """NAME's dependencies (today's globs) as they were in `commit`."""
    return file_digests(git_contents(commit, matching(BENCHES[name].patterns, git_paths(commit, root)), root))


# ---------------------------------------------------------------------------------------------------------------
# Stamping


def _bench(name: str) -> Bench:
    if name not in BENCHES:
        raise SystemExit(
            f"bench/provenance.py: no bench named {name!r} in BENCHES (known: {', '.join(sorted(BENCHES))}); "
            "declare its script, the files it depends on and its command there"
        )
    return BENCHES[name]


def stamp(name: str, report: Mapping[str, Any], root: Path = REPO) -> dict[str, Any]:
    """`report` with its provenance: HEAD, now, the hash of NAME's dependencies on disk, and whether they are dirty."""
    bench = _bench(name)
    digests = current_digests(name, root)
    digest = combined_digest(digests)
    try:
        commit: str | None = head_commit(root)
        dirty = combined_digest(digests_at(name, commit, root)) != digest
    except GitError:
        commit, dirty = None, True  # no repository: nothing shows the files were committed
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    shown = script.relative_to(root).as_posix() if script and script.is_relative_to(root) else bench.script
    provenance = {
        "bench": name,
        "script": bench.script,
        "command": shlex.join(["python", shown, *sys.argv[1:]]),
        "commit": commit,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dirty": dirty,
        "depends_on_sha256": digest,
        "depends_on": {path: sha[:16] for path, sha in digests.items()},
    }
    return {**{k: v for k, v in report.items() if k != "provenance"}, "provenance": provenance}


def stamp_file(name: str, path: str | os.PathLike[str], root: Path = REPO) -> None:
    """Stamp the JSON a bench just wrote at `path` (called by every bench script right after its write)."""
    path = Path(path)
    text = path.read_text()
    path.write_text(json.dumps(stamp(name, json.loads(text), root), indent=2, ensure_ascii=text.isascii()) + "\n")
    print(f"stamped {path}: {name} at {report_commit(path)}")


def report_commit(path: Path) -> str:
    provenance = json.loads(path.read_text()).get("provenance") or {}
    commit = provenance.get("commit") or "no commit"
    return commit[:SHORT] + (" (dirty: dependencies differ from the commit)" if provenance.get("dirty") else "")


def backfill(name: str, root: Path = REPO, at: str | None = None) -> str:
    """Stamp a result measured before stamps existed with the commit that last wrote it and the hash AT that commit.

    Honest by construction: nothing of the current tree goes into the stamp, so a result whose code changed since
    is reported stale by the test. `at` names the code commit instead, where the results commit records that the
    result ran on an earlier tree (it must be an ancestor of the results commit). `dirty` is unknown (null)."""
    _bench(name)
    rel = f"{RESULTS}/{name}.json"
    path = root / rel
    text = path.read_text()
    report = json.loads(text)
    if "provenance" in report:
        return f"{rel}: already stamped ({(report['provenance'].get('commit') or '')[:SHORT]}); left as it is"
    writer = _git(root, "log", "-1", "--format=%H", "--", rel).decode().strip()
    if not writer:
        raise SystemExit(f"{rel} was never committed: re-measure it with `{BENCHES[name].command}`")
    if _git(root, "status", "--porcelain", "--", rel).strip():
        raise SystemExit(f"{rel} has uncommitted changes: {writer[:SHORT]} did not write this content; re-measure it")
    if not at and len(_git(root, "rev-list", "--parents", "-n", "1", writer).split()) > 2:
        raise SystemExit(
            f"{rel} was last written by the merge commit {writer[:SHORT]} (a conflict resolved there): name the "
            f"commit the result ran on with `python -m bench.provenance backfill {name} --at COMMIT`"
        )
    commit = writer
    note = f"stamped after the fact: {writer[:SHORT]} is the commit that last wrote {rel} (git log)"
    if at:
        commit = _git(root, "rev-parse", "--verify", f"{at}^{{commit}}").decode().strip()
        try:
            _git(root, "merge-base", "--is-ancestor", commit, writer)
        except GitError:
            raise SystemExit(f"--at {at}: not an ancestor of {writer[:SHORT]}, the commit that wrote {rel}") from None
        note += f"; it records that the result ran on {commit[:SHORT]}"
    when = _git(root, "log", "-1", "--format=%cI", commit).decode().strip()
    digests = digests_at(name, commit, root)
    report["provenance"] = {
        "bench": name,
        "script": BENCHES[name].script,
        "command": None,
        "commit": commit,
        "measured_at": when,
        "dirty": None,
        "backfilled": f"{note}; depends_on is hashed from the files of {commit[:SHORT]}",
        "depends_on_sha256": combined_digest(digests),
        "depends_on": {p: sha[:16] for p, sha in digests.items()},
    }
    path.write_text(json.dumps(report, indent=2, ensure_ascii=text.isascii()) + "\n")
    return f"{rel}: stamped with {commit[:SHORT]} ({when})"


def archive(name: str, root: Path = REPO) -> str:
    """Move a stamped result to bench/results/history/NAME@COMMIT.json and list the docs that cite the old path."""
    rel = f"{RESULTS}/{name}.json"
    provenance = json.loads((root / rel).read_text()).get("provenance")
    if not provenance or not provenance.get("commit"):
        raise SystemExit(f"{rel} has no stamp with a commit: run `python -m bench.provenance backfill {name}` first")
    target = f"{HISTORY}/{name}@{provenance['commit'][:SHORT]}.json"
    if (root / target).exists():
        raise SystemExit(f"{target} exists already")
    (root / HISTORY).mkdir(parents=True, exist_ok=True)
    try:
        _git(root, "mv", rel, target)
    except GitError:
        shutil.move(root / rel, root / target)
    lines = [f"moved {rel} -> {target}"]
    cites = [
        f"  {doc}:{n}: {line.strip()}" for doc, n, path, commit, line in citations(root) if path == rel and not commit
    ]
    if cites:
        lines.append(f"these lines cite {rel}: cite {target} (the commit it measured) or re-measure it:")
        lines += cites
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Checks (tests/foundation/test_bench_results.py and `status`)


def result_names(root: Path = REPO) -> list[str]:
    return sorted(p.stem for p in (root / RESULTS).glob("*.json"))


def history_files(root: Path = REPO) -> list[str]:
    return sorted(p.name for p in (root / HISTORY).glob("*.json")) if (root / HISTORY).is_dir() else []


def _changes(stamped: Mapping[str, str], now: Mapping[str, str]) -> str:
    changed = [p for p in now if p in stamped and not now[p].startswith(stamped[p])]
    added = [p for p in now if p not in stamped]
    removed = [p for p in stamped if p not in now]
    parts = [
        f"{label} {', '.join(paths[:LISTED])}" + (f" and {len(paths) - LISTED} more" if len(paths) > LISTED else "")
        for label, paths in (("changed", changed), ("added", added), ("removed", removed))
        if paths
    ]
    return "; ".join(parts) or "the same files under other names"


def stamp_problems(name: str, report: Mapping[str, Any], root: Path = REPO) -> list[str]:
    """Why bench/results/NAME.json cannot be quoted as a measurement of the current code (empty: it can)."""
    rel = f"{RESULTS}/{name}.json"
    if name not in BENCHES:
        return [
            f"{rel}: no bench named {name!r} in bench/provenance.py's BENCHES; declare its script, the files "
            "it depends on and its command there"
        ]
    bench = BENCHES[name]
    provenance = report.get("provenance")
    if not isinstance(provenance, dict) or not provenance.get("depends_on_sha256"):
        return [
            f"{rel} has no provenance stamp (measured before stamps existed): re-measure it with "
            f"`{bench.command}`, or stamp it from git history with `python -m bench.provenance backfill {name}` "
            "and this check then says whether the code changed since"
        ]
    if provenance.get("bench") != name:
        return [f"{rel} is stamped as bench {provenance.get('bench')!r}, not {name!r}"]
    now = current_digests(name, root)
    if combined_digest(now) == provenance["depends_on_sha256"]:
        return []
    commit = (provenance.get("commit") or "an unknown commit")[:SHORT]
    dirty = " with uncommitted changes" if provenance.get("dirty") else ""
    note = f" ({bench.note})" if bench.note else ""
    return [
        f"{rel} is stale: measured at {commit}{dirty} ({provenance.get('measured_at')}); since then "
        f"{_changes(provenance.get('depends_on', {}), now)}. Re-measure: `nice -n 10 {bench.command}`{note}; or, "
        f"if it cannot be re-measured now, `python -m bench.provenance archive {name}` (it moves to "
        f"{HISTORY}/{name}@{commit}.json)"
    ]


def history_problems(filename: str, root: Path = REPO) -> list[str]:
    """An archived result: stamped, named after its commit, and (where this clone holds it) hashed from it."""
    rel = f"{HISTORY}/{filename}"
    match = re.fullmatch(r"([\w-]+)@([0-9a-f]{7,40})\.json", filename)
    if not match:
        return [f"{rel}: an archived result is named NAME@COMMIT.json"]
    name, short = match.groups()
    provenance = json.loads((root / rel).read_text()).get("provenance")
    if not isinstance(provenance, dict) or not provenance.get("commit") or not provenance.get("depends_on_sha256"):
        return [f"{rel} has no provenance stamp with a commit"]
    if provenance.get("bench") != name or not provenance["commit"].startswith(short):
        return [f"{rel} is stamped as {provenance.get('bench')}@{provenance['commit'][:SHORT]}"]
    commit = provenance["commit"]
    if provenance.get("dirty") or not has_commit(commit, root):
        return []  # measured on uncommitted files, or a shallow clone: nothing to recompute from
    files = list(provenance.get("depends_on", {}))
    recomputed = combined_digest(file_digests(git_contents(commit, files, root)))
    if recomputed != provenance["depends_on_sha256"]:
        return [f"{rel}: its depends_on hash is not the hash of those files at {commit[:SHORT]}"]
    return []


def script_spellings(source: str) -> set[str]:
    """Every name a script can write as a JSON key: its string constants and keyword-argument names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
    return names


def unwritten_keys(report: Mapping[str, Any], source: str) -> list[str]:
    """Top-level keys of a result that its script's source never spells: left over from an older script."""
    spelled = script_spellings(source)
    return [k for k in report if k != "provenance" and k not in spelled]


CITATION = re.compile(r"(?:\b([0-9a-f]{7,40}):)?(bench/results/(?:history/)?[a-z0-9_]+(?:@[0-9a-f]{7,40})?\.json)")
"""A cited result: a current one (bench/results/NAME.json), an archived one (bench/results/history/NAME@COMMIT.json),
or one in git history (COMMIT:bench/results/NAME.json, as `git show` takes it). NAME placeholders do not match."""


def citations(root: Path = REPO) -> list[tuple[str, int, str, str | None, str]]:
    """(doc, line number, cited path, commit or None, line) of every result README.md and docs/*.md cite."""
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if doc.is_file():
            for n, line in enumerate(doc.read_text().splitlines(), 1):
                found += [(doc.relative_to(root).as_posix(), n, m[2], m[1], line) for m in CITATION.finditer(line)]
    return found


def citation_problems(root: Path = REPO) -> list[str]:
    """Docs citing a result that is not there: a stale result archived away, or a name that never existed."""
    problems = []
    for doc, n, path, commit, _ in citations(root):
        if commit or (root / path).is_file():
            continue
        name = Path(path).stem.split("@")[0]
        archived = [f"{HISTORY}/{f}" for f in history_files(root) if f.startswith(f"{name}@")]
        problems.append(
            f"{doc}:{n} cites {path}, which is not in the repository: cite "
            + (" or ".join(archived) if archived else f"COMMIT:{path} (the commit that holds it)")
            + " (the commit it measured), or re-measure it"
        )
    return problems


# ---------------------------------------------------------------------------------------------------------------
# What a script loads (the floor that its declared globs must cover)

PACKAGES = {
    "flywheel_operator": "operator/flywheel_operator",
    "flywheel_trainer": "trainer/flywheel_trainer",
    "flywheel_sim": "sim/flywheel_sim",
    "flywheel_local": "local/flywheel_local",
    "tests": "tests",
}
_MODULE = re.compile(r"\b(?:" + "|".join(PACKAGES) + r")(?:\.\w+)+")


def _module_file(module: str, root: Path) -> str | None:
    top, *rest = module.split(".")
    if top not in PACKAGES:
        return None
    base = "/".join([PACKAGES[top], *rest])
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def _with_packages(module: str, root: Path) -> set[str]:
    """The module's file and every enclosing package's __init__.py (importing a.b.c runs a and a.b too)."""
    parts = module.split(".")
    return {f for i in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:i]), root))}


def _imports(tree: ast.Module, module: str, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level] if module else []
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def loaded_files(script: str, root: Path = REPO) -> set[str]:
    """Product files a bench script surely loads: the modules it imports (anywhere in it) or names in a string
    (`python -m flywheel_trainer.cli`, code it runs with -c), and what those import at module level, transitively.
    Imports inside functions of product modules are not followed: this is a floor, not the whole set."""
    tree = ast.parse((root / script).read_text())
    wanted = _imports(tree, "", top_level_only=False)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            wanted.update(_MODULE.findall(node.value))
    files: set[str] = set()
    queue = [m for m in wanted if m.split(".")[0] in PACKAGES]
    seen: set[str] = set()
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        for path in _with_packages(module, root) - files:
            files.add(path)
            parts = Path(path).with_suffix("").parts
            module_of_path = ".".join(parts if parts[0] == "tests" else parts[1:])  # a package as "a.b.__init__"
            body = ast.parse((root / path).read_text())
            imported = _imports(body, module_of_path, top_level_only=True)
            queue.extend(m for m in imported if m.split(".")[0] in PACKAGES)
    return files


# ---------------------------------------------------------------------------------------------------------------
# Command line


def status(root: Path = REPO) -> int:
    bad = 0
    for name in result_names(root):
        report = json.loads((root / RESULTS / f"{name}.json").read_text())
        problems = stamp_problems(name, report, root)
        provenance = report.get("provenance") or {}
        label = (provenance.get("commit") or "")[:SHORT] + (" (backfilled)" if provenance.get("backfilled") else "")
        if problems:
            bad += 1
            print(f"STALE    {name}: " + " ".join(problems) if provenance else f"UNSTAMPED {name}: {problems[0]}")
        else:
            print(f"current  {name} at {label}")
    for filename in history_files(root):
        problems = history_problems(filename, root)
        bad += bool(problems)
        print(f"history  {filename}" + (": " + " ".join(problems) if problems else ""))
    for problem in citation_problems(root):
        bad += 1
        print(f"CITATION {problem}")
    return 1 if bad else 0


def run_plan(names: Iterable[str], has_gpu: bool) -> list[tuple[str, str | None]]:
    """The benches to run, each after the ones it needs: (name, None) to run, (name, reason) to skip."""
    chosen = list(dict.fromkeys(names))
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        raise SystemExit(f"unknown bench(es) {', '.join(unknown)}: choose from {', '.join(BENCHES)}")
    ordered: list[str] = []

    def visit(name: str) -> None:
        for need in BENCHES[name].needs:
            visit(need)
        if name not in ordered:
            ordered.append(name)

    for name in chosen:
        visit(name)
    plan: list[tuple[str, str | None]] = []
    for name in ordered:
        bench = BENCHES[name]
        reason = f"needs a GPU ({bench.note}); run `{bench.command}` on one" if bench.gpu and not has_gpu else None
        plan.append((name, reason))
    return plan


def stale_names(root: Path = REPO) -> list[str]:
    """Benches whose result is missing, unstamped or measured on code that has since changed."""
    names = []
    for name in BENCHES:
        path = root / RESULTS / f"{name}.json"
        if not path.is_file() or stamp_problems(name, json.loads(path.read_text()), root):
            names.append(name)
    return names


def run(names: Iterable[str], root: Path = REPO) -> int:
    """Re-measure: each bench's command in a shell at the repository root, stopping at the first failure."""
    import torch  # the benches' own dependency; only asked whether a GPU is here

    plan = run_plan(names, torch.cuda.is_available())
    for name, skip in plan:
        if skip:
            print(f"skip {name}: {skip}", flush=True)
            continue
        command = BENCHES[name].command
        print(f"== {name}: {command}", flush=True)
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` is this one
        done = subprocess.run(command, shell=True, cwd=root, env={**os.environ, "PATH": path})
        if done.returncode:
            print(f"{name} failed (exit {done.returncode}): `{command}`; later benches not run", file=sys.stderr)
            return done.returncode
    return status(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.provenance", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="every result: current, stale (which files changed) or unstamped")
    fill = commands.add_parser("backfill", help="stamp unstamped results from git history (the commit that wrote it)")
    fill.add_argument("names", nargs="*", help="bench names (default: every unstamped result)")
    fill.add_argument("--at", help="the code commit the result ran on, where its results commit records one")
    move = commands.add_parser("archive", help="move a stale result to bench/results/history/NAME@COMMIT.json")
    move.add_argument("name")
    again = commands.add_parser("run", help="re-measure benches (each after the ones it needs), then print status")
    again.add_argument("names", nargs="*", help="bench names (default: every bench of `make bench`)")
    again.add_argument("--stale", action="store_true", help="only those whose result is missing or stale")
    args = parser.parse_args(argv)
    if args.command == "run":
        default = [name for name, bench in BENCHES.items() if bench.in_make_bench]
        names = [n for n in args.names or default if not args.stale or n in stale_names()]
        return run(names)
    if args.command == "status":
        return status()
    if args.command == "backfill":
        if args.at and len(args.names) != 1:
            parser.error("--at names the code commit of one result: give exactly one NAME")
        for name in args.names or result_names():
            print(backfill(name, at=args.at))
        return 0
    print(archive(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
