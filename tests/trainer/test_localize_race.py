"""One download per node: the ranks of a pod localize the same model from a real S3 server (moto's server mode)
at once, as every torchrun rank of a stage does; none fails, and exactly one process per node downloads it.

8 processes (2 nodes × 4 local ranks, each node with its own cache directory as each pod has its own scratch),
released together, 3 trials. Every process counts the files it fetched through s3fs (`_get_file`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flywheel_operator import storage

NODES, LOCAL_RANKS, TRIALS = 2, 4, 3
FILES = {"config.json": 1 << 10, "model-00001.safetensors": 6 << 20, "model-00002.safetensors": 6 << 20}

RANK = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    import s3fs
    from flywheel_operator import storage

    uri, go, report = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    fetched = []
    original = s3fs.S3FileSystem._get_file

    async def counting(self, rpath, lpath, **kwargs):
        fetched.append(rpath)
        return await original(self, rpath, lpath, **kwargs)

    s3fs.S3FileSystem._get_file = counting
    while not go.exists():  # released together
        time.sleep(0.01)
    try:
        local = storage.localize(uri)
        sizes = {p.name: p.stat().st_size for p in local.iterdir()}
        outcome = {"ok": True, "sizes": sizes, "fetched": fetched, "path": str(local)}
    except Exception as exc:
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "fetched": fetched}
    report.write_text(json.dumps(outcome))
''')


@pytest.mark.slow
def test_the_ranks_of_a_node_download_a_model_once_and_none_fails(s3: str, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name, size in FILES.items():
        (model / name).write_bytes(os.urandom(size))
    uri = storage.join(s3, "models", "policy")
    for file in model.iterdir():
        storage.put_file(file, storage.join(uri, file.name))

    failures, downloads_per_node = [], []
    for trial in range(TRIALS):
        go = tmp_path / f"go-{trial}"
        processes = []
        for node in range(NODES):
            env = {**os.environ, storage.CACHE_ENV: str(tmp_path / f"trial{trial}-node{node}-scratch" / "cache"),
                   "LOCAL_RANK": "0"}
            for local_rank in range(LOCAL_RANKS):
                report = tmp_path / f"report-{trial}-{node}-{local_rank}.json"
                env = {**env, "LOCAL_RANK": str(local_rank)}
                processes.append((node, report, subprocess.Popen(
                    [sys.executable, "-c", RANK, uri, str(go), str(report)], env=env)))
        go.touch()
        fetched_by_node: dict[int, list[list[str]]] = {n: [] for n in range(NODES)}
        for node, report, process in processes:
            assert process.wait(timeout=240) == 0
            outcome = json.loads(report.read_text())
            if not outcome["ok"] or outcome["sizes"] != FILES:
                failures.append(outcome)
            fetched_by_node[node].append(outcome["fetched"])
        for node, fetched in fetched_by_node.items():
            # s3fs also calls _get_file for the prefix itself (it makes the directory): count object files only
            downloaders = [names for files in fetched if (names := [f for f in files if f.rsplit("/", 1)[-1] in FILES])]
            downloads_per_node.append(len(downloaders))
            assert sorted(f.rsplit("/", 1)[-1] for names in downloaders for f in names) == sorted(FILES), (
                f"trial {trial} node {node}: every file fetched exactly once, got {downloaders}")
    assert failures == []
    assert downloads_per_node == [1] * (NODES * TRIALS)
