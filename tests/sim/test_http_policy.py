"""The HTTP policy adapter speaks KServe's v1 protocol and the OpenAI-compatible route (httpx MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest
from flywheel_sim import HttpPolicy, PolicyError, World, simulate_traffic

CHATS = [
    [{"role": "system", "content": "You are Luna."}, {"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are Rex."}, {"role": "user", "content": "tell me about maps."}],
]


def test_kserve_v1_sends_instances_and_reads_predictions() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models/gen1:predict"
        body = json.loads(request.content)
        seen.append(body)
        return httpx.Response(200, json={"predictions": [f"answer {i}" for i in range(len(body["instances"]))]})

    policy = HttpPolicy("http://predictor", model="gen1", transport=httpx.MockTransport(handler))
    assert policy(CHATS, seed=7) == ["answer 0", "answer 1"]
    assert seen[0]["instances"][1]["messages"] == CHATS[1]
    assert seen[0]["parameters"]["seed"] == 7


def test_openai_route_sends_one_request_per_chat() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/openai/v1/chat/completions"
        body = json.loads(request.content)
        content = f"{body['model']}:{body['messages'][-1]['content']}:{body['seed']}"
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": content}}]})

    policy = HttpPolicy("http://predictor/", model="gen1", protocol="openai", transport=httpx.MockTransport(handler))
    assert policy(CHATS, seed=3) == ["gen1:hi:3", "gen1:tell me about maps.:4"]


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(503, text="overloaded"),
        httpx.Response(200, json={"predictions": ["only one"]}),
        httpx.Response(200, json={"predictions": [{"score": 1}, {"score": 2}]}),
        httpx.Response(200, text="not json"),
    ],
)
def test_bad_replies_raise_policy_errors_naming_the_policy(reply: httpx.Response) -> None:
    policy = HttpPolicy("http://predictor", model="gen1", transport=httpx.MockTransport(lambda _: reply))
    with pytest.raises(PolicyError, match="'gen1'"):
        policy(CHATS, seed=0)


def test_simulated_users_can_talk_to_a_served_policy(world: World) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return httpx.Response(200, json={"predictions": [{"content": "do you like maps?"}] * len(body["instances"])})

    policy = HttpPolicy("http://predictor", model="served", transport=httpx.MockTransport(handler))
    result = simulate_traffic(world, {"control": policy}, days=1, max_people=30)
    assert result.records and {r["generation"] for r in result.records} == {"served"}
