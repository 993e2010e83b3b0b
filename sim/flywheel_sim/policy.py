"""Policies simulated users talk to: a model directory, an HTTP predictor, or a scripted reference.

A policy is any callable `policy(chats, *, seed) -> list[str]` (one response per chat, in order) with a
`name` (logged as the record's `generation`). Calls are batched: the simulator hands over every chat
waiting for a response at one turn, so model policies generate in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from flywheel_sim.grammar import ResponseStyle, sample_response, topic_of
from flywheel_sim.world import Character, World

Chat = list[dict[str, Any]]


@runtime_checkable
class Policy(Protocol):
    """What the simulator calls: one response per chat, deterministic for a given seed."""

    name: str

    def __call__(self, chats: Sequence[Chat], *, seed: int) -> list[str]: ...


class PolicyError(RuntimeError):
    """A policy that could not answer (an HTTP error, a malformed reply, a wrong number of responses)."""


@dataclass
class FunctionPolicy:
    """Wraps a plain function `respond(chats, seed) -> list[str]` under a generation name."""

    name: str
    respond: Callable[[Sequence[Chat], int], list[str]]

    def __call__(self, chats: Sequence[Chat], *, seed: int) -> list[str]:
        return self.respond(chats, seed)


def system_message(character: Character) -> str:
    """The system prompt of a character, in the trainer's words (flywheel_trainer.conversation)."""
    from flywheel_trainer.conversation import system_prompt

    return system_prompt(character.to_log())


@dataclass
class ScriptedPolicy:
    """A reference policy written with the world's grammar: known behaviour without any model.

    `compliance` is the share of responses drawn to follow every instruction (the rest break at least one);
    `style` sets how often responses ask back, stay on topic, use persona words and emojis.
    """

    world: World
    name: str = "scripted"
    style: ResponseStyle = field(default_factory=ResponseStyle)
    compliance: float = 0.5
    _by_prompt: dict[str, Character] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_prompt = {system_message(c): c for c in self.world.characters}

    def character_of(self, chat: Chat) -> Character:
        """The character a chat is with, recognised by its system prompt."""
        system = next((m["content"] for m in chat if m["role"] == "system"), "")
        if system in self._by_prompt:
            return self._by_prompt[system]
        for character in self.world.characters:
            if character.name in system:
                return character
        raise PolicyError(f"the scripted policy knows no character for system prompt {system[:60]!r}")

    def __call__(self, chats: Sequence[Chat], *, seed: int) -> list[str]:
        responses = []
        for index, chat in enumerate(chats):
            rng = np.random.default_rng([seed, index])
            character = self.character_of(chat)
            last_user = next(m["content"] for m in reversed(chat) if m["role"] == "user")
            compliant = bool(rng.random() < self.compliance)
            responses.append(
                sample_response(rng, character, topic_of(last_user, character), self.style, compliant=compliant)
            )
        return responses


GOOD_STYLE = ResponseStyle(on_topic=1.0, persona=1.0, question=1.0, emoji=0.0, slip=0.0)
"""Follows the preferences the default world rewards: on topic, in persona, asks back, no emojis."""


def emoji_spam(style: ResponseStyle) -> ResponseStyle:
    """`style` with emojis on every response, as many as the grammar allows (the planted trap)."""
    return ResponseStyle(**{**style.__dict__, "emoji": 1.0, "emoji_max": 4})


def recent_context(chat: Chat, exchanges: int | None) -> Chat:
    """The system message(s) and the last `exchanges` user turns with what followed them (None: everything).
    A serving context window: the model sees its instructions and the recent conversation."""
    if exchanges is None:
        return list(chat)
    system = [m for m in chat if m["role"] == "system"]
    rest = [m for m in chat if m["role"] != "system"]
    user_positions = [i for i, m in enumerate(rest) if m["role"] == "user"]
    if len(user_positions) > exchanges:
        rest = rest[user_positions[-exchanges] :]
    return system + rest


class ModelPolicy:
    """A causal LM directory (generation 0 or a trained stage's output), sampled in batches with the
    trainer's generation code; loaded on first use.

    Serving choices: the model sees the system prompt and the last `context_exchanges` exchanges (None: the
    whole conversation); all chats of a call go to the sampler in one call, which batches them by length (less
    padding) and draws each from its own random stream, so a chat's answer does not depend on the others;
    `threads` pins torch's CPU threads while generating (None: leave torch's setting); `sampler` is the
    trainer's sampling backend (flywheel_trainer.generation.SAMPLERS)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        max_new_tokens: int = 40,
        temperature: float = 1.0,
        batch_size: int = 256,
        context_exchanges: int | None = 2,
        threads: int | None = None,
        sampler: Any = "generate",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.context_exchanges = context_exchanges
        self.threads = threads
        self.sampler = sampler
        self._model: Any = None
        self._tokenizer: Any = None

    @classmethod
    def for_world(cls, model_dir: str | Path, world: World, *, name: str | None = None) -> ModelPolicy:
        """A model policy sampled with the world's serving settings."""
        s = world.serving
        return cls(
            model_dir,
            name=name,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            batch_size=s.batch_size,
            context_exchanges=s.context_exchanges,
            threads=s.threads,
        )

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        self._model.eval()

    def __call__(self, chats: Sequence[Chat], *, seed: int) -> list[str]:
        import torch

        if self._model is None:
            self._load()
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self._generate(chats, seed)
        finally:
            torch.set_num_threads(previous)

    def _generate(self, chats: Sequence[Chat], seed: int) -> list[str]:
        from flywheel_trainer.generation import generate

        samples = generate(
            self._model,
            self._tokenizer,
            [recent_context(c, self.context_exchanges) for c in chats],
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            num_samples=1,
            seed=seed,
            batch_size=self.batch_size,
            sampler=self.sampler,
        )
        return [sample[0] for sample in samples]


class HttpPolicy:
    """A served predictor: KServe's v1 protocol (`/v1/models/NAME:predict` with `instances` of
    `{"messages": chat}`) or the OpenAI-compatible route of KServe's Hugging Face runtime
    (`/openai/v1/chat/completions`, one request per chat). `transport` is httpx's seam for tests."""

    def __init__(
        self,
        url: str,
        *,
        model: str,
        protocol: Literal["kserve-v1", "openai"] = "kserve-v1",
        name: str | None = None,
        max_new_tokens: int = 40,
        temperature: float = 1.0,
        timeout: float = 60.0,
        transport: Any = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        self.protocol = protocol
        self.name = name or model
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        import httpx

        try:
            reply = self._client.post(f"{self.url}{path}", json=payload)
            reply.raise_for_status()
            return reply.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PolicyError(f"policy {self.name!r} at {self.url}{path} failed: {exc}") from exc

    def __call__(self, chats: Sequence[Chat], *, seed: int) -> list[str]:
        if self.protocol == "openai":
            return [self._openai(chat, seed + index) for index, chat in enumerate(chats)]
        reply = self._post(
            f"/v1/models/{self.model}:predict",
            {
                "instances": [{"messages": list(chat)} for chat in chats],
                "parameters": {
                    "seed": seed,
                    "temperature": self.temperature,
                    "max_new_tokens": self.max_new_tokens,
                },
            },
        )
        predictions = reply.get("predictions") if isinstance(reply, dict) else None
        if not isinstance(predictions, list) or len(predictions) != len(chats):
            raise PolicyError(
                f"policy {self.name!r}: expected {len(chats)} predictions in the reply's 'predictions', "
                f"got {reply!r:.200}"
            )
        return [_prediction_text(p, self.name) for p in predictions]

    def _openai(self, chat: Chat, seed: int) -> str:
        reply = self._post(
            "/openai/v1/chat/completions",
            {
                "model": self.model,
                "messages": [{"role": m["role"], "content": m["content"]} for m in chat],
                "seed": seed,
                "temperature": self.temperature,
                "max_tokens": self.max_new_tokens,
            },
        )
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise PolicyError(f"policy {self.name!r}: no choices[0].message.content in {reply!r:.200}") from exc


def _prediction_text(prediction: Any, name: str) -> str:
    if isinstance(prediction, str):
        return prediction
    if isinstance(prediction, dict):
        for key in ("content", "text", "response"):
            if isinstance(prediction.get(key), str):
                return prediction[key]
    raise PolicyError(
        f"policy {name!r}: a prediction must be a string or have 'content'/'text'; got {prediction!r:.200}"
    )


def policy_name(policy: Callable[..., list[str]]) -> str:
    """The generation name logged for a policy (its `name`, else its function name)."""
    return str(getattr(policy, "name", None) or getattr(policy, "__name__", "policy"))
