"""Batched sampling of chat responses from a causal LM: rejection sampling, RL prompt selection and offline
evaluation all draw responses here, so they format prompts, pad, stop and decode the same way.

Prompts are rendered with the tokenizer's chat template (`add_generation_prompt=True`), left-padded so every
row's next token sits at the end, and only the new tokens are decoded. A seed makes a call reproducible
without touching the caller's global RNG state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["generate", "generate_tokens", "prompt_ids"]

Chat = Sequence[dict[str, str]]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, chat: Chat, *, max_tokens: int | None = None) -> list[int]:
    """Token ids of `chat` followed by the assistant generation prompt. When longer than `max_tokens`, the
    oldest tokens are dropped: the latest turns matter most for the next reply."""
    encoded = tokenizer.apply_chat_template(list(chat), add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = list(encoded["input_ids"])
    return ids[-max_tokens:] if max_tokens is not None and len(ids) > max_tokens else ids


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def _check(max_new_tokens: int, temperature: float, num_samples: int, batch_size: int) -> None:
    for name, value, low in (
        ("max_new_tokens", max_new_tokens, 1),
        ("num_samples", num_samples, 1),
        ("batch_size", batch_size, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be at least {low}; got {value}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")


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
) -> list[list[list[int]]]:
    """New token ids, `num_samples` per chat, each cut before its first stop token (EOS).

    `temperature` 0 decodes greedily (then all samples of a chat are equal). `batch_size` counts sequences,
    so a batch holds batch_size // num_samples chats (at least one). Sampling is from the full distribution
    (no top-k) unless `top_p` < 1. The same arguments and seed give the same tokens.
    """
    import torch

    _check(max_new_tokens, temperature, num_samples, batch_size)
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
    prompts = [prompt_ids(tokenizer, chat, max_tokens=max_prompt) for chat in chats]
    sampling = temperature > 0
    options = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        if sampling
        else {"do_sample": False}
    )
    chats_per_batch = max(1, batch_size // num_samples)
    device = next(model.parameters()).device
    results: list[list[list[int]]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(prompts), chats_per_batch):
                ids, mask = _left_pad(prompts[start : start + chats_per_batch], pad_id, device)
                output = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=num_samples if sampling else 1,
                    pad_token_id=pad_id,
                    eos_token_id=stop,
                    **options,
                )
                new = output[:, ids.shape[1] :].tolist()
                for row in range(ids.shape[0]):
                    samples = new[row * num_samples : (row + 1) * num_samples] if sampling else [new[row]] * num_samples
                    results.append([_until_stop(tokens, stop) for tokens in samples])
    finally:
        model.train(was_training)
    return results


def _until_stop(tokens: list[int], stop: list[int]) -> list[int]:
    for position, token in enumerate(tokens):
        if token in stop:
            return tokens[:position]
    return tokens


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
    )
    return [tokenizer.batch_decode(samples, skip_special_tokens=True) for samples in tokens]
