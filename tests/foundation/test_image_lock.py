"""The images' lock files (requirements/*.txt, used by the Dockerfile with --require-hashes) and the operator's
dependencies without kserve or the training stack (issue 28, point 8)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HEAVY = ("torch", "transformers", "tokenizers", "trl", "peft", "datasets", "accelerate", "kserve", "matplotlib",
         "deepspeed", "pandas", "fastapi", "grpcio-tools")
"""Never in the operator image. The object-store clients are not here: the operator reads stage results from
object storage when their pods are gone (issue 24, item 10)."""


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _locked(path: Path) -> dict[str, Version]:
    """name -> version of every pin of a lock file (each pin must carry hashes)."""
    text = path.read_text()
    pins = {}
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if match:
            assert "--hash=sha256:" in block, f"{path.name}: {match.group(1)} has no hash"
            pins[_name(match.group(1))] = Version(match.group(2))
    return pins


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    return {_name(r.name): r for r in reqs}


def test_the_operator_lock_satisfies_its_inputs_and_holds_nothing_heavy() -> None:
    locked = _locked(LOCKS / "operator.txt")
    inputs = _requirements((LOCKS / "operator.in").read_text().splitlines())
    pyproject = _requirements(PYPROJECT["project"]["dependencies"])
    for name, requirement in inputs.items():
        assert str(pyproject[name].specifier) == str(requirement.specifier), f"{name}: operator.in != pyproject.toml"
        assert locked[name] in requirement.specifier, f"{name} {locked[name]} outside {requirement.specifier}"
    assert not [name for name in HEAVY if _name(name) in locked]


def test_the_trainer_locks_carry_the_pinned_stack() -> None:
    trainer = _locked(LOCKS / "trainer.txt")
    deepspeed = _locked(LOCKS / "trainer-deepspeed.txt")
    torch_pin = re.search(r"^TORCH_PIN\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert torch_pin is not None and trainer["torch"] == Version(torch_pin.group(1))
    extras = PYPROJECT["project"]["optional-dependencies"]
    for line in [*PYPROJECT["project"]["dependencies"], *extras["serving"]]:
        requirement = Requirement(line.split("#")[0].strip())
        assert trainer[_name(requirement.name)] in requirement.specifier, requirement
    (gpu,) = [Requirement(line) for line in extras["gpu"]]
    assert deepspeed["deepspeed"] in gpu.specifier
    shared = trainer.keys() & deepspeed.keys()
    assert shared and all(trainer[n] == deepspeed[n] for n in shared), "the DeepSpeed lock moved a trainer pin"


def test_kserve_is_an_extra_and_the_operator_package_never_imports_it() -> None:
    deps = {_name(Requirement(d).name) for d in PYPROJECT["project"]["dependencies"]}
    assert "kserve" not in deps
    assert any(Requirement(d).name == "kserve" for d in PYPROJECT["project"]["optional-dependencies"]["serving"])
    for path in (ROOT / "operator" / "flywheel_operator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "kserve" for n in names), f"{path} imports kserve"


def _image_site(locked: set[str], into: Path) -> Path:
    """A site-packages holding only the locked distributions (links into this venv's), as the image's venv."""
    from importlib import metadata

    site = into / "site-packages"
    site.mkdir()
    found = set()
    for dist in metadata.distributions():
        name = _name(dist.metadata["Name"])
        if name not in locked or name in found or not dist.files:
            continue
        found.add(name)
        for top in {f.parts[0] for f in dist.files if f.parts[0] not in ("..", "__pycache__")}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    assert found == locked, f"locked but not installed here: {sorted(locked - found)}"
    return site


def test_the_operator_commands_run_with_only_what_the_operator_image_installs(tmp_path: Path) -> None:
    """A fresh interpreter without site-packages sees only the locked distributions and the operator package (as
    the image's venv does: no training stack, kserve, simulator, trainer or dev tools); the operator's modules
    import and its commands parse their arguments."""
    site = _image_site(set(_locked(LOCKS / "operator.txt")), tmp_path)
    script = textwrap.dedent("""
        import importlib, sys
        for module in ("flywheel_operator.cli", "flywheel_operator.kube.run", "flywheel_operator.kube.handlers",
                       "flywheel_operator.gate.exporter", "flywheel_operator.gate.readers",
                       "flywheel_operator.validation", "flywheel_operator.crd", "flywheel_operator.apidocs"):
            importlib.import_module(module)
        for absent in ("torch", "kserve", "flywheel_trainer", "flywheel_sim", "pandas"):
            assert importlib.util.find_spec(absent) is None, absent
        from flywheel_operator.cli import build_parser
        for command in ("operator", "exporter", "validate"):
            try:
                build_parser().parse_args([command, "--help"])
            except SystemExit as exc:
                assert exc.code == 0, command
    """)
    code = f"import sys; sys.path[:0] = [{str(site)!r}, {str(ROOT / 'operator')!r}]\n" + script
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=300,
                            check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_operator_images_build_context_makes_a_wheel_of_the_operator_package_alone(tmp_path: Path) -> None:
    """What the operator stage copies (pyproject.toml, README.md, operator/) builds a wheel holding
    flywheel_operator and the `flywheel` command only: the image carries neither trainer nor simulator."""
    import shutil
    import zipfile

    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "operator", context / "operator", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path / "dist"), str(context)], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"flywheel_operator"}
    assert any(n.startswith("flywheel_operator/kube/") for n in names)
    assert any(n.startswith("flywheel_operator/api/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "flywheel-operator = flywheel_operator.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "BuildBackendWarning" not in result.stderr, result.stderr[-2000:]
