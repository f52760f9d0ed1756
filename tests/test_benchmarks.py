"""The rate-distortion benchmark's arithmetic (BD-rate, rate at equal PSNR) on curves with known answers."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from rd_benchmark import Average, bd_rate, point_table, rate_at  # noqa: E402

# An anchor curve, log-rate linear in PSNR: rate doubles every 3 dB
PSNR = np.array([28.0, 30.0, 32.0, 34.0, 36.0])
RATE = 0.5 * 2 ** ((PSNR - 32.0) / 3.0)


def test_a_curve_that_needs_ten_percent_more_bits_everywhere_is_plus_ten_percent() -> None:
    assert bd_rate(RATE, PSNR, RATE * 1.1, PSNR) == pytest.approx(10.0, abs=1e-6)
    assert bd_rate(RATE * 1.1, PSNR, RATE, PSNR) == pytest.approx(100 / 1.1 - 100, abs=1e-6)


def test_rate_at_reads_the_fitted_curve_inside_its_range_only() -> None:
    assert rate_at(RATE, PSNR, 33.5) == pytest.approx(0.5 * 2**0.5, rel=1e-9)
    assert math.isnan(rate_at(RATE, PSNR, 36.5))
    assert math.isnan(rate_at(RATE[:3], PSNR[:3], 29.0))  # a cubic needs four points


def test_point_table_gives_each_setting_its_rate_against_the_anchor() -> None:
    def avg(codec: str, setting: float, bpp: float, psnr: float) -> Average:
        return Average(codec, "quality", setting, 24, bpp, psnr, 0.9, 10.0, 1.0, 1.0, 1.0)

    avgs = [avg("AVIF", q, r, p) for q, r, p in zip(range(5), RATE, PSNR)]
    avgs += [avg("DCV", 1, 0.5 * 2 ** (-1 / 3) * 0.8, 31.0), avg("DCV", 2, 2.0, 38.0)]
    table = point_table(avgs)
    assert "| 1 | 0.317 | 31.00 | -20.0 % |" in table
    assert "| 2 | 2.000 | 38.00 | n/a |" in table
