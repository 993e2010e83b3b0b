"""`make setup` never leaves torch unpinned: the real Makefile runs against a stand-in `python3` (and, for a GPU
machine, an `nvidia-smi`) that record every venv and pip call instead of installing anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!{python}
import json, os, pathlib, sys
me = pathlib.Path(sys.argv[0]).resolve()
state = pathlib.Path(os.environ["FAKE_STATE"])
venv = me.parent.parent if me.name == "python" else None
args = sys.argv[1:]
constraint = os.environ.get("PIP_CONSTRAINT")
record = {{"who": "venv" if venv else "system", "args": args,
          "constraints": pathlib.Path(constraint).read_text() if constraint else None}}
with (state / "calls.jsonl").open("a") as log:
    log.write(json.dumps(record) + "\\n")
if args[:2] == ["-m", "venv"]:
    target = pathlib.Path(args[-1])
    (target / "bin").mkdir(parents=True, exist_ok=True)
    (target / "bin" / "python").write_text(me.read_text())
    (target / "bin" / "python").chmod(0o755)
    if "--system-site-packages" in args:
        (target / "system-site").touch()
    sys.exit(0)
if args[:1] == ["-c"] and "import torch" in args[1]:
    if venv and (venv / "torch").exists():
        print((venv / "torch").read_text())
        sys.exit(0)
    system = os.environ.get("FAKE_SYSTEM_TORCH")
    if system and (venv is None or (venv / "system-site").exists()):
        print(system)
        sys.exit(0)
    sys.exit(1)
if args[:3] == ["-m", "pip", "install"] and venv:
    for arg in args[3:]:
        if arg.startswith("torch=="):
            (venv / "torch").write_text(arg.removeprefix("torch=="))
sys.exit(0)
"""


def _setup(tmp_path: Path, *, gpu: bool, system_torch: str | None) -> list[dict]:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON.format(python=sys.executable))
    (bin_dir / "python3").chmod(0o755)
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_STATE": str(state), "HOME": str(tmp_path)}
    if system_torch:
        env["FAKE_SYSTEM_TORCH"] = system_torch
    make = shutil.which("make")
    done = subprocess.run([make, "-s", "-C", str(ROOT), "setup", f"VENV={tmp_path / 'venv'}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def _package_install(calls: list[dict]) -> dict:
    (install,) = [c for c in calls if c["args"][:3] == ["-m", "pip", "install"] and "-e" in c["args"]]
    return install


def _torch_installs(calls: list[dict]) -> list[str]:
    return [a for c in calls if c["args"][:3] == ["-m", "pip", "install"] for a in c["args"] if a.startswith("torch")]


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def test_a_gpu_machine_with_a_system_torch_keeps_it_pinned(tmp_path: Path) -> None:
    calls = _setup(tmp_path, gpu=True, system_torch="2.13.0+cu130")
    venv = next(c for c in calls if c["args"][:2] == ["-m", "venv"])
    assert "--system-site-packages" in venv["args"]
    assert _torch_installs(calls) == []
    assert _package_install(calls)["constraints"].split() == ["torch==2.13.0+cu130"]


def test_a_gpu_machine_without_torch_installs_the_pinned_one(tmp_path: Path) -> None:
    calls = _setup(tmp_path, gpu=True, system_torch=None)
    assert _torch_installs(calls) == ["torch==2.13.0"]
    assert _package_install(calls)["constraints"].split() == ["torch==2.13.0"]


def test_a_cpu_machine_installs_the_pinned_cpu_wheel_in_its_own_venv(tmp_path: Path) -> None:
    calls = _setup(tmp_path, gpu=False, system_torch="2.9.0")
    venv = next(c for c in calls if c["args"][:2] == ["-m", "venv"])
    assert "--system-site-packages" not in venv["args"]
    assert _torch_installs(calls) == ["torch==2.13.0"]
    assert _package_install(calls)["constraints"].split() == ["torch==2.13.0"]
    assert os.path.exists(tmp_path / "venv" / ".installed")
