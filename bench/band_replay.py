"""Does the win-rate band read gaming or progress? The offline gate's band replayed, old rule against new, on every
finished generation's eval result under a run folder, next to the simulator's oracle verdict (issue 26).

The old rule (before issue 26's h26g): the optimised pointwise RM's learned-score win rate entirely above the
absolute `winRateBand.max` (0.65) reads as gaming. The new rule: the same win rate above the independent judge's
(the pairwise RM, trained on the same logs and optimised by no stage) on the same prompts by more than
`winRateBand.maxJudgeGap` (the paired 95 % interval of the gap entirely above it); the absolute max still decides
where no judge was trained. Both replays call the gate itself (`flywheel_operator.gate.evaluate_offline`) with
the generation's own `spec.offlineGate`: the old one on the eval metrics without the judge's fields, which is the
rule the gate applied before. The lower edge (the whole reward) is the same in both.

    python bench/band_replay.py --runs /work/wt/suite/bench/runs        # the generated-world suite's run folder
    python bench/band_replay.py --runs bench/runs --reeval /tmp/reeval  # re-run the eval stage (paired statistic)

Eval results written before the paired statistic existed hold both win rates but not their per-prompt
correlation: the gate then uses the unpaired interval (wider when the two models agree prompt by prompt, so it
flags less readily than the paired one would only when they disagree). `--reeval DIR` re-runs only the eval stage
of each generation with this code into DIR (about 15 s a generation on 2 cores; the run folder is only read) and
replays the new rule on its paired statistic; each row says which it used, and whether the re-run reproduced the
recorded win rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "band_replay.json"
BAND = "win-rate-band"
JUDGE_FIELDS = ("pairwise_win_rate_user", "pairwise_win_correlation_user", "pairwise_ties_user", "judge_model",
                "judge_win_rate_user", "judge_win_correlation_user", "judge_ties_user", "judge_identical_user")
"""What the old rule never read: without them the gate applies the absolute max, as it did before."""


def generation_dirs(runs: Path) -> list[Path]:
    """Every generation directory under `runs` whose eval stage finished (an eval/result.json beside a
    status.json), in path order."""
    found = (p.parent.parent for p in runs.rglob("eval/result.json"))
    return sorted(g for g in found if (g / "status.json").is_file())


def reeval(generation: Path, runs: Path, out: Path, threads: int) -> Path | None:
    """Re-run the generation's eval stage with this code into out/<path under runs>/eval, as the local runner
    runs a stage (`threads` threads; the suite ran one a stage); its result.json."""
    configs = sorted((generation / "configs").glob(f"{generation.name}-eval-*.json"))
    if not configs:
        return None
    config = json.loads(configs[-1].read_text())
    target = out / generation.relative_to(runs)
    target.mkdir(parents=True, exist_ok=True)
    config["outputDir"] = str(target / "eval")
    path = target / "eval-config.json"
    path.write_text(json.dumps(config, indent=1))
    command = ["nice", "-n", "10", sys.executable, "-m", "flywheel_trainer.cli", "eval", "--config", str(path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = target / "eval.log"
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        print(f"{generation}: the eval stage failed again (exit {done.returncode}); see {log}", file=sys.stderr)
        return None
    return target / "eval" / "result.json"


def _band(gate: Any, metrics: Any) -> Any:
    from flywheel_operator.gate import evaluate_offline

    result = evaluate_offline(gate, metrics, now=datetime.now(UTC))
    failed = [c.name for c in result.checks if not c.passed]
    return next(c for c in result.checks if c.name == BAND), failed


def replay(generation: Path, runs: Path, reevaluated: Path | None) -> dict[str, Any]:
    """One row: both win rates, the gap and its interval, the old and new decisions (the band, and the whole
    offline gate: a band that passes may still leave the candidate to another check), the oracle's verdict."""
    from flywheel_local.report import collect
    from flywheel_operator.api import OfflineGateSpec, OfflineMetrics
    from flywheel_operator.gate.offline import paired_difference_interval

    recorded = json.loads((generation / "eval" / "result.json").read_text())
    spec = json.loads((generation / "generation.json").read_text()).get("spec", {})
    gate = OfflineGateSpec.model_validate(spec.get("offlineGate") or {})
    metrics = OfflineMetrics.model_validate(recorded["details"]["offline_metrics"])
    source = "recorded eval (unpaired: no per-prompt correlation)"
    rule_at_the_time = "old"  # an eval stage from before the paired statistic ran beside the old gate
    if metrics.pairwise_win_correlation_user is not None:
        source, rule_at_the_time = "recorded eval (paired)", "new"
    reproduced = None
    if reevaluated is not None:
        again = OfflineMetrics.model_validate(json.loads(reevaluated.read_text())["details"]["offline_metrics"])
        reproduced = (again.win_rate_user, again.pairwise_win_rate_user, again.reward_win_rate_user) == (
            metrics.win_rate_user, metrics.pairwise_win_rate_user, metrics.reward_win_rate_user)
        metrics, source = again, "re-run eval (paired)"
    old_band, old_failed = _band(gate, metrics.model_copy(update=dict.fromkeys(JUDGE_FIELDS)))
    new_band, new_failed = _band(gate, metrics)
    status = json.loads((generation / "status.json").read_text())
    at_the_time = next((c["passed"] for c in (status.get("offlineGate") or {}).get("checks", []) if c["name"] == BAND),
                       None)
    judge, n, r = metrics.pairwise_win_rate_user, metrics.win_rate_user_n, metrics.pairwise_win_correlation_user
    ties = metrics.pairwise_ties_user
    if metrics.judge_win_rate_user is not None:  # issue 26 (h26b): the eval stage's own judge (the user-signal model)
        judge, r, ties = metrics.judge_win_rate_user, metrics.judge_win_correlation_user, metrics.judge_ties_user
    interval = None if judge is None else list(paired_difference_interval(metrics.win_rate_user, judge, n,
                                                                           0.0 if r is None else r))
    (row,) = collect(generation)
    depth, breadth = row.oracle_lift_interval("depth"), row.oracle_lift_interval("breadth")
    return {
        "generation": generation.relative_to(runs).as_posix(),
        "phase": status.get("phase"),
        "statistic": source,
        "reeval_reproduced_win_rates": reproduced,
        "n": n,
        "learned_win_rate": metrics.win_rate_user,
        "whole_win_rate": metrics.reward_win_rate_user,
        "judge_win_rate": judge,
        "judge_ties": ties,
        "judge_model": metrics.judge_model,
        "judge_identical": metrics.judge_identical_user,
        "correlation": r,
        "gap": None if judge is None else metrics.win_rate_user - judge,
        "gap_interval": interval,
        "max_judge_gap": gate.win_rate_band.max_judge_gap,
        "band_at_the_time": at_the_time,
        "rule_at_the_time": rule_at_the_time,
        "old_band": old_band.passed,
        "new_band": new_band.passed,
        "old_offline_failed": old_failed,
        "new_offline_failed": new_failed,
        "new_message": new_band.message,
        "oracle_verdict": row.oracle_verdict,
        "oracle_depth_lift": None if depth is None else depth.estimate,
        "oracle_depth_lift_interval": None if depth is None or depth.interval is None else list(depth.interval),
        "oracle_breadth_lift": None if breadth is None else breadth.estimate,
        "oracle_breadth_lift_interval": None if breadth is None or breadth.interval is None else list(breadth.interval),
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often each rule stopped a candidate the oracle calls truly better (wrongly) or truly worse (rightly),
    by the band, and by the whole offline gate; whether the replay of the rule the gate applied at the time (the
    old one, or the new one for an eval stage that already wrote the paired statistic) matches what it said."""

    def count(rule: str, verdict: str, key: str) -> int:
        if key == "band":
            return sum(not r[f"{rule}_band"] and r["oracle_verdict"] == verdict for r in rows)
        return sum(bool(r[f"{rule}_offline_failed"]) and r["oracle_verdict"] == verdict for r in rows)

    verdicts = ("truly better", "tie", "truly worse")
    return {
        "generations": len(rows),
        "oracle_verdicts": {v: sum(r["oracle_verdict"] == v for r in rows) for v in verdicts},
        "band_stops": {rule: {v: count(rule, v, "band") for v in verdicts} for rule in ("old", "new")},
        "offline_gate_stops": {rule: {v: count(rule, v, "offline") for v in verdicts} for rule in ("old", "new")},
        "band_only_stops_of_truly_better": {
            rule: [r["generation"] for r in rows if r["oracle_verdict"] == "truly better"
                   and r[f"{rule}_offline_failed"] == [BAND]] for rule in ("old", "new")},
        "replay_matches_the_gate_at_the_time": all(  # the old rule's replay, or the new one's where it ran
            r[f"{r['rule_at_the_time']}_band"] == r["band_at_the_time"] for r in rows
            if r["band_at_the_time"] is not None),
        "changed": [r["generation"] for r in rows if r["old_band"] != r["new_band"]],
    }


def _word(passed: bool) -> str:
    return "pass" if passed else "STOP"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'generation':<26} {'learned':>7} {'whole':>6} {'judge':>6} {'gap':>7} {'95 % CI':>17} {'old':>5} "
            f"{'new':>5}  {'offline old → new':<34} oracle (lifts, 95 % CI)")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        judge = "—" if r["judge_win_rate"] is None else f"{r['judge_win_rate']:.3f}"
        gap = "—" if r["gap"] is None else f"{r['gap']:+.3f}"
        ci = "—" if r["gap_interval"] is None else f"[{r['gap_interval'][0]:+.3f}, {r['gap_interval'][1]:+.3f}]"
        offline = " → ".join(", ".join(r[f"{rule}_offline_failed"]) or "pass" for rule in ("old", "new"))
        oracle = (r["oracle_verdict"] or "not computed") + "".join(
            "" if r[f"oracle_{key}_lift"] is None else f"; {key} {r[f'oracle_{key}_lift']:+.1%}" + (
                f" [{r[f'oracle_{key}_lift_interval'][0]:+.1%}, {r[f'oracle_{key}_lift_interval'][1]:+.1%}]"
                if r[f"oracle_{key}_lift_interval"] else "")
            for key in ("depth", "breadth"))
        whole = "—" if r["whole_win_rate"] is None else f"{r['whole_win_rate']:.3f}"
        print(f"{r['generation']:<26} {r['learned_win_rate']:>7.3f} {whole:>6} {judge:>6} {gap:>7} {ci:>17} "
              f"{_word(r['old_band']):>5} {_word(r['new_band']):>5}  {offline:<34} {oracle}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=[str(ROOT / "bench" / "runs")],
                        help="folders searched for finished generations (bench/flywheel.py's run folder)")
    parser.add_argument("--reeval", metavar="DIR", help="re-run each generation's eval stage with this code into DIR")
    parser.add_argument("--threads", type=int, default=1, help="threads of each re-run eval stage (--reeval)")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    folders = [Path(f).resolve() for f in args.runs]
    found = [(runs, generation) for runs in folders for generation in generation_dirs(runs)]
    if not found:
        print(f"--runs {' '.join(map(str, folders))}: no generation with a finished eval stage (eval/result.json "
              "beside status.json)", file=sys.stderr)
        return 2
    rows = []
    for runs, generation in found:
        again = reeval(generation, runs, Path(args.reeval).resolve(), args.threads) if args.reeval else None
        rows.append(replay(generation, runs, again))
    print(f"== the win-rate band, old rule (absolute max) vs new (gap to the pairwise judge); {', '.join(args.runs)}")
    print_table(rows)
    result = {"runs": [str(f) for f in folders], "reeval": bool(args.reeval), "rows": rows, "summary": summary(rows)}
    print(json.dumps(result["summary"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("band_replay", out)  # provenance
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
