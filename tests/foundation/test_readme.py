"""The README as a newcomer uses it (issue 28, point 1): its sections, its commands, its links and its cluster
install block, run or rendered for real. Also: every file pyproject.toml points at exists."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, helm_binary, run

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
REGISTRY = "registry.example.com/ml"
SECTIONS = ["Status", "Quick start", "On a cluster", "Documentation", "Development"]


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}.*?\n(.*?)(?=^## |\Z)", README, flags=re.M | re.S)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def _blocks(text: str, language: str = "") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def _install_commands() -> list[str]:
    (block,) = _blocks(_section("On a cluster"), "sh")
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_leads_with_what_it_is_then_the_honest_state() -> None:
    titles = re.findall(r"^## (.+)$", README, flags=re.M)
    assert [t for t in titles if any(t.startswith(s) for s in SECTIONS)] == titles, titles
    assert [next(s for s in SECTIONS if t.startswith(s)) for t in titles] == SECTIONS
    intro = README.split("\n## ")[0]
    assert "platform teams" in intro and "KServe" in intro and "Prometheus" in intro
    status = _section("Status")
    assert "GPU" in status and "not yet proven" in status.lower()
    assert "docs/benchmarks.md" in status
    # figures live in docs/benchmarks.md: the README quotes no run's timing or chained-generation tables
    assert not re.search(r"\d+ min \d+ s|real \dm|p99|responses/s", README)


def test_the_readmes_jargon_is_explained_where_it_appears() -> None:
    text = re.sub(r"```.*?```", "", README, flags=re.S)
    for term, explanation in (("the report", r'"the report"'), ("V12", r"V12\*\* reached"),
                              ("oracle", r"\*\*oracle\*\*: the simulator's ground truth"),
                              ("band", r"\*\*win-rate band\*\* is")):
        first = text.find(term)
        assert first >= 0 and re.search(explanation, text), term
        assert re.search(explanation, text).start() <= first + 200, f"{term} is used before it is explained"  # type: ignore[union-attr]


def test_the_readme_says_the_decision_may_differ_between_machines_and_why() -> None:
    quick = _section("Quick start")
    assert "may differ between machines" in quick and "threads" in quick and "floating-point" in quick
    assert "make run" in quick and "make test" in quick
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    assert {"run", "test", "lint", "crd", "bench"} <= targets


def _flywheel_commands() -> set[tuple[str, ...]]:
    """`flywheel SUB` and `flywheel-train` invocations anywhere in the README's text and code."""
    found = set()
    for match in re.finditer(r"\b(flywheel(?:-train)?) ([a-z][a-z-]*)", README):
        program, word = match.groups()
        if program == "flywheel" and word in {"run", "status", "report", "validate", "operator", "exporter", "crd",
                                              "docs"}:
            found.add((program, word))
        elif program == "flywheel-train":
            found.add((program,))
    return found


@pytest.mark.parametrize("command", sorted(_flywheel_commands()))
def test_every_command_the_readme_names_answers_help(command: tuple[str, ...]) -> None:
    program = Path(sys.executable).with_name(command[0])
    result = subprocess.run([str(program), *command[1:], "--help"], capture_output=True, text=True, timeout=120,
                            check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_readmes_links_exist() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_the_install_block_is_five_commands_with_the_exporter_and_your_images() -> None:
    commands = _install_commands()
    assert commands[0].startswith("export REGISTRY=")
    assert len(commands) - 1 == 5, commands
    helm = next(c for c in commands if c.startswith("helm install "))
    assert "--set exporter.enabled=true" in helm
    assert "operator.allowedImages" in helm and "image.repository=$REGISTRY" in helm
    assert sum(c.count("docker push") for c in commands) == 2


def _expand(command: str) -> list[str]:
    return shlex.split(command.replace("$REGISTRY", REGISTRY))


def test_the_install_block_renders_and_admits_the_generation_it_applies(tmp_path: Path) -> None:
    """helm install → helm template with the same arguments; the sed/validate line run as written; the generation
    it applies names an image the rendered operator's allowlist admits, and that image is the one pushed."""
    commands = _install_commands()
    args = _expand(next(c for c in commands if c.startswith("helm install ")))
    assert args[:4] == ["helm", "install", "flywheel", "charts/characterflywheel"]
    args = [a for a in args[4:] if a != "--create-namespace"]
    result = run([helm_binary("helm3"), "template", "flywheel", str(CHART), *args,
                  "--api-versions", "serving.kserve.io/v1alpha1/ClusterServingRuntime"])
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert "flywheel-characterflywheel-exporter" in deployments
    operator = deployments["flywheel-characterflywheel"]["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == f"{REGISTRY}/characterflywheel/operator:0.1.0"
    pushed = {a for c in commands for a in _expand(c) if a.startswith(REGISTRY)}
    assert operator["image"] in pushed
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert any(d["kind"] == kind for d in docs), kind

    line = next(c for c in commands if c.startswith("sed "))
    prepare, _, rest = line.partition(" && ")
    # the sed and the validate exactly as written, in a directory holding a copy of the checkout's example
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "gen15.yaml").write_text((ROOT / "examples" / "gen15.yaml").read_text())
    validate = rest.split(" && ")[0]
    env = {**os.environ, "REGISTRY": REGISTRY, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(f"{prepare} && {validate}", shell=True, cwd=tmp_path, capture_output=True, text=True,
                            check=False, env=env, executable="/bin/bash", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    generation = yaml.safe_load((tmp_path / "gen15.yaml").read_text())
    stage_image = generation["spec"]["resources"]["image"]
    assert stage_image in pushed
    patterns = [a.split("=", 1)[1] for a in operator["args"] if a.startswith("--allowed-image=")]
    assert any(fnmatch.fnmatchcase(stage_image, p) for p in patterns), (stage_image, patterns)
    (runtime,) = [d for d in docs if d["kind"] == "ClusterServingRuntime"]
    assert runtime["spec"]["containers"][0]["image"] == stage_image
    # the last command waits on the generation the file names, in the namespace the chart serves
    assert f"fwg/{generation['metadata']['name']}" in commands[-1] and "-n characters" in commands[-1]


def test_files_pyproject_points_at_exist() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    names = re.findall(r"[\w./-]+\.(?:md|txt|sh|yaml|json)\b", text)
    assert "README.md" in names
    for name in names:
        assert (ROOT / name).exists(), f"pyproject.toml points at {name}, which does not exist"
