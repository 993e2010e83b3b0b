"""What do the reward models' learned parts know? Text-only oracle agreement, before and after the lexical head.

    python bench/rm_text.py --runs RUNS [--chain default] [--generations gen-1] [--gen0-cache DIR]

For generations of a finished chain (bench/flywheel.py's run directories), on the held-out pairs of the
parent's answers (flywheel_local.rm_oracle):

- the label ceilings: the share of the generation's curated preference pairs whose label the oracle agrees
  with, and the same for its user signals (every continued response against every left one served for the same
  context; both only where the oracle's utilities differ by rm_oracle.MIN_UTILITY_GAP);
- the chain's own reward models: text-only oracle agreement (rule features left out) with its breakdown by trait;
- each reward model trained again from the generation's own stage config with the current code (lexical head
  on, flywheel_trainer.lexical), scored three ways on the same pairs: its model alone (the lexical head
  removed: "before"), its lexical head alone, and both mixed as the stage mixes them ("after").

Every stage runs on one thread. Writes bench/results/rm_text.json and prints the table.

    python bench/rm_text.py --heads RUN/gen-1 [RUN/gen-2 ...] [--base-commit 4990565]

The lexical head's levers (issue 26: the text score at generation 1), no retraining: for each saved generation, the
pointwise model's text score and whole reward are rebuilt as the reward stage builds them, from the generation's
curated data and the chain's own trained transformer (its held-out margins are mixed in by lexical.fit_mix exactly
as the stage does; rules by reward.fit_rules), with the lexical head fitted three ways in the same process: by
the base commit's flywheel_trainer/lexical.py (read with `git show`, the baseline), by the current one on the
preference pairs alone, and by the current one with the users' signal pairs (reward.signal_pairs, the default
`lexicalSignalPairs`). Each is scored on the parent's oracle held-out pairs (text-only and whole-reward
agreement, by trait). The world file is found beside the run (RUNS/worlds/generated-N.yaml, RUNS/world-seedK.yaml)
or is the default world. Writes bench/results/rm_heads.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "rm_text.json"
DEFAULT_WORLD = ROOT / "examples" / "local" / "world.yaml"
MAX_PER_CONTEXT = 400
"""Signal comparisons judged per context (a context with 40 responses gives up to 400)."""


def _config(directory: Path, stage: str) -> dict[str, Any]:
    return json.loads((directory / "configs" / f"{directory.name}-{stage}-1.json").read_text())


def label_ceilings(world: Any, directory: Path) -> dict[str, Any]:
    """How often the logged labels themselves order two responses as the oracle does."""
    from flywheel_local import rm_oracle
    from flywheel_sim import response_utility
    from rm_ceiling import logged_character_and_topic  # bench/rm_ceiling.py, beside this script

    def read(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (directory / "curate" / name).read_text().splitlines() if line.strip()]

    comparisons: dict[tuple[int, str], list[tuple[str, str]]] = defaultdict(list)
    for row in read("pairs.jsonl"):
        comparisons[logged_character_and_topic(world, row)].append(
            ("pairs", row["chosen"][0]["content"], row["rejected"][0]["content"]))
    by_context: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in read("signals.jsonl"):
        by_context[json.dumps(row["prompt"])].append(row)
    for rows in by_context.values():
        good = [r["completion"][0]["content"] for r in rows if r["continued"]]
        bad = [r["completion"][0]["content"] for r in rows if not r["continued"]]
        key = logged_character_and_topic(world, rows[0])
        kept = [(g, b) for g, b in itertools.product(good, bad) if g.strip() != b.strip()][:MAX_PER_CONTEXT]
        comparisons[key].extend(("signals", g, b) for g, b in kept)
    agrees: dict[str, list[bool]] = {"pairs": [], "signals": []}
    for (index, topic), items in comparisons.items():
        texts = sorted({t for _, a, b in items for t in (a, b)})
        utility = dict(zip(texts, response_utility(world, index, topic, texts), strict=True))
        for kind, a, b in items:
            gap = utility[a] - utility[b]
            if abs(gap) >= rm_oracle.MIN_UTILITY_GAP:
                agrees[kind].append(gap > 0)
    return {f"{kind}_labels_oracle_agrees": float(np.mean(v)) if v else None for kind, v in agrees.items()} | {
        f"{kind}_labels_judged": len(v) for kind, v in agrees.items()}


def retrain(directory: Path, name: str, work: Path, policy: str | None) -> Path:
    """The reward model `name` trained again from the generation's own config with the current code."""
    target = work / directory.name / name
    if (target / "reward" / "result.json").is_file():
        return target / "reward" / "model"
    target.mkdir(parents=True, exist_ok=True)
    config = _config(directory, f"reward-{name}")
    config["outputDir"] = str(target / "reward")
    if policy is not None:
        config["policy"] = policy
    for model in config["settings"]["rewardModels"]:
        model["lexicalHead"] = True
    (target / "reward.json").write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with (target / "reward.log").open("w") as log:
        done = subprocess.run([sys.executable, "-m", "flywheel_trainer.cli", "reward", "--config",
                               str(target / "reward.json")], stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"retraining {directory.name}'s {name} failed ({done.returncode}); see {target}/reward.log")
    return target / "reward" / "model"


def scored(rm: Any, pairs: list[dict[str, Any]], differs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Text-only agreement of `rm` on `pairs` with its 95 % interval and its breakdown by trait."""
    from flywheel_local import rm_oracle
    from flywheel_operator.gate.offline import wilson_interval

    gaps = np.array([p["gap"] for p in pairs])
    said = rm_oracle._preference(rm, pairs, text_only=True)
    agreed = rm_oracle.agreement(said, gaps)
    return {"agreement": agreed, "interval": list(wilson_interval(agreed, len(pairs))),
            "by_trait": rm_oracle.by_trait(said, gaps, differs)}


def measure(directory: Path, world: Any, parent: Any, work: Path, policy: str | None, names: list[str]) -> dict:
    import dataclasses

    from flywheel_local import rm_oracle
    from flywheel_trainer.scoring import load_reward_model

    pairs = rm_oracle.held_out_pairs(world, parent)
    differs = rm_oracle.trait_differences(world, pairs)
    row: dict[str, Any] = {"generation": directory.name, "held_out_pairs": len(pairs),
                           "pairs_differing_in": {t: int(m.sum()) for t, m in differs.items()},
                           **label_ceilings(world, directory), "models": {}}
    for name in names:
        chain = load_reward_model(directory / f"reward-{name}" / "model", field=f"{directory.name}/reward-{name}")
        new = load_reward_model(retrain(directory, name, work, policy), field=f"retrained {name}")
        metrics = json.loads((work / directory.name / name / "reward" / "result.json").read_text())["metrics"]
        entry = {"kind": chain.kind, "chain_model": scored(chain, pairs, differs),
                 "model_alone": scored(dataclasses.replace(new, lexical=None, lexical_head=None), pairs, differs)}
        if new.lexical:
            head_only = {**new.lexical, "model_weight": 0.0, "lexical_weight": 1.0}
            entry["lexical_alone"] = scored(dataclasses.replace(new, lexical=head_only), pairs, differs)
            entry["mixed"] = scored(new, pairs, differs)
        entry["stage_metrics"] = {k: metrics.get(k) for k in (
            "accuracy", "text_accuracy", "model_accuracy", "lexical_accuracy", "auc", "model_auc", "lexical_auc",
            "model_weight", "lexical_weight", "lexical_ridge", "lexical_columns", "train_examples")
            if metrics.get(k) is not None}
        row["models"][name] = entry
    return row


# --- issue 26: the lexical head's levers, baseline measured in the same run (h26rm) -----------------------------
HEADS_RESULT = ROOT / "bench" / "results" / "rm_heads.json"
HEAD_VARIANTS = ("base", "pairs", "pairs+signals")
"""base: the base commit's lexical.py on the preference pairs; pairs: the current lexical.py on them;
pairs+signals: the current one with the users' signal pairs too (what the reward stage now fits by default)."""


def _base_lexical(commit: str) -> Any:
    """flywheel_trainer/lexical.py as it was at `commit`, imported as its own module."""
    import importlib.util
    import tempfile

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:trainer/flywheel_trainer/lexical.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"lexical_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"lexical_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def world_file_of(run: Path) -> Path:
    """A run directory's world file: bench/flywheel.py writes generated worlds under RUNS/worlds/ and the
    default world's seed replicates as RUNS/world-seedK.yaml."""
    if run.name.startswith("generated-"):
        return run.parent / "worlds" / f"{run.name}.yaml"
    if run.name.startswith("default-"):
        return run.parent / f"world-{run.name.removeprefix('default-')}.yaml"
    return DEFAULT_WORLD


def heads_measure(directory: Path, base: Any) -> dict[str, Any]:
    """One generation: the pointwise text score and reward rebuilt with each head of HEAD_VARIANTS."""
    from flywheel_local import rm_oracle
    from flywheel_local.report import _model_dir
    from flywheel_operator.api.models import DEFAULT_LEXICAL_SIGNAL_PAIRS
    from flywheel_sim import load_world
    from flywheel_trainer import lexical
    from flywheel_trainer.outputs import read_jsonl
    from flywheel_trainer.reward import (
        _pair_accuracy,
        _prompt_groups,
        _text_margins,
        fit_rules,
        mix_pair_margins,
        signal_pairs,
        split_held_out,
    )
    from flywheel_trainer.rules import rule_matrix
    from flywheel_trainer.scoring import load_reward_model, logits_for_texts, render

    world = load_world(world_file_of(directory.parent))
    config = _config(directory, "reward-pointwise")
    settings = next(m for m in config["settings"]["rewardModels"] if m["name"] == config["rewardModel"])
    status = json.loads((directory / "status.json").read_text())
    parent = rm_oracle.load_policy(_model_dir(status["policy"], directory), world, "rm-heads-parent")
    pairs = rm_oracle.held_out_pairs(world, parent)
    gaps = np.array([p["gap"] for p in pairs])
    differs = rm_oracle.trait_differences(world, pairs)
    rows = read_jsonl(directory / "curate" / "pairs.jsonl")
    train, held_out = split_held_out(rows, settings["heldOutFraction"], config["seed"])
    per_context = DEFAULT_LEXICAL_SIGNAL_PAIRS  # the stage's default
    extra = signal_pairs(read_jsonl(directory / "curate" / "signals.jsonl"), held_out, per_context)
    chain = load_reward_model(directory / "reward-pointwise" / "model", field=f"{directory}/reward-pointwise")
    held_model = _text_margins(chain.model, chain.tokenizer, held_out, chain.max_length)
    prompts = [p["prompt"] for p in pairs]

    def logits(texts: list[str]) -> np.ndarray:
        return logits_for_texts(chain.model, chain.tokenizer, [render(chain.tokenizer, p, t) for p, t in zip(
            prompts, texts, strict=True)], max_length=chain.max_length)

    oracle_model = logits([p["first"] for p in pairs]) - logits([p["second"] for p in pairs])
    features = settings.get("ruleFeatures") or []
    specs = [p["spec"] for p in pairs]
    rule_margin = (rule_matrix(features, specs, [p["first"] for p in pairs])
                   - rule_matrix(features, specs, [p["second"] for p in pairs])) if features else None
    saved = rm_oracle.read_agreement(directory).get("models", {}).get("pointwise", {})
    out: dict[str, Any] = {"generation": f"{directory.parent.name}/{directory.name}", "held_out_pairs": len(pairs),
                           "train_pairs": len(train), "signal_pairs": len(extra),
                           "chain_saved": {"text_only": saved.get("text_only_oracle_agreement"),
                                           "whole": saved.get("oracle_agreement")}, "variants": {}}
    for variant in HEAD_VARIANTS:
        module, fitted = (base, train) if variant == "base" else (lexical, train + extra if "signals" in variant
                                                                   else train)
        head = module.fit_pairs([r["prompt"] for r in fitted], [r["chosen"][0]["content"] for r in fitted],
                                [r["rejected"][0]["content"] for r in fitted])

        def margin(items: list[dict[str, Any]], a: str, b: str, head: Any = head) -> np.ndarray:
            ps = [r["prompt"] for r in items]
            return head.score(ps, [r[a] if a in ("first", "second") else r[a][0]["content"] for r in items]) - \
                head.score(ps, [r[b] if b in ("first", "second") else r[b][0]["content"] for r in items])

        held_lexical = margin(held_out, "chosen", "rejected")
        weights, crossed = mix_pair_margins(held_model, held_lexical, config["seed"], _prompt_groups(held_out))
        held_text = np.column_stack([held_model, held_lexical]) @ weights
        text = np.column_stack([oracle_model, margin(pairs, "first", "second")]) @ weights
        entry = {"text_only": rm_oracle.agreement(text, gaps), "model_weight": float(weights[0]),
                 "logged_text_accuracy": _pair_accuracy(crossed), "head_weights": head.response_weights(),
                 "by_trait": rm_oracle.by_trait(text, gaps, differs)}
        if features:
            rules, _ = fit_rules(features, train, held_out, held_text, config["seed"])
            whole = rule_margin @ np.asarray(rules["weights"]) + rules["text_weight"] * text
            entry |= {"whole": rm_oracle.agreement(whole, gaps), "text_weight": rules["text_weight"]}
        out["variants"][variant] = entry
    return out


def heads_main(generations: list[Path], commit: str, out_path: Path) -> int:
    started = time.monotonic()
    base = _base_lexical(commit)
    rows = []
    print(f"{'generation':<28}{'pairs':>6}" + "".join(f"{v + ' text':>20}{'whole':>7}" for v in HEAD_VARIANTS))
    for directory in generations:
        row = heads_measure(directory, base)
        rows.append(row)
        print(f"{row['generation']:<28}{row['held_out_pairs']:>6}" + "".join(
            f"{row['variants'][v]['text_only']:>20.3f}{row['variants'][v].get('whole', float('nan')):>7.3f}"
            for v in HEAD_VARIANTS), flush=True)
    summary = {}
    for variant in HEAD_VARIANTS:
        for part in ("text_only", "whole"):
            values = [r["variants"][variant].get(part) for r in rows if r["variants"][variant].get(part) is not None]
            if values:
                summary[f"{variant}:{part}"] = {"mean": float(np.mean(values)), "min": float(np.min(values)),
                                                "max": float(np.max(values)), "n": len(values),
                                                "at_least_0.65": sum(v >= 0.65 for v in values)}
    for key, value in summary.items():
        print(f"{key:<26} mean {value['mean']:.3f} min {value['min']:.3f} max {value['max']:.3f} "
              f"(>= 0.65 in {value['at_least_0.65']}/{value['n']})")
    result = {"base_commit": commit, "variants": HEAD_VARIANTS, "rows": rows, "summary": summary,
              "wall_seconds": round(time.monotonic() - started, 1), "cpus": os.cpu_count()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("rm_heads", out_path)  # provenance
    print(f"wrote {out_path}")
    return 0
# --- end issue 26 ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, help="bench/flywheel.py's folder of run directories")
    parser.add_argument("--chain", default="default", help="which run directory under --runs")
    parser.add_argument("--generations", nargs="+", default=["gen-1"])
    parser.add_argument("--models", nargs="+", default=["pointwise", "pairwise", "continue"])
    parser.add_argument("--world-file", type=Path, default=DEFAULT_WORLD)
    parser.add_argument("--gen0-cache", type=Path,
                        help="generation 0's cache, where the chain's own cache has moved (built here if missing)")
    parser.add_argument("--train-dir", type=Path, help="where the models train again (default: RUNS/rm-text)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--heads", nargs="+", type=Path,
                        help="generation directories (RUN/gen-N): the lexical head's levers, no retraining")
    parser.add_argument("--base-commit", default="4990565", help="the baseline's lexical.py (--heads)")
    args = parser.parse_args(argv)
    if args.heads:
        return heads_main(args.heads, args.base_commit, args.out or HEADS_RESULT)
    args.out = args.out or RESULT
    if args.runs is None:
        parser.error("--runs is required (or --heads)")

    from flywheel_local.report import _model_dir
    from flywheel_local.rm_oracle import load_policy
    from flywheel_sim import build_generation0, load_world

    started = time.monotonic()
    world = load_world(args.world_file)
    work = args.train_dir or args.runs / "rm-text"
    rows = []
    for generation in args.generations:
        directory = args.runs / args.chain / generation
        status = json.loads((directory / "status.json").read_text())
        model = _model_dir(status.get("policy"), directory)
        policy = None
        if model is None and (status.get("policy") or "").startswith("sim://") and args.gen0_cache:
            model = policy = str(build_generation0(world, args.gen0_cache))
        if model is None:
            print(f"{directory}: its parent model is missing; pass --gen0-cache", file=sys.stderr)
            return 2
        row = measure(directory, world, load_policy(model, world, "rm-text-parent"), work, policy, args.models)
        rows.append(row)
        print(f"{generation}: {row['held_out_pairs']} held-out pairs; labels the oracle agrees with: pairs "
              f"{row['pairs_labels_oracle_agrees']:.3f} (n={row['pairs_labels_judged']}), signals "
              f"{row['signals_labels_oracle_agrees']:.3f} (n={row['signals_labels_judged']})")
        print(f"  {'model':<10}{'chain':>8}{'model alone':>13}{'lexical alone':>15}{'mixed':>8}   by trait (mixed)")
        for name, m in row["models"].items():
            mixed = m.get("mixed", {})
            traits = " ".join(f"{t} {v['agreement']:.2f}/{v['pairs']}" for t, v in mixed.get("by_trait", {}).items()
                              if v["agreement"] is not None)
            print(f"  {name:<10}{m['chain_model']['agreement']:>8.3f}{m['model_alone']['agreement']:>13.3f}"
                  f"{m.get('lexical_alone', {}).get('agreement', float('nan')):>15.3f}"
                  f"{mixed.get('agreement', float('nan')):>8.3f}   {traits}", flush=True)
    result = {"chain": str(args.runs / args.chain), "world": str(args.world_file), "rows": rows,
              "wall_seconds": round(time.monotonic() - started, 1), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("rm_text", args.out)  # provenance
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
