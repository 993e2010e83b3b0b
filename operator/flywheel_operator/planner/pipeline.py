"""The training pipeline as data: which stages run in which phase, their Job names and their config files."""

from __future__ import annotations

from datetime import timedelta

from flywheel_operator.api import FlywheelGeneration, FlywheelGenerationStatus, StageConfig, names, parse_duration
from flywheel_operator.api.models import RetryPolicy, StorageSpec
from flywheel_operator.storage import PVC_MOUNT, join


def pipeline_steps(generation: FlywheelGeneration) -> list[tuple[str, list[str]]]:
    """(phase, stage names) in order; stages of one step run in parallel (the reward models)."""
    rewards = [f"reward-{model.name}" for model in generation.spec.stages.reward_models]
    return [
        ("Curating", ["curate"]),
        ("TrainingRewardModels", rewards),
        ("SFT", ["sft"]),
        ("RL", ["rl"]),
        ("Evaluating", ["eval"]),
    ]


def stage_kind(stage: str) -> str:
    """`reward-pointwise` -> `reward`; the other stage names are their own kind."""
    return "reward" if stage.startswith("reward-") else stage


def child_name(generation: str, stage: str, attempt: int) -> str:
    """Deterministic Job name: the same plan twice names the same Job, so creating it is idempotent; never over
    Kubernetes' limits (api/names.py shortens an overlong one with a hash)."""
    return names.child_name(generation, stage, attempt)


def artifact_root(storage: StorageSpec) -> str:
    """Where a stage's output directory lives: under the PVC mount, or under the object-store prefix."""
    return PVC_MOUNT if storage.pvc is not None else str(storage.uri)


def stage_output_dir(generation: FlywheelGeneration, stage: str) -> str:
    """`<root>/<generation>/<uid prefix>/<stage>`: the same for every attempt of a stage (checkpoints survive a
    retry), and new for a generation re-created under a promoted one's name, so its stages never replace (and
    publish_dir never deletes) the model that is serving. Without a uid (the local runner) `<root>/<gen>/<stage>`."""
    uid = (generation.metadata.uid or "")[:8]
    return join(artifact_root(generation.spec.resources.storage), generation.metadata.name, uid, stage)


def backoff(retry: RetryPolicy, failed_attempts: int) -> timedelta:
    """Wait after the `failed_attempts`-th failure: backoff · factor^(n−1), capped at maxBackoff."""
    seconds = parse_duration(retry.backoff).total_seconds() * retry.backoff_factor ** (failed_attempts - 1)
    return timedelta(seconds=min(seconds, parse_duration(retry.max_backoff).total_seconds()))


def stage_config(generation: FlywheelGeneration, status: FlywheelGenerationStatus, stage: str) -> StageConfig:
    """Render the config file of `stage` from the spec and the results of the stages that finished before it."""
    spec = generation.spec
    name = generation.metadata.name
    finished = [r for r in status.stages if r.state == "Succeeded"]
    return StageConfig(
        stage=stage_kind(stage),
        name=stage,
        generation=name,
        output_dir=stage_output_dir(generation, stage),
        policy=str(status.policy),
        data=spec.data,
        settings=spec.stages,
        reward_model=stage.removeprefix("reward-") if stage.startswith("reward-") else None,
        upstream={r.name: dict(r.artifacts) for r in finished},
        upstream_digests={r.name: r.output_digest for r in finished if r.output_digest},
        deepspeed_stage=spec.resources.deepspeed_stage,
        checkpoint_steps=spec.retry.checkpoint_steps,
        seed=spec.generation,
        tracking=spec.tracking,
    )
