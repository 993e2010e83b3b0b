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
    (no top-k) unless `top_p` < 1. The same arguments and seed give the same tokens; the global RNG is not used.
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
    draws = num_samples if sampling else 1
    chats_per_batch = max(1, batch_size // num_samples)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    results: list[list[list[int]]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), chats_per_batch):
                batch = [row for row in prompts[start : start + chats_per_batch] for _ in range(draws)]
                ids, mask = _left_pad(batch, pad_id, device)
                new = _decode(model, ids, mask, max_new_tokens, temperature, top_p, stop, generator)
                for row in range(0, len(new), draws):
                    samples = new[row : row + draws] if sampling else new[row : row + 1] * num_samples
                    results.append([_until_stop(tokens, stop) for tokens in samples])
    finally:
        model.train(was_training)
    return results


def _decode(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: list[int],
    generator: torch.Generator,
) -> list[list[int]]:
    """Up to `max_new_tokens` tokens per left-padded row, with a KV cache. Rows that stopped leave the batch
    (with their cache) once they are an eighth of it, so a long straggler does not carry finished rows along:
    on small models most of a step's cost is proportional to its rows."""
    import torch
    from transformers import DynamicCache

    rows = ids.shape[0]
    out = torch.full((rows, max_new_tokens), stop[0], dtype=torch.long, device=ids.device)
    alive = torch.arange(rows, device=ids.device)  # the original row of each batch row
    stopped = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    stop_ids = torch.tensor(stop, device=ids.device)
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1
    ).logits[:, -1]
    position = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        token = _pick(logits, temperature, top_p, generator)
        out[alive, step] = torch.where(stopped, stop_ids[0], token)
        stopped |= torch.isin(token, stop_ids)
        if step == max_new_tokens - 1 or bool(stopped.all()):
            break
        if int(stopped.sum()) * 8 >= len(alive):
            keep = (~stopped).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, token, mask, position, stopped = alive[keep], token[keep], mask[keep], position[keep], stopped[keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        logits = model(
            input_ids=token[:, None], attention_mask=mask, position_ids=position, past_key_values=cache
        ).logits[:, -1]
        position = position + 1
    return out.tolist()


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """The next token per row: argmax at temperature 0, else a draw from softmax(logits / temperature),
    restricted to the top-p nucleus when top_p < 1. A draw inverts the cumulative distribution at one uniform
    number per row: exact, and much cheaper on CPU than multinomial or one random number per vocabulary entry."""
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    cumulative = probs.cumsum(dim=-1)
    uniform = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


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
