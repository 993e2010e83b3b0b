"""`flywheel-train STAGE --config FILE`: the one entry point of every stage Job and local subprocess.

The config is a StageConfig (YAML or JSON) rendered by the operator. It is validated by the API model
before anything runs, so an unknown or misspelt setting fails at once with its name.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import importlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import get_args

import yaml
from flywheel_operator.api import STAGE_KINDS, StageConfig, StageResult, StageSettings
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from flywheel_trainer.outputs import StageError
from flywheel_trainer.tracking import run_tracked


def _version() -> str:
    """The installed distribution's version (pyproject.toml's `version`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("characterflywheel")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


STAGE_MODULES = {
    "curate": "flywheel_trainer.curate",
    "reward": "flywheel_trainer.reward",
    "sft": "flywheel_trainer.sft",
    "rl": "flywheel_trainer.rl",
    "eval": "flywheel_trainer.evaluate",
}


def load_config(path: str | Path, *, stage: str | None = None) -> StageConfig:
    """Read and validate a stage config; errors name the offending field and the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StageError(f"--config: {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise StageError(f"--config: {path} is neither valid YAML nor JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise StageError(f"--config: {path} must hold a mapping (a StageConfig), not {type(raw).__name__}")
    try:
        config = StageConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}" for error in exc.errors()
        )
        raise StageError(f"invalid stage config {path}: {problems}") from exc
    if stage is not None and config.stage != stage:
        raise StageError(f"{path} configures stage {config.stage!r}, but {stage!r} was asked for; fix `stage`")
    return config


def run_stage(config: StageConfig) -> StageResult:
    """Run the stage program the config names (the same function the Job, the CLI and the tests call)."""
    module = importlib.import_module(STAGE_MODULES[config.stage])
    with frozen_imports():
        return run_tracked(config, lambda: module.main(config))


@contextlib.contextmanager
def frozen_imports() -> Iterator[None]:
    """The objects alive now (the imported torch, transformers, TRL, datasets: ~0.5 M) kept out of every garbage
    collection until the block ends. A full collection walks them all (0.35 CPU-s each), and a stage runs a dozen
    (its own gc.collect after dropping each model, accelerate's before each trainer, the interpreter's own);
    import-time objects are never garbage, so skipping them frees nothing less. A caller that froze its own objects
    before keeps them (and these) frozen."""
    frozen_by_caller = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_by_caller:
            gc.unfreeze()


STAGE_SETTINGS = {"curate": ("curate",), "reward": ("reward_models",), "sft": ("sft", "dpo"), "rl": ("rl",),
                  "eval": ("eval",)}
"""The parts of `StageConfig.settings` each stage program reads (sft also runs the optional DPO patch)."""


def _stage_doc(stage: str) -> str:
    """The stage module's docstring, read without importing the module (its imports are heavy)."""
    spec = importlib.util.find_spec(STAGE_MODULES[stage])
    assert spec is not None and spec.origin is not None
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""


def _settings_help(stage: str) -> str:
    """The config keys this stage reads, each with its default and meaning (the same text as docs/api.md)."""
    lines: list[str] = []
    for field in STAGE_SETTINGS[stage]:
        info = StageSettings.model_fields[field]
        _field_help(lines, info.alias or field, info, "")
    return "\n".join(lines)


def _field_help(lines: list[str], key: str, info: FieldInfo, indent: str) -> None:
    model = next((t for t in (info.annotation, *get_args(info.annotation)) if isinstance(t, type)
                  and issubclass(t, BaseModel)), None)
    text = " ".join((info.description or "").split())
    if model is not None:
        lines.append(f"{indent}{key}: {text}")
        for name, sub in model.model_fields.items():
            _field_help(lines, sub.alias or name, sub, indent + "  ")
        return
    if info.is_required():
        shown = " (required)"
    else:
        default = info.get_default(call_default_factory=True)
        shown = "" if default is None or default == [] or default == {} else f" (default {default})"
    lines.append(f"{indent}{key}{shown}: {text}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel-train", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE", help=", ".join(STAGE_KINDS))
    for stage in STAGE_KINDS:
        doc = _stage_doc(stage)
        sub = stages.add_parser(
            stage,
            help=doc.splitlines()[0].removeprefix(f"Stage `{stage}`: ") if doc else stage,
            description=doc,
            epilog=f"StageConfig keys read by `{stage}` (set in the FlywheelGeneration's spec.stages):\n"
            + _settings_help(stage),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--config", required=True, help=f"StageConfig file (YAML or JSON) with stage: {stage}")
    return parser


TERMINATION_ENV = "FLYWHEEL_TERMINATION_LOG"
"""Set in stage pods: the file the kubelet keeps as the container's termination message (the stage result)."""


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (preemption, drain, deadline) as an exception: as PID 1 the program would otherwise ignore it, and
    outputs.atomic_output_dir removes its staging directory on the way out."""
    raise SystemExit(128 + signum)


def _report(config: StageConfig | None, message: str | None) -> None:
    """The pod's termination message: the compact result on success, the error otherwise (local rank 0 only)."""
    target = os.environ.get(TERMINATION_ENV)
    if not target or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    if message is not None or config is None:
        Path(target).write_text(message or "", encoding="utf-8")
        return
    from flywheel_operator.kube.termination import write_message

    write_message(config, Path(target))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    config = None
    try:
        config = load_config(args.config, stage=args.stage)
        result = run_stage(config)
    except StageError as exc:
        print(f"flywheel-train {args.stage}: error: {exc}", file=sys.stderr)
        _report(config, f"flywheel-train {args.stage}: error: {exc}"[-4000:])
        return 2
    _report(config, None)
    summary = ", ".join(f"{name}={value:.4g}" for name, value in sorted(result.metrics.items()))
    print(f"flywheel-train {args.stage}: done ({summary}); output digest {result.output_digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
