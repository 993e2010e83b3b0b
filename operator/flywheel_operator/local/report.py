"""`flywheel report RUN_DIR`: one HTML page with PNG plots of a local run, generation by generation.

Plots: oracle and measured engagement per generation (the oracle is the simulator's ground truth, computed
here and never shown to the trainer or the gates), instruction following and violation rate, reward-model win
rates against the offline gate's band, style artifacts across stages, and the gate decisions with reasons.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_operator.local.statusview import generation_dirs

ORACLE_FILE = "oracle.json"
STAGE_ORDER = ("sft", "dpo", "rl")
STYLE_KEYS = ("emoji_rate", "list_rate", "mean_length", "stock_phrase_rate")


@dataclass
class GenerationRow:
    """What the report shows of one generation."""

    name: str
    number: int
    status: FlywheelGenerationStatus
    eval_metrics: dict[str, float] = field(default_factory=dict)
    eval_details: dict[str, Any] = field(default_factory=dict)
    band: tuple[float, float] = (0.5, 0.65)
    oracle: dict[str, dict[str, float]] = field(default_factory=dict)
    """{"parent": oracle(...), "candidate": oracle(...)} when computed."""

    @property
    def measured(self) -> dict[str, float]:
        decision = self.status.online.decision if self.status.online else None
        return dict(decision.numbers) if decision else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def collect(run_dir: Path) -> list[GenerationRow]:
    rows = []
    for directory in generation_dirs(run_dir):
        status = FlywheelGenerationStatus.model_validate_json((directory / "status.json").read_text())
        spec = _read_json(directory / "generation.json").get("spec", {})
        band = spec.get("offlineGate", {}).get("winRateBand", {})
        eval_result = _read_json(directory / "eval" / "result.json")
        rows.append(
            GenerationRow(
                name=directory.name,
                number=int(spec.get("generation", len(rows) + 1)),
                status=status,
                eval_metrics=eval_result.get("metrics", {}),
                eval_details=eval_result.get("details", {}),
                band=(float(band.get("min", 0.5)), float(band.get("max", 0.65))),
                oracle=_read_json(directory / ORACLE_FILE),
            )
        )
    return rows


def compute_oracle(run_dir: Path, world_file: Path) -> None:
    """Ground-truth engagement of every generation's parent and candidate (cached in `<gen>/oracle.json`)."""
    from flywheel_operator.local.users import PredictorPolicy, load_predictor
    from flywheel_sim import load_world, oracle

    world = load_world(world_file)
    cache: dict[str, dict[str, float]] = {}
    for directory in generation_dirs(run_dir):
        status = FlywheelGenerationStatus.model_validate_json((directory / "status.json").read_text())
        known = _read_json(directory / ORACLE_FILE)
        wanted = {
            "parent": _model_dir(status.policy, directory),
            "candidate": _model_dir(status.candidate_policy, directory),
        }
        result = {}
        for role, model in wanted.items():
            if model is None:
                continue
            if known.get(role, {}).get("model") == model:
                result[role] = known[role]
                continue
            if model not in cache:
                policy = PredictorPolicy(load_predictor(f"oracle-{role}", model, world), role)
                cache[model] = {"model": model, **oracle(world, policy)}  # type: ignore[dict-item]
            result[role] = cache[model]
        (directory / ORACLE_FILE).write_text(json.dumps(result, indent=2) + "\n")


def _model_dir(policy: str | None, generation_dir: Path) -> str | None:
    """A policy as a model directory: `sim://` policies as the stages saw them (their saved configs)."""
    if policy is None:
        return None
    if policy.startswith("sim://"):
        for config in sorted((generation_dir / "configs").glob("*.json")):
            policy = json.loads(config.read_text())["policy"]
            break
    return policy if (Path(policy) / "config.json").is_file() else None


# ------------------------------------------------------------------------------------------------ plots
def _plots(rows: list[GenerationRow], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in rows]
    x = list(range(len(rows)))
    made: list[tuple[str, str]] = []

    def save(fig: Any, file: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        made.append((file, title))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "depth", "depth"), (axes[1], "breadth", "breadth")):
        parent = [r.oracle.get("parent", {}).get(key) for r in rows]
        cand = [r.oracle.get("candidate", {}).get(key) for r in rows]
        ax.plot(x, [v if v is not None else float("nan") for v in parent], "o-", label="oracle: parent")
        ax.plot(x, [v if v is not None else float("nan") for v in cand], "s-", label="oracle: candidate")
        lift = [r.measured.get(f"{key}.lift") for r in rows]
        ax2 = ax.twinx()
        ax2.bar(x, [v if v is not None else 0.0 for v in lift], alpha=0.25, color="tab:green", label="measured lift")
        ax2.axhline(0, color="grey", lw=0.5)
        ax2.set_ylabel("measured relative lift (A/B)")
        ax.set_title(label)
        ax.set_xticks(x, names)
        ax.legend(loc="upper left", fontsize=7)
    save(fig, "engagement.png", "Oracle engagement (bars: lift measured by the canary)")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label in (("instruction_following", "instruction following"), ("violation_rate", "violation rate")):
        ax.plot(x, [r.eval_metrics.get(key, float("nan")) for r in rows], "o-", label=f"candidate {label}")
        ax.plot(x, [r.eval_metrics.get(f"parent_{key}", float("nan")) for r in rows], "x--", label=f"parent {label}")
    ax.set_ylim(0, 1)
    ax.set_xticks(x, names)
    ax.legend(fontsize=7)
    save(fig, "instructions.png", "Instruction following and violation rate (offline eval)")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label in (("win_rate_user", "user prompts"), ("win_rate_internal", "internal prompts")):
        ax.plot(x, [r.eval_metrics.get(key, float("nan")) for r in rows], "o-", label=f"RM win rate, {label}")
    if rows:
        low, high = rows[-1].band
        ax.axhspan(low, high, color="tab:green", alpha=0.12, label=f"band [{low:.2f}, {high:.2f}]")
    ax.set_ylim(0, 1)
    ax.set_xticks(x, names)
    ax.legend(fontsize=7)
    save(fig, "win_rates.png", "Reward-model win rate over the parent, against the offline gate's band")

    fig, axes = plt.subplots(1, len(STYLE_KEYS), figsize=(12, 3.2))
    for ax, key in zip(axes, STYLE_KEYS, strict=True):
        for r in rows:
            found = r.eval_details.get("style_by_stage", {})
            stages = sorted(found, key=lambda name: STAGE_ORDER.index(name) if name in STAGE_ORDER else 99)
            parent = r.eval_details.get("parent_style", {})
            labels = ["parent", *stages]
            values = [parent.get(key, float("nan"))] + [found[s]["style"].get(key, float("nan")) for s in stages]
            ax.plot(labels, values, "o-", label=r.name)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    save(fig, "style.png", "Style artifacts across stages (parent → SFT → RL), per generation")
    return made


# ------------------------------------------------------------------------------------------------- html
def _decision_rows(rows: list[GenerationRow]) -> str:
    out = []
    for r in rows:
        s = r.status
        gate = s.offline_gate
        offline = "—" if gate is None else ("passed" if gate.passed else "failed: " + "; ".join(gate.reasons))
        online = s.online.decision.outcome if s.online and s.online.decision else "—"
        decision = s.decision
        reasons = "<br>".join(html.escape(x) for x in decision.reasons) if decision else html.escape(s.message or "")
        divergence = s.online.divergence.message if s.online and s.online.divergence else ""
        out.append(
            f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(s.phase)}</td><td>{html.escape(offline)}</td>"
            f"<td>{html.escape(online)}</td><td>{reasons}</td><td>{html.escape(divergence)}</td></tr>"
        )
    return "\n".join(out)


def _metric_rows(rows: list[GenerationRow]) -> str:
    keys = ("win_rate_user", "win_rate_internal", "instruction_following", "violation_rate", "false_refusal_rate")
    head = "".join(f"<th>{k}</th>" for k in ("generation", *keys, "depth lift", "breadth lift"))
    body = []
    for r in rows:
        cells = [f"{r.eval_metrics[k]:.3f}" if k in r.eval_metrics else "—" for k in keys]
        cells += [f"{r.measured[k]:+.1%}" if k in r.measured else "—" for k in ("depth.lift", "breadth.lift")]
        body.append(f"<tr><td>{html.escape(r.name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write `out/index.html` (default RUN_DIR/report) with its PNG plots; returns the HTML file's path."""
    rows = collect(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}: no generation with a status.json to report on")
    out = out or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(rows, out)
    figures = "\n".join(
        f'<figure><img src="{file}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for file, title in plots
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CharacterFlywheel run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}img{{max-width:100%}}</style>
</head><body>
<h1>CharacterFlywheel — local run <code>{html.escape(str(run_dir))}</code></h1>
<h2>Gate decisions</h2>
<table><tr><th>generation</th><th>phase</th><th>offline gate</th><th>online gate</th><th>reasons</th>
<th>divergence check</th></tr>
{_decision_rows(rows)}
</table>
<h2>Offline metrics and measured lift</h2>
{_metric_rows(rows)}
<h2>Plots</h2>
{figures}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
