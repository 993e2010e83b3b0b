"""Load on the served chat predictor: N concurrent requests against KServe's real ModelServer, the product's batching
predictor (`python -m flywheel_trainer.predictor`, as the ClusterServingRuntime starts it) against the baseline of
f9f8494, the plain ChatPredictor whose synchronous `predict` KServe runs on its event loop, in the same run on the
same tiny model (CPU; a GPU changes the absolute figures, not the shape).

Per server: the latency of one request alone, and the wall time of N requests sent together (each a different chat,
one instance, the same sampling parameters), best of `--repeats`. The batching server answers the N in about the
time of one batch; the baseline in about N times one request.

    python bench/predictor_load.py [--concurrency 16] [--max-new-tokens 32] [--out bench/results/predictor_load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
BASELINE = """
import sys, kserve
from flywheel_trainer.predictor import ChatPredictor
name, model_dir, port, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = ChatPredictor(name, model_dir, max_new_tokens=tokens)
model.load()
kserve.ModelServer(http_port=port, enable_grpc=False).start([model])
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], port: int) -> Iterator[str]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {' '.join(command)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/models/chat", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready within 180 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


async def _burst(url: str, chats: list[list[dict[str, str]]]) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(*(
            client.post("/v1/models/chat:predict", json={"instances": [{"messages": chat}], "parameters": {"seed": 1}})
            for chat in chats))
        elapsed = time.perf_counter() - start
    if any(r.status_code != 200 for r in responses):
        raise RuntimeError(f"failed requests: {[r.status_code for r in responses]}")
    return elapsed


def measure(url: str, chats: list[list[dict[str, str]]], repeats: int) -> dict[str, float]:
    asyncio.run(_burst(url, chats[:1]))  # warm-up
    one = min(asyncio.run(_burst(url, chats[:1])) for _ in range(repeats))
    together = min(asyncio.run(_burst(url, chats)) for _ in range(repeats))
    return {"one_request_s": round(one, 4), "concurrent_s": round(together, 4),
            "concurrent_over_one": round(together / one, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "predictor_load.json")
    args = parser.parse_args()
    from flywheel_trainer.tinymodel import tiny_llama, train_tokenizer

    chats = [[{"role": "user", "content": f"user {i} asks about comets, stars and the moon tonight"}]
             for i in range(args.concurrency)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        tokenizer = train_tokenizer([c[0]["content"] for c in chats] * 20, vocab_size=400)
        tiny_llama(tokenizer, hidden_size=args.hidden_size, num_layers=args.layers, seed=0).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        results = {}
        port = _port()
        batching = [sys.executable, "-m", "flywheel_trainer.predictor", "--model_name=chat",
                    f"--model_dir={model_dir}", f"--http_port={port}", "--enable_grpc=false",
                    f"--max_new_tokens={args.max_new_tokens}"]
        with server(batching, port) as url:
            results["batching (this commit)"] = measure(url, chats, args.repeats)
        port = _port()
        baseline = [sys.executable, "-c", BASELINE, "chat", str(model_dir), str(port), str(args.max_new_tokens)]
        with server(baseline, port) as url:
            results["synchronous predict (f9f8494)"] = measure(url, chats, args.repeats)
    print(f"{args.concurrency} concurrent requests, {args.max_new_tokens} new tokens, tiny Llama "
          f"(hidden {args.hidden_size}, {args.layers} layers) on CPU")
    print(f"{'server':32} {'one request s':>14} {'N together s':>13} {'N / one':>8}")
    for name, row in results.items():
        print(f"{name:32} {row['one_request_s']:>14} {row['concurrent_s']:>13} {row['concurrent_over_one']:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "concurrency": args.concurrency, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
        "model": {"hidden_size": args.hidden_size, "layers": args.layers},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "device": "cpu",
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
    }, indent=2) + "\n")
    from provenance import stamp_file  # provenance: bench/provenance.py, beside this script
    stamp_file("predictor_load", args.out)  # provenance


if __name__ == "__main__":
    main()
