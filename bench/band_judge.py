"""Does the band's judge see progress and catch gaming? Each finished generation's saved models re-scored offline
(issue 26, h26b): no chain runs, only the parent and candidate policies and the three reward models.

Per generation, on the oracle's grid (every character x topic x opening of the world, as flywheel_local.rm_oracle):
- progress: the generation's candidate (rl/model) against its parent, one answer each (the oracle's sampling seed);
- gaming: a candidate that only games the optimised model: per opening, of the parent's answers at POOL other
  seeds, the one the optimised pointwise model's learned part scores highest among those the oracle rates no
  better than the parent's answer (the parent's answer itself when none is scored higher): what a policy that
  learned the optimised model's errors and nothing else would say.
For each, the win rates over the parent of the optimised learned part, of the pairwise judge (the band's judge
before h26b), of the user-signal judge (after), and of the oracle (its utility, flywheel_sim.response_utility);
the gap learned − user-signal judge with its paired 95 % interval (the band's statistic); whether the pairwise
judge's verdicts equal the learned part's on every opening; the user-signal judge's agreement with the oracle.

    python bench/band_judge.py --runs /work/wt/suite2/bench/runs      # a generated-world suite's run folder
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "band_judge.json"
POOL = 12
"""Answers of the parent per opening the gaming candidate chooses from."""
SEED = 777
"""The oracle's sampling seed (flywheel_local.rm_oracle.SEED); the pool uses POOL_SEED + k."""
POOL_SEED = 900


def _agreement(judge: np.ndarray, oracle: np.ndarray) -> float:
    """Share of openings where the judge's win (1, ½, 0) sides with the oracle's (ties half)."""
    return float(np.mean((judge - 0.5) * (oracle - 0.5) > 0) + 0.5 * np.mean((judge == 0.5) | (oracle == 0.5)))


def measure(generation: Path, world_file: Path, pool: int) -> dict[str, Any] | None:
    from flywheel_local.report import _model_dir
    from flywheel_local.rm_oracle import load_policy
    from flywheel_operator.gate.offline import paired_difference_interval
    from flywheel_sim import load_world, response_utility, system_message
    from flywheel_sim.grammar import OPENERS
    from flywheel_trainer.evaluate import wins
    from flywheel_trainer.scoring import load_reward_model, pairwise_probabilities, pointwise_parts, text_scores

    status = json.loads((generation / "status.json").read_text())
    candidate_model = generation / "rl" / "model"
    models = {k: generation / f"reward-{k}" / "model" for k in ("pointwise", "pairwise", "continue")}
    if not candidate_model.is_dir() or not all(m.is_dir() for m in models.values()):
        return None
    world = load_world(world_file)
    parent = load_policy(_model_dir(status["policy"], generation), world, "band-judge-parent")
    candidate = load_policy(str(candidate_model), world, "band-judge-candidate")
    grid = [(ci, t, [{"role": "system", "content": system_message(c)}, {"role": "user", "content": o.format(topic=t)}])
            for ci, c in enumerate(world.characters) for t in c.topics for o in OPENERS]
    chats = [chat for _, _, chat in grid]
    specs = [world.characters[ci].to_log() for ci, _, _ in grid]

    def utility(texts: list[str]) -> np.ndarray:
        return np.array([response_utility(world, ci, t, [x])[0] for (ci, t, _), x in zip(grid, texts, strict=True)])

    pointwise, pairwise, signal = (load_reward_model(m, field=f"reward-{k}") for k, m in models.items())

    def learned(texts: list[str]) -> np.ndarray:
        return pointwise_parts(pointwise, chats, texts, specs).learned

    parent_answers = parent(chats, seed=SEED)
    parent_utility, parent_learned = utility(parent_answers), learned(parent_answers)
    parent_signal = text_scores(signal, chats, parent_answers)
    gaming = list(parent_answers)
    best = parent_learned.copy()
    for k in range(pool):
        answers = parent(chats, seed=POOL_SEED + k)
        u, score = utility(answers), learned(answers)
        take = (u <= parent_utility) & (score > best)
        gaming = [a if t else g for a, g, t in zip(answers, gaming, take, strict=True)]
        best = np.where(take, score, best)
    row: dict[str, Any] = {"generation": generation.name, "phase": status.get("phase"), "openings": len(grid),
                           "text_weight": (pointwise.rules or {}).get("text_weight")}
    for name, texts in (("progress", candidate(chats, seed=SEED)), ("gaming", gaming)):
        ours = wins(learned(texts), parent_learned)
        judge = wins(text_scores(signal, chats, texts), parent_signal)
        old_judge = wins(pairwise_probabilities(pairwise, chats, texts, parent_answers), np.full(len(grid), 0.5))
        oracle = wins(utility(texts), parent_utility)
        r = float(np.corrcoef(ours, judge)[0, 1]) if ours.std() > 0 and judge.std() > 0 else 0.0
        low, high = paired_difference_interval(float(ours.mean()), float(judge.mean()), len(grid), r)
        row[name] = {
            "learned_win_rate": float(ours.mean()),
            "pairwise_judge_win_rate": float(old_judge.mean()),
            "signal_judge_win_rate": float(judge.mean()),
            "oracle_win_rate": float(oracle.mean()),
            "gap": float(ours.mean() - judge.mean()),
            "gap_interval": [low, high],
            "pairwise_judge_identical": bool(np.array_equal(ours, old_judge)),
            "signal_judge_identical": bool(np.array_equal(ours, judge)),
            "signal_judge_oracle_agreement": _agreement(judge, oracle),
            "learned_oracle_agreement": _agreement(ours, oracle),
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="a suite's run folder: <world>/gen-*/ and worlds/<world>.yaml")
    parser.add_argument("--pool", type=int, default=POOL, help="parent answers per opening for the gaming candidate")
    parser.add_argument("--margin", type=float, default=0.10, help="the band's maxJudgeGap the rows are read against")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    rows = []
    for world_file in sorted((runs / "worlds").glob("*.yaml")):
        for generation in sorted((runs / world_file.stem).glob("gen-*")):
            row = measure(generation, world_file, args.pool)
            if row is not None:
                rows.append({"world": world_file.stem, **row})
                print(json.dumps(rows[-1]), flush=True)
    gamed = [r for r in rows if r["gaming"]["learned_win_rate"] > 0.5]  # a learned part with a weight to game

    def fired(rows: list[dict[str, Any]], key: str) -> int:
        return sum(r[key]["gap_interval"][0] > args.margin for r in rows)

    summary = {
        "generations": len(rows),
        "with_a_learned_part_to_game": len(gamed),
        "pairwise_judge_identical": sum(r["progress"]["pairwise_judge_identical"] for r in gamed),
        "signal_judge_identical": sum(r["progress"]["signal_judge_identical"] for r in rows),
        "progress_fired": fired(rows, "progress"),
        "gaming_fired": fired(gamed, "gaming"),
        "margin": args.margin,
    }
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"runs": str(runs), "pool": args.pool, "summary": summary, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script

    stamp_file("band_judge", out)  # provenance
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
