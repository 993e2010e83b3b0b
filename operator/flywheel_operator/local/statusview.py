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
            value = "not measured" if check.value is None else f"{check.value:.3f}"
            spread = f" [{check.interval[0]:.3f}, {check.interval[1]:.3f}]" if check.interval and check.n else ""
            count = f" n={check.n}" if check.n is not None else ""
            parts.append(Text(f"    {mark} {check.name}: {value}{spread}{count} {check.limit or ''}"))
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


def render_reward_models(measured: dict) -> list[Text]:
    """Each reward model's agreement with the oracle next to its quality on held-out logged data and its
    calibration, each with its 95 % interval and where it lies against chance."""
    from flywheel_operator.local.rm_oracle import with_interval

    if not measured.get("models"):
        return []
    lines = [Text(f"  reward models vs the oracle ({measured['pairs']} held-out pairs of the parent's answers):")]
    for name, m in measured["models"].items():
        def fmt(value: float | None, spec: str = ".3f") -> str:
            return "—" if value is None else format(value, spec)

        logged = m["logged"]
        lines.append(
            Text(
                f"    {name} ({m['kind']}): oracle agreement "
                f"{with_interval(m['oracle_agreement'], m['oracle_agreement_interval'])}, {m['oracle_verdict']}; "
                f"held-out logged {logged['measure']} {with_interval(logged['value'], logged['interval'])} "
                f"(n={fmt(m['logged_held_out'], '.0f')}), {logged['verdict']}; calibrated ECE "
                f"{fmt(m['ece_calibrated'])}, trained on {fmt(m['train_examples'], '.0f')}"
            )
        )
    return lines


def render_status(dirs: list[Path]) -> Group:
    from flywheel_operator.local.rm_oracle import read_agreement

    parts = []
    for d in dirs:
        status = FlywheelGenerationStatus.model_validate_json((d / "status.json").read_text())
        parts.append(render_one(d.name, status))
        parts.extend(render_reward_models(read_agreement(d)))
    return Group(*parts)
