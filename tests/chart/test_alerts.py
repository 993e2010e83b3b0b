"""The chart's alerts with a real promtool: the rules load, each alert fires and stays quiet when it should, and
each links its runbook entry."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import ROOT, find_tool, run

HERE = Path(__file__).parent
EXPECTED_ALERTS = {
    "FlywheelStageFailingRepeatedly",
    "FlywheelGenerationStuck",
    "FlywheelCanaryGuardrailBreach",
    "FlywheelSampleRatioMismatch",
    "FlywheelOfflineOnlineDivergence",
    "FlywheelOperatorDown",
    "FlywheelExporterDown",
}


def _alerts(groups: list[dict]) -> list[dict]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool() -> str:
    path = find_tool("promtool")
    if path is None:
        pytest.skip("promtool not found: run `make tools` (installs the Debian prometheus package)")
    return path


def test_rules_load_in_promtool(rule_groups: list[dict], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups}))
    result = run([_promtool(), "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests(rule_groups: list[dict], tmp_path: Path) -> None:
    """Annotations are templates checked by `promtool check rules`; the unit tests pin expressions, `for` and
    labels, so the rules are tested without their annotations (promtool would otherwise compare every text)."""
    bare = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in rule_groups]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": bare}))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = run([_promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_cover_every_alert_firing_and_not_firing(rule_groups: list[dict]) -> None:
    names = {rule["alert"] for rule in _alerts(rule_groups)}
    assert names == EXPECTED_ALERTS
    cases = [case for test in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
             for case in test["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert fired == names and quiet == names


def test_every_alert_links_its_runbook_entry(rule_groups: list[dict]) -> None:
    headings = {h.lower() for h in re.findall(r"^## (\S+)$", (ROOT / "docs" / "runbook.md").read_text(), re.M)}
    for rule in _alerts(rule_groups):
        url = rule["annotations"]["runbook_url"]
        assert url.endswith(f"docs/runbook.md#{rule['alert'].lower()}")
        assert rule["alert"].lower() in headings, f"docs/runbook.md has no section '## {rule['alert']}'"
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] in {"warning", "critical"}
