"""Simulated users meet the served predictor: the trainer image's `ChatPredictor`, called in process, batched.

The simulator only needs a policy `policy(chats, *, seed) -> list[str]`; wrapping the predictor's `predict`
(KServe's v1 request and response shapes) keeps what simulated users see identical to what the cluster serves.

Simulated traffic is work that is provably the same whenever its inputs are: the world file, the policy's model
files, the seed, the source, the days and the people, and the code that simulates and samples (traffic_key).
Two things are kept by that key:

- the traffic of a base policy that lives in the cache (generation 0): `make run` and every Flywheel started from
  generation 0 draw the same first generation's traffic, so later runs copy it from `<cache>/traffic-<key>/`;
- the first PREFIX_DAYS days' end state of every generation's user traffic (`prefix-state.pickle` beside the
  logs): the canary's control-only pre-period is those very days (same world, parent, seed and people; the A/B
  arms start after it), so the canary starts from that state instead of simulating them again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import shutil
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from flywheel_local.sources import TrafficUri

PREFIX_DAYS = 1
"""Days of a generation's user traffic whose end state is kept for the canary's pre-period (its PRE_DAYS)."""
PREFIX_FILE = "prefix-state.pickle"
DONE_FILE = ".complete"
TRAFFIC_FILES = ("conversations.jsonl", "events.jsonl", "sessions.jsonl")
_CODE = {
    "flywheel_sim": ("traffic.py", "people.py", "features.py", "grammar.py", "policy.py", "world.py", "assignment.py"),
    "flywheel_trainer": ("generation.py", "predictor.py", "conversation.py", "placement.py", "style.py",
                         "verifiers.py"),
    "flywheel_local": ("users.py",),
}
"""The code a simulated day depends on (with the versions of torch, transformers and tokenizers)."""


def load_predictor(name: str, model_dir: str | Path, world: Any) -> Any:
    """A loaded ChatPredictor sampling with the world's serving settings."""
    from flywheel_trainer.predictor import ChatPredictor

    serving = world.serving
    predictor = ChatPredictor(
        name,
        model_dir,
        max_new_tokens=serving.max_new_tokens,
        temperature=serving.temperature,
        batch_size=serving.batch_size,
    )
    predictor.load()
    return predictor


class PredictorPolicy:
    """A simulator policy answering through a predictor's v1 `predict`, one batched request per call, on
    `threads` torch CPU threads (the world's `serving.threads`; None: torch's setting)."""

    def __init__(self, predictor: Any, name: str, *, threads: int | None = None) -> None:
        self.predictor = predictor
        self.name = name
        self.threads = threads

    def __call__(self, chats: Sequence[list[dict[str, Any]]], *, seed: int) -> list[str]:
        payload = {"instances": [{"messages": list(chat)} for chat in chats], "parameters": {"seed": seed}}
        with torch_threads(self.threads):
            return [p["content"] for p in self.predictor.predict(payload)["predictions"]]

    def share(self, chats: Sequence[list[dict[str, Any]]], *, seed: int, batches: Any) -> list[str | None]:
        """This process's part of a call that two processes share (SplitPolicy): the responses to the chats of
        `batches` (generation.SamplingRequest.batches), None for the others; for those chats, what __call__
        answers."""
        with torch_threads(self.threads):
            return self.predictor.respond(chats, seed=seed, batches=batches)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch on `threads` CPU threads inside the block (None: as it is), restored after: the simulator's models
    run on the world's `serving.threads` wherever they run, never on torch's default of every core, whose OpenMP
    threads spin against a stage program beside them."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def world_policy(name: str, model_dir: str | Path, world: Any) -> PredictorPolicy:
    """The served predictor of `model_dir` as simulated users meet it: the world's serving settings."""
    return PredictorPolicy(load_predictor(name, model_dir, world), name, threads=world.serving.threads)


def _serve(connection: Any, name: str, model_dir: str, world_file: str, counter: Any = None) -> None:
    """The loop of a PolicyWorker's process: answer ("answer", chats, seed) until ("stop",) or EOF. With a
    shared batch `counter` (SplitPolicy's helper) it says ("ready", failure) once loaded and answers ("share",
    chats, seed) with the batches it takes from the counter. Ctrl-C in the terminal reaches the whole process
    group: the runner stops its workers itself (close)."""
    import signal

    from flywheel_sim import load_world

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    try:
        policy = world_policy(name, model_dir, load_world(world_file))
    except Exception as exc:  # reported at the first request
        failure: str | None = f"{type(exc).__name__}: {exc}"
    else:
        failure = None
    if counter is not None:
        connection.send(("ready", failure))
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        kind, chats, seed = message
        if failure is not None:
            connection.send(("error", f"policy {name!r} could not load {model_dir}: {failure}"))
            continue
        try:
            answers = policy(chats, seed=seed) if kind == "answer" else policy.share(
                chats, seed=seed, batches=shared_batches(counter))
            connection.send(("ok", answers))
        except Exception as exc:
            connection.send(("error", f"policy {name!r} failed: {type(exc).__name__}: {exc}"))


class PolicyWorker:
    """world_policy in a process of its own: `submit` hands a batch over and returns at once, `result` waits
    for its answers, so the simulator's arms answer side by side on two cores (flywheel_sim.traffic calls
    `submit` on every arm before the first `result`). The worker samples exactly as world_policy does in this
    process: the same predictor, seed and thread count give the same responses. `close` (or garbage
    collection of the runner) stops the process."""

    def __init__(self, name: str, model_dir: str | Path, world_file: Path, *, shared: bool = False) -> None:
        from flywheel_local.warm import context_or_spawn

        self.name = name
        # never a plain fork of a process that holds torch's thread pools: the warm forkserver when the runner
        # started it (its torch imported, no thread pool yet), else a spawned interpreter
        context = context_or_spawn()
        self.counter = context.Value("q", 0) if shared else None
        """The batch counter the worker and SplitPolicy take a call's batches from (`shared` workers only)."""
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve,
                                        args=(child, name, str(model_dir), str(world_file), self.counter),
                                        name=f"policy-{name}", daemon=True)
        self._process.start()
        child.close()
        self._waiting = False
        self._ready = not shared
        self.failure: str | None = None
        """Why a shared worker could not load its policy (it said so when ready)."""

    def ready(self) -> bool:
        """Whether the worker has loaded its policy, or failed to (`failure`): a shared worker says so; this never
        waits."""
        if not self._ready and self._connection.poll():
            try:
                _, self.failure = self._connection.recv()
            except EOFError:
                self.failure = f"its worker process ended (exit code {self._process.exitcode})"
            self._ready = True
        return self._ready

    def submit(self, chats: Sequence[list[dict[str, Any]]], *, seed: int, share: bool = False) -> None:
        """Hand a call over: all of it, or with `share` the batches the worker takes from the counter."""
        if self._waiting:
            raise RuntimeError(f"policy {self.name!r}: submit() twice without result()")
        self._connection.send(("share" if share else "answer", [list(chat) for chat in chats], seed))
        self._waiting = True

    def result(self) -> list[str]:
        from flywheel_sim import PolicyError

        try:
            tag, value = self._connection.recv()
        except EOFError as exc:
            raise PolicyError(f"policy {self.name!r}: its worker process ended (exit code "
                              f"{self._process.exitcode})") from exc
        finally:
            self._waiting = False
        if tag == "error":
            raise PolicyError(value)
        return value

    def __call__(self, chats: Sequence[list[dict[str, Any]]], *, seed: int) -> list[str]:
        self.submit(chats, seed=seed)
        return self.result()

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._connection.send(("stop",))
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._connection.close()


def shared_batches(counter: Any) -> Any:
    """The batches a process takes from `counter` (a multiprocessing Value both processes hold): the next number
    until the call's plan has none left (generation.BatchNumbers). Whoever is free takes the next batch, so
    neither process waits while the other has a long batch left."""

    def numbers(count: int) -> Iterator[int]:
        while True:
            with counter.get_lock():
                number = counter.value
                counter.value = number + 1
            if number >= count:
                return
            yield number

    return numbers


class SplitPolicy:
    """world_policy answering each call in two processes: this one and a PolicyWorker of the same model each
    take the call's batches from a shared counter (shared_batches). The batches, their rows' random streams and
    each row's samples come from the whole call (generation.SamplingRequest.batches), so the answers are those of
    one process (tests/local/test_split_policy.py). For the traffic the runner simulates while a core is idle
    (LocalBackend: a chain's internal traffic takes the second core for a few seconds of the user traffic's
    20-30). Until the worker has loaded the model (it forks from the warm server, which may still import), this
    process answers whole calls alone."""

    def __init__(self, local: PredictorPolicy, model_dir: str | Path, world_file: Path) -> None:
        self.local = local
        self.name = local.name
        self.worker = PolicyWorker(local.name, model_dir, world_file, shared=True)

    def __call__(self, chats: Sequence[list[dict[str, Any]]], *, seed: int) -> list[str]:
        counter = self.worker.counter
        if not self.worker.ready() or self.worker.failure is not None:
            return self.local(chats, seed=seed)
        with counter.get_lock():
            counter.value = 0
        self.worker.submit(chats, seed=seed, share=True)
        mine = self.local.share(chats, seed=seed, batches=shared_batches(counter))
        theirs = self.worker.result()
        answers = [a if a is not None else b for a, b in zip(mine, theirs, strict=True)]
        if any(answer is None for answer in answers):
            raise RuntimeError(f"policy {self.name!r}: a batch of the call was answered by neither process")
        return answers  # type: ignore[return-value]

    def close(self) -> None:
        self.worker.close()


@lru_cache(maxsize=64)
def _tree_digest(directory: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode() + b"\0")
        with (Path(directory) / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_digest(model_dir: str | Path) -> str:
    """SHA-256 of every file of a model directory (names and bytes); memoised while no file changes."""
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamp = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _tree_digest(str(root.resolve()), stamp)


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the code a simulated day depends on and the versions of the libraries that sample."""
    import importlib.util

    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256()
    for package, names in _CODE.items():
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations is not None
        folder = Path(next(iter(spec.submodule_search_locations)))
        for name in names:
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    digest.update(f"{torch.__version__}|{transformers.__version__}|{tokenizers.__version__}".encode())
    return digest.hexdigest()


def serving_threads(world_file: Path) -> int:
    """The thread count the world's policy samples with (the world's `serving.threads`, else torch's): it orders
    torch's float sums, so it belongs in every content address of sampled output."""
    from flywheel_sim import load_world

    threads = load_world(world_file).serving.threads
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return threads


def traffic_key(world_file: Path, model_dir: str | Path, *, name: str, seed: int, source: str, days: int,
                people: int | None) -> str:
    """The content address of `days` days of `source` traffic with the model in `model_dir`: equal keys mean
    byte-identical logs and end state (the simulator's draws are keyed by seed, day and turn; the policy's
    samples by the model, the seed and the batch, with torch's thread count, which orders its float sums; the
    logs name the policy `name`)."""
    payload = {
        "world": hashlib.sha256(Path(world_file).read_bytes()).hexdigest(),
        "model": model_digest(model_dir),
        "name": name,
        "seed": seed,
        "source": source,
        "days": days,
        "people": people,
        "threads": serving_threads(world_file),
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def simulate_source(
    world_file: Path,
    model_dir: str | Path,
    policy_name: str,
    uri: TrafficUri,
    out: Path,
    *,
    seed: int,
    cache_dir: Path | None = None,
    split: bool = False,
) -> Path:
    """Simulate `uri.days` days of `uri.source` traffic with the policy in `model_dir`; returns the log file.
    `split`: the policy's calls share their batches with a second process (SplitPolicy: the same logs).

    Written atomically by the simulator; an existing log from an earlier (interrupted) run is reused. With
    `cache_dir`, a policy inside it (generation 0) has its traffic kept there by traffic_key and copied from
    there by later runs. User traffic keeps its first PREFIX_DAYS days' end state for the canary (PREFIX_FILE).
    """
    log = out / "conversations.jsonl"
    done = out / DONE_FILE
    if done.is_file():  # written after the simulator returned: a resumed run reuses the traffic
        return log
    key = traffic_key(world_file, model_dir, name=policy_name, seed=seed, source=uri.source, days=uri.days,
                      people=uri.people)
    cached = _cache_entry(cache_dir, model_dir, key)
    if cached is not None and (cached / DONE_FILE).is_file():
        _copy_traffic(cached, out)
    else:
        _simulate(world_file, model_dir, policy_name, uri, out, seed=seed, split=split)
        if cached is not None:
            _store(out, cached)
    done.write_text("")
    return log


def on_disk(world_file: Path, model_dir: str | Path, policy_name: str, uri: TrafficUri, out: Path, *, seed: int,
            cache_dir: Path | None = None) -> bool:
    """Whether simulate_source would find this traffic written (in `out`, or in the cache) instead of simulating."""
    if (out / DONE_FILE).is_file():
        return True
    key = traffic_key(world_file, model_dir, name=policy_name, seed=seed, source=uri.source, days=uri.days,
                      people=uri.people)
    cached = _cache_entry(cache_dir, model_dir, key)
    return cached is not None and (cached / DONE_FILE).is_file()


def _cache_entry(cache_dir: Path | None, model_dir: str | Path, key: str) -> Path | None:
    """Where the traffic of a policy that lives in the cache (generation 0) is kept; None for other policies."""
    if cache_dir is None:
        return None
    cache = Path(cache_dir).resolve()
    return cache / f"traffic-{key[:16]}" if Path(model_dir).resolve().is_relative_to(cache) else None


def _simulate(world_file: Path, model_dir: str | Path, policy_name: str, uri: TrafficUri, out: Path, *,
              seed: int, split: bool = False) -> None:
    from flywheel_sim import load_world

    world = load_world(world_file)
    policy = world_policy(policy_name, model_dir, world)
    shared = SplitPolicy(policy, model_dir, world_file) if split else None
    try:
        _simulate_days(world, world_file, model_dir, shared or policy, uri, out, seed=seed)
    finally:
        if shared is not None:
            shared.close()


def _simulate_days(world: Any, world_file: Path, model_dir: str | Path, policy: Any, uri: TrafficUri, out: Path,
                   *, seed: int) -> None:
    import numpy as np
    from flywheel_sim import TrafficResult, TrafficSimulation, write_traffic

    simulation = TrafficSimulation(world, {"control": policy}, seed=seed, source=uri.source, max_people=uri.people)
    index = {person: i for i, person in enumerate(simulation.people.ids)}
    turns = np.zeros(len(simulation.state.memory), dtype=int)
    total = TrafficResult(records=[], events=[], sessions=[])
    out.mkdir(parents=True, exist_ok=True)
    for day in range(uri.days):
        result = simulation.next_day()
        total.records += result.records
        total.events += result.events
        total.sessions += result.sessions
        if uri.source != "user" or day >= PREFIX_DAYS:
            continue
        for session in result.sessions:
            turns[index[session["user_id"]]] += session["turns"]
        if day + 1 == PREFIX_DAYS:
            prefix = {"key": prefix_key(world_file, model_dir, seed=seed, people=uri.people),
                      "memory": simulation.state.memory, "turns": turns}
            _atomic_bytes(out / PREFIX_FILE, pickle.dumps(prefix))
    write_traffic(total, out)


def _store(out: Path, cached: Path) -> None:
    """Copy a finished simulation into the cache (atomically: a half-written entry is never read)."""
    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (*TRAFFIC_FILES, PREFIX_FILE):
        if (out / name).is_file():
            shutil.copyfile(out / name, tmp / name)
    (tmp / DONE_FILE).write_text("")
    try:
        tmp.rename(cached)
    except OSError:  # another run stored the same key first: the same content
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_traffic(cached: Path, out: Path) -> None:
    """The cached traffic into `out`, each file atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (*TRAFFIC_FILES, PREFIX_FILE):
        if (cached / name).is_file():
            tmp = out / f".{name}.tmp"
            shutil.copyfile(cached / name, tmp)
            tmp.replace(out / name)


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def prefix_key(world_file: Path, model_dir: str | Path, *, seed: int, people: int | None) -> str:
    """The content address of the first PREFIX_DAYS days of user traffic's end state: the policy's name, which
    only labels the logs, is not part of it."""
    return traffic_key(world_file, model_dir, name="", seed=seed, source="user", days=PREFIX_DAYS, people=people)


def control_prefix(traffic_dir: Path, world_file: Path, model_dir: str | Path, *, seed: int,
                   people: int | None) -> dict[str, Any] | None:
    """The end state of the first PREFIX_DAYS days of user traffic in `traffic_dir` when it was simulated with
    exactly these inputs ({"memory", "turns"} per person), else None."""
    path = Path(traffic_dir) / PREFIX_FILE
    if not path.is_file():
        return None
    try:
        prefix = pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        return None
    wanted = prefix_key(world_file, model_dir, seed=seed, people=people)
    return prefix if isinstance(prefix, dict) and prefix.get("key") == wanted else None
