"""checkov (Bridgecrew's IaC scanner) on the rendered chart: no failed check; every skip is an annotation the chart
sets with its reason, caused by a value commented in values.yaml.

checkov pins packaging<24 (pytest needs >=24), so it cannot share the project's venv: it lives in its own venv in
.tools/checkov, created here on first use from PyPI (about a minute; `make tools` may create it beforehand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.conftest import ALL_FEATURES, CHART, NAMESPACE, RELEASE, ROOT, helm_binary, run

CHECKOV_PIN = "checkov==3.3.30"
VENV = ROOT / ".tools" / "checkov"
JUSTIFIED_SKIPS = {
    "CKV_K8S_38": "the operator talks to the Kubernetes API with its service account token",
    "CKV_K8S_43": "no digest exists before a release is built; set image.digest to pin one",
    "CKV_K8S_15": "a release tag names one image, pulled once per node; set image.digest to pin it",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkov() -> str:
    binary = VENV / "bin" / "checkov"
    if not binary.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True)
            subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", CHECKOV_PIN], check=True,
                           capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"could not install {CHECKOV_PIN} into {VENV}: {getattr(exc, 'stderr', exc)!r}")
    return str(binary)


def _render(tmp_path: Path) -> Path:
    out = tmp_path / "rendered"
    out.mkdir()
    for name, values in (("default", []), ("all-features", ["-f", str(ALL_FEATURES)])):
        result = run([helm_binary("helm3"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                      "--include-crds", *values])
        assert result.returncode == 0, result.stderr
        (out / f"{name}.yaml").write_text(result.stdout)
    return out


def test_checkov_reports_no_failed_checks(checkov: str, tmp_path: Path) -> None:
    rendered = _render(tmp_path)
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = run([checkov, "-d", str(rendered), "--framework", "kubernetes", "--skip-download", "-o", "json"],
                 env=env)
    report = json.loads(result.stdout)
    report = report if isinstance(report, dict) else report[0]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in report["results"]["failed_checks"]]
    assert not failed, f"checkov failed checks: {failed}"
    assert report["summary"]["passed"] > 100 and report["summary"]["parsing_errors"] == 0
    for skip in report["results"]["skipped_checks"]:
        assert JUSTIFIED_SKIPS.get(skip["check_id"]) == skip["check_result"]["suppress_comment"], skip["check_id"]
