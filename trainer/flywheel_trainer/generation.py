"""Batched sampling of chat responses from a causal LM, behind one seam: rejection sampling, RL prompt selection,
the RL band, offline evaluation, the KServe predictor and the simulator's model policies all draw responses here,
so they format prompts, truncate, stop and decode the same way whatever backend samples.

Prompts are rendered with the tokenizer's chat template (`add_generation_prompt=True`), truncated to their
latest tokens when the model's context is short, and handed to a `Sampler` backend as token ids; only the new
tokens come back, cut before the first stop token (EOS), and are decoded here. A seed makes a call reproducible
without touching the caller's global RNG state.

Backends (`SAMPLERS`, chosen by the stage settings' `sampler` field, docs/stages.md "Sampling"):

- `generate` (the default): transformers' `model.generate`, so batching with left padding, the KV cache and
  stopping at EOS come from the library. Temperature and top-p are transformers' logits warpers; the draw from
  the warped distribution uses each row's own counter-based stream (`SeededDraw`, `row_streams`: the seed, the
  prompt's tokens, its occurrence among identical prompts and the sample's number), so a call is reproducible,
  thread safe (the predictor samples in worker threads), leaves the global RNG alone, and gives a chat the same
  samples whatever the other chats, their order and the batch size. That frees the backend to batch prompts by
  length and to shed finished rows with their KV cache (`COMPACT_SHARE`).

vLLM is the next backend (a `Sampler` that hands the same prompt ids to `vllm.LLM.generate`); it is not built:
its PyPI wheel is CUDA-only and no GPU proves it here.
"""

from __future__ import annotations

import functools
import hashlib
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from flywheel_trainer.tinymodel import CHAT_TEMPLATE, ROLE_TOKENS

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_SAMPLER",
    "SAMPLERS",
    "BatchNumbers",
    "GenerateSampler",
    "Sampler",
    "SamplingRequest",
    "generate",
    "generate_tokens",
    "get_sampler",
    "prompt_ids",
    "prompt_ids_many",
]

Chat = Sequence[dict[str, str]]
BatchNumbers = Callable[[int], Iterable[int]]
"""Given how many batches a call's plan has, the numbers of those this process samples (None: all of them)."""


@dataclass(frozen=True)
class SamplingRequest:
    """What a backend is asked for, already validated: `num_samples` responses per prompt of at most
    `max_new_tokens` tokens each, ended by any of `stop`."""

    max_new_tokens: int
    temperature: float
    """0 decodes greedily (then all samples of a prompt are equal); above 0 samples softmax(logits / T)."""
    top_p: float
    """Nucleus: sample from the smallest set of tokens holding this much probability (1.0: all of them)."""
    num_samples: int
    seed: int
    batch_size: int
    """Sequences per batch: a batch holds batch_size // num_samples prompts (at least one)."""
    stop: tuple[int, ...]
    """Token ids that end a response (the tokenizer's EOS and the model's generation_config EOS ids)."""
    pad_id: int
    batches: BatchNumbers | None = None
    """Sample only these batches of the call's plan; the prompts of the others come back with no samples ([]).
    The plan (which prompts share a batch) and every row's random stream come from the whole call, so processes
    that each take some batches of one call, merged, give exactly what one process gives
    (flywheel_local.users.SplitPolicy)."""


class Sampler(Protocol):
    """A sampling backend: the only part of sampling that differs between backends."""

    name: str

    def sample(
        self, model: Any, prompts: Sequence[list[int]], request: SamplingRequest
    ) -> list[list[list[int]]]:
        """`request.num_samples` lists of new token ids per prompt, in order, each cut before its first stop
        token. The same model, prompts and request give the same tokens; the global RNG is not used."""
        ...


def prompt_ids(tokenizer: PreTrainedTokenizerBase, chat: Chat, *, max_tokens: int | None = None) -> list[int]:
    """Token ids of `chat` followed by the assistant generation prompt. When longer than `max_tokens`, the
    oldest tokens are dropped: the latest turns matter most for the next reply."""
    encoded = tokenizer.apply_chat_template(list(chat), add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = list(encoded["input_ids"])
    return ids[-max_tokens:] if max_tokens is not None and len(ids) > max_tokens else ids


def prompt_ids_many(
    tokenizer: PreTrainedTokenizerBase, chats: Sequence[Chat], *, max_tokens: int | None = None
) -> list[list[int]]:
    """prompt_ids of every chat, in order. For the local tokenizer (`tinymodel`) the ids are assembled from
    each message's cached content ids (`_Concatenation`): a simulated day's chats grow by one turn per step,
    so almost every message was tokenised before, and this skips the render and the BPE of whole chats. Any
    other tokenizer, or a chat the assembly does not cover, takes `_rendered_ids`."""
    if not chats:
        return []
    concatenation = _Concatenation.of(tokenizer)
    rows = concatenation.ids(tokenizer, chats) if concatenation is not None else None
    if rows is None:
        rows = _rendered_ids(tokenizer, chats)
    if max_tokens is not None:
        rows = [ids[-max_tokens:] if len(ids) > max_tokens else ids for ids in rows]
    return rows


def _rendered_ids(tokenizer: PreTrainedTokenizerBase, chats: Sequence[Chat]) -> list[list[int]]:
    """The ids of every chat rendered by the chat template: the distinct chats in one batched
    `apply_chat_template` call (the library renders each conversation and encodes them as one batch: the ids of
    one call per chat). The oracle repeats its prompt grid once per draw, and most of a simulated day's sessions
    open with one of the world's few openings, so distinct chats are far fewer. A chat whose messages hold
    unhashable values counts as distinct."""
    slots: dict[Any, int] = {}
    distinct: list[list[dict[str, Any]]] = []
    where = []
    for chat in chats:
        try:
            key: Any = tuple(tuple(sorted(message.items())) for message in chat)
            slot = slots.get(key)
        except TypeError:
            key, slot = None, None
        if slot is None:
            slot = len(distinct)
            distinct.append(list(chat))
            if key is not None:
                slots[key] = slot
        where.append(slot)
    encoded = tokenizer.apply_chat_template(distinct, add_generation_prompt=True, tokenize=True, return_dict=True)
    rows = [list(ids) for ids in encoded["input_ids"]]
    return [list(rows[slot]) for slot in where]


_CONTROL_TOKEN = re.compile(r"<[^<>]+>")


@dataclass
class _Concatenation:
    """A chat's ids as BOS, then per message its role token, its content's own ids and EOS, then the assistant
    token: exactly the ids of `tinymodel.CHAT_TEMPLATE`'s render when `of` accepts the tokenizer.

    Why that holds: the backend cuts the text at its added tokens before anything else (no normalizer, so on
    the raw text) and encodes each piece between them on its own; a pre-tokenizer that looks only at its piece
    (ByteLevel without a prefix space) and a BPE model without dropout give a piece the same ids wherever it
    stands. A content sits between a role token (ending in ">") and EOS (starting with "<"). When every added
    token is "<...>" with no "<" or ">" inside, no added token can be matched across a content's edge, so the
    cuts inside a content (a literal "</s>" included) are those of the content alone; and with no lstrip,
    rstrip or single_word, no token eats a content's edge whitespace. The signature holds everything this
    relies on; a tokenizer whose signature changes gets a fresh cache."""

    signature: tuple[Any, ...]
    bos: int
    eos: int
    roles: dict[str, int]
    contents: dict[str, list[int]] = field(default_factory=dict)
    """Each content's own ids; the lists are never handed out, only copied into rows."""

    CACHE_LIMIT = 1 << 16
    """Contents kept per tokenizer (the cache is emptied when it grows past this): the six days of gen1's canary
    hold about 25,000 distinct messages, and a long-lived tokenizer must not keep every one it ever saw."""

    _by_tokenizer: ClassVar[weakref.WeakKeyDictionary[Any, _Concatenation]] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, tokenizer: Any) -> _Concatenation | None:
        """The tokenizer's assembly, or None when its renders are not provably the concatenation."""
        signature = _concatenation_signature(tokenizer)
        if signature is None:
            return None
        cached = cls._by_tokenizer.get(tokenizer)
        if cached is not None and cached.signature == signature:
            return cached
        made = cls(signature=signature, bos=signature[0], eos=signature[1], roles=dict(signature[2]))
        cls._by_tokenizer[tokenizer] = made
        return made

    def ids(self, tokenizer: Any, chats: Sequence[Chat]) -> list[list[int]] | None:
        """The ids of every chat (fresh lists), or None when a message is not a known role with str content
        (then the template decides: it raises on an unknown role). Rows are built from this call's own view of
        the cache, so a predictor thread emptying it meanwhile changes nothing."""
        roles = self.roles
        found: dict[str, list[int] | None] = {}
        for chat in chats:
            for message in chat:
                role, content = message.get("role"), message.get("content")
                if type(role) is not str or role not in roles or type(content) is not str:
                    return None
                found[content] = None
        contents = self.contents
        found = {content: contents.get(content) for content in found}
        missing = [content for content, ids in found.items() if ids is None]
        if missing:
            encodings = tokenizer._tokenizer.encode_batch_fast(missing, add_special_tokens=False)
            encoded = {content: encoding.ids for content, encoding in zip(missing, encodings, strict=True)}
            found.update(encoded)
            if len(contents) + len(encoded) > self.CACHE_LIMIT:
                contents.clear()
            contents.update(encoded)
        bos, eos, assistant = self.bos, self.eos, roles["assistant"]
        rows = []
        for chat in chats:
            ids = [bos]
            for message in chat:
                ids.append(roles[message["role"]])
                ids += found[message["content"]]
                ids.append(eos)
            ids.append(assistant)
            tokenizer._eventual_warn_about_too_long_sequence(ids, None, True)  # as the rendered encoding warns
            rows.append(ids)
        return rows


def _concatenation_signature(tokenizer: Any) -> tuple[Any, ...] | None:
    """(BOS id, EOS id, role ids, the added tokens), or None when the tokenizer is not one whose renders are the
    concatenation (`_Concatenation`). The contents are encoded by the backend itself, so its state must be what
    the tokenizer's own call sets (special tokens cut, no truncation, no padding). Cheap (microseconds), so
    checked on every call."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if (
        backend is None
        or getattr(tokenizer, "chat_template", None) != CHAT_TEMPLATE
        or getattr(tokenizer, "split_special_tokens", True)
        or not hasattr(tokenizer, "_eventual_warn_about_too_long_sequence")
        or not hasattr(backend, "encode_batch_fast")
        or backend.encode_special_tokens
        or backend.truncation is not None
        or backend.padding is not None
        or backend.normalizer is not None
        or type(backend.pre_tokenizer).__name__ != "ByteLevel"
        or backend.pre_tokenizer.add_prefix_space
        or type(backend.model).__name__ != "BPE"
        or backend.model.dropout is not None
        or type(backend.post_processor).__name__ not in ("NoneType", "TemplateProcessing", "ByteLevel")
    ):
        return None
    added = backend.get_added_tokens_decoder()
    for token in added.values():
        if token.lstrip or token.rstrip or token.single_word or token.normalized:
            return None
        if not _CONTROL_TOKEN.fullmatch(token.content):
            return None
    ids = {token.content: token_id for token_id, token in added.items()}
    written = [tokenizer.bos_token, tokenizer.eos_token, *ROLE_TOKENS.values()]
    if not all(isinstance(text, str) and text in ids for text in written):
        return None
    roles = tuple((role, ids[text]) for role, text in ROLE_TOKENS.items())
    return ids[tokenizer.bos_token], ids[tokenizer.eos_token], roles, tuple(sorted(ids.items()))


def left_pad(rows: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of `rows` left-padded to the longest, so every row's next token is last."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def until_stop(tokens: list[int], stop: Sequence[int]) -> list[int]:
    """`tokens` up to (without) the first stop token."""
    for position, token in enumerate(tokens):
        if token in stop:
            return tokens[:position]
    return tokens


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def _check(max_new_tokens: int, temperature: float, num_samples: int, batch_size: int, top_p: float) -> None:
    for name, value, low in (
        ("max_new_tokens", max_new_tokens, 1),
        ("num_samples", num_samples, 1),
        ("batch_size", batch_size, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be at least {low}; got {value}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = the full distribution); got {top_p}")


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 values (numpy: unsigned arithmetic wraps, as the algorithm needs)."""
    z = values + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_streams(prompts: Sequence[list[int]], draws: int, seed: int) -> np.ndarray:
    """The random stream of every row a call samples, as one uint64 key per (prompt, draw): shape
    (len(prompts), draws). A key mixes the seed, the prompt's tokens, how many identical prompts came before it in
    the call and the draw's number, so a row's draws do not depend on which rows share its batch, on the batch
    size or on where the prompt stands among different prompts."""
    seen: dict[bytes, int] = {}
    digests = np.empty(len(prompts), dtype=np.uint64)
    occurrences = np.empty(len(prompts), dtype=np.uint64)
    for index, prompt in enumerate(prompts):  # the hashing per prompt; the mixing below, for all rows at once
        content = np.asarray(prompt, dtype=np.int64).tobytes()
        occurrence = seen.get(content, 0)
        seen[content] = occurrence + 1
        occurrences[index] = occurrence
        digest = hashlib.blake2b(content, digest_size=8, person=b"flywheel-row").digest()
        digests[index] = int.from_bytes(digest, "little")
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    key = _splitmix64(_splitmix64(digests ^ base) + occurrences)
    keys = _splitmix64(key[:, None] + np.arange(draws, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03))
    return keys


def stream_uniforms(keys: np.ndarray, steps: int) -> np.ndarray:
    """Uniform numbers in [0, 1) for `steps` draws of each row key: shape (len(keys), steps), float64. Counter
    based (SplitMix64 of key and step), so draw t of a row is the same whatever else is sampled."""
    counters = np.arange(1, steps + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    bits = _splitmix64(keys.reshape(-1, 1) ^ counters)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


@functools.cache
def _seeded_draw_class() -> type:
    """SeededDraw, built on first use so that importing this module does not import transformers."""
    import torch
    from transformers import LogitsProcessor

    class SeededDraw(LogitsProcessor):
        """The last logits processor of a sampled `generate` call: draws each row's next token from
        softmax(scores) (scores already warped by temperature and top-p) and leaves only that token finite, so
        generate's greedy pick takes it. The draw inverts the cumulative distribution at the row's own uniform
        number for this step (`uniforms[row, first_step + call]`, row_streams/stream_uniforms): exact, cheap,
        reproducible for a seed, independent of the global RNG and of the other rows in the batch. Rows that
        stopped draw too (generate replaces their token with padding); nothing is drawn past the last step.

        `warpers` (temperature, top-p) are applied first, inside this one processor: generate's processor list
        inspects every processor's signature at every step, so one processor instead of three saves that."""

        def __init__(self, uniforms: torch.Tensor, first_step: int = 0, warpers: Sequence[Any] = ()) -> None:
            self.uniforms = uniforms
            self.step = first_step
            self.warpers = tuple(warpers)

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            for warper in self.warpers:
                scores = warper(input_ids, scores)
            step, self.step = self.step, self.step + 1
            if step >= self.uniforms.shape[1]:
                return scores
            cumulative = torch.softmax(scores, dim=-1).cumsum(dim=-1)
            uniform = self.uniforms[:, step : step + 1].to(cumulative.dtype)
            token = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True).squeeze(1)
            token = token.clamp(max=scores.shape[-1] - 1)
            return torch.full_like(cumulative, float("-inf")).scatter_(1, token[:, None], 0.0)

    return SeededDraw


@functools.cache
def _compact_when_class() -> type:
    """CompactWhen, built on first use so that importing this module does not import transformers."""
    import torch
    from transformers import StoppingCriteria

    class CompactWhen(StoppingCriteria):
        """Ends a `generate` call once `share` of its rows have produced a stop token while others still draw,
        so the caller drops the finished rows (and their cache) and continues the rest: generate keeps finished
        rows in the batch and computes them at every step until the last row stops."""

        def __init__(self, stop: Sequence[int], share: float) -> None:
            self.stop = torch.tensor(list(stop))
            self.share = share
            self.finished: torch.Tensor | None = None  # rows that drew a stop token (called once per new token)

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            rows = input_ids.shape[0]
            stopped = torch.isin(input_ids[:, -1], self.stop.to(input_ids.device))
            self.finished = stopped if self.finished is None else self.finished | stopped
            done = int(self.finished.sum())
            compact = 0 < done < rows and done >= self.share * rows
            return torch.full((rows,), compact, dtype=torch.bool, device=input_ids.device)

    return CompactWhen


@functools.cache
def _growing_layer_class() -> type:
    """GrowingLayer, built on first use so that importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """transformers' DynamicLayer without its copy per step: `update` concatenates the new keys and values
        onto the cache (torch.cat), copying the whole cache once per token; here they are written into a buffer
        reserved for the prompt and `reserve` more positions, and the layer's keys and values are views of its
        filled part — the same values in the same shapes, so attention computes the same numbers
        (tests/trainer/test_generation.py). A batch selection selects whole buffers; anything else that replaces
        the views (a crop) is copied into a new buffer at the next update."""

        def __init__(self, reserve: int) -> None:
            super().__init__()
            self.reserve = reserve
            self._buffers: tuple[Any, Any] | None = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch

            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            filled = self.get_seq_length()
            needed = filled + key_states.shape[-2]
            buffers = self._buffers
            if (buffers is None or needed > buffers[0].shape[-2] or buffers[0].shape[:2] != key_states.shape[:2]
                    or (filled and self.keys.data_ptr() != buffers[0].data_ptr())):
                shape = (*key_states.shape[:2], needed + self.reserve, key_states.shape[-1])
                buffers = (torch.empty(shape, dtype=key_states.dtype, device=key_states.device),
                           torch.empty(shape, dtype=value_states.dtype, device=value_states.device))
                if filled:
                    buffers[0][:, :, :filled].copy_(self.keys)
                    buffers[1][:, :, :filled].copy_(self.values)
                self._buffers = buffers
            buffers[0][:, :, filled:needed].copy_(key_states)
            buffers[1][:, :, filled:needed].copy_(value_states)
            self.keys, self.values = buffers[0][:, :, :needed], buffers[1][:, :, :needed]
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            """The rows kept, selected from the whole buffer in one copy, reserve included, so the next update
            writes on: DynamicLayer's selection copies the filled part and the next update copies it again."""
            buffers = self._buffers
            filled = self.get_seq_length()
            if not filled or buffers is None or self.keys.data_ptr() != buffers[0].data_ptr():
                super().batch_select_indices(indices)
                return
            self._buffers = buffers = (buffers[0].index_select(0, indices), buffers[1].index_select(0, indices))
            self.keys, self.values = buffers[0][:, :, :filled], buffers[1][:, :, :filled]

        def reset(self) -> None:
            self._buffers = None
            super().reset()

    return GrowingLayer


def growing_cache(model: Any, reserve: int) -> Any:
    """A DynamicCache for `model` whose layers grow in place (GrowingLayer, `reserve` positions after the prompt);
    None when the model's cache has layers of another kind (sliding windows, linear attention): generate then
    builds its own."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache(config=model.config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    layer = _growing_layer_class()
    cache.layers = [layer(reserve) for _ in cache.layers]
    return cache


class GenerateSampler:
    """The `generate` backend: transformers' `model.generate` over batches of left-padded prompts.

    Prompts are batched in order of length (less left padding), each row draws from its own stream
    (row_streams: same seed, same tokens whatever the batch size or the order of the prompts), and once
    `COMPACT_SHARE` of a batch's rows have stopped, the rest continue in a smaller batch with their KV cache (the
    finished rows and theirs are dropped), so a long straggler does not carry finished rows along. Greedy
    decoding decodes identical prompts once."""

    name = "generate"

    def sample(self, model: Any, prompts: Sequence[list[int]], request: SamplingRequest) -> list[list[list[int]]]:
        import torch

        sampling = request.temperature > 0
        draws = request.num_samples if sampling else 1
        per_batch = max(1, request.batch_size // request.num_samples)
        device = next(model.parameters()).device
        keys = row_streams(prompts, draws, request.seed) if sampling else None
        first: dict[tuple[int, ...], int] = {}  # greedy: identical prompts are decoded once
        copies = [i if sampling else first.setdefault(tuple(prompt), i) for i, prompt in enumerate(prompts)]
        order = sorted((i for i, j in enumerate(copies) if i == j), key=lambda i: len(prompts[i]))
        results: list[list[list[int]]] = [[] for _ in prompts]
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                starts = range(0, len(order), per_batch)
                numbers = range(len(starts)) if request.batches is None else request.batches(len(starts))
                for number in numbers:
                    chosen = order[starts[number] : starts[number] + per_batch]
                    batch = [prompts[i] for i in chosen for _ in range(draws)]
                    uniforms = None
                    if keys is not None:
                        table = stream_uniforms(keys[chosen].reshape(-1), request.max_new_tokens)
                        uniforms = torch.from_numpy(table).to(device)
                    new = self._generate(model, batch, request, uniforms, device)
                    for slot, index in enumerate(chosen):
                        rows = new[slot * draws : (slot + 1) * draws]
                        samples = rows if sampling else rows * request.num_samples
                        results[index] = [until_stop(tokens, request.stop) for tokens in samples]
        finally:
            model.train(was_training)
        return [results[j] if i == j else [list(t) for t in results[j]] for i, j in enumerate(copies)]

    @staticmethod
    def _generate(
        model: Any, batch: list[list[int]], request: SamplingRequest, uniforms: torch.Tensor | None,
        device: torch.device,
    ) -> list[list[int]]:
        """New tokens per row of one batch, up to and including its stop token (or max_new_tokens of them)."""
        import torch
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            StoppingCriteriaList,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )
        from transformers.cache_utils import DynamicCache

        ids, mask = left_pad(batch, request.pad_id, device)
        # proven token for token on the CPU (tests); a GPU keeps generate's own cache until a lent GPU proves it
        cache = growing_cache(model, request.max_new_tokens + 1) if GROWING_CACHE and device.type == "cpu" else None
        if cache is None:
            cache = DynamicCache(config=model.config)
        if min(len(row) for row in batch) > 1:
            _prefill_distinct(model, batch, cache, request.pad_id, device)
        out: list[list[int]] = [[] for _ in batch]
        alive = list(range(len(batch)))  # the batch row of each row still drawing
        done = 0  # new tokens every row still drawing has
        stop = torch.tensor(request.stop, device=device)
        warpers = []  # built once per batch: each compaction round only narrows the rows and moves the step
        if uniforms is not None:
            if request.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(request.temperature))
            if request.top_p < 1.0:
                warpers.append(TopPLogitsWarper(request.top_p))
        # The stage settings are the only source of sampling options: do_sample=False makes generate pick the
        # token SeededDraw left (or the argmax when greedy), and the neutral values below override what a
        # checkpoint's generation_config may carry (a repetition penalty, a minimum length...). generate copies
        # the config it is handed, so one serves every round with its max_new_tokens set.
        config = GenerationConfig(
            max_new_tokens=request.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(request.stop),
            pad_token_id=request.pad_id,
            use_cache=True,
            min_new_tokens=0,  # also replaces a checkpoint's min_length (generate: min_length = prompt + this)
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            renormalize_logits=False,
            remove_invalid_values=False,
            return_dict_in_generate=False,
        )
        while True:
            processors = LogitsProcessorList()
            if uniforms is not None:
                processors.append(_seeded_draw_class()(uniforms[alive], done, warpers))
            config.max_new_tokens = request.max_new_tokens - done
            compact = StoppingCriteriaList([_compact_when_class()(request.stop, COMPACT_SHARE)])
            sequences = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=compact,
                past_key_values=cache,
                synced_gpus=False,  # ranks sample their own shares (placement.across_ranks) of a whole model
            )
            new = sequences[:, ids.shape[1] :]
            for row, tokens in zip(alive, new.tolist(), strict=True):
                out[row].extend(tokens)
            done += new.shape[1]
            going = ~torch.isin(new, stop).any(dim=1)
            if done >= request.max_new_tokens or not bool(going.any()):
                break
            keep = going.nonzero().squeeze(1)
            # generate's cache holds every position but the last token's; the rows that go on keep theirs
            cache.batch_select_indices(keep)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], new.shape[1]))], dim=1)[keep]
            ids = sequences[keep]
            alive = [alive[i] for i in keep.tolist()]
        return out


def _prefill_distinct(model: Any, batch: list[list[int]], cache: Any, pad_id: int, device: torch.device) -> None:
    """Fill `cache` with the keys and values of every row's prompt but its last token, computing each distinct
    prompt once: the samples of one prompt (num_samples) and the many sessions that open alike share a prefill.
    The rows' cache is the distinct prompts' cache repeated (a batch selection); generate, handed the full
    left-padded rows, then computes only their last tokens. The distinct prompts are left padded to the batch's
    width, so their cache lines up with the rows' attention mask."""
    import torch

    slots: dict[tuple[int, ...], int] = {}
    where = [slots.setdefault(tuple(row), len(slots)) for row in batch]
    distinct = [list(row) for row in slots]
    width = max(len(row) for row in batch)
    ids = torch.full((len(distinct), width - 1), pad_id, dtype=torch.long)
    mask = torch.zeros((len(distinct), width - 1), dtype=torch.long)
    for i, row in enumerate(distinct):
        ids[i, width - len(row) :] = torch.tensor(row[:-1], dtype=torch.long)
        mask[i, width - len(row) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
          logits_to_keep=1)
    if len(distinct) < len(batch) or where != list(range(len(batch))):
        cache.batch_select_indices(torch.tensor(where, device=device))


GROWING_CACHE = True
"""Sample on the CPU with growing_cache (no copy of the whole KV cache per token); False: generate's own
DynamicCache."""

COMPACT_SHARE = 0.25
"""A batch sheds its finished rows once they are this share of it (bench/sampler.py measured 1/8, 1/4 and 1/2);
above 1: never (generate keeps finished rows until the last one stops)."""

SAMPLERS: dict[str, Sampler] = {"generate": GenerateSampler()}
"""The sampling backends by the name a stage's `sampler` setting uses."""
DEFAULT_SAMPLER = "generate"


def get_sampler(sampler: str | Sampler) -> Sampler:
    """The backend named `sampler` (a Sampler passes through), or a ValueError naming the known ones."""
    if not isinstance(sampler, str):
        return sampler
    try:
        return SAMPLERS[sampler]
    except KeyError:
        raise ValueError(
            f"sampler must be one of {', '.join(sorted(SAMPLERS))}; got {sampler!r} "
            "(vLLM is not a backend yet: docs/stages.md, \"Sampling\")"
        ) from None


def generate_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: Sequence[Chat],
    *,
    max_new_tokens: int,
    temperature: float,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    top_p: float = 1.0,
    sampler: str | Sampler = DEFAULT_SAMPLER,
    batches: BatchNumbers | None = None,
) -> list[list[list[int]]]:
    """New token ids, `num_samples` per chat, each cut before its first stop token (EOS).

    `temperature` 0 decodes greedily (then all samples of a chat are equal). `batch_size` counts sequences,
    so a batch holds batch_size // num_samples chats (at least one). Sampling is from the full distribution
    (no top-k) unless `top_p` < 1. The same arguments and seed give the same tokens; the global RNG is not used.
    `sampler` names the backend (`SAMPLERS`) or is one. `batches`: only these batches of the call's plan
    (SamplingRequest.batches); the other chats get no samples.
    """
    backend = get_sampler(sampler)
    _check(max_new_tokens, temperature, num_samples, batch_size, top_p)
    if not chats:
        return []
    stop = _stop_ids(model, tokenizer)
    if not stop:
        raise ValueError("the tokenizer has no eos_token and the model's generation_config no eos_token_id")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    max_positions = getattr(model.config, "max_position_embeddings", None)
    max_prompt = None if max_positions is None else max_positions - max_new_tokens
    if max_prompt is not None and max_prompt < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {max_positions} positions")
    prompts = prompt_ids_many(tokenizer, chats, max_tokens=max_prompt)
    request = SamplingRequest(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        num_samples=num_samples,
        seed=seed,
        batch_size=batch_size,
        stop=tuple(stop),
        pad_id=pad_id,
        batches=batches,
    )
    return backend.sample(model, prompts, request)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: Sequence[Chat],
    *,
    max_new_tokens: int,
    temperature: float,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    top_p: float = 1.0,
    sampler: str | Sampler = DEFAULT_SAMPLER,
    batches: BatchNumbers | None = None,
) -> list[list[str]]:
    """`num_samples` sampled responses per chat (decoded new tokens only, special tokens dropped), in the
    order of `chats`. See generate_tokens for the sampling rules."""
    tokens = generate_tokens(
        model,
        tokenizer,
        chats,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        num_samples=num_samples,
        seed=seed,
        batch_size=batch_size,
        top_p=top_p,
        sampler=sampler,
        batches=batches,
    )
    # a chat of another process's batches has no samples: batch_decode([]) would give [""]
    return [tokenizer.batch_decode(samples, skip_special_tokens=True) if samples else [] for samples in tokens]
