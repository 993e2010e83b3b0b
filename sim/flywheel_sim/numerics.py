"""CPU kernels pinned for the builds whose bits must not depend on the machine (issue 26, problem 4).

torch picks its CPU kernels per machine: ATen dispatches its vectorised kernels (softmax, RMS norm, reductions,
AdamW's updates) to the widest instruction set the processor has — AVX-512 on some x86-64 machines, AVX2 on
others — and MKL's matrix products do the same. Each sums in its own order, so every training step's last bits
differ between two machines, and after a few hundred steps so does every weight: generation 0 had the same
content hash on two machines and answered differently (bench/repro.py measures it).

`PINNED` chooses one code path for both libraries; a process started with `pinned_env()` computes the same bits on
every x86-64 processor with AVX2 (Intel since 2013, AMD since 2015), whatever its widest set. The variables act
only when set before torch is first imported, hence a child process. One thread as well: a reduction split
over threads sums in another order.
"""

from __future__ import annotations

import os
from pathlib import Path

PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "MKL_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_DYNAMIC": "FALSE",
}
"""ATen's kernels and MKL's code path (conditional numerical reproducibility, strict), on one thread."""


def pinned_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process that computes with `PINNED` kernels and imports this checkout's packages
    (the directories holding flywheel_sim, flywheel_trainer and flywheel_operator come first on PYTHONPATH)."""
    import flywheel_operator
    import flywheel_trainer

    env = dict(os.environ if base is None else base)
    env.update(PINNED)
    roots = [str(Path(__file__).resolve().parents[1])]
    roots += [str(Path(m.__file__).resolve().parents[1]) for m in (flywheel_trainer, flywheel_operator)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *filter(None, env.get("PYTHONPATH", "").split(
        os.pathsep))]))
    return env


def kernels() -> dict[str, str | int]:
    """What this process computes with: ATen's CPU capability, torch's threads and the pinning variables."""
    import torch

    return {
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "threads": torch.get_num_threads(),
        **{name: os.environ.get(name, "") for name in PINNED},
    }
