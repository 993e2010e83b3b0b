"""The served chat predictor answers concurrent requests together (issue 24, item 7): on KServe's real ModelServer,
started as the ClusterServingRuntime starts it, N requests sent at once share batched generations instead of
queueing behind each other on the event loop. At f9f8494 `predict` was synchronous: KServe ran each generation on
its event loop, one request at a time (and exported no batch metric).

Asserted on structure (requests per generation, from the server's own /metrics), not on time; the timings are in
bench/predictor_load.py (bench/results/predictor_load.json)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flywheel_trainer.predictor import BatchingChatPredictor, ChatPredictor
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

CHATS = [
    [{"role": "user", "content": f"hello number {i}, tell me about the stars"}] for i in range(8)
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

    tokenizer = train_tokenizer([m["content"] for chat in CHATS for m in chat] * 20, vocab_size=300)
    directory = tmp_path_factory.mktemp("served") / "model"
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _batches(name: str) -> tuple[float, float]:
    count = REGISTRY.get_sample_value("flywheel_predictor_batch_requests_count", {"model_name": name}) or 0.0
    total = REGISTRY.get_sample_value("flywheel_predictor_batch_requests_sum", {"model_name": name}) or 0.0
    return count, total


def test_concurrent_predicts_share_one_generation_and_each_gets_its_own_answers(model_dir: Path) -> None:
    predictor = BatchingChatPredictor("in-process", model_dir, max_new_tokens=6, max_batch_delay=0.05)
    assert predictor.load()
    payloads = [{"instances": [{"messages": chat}], "parameters": {"seed": 5}} for chat in CHATS[:4]]
    payloads.append({"instances": [{"messages": CHATS[4]}, {"messages": CHATS[5]}], "parameters": {"seed": 5}})

    async def main() -> list[dict]:
        return await asyncio.gather(*(predictor.predict(p) for p in payloads))

    answers = asyncio.run(main())
    assert [len(a["predictions"]) for a in answers] == [1, 1, 1, 1, 2]
    assert _batches("in-process") == (1.0, 5.0)  # five requests, one generation
    together = ChatPredictor("plain", model_dir, max_new_tokens=6)
    assert together.load()
    expected = together.respond(CHATS[:6], seed=5)  # the same batch, answered in one call, in request order
    assert [p["content"] for a in answers for p in a["predictions"]] == expected


def test_requests_with_different_sampling_are_not_mixed(model_dir: Path) -> None:
    predictor = BatchingChatPredictor("mixed", model_dir, max_new_tokens=4, max_batch_delay=0.05)
    assert predictor.load()

    async def main() -> list[dict]:
        return await asyncio.gather(*(
            predictor.predict({"instances": [{"messages": chat}], "parameters": {"seed": i % 2}})
            for i, chat in enumerate(CHATS[:4])))

    assert len(asyncio.run(main())) == 4
    assert _batches("mixed") == (2.0, 4.0)  # one generation per seed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model_dir: Path, *args: str) -> Iterator[str]:
    """KServe's ModelServer as the ClusterServingRuntime runs it (`python -m flywheel_trainer.predictor`)."""
    port = free_port()
    command = [sys.executable, "-m", "flywheel_trainer.predictor", "--model_name=chat", f"--model_dir={model_dir}",
               f"--http_port={port}", "--enable_grpc=false", "--max_new_tokens=8", *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
            try:
                if httpx.get(f"{url}/v1/models/chat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the model server did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_kserves_model_server_answers_n_concurrent_requests_in_shared_generations(model_dir: Path) -> None:
    n = len(CHATS)
    with serving(model_dir, "--max_batch_delay_ms=50") as url:

        async def load() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                return await asyncio.gather(*(
                    client.post("/v1/models/chat:predict", json={"instances": [{"messages": chat}],
                                                                 "parameters": {"seed": 1}})
                    for chat in CHATS))

        responses = asyncio.run(load())
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert [r.status_code for r in responses] == [200] * n
    assert all(len(r.json()["predictions"]) == 1 for r in responses)
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "flywheel_predictor_batch_requests"
        for s in family.samples
        if s.labels.get("model_name") == "chat"
    }
    generations = samples[("flywheel_predictor_batch_requests_count", None)]
    assert samples[("flywheel_predictor_batch_requests_sum", None)] == n  # every request answered by a generation
    assert generations < n, "requests sent together were answered one generation each"
    small = samples[("flywheel_predictor_batch_requests_bucket", str(float(n // 2)))]
    assert small < generations, "no generation answered more than half of the concurrent requests"
