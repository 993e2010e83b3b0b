"""The A/B's breadth lift against the oracle's, in a controlled simulator experiment (issue 26, problem 7).

The flywheel bench found the canary's breadth lift several times the oracle's (+23.8 % against +6.1 %, +9.5 %
against +1.7 %, +8.1 % against +0.5 %). Which side is biased? Here both sides meet a known truth, with scripted
policies (no model): the same policy on both arms (both must read ~0), a better one (asks back, follows more
instructions) and the emoji trap (depth up, coming back down). Per scenario, seed and day d of the A/B:

* measured: the A/B as the canary runs it — one pre-period day on the control, then each arm's users on their arm,
  the exporter's store folding the events (breadth = exposed users active on at least 2 distinct days);
* truth: the same simulation twice more with the same seed, everyone on the control and everyone on the
  treatment after the same pre-period day (the global counterfactual of the A/B's estimand);
* oracle over the A/B's window: flywheel_sim.oracle.ab_window with d days after one pre-period day;
* oracle over 7 days: the figure the report and flywheel bench used to set beside the measured lift.

    python bench/breadth.py                      # ~3 min on one core: 3 scenarios × 4 seeds × 7 days, 3,000 people
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "breadth.json"
EXPERIMENT = "breadth"


def scenarios(world: Any) -> dict[str, tuple[Any, Any]]:
    from flywheel_sim import ResponseStyle, ScriptedPolicy, emoji_spam

    control = ScriptedPolicy(world, name="control", style=ResponseStyle(), compliance=0.5)
    better = ScriptedPolicy(world, name="better", style=ResponseStyle(question=0.6), compliance=0.7)
    trap = ScriptedPolicy(world, name="trap", style=emoji_spam(ResponseStyle()), compliance=0.5)
    return {"same policy (A/A)": (control, control), "better (asks back, follows more)": (control, better),
            "emoji trap": (control, trap)}


def _fold(store: Any, events: list[dict[str, Any]]) -> None:
    from flywheel_operator.gate.events import parse_event

    for event in events:
        store.apply(parse_event(json.dumps(event)))


def measured(world: Any, control: Any, treatment: Any, seed: int, days: int, people: int) -> list[dict[str, float]]:
    """The A/B read after each test day: per arm breadth and depth, the relative breadth lift and its standard
    error (delta method on two proportions)."""
    from flywheel_operator.gate.store import EngagementStore
    from flywheel_sim import TrafficSimulation

    sim = TrafficSimulation(world, {"control": control, "treatment": treatment}, seed=seed, pre_days=1,
                            experiment=EXPERIMENT, max_people=people)
    sim.next_day()  # the pre-period: everyone on the control, nobody exposed
    store, out = EngagementStore(), []
    for _ in range(days):
        _fold(store, sim.next_day().events)
        c, t = store.arm_stats(EXPERIMENT)
        pc, pt = c.engaged_users / c.users, t.engaged_users / t.users
        lift = pt / pc - 1 if pc else math.nan
        se = (pt / pc) * math.sqrt((1 - pt) / max(1, t.engaged_users) + (1 - pc) / max(1, c.engaged_users)) \
            if pc and pt else math.nan
        out.append({"control_breadth": pc, "treatment_breadth": pt, "breadth_lift": lift, "breadth_lift_se": se,
                    "depth_lift": (t.depth_sum / t.users) / (c.depth_sum / c.users) - 1})
    return out


def everyone_on(world: Any, control: Any, policy: Any, seed: int, days: int, people: int) -> list[dict[str, float]]:
    """Everyone on `policy` after the A/B's pre-period day on `control` (same seed: the same draws): the pooled
    breadth and depth after each day."""
    from flywheel_operator.gate.store import EngagementStore
    from flywheel_sim import TrafficSimulation

    pre = TrafficSimulation(world, {"control": control, "treatment": control}, seed=seed, pre_days=1,
                            experiment=EXPERIMENT, max_people=people)
    pre.next_day()
    sim = TrafficSimulation(world, {"control": policy, "treatment": policy}, seed=seed, pre_days=1,
                            experiment=EXPERIMENT, max_people=people, state=pre.state)
    store, out = EngagementStore(), []
    for _ in range(days):
        _fold(store, sim.next_day().events)
        arms = [a for a in store.arm_stats(EXPERIMENT) if a is not None]
        users = sum(a.users for a in arms)
        out.append({"breadth": sum(a.engaged_users for a in arms) / users,
                    "depth": sum(a.depth_sum for a in arms) / users})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--draws", type=int, default=8, help="oracle draws")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    from flywheel_sim import DEFAULT_WORLD, load_world
    from flywheel_sim.oracle import ab_window, expected_engagement, paired_lift, summarise

    world = load_world(DEFAULT_WORLD)
    result: dict[str, Any] = {"people": args.people, "seeds": args.seeds, "days": args.days, "draws": args.draws,
                              "world": str(DEFAULT_WORLD.relative_to(ROOT)), "scenarios": {}}
    head = (f"{'day':>3} {'A/B measured':>18} {'truth':>8} {'oracle, A/B window':>22} {'oracle, 7 days':>16} "
            f"{'control breadth':>15}")
    for label, (control, treatment) in scenarios(world).items():
        runs = [measured(world, control, treatment, s, args.days, args.people) for s in range(args.seeds)]
        truth_c = [everyone_on(world, control, control, s, args.days, args.people) for s in range(args.seeds)]
        truth_t = truth_c if treatment is control else \
            [everyone_on(world, control, treatment, s, args.days, args.people) for s in range(args.seeds)]
        ec = expected_engagement(world, control, draws=args.draws)
        et = ec if treatment is control else expected_engagement(world, treatment, draws=args.draws)
        seven = {key: paired_lift([summarise(world, e, seed=world.seed, draw=d)[key] for d, e in enumerate(ec)],
                                  [summarise(world, e, seed=world.seed, draw=d)[key] for d, e in enumerate(et)])
                 for key in ("breadth", "depth")}
        rows = []
        for d in range(1, args.days):  # day 1: nobody can be active on two distinct days yet
            lifts = [r[d]["breadth_lift"] for r in runs]
            mean = statistics.fmean(lifts)
            spread = statistics.stdev(lifts) / math.sqrt(len(lifts)) if len(lifts) > 1 else math.nan
            truth = statistics.fmean(t[d]["breadth"] for t in truth_t) / \
                statistics.fmean(c[d]["breadth"] for c in truth_c) - 1
            window = ab_window(world, ec, et, days=d + 1, pre_days=1, max_people=args.people)
            oracle_window = paired_lift([w["control"]["breadth"] for w in window],
                                        [w["treatment"]["breadth"] for w in window])
            rows.append({
                "day": d + 1,
                "measured_breadth_lift": mean,
                "measured_breadth_lift_se": spread,
                "measured_per_seed": lifts,
                "truth_breadth_lift": truth,
                "oracle_window_breadth_lift": oracle_window.estimate,
                "oracle_window_breadth_interval": oracle_window.interval,
                "oracle_7day_breadth_lift": seven["breadth"].estimate,
                "control_breadth": statistics.fmean(r[d]["control_breadth"] for r in runs),
            })
        result["scenarios"][label] = {"rows": rows, "oracle_7day_depth_lift": seven["depth"].estimate,
                                      "oracle_7day_breadth_interval": seven["breadth"].interval}
        print(f"\n== {label}: breadth lift, treatment over control (mean of {args.seeds} seeds ± its se)")
        print(head + "\n" + "-" * len(head))
        for r in rows:
            print(f"{r['day']:>3} {r['measured_breadth_lift']:>+10.1%} ± {r['measured_breadth_lift_se']:>5.1%} "
                  f"{r['truth_breadth_lift']:>+8.1%} {r['oracle_window_breadth_lift']:>+22.1%} "
                  f"{r['oracle_7day_breadth_lift']:>+16.1%} {r['control_breadth']:>15.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("breadth", out)  # provenance
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
