"""The oracle's verdicts carry error bars (issue 26, problems 3 and 7): the report and the flywheel bench say
"truly better" or "truly worse" only when a lift's 95 % interval over the oracle's draws excludes 0, count ties
apart, and set the measured breadth lift beside the oracle's lift over the days the A/B ran (oracle numbers
given, no model)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from flywheel_local.report import GenerationRow, _confusion, _headline, write_report
from flywheel_operator.api import FlywheelGenerationStatus

from tests.local.bench_modules import load_bench


def _figures(depths: list[float], breadths: list[float]) -> dict:
    draws = [{"depth": d, "breadth": b, "compliance": 0.5} for d, b in zip(depths, breadths, strict=True)]
    return {"depth": sum(depths) / len(depths), "breadth": sum(breadths) / len(breadths), "compliance": 0.5,
            "draws": draws, "samples": len(draws)}


PARENT = _figures([4.0, 4.2, 3.9, 4.1], [0.60, 0.61, 0.59, 0.60])
BETTER = _figures([4.4, 4.6, 4.3, 4.5], [0.61, 0.62, 0.60, 0.61])  # +10 % depth every draw
NOISY = _figures([4.3, 4.0, 4.0, 4.0], [0.61, 0.60, 0.59, 0.61])  # up on one draw only: a coin flip
WORSE = _figures([4.4, 4.6, 4.3, 4.5], [0.55, 0.56, 0.54, 0.55])  # deeper, but fewer come back


def _status(phase: str, numbers: dict | None = None) -> FlywheelGenerationStatus:
    body: dict = {"phase": phase}
    if numbers is not None:
        now = datetime(2026, 1, 3, tzinfo=UTC).isoformat()
        body["online"] = {"startedAt": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
                          "decision": {"outcome": "PROMOTE" if phase == "Promoted" else "ROLL_BACK",
                                       "numbers": numbers, "at": now}}
    return FlywheelGenerationStatus.model_validate(body)


def _row(name: str, phase: str, candidate: dict, numbers: dict | None = None, window: dict | None = None):
    oracle = {"parent": PARENT, "candidate": candidate, **({"ab_window": window} if window else {})}
    return GenerationRow(name=name, number=int(name[-1]), status=_status(phase, numbers), oracle=oracle)


def test_a_lift_inside_its_noise_is_a_tie_and_ties_are_counted_apart() -> None:
    rows = [_row("gen1", "Promoted", BETTER), _row("gen2", "Promoted", NOISY), _row("gen3", "RolledBack", WORSE)]
    assert [r.oracle_verdict for r in rows] == ["truly better", "tie", "truly worse"]
    assert [r.truly_better for r in rows] == [True, None, False]
    noisy = rows[1].oracle_lift_interval("depth")
    assert noisy is not None and noisy.interval is not None and noisy.interval[0] < 0 < noisy.interval[1]
    table = _confusion(rows)
    assert "<th>truly better</th><th>tie</th><th>truly worse</th>" in table
    assert "<th>promoted</th><td>1</td><td>1</td><td>0</td>" in table
    assert "<th>not promoted</th><td>0</td><td>0</td><td>1</td>" in table
    assert "WRONG" not in table and "tie: either decision" in table and "(4 draws)" in table
    assert "oracle: tie (depth +0.6% [" in _headline(rows, oracle=True)


def test_the_report_draws_the_oracle_over_the_ab_window_beside_the_measured_lift(tmp_path: Path) -> None:
    window = {"days": 2, "pre_days": 1, "draws": [
        {"control": {"breadth": 0.15 + i / 1000, "depth": 2.0}, "treatment": {"breadth": 0.18 + i / 1000,
                                                                             "depth": 2.3}} for i in range(4)]}
    numbers = {"breadth.lift": 0.19, "breadth.lift_se": 0.05, "breadth.lower": -0.2, "breadth.upper": 0.6,
               "depth.lift": 0.15}
    row = _row("gen1", "Promoted", BETTER, numbers, window)
    lift = row.ab_window_lift("breadth")
    assert lift is not None and 0.19 < lift.estimate < 0.2 and row.ab_window_days == 2
    directory = tmp_path / "gen1"
    directory.mkdir()
    (directory / "status.json").write_text(row.status.model_dump_json(by_alias=True))
    (directory / "oracle.json").write_text(json.dumps(row.oracle))
    page = write_report(tmp_path).read_text()
    assert "A/B as it ran" in page and (tmp_path / "report" / "lifts.png").is_file()


def test_the_bench_names_the_verdict_columns_and_counts_ties_apart() -> None:
    bench = load_bench("flywheel")
    window = {"days": 2, "draws": [{"control": {"breadth": 0.150 + i / 500, "depth": 2.0},
                                    "treatment": {"breadth": 0.180 + i / 500, "depth": 2.2}} for i in range(4)]}
    agreeing = _row("gen1", "Promoted", BETTER, {"breadth.lift": 0.21, "breadth.lift_se": 0.05}, window)
    apart = _row("gen2", "Promoted", NOISY, {"breadth.lift": 0.90, "breadth.lift_se": 0.05}, window)
    columns = [bench.oracle_columns(r) for r in (agreeing, apart)]
    assert [c["oracle_verdict"] for c in columns] == ["truly better", "tie"]
    assert columns[0]["oracle_depth_lift_interval"][0] > 0 and columns[0]["oracle_draws"] == 4
    assert columns[0]["oracle_ab_window_days"] == 2 and columns[0]["oracle_ab_breadth_lift"] > 0.15
    assert [c["breadth_lifts_agree"] for c in columns] == [True, False]
    table = [{"generation": r.name, "promoted": True, **c} for r, c in zip((agreeing, apart), columns, strict=True)]
    counts = bench.verdict_counts(table)
    assert counts["oracle_verdicts"] == {"truly better": 1, "tie": 1, "truly worse": 0}
    assert counts["ties"] == ["gen2"] and counts["promoted_by_verdict"]["tie"] == 1
    assert counts["breadth_lifts_agree"] == "1/2"
