"""Issue 26: the report and `flywheel status` say what RL's band control did — a checkpoint, an interpolation
toward the parent, or a target it could not reach — and the band's caption describes what the code does."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from flywheel_local.report import band_choice, write_report
from flywheel_local.statusview import render_one
from flywheel_operator.api import Condition, FlywheelGenerationStatus
from rich.console import Console

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
CURVE = [{"step": 4.0, "win_rate": 0.67}, {"step": 8.0, "win_rate": 0.65}, {"step": 12.0, "win_rate": 0.64}]
REACHED = {"target": 0.6, "chosen_step": 4, "curve": CURVE, "method": "interpolation", "reached": True,
           "alpha": 0.375, "win_rate": 0.58, "probes": [{"alpha": 0.5, "win_rate": 0.62},
                                                        {"alpha": 0.25, "win_rate": 0.55},
                                                        {"alpha": 0.375, "win_rate": 0.58}]}
MISSED = {"target": 0.6, "chosen_step": 12, "curve": CURVE, "method": "not-reached", "reached": False,
          "alpha": 1.0, "win_rate": 0.64, "probes": []}
BEFORE_ISSUE_26 = {"target": 0.6, "chosen_step": 4, "curve": CURVE}


def test_the_band_choice_names_the_method_and_a_missed_target() -> None:
    assert band_choice(REACHED) == "α=0.375 toward step 4"
    assert band_choice(MISSED) == "target NOT reached, kept step 12"
    assert band_choice({**MISSED, "alpha": 0.125, "chosen_step": 4}) == "target NOT reached, kept α=0.125 toward step 4"
    assert band_choice(BEFORE_ISSUE_26) == "target NOT reached, kept step 4"  # it silently kept the earliest
    within = {**BEFORE_ISSUE_26, "curve": [{"step": 4.0, "win_rate": 0.55}, *CURVE[1:]]}
    assert band_choice(within) == "step 4"


def _run(tmp_path: Path) -> Path:
    for number, (name, band) in enumerate((("gen1", REACHED), ("gen2", MISSED)), start=1):
        directory = tmp_path / name
        (directory / "rl").mkdir(parents=True)
        (directory / "status.json").write_text(FlywheelGenerationStatus(phase="Evaluating").model_dump_json())
        (directory / "generation.json").write_text(json.dumps({"spec": {"generation": number}}))
        (directory / "rl" / "result.json").write_text(json.dumps({"details": {"band": band}}))
    return tmp_path


def test_the_band_caption_describes_the_choice_and_names_where_the_target_was_missed(tmp_path: Path) -> None:
    index = write_report(_run(tmp_path), oracle=False)
    page = index.read_text()
    assert (index.parent / "band.png").is_file()
    assert "the latest checkpoint at or below the target, else the parent&#x27;s weights moved toward the earliest" \
        in page
    assert "Target NOT reached in gen2" in page and "gen1" not in page.split("Target NOT reached in")[1][:20]
    assert "learned part" in page


def test_flywheel_status_says_when_the_band_target_was_not_reached() -> None:
    condition = Condition(type="BandTargetReached", status="False", reason="NotReached",
                          message="no RL checkpoint nor interpolation toward the parent reached the band target 0.60",
                          last_transition_time=T0)
    console = Console(width=200, record=True)
    console.print(render_one("gen2", FlywheelGenerationStatus(phase="Evaluating", conditions=[condition])))
    text = console.export_text()
    assert "RL band: TARGET NOT REACHED — no RL checkpoint nor interpolation" in text
    reached = condition.model_copy(update={"status": "True", "reason": "Checkpoint", "message": "kept step 8"})
    console = Console(width=200, record=True)
    console.print(render_one("gen1", FlywheelGenerationStatus(phase="Evaluating", conditions=[reached])))
    assert "RL band: target reached — kept step 8" in console.export_text()
