"""Issue 26: the report's win-rate plot shows the band's independent judge (the pairwise RM) beside the optimised
RM's learned-score win rate, and its caption says that the judge, not the shaded absolute max, bounds the band."""

from __future__ import annotations

import json
from pathlib import Path

from flywheel_local.report import write_report
from flywheel_operator.api import FlywheelGenerationStatus


def test_the_win_rate_caption_says_the_upper_edge_is_the_gap_to_the_judge(tmp_path: Path) -> None:
    directory = tmp_path / "gen1"
    (directory / "eval").mkdir(parents=True)
    (directory / "status.json").write_text(FlywheelGenerationStatus(phase="Evaluating").model_dump_json())
    (directory / "generation.json").write_text(json.dumps({"spec": {"generation": 1}}))
    metrics = {"win_rate_user": 0.785, "reward_win_rate_user": 0.78, "pairwise_win_rate_user": 0.77}
    (directory / "eval" / "result.json").write_text(json.dumps({"metrics": metrics, "details": {}}))
    index = write_report(tmp_path, oracle=False)
    page = index.read_text()
    assert (index.parent / "win_rates.png").stat().st_size > 0
    assert "independent judge" in page and "maxJudgeGap" in page
    assert "decides only without a judge" in page
