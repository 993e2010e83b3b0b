"""`flywheel run --generations N`: how generation k+1 is derived from the first and the last promoted one."""

from __future__ import annotations

from pathlib import Path

import pytest
from flywheel_local.runner import LocalRunError, default_run_dir, load_manifest, successor
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
FIRST = load_manifest(ROOT / "examples" / "local" / "gen1.yaml")


@given(index=st.integers(1, 50), promoted=st.sampled_from([None, "gen1", "gen4"]))
def test_a_successor_advances_and_starts_from_the_last_promoted(index: int, promoted: str | None) -> None:
    nxt = successor(FIRST, index, promoted)
    assert nxt.spec.generation == FIRST.spec.generation + index
    assert nxt.metadata.name == f"gen{FIRST.spec.generation + index}"
    assert nxt.spec.parent == promoted
    assert nxt.spec.base_policy == (None if promoted else FIRST.spec.base_policy)
    assert nxt.spec.stages == FIRST.spec.stages and nxt.status is None


def test_the_first_generation_is_the_manifest_itself() -> None:
    assert successor(FIRST, 0, "anything") is FIRST


def test_the_run_directory_defaults_to_the_manifests_storage() -> None:
    assert default_run_dir(FIRST) == Path("runs")


def test_generation_directories_do_not_nest_under_their_own_name(tmp_path: Path) -> None:
    """Issue 28 point 2: `make run` wrote runs/gen1/gen1/; the storage URI is the root of the generations."""
    from flywheel_local.backend import RunPaths

    run_dir = default_run_dir(FIRST)
    generation_dir = RunPaths(run_dir / FIRST.metadata.name).root
    assert generation_dir == Path("runs/gen1")
    assert generation_dir.parts.count("gen1") == 1
    no_uri = FIRST.model_copy(deep=True)
    no_uri.spec.resources.storage.uri = "s3://bucket/flywheel"
    assert default_run_dir(no_uri) == Path("runs")


def test_a_bad_manifest_is_refused_with_its_field_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples" / "local" / "gen1.yaml").read_text().replace("trafficPercent: 50",
                                                                                   "trafficPercent: 500"))
    with pytest.raises(LocalRunError, match=r"spec\.canary\.trafficPercent"):
        load_manifest(bad)
