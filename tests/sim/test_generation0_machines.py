"""Generation 0 is the same model on every machine (issue 26, problem 4): the same content hash gave different
weights on two machines, because torch's CPU kernels follow the processor's widest instruction set (AVX-512 or
AVX2) and each sums in its own order. The build now trains in a child process on pinned kernels and one thread
(flywheel_sim.numerics). Here two builds emulate two machines with the libraries' own switches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from flywheel_sim import DEFAULT_WORLD

pytestmark = pytest.mark.slow

BUILD = ("import sys; from pathlib import Path; from flywheel_sim import build_generation0, load_world; "
         "print(build_generation0(load_world(sys.argv[1]), Path(sys.argv[2])))")
MACHINES = {"this machine": {}, "an AVX2 machine": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}}


def _build(world_file: Path, cache: Path, machine: dict[str, str]) -> Path:
    env = {**os.environ, **machine, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", BUILD, str(world_file), str(cache)], env=env, capture_output=True,
                          text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return Path(done.stdout.strip().splitlines()[-1])


def test_two_machines_build_the_same_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    data = yaml.safe_load(DEFAULT_WORLD.read_text())
    data["generation0"].update(dialogues=100, steps=30)
    world_file = tmp_path / "world.yaml"
    world_file.write_text(yaml.safe_dump(data))
    built = {label: _build(world_file, tmp_path / f"cache-{i}", env) for i, (label, env) in enumerate(MACHINES.items())}
    first, second = (load_file(str(d / "model.safetensors")) for d in built.values())
    assert first.keys() == second.keys()
    differing = [name for name in first if not first[name].equal(second[name])]
    assert differing == [], f"weights differ between the emulated machines: {differing[:5]}"
    metas = [json.loads((d / "sim_gen0.json").read_text()) for d in built.values()]
    assert metas[0]["weights_sha256"] == metas[1]["weights_sha256"]
    assert {m["kernels"]["cpu_capability"] for m in metas} <= {"AVX2", "DEFAULT"}  # the pinned path, not AVX512
    assert all(m["kernels"]["threads"] == 1 for m in metas)
