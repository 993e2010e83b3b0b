"""Bench results match the code they measured (issue 31): every committed bench/results/NAME.json carries the
provenance stamp of bench/provenance.py, its dependency hash is the current files' hash, every key it holds is one
its script still writes, and the docs cite only current results, archived ones (history/NAME@COMMIT.json) or a
commit. The rest pins the stamp itself: a hash over contents alone, backfill from git history, archiving."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import provenance
from bench.provenance import BENCHES, REPO, Bench

RESULTS = provenance.result_names()
HISTORY = provenance.history_files()


def _report(name: str) -> dict:
    return json.loads((REPO / provenance.RESULTS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", RESULTS)
def test_result_is_stamped_and_measured_on_the_current_code(name: str) -> None:
    problems = provenance.stamp_problems(name, _report(name))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", RESULTS)
def test_every_key_of_a_result_is_one_its_script_still_writes(name: str) -> None:
    assert name in BENCHES, f"bench/results/{name}.json: declare its bench in bench/provenance.py's BENCHES"
    bench = BENCHES[name]
    leftover = provenance.unwritten_keys(_report(name), (REPO / bench.script).read_text())
    assert not leftover, (
        f"bench/results/{name}.json holds {leftover}, which {bench.script} no longer writes: the result is older "
        f"than its script; re-measure it with `nice -n 10 {bench.command}`"
    )


@pytest.mark.parametrize("filename", HISTORY or [pytest.param("", marks=pytest.mark.skip(reason="none archived"))])
def test_archived_result_is_stamped_by_the_commit_it_names(filename: str) -> None:
    problems = provenance.history_problems(filename)
    assert not problems, "\n".join(problems)
    report = json.loads((REPO / provenance.HISTORY / filename).read_text())
    commit, script = report["provenance"]["commit"], report["provenance"]["script"]
    if provenance.has_commit(commit):
        source = provenance.git_contents(commit, [script])[script].decode()
        assert not provenance.unwritten_keys(report, source), f"{filename}: keys {script} did not write at {commit}"


def test_docs_cite_current_results_or_name_the_commit() -> None:
    problems = provenance.citation_problems()
    assert not problems, "\n".join(problems)


def _stamped_names(script: Path) -> list[str]:
    calls = [n for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Call)]
    return [
        c.args[0].value
        for c in calls
        if isinstance(c.func, ast.Name) and c.func.id == "stamp_file" and isinstance(c.args[0], ast.Constant)
    ]


def test_every_bench_script_stamps_each_result_it_writes() -> None:
    scripts = {p.relative_to(REPO).as_posix() for p in (REPO / "bench").glob("*.py")} - {"bench/provenance.py"}
    declared = {b.script for b in BENCHES.values()}
    assert scripts <= declared, f"bench scripts without a BENCHES entry: {sorted(scripts - declared)}"
    for name, bench in BENCHES.items():
        if (REPO / bench.script).is_file():
            stamped = _stamped_names(REPO / bench.script)
            assert name in stamped, f"{bench.script} does not call stamp_file({name!r}, …) after writing its JSON"
            assert set(stamped) <= set(BENCHES), f"{bench.script} stamps undeclared benches {stamped}"


@pytest.mark.parametrize("name", [n for n, b in BENCHES.items() if (REPO / b.script).is_file()])
def test_declared_dependencies_cover_every_module_the_script_loads(name: str) -> None:
    bench = BENCHES[name]
    declared = set(provenance.worktree_paths(bench.patterns))
    missing = sorted(provenance.loaded_files(bench.script) - declared)
    assert not missing, f"{bench.script} loads {missing}: add them to BENCHES[{name!r}].depends_on"
    assert bench.script in declared


# --- the hash --------------------------------------------------------------------------------------------------

FILES = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}\.py", fullmatch=True),
    st.binary(max_size=64).map(lambda b: b.replace(b"\r", b"")).filter(lambda b: provenance.MARKER not in b),
    min_size=1,
    max_size=6,
)


@given(FILES, st.randoms())
@settings(max_examples=60, deadline=None)
def test_hash_is_independent_of_listing_order_and_line_endings(files: dict[str, bytes], rng) -> None:
    shuffled = list(files.items())
    rng.shuffle(shuffled)
    crlf = {p: c.replace(b"\n", b"\r\n") for p, c in shuffled}
    digest = provenance.combined_digest(provenance.file_digests(files))
    assert provenance.combined_digest(provenance.file_digests(dict(shuffled))) == digest
    assert provenance.combined_digest(provenance.file_digests(crlf)) == digest


@given(FILES, st.data())
@settings(max_examples=60, deadline=None)
def test_hash_changes_with_any_file_content_or_path(files: dict[str, bytes], data) -> None:
    digest = provenance.combined_digest(provenance.file_digests(files))
    path = data.draw(st.sampled_from(sorted(files)))
    edited = {**files, path: files[path] + b"\nx"}
    assert provenance.combined_digest(provenance.file_digests(edited)) != digest
    renamed = {(p + "x" if p == path else p): c for p, c in files.items()}
    assert provenance.combined_digest(provenance.file_digests(renamed)) != digest


def test_stamping_call_is_not_hashed_but_every_other_line_is() -> None:
    body = b"x = measure()\nwrite(x)\n"
    with_call = b"x = measure()\nwrite(x)\nstamp_file('demo', out)  # provenance\n"
    assert provenance.normalised(with_call).rstrip(b"\n") == provenance.normalised(body).rstrip(b"\n")
    assert provenance.normalised(b"x = measure(2)\nwrite(x)\n") != provenance.normalised(body)


def test_globs_reach_nested_folders_only_through_double_star() -> None:
    paths = ["a/b.py", "a/c/d.py", "a/c/e/f.py", "a/__pycache__/b.py", "a/b.txt", "ab.py"]
    assert provenance.matching(["a/*.py"], paths) == ["a/b.py"]
    assert provenance.matching(["a/**/*.py"], paths) == ["a/b.py", "a/c/d.py", "a/c/e/f.py"]
    assert provenance.matching(["a/c/?.py"], paths) == ["a/c/d.py"]


def test_hash_of_the_tree_ignores_mtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("A = 1\n")
    (tmp_path / "run.py").write_text("print(1)\n")
    monkeypatch.setitem(BENCHES, "demo", Bench("run.py", ("pkg/**/*.py",), "python run.py"))
    before = provenance.current_digests("demo", tmp_path)
    os.utime(tmp_path / "pkg" / "m.py", (0, 0))
    assert (
        provenance.current_digests("demo", tmp_path)
        == before
        == provenance.file_digests({"pkg/m.py": b"A = 1\n", "run.py": b"print(1)\n"})
    )


# --- stamping, backfill and archive on a scratch repository -------------------------------------------------------


def _git(root: Path, *args: str) -> str:
    command = ["git", "-C", str(root), "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with one bench (bench/demo.py over pkg/), its legacy result committed, then pkg/ changed."""
    monkeypatch.setitem(BENCHES, "demo", Bench("bench/demo.py", ("pkg/*.py",), "python bench/demo.py"))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "pkg" / "core.py").write_text("SPEED = 1\n")
    (tmp_path / "bench" / "demo.py").write_text("report = {'speed': 1}\n")
    (tmp_path / "bench" / "results" / "demo.json").write_text(json.dumps({"speed": 1}, indent=2) + "\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "measured")
    (tmp_path / "pkg" / "core.py").write_text("SPEED = 2\n")
    _git(tmp_path, "commit", "-qam", "faster")
    return tmp_path


def test_backfill_stamps_the_commit_that_wrote_the_result_never_the_current_tree(repo: Path) -> None:
    measured = _git(repo, "rev-parse", "HEAD~1")
    provenance.backfill("demo", repo)
    stamp = _report_at(repo, "bench/results/demo.json")["provenance"]
    assert stamp["commit"] == measured and stamp["dirty"] is None and stamp["backfilled"]
    assert stamp["depends_on_sha256"] == provenance.combined_digest(provenance.digests_at("demo", measured, repo))
    assert stamp["depends_on_sha256"] != provenance.combined_digest(provenance.current_digests("demo", repo))
    [problem] = provenance.stamp_problems("demo", _report_at(repo, "bench/results/demo.json"), repo)
    assert f"stale: measured at {measured[:7]}" in problem
    assert "changed pkg/core.py" in problem and "bench/demo.py" not in problem.split("Re-measure")[0]
    assert "`nice -n 10 python bench/demo.py`" in problem and "archive demo" in problem


def test_backfill_at_a_code_commit_must_be_an_ancestor_of_the_result(repo: Path) -> None:
    with pytest.raises(SystemExit, match="not an ancestor"):
        provenance.backfill("demo", repo, at=_git(repo, "rev-parse", "HEAD"))
    _git(repo, "commit", "-q", "--allow-empty", "-m", "later")
    (repo / "bench" / "results" / "demo.json").write_text(json.dumps({"speed": 2}) + "\n")
    _git(repo, "commit", "-qam", "results of the faster code, measured at HEAD~1")
    code = _git(repo, "rev-parse", "HEAD~2")
    provenance.backfill("demo", repo, at=code)
    stamp = _report_at(repo, "bench/results/demo.json")["provenance"]
    assert stamp["commit"] == code and code[:7] in stamp["backfilled"]
    assert provenance.stamp_problems("demo", _report_at(repo, "bench/results/demo.json"), repo) == []


def test_backfill_refuses_a_result_a_merge_commit_wrote(repo: Path) -> None:
    _git(repo, "checkout", "-qb", "side")
    (repo / "bench" / "results" / "demo.json").write_text(json.dumps({"speed": 3}) + "\n")
    _git(repo, "commit", "-qam", "side result")
    _git(repo, "checkout", "-q", "-")
    (repo / "bench" / "results" / "demo.json").write_text(json.dumps({"speed": 2}) + "\n")
    _git(repo, "commit", "-qam", "main result")
    subprocess.run(["git", "-C", str(repo), "merge", "-q", "side"], capture_output=True, check=False)  # conflicts
    (repo / "bench" / "results" / "demo.json").write_text(json.dumps({"speed": 3, "note": "resolved"}) + "\n")
    _git(repo, "commit", "-qam", "merged, the conflict resolved by hand")
    with pytest.raises(SystemExit, match="merge commit"):
        provenance.backfill("demo", repo)
    side = _git(repo, "rev-parse", "side")
    provenance.backfill("demo", repo, at=side)
    assert _report_at(repo, "bench/results/demo.json")["provenance"]["commit"] == side


def test_a_fresh_stamp_is_current_and_says_whether_the_tree_was_dirty(repo: Path) -> None:
    out = repo / "bench" / "results" / "demo.json"
    provenance.stamp_file("demo", out, repo)
    stamp = _report_at(repo, "bench/results/demo.json")["provenance"]
    assert stamp["commit"] == _git(repo, "rev-parse", "HEAD") and stamp["dirty"] is False
    assert set(stamp["depends_on"]) == {"bench/demo.py", "pkg/core.py"}
    assert provenance.stamp_problems("demo", _report_at(repo, "bench/results/demo.json"), repo) == []
    (repo / "pkg" / "core.py").write_text("SPEED = 3\n")
    provenance.stamp_file("demo", out, repo)
    assert _report_at(repo, "bench/results/demo.json")["provenance"]["dirty"] is True
    (repo / "bench" / "demo.py").write_text("report = {'speed': 1}\nstamp_file('demo', out)  # provenance\n")
    assert provenance.stamp_problems("demo", _report_at(repo, "bench/results/demo.json"), repo) == []


def test_an_archived_result_keeps_its_commit_and_the_docs_must_cite_it_by_commit(repo: Path) -> None:
    measured = _git(repo, "rev-parse", "HEAD~1")
    (repo / "docs").mkdir()
    (repo / "docs" / "bench.md").write_text("Speed 1 (bench/results/demo.json).\n")
    provenance.backfill("demo", repo)
    assert provenance.citation_problems(repo) == []
    _git(repo, "commit", "-qam", "backfilled")
    message = provenance.archive("demo", repo)
    archived = f"demo@{measured[:7]}.json"
    assert f"bench/results/history/{archived}" in message and "docs/bench.md:1" in message
    assert provenance.result_names(repo) == [] and provenance.history_files(repo) == [archived]
    assert provenance.history_problems(archived, repo) == []
    [problem] = provenance.citation_problems(repo)
    assert problem.startswith("docs/bench.md:1 cites bench/results/demo.json") and archived in problem
    (repo / "docs" / "bench.md").write_text(
        f"Speed 1 (bench/results/history/{archived}; {measured[:7]}:bench/results/demo.json).\n"
    )
    assert provenance.citation_problems(repo) == []
    forged = json.loads((repo / "bench/results/history" / archived).read_text())
    forged["provenance"]["depends_on_sha256"] = provenance.combined_digest(provenance.current_digests("demo", repo))
    (repo / "bench/results/history" / archived).write_text(json.dumps(forged))
    assert "not the hash of those files" in provenance.history_problems(archived, repo)[0]


def test_leftover_key_is_found_and_keys_the_script_spells_are_not() -> None:
    source = "report = {'machine': 1, 'cpu': cpu}\nreport.update(extra=2)\n"
    assert provenance.unwritten_keys({"machine": 1, "cpu": {}, "extra": 2, "gpu_sft": None}, source) == ["gpu_sft"]


def _report_at(root: Path, rel: str) -> dict:
    return json.loads((root / rel).read_text())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(sorted(BENCHES)), unique=True), st.booleans())
def test_run_plan_runs_each_bench_after_the_ones_it_reads(names: list[str], has_gpu: bool) -> None:
    plan = provenance.run_plan(names, has_gpu)
    order = [name for name, _ in plan]
    assert len(order) == len(set(order)) and set(names) <= set(order)
    for position, name in enumerate(order):
        assert all(need in order[:position] for need in BENCHES[name].needs)
    for name, skip in plan:
        assert (skip is not None) == (BENCHES[name].gpu and not has_gpu)
        assert skip is None or BENCHES[name].command in skip


def test_run_plan_names_the_choices_for_an_unknown_bench() -> None:
    with pytest.raises(SystemExit, match="gate"):
        provenance.run_plan(["gates"], has_gpu=False)


def test_stale_names_include_every_bench_without_a_result() -> None:
    missing = {name for name in BENCHES if not (REPO / provenance.RESULTS / f"{name}.json").is_file()}
    assert missing <= set(provenance.stale_names())
