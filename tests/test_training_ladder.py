"""The quality-ladder remap used when a checkpoint is resumed with another lambda ladder (numpy only)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from ladder import COMPRESSAI_LAMBDAS, LAMBDAS, remap_ladder  # noqa: E402

OLD = COMPRESSAI_LAMBDAS


def linear_table(slope: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """log gains exactly linear in log(lambda), one column per channel."""
    return np.log(np.asarray(OLD))[:, None] * slope + offset


def test_the_same_ladder_keeps_the_table() -> None:
    table = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    np.testing.assert_array_equal(remap_ladder(table, OLD, OLD), table)


def test_linear_gains_stay_on_their_line_inside_and_outside_the_old_ladder() -> None:
    slope, offset = np.array([0.5, 0.45, 0.55]), np.array([0.1, -0.2, 0.0])
    got = remap_ladder(linear_table(slope, offset), OLD, LAMBDAS)
    want = np.log(np.asarray(LAMBDAS))[:, None] * slope + offset
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_without_extrapolation_rows_below_the_old_ladder_repeat_its_first_row() -> None:
    table = linear_table(np.array([0.5]), np.array([0.0]))
    got = remap_ladder(table, OLD, LAMBDAS, extrapolate=False)
    below = np.asarray(LAMBDAS) <= OLD[0]
    assert below.sum() == 2  # the new q1 and q2
    np.testing.assert_array_equal(got[below], np.repeat(table[:1], below.sum(), axis=0))
    assert np.all(np.diff(got[:, 0]) >= 0)


def test_the_new_ladder_spans_the_issue_range_and_increases() -> None:
    assert len(LAMBDAS) == 8 and np.all(np.diff(LAMBDAS) > 0)
    assert LAMBDAS[0] < OLD[0] and LAMBDAS[-1] < OLD[-1]


def test_a_ladder_that_does_not_match_the_table_is_refused() -> None:
    with pytest.raises(ValueError):
        remap_ladder(np.zeros((7, 2)), OLD, LAMBDAS)


def test_the_training_recipe_uses_this_ladder() -> None:
    import tomllib

    config = tomllib.loads((Path(__file__).resolve().parents[1] / "training" / "config.toml").read_text())
    assert tuple(config["model"]["lambdas"]) == LAMBDAS
