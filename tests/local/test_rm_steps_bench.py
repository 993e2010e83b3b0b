"""bench/rm_steps.py's parts: the comparison of two reward stages' outputs, and that its defaults are the examples'."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.local.bench_modules import load_bench

ROOT = Path(__file__).resolve().parents[2]
rm_steps = load_bench("rm_steps")

scalars = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-1000, 1000), st.text(max_size=4),
                    st.booleans())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=3), inner, max_size=3), max_leaves=12)


@given(values)
def test_a_value_differs_from_itself_by_nothing(value: object) -> None:
    assert rm_steps.largest_difference(value, value) == 0.0


@given(st.dictionaries(st.text(max_size=3), st.floats(-1e3, 1e3), min_size=1, max_size=5), st.data())
def test_the_largest_difference_is_the_largest_moved_number(numbers: dict[str, float], data: st.DataObject) -> None:
    moves = {k: data.draw(st.floats(-1.0, 1.0), label=k) for k in numbers}
    moved = {"head": {k: v + moves[k] for k, v in numbers.items()}}
    expected = max(abs((v + moves[k]) - v) for k, v in numbers.items())
    assert math.isclose(rm_steps.largest_difference({"head": numbers}, moved), expected, abs_tol=1e-12)


def test_another_shape_or_text_is_an_infinite_difference() -> None:
    assert rm_steps.largest_difference({"a": 1.0}, {"b": 1.0}) == math.inf
    assert rm_steps.largest_difference({"a": [1.0]}, {"a": [1.0, 2.0]}) == math.inf
    assert rm_steps.largest_difference({"a": "x"}, {"a": "y"}) == math.inf


def test_its_default_steps_are_the_local_examples_steps() -> None:
    """The bench measures the steps examples/local trains its reward models with (the claim in their comments)."""
    from flywheel_local.flywheel import load_flywheel
    from flywheel_local.runner import load_manifest

    for spec in (load_manifest(ROOT / "examples/local/gen1.yaml").spec,
                 load_flywheel(ROOT / "examples/local/flywheel.yaml").spec.template.spec):
        steps = {m.name: m.max_steps for m in spec.stages.reward_models}
        assert steps == rm_steps.DEFAULT_STEPS
