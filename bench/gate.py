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

The sums are kept per minute, the exporter's log(1 + depth) sums (in its units of 1/65536) among them. The gate's
decision rule runs on every look at two cadences, the default `checkInterval` (10 min) and 1 minute, with and
without CUPED, and with depth's deterioration tests on the log scale (the gate's) or on the relative lift of
depth (before the log-scale sums), and efficacy on either scale. To run ~10⁷ looks in minutes, the rule is applied
to whole look sequences with numpy (`gate_path`); every run also replays the first `--check` (200) streams of
every scenario through `evaluate_online` itself, look by look at 10 minutes as the operator calls it, and reports
how many decisions agree (outcome and look) and the rates `evaluate_online` itself gives on them. Streams are
independent and run in `--workers` processes (2), each from its own seed.
Baselines on the same streams: a fixed 7-day Welch test on raw depth and a fixed 7-day CUPED z-test, at α = 0.05.

    .venv/bin/python bench/gate.py [--aa 600] [--ab 200] [--check 200] [--workers 2] [--seed 0]
    .venv/bin/python bench/gate.py --novelty 60      # the novelty guard's study (bench/results/gate_novelty.json)
    .venv/bin/python bench/gate.py --reset 120       # an exporter restart on day 3 (bench/results/gate_reset.json)

About 25 CPU-minutes with the defaults (1,500 streams at ≈0.4 s each to simulate and run 11 designs, and 1,200
replays through `evaluate_online` at 6-hour reads); the replicate counts used are printed and written with the
results.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from flywheel_operator.api import (
    ArmStats,
    CanarySpec,
    DecisionPlan,
    OnlineDecision,
    OnlineReading,
    PromotionSpec,
    ServingGuardrail,
    ServingReading,
    ServingWindow,
    parse_duration,
)
from flywheel_operator.api.readings import LOG_DEPTH_UNIT
from flywheel_operator.gate import decision_plan, evaluate_online, plan_edits, sequential, stats
from flywheel_operator.gate.online import GROUP_SEQUENTIAL_METRICS, novelty_on
from flywheel_operator.gate.serving import evaluate_serving
from flywheel_operator.gate.store import LOG_UNITS
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
    *(f"{kind}.{name}" for name in GUARDRAIL_RATES for kind in ("g", "g2", "gr")), "adopted", "l", "l2",
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
    units = np.floor(np.log1p(c) * LOG_UNITS + 0.5), np.floor(np.log1p(c - y) * LOG_UNITS + 0.5)
    weights = {
        "l": (units[0] - units[1]) * LOG_DEPTH_UNIT,  # the exporter's log(1 + depth) sums, in its units
        "l2": (units[0] ** 2 - units[1] ** 2) * LOG_DEPTH_UNIT**2,
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


@dataclass
class Arms:
    """Every per-look quantity of one stream that both gates (issue 15's and the frozen plan's) need."""

    data: np.ndarray
    srm_log_e: np.ndarray
    enough: np.ndarray
    b_info: np.ndarray
    d_info: np.ndarray
    b_est: np.ndarray
    b_var: np.ndarray
    d_est: np.ndarray
    d_var: np.ndarray
    l_est: np.ndarray
    """Depth's deterioration statistic: the difference of the arms' mean log(1 + depth), and its variance."""
    l_var: np.ndarray
    guardrails: list  # (name, margin, estimate, variance)
    users: np.ndarray
    raw_c: tuple
    raw_t: tuple


def arms(sums: np.ndarray, spec: PromotionSpec) -> Arms:
    c, t = sums[0], sums[1]
    nc, nt = c[:, F["users"]], t[:, F["users"]]
    data = (nc > 0) & (nt > 0)
    ncs, nts = np.maximum(nc, 1), np.maximum(nt, 1)
    a = stats.SRM_CONCENTRATION * 0.5
    log_e = special.betaln(nt + a, nc + a) - special.betaln(a, a) - (nc + nt) * math.log(0.5)
    enough = data & (np.minimum(nc, nt) >= spec.min_users_per_arm)
    ec, et = c[:, F["engaged"]], t[:, F["engaged"]]
    b_info = enough & (np.minimum.reduce([ec, et, nc - ec, nt - et]) >= spec.min_events_per_arm)
    pc, pt = ec / ncs, et / nts
    b_est, b_var = _relative(pc, pc * (1 - pc), ncs, pt, pt * (1 - pt), nts)
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
    mlc, vlc = _moments(ncs, c[:, F["l"]], c[:, F["l2"]])
    mlt, vlt = _moments(nts, t[:, F["l"]], t[:, F["l2"]])
    l_est, l_var = mlt - mlc, vlc / ncs + vlt / nts
    guardrails = []
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
        guardrails.append((g.name, g.margin, rt - rc, vc / n1 + vt / n2))
    raw_c = (ncs, c[:, F["y"]])
    raw_t = (nts, t[:, F["y"]])
    return Arms(
        data, log_e, enough, b_info, d_info, b_est, b_var, d_est, d_var, l_est, l_var, guardrails, (nc + nt) / 2,
        raw_c, raw_t,
    )  # fmt: skip


def issue15_path(sums: np.ndarray, spec: PromotionSpec, interval: int) -> Path_:
    """The gate of f9f8494 (issue 15), for comparison: always-valid intervals at every look (two-sided), α split
    0.2 to the guardrails, each success metric's share 0.25 always-valid / 0.75 to one fixed z-test at
    maxDuration, and no deterioration test at the end. Re-implemented here: that code is gone from the gate."""
    x = arms(sums, spec)
    k_looks = sums.shape[1]
    elapsed = (np.arange(k_looks) + 1) * interval
    rest = spec.alpha - spec.srm_p_value
    metric = rest * 0.8 / 2
    final_alpha, success = metric * 0.75, metric * 0.25
    guardrail_alpha = rest * 0.2 / len(spec.guardrails)
    srm = x.data & (x.srm_log_e >= math.log(1.0 / spec.srm_p_value))
    b_lo, b_hi = _running(x.b_est, _half_width(x.b_var, spec.sequential_tau, success), x.b_info)
    d_lo, d_hi = _running(x.d_est, _half_width(x.d_var, spec.sequential_tau, success), x.d_info)
    z_final = stats.normal_quantile(1 - final_alpha / 2)
    inconsistent = (b_lo > b_hi) | (d_lo > d_hi)
    with np.errstate(invalid="ignore"):
        final_wins = (x.b_info & (x.b_est - z_final * np.sqrt(x.b_var) > spec.min_breadth_lift)) | (
            x.d_info & (x.d_est - z_final * np.sqrt(x.d_var) > spec.min_depth_lift)
        )
    final_wins &= elapsed >= DAYS * 1440
    breached = np.zeros(k_looks, dtype=bool)
    proven = np.ones(k_looks, dtype=bool)
    for _, margin, est, var in x.guardrails:
        lo, hi = _running(est, _half_width(var, margin, guardrail_alpha), x.enough & (var > 0))
        inconsistent |= lo > hi
        breached |= x.enough & (lo > margin)
        proven &= x.enough & (hi < margin)
    harm = srm | (x.b_info & (b_hi < 0)) | (x.d_info & (d_hi < 0)) | breached
    wins = (x.b_info & (b_lo > spec.min_breadth_lift)) | (x.d_info & (d_lo > spec.min_depth_lift)) | final_wins
    promote = wins & x.b_info & x.d_info & proven & (elapsed >= MIN_DURATION_MIN)
    return _first(x.enough & inconsistent, harm, promote, k_looks, srm, x.b_info & (b_hi < 0), x.d_info & (d_hi < 0))


def _first(stop_inconsistent, harm, promote, k_looks, srm, b_harm, d_harm) -> Path_:
    decided = stop_inconsistent | harm | promote
    if not decided.any():
        return Path_("INCONCLUSIVE", k_looks - 1, "max-duration")
    k = int(np.argmax(decided))
    if stop_inconsistent[k]:
        return Path_("INCONCLUSIVE", k, "consistency")
    if harm[k]:
        cause = "srm" if srm[k] else "breadth" if b_harm[k] else "depth" if d_harm[k] else "guardrail"
        return Path_("ROLL_BACK", k, cause)
    return Path_("PROMOTE", k, "")


def plan_for(spec: PromotionSpec, max_minutes: int = DAYS * 1440) -> DecisionPlan:
    """The plan the operator would freeze at the canary's start (bench defaults: 10 % per arm, 1d–7d)."""
    canary = CanarySpec(
        inference_service="chat",
        traffic_percent=10,
        min_duration=f"{MIN_DURATION_MIN}m",
        max_duration=f"{max_minutes}m",
    )
    return decision_plan(spec, canary, now=START)


def gate_path(
    sums: np.ndarray,
    plan: DecisionPlan,
    interval: int,
    *,
    adversary: bool = False,
    harm_scale: str = "log",
    efficacy_scale: str = "raw",
) -> Path_:
    """`evaluate_online`'s decision at every look of one stream (sums at the looks: (2, K, F)), first decision.

    `harm_scale`: depth's deterioration tests on the mean of log(1 + depth) (the gate's) or on the relative lift
    of depth (the gate before the log-scale sums); `efficacy_scale`: depth's efficacy boundary on the relative
    lift of depth, CUPED when on (the gate's), or on the log scale (a design measured, not shipped).

    `adversary`: the counterfactual of a gate that re-reads the spec at every look, against someone who sets
    maxDuration to "now" whenever the published depth statistic would promote were this look the last one: it
    becomes the last one and spends every α left. The frozen plan ignores the edit (see `replay`)."""
    spec = plan.promotion
    alphas = plan.alpha
    x = arms(sums, spec)
    k_looks = sums.shape[1]
    elapsed = (np.arange(k_looks) + 1) * interval
    srm = x.data & (x.srm_log_e >= math.log(1.0 / alphas.srm))
    b_lo, b_hi = _running(
        x.b_est, _half_width(x.b_var, spec.sequential_tau, 2 * alphas.harm_always_valid["breadth"]), x.b_info
    )
    h_est, h_var = (x.l_est, x.l_var) if harm_scale == "log" else (x.d_est, x.d_var)
    e_est, e_var = (x.l_est, x.l_var) if efficacy_scale == "log" else (x.d_est, x.d_var)
    harm_level = 2 * alphas.harm_always_valid["depth"]
    d_lo, d_hi = _running(h_est, _half_width(h_var, spec.sequential_tau, harm_level), x.d_info)
    inconsistent = (b_lo > b_hi) | (d_lo > d_hi)
    breached = np.zeros(k_looks, dtype=bool)
    proven = np.ones(k_looks, dtype=bool)
    for _, margin, est, var in x.guardrails:
        lo, hi = _running(est, _half_width(var, margin, 2 * alphas.guardrail), x.enough & (var > 0))
        inconsistent |= lo > hi
        breached |= x.enough & (lo > margin)
        proven &= x.enough & (hi < margin)
    b_eff_lo, _ = _running(x.b_est, _half_width(x.b_var, spec.sequential_tau, 2 * alphas.efficacy["breadth"]), x.b_info)
    b_harm = x.b_info & (b_hi < 0)
    d_harm = x.d_info & (d_hi < 0)
    harm = srm | b_harm | d_harm | breached
    promote = np.zeros(k_looks, dtype=bool)
    # the scheduled looks (every lookEvery, the last at maxDuration)
    schedule = [round(h * 60) for h in plan.schedule_hours]
    min_hours = parse_duration(plan.min_duration).total_seconds() / 3600
    looks_at = [m // interval - 1 for m in schedule]
    taken: list[tuple[int, int, float]] = []  # (schedule index, look, fraction) of the looks that spend α
    for j, k in enumerate(looks_at):
        if k >= k_looks or not x.data[k]:
            continue
        final = j == len(looks_at) - 1
        users = x.users[k]
        if final:
            fraction = 1.0
        else:
            expected = plan.expected_users_per_arm or users * plan.schedule_hours[-1] / plan.schedule_hours[j]
            fraction = min(users / max(expected, users, 1.0), 0.999)
        fraction = round(fraction, sequential.FRACTION_DIGITS)
        if taken and fraction <= taken[-1][2]:
            continue
        taken.append((j, k, fraction))
    fractions = [f for _, _, f in taken]
    late_ok = [plan.schedule_hours[j] >= min_hours - 1e-9 for j, _, _ in taken]
    efficacy_fractions = [f for f, ok in zip(fractions, late_ok, strict=True) if ok]
    harm_bounds = {m: sequential.boundaries(alphas.harm_scheduled[m], fractions) for m in GROUP_SEQUENTIAL_METRICS}
    efficacy_bounds = {
        m: sequential.boundaries(alphas.efficacy[m], efficacy_fractions) for m in GROUP_SEQUENTIAL_METRICS
    }
    seen_efficacy = 0
    for i, (j, k, _) in enumerate(taken):
        final = j == len(looks_at) - 1
        seen_efficacy += late_ok[i]
        late = False
        if adversary and not final and late_ok[i] and x.d_info[k] and e_var[k] > 0:
            # the published z against the bound this look would have as the last one: favourable → shorten to now
            as_last = sequential.boundaries(alphas.efficacy["depth"], [*efficacy_fractions[: seen_efficacy - 1], 1.0])
            late = (e_est[k] - spec.min_depth_lift) / math.sqrt(e_var[k]) >= as_last[-1]
        wins = False
        if late_ok[i] and x.b_info[k] and b_eff_lo[k] > spec.min_breadth_lift:  # breadth: always-valid efficacy
            wins = True
        for metric, info, est, var, minimum in (("depth", x.enough, e_est, e_var, spec.min_depth_lift),):
            if not info[k] or not var[k] > 0 or not h_var[k] > 0:
                continue
            se = math.sqrt(var[k])
            if h_est[k] / math.sqrt(h_var[k]) <= -harm_bounds[metric][i]:
                harm[k] = True
                (b_harm if metric == "breadth" else d_harm)[k] = True
            if late_ok[i]:
                if late:
                    used = [*efficacy_fractions[: seen_efficacy - 1], 1.0]
                    bound = sequential.boundaries(alphas.efficacy[metric], used)[-1]
                else:
                    bound = efficacy_bounds[metric][seen_efficacy - 1]
                wins |= (est[k] - minimum) / se >= bound
        with np.errstate(divide="ignore", invalid="ignore"):
            d_level = stats.normal_quantile(1 - alphas.harm_scheduled["depth"])
            b_level = stats.normal_quantile(1 - alphas.harm_always_valid["breadth"])
            blocked = h_est[k] / np.sqrt(h_var[k]) <= -d_level or x.b_est[k] / np.sqrt(x.b_var[k]) <= -b_level
        ready = wins and not blocked and x.b_info[k] and x.d_info[k] and proven[k] and elapsed[k] >= MIN_DURATION_MIN
        if ready and (not novelty_on(spec) or _novelty_holds(sums, spec, interval, k)):
            promote[k] = True
        if late:  # the edited maxDuration ends the experiment here, whatever this look decided
            end = k + 1
            path = _first((x.enough & inconsistent)[:end], harm[:end], promote[:end], end, srm, b_harm, d_harm)
            return Path_("INCONCLUSIVE", k, "adversary") if path.outcome == "INCONCLUSIVE" else path
    return _first(x.enough & inconsistent, harm, promote, k_looks, srm, b_harm, d_harm)


def _novelty_holds(sums: np.ndarray, spec: PromotionSpec, interval: int, k: int) -> bool:
    """The novelty guard at look k: checkpoints at every half window from one window in; the newest one a window
    old is the baseline; depth's lift over the turns added since must exceed the minimum lift."""
    window = round(parse_duration(spec.novelty_window or "1d").total_seconds() / 60)
    now = (k + 1) * interval
    j = (now - window) // (window // 2)
    if j < 2:
        return False
    then = j * (window // 2) // interval - 1
    means = []
    for arm in (0, 1):
        n = sums[arm, k, F["users"]]
        means.append((sums[arm, k, F["y"]] - sums[arm, then, F["y"]]) / n)
    return means[0] > 0 and means[1] / means[0] - 1.0 > spec.min_depth_lift


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
        depth_log_sum=float(row[F["l"]]),
        depth_log_sum_squares=float(row[F["l2"]]),
    )


def replay(
    sums: np.ndarray,
    plan: DecisionPlan,
    interval: int,
    *,
    adversary: bool = False,
    fail_final: int = 0,
) -> Path_:
    """The same looks through `evaluate_online`, carrying `previous` as the operator does. `adversary`: after
    every look whose published depth statistic favours promotion, the spec's maxDuration is edited to "now";
    the planner's `plan_edits` sees the edit and the gate keeps deciding with the frozen `plan` (what the
    operator does). `fail_final`: the reading fails at the maxDuration look and the next `fail_final − 1` retries
    (5 minutes apart, within finalLookGrace), then the last sums come back."""
    previous: OnlineDecision | None = None
    spec = plan.promotion
    ignored = 0
    looks = [(k, timedelta(minutes=interval * (k + 1))) for k in range(sums.shape[1])]
    if fail_final:
        last = looks.pop()
        looks += [(None, last[1] + timedelta(minutes=5 * i)) for i in range(fail_final)]
        looks.append((last[0], last[1] + timedelta(minutes=5 * fail_final)))
    for k, elapsed in looks:
        if k is None:
            reading = OnlineReading(at=START + elapsed, error="Prometheus answered 503")
        else:
            control, treatment = sums[0, k], sums[1, k]
            if min(control[F["users"]], treatment[F["users"]]) == 0:
                reading = OnlineReading(at=START + elapsed, error="an arm has no users yet")
            else:
                reading = OnlineReading(at=START + elapsed, control=arm_stats(control), treatment=arm_stats(treatment))
        previous = evaluate_online(plan, reading, elapsed=elapsed, previous=previous, now=START + elapsed)
        if adversary and previous.numbers.get("depth.z_efficacy", -1.0) > 0:
            edited = plan_for(spec, max_minutes=max(round(elapsed.total_seconds() / 60), MIN_DURATION_MIN + 1))
            canary = CanarySpec(inference_service="chat", traffic_percent=10, min_duration=edited.min_duration,
                                max_duration=edited.max_duration)  # fmt: skip
            ignored += bool(plan_edits(plan, spec, canary))
        if previous.outcome != "CONTINUE":
            return Path_(previous.outcome, k if k is not None else sums.shape[1] - 1, f"ignored-edits:{ignored}")
    raise AssertionError("the gate must decide by maxDuration + finalLookGrace")


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


def _stream_rng(seed: int, name: str, index: int) -> np.random.Generator:
    """Each stream its own generator: the same streams whatever the number of worker processes."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), index])


def _one_stream(job: tuple) -> dict:
    """One stream of a scenario (run in a worker process): every design's path, the fixed baselines, and with
    `check` its replay through `evaluate_online` at 10-minute looks (and the adversary's, with `adversary`)."""
    name, lift, noise, designs, seed, index, check, check_minutes, check_10min, adversary = job
    stream = simulate_stream(_stream_rng(seed, name, index), lift, noise)
    final = stream[:, -1]
    out: dict = {"total": final[:, F["users"]].sum(), "rho2": rho_squared(final), "fixed": fixed_tests(final, 0.05)}
    rows = {}
    for key, (kind, subject, cadence, options) in designs.items():
        options = dict(options)
        if name not in options.pop("scenarios", (name,)):
            continue
        seen = looks(stream, CADENCES[cadence])
        if kind == "issue15":
            path = issue15_path(seen, subject, CADENCES[cadence])
        else:
            path = gate_path(seen, subject, CADENCES[cadence], adversary=kind == "unfrozen+adversary", **options)
        users = seen[:, path.look, F["users"]].sum()
        rows[key] = (path, users, (path.look + 1) * CADENCES[cadence] / 60)
    out["rows"] = rows
    plan = designs["plan@10min"][1]
    if check:  # the operator's own code on the same looks as the fast path
        seen = looks(stream, check_minutes)
        out["replay"] = (replay(seen, plan, check_minutes), gate_path(seen, plan, check_minutes))
    if check_10min:
        out["replay_10min"] = (replay(looks(stream, 10), plan, 10), rows["plan@10min"][0])
    if adversary:
        seen = looks(stream, 60)
        real, attacked = replay(seen, plan, 60), replay(seen, plan, 60, adversary=True)
        out["adversary"] = (attacked.outcome, int(attacked.cause.split(":")[1]), real.outcome)
    return out


def _final_failure(job: tuple) -> tuple[str, str]:
    """A stream decided (or not) at the maxDuration look, replayed at 60-minute looks with and without three
    failed readings there."""
    name, lift, noise, plan, seed, index = job
    seen = looks(simulate_stream(_stream_rng(seed, name, index), lift, noise), 60)
    clean, failed = replay(seen, plan, 60), replay(seen, plan, 60, fail_final=3)
    return clean.outcome, failed.outcome


def _agreement(replayed: list[tuple[int, Path_, Path_]], minutes: int) -> dict:
    """How often `evaluate_online` and the vectorised path agree (outcome and look), and the rates
    `evaluate_online` itself gives on the replayed streams."""
    outcomes = [real.outcome for _, real, _ in replayed]
    agree = [(real.outcome, real.look) == (fast.outcome, fast.look) for _, real, fast in replayed]
    n = len(replayed)
    return {
        "streams": n,
        "look_minutes": minutes,
        "agree_outcome_and_look": sum(agree),
        "agree_outcome": sum(real.outcome == fast.outcome for _, real, fast in replayed),
        "agreement": sum(agree) / n,
        "promote": outcomes.count("PROMOTE") / n,
        "roll_back": outcomes.count("ROLL_BACK") / n,
        "roll_back_ci95": interval95(outcomes.count("ROLL_BACK"), n),
        "decisive": (outcomes.count("PROMOTE") + outcomes.count("ROLL_BACK")) / n,
        "inconclusive": outcomes.count("INCONCLUSIVE") / n,
        "disagreements": [
            {"stream": i, "evaluate_online": [real.outcome, real.look], "fast_path": [fast.outcome, fast.look]}
            for (i, real, fast), same in zip(replayed, agree, strict=True)
            if not same
        ][:10],
    }


def run_scenario(
    pool, name, lift, streams, noise, designs, seed, check, *, check_minutes=60, check_10min=0, adversary=False,
    fail_final=0, adversary_check=0,
):  # fmt: skip
    """Streams of one kind: every design's path at its cadence, the fixed baselines, and replays through
    `evaluate_online` of the first `check` streams (at `check_minutes` looks) and of the first `check_10min` (at
    10-minute looks), each compared with the vectorised path on the same looks."""
    jobs = [
        (name, lift, noise, designs, seed, i, i < check, check_minutes, i < check_10min,
         adversary and i < adversary_check)
        for i in range(streams)
    ]  # fmt: skip
    results = list(pool.imap(_one_stream, jobs, chunksize=2))
    rows = {key: [r["rows"][key] for r in results] for key in designs if key in results[0]["rows"]}
    fixed = {test: [r["fixed"][test] for r in results] for test in ("welch", "cuped")}
    totals = [r["total"] for r in results]
    summary = summarise(rows, fixed, np.array(totals), lift)
    summary["rho2"] = float(np.mean([r["rho2"] for r in results]))
    for field, minutes in (("replay", check_minutes), ("replay_10min", 10)):
        replayed = [(i, *r[field]) for i, r in enumerate(results) if field in r]
        if replayed:
            summary["evaluate_online" if field == "replay" else "evaluate_online_10min"] = _agreement(
                replayed, minutes
            )
    adversary_rows = [r["adversary"] for r in results if "adversary" in r]

    if adversary_rows:
        summary["adversary_replay"] = {
            "streams": len(adversary_rows),
            "decisive": sum(o in ("PROMOTE", "ROLL_BACK") for o, _, _ in adversary_rows) / len(adversary_rows),
            "same_outcome_as_without_edits": sum(o == r for o, _, r in adversary_rows) / len(adversary_rows),
            "streams_with_ignored_edits": sum(n > 0 for _, n, _ in adversary_rows),
        }
    last = MINUTES // 10 - 1
    at_the_end = [i for i, r in enumerate(results) if r["rows"]["plan@10min"][0].look == last][:fail_final]
    if at_the_end:
        plan = designs["plan@10min"][1]
        final_rows = list(pool.imap(_final_failure, [(name, lift, noise, plan, seed, i) for i in at_the_end]))
        summary["final_look_failure"] = {
            "streams": len(final_rows),
            "look_minutes": 60,
            "failed_readings": 3,
            "same_outcome": sum(a == b for a, b in final_rows) / len(final_rows),
            "outcomes_without_failure": {o: sum(a == o for a, _ in final_rows) for o in {a for a, _ in final_rows}},
        }
    return summary


# ---------------------------------------------------------------------------------- SRE guardrails
def sre_study(streams: int, rate: float, seed: int) -> dict:
    """The hard errors guardrail at its defaults: requests per arm per minute ~ Poisson(rate × the diurnal curve),
    each failing with probability 1 % on the parent; the canary fails at 1 % (A/A, the whole 7 days) or at 5 %
    (5× the parent's, the first hour). The canary starts at midnight, when traffic is lowest. The rule is applied
    to whole windows with numpy and checked against `evaluate_serving` itself on the first streams."""
    guardrail = next(g for g in PromotionSpec().serving_guardrails if g.metric == "errors")
    every = round(parse_duration(guardrail.interval).total_seconds() / 60)
    minute = np.arange(MINUTES) % 1440
    curve = 1.0 + 0.7 * np.sin(2 * np.pi * (minute / 1440 - 0.35))
    rng = np.random.default_rng([seed, 7])
    out: dict = {"rate_per_arm_per_minute": rate, "interval_minutes": every, "threshold": guardrail.threshold,
                 "failures": guardrail.failures, "min_requests": guardrail.min_requests}  # fmt: skip
    agree = []
    for name, p_canary, horizon, count in (("A/A", 0.01, MINUTES, streams), ("5x errors", 0.05, 60, streams * 4)):
        times: list[float | None] = []
        for i in range(count):
            lam = rate * curve[:horizon]
            requests = rng.poisson(lam, (2, horizon))
            errors = rng.binomial(requests, np.array([[0.01], [p_canary]]))
            ends = np.arange(every, horizon + 1, every)
            window = np.add.reduceat(requests, ends - every, axis=1)[:, : len(ends)]
            bad = np.add.reduceat(errors, ends - every, axis=1)[:, : len(ends)]
            judged = window[1] >= guardrail.min_requests
            with np.errstate(invalid="ignore", divide="ignore"):
                excess = bad[1] / window[1] - np.where(window[0] > 0, bad[0] / np.maximum(window[0], 1), 0.0)
            fail = judged & (window[0] > 0) & (excess > guardrail.threshold)
            run, at = 0, None
            for k in range(len(ends)):
                if not (judged[k] and window[0, k] > 0):
                    continue
                run = run + 1 if fail[k] else 0
                if run >= guardrail.failures:
                    at = float(ends[k])
                    break
            times.append(at)
            if i < 3:
                agree.append(_serving_replay(guardrail, window, bad, ends) == at)
        hits = [t for t in times if t is not None]
        out[name] = {
            "streams": count,
            "minutes_simulated": horizon,
            "rolled_back": len(hits) / count,
            "rolled_back_ci95": interval95(len(hits), count),
            "rolled_back_within_15_min": sum(t <= 15 for t in hits) / count,
            "median_minutes_to_roll_back": float(np.median(hits)) if hits else None,
        }
    out["replay_agreement"] = [sum(agree), len(agree)]
    return out


def _serving_replay(guardrail: ServingGuardrail, window, bad, ends) -> float | None:
    """The same windows through `evaluate_serving`, carrying the failure count as the gate does."""
    carried: dict[str, float] = {}
    for k, end in enumerate(ends):
        reading = ServingReading(windows={guardrail.metric: {
            "control": ServingWindow(requests=float(window[0, k]), errors=float(bad[0, k])),
            "treatment": ServingWindow(requests=float(window[1, k]), errors=float(bad[1, k])),
        }})  # fmt: skip
        numbers = dict(carried)
        _, harm, _ = evaluate_serving([guardrail], reading, timedelta(minutes=int(end)), carried, numbers)
        carried = {k2: v for k2, v in numbers.items() if k2.startswith("serving.")}
        if harm:
            return float(end)
    return None


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
    direction = float(np.mean(lift))
    for test, results in fixed.items():
        hits = [s and (e > 0 if direction > 0 else e < 0 if direction < 0 else True) for s, e in results]
        out[f"fixed_{test}_rate"] = float(np.mean(hits))
    for key, results in rows.items():
        outcomes = [p.outcome for p, _, _ in results]
        n = len(results)
        decided = [(p.outcome in ("PROMOTE", "ROLL_BACK")) for p, _, _ in results]
        users = np.array([u if d else tot for (_, u, _), d, tot in zip(results, decided, totals, strict=True)])
        hours = np.array([h if d else DAYS * 24.0 for (_, _, h), d in zip(results, decided, strict=True)])
        ratio = users / totals
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
            "hours_median_to_promote": float(np.median([h for (p, _, h) in results if p.outcome == "PROMOTE"]))
            if promote
            else None,
            "hours_median_to_roll_back": float(np.median([h for (p, _, h) in results if p.outcome == "ROLL_BACK"]))
            if roll_back
            else None,
            "causes": {
                c: sum(1 for p, _, _ in results if f"{p.outcome}:{p.cause}" == c)
                for c in sorted({f"{p.outcome}:{p.cause}" for p, _, _ in results})
            },
        }
    return out


def reset_study(streams: int, seed: int, out: Path) -> int:
    """An exporter restart without its state on day 3, through `evaluate_online` itself at 30-minute looks: the
    same A/A and +5 % streams with and without the restart."""
    started = time.perf_counter()
    spec = plan_for(PromotionSpec(control_percent=10, expected_users_per_arm=USERS_PER_ARM))
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
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("gate_reset", out)  # provenance
    return 0


def _same_at_the_end(*rows: dict) -> float | None:
    """Share of the streams decided at the maxDuration look whose outcome survives 3 failed readings there."""
    runs = [(r["final_look_failure"]["same_outcome"], r["final_look_failure"]["streams"]) for r in rows
            if "final_look_failure" in r]  # fmt: skip
    total = sum(n for _, n in runs)
    return sum(share * n for share, n in runs) / total if total else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aa", type=int, default=300, help="A/A streams (also replayed by the spec-editing adversary)")
    parser.add_argument("--ab", type=int, default=200, help="streams of each A/B scenario")
    parser.add_argument("--sre", type=int, default=200, help="A/A error streams of the SRE study (4× as many 5× ones)")
    parser.add_argument("--check", type=int, default=200, help="streams per scenario replayed through evaluate_online")
    parser.add_argument(
        "--check-minutes", type=int, default=360, help="the look interval of those replays (6 h: the look schedule)"
    )
    parser.add_argument("--check-10min", type=int, default=3, help="streams per scenario also replayed at 10 minutes")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (streams are independent)")
    parser.add_argument("--final", type=int, default=20, help="+5 %% streams replayed with a failed last reading")
    parser.add_argument("--adversary", type=int, default=40, help="A/A streams replayed with the spec editor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gate.json")
    parser.add_argument("--reset", type=int, default=0, help="run only the exporter-restart study with N A/A streams")
    args = parser.parse_args()
    if args.reset:
        return reset_study(args.reset, args.seed, Path(__file__).parent / "results" / "gate_reset.json")

    started = time.perf_counter()
    sim = json.loads(FLYWHEEL_RESULTS.read_text()) if FLYWHEEL_RESULTS.exists() else {"rows": []}
    reductions = [
        r.get("measured", {}).get("depth.cuped_variance_reduction")
        for r in sim.get("rows", [])
        if r.get("measured", {}).get("depth.cuped_variance_reduction") is not None
    ]
    rho2_world = max(reductions) if reductions else 0.005
    # the operator's defaults; the expected users per arm stand for the pre-period's traffic
    base = PromotionSpec(control_percent=10, expected_users_per_arm=USERS_PER_ARM)
    plan = plan_for(base)
    variants = {
        "plan": plan,
        "plan-raw": plan_for(base.model_copy(update={"cuped": False})),
        "plan-no-novelty": plan_for(base.model_copy(update={"novelty_window": "0d"})),
        "plan-novelty-2d": plan_for(base.model_copy(update={"novelty_window": "2d"})),
    }
    raw_harm, log_efficacy = {"harm_scale": "raw"}, {"efficacy_scale": "log"}
    aa_only = {"scenarios": ("A/A",)}  # 1-minute looks: the A/A targets (ten times the looks of 10 minutes)
    designs = {
        "plan@10min": ("plan", variants["plan"], "10min", {}),
        "plan@1min": ("plan", variants["plan"], "1min", aa_only),
        "plan-raw@10min": ("plan", variants["plan-raw"], "10min", {}),
        "plan-raw-harm@10min": ("plan", variants["plan"], "10min", raw_harm),
        "plan-log-efficacy@10min": ("plan", variants["plan"], "10min", log_efficacy),
        "plan-no-novelty@10min": ("plan", variants["plan-no-novelty"], "10min", {}),
        "plan-novelty-2d@10min": ("plan", variants["plan-novelty-2d"], "10min", {}),
        "issue15@10min": ("issue15", PromotionSpec(control_percent=10), "10min", {}),
        "issue15@1min": ("issue15", PromotionSpec(control_percent=10), "1min", aa_only),
        "unfrozen+adversary@10min": ("unfrozen+adversary", variants["plan"], "10min", {}),
        "unfrozen+adversary@1min": ("unfrozen+adversary", variants["plan"], "1min", aa_only),
    }
    noise = calibrate_noise(rho2_world, args.seed)
    fading = 0.10 * np.maximum(0.0, 1.0 - np.arange(DAYS) / 4)
    scenarios = {
        "A/A": (0.0, args.aa),
        "+2%": (0.02, args.ab),
        "+5%": (0.05, args.ab),
        "-3%": (-0.03, args.ab),
        "-10%": (-0.10, args.ab),
        "fading +10% to 0 by day 4": (fading, args.ab),
    }
    results: dict = {}
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        for name, (lift, count) in scenarios.items():
            summary = run_scenario(
                pool, name, lift, count, noise, designs, args.seed, args.check, check_minutes=args.check_minutes,
                check_10min=args.check_10min, adversary=name == "A/A",
                fail_final=args.final if name in ("+5%", "-3%") else 0, adversary_check=args.adversary,
            )  # fmt: skip
            results[name] = summary
            print(f"{name}: {count} streams, ρ² {summary['rho2']:.3f}, {time.perf_counter() - started:.0f} s",
                  flush=True)  # fmt: skip
    replays = {name: r["evaluate_online"] for name, r in results.items() if "evaluate_online" in r}
    replays_10min = {name: r["evaluate_online_10min"] for name, r in results.items() if "evaluate_online_10min" in r}
    agreement = [
        sum(r["agree_outcome_and_look"] for r in replays.values()),
        sum(r["streams"] for r in replays.values()),
    ]
    sre = {f"{rate:g}": sre_study(args.sre, rate, args.seed) for rate in (1000.0, 300.0)}
    print(f"SRE study: {time.perf_counter() - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started

    aa, ab5, m3, m10 = results["A/A"], results["+5%"], results["-3%"], results["-10%"]
    figures = {
        "aa_decisive_10min": aa["plan@10min"]["decisive"],
        "aa_decisive_10min_ci95": aa["plan@10min"]["decisive_ci95"],
        "aa_decisive_1min": aa["plan@1min"]["decisive"],
        "aa_decisive_1min_ci95": aa["plan@1min"]["decisive_ci95"],
        # the frozen plan ignores the edits: its A/A rate under the adversary is the plan's own, as long as every
        # replay with the adversary's edits ends exactly as the one without (checked on the replayed streams)
        "aa_decisive_adversary_frozen": aa["plan@10min"]["decisive"]
        if aa["adversary_replay"]["same_outcome_as_without_edits"] == 1.0
        else None,
        "aa_adversary_replays_identical": [
            round(aa["adversary_replay"]["same_outcome_as_without_edits"] * aa["adversary_replay"]["streams"]),
            aa["adversary_replay"]["streams"],
        ],
        "aa_decisive_adversary_unfrozen_10min": aa["unfrozen+adversary@10min"]["decisive"],
        "aa_decisive_adversary_unfrozen_1min": aa["unfrozen+adversary@1min"]["decisive"],
        "power_plus5": ab5["plan@10min"]["promote"],
        "power_plus5_ci95": ab5["plan@10min"]["promote_ci95"],
        "hours_median_to_promote_plus5": ab5["plan@10min"]["hours_median_to_promote"],
        "minus3_roll_back": m3["plan@10min"]["roll_back"],
        "minus3_roll_back_ci95": m3["plan@10min"]["roll_back_ci95"],
        "minus3_promote": m3["plan@10min"]["promote"],
        "minus10_hours_median_to_roll_back": m10["plan@10min"]["hours_median_to_roll_back"],
        "sre_5x_rolled_back_within_15_min": sre["1000"]["5x errors"]["rolled_back_within_15_min"],
        "sre_aa_rolled_back": sre["1000"]["A/A"]["rolled_back"],
        "final_look_failure_same_outcome": _same_at_the_end(ab5, m3),
        "minus3_roll_back_raw_depth_harm": m3["plan-raw-harm@10min"]["roll_back"],
        "minus3_roll_back_evaluate_online": m3["evaluate_online"]["roll_back"] if "evaluate_online" in m3 else None,
        "power_plus5_log_efficacy": ab5["plan-log-efficacy@10min"]["promote"],
        "aa_decisive_log_efficacy": aa["plan-log-efficacy@10min"]["decisive"],
        "replay_streams_per_scenario_min": min((r["streams"] for r in replays.values()), default=0),
        "replay_agreement": agreement[0] / agreement[1] if agreement[1] else None,
        "replay_agreement_10min": [
            sum(r["agree_outcome_and_look"] for r in replays_10min.values()),
            sum(r["streams"] for r in replays_10min.values()),
        ],
        "fading_promote_novelty_1d": results["fading +10% to 0 by day 4"]["plan@10min"]["promote"],
        "fading_promote_no_novelty": results["fading +10% to 0 by day 4"]["plan-no-novelty@10min"]["promote"],
    }
    targets = {
        "aa_decisive_10min": ("<=", 0.05),
        "aa_decisive_1min": ("<=", 0.05),
        "aa_decisive_adversary_frozen": ("<=", 0.05),
        "power_plus5": (">=", 0.90),
        "hours_median_to_promote_plus5": ("<=", 90.0),
        "minus3_roll_back": (">=", 0.60),
        "minus3_promote": ("<=", 0.01),
        "minus10_hours_median_to_roll_back": ("<=", 24.0),
        "sre_5x_rolled_back_within_15_min": (">=", 0.99),
        "sre_aa_rolled_back": ("<=", 0.0),
        "final_look_failure_same_outcome": (">=", 1.0),
        "replay_streams_per_scenario_min": (">=", 200),
    }
    passed = {
        k: figures[k] is not None and (figures[k] <= v if op == "<=" else figures[k] >= v)
        for k, (op, v) in targets.items()
    }

    print(
        f"\nonline gate: {args.aa} A/A and {args.ab} streams per A/B scenario, ~{USERS_PER_ARM} users/arm, 7 days; "
        f"covariate ρ² {aa['rho2']:.3f} (from the simulated world: {rho2_world:.4f}); α = {base.alpha}"
    )
    shown = list(designs)
    print(f"{'measure':<34}" + "".join(f"{d[:22]:>23}" for d in shown) + f"{'Welch 7d':>10}{'CUPED 7d':>10}")
    lines = [
        ("A/A PROMOTE + ROLL_BACK", "A/A", "decisive", True),
        ("A/A PROMOTE", "A/A", "promote", False),
        ("+2% PROMOTE", "+2%", "promote", True),
        ("+5% PROMOTE", "+5%", "promote", True),
        ("+5% median hours to PROMOTE", "+5%", "hours_median_to_promote", False),
        ("-3% ROLL_BACK", "-3%", "roll_back", True),
        ("-3% PROMOTE", "-3%", "promote", False),
        ("-10% median hours to ROLL_BACK", "-10%", "hours_median_to_roll_back", False),
        ("fading PROMOTE", "fading +10% to 0 by day 4", "promote", False),
        ("fading median hours to PROMOTE", "fading +10% to 0 by day 4", "hours_median_to_promote", False),
    ]
    for label, scenario, field, fixed_key in lines:
        row = results[scenario]
        values = [row.get(d, {}).get(field) for d in shown]
        cells = "".join(f"{v:>23.3f}" if v is not None else f"{'-':>23}" for v in values)
        fixed_cells = f"{row['fixed_welch_rate']:>10.3f}{row['fixed_cuped_rate']:>10.3f}" if fixed_key else ""
        print(f"{label:<34}{cells}{fixed_cells}")
    print(f"A/A adversary through evaluate_online (frozen plan): {aa['adversary_replay']}")
    print(f"last reading failed 3 times: +5% {ab5.get('final_look_failure')}, -3% {m3.get('final_look_failure')}")
    for rate, row in sre.items():
        print(f"SRE errors guardrail at {rate} requests/min/arm: A/A {row['A/A']}, 5x {row['5x errors']}")
    print(f"evaluate_online replay ({args.check_minutes}-min looks) agrees on {agreement[0]}/{agreement[1]} streams "
          f"(outcome and look); at 10-min looks {figures['replay_agreement_10min']}")  # fmt: skip
    for name, r in [*replays.items(), *((f"{n} (10 min)", r) for n, r in replays_10min.items())]:
        print(f"  {name}: {r['agree_outcome_and_look']}/{r['streams']}, evaluate_online PROMOTE {r['promote']:.3f} "
              f"ROLL_BACK {r['roll_back']:.3f}; disagreements {r['disagreements'][:3]}")  # fmt: skip
    print("targets: " + ", ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in passed.items()))
    print(f"{seconds:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "aa_streams": args.aa,
        "ab_streams_per_scenario": args.ab,
        "users_per_arm": USERS_PER_ARM,
        "days": DAYS,
        "cadences_minutes": CADENCES,
        "min_duration_hours": MIN_DURATION_MIN / 60,
        "plan": plan.model_dump(mode="json", by_alias=True, exclude={"promotion": {"queries", "serving_queries"}}),
        "rho2_world": rho2_world,
        "seed": args.seed,
        "designs": {
            k: f"{kind} at {cadence}" + "".join(f", {o}={v}" for o, v in options.items())
            for k, (kind, _, cadence, options) in designs.items()
        },
        "replayed_streams_per_scenario": args.check,
        "replay_look_minutes": args.check_minutes,
        "replayed_streams_per_scenario_at_10min": args.check_10min,
        "workers": args.workers,
    }
    payload = {
        "config": config,
        "figures": figures,
        "targets": {k: f"{op} {v}" for k, (op, v) in targets.items()},
        "passed": passed,
        "scenarios": results,
        "sre": sre,
        "replay_agreement": agreement,
        "seconds": seconds,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("gate", args.out)  # provenance
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
