"""The planner's Events in full words and kinds (issue 31: `make mutation` let mutants of their reason, message and
type survive in planner/core.py): a stage failing its last attempt, the generation it fails, and a parent that
ended without a promoted policy."""

from __future__ import annotations

from datetime import timedelta

from flywheel_operator.planner import ParentObservation

from tests.planner.harness import World, generation


def test_a_stage_failing_its_last_attempt_posts_two_warnings_naming_the_stage_and_the_error() -> None:
    world = World(generation(retry={"maxAttempts": 2, "backoff": "1s"}))
    world.step()
    world.finish("gen2-curate-1", ok=False)
    first = world.step()
    assert "StageFailed" not in [e.reason for e in first.events]  # an attempt is left: a retry, not a failure
    world.advance(timedelta(seconds=1))
    world.step()
    world.finish("gen2-curate-2", ok=False)
    result = world.step()
    events = {e.reason: e for e in result.events}
    message = result.status.record("curate").message
    assert (events["StageFailed"].message, events["StageFailed"].type) == (
        f"stage curate failed for good: {message}", "Warning")
    assert (events["GenerationFailed"].message, events["GenerationFailed"].type) == (
        f"stage curate failed: {message}", "Warning")


def test_a_parent_that_ended_without_a_promotion_fails_the_child_with_a_warning() -> None:
    world = World(generation(basePolicy=None, parent="gen1"))
    world.parent = ParentObservation(name="gen1", phase="RolledBack")
    result = world.step()
    assert [(e.reason, e.message, e.type) for e in result.events if e.reason == "ParentNotPromoted"] == [
        ("ParentNotPromoted", "parent gen1 ended RolledBack", "Warning")]
