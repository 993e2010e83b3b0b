"""`flywheel report RUN_DIR`: one HTML page with PNG plots of a local run, generation by generation.

It leads with the climb: the deployed policy's oracle engagement and instruction following after every
generation (the oracle is the simulator's ground truth, computed here and never shown to the trainer or the
gates), then whether each decision was right (shipped/blocked × truly better/worse by the oracle), the oracle's
lift next to the lift the canary measured on one axis, the reward models against the oracle, the band's RL
checkpoint curve, instruction following, win rates against the band, style artifacts and the gates' reasons.
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
    band_limits: tuple[float, float] = (0.5, 0.65)
    band: dict[str, Any] = field(default_factory=dict)
    """The RL stage's checkpoint choice (details["band"]): target, chosen_step, curve."""
    rm_oracle: dict[str, Any] = field(default_factory=dict)
    """flywheel_operator.local.rm_oracle's measurement of the reward models."""
    oracle: dict[str, dict[str, float]] = field(default_factory=dict)
    """{"parent": oracle(...), "candidate": oracle(...)} when computed."""

    @property
    def measured(self) -> dict[str, float]:
        decision = self.status.online.decision if self.status.online else None
        return dict(decision.numbers) if decision else {}

    @property
    def promoted(self) -> bool:
        return self.status.phase == "Promoted"

    @property
    def gate_word(self) -> str:
        """`shipped`, `blocked`, or the phase while the generation is still running."""
        from flywheel_operator.api import TERMINAL_PHASES

        if self.promoted:
            return "shipped"
        return "blocked" if self.status.phase in TERMINAL_PHASES else self.status.phase.lower()

    def oracle_lift(self, key: str) -> float | None:
        parent, candidate = self.oracle.get("parent", {}), self.oracle.get("candidate", {})
        return candidate[key] / parent[key] - 1 if key in candidate and parent.get(key) else None

    @property
    def truly_better(self) -> bool | None:
        """The oracle's verdict: more depth and no less breadth than the parent (None when not computed)."""
        depth, breadth = self.oracle_lift("depth"), self.oracle_lift("breadth")
        return None if depth is None or breadth is None else depth > 0 and breadth >= 0


def deployed_climb(rows: list[GenerationRow]) -> list[tuple[str, dict[str, float]]]:
    """The deployed policy's oracle numbers at the start and after every generation (a promoted candidate
    replaces it; a blocked one never reaches users)."""
    if not rows or not rows[0].oracle.get("parent"):
        return []
    deployed = rows[0].oracle["parent"]
    climb = [("start", deployed)]
    for r in rows:
        if r.promoted and r.oracle.get("candidate"):
            deployed = r.oracle["candidate"]
        climb.append((r.name, deployed))
    return climb


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
                band_limits=(float(band.get("min", 0.5)), float(band.get("max", 0.65))),
                band=_read_json(directory / "rl" / "result.json").get("details", {}).get("band") or {},
                rm_oracle=_read_json(directory / "rm_oracle.json"),
                oracle=_read_json(directory / ORACLE_FILE),
            )
        )
    return rows


def compute_oracle(run_dir: Path, world_file: Path) -> None:
    """Ground-truth engagement of every generation's parent and candidate (cached in `<gen>/oracle.json`), and
    every reward model's agreement with the oracle (`<gen>/rm_oracle.json`, flywheel_operator.local.rm_oracle)."""
    from flywheel_operator.local.rm_oracle import compute_rm_agreement
    from flywheel_operator.local.users import PredictorPolicy, load_predictor
    from flywheel_sim import load_world, oracle

    compute_rm_agreement(run_dir, world_file)
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
    import matplotlib.ticker

    names = [r.name for r in rows]
    x = list(range(len(rows)))
    made: list[tuple[str, str]] = []

    def save(fig: Any, file: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        made.append((file, title))

    climb = deployed_climb(rows)
    if climb:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        labels = [name for name, _ in climb]
        for ax, key, title in ((axes[0], "depth", "depth (turns per exposed user, 7 days)"),
                               (axes[1], "breadth", "breadth (share engaged, 7 days)"),
                               (axes[2], "compliance", "instruction following (oracle grid)")):
            ax.plot(range(len(climb)), [d.get(key, float("nan")) for _, d in climb], "o-", color="tab:blue")
            ax.set_xticks(range(len(climb)), labels, fontsize=7)
            ax.set_title(title, fontsize=9)
        save(fig, "climb.png", "The climb: the DEPLOYED policy's oracle engagement and instruction following after "
                               "each generation (a blocked candidate leaves it unchanged)")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.38
    for ax, key in ((axes[0], "depth"), (axes[1], "breadth")):
        oracle_lift = [r.oracle_lift(key) for r in rows]
        measured = [r.measured.get(f"{key}.lift") for r in rows]
        ax.bar([i - width / 2 for i in x], [v if v is not None else 0.0 for v in oracle_lift], width,
               label="oracle lift (7-day expectation, whole population)", color="tab:blue")
        ax.bar([i + width / 2 for i in x], [v if v is not None else 0.0 for v in measured], width,
               label="measured lift (canary A/B over its simulated days)", color="tab:green")
        ax.axhline(0, color="grey", lw=0.5)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title(f"{key}: candidate over parent", fontsize=9)
        ax.set_xticks(x, [f"{r.name}\n{r.gate_word}" for r in rows], fontsize=8)
        ax.legend(fontsize=7)
    save(fig, "lifts.png", "Oracle lift next to the lift the canary measured, relative to the parent (one axis; "
                           "no measured bar: the candidate never reached users)")

    curves = [(r.name, r.band) for r in rows if r.band.get("curve")]
    if curves:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, band in curves:
            steps = [c["step"] for c in band["curve"]]
            ax.plot(steps, [c["win_rate"] for c in band["curve"]], "o-", label=f"{name} (chose step "
                    f"{int(band['chosen_step'])})")
        ax.axhline(curves[-1][1]["target"], color="tab:green", ls="--", lw=1, label="target")
        ax.axhline(rows[-1].band_limits[1], color="tab:red", ls=":", lw=1, label="offline gate's limit")
        ax.set_xlabel("RL step")
        ax.set_ylabel("RM win rate over the parent")
        ax.legend(fontsize=7)
        save(fig, "band.png", "The band as a control: RL checkpoints' RM win rate over the parent; the candidate is "
                              "the latest at or below the target")

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
        low, high = rows[-1].band_limits
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


def _confusion(rows: list[GenerationRow]) -> str:
    """Per generation the gate's decision beside the oracle's verdict, and the 2 × 2 counts."""
    counts = {(s, b): 0 for s in (True, False) for b in (True, False)}
    body = []
    for r in rows:
        verdict = {True: "truly better", False: "truly worse", None: "not computed"}[r.truly_better]
        decided = r.gate_word in ("shipped", "blocked") and r.truly_better is not None
        if decided:
            counts[(r.promoted, bool(r.truly_better))] += 1
        right = "—" if not decided else ("right" if r.promoted == r.truly_better else "WRONG")
        lifts = " / ".join(f"{v:+.1%}" if v is not None else "—" for v in (r.oracle_lift("depth"),
                                                                           r.oracle_lift("breadth")))
        body.append(f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(r.gate_word)}</td>"
                    f"<td>{verdict}</td><td>{lifts}</td><td>{right}</td></tr>")
    grid = (
        "<table><tr><th></th><th>truly better</th><th>truly worse</th></tr>"
        f"<tr><th>shipped</th><td>{counts[(True, True)]}</td><td>{counts[(True, False)]}</td></tr>"
        f"<tr><th>blocked</th><td>{counts[(False, True)]}</td><td>{counts[(False, False)]}</td></tr></table>"
    )
    return (
        "<table><tr><th>generation</th><th>gate</th><th>oracle</th><th>oracle depth / breadth lift</th>"
        f"<th>decision</th></tr>{''.join(body)}</table><p>{grid}</p>"
    )


def _reward_model_rows(rows: list[GenerationRow]) -> str:
    """Every reward model's agreement with the oracle next to its quality on held-out logged data and its
    calibration, with 95 % intervals and where each lies against chance."""
    from flywheel_operator.local.rm_oracle import with_interval

    body = []
    for r in rows:
        for name, m in r.rm_oracle.get("models", {}).items():
            def cell(value: float | None, spec: str = ".3f") -> str:
                return "—" if value is None else format(value, spec)

            logged = m["logged"]
            body.append(
                f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(name)} ({html.escape(m['kind'])})</td>"
                f"<td>{with_interval(m['oracle_agreement'], m['oracle_agreement_interval'])} "
                f"(n={r.rm_oracle.get('pairs')}): {m['oracle_verdict']}</td>"
                f"<td>{logged['measure']} {with_interval(logged['value'], logged['interval'])} "
                f"(n={cell(m['logged_held_out'], '.0f')}): {logged['verdict']}</td>"
                f"<td>{cell(m['ece_calibrated'])}</td><td>{cell(m['train_examples'], '.0f')}</td></tr>"
            )
    if not body:
        return "<p>Not measured (run `flywheel report` with the oracle).</p>"
    return (
        "<table><tr><th>generation</th><th>reward model</th><th>oracle agreement (held-out pairs, 95 % interval)</th>"
        "<th>quality on held-out logged data (95 % interval)</th><th>calibrated ECE</th><th>trained on</th></tr>"
        + "".join(body) + "</table>"
    )


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

    def figure(file: str, title: str) -> str:
        caption = html.escape(title)
        return f'<figure><img src="{file}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'

    leading = ("climb.png", "lifts.png")
    figures_first = "\n".join(figure(f, t) for f, t in plots if f in leading)
    figures = "\n".join(figure(f, t) for f, t in plots if f not in leading)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CharacterFlywheel run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}img{{max-width:100%}}</style>
</head><body>
<h1>CharacterFlywheel — local run <code>{html.escape(str(run_dir))}</code></h1>
<p>The oracle is the simulator's ground truth (hidden preferences of every user); the trainer and the gates never
see it. Oracle lifts are 7-day expectations over the whole population; measured lifts are the canary's A/B
estimates over its simulated days for the users on each arm: they measure the same quantities over different
windows and populations, so expect them to agree in sign, not in size.</p>
{figures_first}
<h2>Was each decision right?</h2>
{_confusion(rows)}
<h2>Reward models against the hidden truth</h2>
{_reward_model_rows(rows)}
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
