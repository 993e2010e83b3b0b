"""A deterministic stand-in for a backend: carries out plans in memory so tests can script the world."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel_operator.api import (
    ArmStats,
    FlywheelGeneration,
    FlywheelGenerationStatus,
    OfflineMetrics,
    OnlineReading,
    StageResult,
    StyleStats,
)
from flywheel_operator.planner import (
    CanaryObservation,
    DeployCanary,
    JobObservation,
    Observed,
    ParentObservation,
    Plan,
    PromoteCanary,
    RollBackCanary,
    StartStage,
    plan,
)

from tests.foundation.manifests import minimal

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
STYLE = StyleStats(emoji_rate=0.2, list_rate=0.05, mean_length=30.0, stock_phrase_rate=0.05)


def generation(**spec: Any) -> FlywheelGeneration:
    """A small generation: two reward models, quick retries, a 1d–7d canary checked every 6h."""
    overrides: dict[str, Any] = {
        "stages": {
            "rewardModels": [{"name": "pointwise", "kind": "pointwise"}, {"name": "pairwise", "kind": "pairwise"}]
        },
        "retry": {"maxAttempts": 3, "backoff": "1m"},
        "canary": {"inferenceService": "chat", "minDuration": "1d", "maxDuration": "7d", "checkInterval": "6h"},
    }
    overrides.update(spec)
    return FlywheelGeneration.model_validate(minimal(**overrides))


def offline_metrics(**changes: Any) -> dict[str, Any]:
    values = dict(
        win_rate_user=0.58,
        win_rate_internal=0.55,
        instruction_following=0.9,
        violation_rate=0.1,
        false_refusal_rate=0.01,
        style=STYLE,
        parent_style=STYLE,
    )
    values.update(changes)
    return OfflineMetrics(**values).to_wire()


def result_for(stage: str, **offline: Any) -> StageResult:
    kind = "reward" if stage.startswith("reward-") else stage
    artifacts = {
        "curate": {"pairs": "/a/pairs", "rl_prompts": "/a/rl"},
        "reward": {"model": f"/a/{stage}"},
        "sft": {"model": "/a/sft"},
        "rl": {"model": "/a/candidate"},
        "eval": {"report": "/a/eval"},
    }[kind]
    details = {"offline_metrics": offline_metrics(**offline)} if kind == "eval" else {}
    return StageResult(
        stage=kind, metrics={"loss": 0.1}, artifacts=artifacts, output_digest=f"sha256:{stage}", details=details
    )


def arm(users: int, engaged: int, mean_depth: float, sd: float = 2.0) -> ArmStats:
    depth_sum = users * mean_depth
    responses = users * 5
    rates = {"instruction-violations": 0.05, "false-refusals": 0.01, "errors": 0.001}
    events = {name: round(rate * responses) for name, rate in rates.items()}
    log_sd = sd / (1 + mean_depth)
    log_mean = max(math.log1p(mean_depth) - log_sd**2 / 2, 0.0)
    return ArmStats(
        users=users,
        engaged_users=engaged,
        depth_sum=depth_sum,
        depth_sum_squares=users * (sd**2 + mean_depth**2),
        responses=responses,
        guardrails=events,
        # per-user sums (issue 25): 5 responses each, an event at most once per user
        responses_sum_squares=25.0 * users,
        guardrail_sum_squares={name: float(e) for name, e in events.items()},
        guardrail_cross_sums={name: 5.0 * e for name, e in events.items()},
        # issue 25 (h25): the log-scale depth sums, by the delta method: log(1 + depth) has SD s = sd/(1 + mean)
        # and mean log(1 + mean) − s²/2 (below log(1 + mean), as Jensen requires)
        depth_log_sum=users * log_mean,
        depth_log_sum_squares=users * (log_sd**2 + log_mean**2),
    )


def reading(at: datetime, lift: float, users: int = 20_000) -> OnlineReading:
    """Treatment gets `lift` relative depth and breadth; 10 % traffic split as the spec says."""
    control_users = users * 9 // 10
    treatment_users = users - control_users
    return OnlineReading(
        at=at,
        control=arm(control_users, int(control_users * 0.5), 4.0),
        treatment=arm(treatment_users, int(treatment_users * 0.5 * (1 + lift)), 4.0 * (1 + lift)),
    )


@dataclass
class World:
    """Jobs, canary and readings as a backend would observe them; `step` plans and carries out the plan."""

    gen: FlywheelGeneration
    now: datetime = T0
    jobs: dict[str, JobObservation] = field(default_factory=dict)
    canary: CanaryObservation | None = None
    online: OnlineReading | None = None
    parent: ParentObservation | None = None
    holder: str | None = None
    """Another live generation whose canary the InferenceService carries."""
    history: list[Plan] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    canary_actions: list[type] = field(default_factory=list)

    def observed(self) -> Observed:
        return Observed(now=self.now, jobs=dict(self.jobs), canary=self.canary, online=self.online, parent=self.parent,
                        canary_holder=self.holder)

    def step(self) -> Plan:
        result = plan(self.gen, self.observed())
        for action in result.actions:
            if isinstance(action, StartStage):
                if action.child not in self.jobs:
                    self.created.append(action.child)
                    self.jobs[action.child] = JobObservation(name=action.child, state="Running", started_at=self.now)
            elif isinstance(action, DeployCanary):
                self.canary_actions.append(DeployCanary)
                self.canary = self.canary or CanaryObservation(ready=False)
            elif isinstance(action, PromoteCanary | RollBackCanary):
                self.canary_actions.append(type(action))
        self.gen = self.gen.model_copy(update={"status": result.status.to_wire()})
        self.history.append(result)
        return result

    @property
    def status(self) -> FlywheelGenerationStatus:
        return FlywheelGenerationStatus.model_validate(self.gen.status or {})

    def running(self) -> list[str]:
        return [r.child for r in self.status.stages if r.state == "Running"]

    def finish(self, child: str, ok: bool = True, **offline: Any) -> None:
        stage = child.removeprefix(f"{self.gen.metadata.name}-").rsplit("-", 1)[0]
        self.jobs[child] = JobObservation(
            name=child,
            state="Succeeded" if ok else "Failed",
            finished_at=self.now,
            message=None if ok else "OOMKilled",
            result=result_for(stage, **offline) if ok else None,
        )

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def train_through(self, **offline: Any) -> None:
        """Step until every training stage succeeded (and the offline gate ran)."""
        self.step()
        for _ in range(20):
            if not self.running():
                return
            for child in self.running():
                self.finish(child, **offline)
            self.step()
        raise AssertionError("training did not finish")
