"""Simulated users meet the served predictor: the trainer image's `ChatPredictor`, called in process, batched.

The simulator only needs a policy `policy(chats, *, seed) -> list[str]`; wrapping the predictor's `predict`
(KServe's v1 request and response shapes) keeps what simulated users see identical to what the cluster serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flywheel_local.sources import TrafficUri


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
    """A simulator policy answering through a predictor's v1 `predict`, one batched request per call."""

    def __init__(self, predictor: Any, name: str) -> None:
        self.predictor = predictor
        self.name = name

    def __call__(self, chats: Sequence[list[dict[str, Any]]], *, seed: int) -> list[str]:
        payload = {"instances": [{"messages": list(chat)} for chat in chats], "parameters": {"seed": seed}}
        return [p["content"] for p in self.predictor.predict(payload)["predictions"]]


def simulate_source(
    world_file: Path, model_dir: str | Path, policy_name: str, uri: TrafficUri, out: Path, *, seed: int
) -> Path:
    """Simulate `uri.days` days of `uri.source` traffic with the policy in `model_dir`; returns the log file.

    Written atomically by the simulator; an existing log from an earlier (interrupted) run is reused.
    """
    from flywheel_sim import load_world, simulate_traffic

    log = out / "conversations.jsonl"
    done = out / ".complete"
    if done.is_file():  # written after the simulator returned: a resumed run reuses the traffic
        return log
    world = load_world(world_file)
    policy = PredictorPolicy(load_predictor(policy_name, model_dir, world), policy_name)
    simulate_traffic(
        world,
        {"control": policy},
        days=uri.days,
        seed=seed,
        source=uri.source,
        out=out,
        max_people=uri.people,
    )
    done.write_text("")
    return log
