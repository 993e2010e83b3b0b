"""`flywheel validate` prints every problem with its path and a hint, and exits 1."""

from __future__ import annotations

import io

import yaml
from flywheel_operator.cli import main
from flywheel_operator.validation import validate_files

from tests.foundation.manifests import EXAMPLES, minimal, set_path


def test_examples_pass(capsys):
    assert main(["validate", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "gen15.yaml: OK (FlywheelGeneration gen15, generation 15)" in out


def test_every_error_is_listed_with_path_and_hint(tmp_path):
    bad = set_path(set_path(minimal(), "spec.canary.trafficPercent", -5), "spec.stages.rl.algorithm", "ppo")
    bad = set_path(bad, "spec.canary.traficPercent", 3)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = io.StringIO()
    assert validate_files([str(path)], out=out) == 1
    text = out.getvalue()
    assert "3 problem(s)" in text
    assert "spec.canary.trafficPercent: Input should be greater than or equal to 1 (got -5)" in text
    assert "spec.stages.rl.algorithm" in text and "use one of 'grpo' or 'online-dpo'" in text
    assert "spec.canary.traficPercent" in text and "did you mean 'trafficPercent'?" in text


def test_multi_document_files_and_unreadable_inputs(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([minimal(), set_path(minimal(), "spec.generation", "x")]))
    out = io.StringIO()
    assert validate_files([str(path), str(tmp_path / "missing.yaml")], out=out) == 1
    text = out.getvalue()
    assert "two.yaml[0]: OK" in text and "two.yaml[1]: 1 problem(s)" in text
    assert "missing.yaml: cannot read" in text


def test_bad_yaml_is_reported(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("spec: [unclosed\n")
    out = io.StringIO()
    assert validate_files([str(path)], out=out) == 1
    assert "broken.yaml: cannot read" in out.getvalue()
