"""All-or-nothing stage outputs and the digests that chain stage results (lineage).

A stage writes into a hidden temporary sibling of its output directory and renames it into place only when
everything, `result.json` included, is written: a crash leaves no half-written output for the next stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flywheel_operator import storage
from flywheel_operator.api import StageResult

RESULT_FILE = "result.json"
SCRATCH = "scratch"
"""Trainers' working directory inside the staging directory; removed before the output is published."""


class StageError(Exception):
    """A stage cannot proceed for a reason retrying will not fix; the message names the field and the fix."""


def sha256_path(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a directory's relative file names and contents in sorted order (any URI)."""
    try:
        return storage.digest(str(path))
    except storage.MissingObjectError as exc:
        raise StageError(f"cannot digest {path}: it does not exist") from exc


def combined_digest(digests: Mapping[str, str]) -> str:
    """One sha256 over named digests (order-independent): a stage's output digest from its artifacts'."""
    digest = hashlib.sha256()
    for name in sorted(digests):
        digest.update(f"{name}={digests[name]}\n".encode())
    return digest.hexdigest()


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSON lines; returns how many were written."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines artifact written by `write_jsonl` (a path or any storage URI)."""
    with storage.open_uri(str(path), "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@contextmanager
def atomic_output_dir(final_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces `final_dir` on success and vanishes on failure.

    The temporary directory is a sibling of `final_dir`, so the final `rename` stays on one file system and is
    atomic; a previous output (a retried attempt) is moved aside first and removed only after the rename.
    An object-store `final_dir` is staged locally and uploaded on success, `result.json` last
    (storage.publish_dir).
    """
    if storage.is_object_store(str(final_dir)):
        with _published_to_object_store(str(final_dir)) as staging:
            yield staging
        return
    final = storage.local_path(str(final_dir)) or Path(final_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        # Under torchrun / accelerate every rank runs the stage; only rank 0 publishes its output.
        scratch = Path(tempfile.mkdtemp(prefix=f"{final.name}.rank"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the output from the next stage's pod user
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if final.exists():
        previous = final.with_name(f".{final.name}.{os.getpid()}.old")
        os.replace(final, previous)
    os.replace(staging, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def _published_to_object_store(uri: str) -> Iterator[Path]:
    staging = Path(tempfile.mkdtemp(prefix="flywheel-output-"))
    try:
        yield staging
        if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 publishes (as on a shared volume)
            storage.publish_dir(staging, uri)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def process_group_size() -> int:
    """Processes that ran this stage together: the size of the initialised torch.distributed group, else 1.

    Stages that never import torch (curate) ran alone; a trainer launched by torchrun joins its group through
    accelerate (gloo on CPU, NCCL on GPUs).
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def finish_result(
    staging: Path,
    final_dir: str | os.PathLike[str],
    *,
    stage: str,
    artifacts: Mapping[str, str],
    input_digests: Mapping[str, str],
    metrics: Mapping[str, float],
    details: Mapping[str, Any],
) -> StageResult:
    """Digest the artifacts (paths relative to `staging`), write `result.json` and return the result.

    Every result records `world_size`, the processes that trained it together (1 unless launched by torchrun).

    Artifact URIs in the result point at their final location under `final_dir`; the trainers' scratch
    directory is removed first.
    """
    shutil.rmtree(staging / SCRATCH, ignore_errors=True)
    artifact_digests = {name: sha256_path(staging / rel) for name, rel in artifacts.items()}
    result = StageResult(
        stage=stage,
        metrics={"world_size": float(process_group_size()), **{name: float(value) for name, value in metrics.items()}},
        artifacts={name: storage.join(str(final_dir), rel) for name, rel in artifacts.items()},
        input_digests=dict(input_digests),
        output_digest=combined_digest(artifact_digests),
        details={**details, "artifact_digests": artifact_digests},
    )
    (staging / RESULT_FILE).write_text(json.dumps(result.to_wire(), indent=2, sort_keys=True), encoding="utf-8")
    return result
