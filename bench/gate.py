"""Benchmark of the online gate on simulated A/A and A/B streams with known truth.

Each stream is one 7-day experiment: users arrive uniformly over 7 days and are randomised 50/50; breadth is
Bernoulli (≈ 60 % engage), depth is heavy-tailed (log-normal turns, skewness ≈ 4) and shares a latent
propensity with a pre-period covariate (ρ² ≈ 0.55). Guardrail events are binomial per response at equal rates
in both arms. The A/B streams lift depth by +5 % (breadth unchanged). The gate (`evaluate_online`, exactly as
the operator calls it, carrying `previous`) looks every 6 hours; the baseline measured on the same streams is a
fixed-horizon Welch test on raw depth after 7 days at the same α.

Prints a table and writes bench/results/gate.json. Targets: A/A false-positive rate ≤ 5 %, power at +5 % depth
≥ 80 %, median users-to-decision of the sequential + CUPED gate ≤ 0.5 × the fixed 7-day test's users.

    .venv/bin/python bench/gate.py [--streams 1000] [--users-per-arm 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from flywheel_operator.api import ArmStats, OnlineDecision, OnlineReading, PromotionSpec
from flywheel_operator.gate import evaluate_online
from scipy import stats as scipy_stats

DAYS = 7
LOOK_HOURS = 6
LOOKS = DAYS * 24 // LOOK_HOURS
MIN_DURATION = timedelta(days=1)
MAX_DURATION = timedelta(days=DAYS)
GUARDRAIL_RATES = {"instruction-violations": 0.05, "false-refusals": 0.03, "errors": 0.01}
START = datetime(2026, 1, 5, tzinfo=UTC)
FIELDS = ("users", "engaged", "y", "y2", "x", "x2", "xy", "responses", *GUARDRAIL_RATES)


@dataclass(frozen=True)
class StreamResult:
    outcome: str
    cause: str
    users_at_decision: int
    total_users: int
    welch_significant: bool
    welch_positive: bool


def simulate_batch(rng: np.random.Generator, streams: int, users: int, lift: float) -> np.ndarray:
    """Cumulative per-arm sufficient statistics at each look: shape (streams, arm, look, field)."""
    propensity = rng.normal(size=(streams, users))
    engaged = (propensity + 0.5 * rng.normal(size=(streams, users))) > -0.3
    depth = np.where(engaged, np.exp(0.6 + 0.8 * propensity + 0.4 * rng.normal(size=(streams, users))), 0.0)
    engaged_before = (propensity + 0.5 * rng.normal(size=(streams, users))) > -0.3
    pre = np.where(engaged_before, np.exp(0.6 + 0.8 * propensity + 0.4 * rng.normal(size=(streams, users))), 0.0)
    treatment = rng.random((streams, users)) < 0.5
    depth = np.where(treatment, depth * (1.0 + lift), depth)
    look = np.minimum((rng.random((streams, users)) * LOOKS).astype(np.int64), LOOKS - 1)
    responses = np.ceil(depth)
    columns = {
        "users": np.ones_like(depth),
        "engaged": engaged.astype(float),
        "y": depth,
        "y2": depth * depth,
        "x": pre,
        "x2": pre * pre,
        "xy": pre * depth,
        "responses": responses,
    }
    index = (np.arange(streams)[:, None] * 2 + treatment.astype(np.int64)) * LOOKS + look
    out = np.zeros((streams * 2 * LOOKS, len(FIELDS)))
    for j, name in enumerate(FIELDS[:8]):
        out[:, j] = np.bincount(index.ravel(), weights=columns[name].ravel(), minlength=streams * 2 * LOOKS)
    for j, rate in enumerate(GUARDRAIL_RATES.values(), start=8):
        out[:, j] = rng.binomial(out[:, 7].astype(np.int64), rate)
    return np.cumsum(out.reshape(streams, 2, LOOKS, len(FIELDS)), axis=2)


def arm(row: np.ndarray) -> ArmStats:
    values = dict(zip(FIELDS, row, strict=True))
    return ArmStats(
        users=int(values["users"]),
        engaged_users=int(values["engaged"]),
        depth_sum=float(values["y"]),
        depth_sum_squares=float(values["y2"]),
        pre_sum=float(values["x"]),
        pre_sum_squares=float(values["x2"]),
        pre_cross_sum=float(values["xy"]),
        responses=int(values["responses"]),
        guardrails={name: float(values[name]) for name in GUARDRAIL_RATES},
    )


def run_gate(spec: PromotionSpec, stream: np.ndarray) -> tuple[str, str, int]:
    """Look every 6 hours until the gate decides: the outcome, what caused it, and the users seen by then."""
    previous: OnlineDecision | None = None
    for k in range(LOOKS):
        elapsed = timedelta(hours=LOOK_HOURS * (k + 1))
        now = START + elapsed
        reading = OnlineReading(at=now, control=arm(stream[0, k]), treatment=arm(stream[1, k]))
        previous = evaluate_online(
            spec,
            reading,
            traffic_percent=10,
            elapsed=elapsed,
            min_duration=MIN_DURATION,
            max_duration=MAX_DURATION,
            previous=previous,
            now=now,
        )
        if previous.outcome != "CONTINUE":
            return previous.outcome, cause(previous), int(stream[0, k, 0] + stream[1, k, 0])
    raise AssertionError("the gate must decide by maxDuration")


def cause(decision: OnlineDecision) -> str:
    """The first failed (or, for PROMOTE, passed) sub-test, e.g. `srm`, `depth`, `guardrail.errors`."""
    if decision.outcome == "PROMOTE":
        return "+".join(c.name for c in decision.checks if c.name in ("breadth", "depth") and "better" in c.message)
    if decision.outcome == "INCONCLUSIVE":
        return "max-duration"
    return next((c.name for c in decision.checks if not c.passed), "unknown")


def welch(stream: np.ndarray, alpha: float) -> tuple[bool, bool]:
    """The baseline: a fixed-horizon Welch test on raw depth with all 7 days of users."""
    final = stream[:, -1]
    n, y, y2 = final[:, 0], final[:, 2], final[:, 3]
    mean = y / n
    var = (y2 - y * y / n) / (n - 1)
    result = scipy_stats.ttest_ind_from_stats(mean[1], math.sqrt(var[1]), n[1], mean[0], math.sqrt(var[0]), n[0], False)
    return bool(result.pvalue < alpha), bool(result.statistic > 0)


def simulate(kind: str, lift: float, args: argparse.Namespace, specs: dict[str, PromotionSpec]) -> dict:
    rng = np.random.default_rng([args.seed, 0 if kind == "A/A" else 1])
    results: dict[str, list[StreamResult]] = {name: [] for name in specs}
    done = 0
    while done < args.streams:
        batch = min(args.batch, args.streams - done)
        data = simulate_batch(rng, batch, 2 * args.users_per_arm, lift)
        for stream in data:
            significant, positive = welch(stream, specs["sequential+cuped"].alpha)
            total = int(stream[0, -1, 0] + stream[1, -1, 0])
            for name, spec in specs.items():
                outcome, why, users = run_gate(spec, stream)
                results[name].append(StreamResult(outcome, why, users, total, significant, positive))
        done += batch
    return {name: summarise(rows, expect_lift=lift > 0) for name, rows in results.items()}


def summarise(rows: list[StreamResult], *, expect_lift: bool) -> dict:
    outcomes = [r.outcome for r in rows]
    decisive = [r.outcome in ("PROMOTE", "ROLL_BACK") for r in rows]
    users = np.array([r.users_at_decision if r.outcome in ("PROMOTE", "ROLL_BACK") else r.total_users for r in rows])
    totals = np.array([r.total_users for r in rows])
    welch_hits = [r.welch_significant and (r.welch_positive or not expect_lift) for r in rows]
    return {
        "streams": len(rows),
        "promote": outcomes.count("PROMOTE") / len(rows),
        "roll_back": outcomes.count("ROLL_BACK") / len(rows),
        "inconclusive": outcomes.count("INCONCLUSIVE") / len(rows),
        "decisive": float(np.mean(decisive)),
        "median_users_to_decision": float(np.median(users)),
        "median_users_ratio_to_fixed": float(np.median(users / totals)),
        "mean_users_ratio_to_fixed": float(np.mean(users / totals)),
        "fixed_welch_rate": float(np.mean(welch_hits)),
        "fixed_users": float(np.median(totals)),
        "causes": {
            c: sum(1 for r in rows if f"{r.outcome}:{r.cause}" == c)
            for c in sorted({f"{r.outcome}:{r.cause}" for r in rows})
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams of each kind (A/A and A/B)")
    parser.add_argument("--users-per-arm", type=int, default=20_000, help="expected users per arm over 7 days")
    parser.add_argument("--lift", type=float, default=0.05, help="relative depth lift of the A/B streams")
    parser.add_argument("--batch", type=int, default=50, help="streams simulated at once (memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tau", type=float, default=None, help="override promotion.sequentialTau (tuning)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gate.json")
    args = parser.parse_args()

    base = PromotionSpec(control_percent=10)  # equal arms of ~10 % of users each, as in the report
    if args.tau is not None:
        base = base.model_copy(update={"sequential_tau": args.tau})
    specs = {"sequential+cuped": base, "sequential": base.model_copy(update={"cuped": False})}
    started = time.perf_counter()
    aa = simulate("A/A", 0.0, args, specs)
    ab = simulate("A/B", args.lift, args, specs)
    seconds = time.perf_counter() - started

    gate, plain = "sequential+cuped", "sequential"
    figures = {
        "aa_false_positive_rate": aa[gate]["decisive"],
        "power_at_lift": ab[gate]["promote"],
        "median_users_ratio_to_fixed": ab[gate]["median_users_ratio_to_fixed"],
    }
    targets = {
        "aa_false_positive_rate": ("<=", 0.05),
        "power_at_lift": (">=", 0.80),
        "median_users_ratio_to_fixed": ("<=", 0.5),
    }
    passed = {k: (figures[k] <= limit if op == "<=" else figures[k] >= limit) for k, (op, limit) in targets.items()}

    rows = [
        (
            "A/A false-positive rate (PROMOTE or ROLL_BACK)",
            aa[gate]["decisive"],
            aa[plain]["decisive"],
            aa[gate]["fixed_welch_rate"],
            "<= 0.05",
        ),
        (
            f"power at +{args.lift:.0%} depth (PROMOTE)",
            ab[gate]["promote"],
            ab[plain]["promote"],
            ab[gate]["fixed_welch_rate"],
            ">= 0.80",
        ),
        (
            "median users to decision / fixed 7-day users",
            ab[gate]["median_users_ratio_to_fixed"],
            ab[plain]["median_users_ratio_to_fixed"],
            1.0,
            "<= 0.50",
        ),
        (
            "mean users to decision / fixed 7-day users",
            ab[gate]["mean_users_ratio_to_fixed"],
            ab[plain]["mean_users_ratio_to_fixed"],
            1.0,
            "",
        ),
        ("A/B wrongly rolled back", ab[gate]["roll_back"], ab[plain]["roll_back"], float("nan"), ""),
    ]
    print(
        f"online gate on {args.streams} A/A + {args.streams} A/B streams, "
        f"{args.users_per_arm} users/arm over {DAYS} days, looks every {LOOK_HOURS}h, α = {base.alpha}"
    )
    print(f"{'measure':<48} {'seq+CUPED':>10} {'seq only':>10} {'Welch 7d':>10}  target")
    for label, a, b, c, target in rows:
        print(f"{label:<48} {a:>10.3f} {b:>10.3f} {c:>10.3f}  {target}")
    print("targets: " + ", ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in passed.items()))
    print(f"{seconds:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "config": {
                    "streams_per_kind": args.streams,
                    "users_per_arm": args.users_per_arm,
                    "lift": args.lift,
                    "days": DAYS,
                    "look_hours": LOOK_HOURS,
                    "min_duration_days": MIN_DURATION.days,
                    "alpha": base.alpha,
                    "sequential_tau": base.sequential_tau,
                    "seed": args.seed,
                },
                "figures": figures,
                "targets": {k: f"{op} {limit}" for k, (op, limit) in targets.items()},
                "passed": passed,
                "aa": aa,
                "ab": ab,
                "seconds": seconds,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if all(passed.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
