"""Simulated traffic: logs in the shared contract, determinism, sticky arms, and events the exporter accepts."""

from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from flywheel_sim import (
    GOOD_STYLE,
    FunctionPolicy,
    ScriptedPolicy,
    TrafficSimulation,
    World,
    arm_stats,
    simulate_traffic,
)
from flywheel_trainer.conversation import load_conversations, validate_record
from flywheel_trainer.style import emoji_count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PEOPLE = 120


@pytest.fixture(scope="module")
def ab_run(world: World, tmp_path_factory: pytest.TempPathFactory):
    control = ScriptedPolicy(world, name="gen0")
    treatment = ScriptedPolicy(world, name="gen1", style=GOOD_STYLE, compliance=1.0)
    out = tmp_path_factory.mktemp("ab")
    result = simulate_traffic(
        world,
        {"control": control, "treatment": treatment},
        days=3,
        pre_days=1,
        seed=3,
        max_people=PEOPLE,
        traffic_percent=40,
        experiment="gen1",
        out=out,
    )
    return result, out


def test_logs_follow_the_conversation_contract(ab_run) -> None:
    result, out = ab_run
    assert result.records
    for record in result.records:
        assert validate_record(record) == []
    dataset = load_conversations(out / "conversations.jsonl")
    assert len(dataset) == len(result.records)
    assert {r["source"] for r in result.records} == {"user"}


def test_signals_are_consistent_with_the_conversation(ab_run) -> None:
    result, _ = ab_run
    regenerated = 0
    for record in result.records:
        assistants = [m for m in record["messages"] if m["role"] == "assistant"]
        users = [m for m in record["messages"] if m["role"] == "user"]
        assert len(users) == len(assistants) >= 1
        assert [m["signals"]["continued"] for m in assistants] == [True] * (len(assistants) - 1) + [False]
        for m in assistants:
            assert m["signals"]["regenerated"] == ("rejected" in m)
            regenerated += m["signals"]["regenerated"]
    assert regenerated > 0  # the generation-0-like control gets regenerated sometimes


def test_arms_are_sticky_and_pre_period_has_none(ab_run) -> None:
    result, _ = ab_run
    arms: dict[str, set] = defaultdict(set)
    for record in result.records:
        if record["day"] == 0:
            assert record["arm"] is None and record["generation"] == "gen0"
        else:
            arms[record["user_id"]].add(record["arm"])
            expected = {"control": "gen0", "treatment": "gen1", None: "gen0"}[record["arm"]]
            assert record["generation"] == expected
    assert all(len(a) == 1 for a in arms.values())
    seen = {next(iter(a)) for a in arms.values()}
    assert seen == {"control", "treatment", None}  # 40 % per arm leaves 20 % outside the experiment


def test_events_are_accepted_by_the_exporter_store(ab_run) -> None:
    result, out = ab_run
    control, treatment = arm_stats(result.events, "gen1")
    assert control is not None and treatment is not None
    exposures = [e for e in result.events if e["type"] == "exposure"]
    assert control.users + treatment.users == len(exposures) == len({e["user"] for e in exposures})
    test_sessions = [s for s in result.sessions if s["period"] == "test" and s["arm"] is not None]
    assert control.depth_sum + treatment.depth_sum == sum(s["turns"] for s in test_sessions)
    days: dict[str, set] = defaultdict(set)
    for s in test_sessions:
        days[s["user_id"]].add(s["day"])
    assert control.engaged_users + treatment.engaged_users == sum(len(d) >= 2 for d in days.values())
    assert [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()] == result.events


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(world: World, tmp_path: Path) -> None:
    def run(seed: int, out: Path) -> bytes:
        policies = {"control": ScriptedPolicy(world), "treatment": ScriptedPolicy(world, style=GOOD_STYLE)}
        simulate_traffic(world, policies, days=2, seed=seed, max_people=60, out=out)
        return b"".join((out / name).read_bytes() for name in ("conversations.jsonl", "events.jsonl"))

    first = run(5, tmp_path / "a")
    assert first == run(5, tmp_path / "b")
    assert first != run(6, tmp_path / "c")


def test_day_by_day_equals_one_run(world: World) -> None:
    policies = {"control": ScriptedPolicy(world), "treatment": ScriptedPolicy(world, style=GOOD_STYLE)}
    whole = simulate_traffic(world, policies, days=3, pre_days=1, seed=2, max_people=50, experiment="x")
    sim = TrafficSimulation(world, policies, pre_days=1, seed=2, max_people=50, experiment="x")
    first = sim.next_day()
    resumed = TrafficSimulation(world, policies, pre_days=1, seed=2, max_people=50, experiment="x", state=sim.state)
    days = [first, resumed.next_day(), resumed.next_day(), resumed.next_day()]
    assert [r for d in days for r in d.records] == whole.records
    assert [e for d in days for e in d.events] == whole.events
    assert resumed.day == 4


def test_internal_testers_are_their_own_population(world: World) -> None:
    result = simulate_traffic(world, {"control": ScriptedPolicy(world)}, days=1, source="internal", seed=0)
    assert result.records and result.events == []
    assert {r["source"] for r in result.records} == {"internal"}
    assert all(r["user_id"].startswith("tester-") for r in result.records)
    # Testers test every day (daily_active = 1) and probe the characters' instructions.
    assert len(result.records) == world.internal.population.size
    texts = [m["content"] for r in result.records for m in r["messages"] if m["role"] == "user"]
    assert any("emojis" in t or "rules" in t or "long answer" in t or "an ai" in t for t in texts)


def test_policy_answers_are_checked_and_errors_name_the_arm(world: World) -> None:
    short = FunctionPolicy("short", lambda chats, seed: ["hi"] * (len(chats) - 1))
    with pytest.raises(RuntimeError, match="policy 'control' returned"):
        simulate_traffic(world, {"control": short}, days=1, max_people=10)
    with pytest.raises(ValueError, match="'control'"):
        simulate_traffic(world, {"treatment": short}, days=1, max_people=10)


def test_policy_sees_the_conversation_so_far(world: World) -> None:
    seen: list[list[dict]] = []

    def echo(chats, seed):
        seen.extend(chats)
        return ["matey 🎉" for _ in chats]

    simulate_traffic(world, {"control": FunctionPolicy("echo", echo)}, days=1, max_people=40)
    assert all(chat[0]["role"] == "system" and chat[-1]["role"] == "user" for chat in seen)
    assert all(set(m) == {"role", "content"} for chat in seen for m in chat)  # no user signals leak
    later = [chat for chat in seen if len(chat) > 2]
    assert later and all(chat[-2]["content"] == "matey 🎉" and emoji_count(chat[-2]["content"]) == 1 for chat in later)


class _Deferred:
    """A policy with submit/result (as a policy in its own process has): answers are computed at `result`."""

    def __init__(self, policy, log: list[str]) -> None:
        self.policy, self.name, self.log = policy, policy.name, log
        self._batch = None

    def submit(self, chats, *, seed: int) -> None:
        assert self._batch is None, "submitted twice without result()"
        self.log.append(f"submit {self.name}")
        self._batch = (list(chats), seed)

    def result(self) -> list[str]:
        chats, seed = self._batch
        self._batch = None
        self.log.append(f"result {self.name}")
        return self.policy(chats, seed=seed)

    def __call__(self, chats, *, seed: int) -> list[str]:
        raise AssertionError("a policy with submit/result is not called")


@pytest.mark.parametrize("deferred", [("treatment",), ("control",), ("control", "treatment")])
def test_arms_handed_over_first_answer_as_called_ones(world: World, deferred: tuple[str, ...]) -> None:
    """Issue 29: the candidate's arm answers in a process of its own while the parent answers here; the logs and
    events are those of calling each arm in turn, and every deferred arm has its batch before any arm answers."""

    def policies(log: list[str] | None = None) -> dict:
        made = {"control": ScriptedPolicy(world, name="gen0"),
                "treatment": ScriptedPolicy(world, name="gen1", style=GOOD_STYLE, compliance=1.0)}
        if log is not None:
            made = {arm: _Deferred(p, log) if arm in deferred else FunctionPolicy(p.name, _logged(p, log))
                    for arm, p in made.items()}
        return made

    plain = simulate_traffic(world, policies(), days=2, pre_days=1, seed=4, max_people=80, experiment="gen1")
    log: list[str] = []
    handed = simulate_traffic(world, policies(log), days=2, pre_days=1, seed=4, max_people=80, experiment="gen1")
    assert handed.records == plain.records and handed.events == plain.events and handed.sessions == plain.sessions
    # per step: every deferred arm is handed its batch before any arm answers
    for step in _steps(log):
        answers = [i for i, entry in enumerate(step) if not entry.startswith("submit")]
        submits = [i for i, entry in enumerate(step) if entry.startswith("submit")]
        assert not submits or not answers or max(submits) < min(answers), step


def _logged(policy, log: list[str]):
    def respond(chats, seed):
        log.append(f"call {policy.name}")
        return policy(chats, seed=seed)

    return respond


def _steps(log: list[str]) -> list[list[str]]:
    """The log cut after the last result or call of each step (a step ends when every arm answered)."""
    steps, current = [], []
    for entry in log:
        current.append(entry)
        waiting = {e.split()[1] for e in current if e.startswith("submit")} - {
            e.split()[1] for e in current if e.startswith("result")}
        if not entry.startswith("submit") and not waiting:
            steps.append(current)
            current = []
    return steps


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), days=st.integers(1, 2))
def test_each_chat_sent_is_the_logged_conversation_so_far(world: World, seed: int, days: int) -> None:
    """The chats the policies are sent are, as a multiset, the roles and contents of every logged conversation up
    to each of its responses, once per candidate (a regenerated turn's chat is sent twice). Each chat is the
    policy's own: a policy that changes what it was sent changes no later chat and no log."""
    sent: Counter = Counter()

    def keeping(policy):
        def answer(chats, seed):
            sent.update(tuple((m["role"], m["content"]) for m in chat) for chat in chats)
            answers = policy(copy.deepcopy(chats), seed=seed)
            for chat in chats:
                chat[-1]["content"] += " (seen)"
                chat.append({"role": "assistant", "content": "kept by the policy"})
            return answers

        return FunctionPolicy(policy.name, answer)

    control, treatment = ScriptedPolicy(world, name="gen0"), ScriptedPolicy(world, name="gen1", style=GOOD_STYLE)
    policies = {"control": keeping(control), "treatment": keeping(treatment)}
    result = simulate_traffic(world, policies, days=days, pre_days=1, seed=seed, max_people=30, experiment="gen1")
    expected: Counter = Counter()
    for record in result.records:
        messages = record["messages"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                chat = tuple((m["role"], m["content"]) for m in messages[:i])
                expected[chat] += 1 + len(message.get("rejected") or [])
    assert sent == expected and sum(sent.values()) == result.responses
