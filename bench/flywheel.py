"""Does the flywheel climb? A local Flywheel from generation 0, judged by the simulator's oracle.

The chains run through the product path: the Flywheel of examples/local/flywheel.yaml, turned by the same
`plan_flywheel` and local runner as `flywheel run examples/local/flywheel.yaml` (generations gen-1 … gen-5).

    python bench/flywheel.py                       # clean run dirs: the default world, a second world, the trap probe
    python bench/flywheel.py --only default        # one part (parts can run side by side), then:
    python bench/flywheel.py --summarise           # the table and bench/results/flywheel.json from what finished
    python bench/flywheel.py --resume              # continue interrupted runs instead of starting clean
    python bench/flywheel.py --only seed           # the default chain again with another world seed (--seed)
    python bench/flywheel.py --only seed --seed 1 --seed 2 --jobs 2   # two more seeds side by side (the 3-seed mean)
    python bench/flywheel.py --only generated --jobs 2   # the out-of-sample suite: 4 generated worlds, 3 generations

Per generation: the oracle's verdict (truly better: the candidate's oracle depth above its parent's and its
breadth not below), the gate's decision (promoted or blocked, and by which check), the pointwise reward
model's agreement with the oracle on held-out pairs (flywheel_local.rm_oracle), the band's choice of
RL checkpoint, and the lifts measured by the canary next to the oracle's. Summary per world: promoted and truly
better / promoted, truly better and promoted / truly better, the deployed policy's oracle instruction following
(compliance on the oracle's prompt grid) and depth after every generation and at the end, and the wall time of
the run from a clean directory. Targets on the default world (issue 16): every promoted generation truly better,
at least 4 of 5 truly better candidates promoted, deployed instruction following >= 85 %, the pointwise RM's
oracle agreement >= 0.70 by generation 3.

The generated worlds (issue 26, out of sample): `--count` worlds drawn by flywheel_sim.worldgen from seeds
`--world-seed`, `--world-seed`+1, … (characters, segments and trap the project never saw; no setting was tuned on
them), each turned for `--suite-generations` generations (3: the targets read generations 1-3) with the same
manifest; `--jobs 2` runs two worlds side by side, one thread per stage each. Per world the same table as above; over
the worlds each headline figure's mean, standard deviation and range (GENERATED_FIGURES), and the issue's targets
(generated_targets), every input that no code measures yet reported as None ("not measured"), never guessed.

The trap probe: in the default world, unchanged, one generation trained as a team chasing the immediate signal
would train it (TRAP_PROBE_STAGES: pairs that differ in emojis kept, rejection sampling by p(continue) alone, RL
without instruction reward, length or emoji penalty or band, at a higher learning rate). The users of the world
continue more after emojis on the spot and come back less after too many; the probe passes when its candidate
is blocked before users see it (the offline gate) and the oracle agrees it is not better.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "flywheel.json"
DEFAULT_WORLD = ROOT / "examples" / "local" / "world.yaml"
SECOND_WORLD = ROOT / "bench" / "worlds" / "on-topic.yaml"
RUNS = ROOT / "bench" / "runs"
"""Run directories (--runs): default/, on-topic/, trap/ and default-seed<N>/."""
SECOND_SEED = 1
"""The world seed of the default chain's replicate (--seed): new users, traffic and generation 0, same code."""
WALL_FILE = "bench-wall.json"
TRAP_PROBE = "trap-probe"
TRAP_PROBE_STAGES: dict[str, Any] = {
    "curate": {"maxEmojiDifference": 100},
    "sft": {"rejectionSampling": {"samplesPerPrompt": 8, "pointwiseWeight": 0.0, "continueWeight": 1.0,
                                  "instructionWeight": 0.0, "minScoreMargin": 0.0},
            "epochs": 2, "learningRate": 5.0e-4},
    "rl": {"instructionRewardWeight": 0.0, "emojiPenalty": -2.0, "lengthPenalty": 0.0, "checkpointEvery": None,
           "rewardTemperature": 1000.0, "learningRate": 3.0e-4, "klBeta": 0.0, "maxSteps": 48},
}
"""What the trap probe changes in the manifest's stages (merged key by key): RL pays 2.0 per emoji above the
parent's count (the immediate pull the team saw in p(continue)) and nothing else (a reward temperature of 1000
flattens the RM's term to 1/2), with no instruction reward, KL anchor, band or length penalty. Earlier probes in
the same world came out truly better by the oracle, because the RM term also taught the candidate to ask back
(questions: 28 % -> 80 % of responses) while emojis stayed under the world's threshold of 1 per response: without
the emoji pay (+58 % depth, +7.4 % breadth), with 0.5 per emoji for 24 steps (emojis 0.52 -> 0.72 on the
oracle's grid) and with 2.0 per emoji for 32 steps (0.52 -> 0.83). Its SFT learning rate is its own: with the
manifest's 1e-3 (commit cd73408) the probe ended at 0.98 emojis per response on the oracle's grid, just under
the threshold (1.93 at 5e-4), asked back in 83 % of responses, and came out truly better (+55.5 % depth, +4.2 %
breadth)."""
TRAP_PROBE_SIGNAL_EPOCHS = 3.0
"""Epochs of the probe's user-signal models (one is the default), so that p(continue) learns the emoji pull."""


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def first_generation(flywheel: Any) -> Any:
    """The Flywheel's first generation as `plan_flywheel` creates it (the trap probe starts from it)."""
    from datetime import UTC, datetime

    from flywheel_operator.api import FlywheelGeneration
    from flywheel_operator.planner.flywheel import CreateGeneration, plan_flywheel

    (create,) = [a for a in plan_flywheel(flywheel, [], datetime.now(UTC)).actions if isinstance(a, CreateGeneration)]
    return FlywheelGeneration.model_validate(create.body)


def trap_probe(first: Any) -> Any:
    """The trap probe: the first generation's manifest, renamed, with TRAP_PROBE_STAGES merged into its stages."""
    from flywheel_operator.api import FlywheelGeneration

    body = first.model_dump(mode="json", by_alias=True, exclude={"status"}, exclude_none=True)
    body["metadata"]["name"] = TRAP_PROBE
    body["spec"]["stages"] = _merge(body["spec"]["stages"], TRAP_PROBE_STAGES)
    for model in body["spec"]["stages"].get("rewardModels", []):
        if model["kind"] == "user-signal":
            model["epochs"] = TRAP_PROBE_SIGNAL_EPOCHS
    return FlywheelGeneration.model_validate(body)


def truly_better(parent: dict[str, float], candidate: dict[str, float]) -> bool | None:
    """The oracle's verdict: more depth and no less breadth than the parent (None when not computed)."""
    if not parent or not candidate:
        return None
    return candidate["depth"] > parent["depth"] and candidate["breadth"] >= parent["breadth"]


# --- issue 26 (h26o): the oracle's verdict with error bars, and the A/B window's breadth ------------------------
def oracle_columns(generation: Any) -> dict[str, Any]:
    """The oracle's verdict columns of one generation (flywheel_local.report.GenerationRow): the 7-day lifts with
    their paired 95 % intervals over the oracle's draws, the verdict ("truly better", "truly worse" or "tie"),
    and the oracle's lifts over the days the A/B ran beside the measured ones, with whether breadth agrees."""

    def interval(lift: Any) -> list[float] | None:
        return None if lift is None or lift.interval is None else list(lift.interval)

    depth, breadth = generation.oracle_lift_interval("depth"), generation.oracle_lift_interval("breadth")
    ab_depth, ab_breadth = generation.ab_window_lift("depth"), generation.ab_window_lift("breadth")
    numbers = generation.measured
    agree = None
    if ab_breadth is not None and ab_breadth.half_width is not None and "breadth.lift_se" in numbers:
        from flywheel_sim.oracle import CONFIDENCE, lifts_agree
        from scipy import stats

        oracle_se = ab_breadth.half_width / float(stats.t.ppf(0.5 + CONFIDENCE / 2, ab_breadth.draws - 1))
        agree = lifts_agree(numbers["breadth.lift"], numbers["breadth.lift_se"], ab_breadth.estimate, oracle_se)
    return {
        "oracle_verdict": generation.oracle_verdict,
        "oracle_draws": depth.draws if depth is not None else None,
        "oracle_depth_lift_interval": interval(depth),
        "oracle_breadth_lift_interval": interval(breadth),
        "oracle_ab_window_days": generation.ab_window_days,
        "oracle_ab_depth_lift": None if ab_depth is None else ab_depth.estimate,
        "oracle_ab_depth_lift_interval": interval(ab_depth),
        "oracle_ab_breadth_lift": None if ab_breadth is None else ab_breadth.estimate,
        "oracle_ab_breadth_lift_interval": interval(ab_breadth),
        "measured_breadth_lift_se": numbers.get("breadth.lift_se"),
        "breadth_lifts_agree": agree,
    }


def verdict_counts(table: list[dict[str, Any]]) -> dict[str, Any]:
    """Ties counted apart: how many candidates the oracle calls truly better, tie or truly worse, which of each
    were promoted, and in how many generations the measured breadth lift agrees with the oracle's over the A/B's
    days (within their 95 % intervals)."""
    verdicts = ("truly better", "tie", "truly worse")
    judged = [r for r in table if r.get("breadth_lifts_agree") is not None]
    return {
        "oracle_verdicts": {v: sum(r.get("oracle_verdict") == v for r in table) for v in verdicts},
        "promoted_by_verdict": {v: sum(r["promoted"] and r.get("oracle_verdict") == v for r in table)
                                for v in verdicts},
        "ties": [r["generation"] for r in table if r.get("oracle_verdict") == "tie"],
        "breadth_lifts_agree": f"{sum(bool(r['breadth_lifts_agree']) for r in judged)}/{len(judged)}",
    }


def _blocked_by(status: Any) -> str:
    gate = status.offline_gate
    if gate is not None and not gate.passed:
        return "offline: " + ", ".join(c.name for c in gate.checks if not c.passed)
    if status.decision is not None and status.decision.outcome in ("ROLL_BACK", "INCONCLUSIVE"):
        return f"online: {status.decision.outcome}"
    return ""


def rows(run_dir: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per generation of `run_dir` (only those in `names` when given, in that order)."""
    from flywheel_local.report import collect
    from flywheel_local.rm_oracle import read_agreement

    out = []
    generations = collect(run_dir)
    if names is not None:
        by_name = {g.name: g for g in generations}
        generations = [by_name[n] for n in names if n in by_name]
    for generation in generations:
        status = generation.status
        parent, candidate = generation.oracle.get("parent", {}), generation.oracle.get("candidate", {})

        def lift(key: str, p: dict = parent, c: dict = candidate) -> float | None:
            return c[key] / p[key] - 1 if key in c and p.get(key) else None

        m = generation.eval_metrics
        agreement = read_agreement(run_dir / generation.name)
        rl = json.loads((run_dir / generation.name / "rl" / "result.json").read_text()) \
            if (run_dir / generation.name / "rl" / "result.json").is_file() else {}
        out.append(
            {
                "generation": generation.name,
                "phase": status.phase,
                "decision": status.decision.outcome if status.decision else None,
                "promoted": status.phase == "Promoted",
                "truly_better": generation.truly_better,  # None: a tie (counted apart) or no oracle
                "reasons": list(status.decision.reasons) if status.decision else [],
                "blocked_by": _blocked_by(status),
                "oracle_breadth_lift": lift("breadth"),
                "oracle_depth_lift": lift("depth"),
                "oracle_instruction_following_parent": parent.get("compliance"),
                "oracle_instruction_following_candidate": candidate.get("compliance"),
                "oracle_emoji_rate_candidate": candidate.get("emoji_rate"),
                "oracle_parent": parent,
                "oracle_candidate": candidate,
                "measured_depth_lift": generation.measured.get("depth.lift"),
                "measured_breadth_lift": generation.measured.get("breadth.lift"),
                "rm_oracle_agreement": {k: v["oracle_agreement"] for k, v in agreement.get("models", {}).items()},
                "rm_oracle_agreement_interval": {
                    k: v["oracle_agreement_interval"] for k, v in agreement.get("models", {}).items()
                },
                "rm_logged_accuracy": {k: v["logged_accuracy"] for k, v in agreement.get("models", {}).items()},
                "rm_logged_quality": {k: v["logged"] for k, v in agreement.get("models", {}).items()},
                "rm_train_examples": {k: v["train_examples"] for k, v in agreement.get("models", {}).items()},
                "rm_oracle_pairs": agreement.get("pairs"),
                TEXT_ONLY_AGREEMENT: {k: v[TEXT_ONLY_AGREEMENT_FIELD] for k, v in agreement.get("models", {}).items()
                                      if v.get(TEXT_ONLY_AGREEMENT_FIELD) is not None},
                "band": rl.get("details", {}).get("band") or {},
                "instruction_following_eval": m.get("instruction_following"),
                "win_rate_user": m.get("win_rate_user"),
                "win_rate_user_n": m.get("win_rate_user_n"),
                "win_rate_internal": m.get("win_rate_internal"),
                "emoji_rate": m.get("style_emoji_rate"),
                "parent_emoji_rate": m.get("parent_style_emoji_rate"),
                "measured": generation.measured,
                **oracle_columns(generation),
            }
        )
    return out


def summary(table: list[dict[str, Any]]) -> dict[str, Any]:
    """Decision quality and the deployed policy's climb of one chain."""
    promoted = [r for r in table if r["promoted"]]
    better = [r for r in table if r["truly_better"]]
    judged = [r for r in table if r["truly_better"] is not None]
    deployed = table[0]["oracle_parent"] if table else {}
    climb = []
    for r in table:
        if r["promoted"] and r["oracle_candidate"]:
            deployed = r["oracle_candidate"]
        climb.append({"after": r["generation"], "instruction_following": deployed.get("compliance"),
                      "depth": deployed.get("depth"), "breadth": deployed.get("breadth")})
    agreement = {r["generation"]: r["rm_oracle_agreement"].get("pointwise") for r in table}
    return {
        "generations_finished": len(table),
        "promoted": [r["generation"] for r in promoted],
        "truly_better": [r["generation"] for r in better],
        "promoted_and_truly_better": f"{sum(bool(r['truly_better']) for r in promoted)}/{len(promoted)}",
        "truly_better_and_promoted": f"{sum(r['promoted'] for r in better)}/{len(better)}",
        "confusion": {
            "shipped_better": sum(r["promoted"] and bool(r["truly_better"]) for r in judged),
            "shipped_worse": sum(r["promoted"] and not r["truly_better"] for r in judged),
            "blocked_better": sum(not r["promoted"] and bool(r["truly_better"]) for r in judged),
            "blocked_worse": sum(not r["promoted"] and not r["truly_better"] for r in judged),
        },
        "deployed_start": {"instruction_following": table[0]["oracle_parent"].get("compliance"),
                           "depth": table[0]["oracle_parent"].get("depth")} if table else {},
        "deployed_end": climb[-1] if climb else {},
        "climb": climb,
        "pointwise_rm_oracle_agreement": agreement,
        "pointwise_rm_oracle_agreement_interval": {
            r["generation"]: r["rm_oracle_agreement_interval"].get("pointwise") for r in table
        },
        **verdict_counts(table),
    }


def targets(
    default: dict[str, Any] | None,
    generated: dict[str, dict[str, Any]] | None = None,
    default_rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The targets: issue 16's on the default world's chain summary (`default`), and issue 26's over the
    generated worlds (`generated`: label -> {"rows", "summary"}) and every world's first three generations.

    A target is True or False when measured, None when an input is missing (fewer generations than it reads, or a
    row key no code fills yet): never a guess."""
    out: dict[str, Any] = {}
    if default is not None:
        shipped_worse = default["confusion"]["shipped_worse"]
        better = len(default["truly_better"])
        better_promoted = default["confusion"]["shipped_better"]
        agreement = default["pointwise_rm_oracle_agreement"]
        first_three = [agreement[n] for n in list(agreement)[:3]]
        end = default["deployed_end"].get("instruction_following")
        out.update({
            "every_promoted_truly_better": shipped_worse == 0,
            "at_least_4_of_5_truly_better_promoted": better_promoted >= min(4, better) if better >= 4 else None,
            "truly_better_promoted": f"{better_promoted}/{better}",
            "deployed_instruction_following_at_least_85": end is not None and end >= 0.85,
            "deployed_instruction_following_end": end,
            # every one of generations 1-3, not the best of them (issue 26, problem 6)
            "rm_oracle_agreement_at_least_70_by_generation_3": at_least_at_first_three(first_three, 0.70),
            "rm_oracle_agreement_first_three": first_three,
        })
    tables = {label: world["rows"] for label, world in (generated or {}).items()}
    if default_rows is not None:
        tables = {"default": default_rows, **tables}
    if tables:
        per_world = {label: at_least_at_first_three([text_only_agreement(r) for r in table[:3]], TEXT_ONLY_TARGET)
                     for label, table in tables.items()}
        out["text_only_rm_oracle_agreement_at_least_65_at_generations_1_3_in_every_world"] = _all_known(
            list(per_world.values()))
        out["text_only_rm_oracle_agreement_at_least_65_per_world"] = per_world
    if generated:
        out["generated_worlds"] = generated_targets(generated)
    return out


TEXT_ONLY_TARGET = 0.65
"""Issue 26: the reward model's learned (text-only) part agrees with the oracle on >= 65 % of pairs."""
TEXT_ONLY_AGREEMENT = "rm_text_only_oracle_agreement"
"""Row key: {reward model: oracle agreement of its text-only part} (rows() copies it from rm_oracle.json)."""
TEXT_ONLY_AGREEMENT_FIELD = "text_only_oracle_agreement"
"""The per-model field of rm_oracle.json (flywheel_local.rm_oracle) that rows() copies under TEXT_ONLY_AGREEMENT."""
TEXT_ONLY_MODEL = "pointwise"
"""The reward model whose text-only agreement the target reads (the one the report's selection uses)."""
ORACLE_DEPTH_INTERVAL = "oracle_depth_lift_interval"
"""Row key: [low, high], the 95 % interval of the oracle's depth lift over the parent (the verdict's interval)."""
ORACLE_BREADTH_INTERVAL = "oracle_ab_breadth_lift_interval"
"""Row key: [low, high], the 95 % interval of the oracle's breadth lift over the days the A/B ran (the quantity the
canary measures; the 7-day breadth is another one, bench/results/breadth.json)."""
BAND_CHECK = "win-rate-band"
"""The offline gate's band check (flywheel_operator.gate.offline)."""
CLEARLY_BETTER_PROMOTED = 0.80
DEPLOYED_INSTRUCTION_FOLLOWING = 0.85
WORLDS_SHARE = 0.75
"""'In at least 3 of 4 generated worlds': the share of worlds a per-world target must hold in."""
BREADTH_AGREEMENT = 0.90


def at_least_at_first_three(values: list[float | None], limit: float) -> bool | None:
    """Whether each of generations 1-3 reaches `limit`: all of them, not the best (False as soon as one measured
    value misses; None while one of the three is not measured)."""
    first = values[:3]
    if any(v is not None and v < limit for v in first):
        return False
    return None if len(first) < 3 or None in first else True


def _all_known(verdicts: list[bool | None]) -> bool | None:
    """False when any is False, None when none is False but one is unknown, else True."""
    if any(v is False for v in verdicts):
        return False
    return None if any(v is None for v in verdicts) or not verdicts else True


def text_only_agreement(row: dict[str, Any]) -> float | None:
    """The text-only oracle agreement of TEXT_ONLY_MODEL in one row (None: not measured)."""
    value = row.get(TEXT_ONLY_AGREEMENT)
    return value.get(TEXT_ONLY_MODEL) if isinstance(value, dict) else value


def _interval(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    value = row.get(key)
    return (float(value[0]), float(value[1])) if value is not None and None not in value else None


def measured_breadth_interval(row: dict[str, Any]) -> tuple[float, float] | None:
    """The canary's always-valid 95 % interval of the breadth lift (None: no A/B measured it)."""
    measured = row.get("measured") or {}
    low, high = measured.get("breadth.lower"), measured.get("breadth.upper")
    return None if low is None or high is None else (float(low), float(high))


def deployed_traits(table: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The deployed policy's oracle rates at the start and after the chain (a promoted candidate replaces it)."""
    if not table:
        return {}
    start = table[0].get("oracle_parent") or {}
    end = start
    for r in table:
        if r["promoted"] and r.get("oracle_candidate"):
            end = r["oracle_candidate"]
    keys = ("compliance", "persona_rate", "on_topic_rate", "question_rate", "emoji_rate", "mean_words", "depth",
            "breadth")
    return {"start": {k: start.get(k) for k in keys}, "end": {k: end.get(k) for k in keys}}


def _rises(traits: dict[str, dict[str, float | None]], key: str) -> bool | None:
    before, after = traits.get("start", {}).get(key), traits.get("end", {}).get(key)
    return None if before is None or after is None else after > before


def _in_worlds(verdicts: list[bool | None]) -> dict[str, Any]:
    """A per-world target over the generated worlds: met in at least WORLDS_SHARE of them (3 of 4), judged on at
    least 4 worlds. A world not measured counts neither way: the verdict is None while it could still decide it."""
    known = [v for v in verdicts if v is not None]
    met, unknown = sum(known), len(verdicts) - len(known)
    needed = math.ceil(WORLDS_SHARE * len(verdicts))
    verdict = None if len(verdicts) < 4 else True if met >= needed else False if met + unknown < needed else None
    return {"met": verdict, "worlds": f"{met}/{len(verdicts)}", "unknown": unknown}


def generated_targets(worlds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 26's targets over the generated worlds (label -> {"rows", "summary"}).

    The oracle verdicts read ORACLE_DEPTH_INTERVAL (clearly better: the interval above 0; below 0: under it); the
    breadth check reads ORACLE_BREADTH_INTERVAL against the canary's measured interval (they agree when the two
    intervals overlap). A target whose inputs are missing in any row it needs is None, with the count missing."""
    rows = [r for world in worlds.values() for r in world["rows"]]
    judged = [r for r in rows if r.get("truly_better") is not None or r.get(ORACLE_DEPTH_INTERVAL) is not None]
    intervals = {id(r): _interval(r, ORACLE_DEPTH_INTERVAL) for r in judged}
    without = sum(v is None for v in intervals.values())
    promoted = [r for r in judged if r["promoted"]]
    below = [r["generation"] for r in promoted if intervals[id(r)] is not None and intervals[id(r)][1] < 0]
    clearly = [r for r in judged if intervals[id(r)] is not None and intervals[id(r)][0] > 0]
    clearly_promoted = sum(r["promoted"] for r in clearly)
    band_only = [r["generation"] for r in clearly if not r["promoted"] and r["blocked_by"] == f"offline: {BAND_CHECK}"]
    complete = without == 0 and bool(judged)

    following = [(w["summary"].get("deployed_end") or {}).get("instruction_following") for w in worlds.values()]
    traits = [deployed_traits(w["rows"]) for w in worlds.values()]
    persona_or_topic = []
    for t in traits:
        rises = [_rises(t, "persona_rate"), _rises(t, "on_topic_rate")]
        persona_or_topic.append(True if True in rises else None if None in rises else False)

    breadth = []
    for r in rows:
        measured = measured_breadth_interval(r)
        if measured is None:
            continue  # no A/B: nothing measured to compare
        oracle = _interval(r, ORACLE_BREADTH_INTERVAL)
        breadth.append(None if oracle is None else measured[0] <= oracle[1] and oracle[0] <= measured[1])
    breadth_known = [b for b in breadth if b is not None]
    return {
        "worlds": len(worlds),
        "generations": len(rows),
        "rows_without_oracle_interval": without,
        "no_promoted_candidate_with_oracle_interval_below_0": (not below) if complete else None,
        "promoted_with_oracle_interval_below_0": below if complete else None,
        "clearly_better_promoted_at_least_80": (clearly_promoted >= CLEARLY_BETTER_PROMOTED * len(clearly))
        if complete and clearly else None,
        "clearly_better_promoted": f"{clearly_promoted}/{len(clearly)}" if complete else None,
        "band_never_the_only_reason_a_clearly_better_candidate_is_stopped": (not band_only) if complete else None,
        "clearly_better_stopped_by_the_band_alone": band_only if complete else None,
        "deployed_instruction_following_at_least_85_in_3_of_4": _in_worlds(
            [None if f is None else f >= DEPLOYED_INSTRUCTION_FOLLOWING for f in following]),
        "deployed_instruction_following_end": following,
        "persona_or_on_topic_rises_in_3_of_4": _in_worlds(persona_or_topic),
        "deployed_traits": {label: t for label, t in zip(worlds, traits, strict=True)},
        "breadth_lifts_agree_in_90_percent": (sum(breadth_known) >= BREADTH_AGREEMENT * len(breadth))
        if breadth and len(breadth_known) == len(breadth) else None,
        "breadth_lifts_agree": f"{sum(breadth_known)}/{len(breadth_known)}" if breadth_known else None,
        "breadth_generations_without_oracle_interval": len(breadth) - len(breadth_known),
    }


# ------------------------------------------------------------------------------ the generated-worlds suite
GENERATED_SEED = 112
"""The first generated world's seed (--world-seed); the suite's worlds are seeds 112, 113, 114, 115. Seeds 100-111
are development worlds: settings were chosen on them (issue 26: instruction following on 100-107, the reward
models' lexical head on 100-111), so they are in sample."""
DEVELOPMENT_WORLD_SEEDS = range(100, 112)
"""Generated worlds whose oracle figures settings were chosen on: no longer out of sample."""
GENERATED_COUNT = 4
GENERATED_GENERATIONS = 3
"""Generations per generated world (--suite-generations): the targets read generations 1-3, and 3 keep four worlds
inside about an hour on 2 cores with --jobs 2 (about 50 min estimated; 5 would take about 1.3 h)."""
SUITE_POWER = (
    "3 generations per world instead of 5: 12 candidates over 4 worlds instead of 20, so the share of clearly better "
    "candidates promoted rests on about 8-12 of them (one miss moves it by 8-12 points), and the late, small lifts "
    "(the generations where verdicts were close on the default world) are not tested. 4 worlds: a per-world target "
    "'in 3 of 4' turns on one world, and a mean over 4 worlds carries a t-interval of about +-1.6 standard "
    "deviations (3 degrees of freedom). Users per world are the default world's 10,000, so each A/B keeps its power."
)
"""What the suite's size costs in power (bench/results/flywheel.json, generated.power)."""
GENERATED_FIGURES: tuple[str, ...] = (
    "deployed_instruction_following_end",
    "deployed_instruction_following_gain",
    "deployed_depth_lift",
    "deployed_breadth_lift",
    "deployed_persona_change",
    "deployed_on_topic_change",
    "promoted_share",
    "promoted_truly_better_share",
    "truly_better_promoted_share",
    "pointwise_rm_oracle_agreement_gen1_3",
    "text_only_rm_oracle_agreement_gen1_3",
    "wall_minutes",
)
"""The headline figures of one generated world, aggregated over the worlds with mean and spread."""


def generated_label(seed: int) -> str:
    """The run directory name and table label of the generated world of `seed`."""
    return f"generated-{seed}"


def generated_world_file(seed: int, folder: Path) -> Path:
    return folder / "worlds" / f"{generated_label(seed)}.yaml"


def generated_world(seed: int, folder: Path) -> Path:
    """The world file of `seed` under `folder`/worlds/, written by flywheel_sim.worldgen (rewritten only when its
    content changed, so a resumed run keeps its cached generation 0)."""
    from flywheel_sim.worldgen import generate_world, world_yaml

    path = generated_world_file(seed, folder)
    text = world_yaml(*generate_world(seed))
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def world_figures(table: list[dict[str, Any]], chain: dict[str, Any], wall: dict[str, Any] | None) -> dict[str, Any]:
    """GENERATED_FIGURES of one world's chain (None where not measured)."""
    traits = deployed_traits(table)
    start, end = traits.get("start", {}), traits.get("end", {})

    def change(key: str, relative: bool = False) -> float | None:
        before, after = start.get(key), end.get(key)
        if before is None or after is None or (relative and not before):
            return None
        return after / before - 1 if relative else after - before

    promoted = [r for r in table if r["promoted"]]
    judged_promoted = [r for r in promoted if r["truly_better"] is not None]
    better = [r for r in table if r["truly_better"]]
    pointwise = [r["rm_oracle_agreement"].get("pointwise") for r in table[:3]]
    text_only = [text_only_agreement(r) for r in table[:3]]
    return {
        "deployed_instruction_following_end": end.get("compliance"),
        "deployed_instruction_following_gain": change("compliance"),
        "deployed_depth_lift": change("depth", relative=True),
        "deployed_breadth_lift": change("breadth", relative=True),
        "deployed_persona_change": change("persona_rate"),
        "deployed_on_topic_change": change("on_topic_rate"),
        "promoted_share": len(promoted) / len(table) if table else None,
        "promoted_truly_better_share": (sum(bool(r["truly_better"]) for r in judged_promoted) / len(judged_promoted)
                                        if judged_promoted else None),
        "truly_better_promoted_share": sum(r["promoted"] for r in better) / len(better) if better else None,
        "pointwise_rm_oracle_agreement_gen1_3": _mean([v for v in pointwise if v is not None])
        if len(pointwise) == 3 and None not in pointwise else None,
        "text_only_rm_oracle_agreement_gen1_3": _mean([v for v in text_only if v is not None])
        if len(text_only) == 3 and None not in text_only else None,
        "wall_minutes": round(wall["wall_seconds"] / 60, 1) if wall else None,
    }


def spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (n-1), minimum and maximum of the measured values; `missing` counts the
    None ones (never averaged as 0)."""
    known = [float(v) for v in values if v is not None]
    n = len(known)
    mean = _mean(known)
    sd = (sum((v - mean) ** 2 for v in known) / (n - 1)) ** 0.5 if n >= 2 and mean is not None else None
    return {"n": n, "missing": len(values) - n, "mean": mean, "sd": sd,
            "min": min(known) if known else None, "max": max(known) if known else None}


def aggregate(figures: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each of GENERATED_FIGURES over the worlds (label -> world_figures)."""
    return {name: spread([f.get(name) for f in figures.values()]) for name in GENERATED_FIGURES}


def _figure_text(name: str, value: float | None) -> str:
    if value is None:
        return "—"
    if name == "wall_minutes":
        return f"{value:.1f}"
    if name.endswith(("_change", "_gain", "_lift")):
        return f"{value:+.1%}"
    if "agreement" in name:
        return f"{value:.3f}"
    return f"{value:.1%}"


def print_suite(result: dict[str, Any]) -> None:
    """One line per generated world, then each headline figure's mean ± s.d. [min, max] over the worlds."""
    print(f"\n== generated worlds (seeds {', '.join(map(str, result['seeds']))}; {result['generations']} generations "
          "each; out of sample)")
    for label, world in result["worlds"].items():
        d = world["description"]
        segments = ", ".join(f"{s['name']} {s['share']:.0%} ({s['favourite']} most)" for s in d["segments"])
        f = world["figures"]
        print(f"{label}: {len(d['characters'])} characters; {segments}; trap threshold {d['trap_threshold']}; "
              f"promoted {world['summary']['promoted_and_truly_better']} truly better; instruction following "
              f"{_figure_text('x', world['summary']['deployed_start'].get('instruction_following'))} -> "
              f"{_figure_text('x', f['deployed_instruction_following_end'])}; depth "
              f"{_figure_text('deployed_depth_lift', f['deployed_depth_lift'])}")
    print(f"{'figure':<40} {'n':>2} {'mean':>8} {'s.d.':>8} {'min':>8} {'max':>8}")
    for name, s in result["aggregate"].items():
        sd = "—" if s["sd"] is None else _figure_text(name, s["sd"]).lstrip("+")
        print(f"{name:<40} {s['n']:>2} {_figure_text(name, s['mean']):>8} {sd:>8} "
              f"{_figure_text(name, s['min']):>8} {_figure_text(name, s['max']):>8}")


def summarise_chain(run_dir: Path, names: list[str], world_file: Path) -> dict[str, Any]:
    """One finished (or stopped) chain: the oracle computed, its rows and summary, its wall time and its report."""
    from flywheel_local.report import compute_oracle, write_report

    compute_oracle(run_dir, world_file)
    table = rows(run_dir, names)
    wall = json.loads((run_dir / WALL_FILE).read_text()) if (run_dir / WALL_FILE).is_file() else None
    shown = world_file.relative_to(ROOT) if world_file.is_relative_to(ROOT) else world_file
    return {"world": str(shown), "rows": table, "summary": summary(table), "wall": wall,
            "report": str(write_report(run_dir)), "finished": wall is not None}


def summarise_generated(seeds: list[int], generations: int) -> dict[str, Any] | None:
    """The generated worlds' results (those with a finished or started chain under RUNS), or None when none ran."""
    from flywheel_sim import load_world
    from flywheel_sim.worldgen import describe

    worlds: dict[str, Any] = {}
    for seed in seeds:
        label, world_file = generated_label(seed), generated_world_file(seed, RUNS)
        run_dir = RUNS / label
        names = _chain_names(run_dir)
        if not names or not world_file.is_file():
            continue
        chain = summarise_chain(run_dir, names, world_file)
        table, shown = chain["rows"], chain["world"]
        worlds[label] = {**chain, "description": describe(load_world(world_file)),
                         "figures": world_figures(table, chain["summary"], chain["wall"])}
        print_table(f"{label} (generated world {shown})", table, chain["summary"])
    if not worlds:
        return None
    result = {"seeds": seeds, "generations": generations, "worlds": worlds,
              "aggregate": aggregate({label: w["figures"] for label, w in worlds.items()}), "power": SUITE_POWER}
    print_suite(result)
    return result


def run_side_by_side(commands: dict[str, list[str]], jobs: int) -> int:
    """Run each labelled command in its own process, `jobs` at a time, each writing RUNS/<label>.log. Returns the
    number of commands that failed."""
    import subprocess

    waiting, running, failed = list(commands), [], 0
    while waiting or running:
        while waiting and len(running) < jobs:
            label = waiting.pop(0)
            log = RUNS / f"{label}.log"
            print(f"{label}: started, log {log}", flush=True)
            with log.open("w", encoding="utf-8") as handle:
                running.append((label, subprocess.Popen(commands[label], stdout=handle, stderr=subprocess.STDOUT)))
        time.sleep(5)
        for label, process in list(running):
            if process.poll() is not None:
                running.remove((label, process))
                failed += process.returncode != 0
                print(f"{label}: finished (exit {process.returncode})", flush=True)
    return failed


def _child_command(*part: str, manifest: Path, cache: Path, cpus: int | None, resume: bool) -> list[str]:
    """This script run for one chain of a part, in a child process (no summary)."""
    return [sys.executable, str(Path(__file__).resolve()), *part, "--no-summary", "--runs", str(RUNS),
            "--cache-dir", str(cache), "--manifest", str(manifest), "--jobs", "1",
            *(["--cpus", str(cpus)] if cpus else []), *(["--resume"] if resume else [])]


def run_generated(
    seeds: list[int], generations: int, *, manifest: Path, first: Any, cache: Path, resume: bool, cpus: int | None,
    jobs: int,
) -> int:
    """Turn each generated world's chain: in this process (jobs 1) or `jobs` worlds side by side, each in its own
    process writing RUNS/generated-<seed>.log. Returns the number of worlds whose chain failed."""
    files = {seed: generated_world(seed, RUNS) for seed in seeds}
    if jobs <= 1:
        for seed in seeds:
            _run_chain(RUNS / generated_label(seed), files[seed], first, generations, cache, resume, cpus)
        return 0
    return run_side_by_side({generated_label(seed): _child_command(
        "--only", "generated", "--world-seed", str(seed), "--count", "1", "--suite-generations", str(generations),
        manifest=manifest, cache=cache, cpus=cpus, resume=resume) for seed in seeds}, jobs)


def run_seeds(
    seeds: list[int], generations: int, *, manifest: Path, first: Any, cache: Path, resume: bool, cpus: int | None,
    jobs: int,
) -> int:
    """The default world's chain again at each world seed in `seeds` (part 'seed'): one after the other, or `jobs`
    side by side. Returns the number of chains that failed."""
    if jobs <= 1:
        for seed in seeds:
            world = seeded_world(DEFAULT_WORLD, seed, RUNS)
            _run_chain(RUNS / seed_label(seed), world, first, generations, cache, resume, cpus)
        return 0
    return run_side_by_side({seed_label(seed): _child_command(
        "--only", "seed", "--seed", str(seed), "--generations", str(generations),
        manifest=manifest, cache=cache, cpus=cpus, resume=resume) for seed in seeds}, jobs)


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def print_table(title: str, table: list[dict[str, Any]], chain: dict[str, Any]) -> None:
    print(f"\n== {title}")
    head = (f"{'gen':<11} {'decision':<12} {'truly':>6} {'o.depth':>8} {'m.depth':>8} {'o.bread':>8} "
            f"{'m.bread':>8} {'o.IF':>6} {'RM-or':>6} {'WR':>6} {'band':>5}  blocked by")
    print(head)
    print("-" * len(head))
    for r in table:
        verdict = {"truly better": "better", "truly worse": "worse", "tie": "tie"}.get(r.get("oracle_verdict"), "?")
        agreement = r["rm_oracle_agreement"].get("pointwise")
        step = r["band"].get("chosen_step")
        print(
            f"{r['generation']:<11} {r['decision'] or r['phase']:<12} {verdict:>6} "
            f"{_pct(r['oracle_depth_lift'], True):>8} {_pct(r['measured_depth_lift'], True):>8} "
            f"{_pct(r['oracle_breadth_lift'], True):>8} {_pct(r['measured_breadth_lift'], True):>8} "
            f"{_pct(r['oracle_instruction_following_candidate']):>6} "
            f"{'—' if agreement is None else f'{agreement:.2f}':>6} {_pct(r['win_rate_user']):>6} "
            f"{'—' if step is None else int(step):>5}  {r['blocked_by']}"
        )
    if chain:
        if "oracle_verdicts" in chain:
            print(f"oracle verdicts (95 % intervals): {chain['oracle_verdicts']}, promoted: "
                  f"{chain['promoted_by_verdict']}; measured breadth lift agrees with the oracle's over the A/B's "
                  f"days: {chain['breadth_lifts_agree']}")
        end = chain["deployed_end"]
        print(f"promoted and truly better: {chain['promoted_and_truly_better']}; truly better and promoted: "
              f"{chain['truly_better_and_promoted']}; deployed instruction following "
              f"{_pct(chain['deployed_start'].get('instruction_following'))} -> "
              f"{_pct(end.get('instruction_following'))}, depth {chain['deployed_start'].get('depth', 0):.2f} -> "
              f"{end.get('depth') or 0:.2f}")


def _run_chain(
    run_dir: Path, world: Path, first: Any, generations: int, cache: Path, resume: bool, cpus: int | None = None
) -> None:
    from flywheel_local.flywheel import FlywheelRunner
    from flywheel_local.progress import Display
    from flywheel_local.report import compute_oracle
    from flywheel_local.runner import Runner

    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.time()
    wall_file = run_dir / WALL_FILE
    previous = json.loads(wall_file.read_text()) if resume and wall_file.is_file() else {}
    with Display() as display:
        runner = Runner(run_dir, world_file=world, cache_dir=cache, display=display, cpus=cpus)
        try:
            if getattr(first, "kind", None) == "Flywheel":  # the product path: `flywheel run flywheel.yaml`
                rules = first.spec.stop_rules.model_copy(update={"max_generations": generations})
                flywheel = first.model_copy(update={"spec": first.spec.model_copy(update={"stop_rules": rules})})
                FlywheelRunner(runner).run(flywheel)
            else:
                runner.run(first, generations)
        except KeyboardInterrupt:
            runner.stop()
            raise
    record = {
        "world": str(world),
        "clean_start": not previous and not resume,
        "wall_seconds": round(time.time() - started + previous.get("wall_seconds", 0.0), 1),
        "started_unix": previous.get("started_unix", started),
        "finished_unix": time.time(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    wall_file.write_text(json.dumps(record, indent=2) + "\n")
    compute_oracle(run_dir, world)


def seed_label(seed: int) -> str:
    """The seed replicate's part label and run directory name."""
    return f"default-seed{seed}"


def seeded_world_file(world: Path, seed: int, folder: Path) -> Path:
    """Where seeded_world writes the world with another seed."""
    return folder / f"{world.stem}-seed{seed}.yaml"


def seeded_world(world: Path, seed: int, folder: Path) -> Path:
    """A copy of the world file with another seed, in `folder` (the world's own seed is 0 by default)."""
    import yaml

    body = yaml.safe_load(world.read_text(encoding="utf-8"))
    body["seed"] = seed
    folder.mkdir(parents=True, exist_ok=True)
    path = seeded_world_file(world, seed, folder)
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def replicate(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """How the seed replicate's decisions and verdicts compare with the first chain's, generation by generation."""
    pairs = list(zip(first["rows"], second["rows"], strict=False))
    same = [a["promoted"] == b["promoted"] for a, b in pairs]
    return {
        "generations": len(pairs),
        "same_decision": f"{sum(same)}/{len(pairs)}",
        "same_oracle_verdict": f"{sum(a['truly_better'] == b['truly_better'] for a, b in pairs)}/{len(pairs)}",
        "decisions": [{"generation": a["generation"], "first": a["decision"] or a["phase"],
                       "replicate": b["decision"] or b["phase"]} for a, b in pairs],
    }


def _chain_names(run_dir: Path) -> list[str]:
    from flywheel_local.statusview import generation_dirs

    return [d.name for d in generation_dirs(run_dir) if d.name != TRAP_PROBE] if run_dir.is_dir() else []


def default_seeds(chains: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The default world's chains at several world seeds (0 is the default chain itself): the deployed policy's
    oracle instruction following at the end of each, its mean and spread, and issue 26's target on the mean
    (None until DEFAULT_SEEDS_NEEDED chains have an end value)."""
    ends = {seed: (chain["summary"].get("deployed_end") or {}).get("instruction_following")
            for seed, chain in sorted(chains.items())}
    known = [v for v in ends.values() if v is not None]
    mean = _mean(known)
    return {
        "seeds": list(ends),
        "generations": {seed: chain["summary"]["generations_finished"] for seed, chain in sorted(chains.items())},
        "deployed_instruction_following_end": ends,
        "deployed_instruction_following": spread(list(ends.values())),
        "deployed_instruction_following_mean_at_least_85": None if len(known) < DEFAULT_SEEDS_NEEDED
        else mean >= DEPLOYED_INSTRUCTION_FOLLOWING,
    }


DEFAULT_SEEDS_NEEDED = 3
"""Issue 26: the default world's deployed instruction following is judged as a mean over 3 world seeds."""


def summarise(out: Path, seeds: list[int] | None = None, generated_seeds: list[int] | None = None,
              generated_generations: int = GENERATED_GENERATIONS) -> dict[str, Any]:
    from flywheel_local.report import compute_oracle

    result: dict[str, Any] = {"worlds": {}, "trap_probe": None}
    seeds = [SECOND_SEED] if seeds is None else seeds
    chains = [("default", RUNS / "default", DEFAULT_WORLD), ("on-topic", RUNS / "on-topic", SECOND_WORLD)]
    chains += [(seed_label(seed), RUNS / seed_label(seed), seeded_world_file(DEFAULT_WORLD, seed, RUNS))
               for seed in seeds]
    for label, run_dir, world in chains:
        names = _chain_names(run_dir)
        if not names:
            continue
        chain = summarise_chain(run_dir, names, world)
        result["worlds"][label] = chain
        print_table(f"{label} world ({chain['world']})", chain["rows"], chain["summary"])
    generated = summarise_generated(generated_seeds, generated_generations) if generated_seeds else None
    if generated is not None:
        result["generated"] = generated
    default = result["worlds"].get("default")
    if default is not None or generated is not None:
        result["targets"] = targets(default and default["summary"], generated and generated["worlds"],
                                    default and default["rows"])
    seeded = {seed: result["worlds"][seed_label(seed)] for seed in seeds if seed_label(seed) in result["worlds"]}
    if default is not None:
        seeded = {0: default, **seeded}
    if seeded:
        result["default_seeds"] = default_seeds(seeded)
        result.setdefault("targets", {})["default_world_instruction_following_mean_over_3_seeds_at_least_85"] = (
            result["default_seeds"]["deployed_instruction_following_mean_at_least_85"])
        print("\ndefault world over seeds:", json.dumps(result["default_seeds"], default=str))
    replicas = {seed: replicate(default, result["worlds"][seed_label(seed)])
                for seed in seeds if default is not None and seed_label(seed) in result["worlds"]}
    if replicas:
        first_seed = next(iter(replicas))
        result["seed_replicate"] = {"seed": first_seed, **replicas[first_seed]}
        result["seed_replicates"] = {str(seed): replica for seed, replica in replicas.items()}
        print("\nother seeds:", json.dumps(result["seed_replicates"]))
    probe_dir = RUNS / "trap"
    if (probe_dir / TRAP_PROBE / "status.json").is_file():
        compute_oracle(probe_dir, DEFAULT_WORLD)
        probe = rows(probe_dir, [TRAP_PROBE])[0]
        probe["blocked_before_users"] = probe["blocked_by"].startswith("offline")
        probe["oracle_says_worse"] = probe["truly_better"] is False
        probe["passed"] = probe["blocked_before_users"] and probe["oracle_says_worse"]
        probe["wall"] = json.loads((probe_dir / WALL_FILE).read_text()) if (probe_dir / WALL_FILE).is_file() else None
        result["trap_probe"] = probe
        print(f"\ntrap probe (default world, unchanged): {probe['decision'] or probe['phase']}; emoji rate "
              f"{_pct(probe['parent_emoji_rate'])} -> {_pct(probe['emoji_rate'])} per response (eval); oracle depth "
              f"{_pct(probe['oracle_depth_lift'], True)}, breadth {_pct(probe['oracle_breadth_lift'], True)}; "
              + (f"blocked by {probe['blocked_by']}" if probe["blocked_by"] else "NOT blocked"))
    if "targets" in result:
        print("\ntargets:", json.dumps(result["targets"], default=str))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("flywheel", out)  # provenance
    print(f"\nwrote {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    global RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--manifest", default=str(ROOT / "examples" / "local" / "flywheel.yaml"),
                        help="a Flywheel (the product path, default) or a FlywheelGeneration (chained)")
    parser.add_argument("--cache-dir", default=str(ROOT / "runs" / "cache"))
    parser.add_argument("--out", default=str(RESULT))
    parser.add_argument("--only", choices=("default", "on-topic", "trap", "seed", "generated"), action="append",
                        help="run only these parts (repeatable); all five by default")
    parser.add_argument("--seed", type=int, action="append", dest="seeds",
                        help=f"world seed of a replicate of the default chain (part 'seed'; repeatable; default "
                             f"{SECOND_SEED}); --jobs runs them side by side")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs instead of cleaning them")
    parser.add_argument("--summarise", action="store_true", help="only write the table and JSON from finished runs")
    parser.add_argument("--no-summary", action="store_true", help="run the parts, skip the table and JSON")
    parser.add_argument("--runs", default=str(RUNS), help="the folder of the run directories")
    parser.add_argument("--cpus", type=int, default=None,
                        help="threads per stage (default: all cores); 1 on a machine shared with other work")
    parser.add_argument("--world-seed", type=int, default=GENERATED_SEED,
                        help=f"seed of the first generated world (part 'generated'; the others follow it; default "
                             f"{GENERATED_SEED}). Seeds {DEVELOPMENT_WORLD_SEEDS.start}-"
                             f"{DEVELOPMENT_WORLD_SEEDS.stop - 1} are development worlds that settings were chosen "
                             "on: in sample, not a measurement")
    parser.add_argument("--count", type=int, default=GENERATED_COUNT, help="generated worlds (part 'generated')")
    parser.add_argument("--suite-generations", type=int, default=GENERATED_GENERATIONS,
                        help="generations per generated world (part 'generated')")
    parser.add_argument("--jobs", type=int, default=1,
                        help="chains of the parts 'generated' and 'seed' run side by side, each in its own process "
                             "(2 on 2 cores, with --cpus 1)")
    args = parser.parse_args(argv)
    generated_seeds = list(range(args.world_seed, args.world_seed + args.count))
    in_sample = [s for s in generated_seeds if s in DEVELOPMENT_WORLD_SEEDS]
    if in_sample and (args.only is None or "generated" in args.only):
        print(f"note: generated world seeds {in_sample} are development worlds (settings were chosen on them): their "
              "figures are in sample, not an out-of-sample measurement", file=sys.stderr)
    seeds = args.seeds or [SECOND_SEED]
    RUNS = Path(args.runs).resolve()
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRL_EXPERIMENTAL_SILENCE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)
    from flywheel_local.flywheel import load_flywheel, manifest_kind
    from flywheel_local.runner import load_manifest

    if not args.summarise:
        manifest = Path(args.manifest)
        first = load_flywheel(manifest) if manifest_kind(manifest) == "Flywheel" else load_manifest(manifest)
        parts = args.only or ["default", "on-topic", "trap", "seed", "generated"]
        cache = Path(args.cache_dir)
        try:
            if "default" in parts:
                _run_chain(RUNS / "default", DEFAULT_WORLD, first, args.generations, cache, args.resume, args.cpus)
            if "on-topic" in parts:
                _run_chain(RUNS / "on-topic", SECOND_WORLD, first, args.generations, cache, args.resume, args.cpus)
            if "trap" in parts:
                probe = trap_probe(first_generation(first) if first.kind == "Flywheel" else first)
                _run_chain(RUNS / "trap", DEFAULT_WORLD, probe, 1, cache, args.resume, args.cpus)
            if "seed" in parts:
                failed = run_seeds(seeds, args.generations, manifest=manifest, first=first, cache=cache,
                                   resume=args.resume, cpus=args.cpus, jobs=args.jobs)
                if failed:
                    print(f"{failed} seed replicate(s) failed: see {RUNS}/default-seed<N>.log", file=sys.stderr)
            if "generated" in parts:
                failed = run_generated(generated_seeds, args.suite_generations, manifest=manifest, first=first,
                                       cache=cache, resume=args.resume, cpus=args.cpus, jobs=args.jobs)
                if failed:
                    print(f"{failed} generated world(s) failed: see {RUNS}/generated-<seed>.log", file=sys.stderr)
        except KeyboardInterrupt:
            print("stopped; run again with --resume to continue", file=sys.stderr)
            return 130
    if not args.no_summary:
        summarise(Path(args.out), seeds, generated_seeds, args.suite_generations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
