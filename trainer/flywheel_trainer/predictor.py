"""The chat predictor the trainer image serves: one small `kserve.Model` over a transformers model directory.

The cluster runs it behind every InferenceService the operator writes, through the chart's ClusterServingRuntime
`characterflywheel-chat` (`python -m flywheel_trainer.predictor --model_name NAME --model_dir /mnt/models`); the
local runner calls the very same class in process for the simulated users, so what users meet locally is what the
cluster serves. Requests use KServe's v1 protocol:

    {"instances": [{"messages": [{"role": "system", "content": ...}, {"role": "user", ...}]}, ...],
     "parameters": {"seed": 7, "temperature": 1.0, "max_new_tokens": 32}}
    -> {"predictions": [{"content": "..."}, ...]}

Instances are answered in one batched generation (left padding, flywheel_trainer.generation).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kserve
from kserve.errors import InvalidInput


class ChatPredictor(kserve.Model):
    """Answers chats with a causal LM loaded from `model_dir` in `load()`."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        *,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
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
    ) -> list[str]:
        """One sampled response per chat, in order (what `predict` does without the protocol envelope)."""
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
        )
        return [s[0] for s in samples]


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
    parser.add_argument("--max_new_tokens", type=int, default=32, help="default longest response in tokens")
    parser.add_argument("--temperature", type=float, default=1.0, help="default sampling temperature")
    args, _ = parser.parse_known_args(argv)
    model = ChatPredictor(
        args.model_name, args.model_dir, max_new_tokens=args.max_new_tokens, temperature=args.temperature
    )
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
