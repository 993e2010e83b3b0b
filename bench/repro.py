"""Why generation 0 answered differently on two machines with the same content hash, measured on one machine.

Two x86-64 machines differ in the CPU kernels torch picks (ATen's vectorised kernels and MKL's matrix products
follow the widest instruction set: AVX-512 here, AVX2 on many machines) and may differ in threads. This bench trains
the same small generation 0 (same corpus, seed and steps) in child processes that emulate those differences with
the libraries' own switches (ATEN_CPU_CAPABILITY, MKL_CBWR) and thread counts, and compares the weights bit for bit
and the models' behaviour on the oracle's grid; then it samples one model under each setting and counts identical
answers; then it builds with `build_generation0` (pinned kernels, flywheel_sim.numerics) from parents with
different settings, which must give one digest.

    python bench/repro.py                       # ~3 min on 2 cores: 200 steps on 600 dialogues per build
    python bench/repro.py --steps 500 --dialogues 1500   # the default world's own size (~2 min per build)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "repro.json"
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
"""What an x86-64 machine without AVX-512 computes with, emulated on one that has it."""
SETTINGS: dict[str, tuple[dict[str, str], int]] = {
    "this machine, 1 thread": ({}, 1),
    "ATen at AVX2, 1 thread": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1),
    "MKL at AVX2, 1 thread": ({"MKL_CBWR": "AVX2"}, 1),
    "an AVX2 machine, 1 thread": (AVX2_MACHINE, 1),
    "this machine, 2 threads": ({}, 2),
}
"""Label: (environment over this process's, torch threads)."""


def _world(steps: int, dialogues: int) -> Any:
    import yaml
    from flywheel_sim import DEFAULT_WORLD, parse_world

    data = yaml.safe_load(DEFAULT_WORLD.read_text())
    data["generation0"].update(steps=steps, dialogues=dialogues)
    return parse_world(data)


def child(task: dict[str, Any]) -> dict[str, Any]:
    """In a child process with the setting's environment: train (task "train") or sample (task "sample")."""
    import torch

    torch.set_num_threads(task["threads"])
    world = _world(task["steps"], task["dialogues"])
    out = Path(task["out"])
    from flywheel_sim.numerics import kernels

    if task["kind"] == "build":
        from flywheel_sim import build_generation0

        built = build_generation0(world, out)
        return {"weights_sha256": json.loads((built / "sim_gen0.json").read_text())["weights_sha256"]}
    if task["kind"] == "train":
        from flywheel_sim.generation0 import Gen0Settings, _train_single_thread

        started = time.perf_counter()
        meta = _train_single_thread(world, Gen0Settings(steps=task["steps"], seed=world.seed), out, None)
        return {"weights_sha256": meta["weights_sha256"], "seconds": round(time.perf_counter() - started, 1),
                "final_loss": meta["final_loss"], "kernels": kernels()}
    from flywheel_sim import ModelPolicy, oracle

    policy = ModelPolicy.for_world(out, world)
    policy.threads = task["threads"]
    answers: list[str] = []

    def recording(chats: Any, *, seed: int) -> list[str]:
        found = policy(chats, seed=seed)
        answers.extend(found)
        return found

    recording.name = "gen0"  # type: ignore[attr-defined]
    truth = oracle(world, recording, seed=0)
    return {"answers": answers, "compliance": truth["compliance"], "depth": truth["depth"],
            "breadth": truth["breadth"], "kernels": kernels()}


def run_child(task: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    reply = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)], env={**os.environ, **env},
                           capture_output=True, text=True, check=False)
    if reply.returncode:
        raise RuntimeError(f"child {task['kind']} failed: {reply.stderr[-3000:]}")
    return json.loads(reply.stdout.strip().splitlines()[-1])


def pinned_builds(steps: int, dialogues: int, folder: Path) -> dict[str, str]:
    """build_generation0 from parent processes emulating each machine: the digest each one gets."""
    return {label: run_child({"kind": "build", "out": str(folder / f"cache-{index}"), "threads": 1,
                              "steps": steps, "dialogues": dialogues}, env)["weights_sha256"]
            for index, (label, env) in enumerate((("this machine", {}), ("an AVX2 machine", AVX2_MACHINE)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dialogues", type=int, default=600)
    parser.add_argument("--out", default=str(RESULT))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    size = {"steps": args.steps, "dialogues": args.dialogues}
    with tempfile.TemporaryDirectory(prefix="repro-") as tmp:
        folder = Path(tmp)
        builds: dict[str, Any] = {}
        for index, (label, (env, threads)) in enumerate(SETTINGS.items()):
            model = folder / f"model-{index}"
            built = run_child({"kind": "train", "out": str(model), "threads": threads, **size}, env)
            sampled = run_child({"kind": "sample", "out": str(model), "threads": threads, **size}, env)
            builds[label] = {**built, **{k: sampled[k] for k in ("compliance", "depth", "breadth")},
                             "model": str(model)}
        reference = next(iter(builds.values()))
        sampling: dict[str, Any] = {}
        first = run_child({"kind": "sample", "out": reference["model"], "threads": 1, **size}, {})
        for label, (env, threads) in SETTINGS.items():
            again = run_child({"kind": "sample", "out": reference["model"], "threads": threads, **size}, env)
            same = sum(a == b for a, b in zip(first["answers"], again["answers"], strict=True))
            sampling[label] = {"identical_answers": same, "answers": len(first["answers"]),
                               "compliance": again["compliance"], "depth": again["depth"]}
        pinned = pinned_builds(args.steps, args.dialogues, folder)
    for b in builds.values():
        b.pop("model")
    digests = {b["weights_sha256"] for b in builds.values()}
    result = {
        "size": size,
        "machine": {"cpus": os.cpu_count(), **reference["kernels"]},
        "builds": builds,
        "distinct_weights_unpinned": len(digests),
        "sampling_the_same_model": sampling,
        "pinned_build_digests": pinned,
        "pinned_builds_agree": len(set(pinned.values())) == 1,
    }
    print(f"\n== generation 0 ({args.steps} steps, {args.dialogues} dialogues) trained under each setting")
    head = f"{'setting':<28} {'weights':>10} {'s':>6} {'loss':>6} {'IF':>6} {'depth':>6} {'breadth':>7}"
    print(head + "\n" + "-" * len(head))
    for label, b in builds.items():
        print(f"{label:<28} {b['weights_sha256'][:10]:>10} {b['seconds']:>6.1f} {b['final_loss']:>6.3f} "
              f"{b['compliance']:>6.1%} {b['depth']:>6.3f} {b['breadth']:>7.3f}")
    print(f"\n== one model ({next(iter(builds))}) sampled on the oracle's grid under each setting")
    for label, s in sampling.items():
        print(f"{label:<28} identical answers {s['identical_answers']}/{s['answers']}, IF {s['compliance']:.1%}, "
              f"depth {s['depth']:.3f}")
    print(f"\n== build_generation0 (pinned kernels) from each parent: {pinned} -> "
          f"{'one digest' if result['pinned_builds_agree'] else 'DIFFERENT digests'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("repro", out)  # provenance
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
