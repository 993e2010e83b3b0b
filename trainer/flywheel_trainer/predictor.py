"""The chat predictor the trainer image serves: one small `kserve.Model` over a transformers model directory.

The cluster runs it behind every InferenceService the operator writes, through the chart's ClusterServingRuntime
`characterflywheel-chat` (`python -m flywheel_trainer.predictor --model_name NAME --model_dir /mnt/models`); the
local runner calls the very same class in process for the simulated users, so what users meet locally is what the
cluster serves. Requests use KServe's v1 protocol:

    {"instances": [{"messages": [{"role": "system", "content": ...}, {"role": "user", ...}]}, ...],
     "parameters": {"seed": 7, "temperature": 1.0, "max_new_tokens": 32}}
    -> {"predictions": [{"content": "..."}, ...]}

Instances are answered in one batched generation (left padding, flywheel_trainer.generation).

The server (`main`) serves `BatchingChatPredictor`: its `predict` is a coroutine, so KServe awaits it instead of
running a whole generation on its event loop; concurrent requests with the same sampling parameters are joined into
one batched generation, run in a worker thread, so N users at once are answered in about the time of one batch
rather than N (tests/trainer/test_predictor_server.py, bench/predictor_load.py). Every chat draws from its own random
stream (flywheel_trainer.generation.row_streams), so joining requests does not change what a chat is answered for a
seed, except that identical chats in one generation get different samples. `flywheel_predictor_batch_requests`
on the server's `/metrics` counts the requests each generation answered.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kserve
from kserve.errors import InvalidInput
from prometheus_client import Histogram

from flywheel_trainer.serving import SERVING_MAX_NEW_TOKENS, SERVING_TEMPERATURE

if TYPE_CHECKING:
    from flywheel_trainer.generation import BatchNumbers

BATCH_REQUESTS = Histogram(
    "flywheel_predictor_batch_requests",
    "Requests answered by one batched generation of the chat predictor",
    ["model_name"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class ChatPredictor(kserve.Model):
    """Answers chats with a causal LM loaded from `model_dir` in `load()`."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        *,
        max_new_tokens: int = SERVING_MAX_NEW_TOKENS,
        temperature: float = SERVING_TEMPERATURE,
        batch_size: int = 256,
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None

    def load(self) -> bool:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from flywheel_trainer.placement import inference_dtype, local_device

        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model_dir {self.model_dir} holds no config.json: not a transformers model")
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=inference_dtype())
        self._model = model.to(local_device()).eval()  # the GPU when the serving pod has one
        self.ready = True
        return self.ready

    def predict(
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None, response_headers: Any = None
    ) -> dict[str, list[dict[str, str]]]:
        chats = _chats(payload)
        parameters = payload.get("parameters") or {}
        responses = self.respond(
            chats,
            seed=int(parameters.get("seed", 0)),
            temperature=float(parameters.get("temperature", self.temperature)),
            max_new_tokens=int(parameters.get("max_new_tokens", self.max_new_tokens)),
        )
        return {"predictions": [{"content": text} for text in responses]}

    def respond(
        self,
        chats: Sequence[Sequence[Mapping[str, str]]],
        *,
        seed: int,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        batches: BatchNumbers | None = None,
    ) -> list[str | None]:
        """One sampled response per chat, in order (what `predict` does without the protocol envelope). With
        `batches`, only the chats of those batches of the call's plan are answered, the others are None
        (generation.SamplingRequest.batches: processes that share a call answer as one)."""
        from flywheel_trainer.generation import generate

        if not self.ready:
            raise RuntimeError(f"predictor {self.name!r} is not loaded; call load() first")
        samples = generate(
            self._model,
            self._tokenizer,
            [[{"role": m["role"], "content": m["content"]} for m in chat] for chat in chats],
            max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            temperature=self.temperature if temperature is None else temperature,
            num_samples=1,
            seed=seed,
            batch_size=self.batch_size,
            batches=batches,
        )
        return [s[0] if s else None for s in samples]


@dataclass
class _Pending:
    chats: list[list[dict[str, str]]]
    answer: asyncio.Future[list[str]] = field(repr=False)


class BatchingChatPredictor(ChatPredictor):
    """What the cluster serves: the ChatPredictor with a coroutine `predict`. Requests wait at most
    `max_batch_delay` seconds for others with the same sampling parameters (seed, temperature, max_new_tokens);
    each group, up to `batch_size` chats, is answered by one batched generation in a worker thread while the event
    loop takes the next requests. One batch runs at a time: the model is not shared between threads."""

    def __init__(self, name: str, model_dir: str | Path, *, max_batch_delay: float = 0.005, **kwargs: Any) -> None:
        super().__init__(name, model_dir, **kwargs)
        self.max_batch_delay = max_batch_delay
        self._queues: dict[tuple[int, float, int], list[_Pending]] = {}
        self._worker: asyncio.Task[None] | None = None

    async def predict(  # type: ignore[override]
        self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None, response_headers: Any = None
    ) -> dict[str, list[dict[str, str]]]:
        chats = _chats(payload)
        parameters = payload.get("parameters") or {}
        key = (
            int(parameters.get("seed", 0)),
            float(parameters.get("temperature", self.temperature)),
            int(parameters.get("max_new_tokens", self.max_new_tokens)),
        )
        if not self.ready:
            raise RuntimeError(f"predictor {self.name!r} is not loaded; call load() first")
        pending = _Pending(chats, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, []).append(pending)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve_batches())
        responses = await pending.answer
        return {"predictions": [{"content": text} for text in responses]}

    async def _serve_batches(self) -> None:
        """Answer the queued requests batch by batch until none is left."""
        while self._queues:
            await asyncio.sleep(self.max_batch_delay)  # let the requests arriving together join this batch
            key = next(iter(self._queues))  # the oldest waiting group first
            queue = self._queues[key]
            batch, size = [], 0
            while queue and (not batch or size + len(queue[0].chats) <= self.batch_size):
                batch.append(queue.pop(0))
                size += len(batch[-1].chats)
            if not queue:
                del self._queues[key]
            seed, temperature, max_new_tokens = key
            chats = [chat for pending in batch for chat in pending.chats]
            try:
                answers = await asyncio.to_thread(
                    self.respond, chats, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens
                )
            except Exception as exc:  # every request of the batch gets the error KServe reports
                for pending in batch:
                    if not pending.answer.done():
                        pending.answer.set_exception(exc)
                continue
            BATCH_REQUESTS.labels(model_name=self.name).observe(len(batch))
            for pending in batch:
                answer, answers = answers[: len(pending.chats)], answers[len(pending.chats) :]
                if not pending.answer.done():  # a client that went away cancelled its future
                    pending.answer.set_result(answer)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        super().stop()


def _chats(payload: Mapping[str, Any]) -> list[list[dict[str, str]]]:
    instances = payload.get("instances") if isinstance(payload, Mapping) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('expected {"instances": [{"messages": [...]}, ...]} with at least one instance')
    chats = []
    for index, instance in enumerate(instances):
        messages = instance.get("messages") if isinstance(instance, Mapping) else None
        if not isinstance(messages, list) or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise InvalidInput(f"instances[{index}].messages must be a list of {{role, content}} strings")
        chats.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return chats


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flywheel-predictor", parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True, help="transformers model directory (the stage's `model`)")
    parser.add_argument("--max_new_tokens", type=int, default=SERVING_MAX_NEW_TOKENS,
                        help="default longest response in tokens")
    parser.add_argument("--temperature", type=float, default=SERVING_TEMPERATURE, help="default sampling temperature")
    parser.add_argument("--batch_size", type=int, default=256, help="most chats answered by one generation")
    parser.add_argument("--max_batch_delay_ms", type=float, default=5.0,
                        help="longest a request waits for others to join its batch")
    args, _ = parser.parse_known_args(argv)
    model = BatchingChatPredictor(
        args.model_name, args.model_dir, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        batch_size=args.batch_size, max_batch_delay=args.max_batch_delay_ms / 1000,
    )
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
