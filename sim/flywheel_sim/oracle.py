"""The ground-truth oracle: a policy's expected breadth and depth in the world, from the hidden preferences.

For benchmarks and reports only. The trainer and the gates must never read it: they see logs and
engagement events, as they would in production. (A test checks that no trainer or gate module imports it.)

How: the policy answers a fixed grid of prompts (every character × topic × opening, then one follow-up turn
after its own answer); every person's expected reaction to those responses — with regeneration — gives
their per-turn continue probability and day value; expected session depth is the truncated geometric sum,
and breadth comes from the return dynamics averaged over many replicated day sequences.

Error bars (issue 26): one pass over the grid is one *draw* of the policy's sampled responses, and a verdict on
one draw is a coin flip for lifts under about 5 %. `oracle_draws` repeats the grid `draws` times (one batched
call per turn) with the day dynamics of draw d seeded alike for every policy, so a parent and its candidate are
compared draw by draw (`paired_lift`: the same prompts, people and day draws; only the responses differ).
`verdict` says "truly better" or "truly worse" only when a lift's 95 % interval excludes 0, otherwise "tie".

The A/B's window (issue 26, problem 7): the canary measures breadth and depth over the days it ran (often 2),
after a pre-period served by the parent, where 2-day breadth (active on 2 of 2 days) is a far smaller share than
7-day breadth, so the same change in coming back reads as a several times larger relative lift. `ab_window`
computes the oracle's figures for exactly that design, the number a measured lift estimates
(bench/breadth.py shows both sides agree on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from flywheel_operator.gate.store import DEFAULT_ENGAGED_MIN_DAYS

from flywheel_sim.features import ResponseFeatures, feature_matrix, response_features
from flywheel_sim.grammar import FOLLOW_UPS, OPENERS, PROBES
from flywheel_sim.people import (
    People,
    Source,
    active_probability,
    appeal_of,
    build_people,
    continue_bias,
    sigmoid,
    update_memory,
    word_counts,
)
from flywheel_sim.policy import system_message
from flywheel_sim.world import World

DEFAULT_DRAWS = 16
"""Draws of the policy's responses per oracle evaluation. bench/oracle.py (bench/results/oracle.json): the 95 %
half-width of a depth lift is 3.5–5.1 % at 8 draws and 1.9–2.5 % at 16; a draw cost ~9.5 s per model on a loaded
2-core machine (one draw's lift ranged over 12–17 points)."""
CONFIDENCE = 0.95
Verdict = Literal["truly better", "truly worse", "tie"]
ENGAGEMENT_KEYS = ("breadth", "depth", "exposed_rate", "daily_active", "return_rate")
"""What the day dynamics give (the rest of an oracle's figures come from the responses alone)."""

def _grid(
    world: World, policy: Callable[..., list[str]], source: Source, seed: int, draws: int = 1
) -> list[list[list[ResponseFeatures]]]:
    """Per draw, per character: the features of the policy's responses to the prompt grid. All draws are
    answered in one call per turn (draw d's chats are the d-th copy of the grid), so a model samples them in
    full batches; one draw is exactly the grid of earlier versions."""
    openers = OPENERS + (PROBES if source == "internal" else ())
    chats, owners, topics = [], [], []
    for ci, character in enumerate(world.characters):
        system = {"role": "system", "content": system_message(character)}
        for topic in character.topics:
            for template in openers:
                chats.append([system, {"role": "user", "content": template.format(topic=topic)}])
                owners.append(ci)
                topics.append(topic)
    m = len(chats)
    first = policy(chats * draws, seed=seed)
    follow = []
    for index, (chat, answer) in enumerate(zip(chats * draws, first, strict=True)):
        template = FOLLOW_UPS[index % m % len(FOLLOW_UPS)]
        follow.append(
            [
                *chat,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": template.format(topic=topics[index % m])},
            ]
        )
    second = policy(follow, seed=seed + 1)
    out = []
    for d in range(draws):
        per_character: list[list[ResponseFeatures]] = [[] for _ in world.characters]
        for answers in (first[d * m : (d + 1) * m], second[d * m : (d + 1) * m]):
            for ci, topic, text in zip(owners, topics, answers, strict=True):
                per_character[ci].append(response_features(text, world.characters[ci], topic))
        out.append(per_character)
    return out


_ONE_THREAD_MULTIPLY_ADDS = 200_000
"""OpenBLAS splits a matrix product over its threads from about 262k multiply-adds; on busy cores the hand-off
costs ~8 ms of CPU per product, 15 times the whole (10k users × 60 responses) product on one thread."""


def _one_thread_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in row blocks each small enough for one thread: every element is still one BLAS kernel's sum of the
    same terms, the same bits as `a @ b` (tests/sim/test_oracle_fast.py)."""
    out = np.empty((a.shape[0], b.shape[1]))
    rows = max(1, _ONE_THREAD_MULTIPLY_ADDS // max(1, b.size))
    for start in range(0, a.shape[0], rows):
        np.matmul(a[start : start + rows], b, out=out[start : start + rows])
    return out


def _expected_session(world: World, people: Any, features: list[ResponseFeatures], source: Source) -> dict:
    """Every person's expected per-turn reaction to one character's responses (regeneration included).

    The (people × responses) matrices are computed in place, in three buffers: the same ufuncs in the same order
    as the plain expressions (tests/sim/test_oracle_fast.py keeps them), without the fresh 5 MB temporaries that
    cost more than their arithmetic (issue 29)."""
    f, words = feature_matrix(features, world.trap.emoji_cap), word_counts(features)  # (m, 5), (m,)
    emojis = np.array([x.emojis for x in features], dtype=np.float64)
    ideal = people.ideal_length[:, None]
    appeal = _one_thread_product(people.weights, f.T)
    lasting = np.subtract(words[None, :], ideal)  # the length term first, then the lasting appeal
    np.abs(lasting, out=lasting)
    np.multiply(people.length_weight[:, None], lasting, out=lasting)
    np.divide(lasting, ideal, out=lasting)
    np.add(appeal, lasting, out=appeal)
    np.multiply(people.weights[:, 4:5], f[None, :, 4], out=lasting)
    np.subtract(appeal, lasting, out=lasting)
    regen = sigmoid(world.session.regenerate_bias - appeal, overwrite=True)
    regen_share = regen.mean(axis=1)
    keep = np.subtract(1.0, regen, out=regen)

    def after_regeneration(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """x as the person meets it: kept, or regenerated once (its average); `out` (x itself allowed) is spent."""
        average = x.mean(axis=1)
        return np.multiply(keep, x, out=out).mean(axis=1) + regen_share * average

    per_turn = sigmoid(continue_bias(world, source) + appeal, overwrite=True)
    p_continue = after_regeneration(per_turn, per_turn)
    expected_lasting = after_regeneration(lasting, lasting)
    expected_emojis = after_regeneration(np.broadcast_to(emojis, appeal.shape), per_turn)
    thumb = sigmoid(world.session.thumb_bias + appeal, overwrite=True)
    return {
        "continue": p_continue,
        "lasting": expected_lasting,
        "emojis": expected_emojis,
        "thumb_up": after_regeneration(thumb, thumb),
    }


@dataclass(frozen=True)
class Expected:
    """One draw of a policy's responses as every person's expected reaction to each of their favourites."""

    people: People
    session_turns: np.ndarray
    """(n, k) expected turns of a session with each favourite character."""
    value: np.ndarray
    """(n, k) what a day with that character leaves in satisfaction memory."""
    rates: dict[str, float]
    """Per-session and response figures: session_depth, continue_rate, thumb_up_rate, compliance, …"""


def expected_engagement(
    world: World,
    policy: Callable[..., list[str]],
    *,
    seed: int | None = None,
    source: Source = "user",
    draws: int = 1,
) -> list[Expected]:
    """`draws` independent draws of the policy's responses on the prompt grid, each as every person's expected
    reaction (the part of the oracle that calls the policy; the day dynamics come after)."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1; got {draws}")
    seed = world.seed if seed is None else seed
    people = build_people(world, source, world.seed)
    t = world.session.max_turns

    def turns(p: np.ndarray) -> np.ndarray:
        return np.where(p >= 1.0, float(t), (1.0 - p**t) / np.maximum(1.0 - p, 1e-12))

    fav = people.favourites  # (n, k)
    rows = np.arange(len(people))[:, None]
    out = []
    for grid in _grid(world, policy, source, seed, draws):
        per_char = [_expected_session(world, people, feats, source) for feats in grid]
        stack = {key: np.stack([per_char[c][key] for c in range(len(grid))], axis=1) for key in per_char[0]}
        session_turns = turns(stack["continue"])[rows, fav]  # (n, k)
        overuse = np.maximum(0.0, stack["emojis"] - world.trap.threshold)
        value = (stack["lasting"] - world.trap.return_penalty * overuse)[rows, fav]
        feats = [f for per in grid for f in per]
        rates = {
            "session_depth": float(session_turns.mean()),
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
        out.append(Expected(people=people, session_turns=session_turns, value=value, rates=rates))
    return out


def _day_rng(seed: int, draw: int) -> np.random.Generator:
    """The day dynamics' generator of draw `draw`: the same for every policy, so lifts are paired."""
    return np.random.default_rng([seed, 4242] if draw == 0 else [seed, 4242, draw])


def _dynamics(
    world: World,
    source: Source,
    arms: Sequence[Expected],
    rng: np.random.Generator,
    *,
    days: int,
    replicates: int,
    engaged_min_days: int,
    pre: Expected | None = None,
    pre_days: int = 0,
    max_people: int | None = None,
) -> list[dict[str, float]]:
    """Breadth and depth of each arm over `days` days, all arms seeing the same random draws (people's activity
    and favourite of the day), after `pre_days` days served by `pre` to everyone (not counted: the A/B's
    pre-period). Exposed: active on at least one counted day, as the exporter counts."""
    n = len(arms[0].people) if max_people is None else min(max_people, len(arms[0].people))
    k = arms[0].session_turns.shape[1]
    shape = (replicates, n)
    people_index = np.arange(n)[None, :]
    warm = np.zeros(shape)
    for _ in range(pre_days if pre is not None else 0):
        active = rng.random(shape) < active_probability(world, source, warm)
        pick = rng.integers(k, size=shape)
        warm = update_memory(world, warm, active, pre.value[:n][people_index, pick])  # type: ignore[union-attr]
    memory = [warm.copy() for _ in arms]
    active_days = [np.zeros(shape) for _ in arms]
    depth = [np.zeros(shape) for _ in arms]
    previous = [np.zeros(shape, dtype=bool) for _ in arms]
    daily_active: list[list[float]] = [[] for _ in arms]
    returned, returned_base = [0.0] * len(arms), [0.0] * len(arms)
    for _ in range(days):
        draw = rng.random(shape)
        pick = rng.integers(k, size=shape)
        for a, arm in enumerate(arms):
            active = draw < active_probability(world, source, memory[a])
            depth[a] += np.where(active, arm.session_turns[:n][people_index, pick], 0.0)
            active_days[a] += active
            memory[a] = update_memory(world, memory[a], active, arm.value[:n][people_index, pick])
            returned[a] += float((active & previous[a]).sum())
            returned_base[a] += float(previous[a].sum())
            previous[a] = active
            daily_active[a].append(float(active.mean()))
    out = []
    for a in range(len(arms)):
        exposed = active_days[a] >= 1
        n_exposed = max(1, int(exposed.sum()))
        out.append({
            "breadth": float((active_days[a] >= engaged_min_days).sum() / n_exposed),
            "depth": float(depth[a][exposed].sum() / n_exposed),
            "exposed_rate": float(exposed.mean()),
            "daily_active": float(np.mean(daily_active[a])),
            "return_rate": returned[a] / returned_base[a] if returned_base[a] else 0.0,
        })
    return out


def oracle_draws(
    world: World,
    policy: Callable[..., list[str]],
    *,
    draws: int = DEFAULT_DRAWS,
    seed: int | None = None,
    source: Source = "user",
    days: int = 7,
    replicates: int = 8,
    engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS,
) -> list[dict[str, float]]:
    """`oracle` for `draws` independent draws of the policy's responses (draw 0 is `oracle` itself). Draw d's day
    dynamics are seeded by (seed, d) whatever the policy: evaluate a parent and its candidate with the same
    `seed` and `draws`, then `paired_lift` their figures draw by draw."""
    seed = world.seed if seed is None else seed
    expected = expected_engagement(world, policy, seed=seed, source=source, draws=draws)
    return [
        summarise(world, e, seed=seed, draw=d, source=source, days=days, replicates=replicates,
                  engaged_min_days=engaged_min_days)
        for d, e in enumerate(expected)
    ]


def summarise(
    world: World,
    expected: Expected,
    *,
    seed: int,
    draw: int = 0,
    source: Source = "user",
    days: int = 7,
    replicates: int = 8,
    engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS,
) -> dict[str, float]:
    """The oracle's figures of one draw: its day dynamics (seeded by `seed` and `draw`) and its response rates."""
    (engagement,) = _dynamics(world, source, [expected], _day_rng(seed, draw), days=days, replicates=replicates,
                              engaged_min_days=engaged_min_days)
    return {**engagement, **expected.rates}


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
    """Expected engagement of `policy` over `days` days (population means; docs/simulator.md, 'Oracle'), from
    one draw of its responses (`oracle_draws` for several, with error bars).

    The two metrics the online gate tests, as the exporter counts the simulator's events: breadth (share of
    exposed people — those with a session in the `days` — active on at least `engaged_min_days` distinct
    days) and depth (turns per exposed person over the `days`). Also: exposed_rate,
    session_depth (turns per session), daily_active (share of people active per day), return_rate (active
    the day after an active day), continue_rate, thumb_up_rate, and response rates on the prompt grid
    (compliance, question, on_topic, persona, emoji, words, refusal).
    """
    return oracle_draws(world, policy, draws=1, seed=seed, source=source, days=days, replicates=replicates,
                        engaged_min_days=engaged_min_days)[0]


def ab_window(
    world: World,
    control: Sequence[Expected],
    treatment: Sequence[Expected],
    *,
    days: int,
    pre_days: int = 1,
    seed: int | None = None,
    replicates: int = 8,
    engaged_min_days: int = DEFAULT_ENGAGED_MIN_DAYS,
    max_people: int | None = None,
) -> list[dict[str, dict[str, float]]]:
    """The oracle of an A/B as the canary runs it, per draw: `pre_days` days with everyone on the control (not
    counted), then `days` days with each arm's people on their arm, counted as the exporter counts (exposed at
    the first counted session; breadth = active on at least `engaged_min_days` of the counted days). Both arms
    see the same random draws; draw d pairs `control[d]` with `treatment[d]`. Returns
    [{"control": {breadth, depth, …}, "treatment": {…}}, …]."""
    if len(control) != len(treatment) or not control:
        raise ValueError(f"need as many control as treatment draws (at least one); got {len(control)} and "
                         f"{len(treatment)}")
    if days < 1 or pre_days < 0:
        raise ValueError(f"need days >= 1 and pre_days >= 0; got {days} and {pre_days}")
    seed = world.seed if seed is None else seed
    out = []
    for d, (c, t) in enumerate(zip(control, treatment, strict=True)):
        rng = np.random.default_rng([seed, 4243, d])
        arm_c, arm_t = _dynamics(world, "user", [c, t], rng, days=days, replicates=replicates,
                                 engaged_min_days=engaged_min_days, pre=c, pre_days=pre_days,
                                 max_people=max_people)
        out.append({"control": arm_c, "treatment": arm_t})
    return out


# ------------------------------------------------------------------------------------------ error bars
@dataclass(frozen=True)
class Lift:
    """A relative lift (candidate over parent, minus 1) with its 95 % interval over `draws` paired draws
    (lower and upper are None with a single draw: no interval can be given)."""

    estimate: float
    lower: float | None
    upper: float | None
    draws: int

    @property
    def interval(self) -> tuple[float, float] | None:
        return None if self.lower is None or self.upper is None else (self.lower, self.upper)

    @property
    def half_width(self) -> float | None:
        return None if self.lower is None or self.upper is None else (self.upper - self.lower) / 2


def _t(n: int, confidence: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, n - 1))


def paired_lift(parent: Sequence[float], candidate: Sequence[float], *, confidence: float = CONFIDENCE) -> Lift:
    """Ratio of means minus 1, with the paired delta-method t interval: draw d of the parent and of the candidate
    share their prompts and day draws, so the residuals c_d − R·p_d carry only what differs between them."""
    p, c = np.asarray(parent, dtype=float), np.asarray(candidate, dtype=float)
    if len(p) != len(c) or not len(p):
        raise ValueError(f"paired draws need the same number on both sides (at least one); got {len(p)} and {len(c)}")
    if p.mean() == 0:
        raise ValueError("the parent's mean is 0: a relative lift is undefined")
    ratio = c.mean() / p.mean()
    if len(p) < 2:
        return Lift(ratio - 1, None, None, len(p))
    se = float(np.std(c - ratio * p, ddof=1)) / math.sqrt(len(p)) / p.mean()
    half = _t(len(p), confidence) * se
    return Lift(ratio - 1, ratio - 1 - half, ratio - 1 + half, len(p))


def unpaired_lift(parent: Sequence[float], candidate: Sequence[float], *, confidence: float = CONFIDENCE) -> Lift:
    """The same lift with the two sides treated as independent samples (what pairing saves: bench/oracle.py)."""
    p, c = np.asarray(parent, dtype=float), np.asarray(candidate, dtype=float)
    ratio = c.mean() / p.mean()
    if min(len(p), len(c)) < 2:
        return Lift(ratio - 1, None, None, min(len(p), len(c)))
    se = math.sqrt(c.var(ddof=1) / len(c) + ratio**2 * p.var(ddof=1) / len(p)) / p.mean()
    half = _t(min(len(p), len(c)), confidence) * se
    return Lift(ratio - 1, ratio - 1 - half, ratio - 1 + half, min(len(p), len(c)))


def verdict(depth: Lift, breadth: Lift) -> Verdict:
    """The oracle's verdict on a candidate: "truly worse" when depth's or breadth's interval lies below 0,
    "truly better" when depth's lies above 0 (and breadth's does not lie below), else "tie". Without intervals
    (one draw) the point rule of earlier versions: more depth and no less breadth is better, anything else worse."""
    if depth.interval is None or breadth.interval is None:
        return "truly better" if depth.estimate > 0 and breadth.estimate >= 0 else "truly worse"
    if depth.interval[1] < 0 or breadth.interval[1] < 0:
        return "truly worse"
    return "truly better" if depth.interval[0] > 0 else "tie"


def lifts_agree(a: float, a_se: float, b: float, b_se: float, *, confidence: float = CONFIDENCE) -> bool:
    """Whether two independent estimates of one lift agree: their difference's interval contains 0."""
    from scipy import stats

    return abs(a - b) <= float(stats.norm.ppf(0.5 + confidence / 2)) * math.hypot(a_se, b_se)


def response_utility(
    world: World, character_index: int, topic: str, responses: list[str], *, people: People | None = None
) -> np.ndarray:
    """The hidden truth about single responses (for measuring reward models; docs/simulator.md, 'Oracle'): per
    response of character `character_index` to a message about `topic`, its appeal averaged over the users who
    chat with that character, minus the trap's return penalty on emojis above its threshold (the pull users
    feel on the spot and the visits they skip later). A reward model agrees with the oracle on a pair when it
    orders the two responses as their utilities do. `people`: the world's users (build_people(world, "user",
    world.seed)), for callers that ask about many prompts."""
    people = build_people(world, "user", world.seed) if people is None else people
    fans = np.flatnonzero((people.favourites == character_index).any(axis=1))
    character = world.characters[character_index]
    features = [response_features(text, character, topic) for text in responses]
    # every fan weighs every response: person fans[i] against response j is row i * len(features) + j
    f, words = feature_matrix(features, world.trap.emoji_cap), word_counts(features)
    appeal, _ = appeal_of(people, np.repeat(fans, len(features)), np.tile(f, (len(fans), 1)), np.tile(words, len(fans)))
    appeal = appeal.reshape(len(fans), len(features)).mean(axis=0)
    overuse = np.maximum(0.0, np.array([f.emojis for f in features], dtype=float) - world.trap.threshold)
    return appeal - world.trap.return_penalty * overuse
