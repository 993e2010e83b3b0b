"""Benchmark of the online gate on the process it really sees, at the operator's check interval and at 1 minute.

Each stream is one 7-day experiment, 50/50 between two equal arms (the report's ~10 % each), ~20,000 exposed
users per arm. Users have a daily activity probability (heterogeneous, higher at weekends) and arrive at their
first active session of the test days (front-loaded, diurnal); each later active day adds a return visit and
heavy-tailed turns (log-normal per user and per day), so per-user sums grow after exposure, breadth comes from
return days (engaged = active on ≥ 2 distinct days, the exporter's rule) and depth is the turns since exposure.
The pre-period covariate is zero for users inactive before the test and otherwise noisy; its strength ρ² is taken
from the simulated world (bench/results/flywheel.json: CUPED removed ≤ 0.5 % of depth's variance there) and swept.
Guardrail events are binomial per response with an over-dispersed per-user rate (Beta, concentration 20), the
same in both arms. A/B streams scale each treatment user's turns by 1 + lift (+2 %, +5 %, −3 %).

The sums are kept per minute. The gate's decision rule runs on every look at two cadences, the default
`checkInterval` (10 min) and 1 minute, with and without CUPED. To run ~10⁷ looks in minutes, the rule is applied
to whole look sequences with numpy (`gate_path`); every run also replays a sample of streams through
`evaluate_online` itself, look by look as the operator calls it, and reports how many decisions agree.
Baselines on the same streams: a fixed 7-day Welch test on raw depth and a fixed 7-day CUPED z-test, at α = 0.05.

    .venv/bin/python bench/gate.py [--aa 500] [--ab 200] [--sweep 60] [--check 2] [--seed 0]
    .venv/bin/python bench/gate.py --novelty 60      # the novelty guard's study (bench/results/gate_novelty.json)
    .venv/bin/python bench/gate.py --reset 120       # an exporter restart on day 3 (bench/results/gate_reset.json)

About 12 CPU-minutes with the defaults (≈0.45 s per stream to simulate and run 3 gate variants × 2 cadences);
the replicate counts used are printed and written with the results.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from flywheel_operator.api import ArmStats, OnlineDecision, OnlineReading, PromotionSpec
from flywheel_operator.gate import evaluate_online, stats
from flywheel_operator.gate.online import alpha_split
from scipy import special
from scipy import stats as scipy_stats

DAYS = 7
MINUTES = DAYS * 24 * 60
USERS_PER_ARM = 20_000
MIN_DURATION_MIN = 24 * 60
WEEKDAY = np.array([1.0, 0.95, 0.95, 1.0, 1.05, 1.25, 1.2])
"""Activity multiplier by weekday, the test starting on a Monday."""
GUARDRAIL_RATES = {"instruction-violations": 0.05, "false-refusals": 0.03, "errors": 0.01}
RATE_CONCENTRATION = 20.0
"""Per-user guardrail rates ~ Beta(κr, κ(1 − r)): some users meet the same failure again and again."""
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
FIELDS = (
    "users", "engaged", "y", "y2", "x", "x2", "xy", "responses", "r2",
    *(f"{kind}.{name}" for name in GUARDRAIL_RATES for kind in ("g", "g2", "gr")), "adopted",
)  # fmt: skip
F = {name: i for i, name in enumerate(FIELDS)}
FLYWHEEL_RESULTS = Path(__file__).parent / "results" / "flywheel.json"


# ------------------------------------------------------------------------------------------ the world
def _diurnal_cdf() -> np.ndarray:
    minute = np.arange(1440)
    density = 1.0 + 0.7 * np.sin(2 * np.pi * (minute / 1440 - 0.35))  # quiet at night, busy in the evening
    return np.cumsum(density) / density.sum()


DIURNAL = _diurnal_cdf()
POPULATION = int(USERS_PER_ARM / 0.8)
"""Users who could come during the test; about 80 % of them have a session in the 7 days (and are exposed)."""


def simulate_stream(
    rng: np.random.Generator, lift: float | np.ndarray, noise: float, *, restart_day: int | None = None
) -> np.ndarray:
    """Cumulative per-arm sums at every minute: shape (2, MINUTES, len(FIELDS)). `lift`: one relative depth lift,
    or one per day of the test (a novelty effect). `restart_day`: the exporter restarts without its state at
    the start of that day; from then on the sums are what the empty exporter counts (returning users adopted on
    their arm, their depth and active days counted from the restart), as Prometheus would show them."""
    n = 2 * POPULATION
    activity = rng.beta(1.1, 2.2, n)
    propensity = rng.normal(0.7, 0.8, n) + 0.6 * (activity - 0.33)
    treated = rng.random(n) < 0.5
    active = rng.random((n, DAYS)) < np.minimum(activity[:, None] * WEEKDAY, 1.0)
    exposed = active.any(axis=1)
    day_noise = rng.normal(0.0, 0.6, (n, DAYS))
    lift_by_day = np.broadcast_to(np.asarray(lift, dtype=float), (DAYS,))
    turns = active * np.exp(propensity[:, None] + day_noise) * (1.0 + treated[:, None] * lift_by_day[None, :])
    # the covariate: pre-period depth, zero for users not active before the test, noisy around their habit
    before = rng.random(n) < 1.0 - (1.0 - activity) ** 7
    habit = 7 * activity * np.exp(propensity + 0.18)
    pre = before * habit * np.exp(noise * rng.normal(size=n) - noise * noise / 2)
    responses = np.ceil(turns)
    rows, cols = np.nonzero(active & exposed[:, None])
    minute = cols * 1440 + np.searchsorted(DIURNAL, rng.random(len(rows)))
    events = {}
    for name, mean in GUARDRAIL_RATES.items():
        rate = rng.beta(RATE_CONCENTRATION * mean, RATE_CONCENTRATION * (1 - mean), n)
        events[name] = np.zeros((n, DAYS))
        events[name][rows, cols] = rng.binomial(responses[rows, cols].astype(np.int64), rate[rows])
    world = (active, treated, turns, responses, events, pre, rows, cols, minute)
    sums = _fold(world, 0)
    if restart_day is not None:
        cut = restart_day * 1440
        sums[:, cut:] = _fold(world, restart_day)[:, cut:]
    return sums


def _fold(world: tuple, start: int) -> np.ndarray:
    """The exporter's counters at every minute over the days from `start` on, per-user state counted from it."""
    active, treated, turns, responses, events, pre, rows, cols, minute = world
    counted = active.copy()
    counted[:, :start] = False
    first = np.argmax(counted, axis=1)
    earliest = np.argmax(active, axis=1)
    cum, cum_r = np.cumsum(turns * counted, axis=1), np.cumsum(responses * counted, axis=1)
    days_active = np.cumsum(counted, axis=1)
    keep = cols >= start
    rows, cols, minute = rows[keep], cols[keep], minute[keep]
    index = treated[rows].astype(np.int64) * MINUTES + minute
    y, c = turns[rows, cols], cum[rows, cols]
    r, cr = responses[rows, cols], cum_r[rows, cols]
    is_first = cols == first[rows]
    adopted = is_first & (earliest[rows] < start)  # exposed before the restart: no exposure event, no covariate
    x = np.where(adopted, 0.0, pre[rows])
    weights = {
        "users": is_first.astype(float),
        "engaged": (days_active[rows, cols] == 2).astype(float),
        "y": y,
        "y2": c * c - (c - y) ** 2,
        "x": x * is_first,
        "x2": x * x * is_first,
        "xy": x * y,
        "responses": r,
        "r2": cr * cr - (cr - r) ** 2,
        "adopted": adopted.astype(float),
    }
    for name, matrix in events.items():
        counted_events = matrix * counted
        cum_g = np.cumsum(counted_events, axis=1)
        g, cg = counted_events[rows, cols], cum_g[rows, cols]
        weights[f"g.{name}"] = g
        weights[f"g2.{name}"] = cg * cg - (cg - g) ** 2
        weights[f"gr.{name}"] = cg * cr - (cg - g) * (cr - r)
    out = np.empty((2 * MINUTES, len(FIELDS)))
    for name, j in F.items():
        out[:, j] = np.bincount(index, weights=weights[name], minlength=2 * MINUTES)
    return np.cumsum(out.reshape(2, MINUTES, len(FIELDS)), axis=1)


def rho_squared(final: np.ndarray) -> float:
    """Pooled within-arm ρ² of depth and the covariate at the end of the test (= CUPED's variance reduction)."""
    sxy = sxx = syy = 0.0
    for a in range(2):
        n, sy, sy2, sx, sx2, sxy_ = (final[a, F[k]] for k in ("users", "y", "y2", "x", "x2", "xy"))
        sxy += sxy_ - sx * sy / n
        sxx += sx2 - sx * sx / n
        syy += sy2 - sy * sy / n
    return float(sxy * sxy / (sxx * syy)) if sxx > 0 and syy > 0 else 0.0


def calibrate_noise(target: float, seed: int) -> float:
    """The covariate noise that gives ρ² ≈ target (bisection on one stream; ρ² falls as noise grows)."""
    low, high = 0.0, 8.0
    rng_seed = [seed, 99]
    at_zero = rho_squared(simulate_stream(np.random.default_rng(rng_seed), 0.0, 0.0)[:, -1])
    if target >= at_zero:
        return 0.0
    for _ in range(18):
        mid = (low + high) / 2
        if rho_squared(simulate_stream(np.random.default_rng(rng_seed), 0.0, mid)[:, -1]) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


# ------------------------------------------------------------------------------- the rule, vectorised
@dataclass(frozen=True)
class Path_:
    outcome: str
    look: int
    cause: str


def _moments(n, s, s2):
    mean = s / n
    var = np.maximum((s2 - s * s / n) / np.maximum(n - 1, 1), 0.0)
    return mean, var


def _relative(mc, vc, nc, mt, vt, nt):
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = mt / mc
        var = (vc * ratio * ratio / nc + vt / nt) / (mc * mc)
    return ratio - 1.0, var


def _half_width(v, tau, alpha):
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.sqrt(v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + np.log((v + t2) / v)))
    return np.where(v > 0, width, np.inf)


def _running(estimate, width, judged):
    """Running intersection over the looks where the metric was judged (always-valid bounds)."""
    lower = np.where(judged, estimate - width, -np.inf)
    upper = np.where(judged, estimate + width, np.inf)
    lower = np.maximum.accumulate(np.nan_to_num(lower, nan=-np.inf))
    upper = np.minimum.accumulate(np.nan_to_num(upper, nan=np.inf))
    return lower, upper


def gate_path(sums: np.ndarray, spec: PromotionSpec, interval: int) -> Path_:
    """`evaluate_online`'s decision at every look of one stream (sums at the looks: (2, K, F)), first decision."""
    c, t = sums[0], sums[1]
    k_looks = c.shape[0]
    elapsed = (np.arange(k_looks) + 1) * interval
    alphas = alpha_split(spec)
    nc, nt = c[:, F["users"]], t[:, F["users"]]
    data = (nc > 0) & (nt > 0)
    ncs, nts = np.maximum(nc, 1), np.maximum(nt, 1)
    # SRM: the beta-binomial e-value of the counts
    a = stats.SRM_CONCENTRATION * 0.5
    log_e = special.betaln(nt + a, nc + a) - special.betaln(a, a) - (nc + nt) * math.log(0.5)
    srm = data & (log_e >= math.log(1.0 / alphas.srm))
    enough = data & (np.minimum(nc, nt) >= spec.min_users_per_arm)
    ec, et = c[:, F["engaged"]], t[:, F["engaged"]]
    # breadth
    b_info = enough & (np.minimum.reduce([ec, et, nc - ec, nt - et]) >= spec.min_events_per_arm)
    pc, pt = ec / ncs, et / nts
    b_est, b_var = _relative(pc, pc * (1 - pc), ncs, pt, pt * (1 - pt), nts)
    b_lo, b_hi = _running(b_est, _half_width(b_var, spec.sequential_tau, alphas.success), b_info)
    z_final = stats.normal_quantile(1 - alphas.final / 2) if alphas.final > 0 else np.inf
    # depth, CUPED or raw
    d_info = enough & (np.minimum(ec, et) >= spec.min_events_per_arm)
    myc, vyc = _moments(ncs, c[:, F["y"]], c[:, F["y2"]])
    myt, vyt = _moments(nts, t[:, F["y"]], t[:, F["y2"]])
    if spec.cuped:
        mxc, vxc = _moments(ncs, c[:, F["x"]], c[:, F["x2"]])
        mxt, vxt = _moments(nts, t[:, F["x"]], t[:, F["x2"]])
        covc = (c[:, F["xy"]] - c[:, F["x"]] * c[:, F["y"]] / ncs) / np.maximum(ncs - 1, 1)
        covt = (t[:, F["xy"]] - t[:, F["x"]] * t[:, F["y"]] / nts) / np.maximum(nts - 1, 1)
        wxy = covc * (ncs - 1) + covt * (nts - 1)
        wxx = vxc * (ncs - 1) + vxt * (nts - 1)
        theta = np.where(wxx > 0, wxy / np.where(wxx > 0, wxx, 1), 0.0)
        pooled = (c[:, F["x"]] + t[:, F["x"]]) / (ncs + nts)
        myc, vyc = myc - theta * (mxc - pooled), np.maximum(vyc + theta**2 * vxc - 2 * theta * covc, 0)
        myt, vyt = myt - theta * (mxt - pooled), np.maximum(vyt + theta**2 * vxt - 2 * theta * covt, 0)
    d_est, d_var = _relative(myc, vyc, ncs, myt, vyt, nts)
    d_lo, d_hi = _running(d_est, _half_width(d_var, spec.sequential_tau, alphas.success), d_info)
    inconsistent = (b_lo > b_hi) | (d_lo > d_hi)
    with np.errstate(invalid="ignore"):
        final_wins = (b_info & (b_est - z_final * np.sqrt(b_var) > spec.min_breadth_lift)) | (
            d_info & (d_est - z_final * np.sqrt(d_var) > spec.min_depth_lift)
        )
    final_wins &= elapsed >= DAYS * 1440
    # guardrails, user-clustered
    breached = np.zeros(k_looks, dtype=bool)
    proven = np.ones(k_looks, dtype=bool)
    for g in spec.guardrails:
        rates = []
        for arm, n in ((c, ncs), (t, nts)):
            gs, g2, gr = arm[:, F[f"g.{g.name}"]], arm[:, F[f"g2.{g.name}"]], arm[:, F[f"gr.{g.name}"]]
            rs, r2 = arm[:, F["responses"]], arm[:, F["r2"]]
            mg, vg = _moments(n, gs, g2)
            mr, vr = _moments(n, rs, r2)
            cov = (gr - gs * rs / n) / np.maximum(n - 1, 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = mg / mr
                var = np.maximum((vg - 2 * ratio * cov + vr * ratio * ratio) / (mr * mr), 0)
            rates.append((ratio, var, n))
        (rc, vc, n1), (rt, vt, n2) = rates
        est, var = rt - rc, vc / n1 + vt / n2
        lo, hi = _running(est, _half_width(var, g.margin, alphas.guardrail), enough & (var > 0))
        inconsistent |= lo > hi
        breached |= enough & (lo > g.margin)
        proven &= enough & (hi < g.margin)
    harm = srm | (b_info & (b_hi < 0)) | (d_info & (d_hi < 0)) | breached
    wins = (b_info & (b_lo > spec.min_breadth_lift)) | (d_info & (d_lo > spec.min_depth_lift)) | final_wins
    promote = wins & b_info & d_info & proven & (elapsed >= MIN_DURATION_MIN)
    stop_inconsistent = enough & inconsistent
    decided = stop_inconsistent | harm | promote
    if not decided.any():
        return Path_("INCONCLUSIVE", k_looks - 1, "max-duration")
    k = int(np.argmax(decided))
    if stop_inconsistent[k]:
        return Path_("INCONCLUSIVE", k, "consistency")
    if harm[k]:
        cause = "srm" if srm[k] else "breadth" if b_info[k] and b_hi[k] < 0 else "depth" if d_hi[k] < 0 else "guardrail"
        return Path_("ROLL_BACK", k, cause)
    return Path_("PROMOTE", k, "breadth" if b_info[k] and b_lo[k] > spec.min_breadth_lift else "depth")


# -------------------------------------------------------------------------------- the real gate (check)
def arm_stats(row: np.ndarray) -> ArmStats:
    return ArmStats(
        users=round(row[F["users"]]),
        engaged_users=round(row[F["engaged"]]),
        depth_sum=float(row[F["y"]]),
        depth_sum_squares=float(row[F["y2"]]),
        pre_sum=float(row[F["x"]]),
        pre_sum_squares=float(row[F["x2"]]),
        pre_cross_sum=float(row[F["xy"]]),
        responses=round(row[F["responses"]]),
        guardrails={name: float(row[F[f"g.{name}"]]) for name in GUARDRAIL_RATES},
        responses_sum_squares=float(row[F["r2"]]),
        guardrail_sum_squares={name: float(row[F[f"g2.{name}"]]) for name in GUARDRAIL_RATES},
        guardrail_cross_sums={name: float(row[F[f"gr.{name}"]]) for name in GUARDRAIL_RATES},
        adopted_users=round(row[F["adopted"]]),
    )


def replay(sums: np.ndarray, spec: PromotionSpec, interval: int) -> Path_:
    """The same looks through `evaluate_online`, carrying `previous` as the operator does."""
    previous: OnlineDecision | None = None
    for k in range(sums.shape[1]):
        elapsed = timedelta(minutes=interval * (k + 1))
        control, treatment = sums[0, k], sums[1, k]
        if min(control[F["users"]], treatment[F["users"]]) == 0:
            reading = OnlineReading(at=START + elapsed, error="an arm has no users yet")
        else:
            reading = OnlineReading(at=START + elapsed, control=arm_stats(control), treatment=arm_stats(treatment))
        previous = evaluate_online(
            spec,
            reading,
            traffic_percent=10,
            elapsed=elapsed,
            min_duration=timedelta(minutes=MIN_DURATION_MIN),
            max_duration=timedelta(days=DAYS),
            previous=previous,
            now=START + elapsed,
        )
        if previous.outcome != "CONTINUE":
            return Path_(previous.outcome, k, "")
    raise AssertionError("the gate must decide by maxDuration")


# ------------------------------------------------------------------------------------------ baselines
def fixed_tests(final: np.ndarray, alpha: float) -> dict[str, tuple[bool, float]]:
    """Fixed 7-day tests on depth at the end: Welch on raw depth, and a CUPED z-test: (significant, estimate)."""
    out = {}
    n = final[:, F["users"]]
    my, vy = _moments(n, final[:, F["y"]], final[:, F["y2"]])
    welch = scipy_stats.ttest_ind_from_stats(my[1], math.sqrt(vy[1]), n[1], my[0], math.sqrt(vy[0]), n[0], False)
    out["welch"] = (bool(welch.pvalue < alpha), float(my[1] - my[0]))
    arms = [
        stats.CupedArm(n=int(n[a]), sum_y=final[a, F["y"]], sum_y2=final[a, F["y2"]], sum_x=final[a, F["x"]],
                       sum_x2=final[a, F["x2"]], sum_xy=final[a, F["xy"]])
        for a in range(2)
    ]  # fmt: skip
    cuped = stats.cuped(*arms)
    lift = stats.absolute_lift(cuped.control, cuped.treatment)
    out["cuped"] = (stats.z_test_p_value(lift) < alpha, lift.estimate)
    return out


# ------------------------------------------------------------------------------------------- the run
CADENCES = {"10min": 10, "1min": 1}


def looks(stream: np.ndarray, interval: int) -> np.ndarray:
    return stream[:, interval - 1 :: interval]


def run_scenario(name, lift, streams, noise, specs, seed, cadences, check):
    """Streams of one kind: every (spec, cadence) path, the fixed baselines, and a replay check."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows = {(s, c): [] for s in specs for c in cadences}
    fixed = {"welch": [], "cuped": []}
    totals, rho2 = [], []
    agree = []
    for i in range(streams):
        stream = simulate_stream(rng, lift, noise)
        final = stream[:, -1]
        totals.append(final[:, F["users"]].sum())
        rho2.append(rho_squared(final))
        for test, (significant, estimate) in fixed_tests(final, 0.05).items():
            fixed[test].append((significant, estimate))
        for spec_name, spec in specs.items():
            for cadence in cadences:
                interval = CADENCES[cadence]
                seen = looks(stream, interval)
                path = gate_path(seen, spec, interval)
                users = seen[:, path.look, F["users"]].sum()
                rows[(spec_name, cadence)].append((path, users, (path.look + 1) * interval / 60))
                if i < check and cadence == "10min":
                    real = replay(seen, spec, interval)
                    agree.append((real.outcome, real.look) == (path.outcome, path.look))
    return summarise(rows, fixed, np.array(totals), lift), float(np.mean(rho2)), agree


def interval95(hits: int, n: int) -> list[float]:
    """Wilson 95 % interval of a rate."""
    if n == 0:
        return [0.0, 1.0]
    z = 1.959964
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def summarise(rows, fixed, totals, lift) -> dict:
    out: dict = {"streams": len(totals), "fixed_users_median": float(np.median(totals))}
    for test, results in fixed.items():
        hits = [s and (e > 0 if lift > 0 else e < 0 if lift < 0 else True) for s, e in results]
        out[f"fixed_{test}_rate"] = float(np.mean(hits))
    for (spec, cadence), results in rows.items():
        outcomes = [p.outcome for p, _, _ in results]
        n = len(results)
        decided = [(p.outcome in ("PROMOTE", "ROLL_BACK")) for p, _, _ in results]
        users = np.array([u if d else tot for (_, u, _), d, tot in zip(results, decided, totals, strict=True)])
        hours = np.array([h if d else DAYS * 24.0 for (_, _, h), d in zip(results, decided, strict=True)])
        ratio = users / totals
        key = f"{spec}@{cadence}"
        promote, roll_back = outcomes.count("PROMOTE"), outcomes.count("ROLL_BACK")
        out[key] = {
            "promote": promote / n,
            "roll_back": roll_back / n,
            "inconclusive": outcomes.count("INCONCLUSIVE") / n,
            "decisive": (promote + roll_back) / n,
            "decisive_ci95": interval95(promote + roll_back, n),
            "promote_ci95": interval95(promote, n),
            "roll_back_ci95": interval95(roll_back, n),
            "users_ratio_median": float(np.median(ratio)),
            "users_ratio_p90": float(np.quantile(ratio, 0.9)),
            "users_median": float(np.median(users)),
            "hours_median": float(np.median(hours)),
            "hours_median_when_decided": float(np.median(hours[np.array(decided)])) if any(decided) else None,
            "causes": {
                c: sum(1 for p, _, _ in results if f"{p.outcome}:{p.cause}" == c)
                for c in sorted({f"{p.outcome}:{p.cause}" for p, _, _ in results})
            },
        }
    return out


def novelty_study(streams: int, seed: int, out: Path) -> int:
    """The novelty guard's benefit and cost: a +10 % lift that fades to 0 by day 4, and a lasting +5 % lift, each
    through `evaluate_online` itself at hourly looks, without the guard and with `noveltyWindow` 1d, 2d, 3d."""
    started = time.perf_counter()
    base = PromotionSpec(control_percent=10)
    specs = {"off": base, **{w: base.model_copy(update={"novelty_window": w}) for w in ("1d", "2d", "3d")}}
    fading = 0.10 * np.maximum(0.0, 1.0 - np.arange(DAYS) / 4)
    noise = calibrate_noise(0.3, seed)  # a useful covariate, so that early promotions happen at all
    results: dict = {}
    for name, lift in {"fading +10% to 0 by day 4": fading, "lasting +5%": np.full(DAYS, 0.05)}.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        paths: dict[str, list[Path_]] = {k: [] for k in specs}
        for _ in range(streams):
            seen = looks(simulate_stream(rng, lift, noise), 60)
            for key, spec in specs.items():
                paths[key].append(replay(seen, spec, 60))
        results[name] = {
            key: {
                "promote": sum(p.outcome == "PROMOTE" for p in rows) / streams,
                "promote_ci95": interval95(sum(p.outcome == "PROMOTE" for p in rows), streams),
                "inconclusive": sum(p.outcome == "INCONCLUSIVE" for p in rows) / streams,
                "median_hours_to_promote": float(np.median([p.look + 1 for p in rows if p.outcome == "PROMOTE"]))
                if any(p.outcome == "PROMOTE" for p in rows)
                else None,
            }
            for key, rows in paths.items()
        }
        for key, row in results[name].items():
            print(f"{name:<28} novelty guard {key:>3}: PROMOTE {row['promote']:.3f}, median hours to promote "
                  f"{row['median_hours_to_promote']}")  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"{streams} streams per scenario, hourly looks through evaluate_online, ρ² ≈ 0.3; {seconds:.0f} s")
    payload = {"streams": streams, "look_minutes": 60, "rho2_target": 0.3, "results": results, "seconds": seconds}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def reset_study(streams: int, seed: int, out: Path) -> int:
    """An exporter restart without its state on day 3, through `evaluate_online` itself at 30-minute looks: the
    same A/A and +5 % streams with and without the restart."""
    started = time.perf_counter()
    spec = PromotionSpec(control_percent=10)
    noise = calibrate_noise(0.0054, seed)
    results: dict = {}
    for name, lift, count in (("A/A", 0.0, streams), ("+5%", 0.05, streams // 2)):
        rows: dict[str, list[Path_]] = {"no restart": [], "restart on day 3": []}
        for i in range(count):
            for key, restart in (("no restart", None), ("restart on day 3", 3)):
                rng = np.random.default_rng([seed, zlib.crc32(name.encode()), i])  # the same users both ways
                rows[key].append(replay(looks(simulate_stream(rng, lift, noise, restart_day=restart), 30), spec, 30))
        results[name] = {}
        for key, paths in rows.items():
            outcomes = [p.outcome for p in paths]
            decisive = outcomes.count("PROMOTE") + outcomes.count("ROLL_BACK")
            results[name][key] = {
                "promote": outcomes.count("PROMOTE") / count,
                "roll_back": outcomes.count("ROLL_BACK") / count,
                "decisive": decisive / count,
                "decisive_ci95": interval95(decisive, count),
                "inconclusive": outcomes.count("INCONCLUSIVE") / count,
            }
            print(f"{name:<4} {key:<17} {count} streams: PROMOTE {outcomes.count('PROMOTE') / count:.3f}, "
                  f"ROLL_BACK {outcomes.count('ROLL_BACK') / count:.3f}", flush=True)  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"30-minute looks through evaluate_online; {seconds:.0f} s")
    out.write_text(
        json.dumps({"streams": streams, "look_minutes": 30, "results": results, "seconds": seconds}, indent=2) + "\n"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aa", type=int, default=500, help="A/A streams")
    parser.add_argument("--ab", type=int, default=200, help="streams of each A/B scenario (+2 %, +5 %, −3 % depth)")
    parser.add_argument("--sweep", type=int, default=60, help="+5 %% streams per covariate strength in the sweep")
    parser.add_argument("--check", type=int, default=2, help="streams per scenario replayed through evaluate_online")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gate.json")
    parser.add_argument("--novelty", type=int, default=0, help="run only the novelty-guard study with N streams")
    parser.add_argument("--reset", type=int, default=0, help="run only the exporter-restart study with N A/A streams")
    args = parser.parse_args()
    if args.reset:
        return reset_study(args.reset, args.seed, Path(__file__).parent / "results" / "gate_reset.json")
    if args.novelty:
        return novelty_study(args.novelty, args.seed, Path(__file__).parent / "results" / "gate_novelty.json")

    started = time.perf_counter()
    sim = json.loads(FLYWHEEL_RESULTS.read_text()) if FLYWHEEL_RESULTS.exists() else {"rows": []}
    reductions = [
        r.get("measured", {}).get("depth.cuped_variance_reduction")
        for r in sim.get("rows", [])
        if r.get("measured", {}).get("depth.cuped_variance_reduction") is not None
    ]
    rho2_world = max(reductions) if reductions else 0.005
    base = PromotionSpec(control_percent=10)
    specs = {
        "cuped": base,
        "raw": base.model_copy(update={"cuped": False}),
        "seq-only": base.model_copy(update={"final_test_share": 0.0}),
    }
    noise = calibrate_noise(rho2_world, args.seed)
    scenarios = {"A/A": (0.0, args.aa), "+2%": (0.02, args.ab), "+5%": (0.05, args.ab), "-3%": (-0.03, args.ab)}
    results: dict = {}
    agreement: list[bool] = []
    for name, (lift, count) in scenarios.items():
        summary, rho2, agree = run_scenario(name, lift, count, noise, specs, args.seed, CADENCES, args.check)
        summary["rho2"] = rho2
        results[name] = summary
        agreement += agree
        print(f"{name}: {count} streams, ρ² {rho2:.3f}, {time.perf_counter() - started:.0f} s", flush=True)
    sweep: dict = {}
    for target in (0.1, 0.3, 0.5):
        noise_t = calibrate_noise(target, args.seed)
        summary, rho2, agree = run_scenario(
            f"sweep{target}",
            0.05,
            args.sweep,
            noise_t,
            {k: specs[k] for k in ("cuped", "seq-only")},
            args.seed,
            {"10min": 10},
            1,
        )
        summary["rho2"] = rho2
        sweep[f"{target:g}"] = summary
        agreement += agree
        print(f"sweep ρ² {rho2:.2f}: {args.sweep} streams, {time.perf_counter() - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started

    aa, ab5 = results["A/A"], results["+5%"]
    figures = {}
    for cadence in CADENCES:
        key = f"cuped@{cadence}"
        figures[cadence] = {
            "aa_promote_or_roll_back": aa[key]["decisive"],
            "aa_promote_or_roll_back_ci95": aa[key]["decisive_ci95"],
            "aa_promote": aa[key]["promote"],
            "power_plus5": ab5[key]["promote"],
            "power_plus2": results["+2%"][key]["promote"],
            "harm_minus3_roll_back": results["-3%"][key]["roll_back"],
            "users_ratio_median": ab5[key]["users_ratio_median"],
            "users_ratio_p90": ab5[key]["users_ratio_p90"],
            "hours_median_plus5": ab5[key]["hours_median"],
        }
    targets = {"aa_promote_or_roll_back": ("<=", 0.05), "power_plus5": (">=", 0.80), "users_ratio_median": ("<=", 0.5)}
    passed = {
        f"{cadence}.{k}": (figures[cadence][k] <= v if op == "<=" else figures[cadence][k] >= v)
        for cadence in CADENCES
        for k, (op, v) in targets.items()
    }

    print(
        f"\nonline gate: {args.aa} A/A and {args.ab} streams per A/B scenario, ~{USERS_PER_ARM} users/arm, 7 days; "
        f"covariate ρ² {results['A/A']['rho2']:.3f} (from the simulated world: {rho2_world:.4f}); α = {base.alpha}"
    )
    header = f"{'measure':<44}" + "".join(f"{s + '@' + c:>16}" for c in CADENCES for s in specs)
    print(header + f"{'Welch 7d':>10}{'CUPED 7d':>10}  target")
    lines = [
        ("A/A PROMOTE + ROLL_BACK", "A/A", "decisive", "welch", "<= 0.05"),
        ("A/A PROMOTE", "A/A", "promote", None, ""),
        ("power +2% depth (PROMOTE)", "+2%", "promote", "welch", ""),
        ("power +5% depth (PROMOTE)", "+5%", "promote", "welch", ">= 0.80"),
        ("+5%: median users to decision / fixed test", "+5%", "users_ratio_median", None, "<= 0.50"),
        ("+5%: p90 users to decision / fixed test", "+5%", "users_ratio_p90", None, ""),
        ("+5%: median hours to decision", "+5%", "hours_median", None, ""),
        ("-3% depth detected (ROLL_BACK)", "-3%", "roll_back", "welch", ""),
        ("-3%: median hours to decision", "-3%", "hours_median", None, ""),
    ]
    for label, scenario, field, fixed_key, target in lines:
        row = results[scenario]
        cells = "".join(f"{row[f'{s}@{c}'][field]:>16.3f}" for c in CADENCES for s in specs)
        fixed_cells = f"{row['fixed_welch_rate']:>10.3f}{row['fixed_cuped_rate']:>10.3f}" if fixed_key else f"{'':>20}"
        print(f"{label:<44}{cells}{fixed_cells}  {target}")
    ci = aa["cuped@10min"]["decisive_ci95"]
    print(f"A/A decisive 95 % interval (cuped@10min): [{ci[0]:.3f}, {ci[1]:.3f}]")
    for row in sweep.values():
        r, q = row["cuped@10min"], row["seq-only@10min"]
        print(
            f"sweep ρ² {row['rho2']:.2f}: power +5% {r['promote']:.3f} (seq-only {q['promote']:.3f}), median users "
            f"ratio {r['users_ratio_median']:.2f} (seq-only {q['users_ratio_median']:.2f}), fixed CUPED "
            f"{row['fixed_cuped_rate']:.3f}, Welch {row['fixed_welch_rate']:.3f}"
        )
    print(f"evaluate_online replay agrees on {sum(agreement)}/{len(agreement)} streams (outcome and look)")
    print("targets: " + ", ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in passed.items()))
    print(f"{seconds:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "aa_streams": args.aa,
        "ab_streams_per_scenario": args.ab,
        "sweep_streams": args.sweep,
        "users_per_arm": USERS_PER_ARM,
        "days": DAYS,
        "cadences_minutes": CADENCES,
        "min_duration_hours": MIN_DURATION_MIN / 60,
        "alpha": base.alpha,
        "alpha_split": alpha_split(base).__dict__,
        "final_test_share": base.final_test_share,
        "sequential_tau": base.sequential_tau,
        "min_users_per_arm": base.min_users_per_arm,
        "min_events_per_arm": base.min_events_per_arm,
        "rho2_world": rho2_world,
        "seed": args.seed,
    }
    payload = {
        "config": config,
        "figures": figures,
        "targets": {k: f"{op} {v}" for k, (op, v) in targets.items()},
        "passed": passed,
        "scenarios": results,
        "sweep": sweep,
        "replay_agreement": [sum(agreement), len(agreement)],
        "seconds": seconds,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
