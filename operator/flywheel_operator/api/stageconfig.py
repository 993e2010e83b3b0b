"""The contract between the operator and the stage programs: the config file of one stage Job.

The operator (or the local runner) renders it from the generation's spec and its upstream stages' results;
`flywheel-train STAGE --config FILE` reads it. Settings keep their defaults in the API models, once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flywheel_operator.api.base import ApiModel
from flywheel_operator.api.models import DataSources, StageSettings, TrackingSpec

StageKind = Literal["curate", "reward", "sft", "rl", "eval"]
STAGE_KINDS: tuple[str, ...] = ("curate", "reward", "sft", "rl", "eval")


class StageConfig(ApiModel):
    """Everything one stage program needs, and nothing about Kubernetes."""

    stage: StageKind
    """Which program runs."""
    name: str
    """Stage instance name (`curate`, `reward-<model>`, `sft`, `rl`, `eval`)."""
    generation: str
    """Name of the FlywheelGeneration this stage belongs to."""
    output_dir: str
    """Where the stage writes its artifacts and result.json (atomically: all or nothing)."""
    policy: str
    """The starting policy (parent's promoted policy or basePolicy): a model id, path or URI."""
    data: DataSources
    """Traffic logs and evaluation prompt sets."""
    settings: StageSettings = Field(default_factory=StageSettings)
    """Settings of every stage (the program reads its own part)."""
    reward_model: str | None = None
    """For `reward` stages: the name of the reward model in settings.rewardModels this Job trains."""
    upstream: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Artifacts of finished upstream stages, by stage name, e.g. upstream['curate']['pairs']."""
    upstream_digests: dict[str, str] = Field(default_factory=dict)
    """Output digests of the upstream stages (lineage: the stage records them as its input digests)."""
    deepspeed_stage: Literal[0, 2, 3] = 0
    """DeepSpeed ZeRO stage (0: none)."""
    checkpoint_steps: int = Field(default=0, ge=0)
    """Save a training checkpoint every this many steps under `outputDir`/checkpoints and resume from the
    last one when the stage runs again (spec.retry.checkpointSteps; 0: no checkpoints)."""
    seed: int = 0
    """Random seed (derived from the generation number, so reruns reproduce)."""
    tracking: TrackingSpec | None = None
    """Experiment trackers the stage's trainers report to (the generation's `spec.tracking`)."""
