"""A synthetic conversation log whose good replies are clearly separable from bad ones, and a tiny parent
policy that says both, so tests and benchmarks exercise every stage without the simulator or a download.

Good replies are enthusiastic and end in a question; the user continues them (sometimes with a thumb up) and
regenerates a bad candidate away first in about half of the turns. Bad replies are dismissive; the user leaves.
Lengths and emoji counts match, so the curate pair filters keep the pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHARACTERS = [
    {
        "id": "nova",
        "name": "Nova",
        "persona": "A cheerful starship captain.",
        "instructions": [{"kind": "no_emoji", "value": None}],
    },
    {
        "id": "sage",
        "name": "Sage",
        "persona": "A calm gardener.",
        "instructions": [{"kind": "ends_with_question", "value": None}],
    },
    {"id": "rex", "name": "Rex", "persona": "A loud dinosaur.", "instructions": [{"kind": "max_words", "value": 14}]},
]
TOPICS = [
    "stars",
    "rockets",
    "plants",
    "roses",
    "music",
    "dogs",
    "cats",
    "rain",
    "pizza",
    "books",
    "games",
    "oceans",
    "trains",
    "snow",
    "bread",
    "birds",
    "clouds",
    "tea",
    "maps",
    "boats",
    "kites",
    "bees",
    "shells",
    "moons",
]
OPENERS = ["hey", "hi", "so", "well", "ok", "hello", "yo", "listen"]
ASKS = ["tell me about {t}", "what do you think of {t}", "do you like {t}", "i saw some {t} today"]
CLOSERS = ["please", "now", "friend", "today", "again", "quickly", "honestly", "buddy"]
GOOD = [
    "i love {t} so much ! what is your favourite thing about {t} ?",
    "oh {t} are wonderful and fun ! do you enjoy {t} too ?",
    "wow i adore {t} ! which {t} do you like best ?",
]
BAD = [
    "{t} are boring and i do not care about {t} at all .",
    "no . {t} are dull . go away and stop asking .",
    "whatever . i have nothing to say about {t} .",
]


def _message(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def synthetic_record(rng: random.Random, index: int, *, day: int) -> dict[str, Any]:
    """One conversation: a good served response is continued (sometimes thumbed up) and may have a bad
    candidate the user regenerated away; a bad served response ends the conversation."""
    character = rng.choice(CHARACTERS)
    messages: list[dict[str, Any]] = []
    for turn in range(rng.choice([1, 2, 2, 3])):
        topic = rng.choice(TOPICS)
        ask = rng.choice(ASKS).format(t=topic)
        messages.append(_message("user", f"{rng.choice(OPENERS)} {ask} {rng.choice(CLOSERS)}"))
        good = rng.random() < 0.55
        if good:
            response = rng.choice(GOOD).format(t=topic)
            rejected = [rng.choice(BAD).format(t=topic)] if rng.random() < 0.6 else []
            signals = {"continued": True, "thumb": "up" if rng.random() < 0.3 else None, "regenerated": False}
            messages.append(_message("assistant", response, signals=signals, rejected=rejected))
        else:
            thumb = "down" if rng.random() < 0.3 else None
            messages.append(
                _message(
                    "assistant",
                    rng.choice(BAD).format(t=topic),
                    signals={"continued": False, "thumb": thumb, "regenerated": False},
                )
            )
            break
        if turn == 2:
            messages[-1]["signals"]["continued"] = False
    return {
        "conversation_id": f"conv-{index}",
        "character": character,
        "user_id": f"user-{rng.randrange(60)}",
        "source": "internal" if rng.random() < 0.25 else "user",
        "arm": None,
        "generation": "gen0",
        "day": day,
        "session": rng.randrange(3),
        "messages": messages,
    }


def synthetic_records(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [synthetic_record(rng, i, day=i % 7) for i in range(count)]


def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _pretrain(model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], *, epochs: int, seed: int) -> None:
    """A few epochs of plain causal-LM training so the parent talks like the log (good and bad replies)."""
    import torch

    torch.manual_seed(seed)
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(texts)).tolist()
        for start in range(0, len(order), 32):
            batch = tokenizer(
                [texts[i] for i in order[start : start + 32]],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()


def build_tiny_parent(directory: Path) -> Path:
    """Train a tokenizer on the synthetic log's text and a tiny Llama-config parent on its chats; save both."""
    from flywheel_trainer.conversation import system_prompt
    from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

    records = synthetic_records(360)
    chats = []
    for record in records:
        chat = [{"role": "system", "content": system_prompt(record["character"])}]
        chat += [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        chats.append(chat)
        for message in record["messages"]:
            chats.extend([[chat[0], {"role": "assistant", "content": r}] for r in message.get("rejected", [])])
    texts = [m["content"] for chat in chats for m in chat]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    model = tiny_llama(tokenizer, seed=0)
    _pretrain(model, tokenizer, chats, epochs=3, seed=0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
