"""Stage programs that start warm: forked from a server process that has imported their libraries once.

Locally every stage runs `flywheel-train STAGE --config FILE` in a process of its own, as a Job's pod does. A cold
start imports torch, transformers, TRL, peft and datasets before the stage does anything: several seconds of one
core, five times on a generation's critical path (curate, the reward models, SFT, RL, eval). multiprocessing's
forkserver imports them once (PRELOAD, while the runner simulates traffic) and forks each stage from there: the
child runs the same `flywheel_trainer.cli.main` in a session of its own, with its log as stdout and stderr and the
environment a cold start gets; the torch thread count a cold start reads from OMP_NUM_THREADS is set with
`torch.set_num_threads` before the stage runs (tests/local/test_warm.py: the same outputs, byte for byte).

`start` returns a `WarmStage` that the LocalBackend handles as it handles a `subprocess.Popen` (poll, wait, pid);
where the forkserver is missing (not Linux) or fails to start, the backend starts stages cold.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PRELOAD = ["flywheel_local.warm_preload"]
"""Imported by the forkserver before it forks any stage (the stage programs' heavy libraries)."""
SERVER_ENV = ("HF_HUB_OFFLINE", "TRL_EXPERIMENTAL_SILENCE", "TOKENIZERS_PARALLELISM", "HF_HUB_DISABLE_PROGRESS_BARS")
"""Variables libraries read at import time: the forkserver starts with the stage environment's values."""
_context: Any = None
_forked = False
"""Whether a stage was forked from the forkserver: its preload is done then, so a fork returns at once."""


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def available() -> bool:
    return sys.platform == "linux"


def warm_up(env: Mapping[str, str]) -> Any:
    """Start the forkserver (once per process) with the stage environment's import-time variables; it imports
    PRELOAD in the background. Returns the multiprocessing context that forks from it."""
    global _context
    if _context is None:
        import multiprocessing
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        with _environment({name: env[name] for name in SERVER_ENV if name in env}):
            forkserver.ensure_running()
        _context = context
    return _context


def context_or_spawn() -> Any:
    """The forkserver's context when this process started it (a child forks in milliseconds, its libraries
    imported), else the spawn context (a child imports them itself): for processes that only need torch."""
    import multiprocessing

    return _context if _context is not None else multiprocessing.get_context("spawn")


def ready_context() -> Any:
    """The forkserver's context once a stage has been forked from it (its libraries imported: a fork is
    immediate), else None. Before that, a fork would wait for the preload to finish (a spawned child imports by
    itself meanwhile): the runner's side worker forks from here where it may not wait (LocalBackend._side_worker)."""
    return _context if _forked else None


def server_context() -> Any:
    """The forkserver's context once this process has started it, else None: a fork from it waits for the preload
    (for a caller in a thread of its own: the first generation's side worker, LocalBackend._hand_to_side)."""
    return _context


def server_pid() -> int | None:
    """The forkserver's process id once this process has started it, else None. Its CPU time is the preload's
    imports, which end by themselves: the runner counts it as its own when it looks for idle cores
    (LocalBackend._side_worker_fits)."""
    if _context is None:
        return None
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)


class WarmStage:
    """A stage forked from the forkserver, seen as a subprocess.Popen: `pid`, `poll()`, `wait(timeout)`."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid: int = process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"stage process {self.pid}", timeout or 0.0)
        return code


def start(argv: Sequence[str], log: Path, env: Mapping[str, str]) -> WarmStage:
    """`flywheel-train ARGV` forked from the forkserver, writing to `log` (appended) in the environment `env`."""
    context = warm_up(env)
    process = context.Process(target=_stage_main, args=(list(argv), str(log), dict(env)),
                              name=f"flywheel-train {' '.join(argv[:1])}", daemon=False)
    process.start()
    global _forked
    _forked = True
    return WarmStage(process)


def _stage_main(argv: list[str], log: str, env: dict[str, str]) -> None:
    """In the forked child: a session of its own, the log as stdout and stderr, the stage's environment and
    thread count, then the stage program as its console script runs it."""
    os.setsid()  # as start_new_session=True: Ctrl-C reaches the runner only, which stops its stages itself
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for target in (1, 2):
        os.dup2(descriptor, target)
    os.close(descriptor)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.reconfigure(line_buffering=True, write_through=True)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["flywheel-train", *argv]  # what a cold start's console script sees
    import torch

    threads = env.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    from flywheel_trainer.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(code)
