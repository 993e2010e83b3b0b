"""The oracle's draws of each model, for the report: side by side on the machine's cores, kept by content.

The report's oracle (flywheel_sim.oracle.expected_engagement, DEFAULT_DRAWS draws per model) is most of what
`flywheel report` costs. A model's draws depend only on the world, the model's files, the number of draws, the
code that samples and simulates, and torch's thread count (which orders its float sums; the world's
`serving.threads` pins it, flywheel_local.users.PredictorPolicy), never on the process that computes them. So:

- the models of a report are computed in parallel processes, `serving.threads` threads each (`expected_for`);
- the draws of a model that lives in the cache (generation 0, the first parent of every run from the world) are
  kept in the cache under their content key, like generation 0's traffic, and read back by later reports;
- `prefetch` hands generation 0's to the runner's side worker while the runner simulates the user traffic on one
  core (the other is idle then), and the candidate's while its eval stage runs on one thread (LocalBackend
  .status_written), so the report finds them done. The runner, the trainer and the gates never read
  them: only the report does (`expected_for` waits for a prefetch of the same key still running).

Every path gives the same figures as computing in this process (tests/local/test_oracle_runs.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pickle
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

ORACLE_CODE = ("oracle.py", "people.py", "features.py", "grammar.py", "world.py")
"""flywheel_sim modules the draws depend on besides the sampling code (flywheel_local.users.code_digest)."""
_PREFETCHES: dict[str, Any] = {}
"""Computations handed to a side worker by `prefetch` (multiprocessing AsyncResults) by key, waited for before
the key is read."""
PREFETCH_WAIT_SECONDS = 900.0
"""Longest wait for a prefetch before computing the draws again (it takes well under a minute)."""


def workers_for(world: Any) -> int:
    """Processes that fit the machine's cores at the world's `serving.threads` each (at least one)."""
    threads = world.serving.threads or 1
    return max(1, (os.cpu_count() or 1) // threads)


@lru_cache(maxsize=1)
def _oracle_code_digest() -> str:
    from flywheel_local.users import code_digest

    spec = importlib.util.find_spec("flywheel_sim")
    assert spec is not None and spec.submodule_search_locations is not None
    folder = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256(code_digest().encode())
    for name in ORACLE_CODE:
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()


def expected_key(world_file: Path, model_dir: str | Path, draws: int) -> str:
    """The content address of a model's oracle draws (world, model files, draws, threads and code)."""
    from flywheel_local.users import model_digest, serving_threads

    payload = {
        "world": hashlib.sha256(Path(world_file).read_bytes()).hexdigest(),
        "model": model_digest(model_dir),
        "draws": draws,
        "threads": serving_threads(world_file),
        "code": _oracle_code_digest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_entry(cache_dir: Path | None, model_dir: str | Path, key: str) -> Path | None:
    """Where the draws of a model inside the cache (generation 0) are kept; None for other models."""
    if cache_dir is None:
        return None
    cache = Path(cache_dir).resolve()
    return cache / f"oracle-{key[:16]}.pickle" if Path(model_dir).resolve().is_relative_to(cache) else None


def compute_expected(model_dir: str, world_file: str, draws: int) -> list[Any]:
    """The oracle's `draws` draws of the model in `model_dir` as the report computes them (in any process)."""
    from flywheel_sim import load_world
    from flywheel_sim.oracle import expected_engagement

    from flywheel_local.users import PredictorPolicy, load_predictor

    world = load_world(world_file)
    policy = PredictorPolicy(load_predictor("oracle", model_dir, world), "oracle", threads=world.serving.threads)
    return expected_engagement(world, policy, draws=draws)


def _read(entry: Path | None) -> list[Any] | None:
    if entry is None or not entry.is_file():
        return None
    try:
        found = pickle.loads(entry.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    return found if isinstance(found, list) else None


def _store(entry: Path | None, expected: list[Any]) -> None:
    if entry is None:
        return
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(expected))
    tmp.replace(entry)


def _compute_and_store(model_dir: str, world_file: str, draws: int, entry: str | None) -> list[Any]:
    expected = compute_expected(model_dir, world_file, draws)
    _store(Path(entry) if entry else None, expected)
    return expected


def _wait_for_prefetch(key: str) -> Any:
    """What the prefetch of `key` returned (after waiting for it), or None when there was none or it failed."""
    pending = _PREFETCHES.pop(key, None)
    if pending is not None:
        with contextlib.suppress(Exception):  # a prefetch that failed leaves no entry: the draws are computed
            return pending.get(PREFETCH_WAIT_SECONDS)
    return None


def wait_for(key: str) -> Any:
    """Wait for the work handed over under `key` (`hand_over`); its return value, None when none or it failed."""
    return _wait_for_prefetch(key)


def hand_over(key: str, pool: Any, function: Callable[..., Any], *args: Any) -> bool:
    """Hand `function(*args)` to `pool` (its `apply_async`) under `key`, unless work of that key was handed over
    already; returns whether it was. The report waits for the key (`wait_for`) before it does the same work."""
    if key in _PREFETCHES:
        return False
    _PREFETCHES[key] = pool.apply_async(function, args)
    return True


def expected_for(models: Sequence[str], world_file: Path, draws: int, *, cache_dir: Path | None = None,
                 workers: int = 1, alongside: Callable[[], None] | None = None) -> dict[str, list[Any]]:
    """The oracle's draws of every model in `models`: read from the cache where kept there, the others computed in
    up to `workers` spawned processes at once while `alongside()` (other work of the report) runs in this one;
    with one worker, or one model and nothing alongside, all in this process. Models inside `cache_dir` are
    stored there."""
    out: dict[str, list[Any]] = {}
    todo: list[tuple[str, str | None]] = []
    for model in dict.fromkeys(models):
        entry, prefetched = None, None
        if cache_dir is not None or _PREFETCHES:
            key = expected_key(world_file, model, draws)
            prefetched = _wait_for_prefetch(key)
            entry = cache_entry(cache_dir, model, key)
        found = _read(entry)
        if found is None and isinstance(prefetched, list) and len(prefetched) == draws:
            found = prefetched  # a model outside the cache (the candidate), computed while its generation ran
        if found is not None:
            out[model] = found
        else:
            todo.append((model, None if entry is None else str(entry)))
    parallel = workers > 1 and (len(todo) > 1 or (len(todo) == 1 and alongside is not None))
    if not parallel:
        if alongside is not None:
            alongside()
        for model, entry in todo:
            out[model] = _compute_and_store(model, str(world_file), draws, entry)
        return out
    from concurrent.futures import ProcessPoolExecutor

    from flywheel_local.warm import context_or_spawn

    # no plain fork of a process that holds torch's thread pools: the runner's warm forkserver, or spawn
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context_or_spawn()) as pool:
        futures = {model: pool.submit(_compute_and_store, model, str(world_file), draws, entry)
                   for model, entry in todo}
        if alongside is not None:
            alongside()
        for model, future in futures.items():
            out[model] = future.result()
    return out


def prefetch(model_dir: str | Path, world_file: Path, cache_dir: Path, *, pool: Any, draws: int | None = None) -> bool:
    """Hand the computation of the draws of a model to `pool` (a multiprocessing pool: its `apply_async`), unless
    they are kept already or being computed; returns whether it was handed over. The draws of a model inside
    `cache_dir` are kept there; those of another (a generation's candidate) are handed to the report in this
    process by `expected_for`."""
    from flywheel_sim.oracle import DEFAULT_DRAWS

    draws = DEFAULT_DRAWS if draws is None else draws
    key = expected_key(world_file, model_dir, draws)
    entry = cache_entry(cache_dir, model_dir, key)
    if (entry is not None and entry.is_file()) or key in _PREFETCHES:
        return False
    _PREFETCHES[key] = pool.apply_async(_compute_and_store, (str(model_dir), str(world_file), draws,
                                                             None if entry is None else str(entry)))
    return True


def pending() -> int:
    """How many pieces of work handed over (`hand_over`, `prefetch`) have not finished yet: the side worker is busy
    while this is above 0 (LocalBackend starts a stage alone on one core fewer)."""
    return sum(1 for result in _PREFETCHES.values() if not result.ready())


def forget_prefetches() -> None:
    """Forget the prefetches handed over (their pool is being stopped: Ctrl-C); the report computes the draws."""
    _PREFETCHES.clear()
