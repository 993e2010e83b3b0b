"""Simulated traffic: people chat with policies day by day and leave logs and engagement events.

Each day every person may come back (breadth, driven by satisfaction memory); each session goes on turn by
turn while the person keeps continuing (depth). All sessions waiting at one turn are answered in one batched
call per policy. Every random draw comes from a generator keyed by (seed, day, turn, purpose), so the same
world and seed give byte-identical logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel_sim.assignment import Arm, assign
from flywheel_sim.features import ResponseFeatures, response_features
from flywheel_sim.grammar import next_topic, user_message
from flywheel_sim.people import (
    People,
    Source,
    active_probability,
    build_people,
    continue_bias,
    day_value,
    react,
    sigmoid,
    update_memory,
)
from flywheel_sim.policy import policy_name, system_message
from flywheel_sim.world import Character, World

PolicyFn = Callable[..., list[str]]
_SOURCE_CODE = {"user": 0, "internal": 1}
_ARMS: tuple[Arm, ...] = ("control", "treatment")


def _policy_seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


@dataclass
class _Session:
    person: int
    arm: Arm | None
    policy: str
    character: Character
    topic: str
    messages: list[dict[str, Any]]
    turns: int = 0
    continued: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    regenerated: int = 0
    violations: int = 0
    refusals: int = 0
    lasting: list[float] = field(default_factory=list)
    emojis: list[float] = field(default_factory=list)
    alive: bool = True
    pending: str | None = None
    """A response the person asked to regenerate; the next step answers the same chat again."""


@dataclass
class TrafficResult:
    """What a simulation produced."""

    records: list[dict[str, Any]]
    """Conversation logs in the shared contract (also written to `conversations.jsonl` when `out` is set)."""
    events: list[dict[str, Any]]
    """Exposure and engagement events of the experiment's users in the engagement exporter's format
    (docs/metrics.md): POST them to `flywheel exporter`'s /events. Empty without a treatment arm."""
    sessions: list[dict[str, Any]]
    """One summary per session of everybody (day, arm, turns, continued, thumbs, regenerations, guardrail
    counts), for reports and tests."""
    log_path: Path | None = None
    events_path: Path | None = None

    @property
    def responses(self) -> int:
        """Responses served, regenerations included."""
        return sum(s["turns"] + s["regenerated"] for s in self.sessions)


@dataclass
class TrafficState:
    """Everything that carries over from one simulated day to the next (plain data: picklable, copyable)."""

    offset: int
    """Days simulated so far (pre-period days included)."""
    memory: np.ndarray
    """Satisfaction memory of each person."""
    pre_turns: np.ndarray
    """Turns of each person in the pre-period (the CUPED covariate)."""
    exposed: np.ndarray
    """Whether each person has been exposed to their arm."""


class TrafficSimulation:
    """Traffic day by day: `next_day()` simulates one day; `simulate_traffic` is this run to the end.

    `policies` maps arms to policies: {"control": p} serves everyone with `p` (no experiment, arm null);
    {"control": p, "treatment": q} assigns users stickily by hash of (`experiment`, `seed`, user id), each
    arm `traffic_percent` % of users, the rest served by `p` outside the experiment. `experiment` (a DNS
    label: the candidate generation's name) labels the events. A user is exposed at their first session of
    the test days (the first response their arm serves); engagement events carry every test-day session's
    turns and its day, so the exporter's breadth (active on at least `engaged_min_days` distinct days) and
    depth (turns per exposed user) follow (docs/simulator.md, 'Events'). The first `pre_days` days serve
    everyone the control policy (arm null) and only measure the CUPED covariate. Day indices start at
    `start_day`. `max_people` simulates only the first people of the population (tests, benches). `state`
    resumes from a `TrafficSimulation.state` taken earlier.
    """

    def __init__(
        self,
        world: World,
        policies: Mapping[str, PolicyFn],
        *,
        seed: int | None = None,
        traffic_percent: float = 50.0,
        source: Source = "user",
        pre_days: int = 0,
        start_day: int = 0,
        experiment: str = "sim",
        max_people: int | None = None,
        state: TrafficState | None = None,
    ) -> None:
        unknown = sorted(set(policies) - set(_ARMS))
        if unknown or "control" not in policies:
            raise ValueError(
                f"policies must map 'control' (and optionally 'treatment') to policies; got {sorted(policies)}"
            )
        if pre_days < 0 or start_day < 0:
            raise ValueError(f"need pre_days >= 0 and start_day >= 0; got {pre_days}, {start_day}")
        self.world = world
        self.policies = dict(policies)
        self.seed = world.seed if seed is None else seed
        self.source: Source = source
        self.pre_days = pre_days
        self.start_day = start_day
        self.experiment = experiment
        self.people = build_people(world, source, world.seed)
        n = len(self.people) if max_people is None else min(max_people, len(self.people))
        salt = f"{experiment}/{self.seed}"
        on = "treatment" in policies
        self.arms = [assign(self.people.ids[i], salt, traffic_percent) if on else None for i in range(n)]
        self.names = {arm: policy_name(p) for arm, p in policies.items()}
        self.systems = {c.id: system_message(c) for c in world.characters}
        self.state = state or TrafficState(
            offset=0, memory=np.zeros(n), pre_turns=np.zeros(n, dtype=int), exposed=np.zeros(n, dtype=bool)
        )
        if len(self.state.memory) != n:
            raise ValueError(f"the state holds {len(self.state.memory)} people, this simulation {n}")

    @property
    def day(self) -> int:
        """Day index of the next simulated day."""
        return self.start_day + self.state.offset

    def next_day(self) -> TrafficResult:
        """Simulate one day; returns its logs, events and session summaries."""
        world, people, st = self.world, self.people, self.state
        n = len(st.memory)
        day, pre = self.day, st.offset < self.pre_days
        key = (self.seed, day, _SOURCE_CODE[self.source])
        rng = np.random.default_rng([*key, 1])
        active = rng.random(n) < active_probability(world, self.source, st.memory)
        persons = np.flatnonzero(active)
        sessions = []
        for person, choice, topic_index in zip(persons, *_session_draws(rng, people, world, persons), strict=True):
            arm = None if pre else self.arms[person]
            character = world.characters[int(choice)]
            topic = character.topics[int(topic_index)]
            system = {"role": "system", "content": self.systems[character.id]}
            sessions.append(_Session(int(person), arm, arm or "control", character, topic, [system]))
        _run_sessions(world, people, self.policies, sessions, self.source, key)

        value = np.zeros(n)
        for s in sessions:
            value[s.person] = day_value(world, np.mean(s.lasting), np.mean(s.emojis))
        memory = update_memory(world, st.memory, active, value)
        pre_turns, exposed = st.pre_turns.copy(), st.exposed.copy()

        result = TrafficResult(records=[], events=[], sessions=[])
        for s in sessions:
            user_id = people.ids[s.person]
            generation = self.names[s.policy]
            if pre:
                pre_turns[s.person] += s.turns
            if s.arm is not None:
                if not exposed[s.person]:
                    exposed[s.person] = True
                    result.events.append(
                        {
                            "type": "exposure",
                            "generation": self.experiment,
                            "user": user_id,
                            "arm": s.arm,
                            "pre_depth": float(pre_turns[s.person]),
                        }
                    )
                result.events.append(_engagement_event(s, user_id, self.experiment, day))
            result.sessions.append(_session_summary(s, user_id, generation, day, self.source, pre))
            result.records.append(
                {
                    "conversation_id": f"{self.source}-s{self.seed}-d{day}-{user_id}",
                    "character": s.character.to_log(),
                    "user_id": user_id,
                    "source": self.source,
                    "arm": s.arm,
                    "generation": generation,
                    "day": day,
                    "session": 0,  # one session per person and day (the contract counts sessions per day)
                    "messages": s.messages,
                }
            )
        self.state = TrafficState(offset=st.offset + 1, memory=memory, pre_turns=pre_turns, exposed=exposed)
        return result


def _session_draws(
    rng: np.random.Generator, people: People, world: World, persons: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each active person's character (one of their favourites) and opening topic (one of its topics).

    The draws alternate per person — favourite, then topic — as one loop over the persons draws them. When every
    character has as many topics, the bounds are known beforehand and one vectorised call draws them all: numpy
    draws an array of bounded integers one element after the other, exactly as the scalar calls do (the same
    values, and the generator left in the same state; tests/sim/test_vectorised.py)."""
    k = people.favourites.shape[1]
    topic_counts = {len(c.topics) for c in world.characters}
    if len(topic_counts) == 1:
        draws = rng.integers(0, np.tile([k, topic_counts.pop()], len(persons))).reshape(len(persons), 2)
        return people.favourites[persons, draws[:, 0]], draws[:, 1]
    choices, topics = np.zeros(len(persons), dtype=int), np.zeros(len(persons), dtype=int)
    for i, person in enumerate(persons):
        choices[i] = people.favourites[person][int(rng.integers(k))]
        topics[i] = int(rng.integers(len(world.characters[choices[i]].topics)))
    return choices, topics


def simulate_traffic(
    world: World,
    policies: Mapping[str, PolicyFn],
    *,
    days: int,
    seed: int | None = None,
    traffic_percent: float = 50.0,
    source: Source = "user",
    out: str | Path | None = None,
    pre_days: int = 0,
    start_day: int = 0,
    experiment: str = "sim",
    max_people: int | None = None,
) -> TrafficResult:
    """`pre_days` + `days` days of traffic in one go (TrafficSimulation describes every argument); with `out`,
    writes conversations.jsonl, events.jsonl and sessions.jsonl into that directory."""
    if days < 1:
        raise ValueError(f"days must be at least 1; got {days}")
    simulation = TrafficSimulation(
        world,
        policies,
        seed=seed,
        traffic_percent=traffic_percent,
        source=source,
        pre_days=pre_days,
        start_day=start_day,
        experiment=experiment,
        max_people=max_people,
    )
    total = TrafficResult(records=[], events=[], sessions=[])
    for _ in range(pre_days + days):
        day = simulation.next_day()
        total.records += day.records
        total.events += day.events
        total.sessions += day.sessions
    return write_traffic(total, out) if out is not None else total


def _engagement_event(s: _Session, user_id: str, experiment: str, day: int) -> dict[str, Any]:
    """One session of an exposed user in the exporter's event format (docs/metrics.md)."""
    return {
        "type": "engagement",
        "generation": experiment,
        "user": user_id,
        "arm": s.arm,
        "day": day,
        "turns": s.turns,
        "responses": s.turns + s.regenerated,
        "guardrails": {"instruction-violations": s.violations, "false-refusals": s.refusals, "errors": 0},
    }


def _session_summary(s: _Session, user_id: str, generation: str, day: int, source: str, pre: bool) -> dict:
    return {
        "user_id": user_id,
        "arm": s.arm,
        "generation": generation,
        "day": day,
        "source": source,
        "period": "pre" if pre else "test",
        "turns": s.turns,
        "continued": s.continued,
        "thumbs_up": s.thumbs_up,
        "thumbs_down": s.thumbs_down,
        "regenerated": s.regenerated,
        "instruction_violations": s.violations,
        "false_refusals": s.refusals,
    }


def _answer(
    policies: Mapping[str, PolicyFn],
    sessions: list[_Session],
    chats: list[list[dict]],
    seed_key: tuple[int, ...],
) -> list[str]:
    """One batched call per policy; responses come back in `sessions` order. A policy with `submit(chats, *,
    seed)` and `result()` (flywheel_local's PolicyWorker: a policy in a process of its own) is handed its batch
    before any other policy answers, so the arms answer side by side; the answers are those of one call."""
    batches = []
    for arm_index, arm in enumerate(_ARMS):
        indices = [i for i, s in enumerate(sessions) if s.policy == arm]
        if indices:
            batches.append((arm, indices, policies[arm], _policy_seed(*seed_key, arm_index)))
    answers: dict[str, list[str]] = {}
    for _, indices, policy, seed in batches:
        if _asynchronous(policy):
            policy.submit([chats[i] for i in indices], seed=seed)  # type: ignore[attr-defined]
    for arm, indices, policy, seed in batches:
        if not _asynchronous(policy):
            answers[arm] = policy([chats[i] for i in indices], seed=seed)
    for arm, _, policy, _ in batches:
        if _asynchronous(policy):
            answers[arm] = policy.result()  # type: ignore[attr-defined]
    responses: list[str] = [""] * len(sessions)
    for arm, indices, _, _ in batches:
        if len(answers[arm]) != len(indices):
            raise RuntimeError(f"policy {arm!r} returned {len(answers[arm])} responses for {len(indices)} chats")
        for i, text in zip(indices, answers[arm], strict=True):
            responses[i] = str(text)
    return responses


def _asynchronous(policy: PolicyFn) -> bool:
    return callable(getattr(policy, "submit", None)) and callable(getattr(policy, "result", None))


def _ask(s: _Session, rng: np.random.Generator, probe_share: float) -> None:
    """The person writes their next message (a new topic now and then; testers sometimes probe the rules)."""
    first = s.turns == 0
    if not first:
        s.topic = next_topic(rng, s.character, s.topic)
    probe = bool(rng.random() < probe_share)
    s.messages.append({"role": "user", "content": user_message(rng, s.topic, first=first, probe=probe)})


def _run_sessions(
    world: World,
    people: People,
    policies: Mapping[str, PolicyFn],
    sessions: list[_Session],
    source: Source,
    key: tuple[int, ...],
) -> None:
    """Run a day's sessions to their end. Each step answers, in one call per arm, every session waiting for
    a response — a new turn's or a regeneration of the previous step's — so regenerations ride along with
    the next turns instead of costing a generation pass of their own."""
    probe_share = world.internal.probe_share if source == "internal" else 0.0
    bias = continue_bias(world, source)
    rng = np.random.default_rng([*key, 2])
    for s in sessions:
        _ask(s, rng, probe_share)
    step = 0
    while waiting := [s for s in sessions if s.alive]:
        rng = np.random.default_rng([*key, 3, step])
        # Policies see what a chat app sends a model: roles and contents, never the users' signals.
        chats = [[{"role": m["role"], "content": m["content"]} for m in s.messages] for s in waiting]
        responses = _answer(policies, waiting, chats, (*key, step))
        features = [response_features(r, s.character, s.topic) for r, s in zip(responses, waiting, strict=True)]
        reaction = react(world, people, np.array([s.person for s in waiting]), features)
        regenerate = rng.random(len(waiting)) < sigmoid(world.session.regenerate_bias - reaction.appeal)
        thumbed = rng.random(len(waiting)) < world.session.thumb_probability
        up = rng.random(len(waiting)) < sigmoid(world.session.thumb_bias + reaction.appeal)
        proceed = rng.random(len(waiting)) < sigmoid(bias + reaction.appeal)
        for i, s in enumerate(waiting):
            if s.pending is None and regenerate[i]:  # at most one regeneration a turn, answered next step
                s.pending = responses[i]
                continue
            rejected, s.pending = s.pending, None
            goes_on = bool(proceed[i]) and s.turns + 1 < world.session.max_turns
            _record_turn(
                s,
                responses[i],
                features[i],
                rejected,
                bool(thumbed[i]),
                bool(up[i]),
                goes_on,
                float(reaction.lasting[i]),
                float(reaction.emojis[i]),
            )
            if goes_on:
                _ask(s, rng, probe_share)
        step += 1


def _record_turn(
    s: _Session,
    response: str,
    f: ResponseFeatures,
    rejected: str | None,
    thumbed: bool,
    up: bool,
    goes_on: bool,
    lasting: float,
    emojis: float,
) -> None:
    thumb = ("up" if up else "down") if thumbed else None
    message: dict[str, Any] = {
        "role": "assistant",
        "content": response,
        "signals": {"continued": goes_on, "thumb": thumb, "regenerated": rejected is not None},
    }
    if rejected is not None:
        message["rejected"] = [rejected]
        s.regenerated += 1
    s.messages.append(message)
    s.turns += 1
    s.continued += goes_on
    s.thumbs_up += thumb == "up"
    s.thumbs_down += thumb == "down"
    s.violations += not f.compliant
    s.refusals += f.refusal
    s.lasting.append(lasting)
    s.emojis.append(emojis)
    s.alive = goes_on


def write_traffic(result: TrafficResult, out: str | Path) -> TrafficResult:
    """Write a result into directory `out`, each file atomically: conversations.jsonl (validated against the
    log contract by flywheel_trainer.conversation.write_conversations), events.jsonl and sessions.jsonl."""
    from flywheel_trainer.conversation import write_conversations

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    result.log_path = directory / "conversations.jsonl"
    result.events_path = directory / "events.jsonl"
    tmp = directory / ".conversations.tmp.jsonl"
    write_conversations(result.records, tmp)
    tmp.replace(result.log_path)
    for path, rows in ((result.events_path, result.events), (directory / "sessions.jsonl", result.sessions)):
        tmp = directory / f".{path.stem}.tmp.jsonl"
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        tmp.replace(path)
    return result
