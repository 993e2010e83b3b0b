"""`make mutation` (bench/mutation.py, issue 31): its data files stay attached to the code they describe, and the
committed result adds up. The run itself takes about an hour and is not part of the suite."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "flywheel_operator"


def driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mutation", ROOT / "bench" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_hand_mutation_still_applies_to_its_code_and_names_existing_tests() -> None:
    """A hand-made mutation whose `before` no longer occurs once would silently stop testing anything."""
    entries = yaml.safe_load((ROOT / "bench" / "mutation_hand.yaml").read_text())
    assert len(entries) >= 7  # the seven survivors of the audit
    for entry in entries:
        text = (PACKAGE / entry["module"]).read_text()
        assert text.count(entry["before"]) == 1, f"{entry['name']}: `before` is not found exactly once"
        assert entry["after"] != entry["before"]
        for test in entry["tests"]:
            assert (ROOT / test.split("::")[0]).exists(), test


def test_equivalent_mutants_carry_a_reason_and_name_a_tested_module() -> None:
    mutation = driver()
    modules = {m for group in mutation.GROUPS for m in group.modules}
    for entry in mutation._load_equivalents():
        assert entry["module"] in modules and entry["reason"].strip(), entry


def test_mutant_names_map_to_functions_and_lines() -> None:
    mutation = driver()
    assert mutation._function_of("flywheel_operator.gate.online.xǁMetricVerdictǁbetter__mutmut_3") == (
        "MetricVerdict.better"
    )
    assert mutation._function_of("flywheel_operator.arms.x_assign__mutmut_12") == "assign"
    diff = "--- a\n+++ b\n@@ -1,3 +1,3 @@\n def f(x):\n-    return x < 1\n+    return x <= 1\n"
    assert mutation._changed_lines(diff) == ("return x < 1", "return x <= 1")
    source = "def g():\n    pass\n\n\nclass C:\n    def f(self, x):\n        y = x\n        return x < 1\n"
    assert mutation._line_of(source, "C.f", "return x < 1") == 8
    assert mutation._line_of(source, "g", "") == 1


def test_the_committed_result_adds_up() -> None:
    path = ROOT / "bench" / "results" / "mutation.json"
    if not path.exists():
        pytest.skip("bench/results/mutation.json is written by `make mutation`")
    result = json.loads(path.read_text())
    mutation = driver()
    assert set(result["modules"]) == {m for group in mutation.GROUPS for m in group.modules}
    for module, row in result["modules"].items():
        if not row["run"]:
            continue
        assert row["killed"] + row["survived"] + row["timeout"] + row["equivalent"] <= row["mutants"], module
        assert len(row["survivors"]) == row["survived"] and len(row["equivalents"]) == row["equivalent"], module
        decided = row["killed"] + row["survived"]
        assert row["score"] == (round(row["killed"] / decided, 4) if decided else None), module
        assert all(s["diff"] and s["line"] for s in row["survivors"]), module
        assert all(e["reason"] for e in row["equivalents"]), module
    assert result["commit"] and result["wall_seconds"] > 0
    assert all(h["status"] == "killed" for h in result["hand"]), [h for h in result["hand"] if h["status"] != "killed"]



def test_the_load_summary_of_a_run() -> None:
    assert driver().load_summary([1.0, 3.0, 2.0]) == {"cpus": __import__("os").cpu_count(), "load1_min": 1.0,
                                                      "load1_mean": 2.0, "load1_max": 3.0, "samples": 3}
