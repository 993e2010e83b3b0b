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
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel_operator.api import FlywheelGenerationStatus
from flywheel_sim.oracle import DEFAULT_DRAWS, Lift, Verdict, paired_lift, verdict

from flywheel_local.statusview import generation_dirs

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
    """flywheel_local.rm_oracle's measurement of the reward models."""
    oracle: dict[str, Any] = field(default_factory=dict)
    """{"parent": {...}, "candidate": {...}, "ab_window": {...}} when computed (compute_oracle): each role's
    figures are means over its draws, listed under "draws"; "ab_window" holds the oracle of the A/B as it ran."""

    @property
    def measured(self) -> dict[str, float]:
        decision = self.status.online.decision if self.status.online else None
        return dict(decision.numbers) if decision else {}

    @property
    def promoted(self) -> bool:
        return self.status.phase == "Promoted"

    @property
    def ran_ab(self) -> bool:
        """Whether the candidate reached users (the canary's A/B started)."""
        return self.status.online is not None and self.status.online.started_at is not None

    @property
    def gate_word(self) -> str:
        """The outcome, exactly: `promoted after A/B`, `rolled back after A/B (INCONCLUSIVE)`, `stopped by the
        offline gate`, `failed`, or the phase while the generation is still running."""
        online = self.status.online.decision.outcome if self.status.online and self.status.online.decision else None
        if self.promoted:
            return "promoted after A/B"
        if self.status.phase == "RolledBack" and self.ran_ab:
            return f"rolled back after A/B ({online})" if online else "rolled back after A/B"
        if self.status.phase == "RolledBack":
            return "stopped by the offline gate"
        return self.status.phase.lower()

    @property
    def decided(self) -> bool:
        from flywheel_operator.api import TERMINAL_PHASES

        return self.status.phase in TERMINAL_PHASES and self.status.phase != "Failed"

    def measured_lift(self, key: str) -> tuple[float, float | None, float | None] | None:
        """The canary's relative lift of `key` with its always-valid 95 % interval (None: not measured)."""
        numbers = self.measured
        if f"{key}.lift" not in numbers:
            return None
        return numbers[f"{key}.lift"], numbers.get(f"{key}.lower"), numbers.get(f"{key}.upper")

    def oracle_lift(self, key: str) -> float | None:
        parent, candidate = self.oracle.get("parent", {}), self.oracle.get("candidate", {})
        return candidate[key] / parent[key] - 1 if key in candidate and parent.get(key) else None

    def oracle_lift_interval(self, key: str) -> Lift | None:
        """The oracle's lift of `key` over 7 days with its paired 95 % interval over the draws (no interval from
        an oracle.json of one draw; None when not computed)."""
        parent, candidate = self.oracle.get("parent", {}), self.oracle.get("candidate", {})
        drawn = [d.get(key) for d in parent.get("draws") or []], [d.get(key) for d in candidate.get("draws") or []]
        if len(drawn[0]) >= 2 and len(drawn[0]) == len(drawn[1]) and None not in drawn[0] + drawn[1]:
            try:
                return paired_lift(drawn[0], drawn[1])  # type: ignore[arg-type]
            except ValueError:
                return None
        point = self.oracle_lift(key)
        return None if point is None else Lift(point, None, None, 1)

    def ab_window_lift(self, key: str) -> Lift | None:
        """The oracle's lift of `key` over the days the A/B ran, as it ran (pre-period, arms, exposure): the
        number the measured lift estimates (None when the A/B did not run or breadth is 0 in that window)."""
        draws = self.oracle.get("ab_window", {}).get("draws") or []
        if not draws:
            return None
        try:
            return paired_lift([d["control"][key] for d in draws], [d["treatment"][key] for d in draws])
        except (KeyError, ValueError):
            return None

    @property
    def ab_window_days(self) -> int | None:
        return self.oracle.get("ab_window", {}).get("days")

    @property
    def oracle_verdict(self) -> Verdict | None:
        """"truly better" when depth's 95 % interval lies above 0 and breadth's does not lie below; "truly worse"
        when either lies below 0; otherwise "tie" (flywheel_sim.oracle.verdict). None when not computed."""
        depth, breadth = self.oracle_lift_interval("depth"), self.oracle_lift_interval("breadth")
        return None if depth is None or breadth is None else verdict(depth, breadth)

    @property
    def truly_better(self) -> bool | None:
        """True when truly better, False when truly worse, None for a tie or when not computed."""
        found = self.oracle_verdict
        return None if found in (None, "tie") else found == "truly better"


def band_choice(band: dict[str, Any]) -> str:
    """How the RL band control chose (details["band"]) in a few words; results before issue 26 carry no method
    and kept the earliest checkpoint when none was at or below the target."""
    step, target = int(band["chosen_step"]), band["target"]
    method = band.get("method")
    if method is None:
        within = any(c["win_rate"] <= target for c in band["curve"])
        method = "checkpoint" if within else "not-reached"
    if method == "checkpoint":
        return f"step {step}"
    if method == "interpolation":
        return f"α={band['alpha']:g} toward step {step}"
    kept = f"step {step}" if band.get("alpha", 1.0) >= 1 else f"α={band['alpha']:g} toward step {step}"
    return f"target NOT reached, kept {kept}"


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


def compute_oracle(run_dir: Path, world_file: Path, *, draws: int = DEFAULT_DRAWS, cache_dir: Path | None = None,
                   workers: int | None = None) -> None:
    """Ground-truth engagement of every generation's parent and candidate over `draws` draws of their responses
    (cached in `<gen>/oracle.json`: the means, and every draw for the intervals), the oracle of the A/B over the
    days it ran (`ab_window`), and every reward model's agreement with the oracle (`<gen>/rm_oracle.json`,
    flywheel_local.rm_oracle).

    The models' draws are computed side by side in up to `workers` processes (default: as many as the cores hold
    at the world's `serving.threads`) while the reward models are measured here, and those of models inside
    `cache_dir` (generation 0) are kept there by content (flywheel_local.oracle_runs): the figures are those of
    computing each model here, one after another."""
    from flywheel_sim import load_world
    from flywheel_sim.oracle import ab_window, summarise

    from flywheel_local.canary import PRE_DAYS
    from flywheel_local.oracle_runs import expected_for, wait_for, workers_for
    from flywheel_local.rm_oracle import compute_rm_agreement, prefetch_key

    world = load_world(world_file)
    plans = []
    for directory in generation_dirs(run_dir):
        wait_for(prefetch_key(directory))  # measured while the generation ran (LocalBackend.status_written)
        status = FlywheelGenerationStatus.model_validate_json((directory / "status.json").read_text())
        plans.append(_oracle_plan(directory, status, draws))
    needed = [model for plan in plans for model in plan.needs]
    expected = expected_for(needed, world_file, draws, cache_dir=cache_dir,
                            workers=workers_for(world) if workers is None else workers,
                            alongside=lambda: compute_rm_agreement(run_dir, world_file))
    cache: dict[str, dict[str, Any]] = {}
    for plan in plans:
        result: dict[str, Any] = {}
        for role, model in plan.wanted.items():
            if model is None:
                continue
            if role in plan.current:
                result[role] = plan.known[role]
                continue
            if model not in cache:
                figures = [summarise(world, e, seed=world.seed, draw=d) for d, e in enumerate(expected[model])]
                cache[model] = {"model": model, **{k: sum(f[k] for f in figures) / draws for k in figures[0]},
                                "draws": figures, "samples": draws}
            result[role] = cache[model]
        if plan.ab_design is not None:
            if plan.ab_current:
                result["ab_window"] = plan.known["ab_window"]
            else:
                parent, candidate = plan.wanted["parent"], plan.wanted["candidate"]
                assert parent is not None and candidate is not None
                result["ab_window"] = {**plan.ab_design, "draws": ab_window(
                    world, expected[parent], expected[candidate], days=plan.ab_design["days"],
                    pre_days=PRE_DAYS, max_people=plan.ab_design["people"])}
        (plan.directory / ORACLE_FILE).write_text(json.dumps(result, indent=2) + "\n")


@dataclass
class _OraclePlan:
    """What compute_oracle has to do for one generation: which figures in its oracle.json are current."""

    directory: Path
    known: dict[str, Any]
    wanted: dict[str, str | None]
    current: set[str]
    """Roles whose figures in oracle.json are for this model and number of draws."""
    ab_design: dict[str, Any] | None
    ab_current: bool

    @property
    def needs(self) -> list[str]:
        """Models whose draws must be computed (or read from the cache) for this generation."""
        models = [m for role, m in self.wanted.items() if m is not None and role not in self.current]
        if self.ab_design is not None and not self.ab_current:
            models += [self.ab_design["control_model"], self.ab_design["treatment_model"]]
        return list(dict.fromkeys(models))


def _oracle_plan(directory: Path, status: FlywheelGenerationStatus, draws: int) -> _OraclePlan:
    from flywheel_local.canary import PRE_DAYS

    known = _read_json(directory / ORACLE_FILE)
    wanted = {
        "parent": _model_dir(status.policy, directory),
        "candidate": _model_dir(status.candidate_policy, directory),
    }
    current = {role for role, model in wanted.items() if model is not None
               and known.get(role, {}).get("model") == model and len(known[role].get("draws") or []) == draws}
    ab = _ab_design(directory)
    parent, candidate = wanted["parent"], wanted["candidate"]
    design = None
    if ab is not None and parent is not None and candidate is not None:
        design = {"days": ab[0], "people": ab[1], "pre_days": PRE_DAYS, "control_model": parent,
                  "treatment_model": candidate, "samples": draws}
    old = known.get("ab_window", {})
    ab_current = design is not None and all(old.get(k) == v for k, v in design.items())
    return _OraclePlan(directory, known, wanted, current, design, ab_current)


def _ab_design(generation_dir: Path) -> tuple[int, int | None] | None:
    """(days the canary's A/B ran, its people limit) from `canary/canary.json`; None when no day was revealed."""
    canary = _read_json(generation_dir / "canary" / "canary.json")
    days = canary.get("revealed_days") or 0
    return (int(days), canary.get("people")) if days >= 1 else None


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
def _plots(rows: list[GenerationRow], out: Path, *, oracle: bool = True) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = [r.name for r in rows]
    x = list(range(len(rows)))
    made: list[tuple[str, str]] = []

    def save(fig: Any, file: str, title: str) -> None:
        if not fig.legends:
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
            ax.set_ylim(bottom=0)  # zero-based: a step reads at its true size
            if key != "depth":
                ax.set_ylim(0, 1)
                ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        save(fig, "climb.png", "The climb: the DEPLOYED policy's oracle engagement and instruction following after "
                               "each generation (a candidate that is not promoted leaves it unchanged); y-axes from 0")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5 if oracle else 3.9), sharey=True)
    width = 0.27 if oracle else 0.6
    for ax, key in ((axes[0], "depth"), (axes[1], "breadth")):
        measured = [r.measured_lift(key) for r in rows]
        offset = width if oracle else 0.0
        if oracle:
            for shift, lifts, colour in ((-width, [r.oracle_lift_interval(key) for r in rows], "tab:blue"),
                                         (0.0, [r.ab_window_lift(key) for r in rows], "tab:orange")):
                drawn = [(i + shift, v) for i, v in zip(x, lifts, strict=True) if v is not None]
                ax.bar([i for i, _ in drawn], [v.estimate for _, v in drawn], width, color=colour)
                bars = [(i, v) for i, v in drawn if v.interval is not None]
                if bars:
                    ax.errorbar([i for i, _ in bars], [v.estimate for _, v in bars],
                                yerr=[[v.estimate - v.interval[0] for _, v in bars],  # type: ignore[index]
                                      [v.interval[1] - v.estimate for _, v in bars]],  # type: ignore[index]
                                fmt="none", ecolor="black", capsize=3, lw=1)
        shown = [(i, m) for i, m in zip(x, measured, strict=True) if m is not None]
        ax.bar([i + offset for i, _ in shown], [m[0] for _, m in shown], width, color="tab:green",
               label="measured lift (canary A/B), with its always-valid 95 % interval")
        bars = [(i, m) for i, m in shown if m[1] is not None and m[2] is not None]
        if bars:
            ax.errorbar([i + offset for i, _ in bars], [m[0] for _, m in bars],
                        yerr=[[m[0] - m[1] for _, m in bars], [m[2] - m[0] for _, m in bars]],
                        fmt="none", ecolor="black", capsize=4, lw=1)
        ax.axhline(0, color="grey", lw=0.8)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title(f"{key}: candidate over parent (same y-axis on both panels)", fontsize=9)
        ax.set_xticks(x, [f"{r.name}\n" + textwrap.fill(r.gate_word, 18) for r in rows], fontsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(color="tab:green", label="measured lift (canary A/B), with its always-valid 95 % interval")]
    if oracle:
        handles[:0] = [Patch(color="tab:blue", label="oracle lift over 7 days (the verdict's), 95 % interval"),
                       Patch(color="tab:orange", label="oracle lift over the A/B's days, as it ran (what the "
                                                       "measured lift estimates), 95 % interval")]
    fig.legend(handles=handles, loc="lower center", ncol=1 if oracle else 2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.16 if oracle else 0.08, 1, 1))  # the legend sits below the panels, never over a bar
    title = "Oracle lift next to the lift the canary measured" if oracle else "The lift the canary measured"
    save(fig, "lifts.png", f"{title}, relative to the parent, both panels on one scale (no measured bar: no lift was "
                           "measured, because the candidate never reached users or the A/B ended first)")

    curves = [(r.name, r.band) for r in rows if r.band.get("curve")]
    if curves:  # issue 26: what the band control did, interpolations and a missed target included
        fig, ax = plt.subplots(figsize=(8.5, 3.6))
        for name, band in curves:
            steps = [c["step"] for c in band["curve"]]
            line = ax.plot(steps, [c["win_rate"] for c in band["curve"]], "o-", label=f"{name}: {band_choice(band)}")
            first = steps[0]
            probes = band.get("probes") or []
            if probes:  # an interpolation at α sits at α × the earliest checkpoint's step
                ax.plot([p["alpha"] * first for p in probes], [p["win_rate"] for p in probes], "x",
                        color=line[0].get_color())
            alpha = band.get("alpha", 1.0)
            chosen = next((c for c in band["curve"] if c["step"] == band["chosen_step"]), band["curve"][0])
            ax.plot([alpha * chosen["step"]], [band.get("win_rate", chosen["win_rate"])], "*", ms=12,
                    color=line[0].get_color())
        ax.axhline(curves[-1][1]["target"], color="tab:green", ls="--", lw=1, label="target")
        ax.axhline(rows[-1].band_limits[1], color="tab:red", ls=":", lw=1, label="offline gate's limit")
        ax.set_xlabel("RL step (an interpolation at α: α × the earliest checkpoint's step)")
        ax.set_ylabel("learned-score win rate")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot, not over it
        missed = [name for name, band in curves if band_choice(band).startswith("target NOT reached")]
        save(fig, "band.png", "The band as a control: the pointwise RM's win rate over the parent on its learned part "
                              "(rule features left out, as the offline band reads it) at each RL checkpoint (o); "
                              "the candidate (*) is the latest checkpoint at or below the target, else the parent's "
                              "weights moved toward the earliest checkpoint by the largest bisected α at or below it "
                              "(x: the interpolations measured), else the lowest measured"
                              + (f". Target NOT reached in {', '.join(missed)}" if missed else ""))

    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    for key, label in (("instruction_following", "instruction following"), ("violation_rate", "violation rate")):
        ax.plot(x, [r.eval_metrics.get(key, float("nan")) for r in rows], "o-", label=f"candidate {label}")
        ax.plot(x, [r.eval_metrics.get(f"parent_{key}", float("nan")) for r in rows], "x--", label=f"parent {label}")
    ax.set_ylim(0, 1)
    ax.set_xticks(x, names)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot, not over it
    save(fig, "instructions.png", "Instruction following and violation rate (offline eval)")

    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    for key, label in (("win_rate_user", "user prompts"), ("win_rate_internal", "internal prompts")):
        line = ax.plot(x, [r.eval_metrics.get(key, float("nan")) for r in rows], "o-",
                       label=f"learned-score win rate, {label}")
        if any(f"reward_win_rate_{key[9:]}" in r.eval_metrics for r in rows):  # issue 26: the whole reward's
            ax.plot(x, [r.eval_metrics.get(f"reward_win_rate_{key[9:]}", float("nan")) for r in rows], "x:",
                    color=line[0].get_color(), label=f"whole-reward win rate, {label}")
        if key == "win_rate_user" and any("pairwise_win_rate_user" in r.eval_metrics for r in rows):  # issue 26
            ax.plot(x, [r.eval_metrics.get("pairwise_win_rate_user", float("nan")) for r in rows], "s--",
                    color=line[0].get_color(), mfc="none", label="independent judge (pairwise RM), user prompts")
    if rows:
        low, high = rows[-1].band_limits
        ax.axhspan(low, high, color="tab:green", alpha=0.12, label=f"band [{low:.2f}, {high:.2f}]")
    ax.set_ylim(0, 1)
    ax.set_xticks(x, names)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot, not over it
    save(fig, "win_rates.png", "Pointwise reward model's win rate over the parent against the offline gate's band, "
                               "which reads the learned part (rule features left out); the whole reward's beside it. "
                               "With a pairwise RM (never optimised: the independent judge, □) the band's upper edge "
                               "is the gap to the judge's win rate on the same prompts (at most maxJudgeGap, its "
                               "paired interval), not the shaded max, which decides only without a judge")

    fig, axes = plt.subplots(1, len(STYLE_KEYS), figsize=(13.5, 3.2))
    for ax, key in zip(axes, STYLE_KEYS, strict=True):
        for r in rows:
            found = r.eval_details.get("style_by_stage", {})
            stages = sorted(found, key=lambda name: STAGE_ORDER.index(name) if name in STAGE_ORDER else 99)
            parent = r.eval_details.get("parent_style", {})
            labels = ["parent", *stages]
            values = [parent.get(key, float("nan"))] + [found[s]["style"].get(key, float("nan")) for s in stages]
            ax.plot(labels, values, "o-", label=r.name)
        ax.set_ylim(bottom=0)  # zero-based: a change of 0.4 words on 40 must not look like a swing
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    save(fig, "style.png", "Style artifacts across stages (parent → SFT → RL), per generation; y-axes from 0")
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


def lift_text(lift: Lift | None) -> str:
    """`+4.1 % [+1.2 %, +7.0 %]`, the point alone without an interval, `—` when not computed."""
    if lift is None:
        return "—"
    interval = "" if lift.interval is None else f" [{lift.interval[0]:+.1%}, {lift.interval[1]:+.1%}]"
    return f"{lift.estimate:+.1%}{interval}"


VERDICTS: tuple[Verdict, ...] = ("truly better", "tie", "truly worse")


def _confusion(rows: list[GenerationRow]) -> str:
    """Per generation the gate's decision beside the oracle's verdict (with the lifts' 95 % intervals), and the
    2 × 3 counts: a tie (an interval that holds 0) is counted apart, neither right nor wrong."""
    counts = {(s, v): 0 for s in (True, False) for v in VERDICTS}
    body = []
    for r in rows:
        found = r.oracle_verdict
        decided = r.decided and found is not None
        if decided:
            counts[(r.promoted, found)] += 1  # type: ignore[index]
        right = "—" if not decided else ("tie: either decision" if found == "tie" else
                                         "right" if r.promoted == (found == "truly better") else "WRONG")
        depth = r.oracle_lift_interval("depth")
        draws = "" if depth is None or depth.draws < 2 else f" ({depth.draws} draws)"
        lifts = f"{lift_text(depth)} / {lift_text(r.oracle_lift_interval('breadth'))}{draws}"
        body.append(f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(r.gate_word)}</td>"
                    f"<td>{found or 'not computed'}</td><td>{lifts}</td><td>{right}</td></tr>")
    head = "".join(f"<th>{v}</th>" for v in VERDICTS)
    grid = (
        f"<table><tr><th></th>{head}</tr>"
        + "".join(f"<tr><th>{label}</th>" + "".join(f"<td>{counts[(s, v)]}</td>" for v in VERDICTS) + "</tr>"
                  for s, label in ((True, "promoted"), (False, "not promoted")))
        + "</table>"
    )
    return (
        "<table><tr><th>generation</th><th>outcome</th><th>oracle</th><th>oracle depth / breadth lift, 7 days "
        f"(95 % interval)</th><th>decision</th></tr>{''.join(body)}</table><p>{grid}</p>"
    )


def _reward_model_rows(rows: list[GenerationRow]) -> str:
    """Every reward model's agreement with the oracle next to its quality on held-out logged data and its
    calibration, with 95 % intervals and where each lies against chance."""
    from flywheel_local.rm_oracle import with_interval

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


def _lift_text(row: GenerationRow, key: str) -> str:
    lift = row.measured_lift(key)
    if lift is None:
        return f"{key} not measured"
    value, lower, upper = lift
    interval = f" [{lower:+.1%}, {upper:+.1%}]" if lower is not None and upper is not None else (
        _log_interval_text(row.measured, key))
    return f"{key} {value:+.1%}{interval}"


def _log_interval_text(numbers: dict[str, float], key: str) -> str:
    """The always-valid interval a metric judged on the log scale carries (depth: `depth.log.lower`/`upper`, on
    Δℓ = mean log(1 + depth) treatment − control, section 5 of docs/metrics.md), shown as the relative change
    of a typical user's value, exp(Δℓ) − 1, next to its own point estimate: it is not an interval of the
    relative lift of the mean printed before it. Empty when the decision carries no such interval."""
    lower, upper = numbers.get(f"{key}.log.lower"), numbers.get(f"{key}.log.upper")
    point = numbers.get(f"{key}.log_lift")
    if lower is None or upper is None:
        return ""
    typical = "" if point is None else f"{math.expm1(point):+.1%} "
    return f" (typical user {typical}[{math.expm1(lower):+.1%}, {math.expm1(upper):+.1%}], on the log scale)"


def _headline(rows: list[GenerationRow], *, oracle: bool) -> str:
    """What a reader needs first: each generation's outcome, the measured lift with its interval and, locally,
    whether the oracle agrees."""
    items = []
    for r in rows:
        parts = [f"<b>{html.escape(r.name)}: {html.escape(r.gate_word)}</b>"]
        if r.ran_ab and any(r.measured_lift(k) for k in ("depth", "breadth")):
            parts.append("measured lift " + ", ".join(_lift_text(r, k) for k in ("depth", "breadth"))
                         + " (always-valid 95 % intervals)")
        elif r.ran_ab:
            reasons = r.status.online.decision.reasons if r.status.online and r.status.online.decision else []
            parts.append("the A/B measured no lift" + (f": {html.escape(reasons[0])}" if reasons else ""))
        elif r.status.offline_gate is not None and not r.status.offline_gate.passed:
            parts.append("no user saw it: " + html.escape("; ".join(r.status.offline_gate.reasons)))
        elif r.status.decision is None:
            parts.append(html.escape(r.status.message or "no decision yet"))
        found = r.oracle_verdict if oracle else None
        if found is not None:
            right = "" if not r.decided or found == "tie" else (
                " — the decision was right" if r.promoted == r.truly_better else " — the decision was WRONG")
            parts.append(f"oracle: {found} (depth {lift_text(r.oracle_lift_interval('depth'))}, breadth "
                         f"{lift_text(r.oracle_lift_interval('breadth'))}){right}")
        items.append("<li>" + "; ".join(parts) + "</li>")
    return f'<ul class="headline">{"".join(items)}</ul>'


def source_commit() -> str:
    """The commit of the checkout this code runs from (with `-dirty` for uncommitted changes), if any."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + ("-dirty" if dirty else "")


def _wall_time(status: FlywheelGenerationStatus) -> str:
    """Pipeline wall time (first stage requested to last stage finished) and the A/B's simulated days."""
    starts = [s.created_at for s in status.stages]
    ends = [s.finished_at for s in status.stages if s.finished_at is not None]
    text = f"stages {(max(ends) - min(starts)).total_seconds() / 60:.1f} min" if starts and ends else "stages —"
    online = status.online
    if online is not None and online.started_at is not None and online.decision is not None:
        days = (online.decision.at - online.started_at).total_seconds() / 86400 if online.decision.at else None
        if days is not None:
            text += f", A/B {days:.1f} simulated day(s)"
    return text


def _metadata(run_dir: Path, rows: list[GenerationRow], out: Path) -> str:
    """Commit, seeds, durations, and links to each generation's status.json, events and logs."""
    import os

    run = _read_json(run_dir / "run.json")
    world = run.get("world", "")
    world_seed = _read_world_seed(Path(world)) if world else None
    lines = [
        f"<tr><th>code</th><td>commit {html.escape(str(run.get('commit', 'not recorded (a run before issue 28)')))}"
        f" (report written by {html.escape(source_commit())})</td></tr>",
        f"<tr><th>world</th><td>{html.escape(str(world) or 'not recorded')}"
        + (f", seed {world_seed}" if world_seed is not None else "") + "</td></tr>",
    ]
    if run.get("wallSeconds") is not None:
        lines.append(f"<tr><th>last <code>flywheel run</code></th><td>{float(run['wallSeconds']) / 60:.1f} min wall "
                     "before the report</td></tr>")
    for r in rows:
        directory = run_dir / r.name
        links = []
        for file, label in (("status.json", "status.json"), ("events.log", "events"), ("logs", "stage logs")):
            if (directory / file).exists():
                href = Path(os.path.relpath(directory / file, out)).as_posix()
                links.append(f'<a href="{html.escape(href)}">{label}</a>')
        lines.append(f"<tr><th>{html.escape(r.name)}</th><td>seed {r.number} (stages and simulated traffic), "
                     f"{_wall_time(r.status)}; {' · '.join(links)}</td></tr>")
    return "<table class=\"meta\">" + "".join(lines) + "</table>"


def _read_world_seed(path: Path) -> int | None:
    import yaml

    try:
        seed = yaml.safe_load(path.read_text()).get("seed")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return int(seed) if isinstance(seed, int) else None


ORACLE_NOTE = """<p>The oracle is the simulator's ground truth (hidden preferences of every user); the trainer and the
gates never see it. Its lifts are 7-day expectations over the whole population, each from several draws of both
models' sampled responses compared draw by draw, with a 95 % interval: a candidate is <i>truly better</i> only when
depth's interval lies above 0 (and breadth's not below), <i>truly worse</i> when either lies below 0, and a
<i>tie</i> otherwise; ties are counted apart. Measured lifts are the canary's A/B estimates over the days it ran
(often 2, after a pre-period on the parent): over 2 days breadth (active on both) is a far smaller share than over
7, so the same change in coming back is a several times larger relative lift. The orange bars are the oracle of the
A/B as it ran, the number the measured lift estimates (bench/breadth.py).</p>"""


NO_ORACLE_NOTE = "<p>The simulator's ground truth is left out (<code>--no-oracle</code>): what the gates measured.</p>"


def write_report(run_dir: Path, out: Path | None = None, *, oracle: bool = True) -> Path:
    """Write `out/index.html` (default RUN_DIR/report) with its PNG plots; returns the HTML file's path.

    `oracle=False` (`flywheel report --no-oracle`) leaves out everything the simulator's ground truth says, even
    when an earlier report computed it: what a real deployment's report would show."""
    rows = collect(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}: no generation with a status.json to report on")
    if not oracle:
        for row in rows:
            row.oracle, row.rm_oracle = {}, {}
    out = out or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()  # a plot this report does not make (the climb, without the oracle) must not linger
    plots = _plots(rows, out, oracle=oracle)

    def figure(file: str, title: str) -> str:
        caption = html.escape(title)
        return f'<figure><img src="{file}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'

    leading = ("climb.png", "lifts.png")
    figures_first = "\n".join(figure(f, t) for f, t in plots if f in leading)
    figures = "\n".join(figure(f, t) for f, t in plots if f not in leading)
    oracle_sections = f"""<h2>Was each decision right?</h2>
{_confusion(rows)}
<h2>Reward models against the hidden truth</h2>
{_reward_model_rows(rows)}
""" if oracle else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CharacterFlywheel run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top;text-align:left}}
img{{max-width:100%}}ul.headline{{font-size:17px;line-height:1.5}}</style>
</head><body>
<h1>CharacterFlywheel — local run <code>{html.escape(str(run_dir))}</code></h1>
{_headline(rows, oracle=oracle)}
{figures_first}
{ORACLE_NOTE if oracle else NO_ORACLE_NOTE}
{oracle_sections}<h2>Gate decisions</h2>
<table><tr><th>generation</th><th>phase</th><th>offline gate</th><th>online gate</th><th>reasons</th>
<th>divergence check</th></tr>
{_decision_rows(rows)}
</table>
<h2>Offline metrics and measured lift</h2>
{_metric_rows(rows)}
<h2>Plots</h2>
{figures}
<h2>Run</h2>
{_metadata(run_dir, rows, out)}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
