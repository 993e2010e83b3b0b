"""Resume inside a stage: trainers checkpoint every `checkpointSteps` steps, and a stage that runs again (a retried
attempt after preemption, eviction or a crash) continues from its last complete checkpoint instead of step 0.

Checkpoints live in `<outputDir>/checkpoints/<phase>-<config digest>/checkpoint-<step>` (phase: `reward`, `sft`,
`dpo`, `rl`); the digest of the stage config keeps a changed spec (or a recreated generation of the same name)
from resuming checkpoints of different training.
The output directory is the same for every attempt of a stage (the planner names it `<root>/<gen>/<stage>`,
without the attempt), and it is not the stage's atomic staging directory, so checkpoints outlive a killed
attempt. When the stage succeeds, its published output replaces the directory and the checkpoints with it
(outputs.atomic_output_dir). Every rank writes its own optimizer shards there, so on several nodes a local
output directory must be shared storage (the artifact PVC).

With an object-store output directory (`s3://`, `gs://`) the Trainer checkpoints into a local scratch directory
(under storage.cache_dir()), and each complete checkpoint is uploaded to the same place under the output URI
through the storage seam, `trainer_state.json` last (it marks the checkpoint complete, as it does locally; the
Trainer writes it last). The newest KEEP complete checkpoints are kept there too. A stage that starts again
downloads the newest complete one and resumes from it: each node only the shared files and its own ranks' ZeRO
shards and RNG states (`for_node`), once per node. Uploads run on each node's local rank 0 before a barrier that
waits at most `resources.collectiveTimeout` (the process group's timeout, FLYWHEEL_COLLECTIVE_TIMEOUT).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from flywheel_operator import storage
from flywheel_operator.api import StageConfig

CHECKPOINTS = "checkpoints"
KEEP = 2
"""Checkpoints kept per phase: the newest may be half-written when the pod dies, the one before is complete."""
COMPLETE_MARKER = "trainer_state.json"
"""Written last by the Trainer into a checkpoint, and uploaded last: a checkpoint without it is incomplete."""
_STEP = re.compile(r"^checkpoint-(\d+)$")


def _name(config: StageConfig, phase: str) -> str:
    digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]
    return f"{phase}-{digest}"


def checkpoint_uri(config: StageConfig, phase: str) -> str | None:
    """Where `phase` of this stage keeps its checkpoints (a path or an object-store URI); None when off."""
    if config.checkpoint_steps <= 0:
        return None
    return storage.join(config.output_dir, CHECKPOINTS, _name(config, phase))


def checkpoint_dir(config: StageConfig, phase: str) -> Path | None:
    """The local directory the Trainer checkpoints `phase` into: under the output directory, or a scratch
    directory uploaded from when the output is in an object store; None when checkpoints are off."""
    uri = checkpoint_uri(config, phase)
    if uri is None:
        return None
    if storage.is_object_store(uri):
        return storage.cache_dir() / CHECKPOINTS / _name(config, phase)
    return storage.local_path(uri)


def checkpoint_args(config: StageConfig, phase: str) -> dict[str, Any]:
    """TrainingArguments overrides that checkpoint `phase` every `checkpointSteps` steps (empty when off)."""
    directory = checkpoint_dir(config, phase)
    if directory is None:
        return {}
    return {
        "output_dir": str(directory),
        "save_strategy": "steps",
        "save_steps": config.checkpoint_steps,
        "save_total_limit": KEEP,
    }


def _relative_parts(uri: str) -> list[list[str]]:
    """The path parts below `uri` of every file under it (none when nothing is there)."""
    try:
        files = storage.list_files(uri)
    except storage.MissingObjectError:
        return []
    return [file[len(uri.rstrip("/")) + 1 :].split("/") for file in files]


def complete_checkpoints(uri: str | None) -> list[tuple[int, str]]:
    """(step, URI) of the complete checkpoints under `uri` (a path or an object-store prefix), oldest first."""
    if uri is None:
        return []
    found = []
    for parts in _relative_parts(uri):
        if len(parts) == 2 and parts[1] == COMPLETE_MARKER and (match := _STEP.match(parts[0])):
            found.append((int(match.group(1)), storage.join(uri, parts[0])))
    return sorted(found)


def last_checkpoint(uri: str | Path | None) -> str | None:
    """The newest complete checkpoint under `uri` (a directory or an object-store prefix), or None."""
    complete = complete_checkpoints(None if uri is None else str(uri))
    return complete[-1][1] if complete else None


def train_resuming(trainer: Any, config: StageConfig, phase: str) -> Any:
    """`trainer.train()`, from the last checkpoint of `phase` when an earlier attempt left one; with an
    object-store output the checkpoints are uploaded as they are saved and the last one downloaded first."""
    uri = checkpoint_uri(config, phase)
    resume = None
    if uri is not None and storage.is_object_store(uri):
        scratch = checkpoint_dir(config, phase)
        with trainer.args.main_process_first(local=True, desc="checkpoint download"):
            if trainer.args.local_process_index == 0:
                shutil.rmtree(scratch, ignore_errors=True)  # a stale scratch from an earlier run on this node
            newest = last_checkpoint(uri)
            ranks = node_ranks()
            resume = str(storage.localize(newest, select=lambda name: for_node(name, ranks),
                                          variant=f"ranks {ranks.start}-{ranks.stop}")) if newest else None
        trainer.add_callback(_uploader(uri))
    elif uri is not None:
        resume = last_checkpoint(uri)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


_PER_RANK = re.compile(r"(?:^|/)(?:\w*zero_pp_rank_(\d+)_|rng_state_(\d+)\.pth$)")
"""Files of one data-parallel rank in a checkpoint: ZeRO optimizer/parameter shards and the rank's RNG state."""


def node_ranks() -> range:
    """The global ranks of this node's processes (torchrun: RANK, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return range(rank - local, rank - local + size)


def for_node(relative: str, ranks: range) -> bool:
    """Whether a checkpoint file is needed on a node whose processes hold `ranks`: every shared file, and the
    per-rank files (ZeRO shards, RNG states) of its own ranks only — not the other nodes' shards."""
    match = _PER_RANK.search(relative)
    if match is None:
        return True
    return int(match.group(1) or match.group(2)) in ranks


def _uploader(uri: str) -> Any:
    """A TrainerCallback that uploads each saved checkpoint to `uri` and keeps the newest KEEP there."""
    from transformers import TrainerCallback

    class UploadCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                return  # the end of training: the published output follows and would delete it at once
            name = f"checkpoint-{state.global_step}"
            local = Path(args.output_dir) / name
            target = storage.join(uri, name)
            if state.is_local_process_zero:  # each node uploads what its ranks wrote (ZeRO shards)
                for file in sorted(p for p in local.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER):
                    storage.put_file(file, storage.join(target, file.relative_to(local).as_posix()))
            _barrier()
            if state.is_world_process_zero:
                storage.put_file(local / COMPLETE_MARKER, storage.join(target, COMPLETE_MARKER))
                _prune(uri)

    return UploadCheckpoints()


def _prune(uri: str) -> None:
    """Keep the newest KEEP complete checkpoints under `uri`; older ones, complete or not, go."""
    complete = complete_checkpoints(uri)
    if len(complete) <= KEEP:
        return
    oldest_kept = complete[-KEEP][0]
    steps = {int(match.group(1)) for parts in _relative_parts(uri) if (match := _STEP.match(parts[0]))}
    for step in sorted(steps):
        if step < oldest_kept:
            storage.remove(storage.join(uri, f"checkpoint-{step}"))


def _barrier() -> None:
    """Wait for every rank (no-op outside torch.distributed): all shards are up before the marker goes."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
