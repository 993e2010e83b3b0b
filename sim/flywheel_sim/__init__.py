"""flywheel_sim: a simulated world of characters and users whose engagement the flywheel can climb.

    world = load_world("examples/local/world.yaml")
    gen0 = build_generation0(world, "runs/cache")                       # a transformers model directory
    result = simulate_traffic(world, {"control": ModelPolicy.for_world(gen0, world)}, days=3, out="runs/logs")
    truth = oracle(world, ScriptedPolicy(world))                          # benchmarks and reports only

docs/simulator.md describes the world file, the log and event shapes and the oracle.
"""

from flywheel_sim.assignment import assign, bucket
from flywheel_sim.events import arm_stats
from flywheel_sim.features import ResponseFeatures, response_features
from flywheel_sim.generation0 import build_generation0, generation0_key
from flywheel_sim.grammar import ResponseStyle
from flywheel_sim.oracle import oracle, response_utility
from flywheel_sim.policy import (
    GOOD_STYLE,
    FunctionPolicy,
    HttpPolicy,
    ModelPolicy,
    Policy,
    PolicyError,
    ScriptedPolicy,
    emoji_spam,
    system_message,
)
from flywheel_sim.traffic import TrafficResult, TrafficSimulation, TrafficState, simulate_traffic, write_traffic
from flywheel_sim.world import DEFAULT_WORLD, FEATURES, World, WorldFileError, load_world, parse_world

__all__ = [
    "DEFAULT_WORLD",
    "FEATURES",
    "GOOD_STYLE",
    "FunctionPolicy",
    "HttpPolicy",
    "ModelPolicy",
    "Policy",
    "PolicyError",
    "ResponseFeatures",
    "ResponseStyle",
    "ScriptedPolicy",
    "TrafficResult",
    "TrafficSimulation",
    "TrafficState",
    "World",
    "WorldFileError",
    "arm_stats",
    "assign",
    "bucket",
    "build_generation0",
    "emoji_spam",
    "generation0_key",
    "load_world",
    "oracle",
    "parse_world",
    "response_features",
    "response_utility",
    "simulate_traffic",
    "system_message",
    "write_traffic",
]
