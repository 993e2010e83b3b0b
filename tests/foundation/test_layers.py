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
