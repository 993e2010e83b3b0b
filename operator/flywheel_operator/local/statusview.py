"""`flywheel status RUN_DIR`: the status documents of a local run, as `kubectl describe` would show them."""

from __future__ import annotations

import json
from pathlib import Path

from flywheel_operator.api import FlywheelGenerationStatus, StageRecord
from rich.console import Group
from rich.table import Table
from rich.text import Text


def generation_dirs(directory: Path) -> list[Path]:
    """Generation directories (those with a status.json) of a run directory, in the order they ran.

    `directory` may also be one generation's directory.
    """
    if (directory / "status.json").is_file():
        return [directory]
    found = [d for d in directory.iterdir() if (d / "status.json").is_file()] if directory.is_dir() else []
    return sorted(found, key=lambda d: (_generation_number(d), d.name))


def _generation_number(directory: Path) -> int:
    try:
        return int(json.loads((directory / "generation.json").read_text())["spec"]["generation"])
    except (OSError, ValueError, KeyError):
        return 0


def _duration(record: StageRecord) -> str:
    if record.started_at is None or record.finished_at is None:
        start = record.started_at or record.created_at
        return f"since {start:%H:%M:%S}"
    return f"{(record.finished_at - record.started_at).total_seconds():.0f}s"


def render_one(name: str, status: FlywheelGenerationStatus) -> Group:
    parts: list = [Text(f"{name}: {status.phase}" + (f" — {status.message}" if status.message else ""), style="bold")]
    if status.policy:
        parts.append(Text(f"  policy {status.policy}"))
    if status.candidate_policy:
        parts.append(Text(f"  candidate {status.candidate_policy}"))
    table = Table("stage", "state", "attempts", "time", "metrics", box=None, pad_edge=False)
    for record in status.stages:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(record.metrics.items())[:5])
        detail = metrics or record.message or ""
        table.add_row(record.name, record.state, str(record.attempts), _duration(record), detail)
    if status.stages:
        parts.append(table)
    if status.offline_gate is not None:
        gate = status.offline_gate
        parts.append(Text(f"  offline gate: {'passed' if gate.passed else 'FAILED'}"))
        for check in gate.checks:
            mark = "ok " if check.passed else "FAIL"
            value = "n/a" if check.value is None else f"{check.value:.3f}"
            parts.append(Text(f"    {mark} {check.name}: {value} {check.limit or ''}"))
    if status.online is not None and status.online.decision is not None:
        decision = status.online.decision
        parts.append(Text(f"  online gate ({len(status.online.readings)} reading(s)): {decision.outcome}"))
        for reason in decision.reasons:
            parts.append(Text(f"    {reason}"))
    if status.online is not None and status.online.divergence is not None:
        parts.append(Text(f"  divergence check: {status.online.divergence.message}"))
    if status.decision is not None:
        reasons = "; ".join(status.decision.reasons)
        parts.append(Text(f"  decision: {status.decision.outcome} — {reasons}", style="bold"))
    return Group(*parts)


def render_status(dirs: list[Path]) -> Group:
    statuses = [(d.name, FlywheelGenerationStatus.model_validate_json((d / "status.json").read_text())) for d in dirs]
    return Group(*(render_one(name, status) for name, status in statuses))
