"""Resume inside a stage: trainers checkpoint every `checkpointSteps` steps, and a stage that runs again (a retried
attempt after preemption, eviction or a crash) continues from its last complete checkpoint instead of step 0.

Checkpoints live in `<outputDir>/checkpoints/<phase>-<config digest>/checkpoint-<step>` (phase: `reward`, `sft`,
`dpo`, `rl`); the digest of the stage config keeps a changed spec (or a recreated generation of the same name)
from resuming checkpoints of different training.
The output directory is the same for every attempt of a stage (the planner names it `<root>/<gen>/<stage>`,
without the attempt), and it is not the stage's atomic staging directory, so checkpoints outlive a killed
attempt. When the stage succeeds, its published output replaces the directory and the checkpoints with it
(outputs.atomic_output_dir). Every rank writes its own optimizer shards there, so on several nodes the output
directory must be shared storage (the artifact PVC). With an object-store output directory there is no local
directory to checkpoint into yet, and the stage trains without checkpoints.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from flywheel_operator.api import StageConfig

from flywheel_trainer.outputs import StageError
from flywheel_trainer.runtime import local_path

CHECKPOINTS = "checkpoints"
KEEP = 2
"""Checkpoints kept per phase: the newest may be half-written when the pod dies, the one before is complete."""
_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(config: StageConfig, phase: str) -> Path | None:
    """Where `phase` of this stage checkpoints; None when checkpoints are off or the output is not a local path."""
    if config.checkpoint_steps <= 0:
        return None
    try:
        root = local_path(config.output_dir, field="outputDir")
    except StageError:
        return None
    digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]
    return root / CHECKPOINTS / f"{phase}-{digest}"


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


def last_checkpoint(directory: Path | None) -> str | None:
    """The newest complete checkpoint in `directory` (the Trainer writes trainer_state.json last), or None."""
    if directory is None or not directory.is_dir():
        return None
    complete = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := _STEP.match(path.name)) and (path / "trainer_state.json").is_file()
    ]
    return str(max(complete)[1]) if complete else None


def train_resuming(trainer: Any, config: StageConfig, phase: str) -> Any:
    """`trainer.train()`, from the last checkpoint of `phase` when an earlier attempt left one."""
    trainer.train(resume_from_checkpoint=last_checkpoint(checkpoint_dir(config, phase)))
    return trainer
