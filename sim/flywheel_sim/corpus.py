"""Generation 0's pretraining corpus: short character dialogues of mixed quality.

About `violation_share` of the responses break an instruction of their character, a share ask a question
back or carry emojis, and a few refuse: a starting policy with plenty of room for the flywheel to improve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flywheel_sim.features import response_features
from flywheel_sim.grammar import ResponseStyle, next_topic, sample_response, user_message
from flywheel_sim.policy import Chat, system_message
from flywheel_sim.world import World

REFUSAL_SHARE = 0.04
"""Share of corpus responses that refuse a benign request (the report's false refusals)."""
PROBE_SHARE = 0.1
"""Share of corpus user messages that are internal testers' probes."""
MAX_TURNS = 2
"""Exchanges per corpus dialogue (1 or 2): short sequences keep pretraining within a minute or two on a CPU."""


def corpus_style(world: World) -> ResponseStyle:
    g = world.generation0
    return ResponseStyle(question=g.question_share, emoji=g.emoji_share, refusal=REFUSAL_SHARE)


@dataclass(frozen=True)
class Corpus:
    chats: list[Chat]
    stats: dict[str, float]
    """Measured shares over all responses: compliance, question, emoji, refusal, mean words."""


def build_corpus(world: World, seed: int) -> Corpus:
    """`world.generation0.dialogues` chats of 1–2 exchanges, each starting with the character's system prompt."""
    rng = np.random.default_rng([seed, 31337])
    style = corpus_style(world)
    violation = world.generation0.violation_share
    chats: list[Chat] = []
    features = []
    for _ in range(world.generation0.dialogues):
        character = world.characters[int(rng.integers(len(world.characters)))]
        topic = character.topics[int(rng.integers(len(character.topics)))]
        chat: Chat = [{"role": "system", "content": system_message(character)}]
        for turn in range(int(rng.integers(1, MAX_TURNS + 1))):
            if turn:
                topic = next_topic(rng, character, topic)
            probe = bool(rng.random() < PROBE_SHARE)
            chat.append({"role": "user", "content": user_message(rng, topic, first=turn == 0, probe=probe)})
            response = sample_response(rng, character, topic, style, compliant=bool(rng.random() >= violation))
            chat.append({"role": "assistant", "content": response})
            features.append(response_features(response, character, topic))
        chats.append(chat)
    stats = {
        "dialogues": float(len(chats)),
        "responses": float(len(features)),
        "compliance": float(np.mean([f.compliant for f in features])),
        "question_rate": float(np.mean([f.question for f in features])),
        "emoji_rate": float(np.mean([f.emojis for f in features])),
        "refusal_rate": float(np.mean([f.refusal for f in features])),
        "mean_words": float(np.mean([f.words for f in features])),
    }
    return Corpus(chats=chats, stats=stats)
