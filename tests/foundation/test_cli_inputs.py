"""The CLI as a new user meets it (issue 28 point 6): --version, `-` and directory inputs, other kinds skipped
with a note, `flywheel run` exiting like `validate` on a bad manifest, and each stage's own --help."""

from __future__ import annotations

import io

import pytest
import yaml
from flywheel_local.commands import run_command
from flywheel_operator.cli import main
from flywheel_trainer.cli import STAGE_MODULES
from flywheel_trainer.cli import main as train_main

from tests.foundation.manifests import EXAMPLES, minimal, set_path

CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "b"}}


@pytest.mark.parametrize("entry", [main, train_main])
def test_version(entry, capsys):
    with pytest.raises(SystemExit) as exit_:
        entry(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().endswith("0.1.0")


def test_standard_input(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(EXAMPLES[0].read_text()))
    assert main(["validate", "-"]) == 0
    assert "(stdin): OK (FlywheelGeneration gen15, generation 15)" in capsys.readouterr().out


def test_directory_input_reads_its_yaml_files(tmp_path, capsys):
    (tmp_path / "nested").mkdir()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(minimal()))
    (tmp_path / "nested" / "b.yml").write_text(yaml.safe_dump(set_path(minimal(), "spec.generation", "x")))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "a.yaml: OK" in out and "b.yml: 1 problem(s)" in out and "notes.txt" not in out


def test_other_kinds_in_a_multi_document_file_are_skipped_with_a_note(tmp_path, capsys):
    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump_all([CONFIG_MAP, minimal()]))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "bundle.yaml[0]: skipped ConfigMap (v1): not a FlywheelGeneration" in out
    assert "bundle.yaml[1]: OK" in out


def test_a_file_without_any_generation_fails(tmp_path, capsys):
    path = tmp_path / "cm.yaml"
    path.write_text(yaml.safe_dump(CONFIG_MAP))
    assert main(["validate", str(path)]) == 1
    assert "no FlywheelGeneration or Flywheel found" in capsys.readouterr().out


def test_a_misspelt_kind_is_a_problem_not_a_skip(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(set_path(minimal(), "kind", "FlywheelGenration")))
    assert main(["validate", str(path)]) == 1
    assert "kind: is 'FlywheelGenration'" in capsys.readouterr().out


def test_run_of_a_bad_manifest_exits_1_like_validate(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(set_path(minimal(), "spec.canary.trafficPercent", -5)))
    assert main(["validate", str(path)]) == 1
    assert run_command(str(path), run_dir=str(tmp_path / "run")) == 1
    assert not (tmp_path / "run").exists()


def test_run_takes_a_generation_beside_other_kinds(tmp_path):
    from flywheel_local.runner import load_manifest

    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump_all([CONFIG_MAP, minimal()]))
    assert load_manifest(path).metadata.name == "gen2"


def test_each_stage_prints_its_own_help(capsys):
    texts = {}
    for stage in STAGE_MODULES:
        with pytest.raises(SystemExit):
            train_main([stage, "--help"])
        texts[stage] = capsys.readouterr().out
    assert len(set(texts.values())) == len(texts)
    assert "rejectionSampling" in texts["sft"] and "rejectionSampling" not in texts["rl"]
    assert "klBeta" in texts["rl"] and "maxEmojiDifference" in texts["curate"]
    assert "ruleFeatures" in texts["reward"] and "promptsPerSource" in texts["eval"]
    for stage, text in texts.items():
        assert f"usage: flywheel-train {stage} [-h] --config CONFIG" in text
