"""Layers that are enforced, not just described: the pure core imports no I/O library and reads no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "flywheel_operator"
PURE = sorted(
    [*(PACKAGE / "api").glob("*.py"), *(PACKAGE / "planner").glob("*.py")]
    + [PACKAGE / "gate" / name for name in ("stats.py", "offline.py", "online.py", "divergence.py")
       if (PACKAGE / "gate" / name).exists()]
)
IO_MODULES = {"kopf", "kubernetes", "kserve", "httpx", "requests", "aiohttp", "subprocess", "socket", "urllib",
              "prometheus_client", "torch", "transformers"}
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "sleep"}


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_do_no_io(path):
    tree = ast.parse(path.read_text())
    assert not _imports(tree) & IO_MODULES, f"{path.name} imports {_imports(tree) & IO_MODULES}"


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_read_no_clock(path):
    tree = ast.parse(path.read_text())
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert not calls & CLOCK_CALLS, f"{path.name} calls {calls & CLOCK_CALLS}: time must come in as `now`"


def test_planner_public_surface_is_pinned():
    from flywheel_operator import planner

    assert set(planner.__all__) == {
        "Action", "CanaryObservation", "DeployCanary", "Event", "JobObservation", "Observed", "ParentObservation",
        "Plan", "PromoteCanary", "RollBackCanary", "StartStage", "child_name", "pipeline_steps", "plan",
        "stage_config", "stage_kind"}


# Every import between the four top-level packages points one way, down this list: the local runner composes the
# other three; the simulator uses the trainer's text utilities; trainer and simulator use only the operator's small
# contract modules; the operator imports none of them, so its image needs neither the simulator nor the trainer.
ROOT = PACKAGE.parents[1]
LAYERS = ["flywheel_local", "flywheel_sim", "flywheel_trainer", "flywheel_operator"]
SOURCES = {"flywheel_local": ROOT / "local", "flywheel_sim": ROOT / "sim", "flywheel_trainer": ROOT / "trainer",
           "flywheel_operator": ROOT / "operator"}
OPERATOR_CONTRACT = ("flywheel_operator.api", "flywheel_operator.arms", "flywheel_operator.gate.events",
                     "flywheel_operator.gate.store", "flywheel_operator.storage", "flywheel_operator.capacity",
                     "flywheel_operator.kube.termination", "flywheel_operator.tracking")
"""What trainer and simulator may import from the operator: the API models, the arm assignment, the engagement
event schema and per-user store (the simulator aggregates its users like the exporter does), object storage, the
GPU-fit rule `flywheel validate` and the inference loads share (capacity), and the stage pod's result channel
to the operator (kube.termination, written by `flywheel-train`) and the MLflow run layout every stage and the
gate log into (tracking). None of them imports kopf, kubernetes or torch."""


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _package_files():
    for package, where in SOURCES.items():
        for path in sorted((where / package).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize(("package", "path"), list(_package_files()),
                         ids=lambda v: v if isinstance(v, str) else f"{v.parent.name}/{v.name}")
def test_imports_between_packages_point_one_way(package, path):
    below = LAYERS[LAYERS.index(package) + 1:]
    wrong = []
    for module in _imported_modules(ast.parse(path.read_text())):
        top = module.split(".")[0]
        if top not in LAYERS or top == package:
            continue
        if top not in below:
            wrong.append(f"{module} (a package above {package})")
        elif top == "flywheel_operator" and package in ("flywheel_sim", "flywheel_trainer") and module not in (
                "flywheel_operator",) and not module.startswith(OPERATOR_CONTRACT):
            wrong.append(f"{module} (not one of the operator's contract modules {OPERATOR_CONTRACT})")
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_every_package_has_sources():
    """The layer test reads real files: a moved package must move here too."""
    for package, where in SOURCES.items():
        assert (where / package / "__init__.py").is_file() or list((where / package).glob("*.py")), package
