"""`flywheel status RUN_DIR`: the status documents of a local run, as `kubectl describe` would show them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flywheel_operator.api import FlywheelGenerationStatus, GateCheck, StageRecord
from flywheel_operator.gate.offline import DISABLED
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
    """The stage's own run time, and before it the time spent preparing its inputs (simulated traffic,
    generation 0) between the planner's request and the start: both are time the user waits."""
    waited = (record.started_at - record.created_at).total_seconds() if record.started_at else 0.0
    before = f" (+{waited:.0f}s inputs)" if waited >= 1 else ""
    if record.started_at is None or record.finished_at is None:
        start = record.started_at or record.created_at
        return f"since {start:%H:%M:%S}{before}"
    return f"{(record.finished_at - record.started_at).total_seconds():.0f}s{before}"


def format_number(value: float) -> str:
    """Counts as integers with thousands separators (5,580, not 5.58e+03); other values with 3 significant
    digits, large ones with separators too."""
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.3g}"


_LIMIT = re.compile(
    r"^(?:in \[(?P<low>[-+0-9.]+), (?P<high>[-+0-9.]+)\]|(?P<op><=|>=) (?P<bound>[-+0-9.]+)(?P<pct>%?))$"
)
LEGACY_DISABLED = frozenset({">= 0.000", "<= 1.000", "in [0.00, 1.00]"})
"""Limits that let every value pass, as status documents written before checks said `disabled` show them."""


def _outside(value: float, limit: str) -> bool:
    """Whether the point estimate lies past the check's limit (the offline gate's limit texts)."""
    match = _LIMIT.match(limit.strip())
    if match is None:
        return False
    if match["low"] is not None:
        return not float(match["low"]) <= value <= float(match["high"])
    bound = float(match["bound"]) / (100 if match["pct"] else 1)
    return value > bound if match["op"] == "<=" else value < bound


def render_check(check: GateCheck) -> str:
    """One offline check: verdict, value and interval in the limit's units, n, limit, and why a point past the
    limit still passes."""
    disabled = check.limit == DISABLED or (check.limit or "") in LEGACY_DISABLED
    percent = check.name.startswith("style-drift.")
    def fmt(x: float) -> str:
        return f"{x:+.1%}" if percent else f"{x:.3f}"

    mark = "off " if disabled else "ok  " if check.passed else "FAIL"
    value = "not measured" if check.value is None else fmt(check.value)
    spread = f" [{fmt(check.interval[0])}, {fmt(check.interval[1])}]" if check.interval and check.n else ""
    count = f" n={check.n:,}" if check.n else ""
    if disabled:
        return f"{mark} {check.name}: {value}{spread}{count} — disabled, not a pass: its limit lets every value through"
    line = f"{mark} {check.name}: {value}{spread}{count}, limit {check.limit or '—'}"
    if check.passed and check.value is not None and check.limit and _outside(check.value, check.limit):
        line += " — passes: the point is past the limit but the interval reaches it (a check fails only when its " \
            "whole 95 % interval is past its limit)"
    elif not check.passed:
        line += " — the whole 95 % interval is past the limit"
    return line


def render_one(name: str, status: FlywheelGenerationStatus) -> Group:
    parts: list = [Text(f"{name}: {status.phase}" + (f" — {status.message}" if status.message else ""), style="bold")]
    if status.policy:
        parts.append(Text(f"  policy {status.policy}"))
    if status.candidate_policy:
        parts.append(Text(f"  candidate {status.candidate_policy}"))
    table = Table("stage", "state", "attempts", "time", "metrics", box=None, pad_edge=False)
    for record in status.stages:
        metrics = ", ".join(f"{k}={format_number(v)}" for k, v in sorted(record.metrics.items())[:5])
        detail = metrics or record.message or ""
        table.add_row(record.name, record.state, str(record.attempts), _duration(record), detail)
    if status.stages:
        parts.append(table)
    band = next((c for c in status.conditions if c.type == "BandTargetReached"), None)  # issue 26
    if band is not None:
        parts.append(Text(f"  RL band: {'target reached' if band.status == 'True' else 'TARGET NOT REACHED'} — "
                          f"{band.message}"))
    if status.offline_gate is not None:
        gate = status.offline_gate
        parts.append(Text(f"  offline gate: {'passed' if gate.passed else 'FAILED'} (value [95 % interval] n; a "
                          "check fails only when its whole interval is past its limit)"))
        for check in gate.checks:
            parts.append(Text(f"    {render_check(check)}"))
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
    from flywheel_local.rm_oracle import with_interval

    if not measured.get("models"):
        return []
    lines = [Text(f"  reward models vs the oracle ({measured['pairs']} held-out pairs of the parent's answers):")]
    for name, m in measured["models"].items():
        def fmt(value: float | None, spec: str = ".3f") -> str:
            return "—" if value is None else format(value, spec)

        logged = m["logged"]
        text_only = with_interval(m.get("text_only_oracle_agreement"), m.get("text_only_oracle_agreement_interval"))
        lines.append(
            Text(
                f"    {name} ({m['kind']}): oracle agreement "
                f"{with_interval(m['oracle_agreement'], m['oracle_agreement_interval'])}, {m['oracle_verdict']}; "
                f"text-only {text_only}; "
                f"held-out logged {logged['measure']} {with_interval(logged['value'], logged['interval'])} "
                f"(n={fmt(m['logged_held_out'], '.0f')}), {logged['verdict']}; calibrated ECE "
                f"{fmt(m['ece_calibrated'])}, trained on {fmt(m['train_examples'], '.0f')}"
            )
        )
    return lines


def render_status(dirs: list[Path]) -> Group:
    from flywheel_local.rm_oracle import read_agreement

    parts = []
    for d in dirs:
        status = FlywheelGenerationStatus.model_validate_json((d / "status.json").read_text())
        parts.append(render_one(d.name, status))
        parts.extend(render_reward_models(read_agreement(d)))
    return Group(*parts)
