"""bench/flywheel.py's generated-worlds suite and targets, on synthetic rows: mean and spread over worlds, every
world's first three generations (not the best of them), and None where an input is not measured."""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.local.bench_modules import load_bench

bench = load_bench("flywheel")

AGREEMENT = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def row(name: str, *, promoted: bool = True, better: bool | None = True, interval: list[float] | None = None,
        text_only: float | None = None, pointwise: float | None = 0.7, blocked_by: str = "",
        compliance: float = 0.8, persona: float = 0.6, on_topic: float = 0.3,
        measured: dict[str, float] | None = None, breadth_interval: list[float] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {
        "generation": name, "promoted": promoted, "truly_better": better, "blocked_by": blocked_by,
        "oracle_parent": {"compliance": 0.5, "depth": 4.0, "breadth": 0.5, "persona_rate": 0.5,
                          "on_topic_rate": 0.3},
        "oracle_candidate": {"compliance": compliance, "depth": 5.0, "breadth": 0.55, "persona_rate": persona,
                             "on_topic_rate": on_topic},
        "rm_oracle_agreement": {"pointwise": pointwise},
        "rm_oracle_agreement_interval": {"pointwise": None},
        "measured": measured or {},
    }
    if interval is not None:
        r[bench.ORACLE_DEPTH_INTERVAL] = interval
    if text_only is not None:
        r[bench.TEXT_ONLY_AGREEMENT] = {"pointwise": text_only}
    if breadth_interval is not None:
        r[bench.ORACLE_BREADTH_INTERVAL] = breadth_interval
    return r


def world(table: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": table, "summary": bench.summary(table)}


# ---------------------------------------------------------------------------------- problem 6: all, not max
def test_agreement_by_generation_3_needs_every_one_of_the_first_three() -> None:
    """Issue 26, problem 6: two of three below 0.70 printed true (the max of the three)."""
    table = [row("gen1", pointwise=0.72), row("gen2", pointwise=0.60), row("gen3", pointwise=0.66)]
    out = bench.targets(bench.summary(table))
    assert out["rm_oracle_agreement_at_least_70_by_generation_3"] is False
    assert out["rm_oracle_agreement_first_three"] == [0.72, 0.60, 0.66]


@given(st.lists(AGREEMENT, min_size=3, max_size=5))
@settings(max_examples=60, deadline=None)
def test_agreement_target_is_all_of_generations_1_3(values: list[float]) -> None:
    table = [row(f"gen{i + 1}", pointwise=v) for i, v in enumerate(values)]
    got = bench.targets(bench.summary(table))["rm_oracle_agreement_at_least_70_by_generation_3"]
    assert got is all(v >= 0.70 for v in values[:3])


@given(st.lists(st.one_of(st.none(), AGREEMENT), min_size=0, max_size=3))
def test_agreement_target_is_not_measured_when_a_generation_is_missing(values: list[float | None]) -> None:
    if len(values) == 3 and None not in values:
        values = [*values[:2], None]
    table = [row(f"gen{i + 1}", pointwise=v) for i, v in enumerate(values)]
    if any(v is not None and v < 0.70 for v in values):
        return  # a measured miss is a miss (checked above); the unknown case is what this test pins
    assert bench.targets(bench.summary(table))["rm_oracle_agreement_at_least_70_by_generation_3"] is None


@given(st.lists(st.lists(AGREEMENT, min_size=3, max_size=3), min_size=1, max_size=5))
@settings(max_examples=60, deadline=None)
def test_text_only_agreement_reaches_65_at_generations_1_3_in_every_world(worlds: list[list[float]]) -> None:
    generated = {f"generated-{i}": world([row(f"gen{j + 1}", text_only=v) for j, v in enumerate(values)])
                 for i, values in enumerate(worlds)}
    out = bench.targets(None, generated)
    key = "text_only_rm_oracle_agreement_at_least_65_at_generations_1_3_in_every_world"
    assert out[key] is all(v >= 0.65 for values in worlds for v in values)
    assert out["text_only_rm_oracle_agreement_at_least_65_per_world"] == {
        label: all(v >= 0.65 for v in values) for label, values in zip(generated, worlds, strict=True)}


def test_text_only_agreement_not_measured_is_none_never_a_value() -> None:
    generated = {"generated-100": world([row("gen1"), row("gen2"), row("gen3")])}
    default_rows = [row("gen-1", text_only=0.7), row("gen-2", text_only=0.7), row("gen-3", text_only=0.7)]
    out = bench.targets(bench.summary(default_rows), generated, default_rows)
    assert out["text_only_rm_oracle_agreement_at_least_65_at_generations_1_3_in_every_world"] is None
    assert out["text_only_rm_oracle_agreement_at_least_65_per_world"] == {"default": True, "generated-100": None}
    default_rows[1][bench.TEXT_ONLY_AGREEMENT] = {"pointwise": 0.64}  # a measured miss decides it
    out = bench.targets(bench.summary(default_rows), generated, default_rows)
    assert out["text_only_rm_oracle_agreement_at_least_65_at_generations_1_3_in_every_world"] is False


# ---------------------------------------------------------------------------- verdicts with their intervals
def test_promoted_below_zero_clearly_better_share_and_the_band_alone() -> None:
    generated = {
        "generated-100": world([
            row("gen1", interval=[0.02, 0.10]),
            row("gen2", promoted=False, interval=[0.01, 0.05], blocked_by="offline: win-rate-band"),
            row("gen3", interval=[-0.06, -0.01], better=False),
        ]),
        "generated-101": world([
            row("gen1", interval=[0.05, 0.20]),
            row("gen2", promoted=False, interval=[0.03, 0.08], blocked_by="offline: win-rate-band, style-drift.x"),
            row("gen3", promoted=False, interval=[-0.02, 0.03], blocked_by="online: INCONCLUSIVE"),
        ]),
    }
    got = bench.generated_targets(generated)
    assert got["no_promoted_candidate_with_oracle_interval_below_0"] is False
    assert got["promoted_with_oracle_interval_below_0"] == ["gen3"]
    assert got["clearly_better_promoted"] == "2/4" and got["clearly_better_promoted_at_least_80"] is False
    assert got["band_never_the_only_reason_a_clearly_better_candidate_is_stopped"] is False
    assert got["clearly_better_stopped_by_the_band_alone"] == ["gen2"]  # the second one had another reason too


def test_verdict_targets_are_none_until_every_row_carries_its_interval() -> None:
    generated = {"generated-100": world([row("gen1", interval=[0.02, 0.10]), row("gen2")])}
    got = bench.generated_targets(generated)
    assert got["rows_without_oracle_interval"] == 1
    for key in ("no_promoted_candidate_with_oracle_interval_below_0", "clearly_better_promoted_at_least_80",
                "band_never_the_only_reason_a_clearly_better_candidate_is_stopped", "clearly_better_promoted"):
        assert got[key] is None


@given(st.lists(st.tuples(st.booleans(), st.floats(-0.2, 0.2), st.floats(0.0, 0.2)), min_size=1, max_size=12))
@settings(max_examples=80, deadline=None)
def test_clearly_better_share_counts_intervals_above_zero(cases: list[tuple[bool, float, float]]) -> None:
    table = [row(f"gen{i}", promoted=p, interval=[low, low + width]) for i, (p, low, width) in enumerate(cases)]
    got = bench.generated_targets({"generated-1": world(table)})
    clearly = [(p, low) for p, low, _ in cases if low > 0]
    assert got["clearly_better_promoted"] == f"{sum(p for p, _ in clearly)}/{len(clearly)}"
    expected = None if not clearly else sum(p for p, _ in clearly) >= 0.8 * len(clearly)
    assert got["clearly_better_promoted_at_least_80"] is expected
    below = [p for p, low, width in cases if p and low + width < 0]
    assert got["no_promoted_candidate_with_oracle_interval_below_0"] is (not below)


# ------------------------------------------------------------------------------------- per-world targets
@given(st.lists(st.one_of(st.none(), st.booleans()), min_size=0, max_size=8))
def test_in_3_of_4_worlds_is_decided_only_when_no_unknown_world_could_change_it(verdicts: list[bool | None]) -> None:
    got = bench._in_worlds(verdicts)
    if len(verdicts) < 4:
        assert got["met"] is None
        return
    needed = math.ceil(0.75 * len(verdicts))
    outcomes = {sum(v if v is not None else fill for v, fill in zip(verdicts, filling, strict=True)) >= needed
                for filling in itertools.product((False, True), repeat=len(verdicts))}
    assert got["met"] is (outcomes.pop() if len(outcomes) == 1 else None)


def test_deployed_following_and_persona_or_topic_over_four_worlds() -> None:
    def chain(compliance: float, persona: float, on_topic: float, promoted: bool = True) -> dict[str, Any]:
        return world([row("gen1", promoted=promoted, compliance=compliance, persona=persona, on_topic=on_topic)])

    generated = {"a": chain(0.90, 0.6, 0.3), "b": chain(0.86, 0.5, 0.35), "c": chain(0.84, 0.4, 0.2),
                 "d": chain(0.95, 0.7, 0.3, promoted=False)}  # d's candidate never deployed: 0.5 stays
    got = bench.generated_targets(generated)
    following = got["deployed_instruction_following_at_least_85_in_3_of_4"]
    assert following == {"met": False, "worlds": "2/4", "unknown": 0}
    assert got["deployed_instruction_following_end"] == [0.90, 0.86, 0.84, 0.5]
    assert got["persona_or_on_topic_rises_in_3_of_4"] == {"met": False, "worlds": "2/4", "unknown": 0}
    generated["c"] = chain(0.88, 0.4, 0.31)
    got = bench.generated_targets(generated)
    assert got["deployed_instruction_following_at_least_85_in_3_of_4"]["met"] is True
    assert got["persona_or_on_topic_rises_in_3_of_4"]["met"] is True


def test_breadth_lifts_agree_when_the_intervals_overlap() -> None:
    def measured(low: float, high: float) -> dict[str, float]:
        return {"breadth.lift": (low + high) / 2, "breadth.lower": low, "breadth.upper": high}

    table = [row("gen1", measured=measured(0.05, 0.15), breadth_interval=[0.10, 0.12]),
             row("gen2", measured=measured(0.10, 0.30), breadth_interval=[0.00, 0.03]),
             row("gen3", promoted=False)]  # no A/B: nothing measured to compare
    got = bench.generated_targets({"g": world(table)})
    assert got["breadth_lifts_agree"] == "1/2" and got["breadth_lifts_agree_in_90_percent"] is False
    table[1][bench.ORACLE_BREADTH_INTERVAL] = [0.0, 0.10]
    assert bench.generated_targets({"g": world(table)})["breadth_lifts_agree_in_90_percent"] is True
    del table[1][bench.ORACLE_BREADTH_INTERVAL]
    got = bench.generated_targets({"g": world(table)})
    assert got["breadth_lifts_agree_in_90_percent"] is None and got["breadth_generations_without_oracle_interval"] == 1
    assert got["breadth_lifts_agree"] == "1/1"  # of the comparable ones; the other is counted apart, not as a miss


# ------------------------------------------------------------------------------------------ mean and spread
@given(st.lists(st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)), min_size=0, max_size=8))
def test_spread_is_mean_sample_sd_and_range_of_the_measured_values(values: list[float | None]) -> None:
    known = [v for v in values if v is not None]
    got = bench.spread(values)
    assert (got["n"], got["missing"]) == (len(known), len(values) - len(known))
    if not known:
        assert got["mean"] is None and got["sd"] is None and got["min"] is None
        return
    assert got["mean"] == pytest.approx(statistics.fmean(known), abs=1e-9)
    assert (got["min"], got["max"]) == (min(known), max(known))
    if len(known) >= 2:
        assert got["sd"] == pytest.approx(statistics.stdev(known), abs=1e-9)
    else:
        assert got["sd"] is None  # one world has no spread, not a spread of 0


def test_aggregate_over_worlds_of_their_figures() -> None:
    chains = {
        "generated-100": [row("gen1", compliance=0.9, text_only=0.7), row("gen2", promoted=False, better=False,
                                                                           text_only=0.6),
                          row("gen3", compliance=0.95, text_only=0.68)],
        "generated-101": [row("gen1", compliance=0.7), row("gen2", compliance=0.8), row("gen3", better=False)],
    }
    figures = {label: bench.world_figures(t, bench.summary(t), {"wall_seconds": 600.0}) for label, t in chains.items()}
    first = figures["generated-100"]
    assert first["deployed_instruction_following_end"] == 0.95
    assert first["deployed_instruction_following_gain"] == pytest.approx(0.45)
    assert first["promoted_share"] == pytest.approx(2 / 3) and first["promoted_truly_better_share"] == 1.0
    assert first["text_only_rm_oracle_agreement_gen1_3"] == pytest.approx(0.66)
    assert figures["generated-101"]["text_only_rm_oracle_agreement_gen1_3"] is None  # not measured, not 0
    assert figures["generated-101"]["promoted_truly_better_share"] == pytest.approx(2 / 3)
    assert first["wall_minutes"] == 10.0
    agg = bench.aggregate(figures)
    assert set(agg) == set(bench.GENERATED_FIGURES)
    end = agg["deployed_instruction_following_end"]
    assert end["n"] == 2 and end["mean"] == pytest.approx(0.875) and end["sd"] == pytest.approx(
        statistics.stdev([0.95, 0.8]))
    assert agg["text_only_rm_oracle_agreement_gen1_3"] == {"n": 1, "missing": 1, "mean": pytest.approx(0.66),
                                                           "sd": None, "min": pytest.approx(0.66),
                                                           "max": pytest.approx(0.66)}


def test_the_suite_seeds_and_labels() -> None:
    assert bench.GENERATED_COUNT >= 4 and bench.GENERATED_GENERATIONS >= 3
    assert bench.generated_label(100) == "generated-100"
    args = ["--only", "generated", "--world-seed", "7", "--count", "2", "--summarise", "--out", "/dev/null"]
    seen: dict[str, Any] = {}
    original = bench.summarise
    try:
        bench.summarise = lambda out, seed, seeds, generations: seen.update(seeds=seeds, generations=generations)
        assert bench.main(args) == 0
    finally:
        bench.summarise = original
    assert seen == {"seeds": [7, 8], "generations": bench.GENERATED_GENERATIONS}


def test_jobs_run_each_world_in_its_own_process_with_arguments_the_bench_parses(monkeypatch, tmp_path) -> None:
    import argparse
    import subprocess

    started: list[list[str]] = []

    class Finished:
        returncode = 0

        def __init__(self, command: list[str], **_: Any) -> None:
            started.append(command)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(bench, "RUNS", tmp_path)
    monkeypatch.setattr(bench, "generated_world", lambda seed, folder: folder / f"{seed}.yaml")
    monkeypatch.setattr(subprocess, "Popen", Finished)
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    failed = bench.run_generated([100, 101, 102], 3, manifest=tmp_path / "flywheel.yaml", first=None,
                                 cache=tmp_path / "cache", resume=False, cpus=1, jobs=2)
    assert failed == 0 and len(started) == 3
    seen = {}
    for command in started:
        parsed: dict[str, Any] = {}

        def capture(argv: list[str], store: dict = parsed) -> int:
            parser = argparse.ArgumentParser()
            for flag in ("--only", "--world-seed", "--count", "--suite-generations", "--runs", "--cpus", "--jobs"):
                parser.add_argument(flag)
            parser.add_argument("--no-summary", action="store_true")
            known, _ = parser.parse_known_args(argv)
            store.update(vars(known))
            return 0

        capture(command[2:])
        assert command[1].endswith("bench/flywheel.py")
        assert (parsed["only"], parsed["count"], parsed["suite_generations"], parsed["jobs"], parsed["cpus"]) == (
            "generated", "1", "3", "1", "1")
        assert parsed["no_summary"] and parsed["runs"] == str(tmp_path)
        seen[parsed["world_seed"]] = command
        assert (tmp_path / f"generated-{parsed['world_seed']}.log").is_file()
    assert sorted(seen) == ["100", "101", "102"]
    # and the bench's own parser takes the child's command line
    monkeypatch.setattr(bench, "run_generated", lambda seeds, generations, **kw: seen.update(child=(seeds, kw)) or 0)
    monkeypatch.setattr(bench, "_run_chain", lambda *a, **k: None)
    assert bench.main([*started[0][2:], "--manifest", str(bench.ROOT / "examples" / "local" / "flywheel.yaml")]) == 0
    assert seen["child"][0] == [100] and seen["child"][1]["jobs"] == 1 and seen["child"][1]["cpus"] == 1
