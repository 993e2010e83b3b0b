"""Shared fixtures of the trainer tests: a synthetic conversation log whose good responses are clearly
separable from bad ones, and a tiny parent policy (tokenizer trained on the spot + a Llama-config model
briefly trained on the log) that says both kinds, so the stages have something real to learn."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flywheel_operator import storage
from flywheel_trainer.synthetic import build_tiny_parent, synthetic_records, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BUCKET = "flywheel"


@pytest.fixture(scope="session")
def synthetic_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean synthetic traffic log (JSONL) of 360 conversations."""
    return write_jsonl(synthetic_records(360), tmp_path_factory.mktemp("logs") / "traffic.jsonl")


@pytest.fixture(scope="session")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory, single_torch_thread: None) -> Path:
    """A saved tiny Llama-config parent policy that says both good and bad replies."""
    return build_tiny_parent(tmp_path_factory.mktemp("parent") / "policy")


@pytest.fixture(scope="session")
def single_torch_thread() -> Any:
    """One intra-op thread for the tiny-model tests: on a busy 2-core machine torch's thread pool spins and
    runs a tiny model an order of magnitude slower than one thread does."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with dummy credentials and its endpoint in the environment, as a stage
    pod gets them (resources.storage.secretRef / endpointUrl); yields the bucket's URI. Stage processes the
    test starts inherit the environment."""
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its state per process: forget what an earlier test module's server held
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
        env.delenv("AWS_PROFILE", raising=False)
        env.setenv(storage.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        S3FileSystem.clear_instance_cache()
        S3FileSystem(endpoint_url=f"http://{host}:{port}").mkdir(BUCKET)
        yield f"s3://{BUCKET}"
        S3FileSystem.clear_instance_cache()
    server.stop()
