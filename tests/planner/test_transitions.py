"""Every planner transition, driven through the in-memory harness (no cluster, no sleeps)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flywheel_operator.api import OnlineReading
from flywheel_operator.planner import DeployCanary, PromoteCanary, RollBackCanary, StartStage
from flywheel_operator.planner.core import JOB_VISIBILITY_GRACE
from flywheel_operator.planner.observed import CanaryObservation, ParentObservation
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.planner.harness import T0, World, generation, reading


def started(plan) -> list[str]:
    return [a.child for a in plan.actions if isinstance(a, StartStage)]


def conditions(status) -> dict[str, str]:
    return {c.type: c.status for c in status.conditions}


def test_pending_to_curating_starts_curate():
    world = World(generation())
    result = world.step()
    assert started(result) == ["gen2-curate-1"]
    assert result.status.phase == "Curating" and result.status.stage == "curate"
    assert result.status.policy == "/models/base"
    assert result.status.observed_generation == 1
    assert [e.reason for e in result.events] == ["StageStarted"]
    assert conditions(result.status)["Reconciling"] == "True" and conditions(result.status)["Finished"] == "False"


def test_reward_models_train_one_at_a_time_by_default():
    """Four reward models never ask for four stages' GPUs at once unless resources.maxParallelJobs allows it."""
    rewards = [{"name": "pointwise", "kind": "pointwise"}, {"name": "pairwise", "kind": "pairwise"},
               {"name": "continue", "kind": "user-signal", "signal": "continue"},
               {"name": "thumbs", "kind": "user-signal", "signal": "thumb-up"}]
    world = World(generation(stages={"rewardModels": rewards}))
    world.step()
    world.finish("gen2-curate-1")
    order = []
    for _ in range(4):
        result = world.step()
        assert len(world.running()) == 1 and result.status.phase == "TrainingRewardModels"
        order += started(result)
        world.finish(world.running()[0])
    assert order == [f"gen2-reward-{r['name']}-1" for r in rewards]
    assert started(world.step()) == ["gen2-sft-1"]


@settings(max_examples=30, deadline=None)
@given(models=st.integers(1, 5), limit=st.integers(1, 5), failing=st.sets(st.integers(0, 4), max_size=2))
def test_never_more_reward_jobs_than_max_parallel_jobs(models: int, limit: int, failing: set[int]):
    """Whatever the count, the limit and which first attempts fail, at most `limit` reward Jobs run at once and
    every model still trains."""
    names = ["pointwise", *(f"pairwise{i}" for i in range(1, models))]
    rewards = [{"name": "pointwise", "kind": "pointwise"}, *({"name": n, "kind": "pairwise"} for n in names[1:])]
    world = World(generation(stages={"rewardModels": rewards}, resources={"maxParallelJobs": limit}))
    world.step()
    world.finish("gen2-curate-1")
    fail_first = {f"gen2-reward-{names[i]}-1" for i in failing if i < models}
    for _ in range(4 * models + 4):
        if world.step().status.phase != "TrainingRewardModels":
            break
        running = world.running()
        assert len(running) <= limit
        for child in running:
            world.finish(child, ok=child not in fail_first)
        world.advance(timedelta(minutes=2))  # past any retry's backoff (1m in the harness)
    assert world.status.phase == "SFT"
    assert all(r.state == "Succeeded" for r in world.status.stages if r.name.startswith("reward-"))


def test_a_retried_reward_model_waits_for_a_free_slot():
    world = World(generation())
    world.step()
    world.finish("gen2-curate-1")
    world.step()
    world.finish("gen2-reward-pointwise-1", ok=False)
    result = world.step()  # the pointwise retry waits for its backoff; pairwise takes the free slot
    assert started(result) == ["gen2-reward-pairwise-1"]
    world.advance(timedelta(minutes=5))
    assert started(world.step()) == []  # backoff over, but pairwise holds the only slot
    world.finish("gen2-reward-pairwise-1")
    assert started(world.step()) == ["gen2-reward-pointwise-2"]


def test_reward_models_train_in_parallel_and_phase_waits_for_all():
    world = World(generation(resources={"maxParallelJobs": 2}))
    world.step()
    world.finish("gen2-curate-1")
    result = world.step()
    assert started(result) == ["gen2-reward-pointwise-1", "gen2-reward-pairwise-1"]
    assert result.status.phase == "TrainingRewardModels"
    world.finish("gen2-reward-pointwise-1")
    result = world.step()
    assert result.actions == () and result.status.stage == "reward-pairwise"
    world.finish("gen2-reward-pairwise-1")
    result = world.step()
    assert started(result) == ["gen2-sft-1"] and result.status.phase == "SFT"


def test_stage_configs_chain_upstream_artifacts_and_digests():
    world = World(generation(resources={"maxParallelJobs": 2}))
    world.step()
    world.finish("gen2-curate-1")
    world.step()
    world.finish("gen2-reward-pointwise-1")
    world.finish("gen2-reward-pairwise-1")
    sft = next(a for a in world.step().actions if isinstance(a, StartStage))
    assert sft.config.stage == "sft" and sft.config.policy == "/models/base"
    assert set(sft.config.upstream) == {"curate", "reward-pointwise", "reward-pairwise"}
    assert sft.config.upstream["reward-pointwise"] == {"model": "/a/reward-pointwise"}
    assert sft.config.upstream_digests["curate"] == "sha256:curate"
    assert sft.config.output_dir == "/artifacts/gen2/sft"


def test_reward_stage_config_names_its_model():
    world = World(generation(resources={"maxParallelJobs": 2}))
    world.step()
    world.finish("gen2-curate-1")
    configs = {a.child: a.config for a in world.step().actions}
    assert configs["gen2-reward-pairwise-1"].reward_model == "pairwise"
    assert configs["gen2-reward-pairwise-1"].stage == "reward"


def test_full_walk_to_promoted():
    world = World(generation())
    world.train_through()
    status = world.status
    assert status.phase == "Canary" and status.offline_gate.passed
    assert world.canary_actions == [DeployCanary]
    assert status.candidate_policy == "/a/candidate"
    world.canary = CanaryObservation(ready=True, revisions={"latestRolledoutRevision": "chat-predictor-00002"})
    result = world.step()
    assert result.status.phase == "Observing" and result.status.canary.phase == "Ready"
    assert result.status.canary.revisions["latestRolledoutRevision"] == "chat-predictor-00002"
    promoted = None
    for day in range(1, 8):
        world.advance(timedelta(days=1))
        world.online = reading(world.now, lift=0.10, users=20_000 * day)
        result = world.step()
        if result.status.phase == "Promoted":
            promoted = result
            break
    assert promoted is not None, world.status.online.decision
    assert world.now - T0 >= timedelta(days=1)
    assert [type(a) for a in promoted.actions] == [PromoteCanary]
    assert promoted.status.promoted_policy == "/a/candidate"
    assert promoted.status.decision.outcome == "PROMOTE" and promoted.status.decision.reasons
    assert promoted.status.lift is not None and "depth +" in promoted.status.lift
    assert conditions(promoted.status).items() >= {"Ready": "True", "Promoted": "True", "Reconciling": "False"}.items()
    assert conditions(promoted.status)["Finished"] == "True"
    assert promoted.requeue_at is None
    assert world.step().actions == ()  # terminal: nothing more


def test_promotion_waits_for_min_duration():
    world = World(
        generation(canary={"inferenceService": "chat", "minDuration": "3d", "maxDuration": "7d", "checkInterval": "6h"})
    )
    world.train_through()
    world.canary = CanaryObservation(ready=True)
    world.step()
    world.advance(timedelta(hours=6))
    world.online = reading(world.now, lift=0.3, users=200_000)
    result = world.step()
    assert result.status.phase == "Observing"
    assert result.status.online.decision.outcome == "CONTINUE"
    assert result.requeue_at == world.now + timedelta(hours=6)


def test_online_loss_rolls_back():
    world = World(generation())
    world.train_through()
    world.canary = CanaryObservation(ready=True)
    world.step()
    for _ in range(8):
        world.advance(timedelta(days=1))
        world.online = reading(world.now, lift=-0.15, users=100_000)
        if world.step().status.phase == "RolledBack":
            break
    assert world.status.phase == "RolledBack"
    assert world.canary_actions[-1] is RollBackCanary
    assert world.status.decision.outcome == "ROLL_BACK" and world.status.promoted_policy is None
    assert conditions(world.status)["Promoted"] == "False"
    assert conditions(world.status)["Finished"] == "True"  # kubectl wait --for=condition=Finished returns


def test_prometheus_outage_continues_then_inconclusive_never_promotes():
    world = World(generation())
    world.train_through()
    world.canary = CanaryObservation(ready=True)
    world.step()
    outcomes = []
    for _ in range(12):
        world.advance(timedelta(days=1))
        world.online = OnlineReading(at=world.now, error="prometheus unreachable: connection refused")
        outcomes.append(world.step().status.online.decision.outcome)
        if world.status.phase != "Observing":
            break
    assert "PROMOTE" not in outcomes
    assert outcomes[:6] == ["CONTINUE"] * 6
    assert world.status.phase == "RolledBack" and world.status.decision.outcome == "INCONCLUSIVE"
    assert world.canary_actions[-1] is RollBackCanary


def test_missing_readings_end_inconclusive_after_max_duration():
    world = World(generation())
    world.train_through()
    world.canary = CanaryObservation(ready=True)
    world.step()
    world.advance(timedelta(days=7, hours=7))
    result = world.step()
    assert result.status.phase == "RolledBack" and result.status.decision.outcome == "INCONCLUSIVE"
    assert "no reading" in result.status.online.readings[-1].error


def test_reading_not_due_is_ignored():
    world = World(generation())
    world.train_through()
    world.canary = CanaryObservation(ready=True)
    world.step()
    world.advance(timedelta(hours=6))
    world.online = reading(world.now, lift=0.0)
    world.step()
    world.advance(timedelta(hours=1))
    world.online = reading(world.now, lift=0.0)
    result = world.step()
    assert len(result.status.online.readings) == 1 and result.requeue_at == T0 + timedelta(hours=12)


def test_offline_gate_failure_rolls_back_without_a_canary():
    world = World(generation())
    world.train_through(win_rate_user=0.71, win_rate_internal=0.44)
    status = world.status
    assert status.phase == "RolledBack" and not status.offline_gate.passed
    assert world.canary_actions == [] and status.canary is None
    assert any("offline gate" in r for r in status.decision.reasons)
    assert conditions(status)["OfflineGatePassed"] == "False"


def test_failed_stage_retries_after_backoff_with_a_new_child():
    world = World(generation())
    world.step()
    world.finish("gen2-curate-1", ok=False)
    result = world.step()
    record = result.status.record("curate")
    assert result.actions == () and record.state == "Retrying" and record.message == "OOMKilled"
    assert result.requeue_at == T0 + timedelta(minutes=1)
    assert [e.reason for e in result.events] == ["StageRetrying"]
    world.advance(timedelta(seconds=59))
    assert world.step().actions == ()
    world.advance(timedelta(seconds=1))
    result = world.step()
    assert started(result) == ["gen2-curate-2"] and result.status.record("curate").attempts == 2


def test_backoff_grows_by_the_factor():
    world = World(generation(retry={"maxAttempts": 3, "backoff": "1m", "backoffFactor": 3}))
    world.step()
    world.finish("gen2-curate-1", ok=False)
    world.step()
    world.advance(timedelta(minutes=1))
    world.step()
    world.finish("gen2-curate-2", ok=False)
    assert world.step().requeue_at == world.now + timedelta(minutes=3)


def test_stage_failing_past_max_attempts_fails_the_generation():
    world = World(generation(retry={"maxAttempts": 2, "backoff": "1s"}))
    world.step()
    world.finish("gen2-curate-1", ok=False)
    world.step()
    world.advance(timedelta(seconds=1))
    world.step()
    world.finish("gen2-curate-2", ok=False)
    result = world.step()
    assert result.status.phase == "Failed" and result.actions == ()
    assert "stage curate failed 2 time(s): OOMKilled" in result.status.decision.reasons[0]
    assert conditions(result.status)["Stalled"] == "True" and conditions(result.status)["Finished"] == "True"


def test_success_without_result_counts_as_a_failed_attempt():
    world = World(generation())
    world.step()
    world.finish("gen2-curate-1")
    world.jobs["gen2-curate-1"] = world.jobs["gen2-curate-1"].__class__(name="gen2-curate-1", state="Succeeded")
    result = world.step()
    assert result.status.record("curate").state == "Retrying"
    assert "result.json" in result.status.record("curate").message


def test_invalid_eval_result_is_a_failed_attempt():
    world = World(generation())
    world.train_through()
    assert world.status.phase == "Canary"
    broken = World(generation())
    broken.step()
    for _ in range(6):
        for child in broken.running():
            if "eval" in child:
                broken.finish(child)
                job = broken.jobs[child]
                job.result.details.clear()
            else:
                broken.finish(child)
        broken.step()
    assert broken.status.record("eval").state in ("Retrying", "Running")
    assert "offline_metrics" in (broken.status.record("eval").message or "")


def test_missing_job_is_requested_again_with_the_same_name():
    world = World(generation())
    world.step()
    del world.jobs["gen2-curate-1"]  # e.g. deleted by hand
    assert world.step().actions == ()
    world.advance(JOB_VISIBILITY_GRACE)
    result = world.step()
    assert started(result) == ["gen2-curate-1"]
    assert result.status.record("curate").attempts == 1


def test_suspended_generation_starts_nothing_then_resumes():
    world = World(generation(suspend=True))
    result = world.step()
    assert result.actions == () and result.status.phase == "Suspended"
    assert conditions(result.status)["Reconciling"] == "False"
    world.gen = world.gen.model_copy(update={"spec": world.gen.spec.model_copy(update={"suspend": False})})
    assert started(world.step()) == ["gen2-curate-1"]


def test_suspend_mid_pipeline_records_finished_jobs_but_starts_nothing():
    world = World(generation())
    world.step()
    world.gen = world.gen.model_copy(update={"spec": world.gen.spec.model_copy(update={"suspend": True})})
    world.finish("gen2-curate-1")
    result = world.step()
    assert result.actions == () and result.status.record("curate").state == "Succeeded"
    assert result.status.phase == "Suspended"


def test_child_waits_for_parent_then_starts_from_its_promoted_policy():
    world = World(generation(basePolicy=None, parent="gen1"))
    result = world.step()
    assert result.actions == () and result.status.phase == "Pending" and "not found" in result.status.message
    world.parent = ParentObservation(name="gen1", phase="Observing")
    assert "waiting for parent gen1" in world.step().status.message
    world.parent = ParentObservation(name="gen1", phase="Promoted", promoted_policy="/a/gen1-policy")
    result = world.step()
    assert result.status.policy == "/a/gen1-policy" and started(result) == ["gen2-curate-1"]


def test_parent_that_was_rolled_back_fails_the_child():
    world = World(generation(basePolicy=None, parent="gen1"))
    world.parent = ParentObservation(name="gen1", phase="RolledBack")
    result = world.step()
    assert result.status.phase == "Failed" and "no promoted policy" in result.status.decision.reasons[0]


def test_canary_not_ready_in_time_rolls_back():
    world = World(generation(canary={"inferenceService": "chat", "readyTimeout": "30m"}))
    world.train_through()
    world.canary = CanaryObservation(ready=False, message="RevisionMissing: image pull backoff")
    world.advance(timedelta(minutes=10))
    assert world.step().status.phase == "Canary"
    world.advance(timedelta(minutes=20))
    result = world.step()
    assert result.status.phase == "RolledBack" and [type(a) for a in result.actions] == [RollBackCanary]
    assert "image pull backoff" in result.status.decision.reasons[0]


def test_a_canary_waits_while_another_generation_holds_the_inference_service():
    """Issue 14: two generations on one InferenceService overwrote each other's canary. The second waits, says
    for whom, does not time out while waiting, and deploys once the first has ended."""
    world = World(generation(canary={"inferenceService": "chat", "readyTimeout": "30m"}))
    world.holder = "gen1"
    world.train_through()
    status = world.status
    assert status.phase == "Canary" and status.canary is not None and status.canary.phase == "Waiting"
    assert "carries the canary of generation gen1" in (status.message or "")
    assert DeployCanary not in world.canary_actions
    assert [e.reason for p in world.history for e in p.events].count("CanaryWaiting") == 1
    world.advance(timedelta(hours=2))  # longer than readyTimeout: waiting is not deploying
    assert world.step().status.canary.phase == "Waiting"
    world.holder = None
    result = world.step()
    assert result.status.canary.phase == "Deploying" and [type(a) for a in result.actions] == [DeployCanary]
    assert result.status.canary.requested_at == world.now, "the ready timeout counts from the deployment"
    routing = result.status.canary.routing
    assert routing is not None and world.gen.metadata.name in routing.salt and routing.traffic_percent == 10


def test_a_deploying_canary_that_lost_the_race_for_the_service_waits():
    world = World(generation())
    world.train_through()
    assert world.status.canary.phase == "Deploying"
    world.holder = "gen7"
    result = world.step()
    assert result.status.canary.phase == "Waiting" and result.actions == ()
    assert "gen7" in (result.status.message or "")


def test_condition_transition_times_are_kept_while_status_holds():
    world = World(generation())
    first = world.step().status
    world.advance(timedelta(minutes=3))
    second = world.step().status
    assert first.conditions == second.conditions


@pytest.mark.parametrize("phase", ["Promoted", "RolledBack", "Failed"])
def test_terminal_generations_do_nothing(phase):
    world = World(generation())
    world.step()
    world.gen = world.gen.model_copy(update={"status": {**world.gen.status, "phase": phase}})
    result = world.step()
    assert result.actions == () and result.events == () and result.requeue_at is None
