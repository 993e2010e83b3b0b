"""The report leads with the climb and says whether each decision was right (oracle numbers given, no model)."""

from __future__ import annotations

from pathlib import Path

from flywheel_local.report import GenerationRow, _confusion, deployed_climb
from flywheel_operator.api import FlywheelGenerationStatus


def _row(name: str, phase: str, parent: dict, candidate: dict) -> GenerationRow:
    return GenerationRow(name=name, number=int(name[-1]), status=FlywheelGenerationStatus(phase=phase),
                         oracle={"parent": parent, "candidate": candidate})


START = {"depth": 4.0, "breadth": 0.60, "compliance": 0.50}
BETTER = {"depth": 4.6, "breadth": 0.62, "compliance": 0.70}
WORSE = {"depth": 4.8, "breadth": 0.55, "compliance": 0.40}


def test_the_climb_follows_the_deployed_policy_not_the_candidates() -> None:
    rows = [_row("gen1", "Promoted", START, BETTER), _row("gen2", "RolledBack", BETTER, WORSE),
            _row("gen3", "RolledBack", BETTER, {"depth": 5.0, "breadth": 0.63, "compliance": 0.9})]
    climb = deployed_climb(rows)
    assert [name for name, _ in climb] == ["start", "gen1", "gen2", "gen3"]
    assert [d["compliance"] for _, d in climb] == [0.50, 0.70, 0.70, 0.70]


def test_each_decision_is_set_beside_the_oracles_verdict() -> None:
    rows = [_row("gen1", "Promoted", START, BETTER), _row("gen2", "RolledBack", BETTER, WORSE),
            _row("gen3", "Promoted", BETTER, WORSE), _row("gen4", "Canary", BETTER, {"depth": 5.0, "breadth": 0.63})]
    assert [r.truly_better for r in rows] == [True, False, False, True]
    table = _confusion(rows)
    assert table.count("WRONG") == 1 and table.count(">right<") == 2
    assert "canary" in table  # still running: neither promoted nor rolled back, not counted
    # columns: truly better, tie, truly worse (one oracle draw here: no interval, so no tie either)
    assert "<th>promoted</th><td>1</td><td>0</td><td>1</td>" in table
    assert "<th>not promoted</th><td>0</td><td>0</td><td>1</td>" in table


def test_the_report_renders_with_and_without_oracle_numbers(tmp_path: Path) -> None:
    import json

    from flywheel_local.report import write_report

    for name, phase in (("gen1", "Promoted"), ("gen2", "RolledBack")):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "status.json").write_text(FlywheelGenerationStatus(phase=phase).model_dump_json())
    (tmp_path / "gen1" / "oracle.json").write_text(json.dumps({"parent": START, "candidate": BETTER}))
    page = write_report(tmp_path).read_text()
    assert page.index("climb.png") < page.index("Was each decision right?") < page.index("Gate decisions")
    assert (tmp_path / "report" / "lifts.png").is_file()
