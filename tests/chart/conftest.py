"""Shared fixtures of the chart tests: real helm binaries, rendered manifests, rendered alert rules.

helm 3 and helm 4 come from `make tools` (scripts/install-test-tools.sh, into .tools/bin); a test that needs one
that is missing skips and says how to install it.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "characterflywheel"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
RELEASE, NAMESPACE = "flywheel", "flywheel-system"
HELMS = ("helm3", "helm4")
VALUES = {"default": None, "all-features": ALL_FEATURES}


def find_tool(name: str) -> str | None:
    """A tool on PATH or in the repository's .tools/bin."""
    local = ROOT / ".tools" / "bin" / name
    return shutil.which(name) or (str(local) if local.exists() else None)


def helm_binary(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found on PATH or in .tools/bin: run `make tools` (scripts/install-test-tools.sh)")
    return path


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload]


@cache
def render(helm: str, values: str | None, *extra: str) -> tuple[dict, ...]:
    """`helm template` of the chart; returns the documents (CRDs included) or fails with helm's message."""
    args = [helm_binary(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds", *extra]
    if values is not None:
        args += ["-f", str(values)]
    result = run(args)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[dict, ...], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="session")
def all_features() -> tuple[dict, ...]:
    return render("helm3", str(ALL_FEATURES))


@pytest.fixture(scope="session")
def default_render() -> tuple[dict, ...]:
    return render("helm3", None)


@pytest.fixture(scope="session")
def rule_groups(all_features: tuple[dict, ...]) -> list[dict]:
    """The PrometheusRule's groups, as a Prometheus rules file holds them."""
    (rule,) = of_kind(all_features, "PrometheusRule")
    return rule["spec"]["groups"]
