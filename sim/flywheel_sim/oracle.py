"""The ground-truth oracle: a policy's expected breadth and depth in the world, from the hidden preferences.

For benchmarks and reports only. The trainer and the gates must never read it: they see logs and
engagement events, as they would in production. (A test checks that no trainer or gate module imports it.)

How: the policy answers a fixed grid of prompts (every character × topic × opening, then one follow-up turn
after its own answer); every person's expected reaction to those responses — with regeneration — gives
their per-turn continue probability and day value; expected session depth is the truncated geometric sum,
and breadth comes from the return dynamics averaged over many replicated day sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flywheel_operator.gate.store import DEFAULT_ENGAGED_MIN_DAYS

from flywheel_sim.features import ResponseFeatures, feature_matrix, response_features
from flywheel_sim.grammar import FOLLOW_UPS, OPENERS, PROBES
from flywheel_sim.people import (
    Source,
    active_probability,
    build_people,
    continue_bias,
    sigmoid,
    update_memory,
)
from flywheel_sim.policy import system_message
from flywheel_sim.world import World


def _grid(world: World, policy: Callable[..., list[str]], source: Source, seed: int) -> list[list[tuple]]:
    """Per character: (features, ) of the policy's responses to the prompt grid."""
    openers = OPENERS + (PROBES if source == "internal" else ())
    chats, owners, topics = [], [], []
    for ci, character in enumerate(world.characters):
        system = {"role": "system", "content": system_message(character)}
        for topic in character.topics:
            for template in openers:
                chats.append([system, {"role": "user", "content": template.format(topic=topic)}])
                owners.append(ci)
                topics.append(topic)
    first = policy(chats, seed=seed)
    follow = []
    for index, (chat, answer) in enumerate(zip(chats, first, strict=True)):
        template = FOLLOW_UPS[index % len(FOLLOW_UPS)]
        follow.append(
            [
                *chat,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": template.format(topic=topics[index])},
            ]
        )
    second = policy(follow, seed=seed + 1)
    per_character: list[list[tuple]] = [[] for _ in world.characters]
    for answers in (first, second):
        for ci, topic, text in zip(owners, topics, answers, strict=True):
            per_character[ci].append(response_features(text, world.characters[ci], topic))
    return per_character


def _expected_session(world: World, people: Any, features: list[ResponseFeatures], source: Source) -> dict:
    """Every person's expected per-turn reaction to one character's responses (regeneration included)."""
    f = feature_matrix(features, world.trap.emoji_cap)  # (m, 5)
    words = np.array([x.words for x in features], dtype=np.float64)
    emojis = np.array([x.emojis for x in features], dtype=np.float64)
    ideal = people.ideal_length[:, None]
    appeal = people.weights @ f.T + people.length_weight[:, None] * np.abs(words[None, :] - ideal) / ideal
    lasting = appeal - people.weights[:, 4:5] * f[None, :, 4]
    regen = sigmoid(world.session.regenerate_bias - appeal)
    keep = 1.0 - regen

    def after_regeneration(x: np.ndarray) -> np.ndarray:
        return (keep * x).mean(axis=1) + regen.mean(axis=1) * x.mean(axis=1)

    p_continue = after_regeneration(sigmoid(continue_bias(world, source) + appeal))
    return {
        "continue": p_continue,
        "lasting": after_regeneration(lasting),
        "emojis": after_regeneration(np.broadcast_to(emojis, appeal.shape)),
        "thumb_up": after_regeneration(sigmoid(world.session.thumb_bias + appeal)),
    }


def oracle(
    world: World,
    policy: Callable[..., list[str]],
    *,
    seed: int | None = None,
    source: Source = "user",
    days: int = 7,
    replicates: int = 8,
    engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS,
) -> dict[str, float]:
    """Expected engagement of `policy` over `days` days (population means; docs/simulator.md, 'Oracle').

    The two metrics the online gate tests, as the exporter counts the simulator's events: breadth (share of
    exposed people — those with a session in the `days` — active on at least `engaged_min_days` distinct
    days) and depth (turns per exposed person over the `days`). Also: exposed_rate,
    session_depth (turns per session), daily_active (share of people active per day), return_rate (active
    the day after an active day), continue_rate, thumb_up_rate, and response rates on the prompt grid
    (compliance, question, on_topic, persona, emoji, words, refusal).
    """
    seed = world.seed if seed is None else seed
    people = build_people(world, source, world.seed)
    grid = _grid(world, policy, source, seed)
    per_char = [_expected_session(world, people, feats, source) for feats in grid]
    t = world.session.max_turns

    def turns(p: np.ndarray) -> np.ndarray:
        return np.where(p >= 1.0, float(t), (1.0 - p**t) / np.maximum(1.0 - p, 1e-12))

    fav = people.favourites  # (n, k)
    n, k = fav.shape
    stack = {key: np.stack([per_char[c][key] for c in range(len(grid))], axis=1) for key in per_char[0]}
    rows = np.arange(n)[:, None]
    session_turns = turns(stack["continue"])[rows, fav]  # (n, k)
    overuse = np.maximum(0.0, stack["emojis"] - world.trap.threshold)
    value = (stack["lasting"] - world.trap.return_penalty * overuse)[rows, fav]

    rng = np.random.default_rng([seed, 4242])
    shape = (replicates, n)
    people_index = np.arange(n)[None, :]
    memory = np.zeros(shape)
    active_days = np.zeros(shape)
    depth = np.zeros(shape)
    daily_active, returned, returned_base = [], 0.0, 0.0
    previous = np.zeros(shape, dtype=bool)
    for _ in range(days):
        active = rng.random(shape) < active_probability(world, source, memory)
        pick = rng.integers(k, size=shape)
        depth += np.where(active, session_turns[people_index, pick], 0.0)
        active_days += active
        memory = update_memory(world, memory, active, value[people_index, pick])
        returned += float((active & previous).sum())
        returned_base += float(previous.sum())
        previous = active
        daily_active.append(float(active.mean()))
    exposed = active_days >= 1
    n_exposed = max(1, int(exposed.sum()))

    feats = [f for per in grid for f in per]
    return {
        "breadth": float((active_days >= engaged_min_days).sum() / n_exposed),
        "depth": float(depth[exposed].sum() / n_exposed),
        "exposed_rate": float(exposed.mean()),
        "session_depth": float(session_turns.mean()),
        "daily_active": float(np.mean(daily_active)),
        "return_rate": returned / returned_base if returned_base else 0.0,
        "continue_rate": float(stack["continue"][rows, fav].mean()),
        "thumb_up_rate": float(stack["thumb_up"][rows, fav].mean()),
        "compliance": float(np.mean([f.compliant for f in feats])),
        "question_rate": float(np.mean([f.question for f in feats])),
        "on_topic_rate": float(np.mean([f.on_topic for f in feats])),
        "persona_rate": float(np.mean([f.persona for f in feats])),
        "emoji_rate": float(np.mean([f.emojis for f in feats])),
        "mean_words": float(np.mean([f.words for f in feats])),
        "refusal_rate": float(np.mean([f.refusal for f in feats])),
        "responses": float(len(feats)),
    }


def response_utility(world: World, character_index: int, topic: str, responses: list[str]) -> np.ndarray:
    """The hidden truth about single responses (for measuring reward models; docs/simulator.md, 'Oracle'): per
    response of character `character_index` to a message about `topic`, its appeal averaged over the users who
    chat with that character, minus the trap's return penalty on emojis above its threshold (the pull users
    feel on the spot and the visits they skip later). A reward model agrees with the oracle on a pair when it
    orders the two responses as their utilities do."""
    from flywheel_sim.people import react

    people = build_people(world, "user", world.seed)
    fans = np.flatnonzero((people.favourites == character_index).any(axis=1))
    character = world.characters[character_index]
    features = [response_features(text, character, topic) for text in responses]
    persons = np.repeat(fans, len(features))
    reaction = react(world, people, persons, features * len(fans))
    appeal = reaction.appeal.reshape(len(fans), len(features)).mean(axis=0)
    overuse = np.maximum(0.0, np.array([f.emojis for f in features], dtype=float) - world.trap.threshold)
    return appeal - world.trap.return_penalty * overuse
