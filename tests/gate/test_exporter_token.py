"""Issue 24 item 11: the writers' token is re-read when its file changes (a rotated Secret), with a grace period
for the previous one, so a rotation under GitOps does not turn every writer's batch into a 401."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import pytest
from flywheel_operator.gate.exporter import TokenFile, make_server
from flywheel_operator.gate.store import SqliteStore

from tests.gate.test_store import exposure

OLD, NEW, NEWER = "old-token-0123456789abcdef", "new-token-0123456789abcdef", "newer-token-0123456789abcd"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kubelet_secret(directory: Path, token: str, version: int) -> Path:
    """What the kubelet does on a Secret update: a new timestamped directory, then `..data` swapped atomically;
    the file the pod reads (`token`) is a symlink through `..data`."""
    fresh = directory / f"..2026_{version:02d}"
    fresh.mkdir()
    (fresh / "token").write_text(token + "\n")
    (directory / "..data_tmp").symlink_to(fresh.name)
    os.replace(directory / "..data_tmp", directory / "..data")
    if not (directory / "token").is_symlink():
        (directory / "token").symlink_to("..data/token")
    return directory / "token"


def write(client: httpx.Client, token: str) -> int:
    return client.post(
        "/events", content=exposure("a") + "\n", headers={"Authorization": f"Bearer {token}"}
    ).status_code


def test_a_rotated_secret_is_picked_up_and_the_previous_token_expires_after_its_grace(tmp_path: Path, caplog) -> None:
    clock = Clock()
    path = kubelet_secret(tmp_path, OLD, 1)
    token = TokenFile(path, grace=300, check_every=1, clock=clock)
    server = make_server("127.0.0.1", 0, SqliteStore(None), token=token)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            assert write(client, OLD) == 200 and write(client, NEW) == 401
            kubelet_secret(tmp_path, NEW, 2)
            assert write(client, NEW) == 401  # checked at most every second: not yet seen
            clock.now += 1
            with caplog.at_level("INFO", logger="flywheel.exporter"):
                assert write(client, NEW) == 200
            assert "reloaded the writers' token" in caplog.text and token.reloads == 1
            assert write(client, OLD) == 200  # writers that have not re-read the Secret yet lose nothing
            clock.now += 300
            assert write(client, OLD) == 401 and write(client, NEW) == 200
            kubelet_secret(tmp_path, "short", 3)  # a broken update keeps the token in force
            clock.now += 1
            with caplog.at_level("ERROR", logger="flywheel.exporter"):
                assert write(client, NEW) == 200
            assert "at least 16 characters" in caplog.text and "in force stays" in caplog.text
            kubelet_secret(tmp_path, NEWER, 4)
            clock.now += 1
            assert write(client, NEWER) == 200 and write(client, NEW) == 200 and token.reloads == 2
    finally:
        server.shutdown()
        server.server_close()


def test_a_zero_grace_refuses_the_previous_token_at_once(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "token"
    path.write_text(OLD)
    token = TokenFile(path, grace=0, check_every=0, clock=clock)
    assert token.accepted() == [OLD.encode()]
    path.write_text(NEW + "\n")
    os.utime(path, ns=(1, 1))  # a new stamp even within the file system's timestamp resolution
    assert token.accepted() == [NEW.encode()]
    with pytest.raises(ValueError, match="--token-grace"):
        TokenFile(path, grace=-1)
