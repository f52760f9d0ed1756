"""Quality ladders: the lambda per quality 1..8 that the gain vectors are trained for (numpy only)."""

from __future__ import annotations

import numpy as np

# Models up to dcv-ms2-s08 were trained with CompressAI's ladder (0.25-1.78 bpp on Kodak); a checkpoint
# whose config names no ladder used that one.
COMPRESSAI_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.18)
# From session 8: ~0.1-1.5 bpp on Kodak, the range issue #4 asks for (geometric, ratio ~2.19).
LAMBDAS = tuple(round(0.0004 * (0.095 / 0.0004) ** (i / 7), 6) for i in range(8))


def remap_ladder(
    table: np.ndarray, old: tuple[float, ...], new: tuple[float, ...], extrapolate: bool = True
) -> np.ndarray:
    """Rows of a per-quality table (e.g. log gains, one row per quality) for a new lambda ladder.

    Linear in log(lambda) between the old rows. Outside them the nearest segment's slope continues
    (per channel: the learned log gains are close to linear in log(lambda), slope ~0.5), or the
    nearest row is repeated when ``extrapolate`` is false (e.g. for optimizer moments).
    """
    x_old = np.log(np.asarray(old, dtype=np.float64))
    if np.any(np.diff(x_old) <= 0) or len(x_old) != len(table):
        raise ValueError("old ladder must be increasing and have one lambda per table row")
    rows = []
    for x in np.log(np.asarray(new, dtype=np.float64)):
        k = int(np.clip(np.searchsorted(x_old, x), 1, len(old) - 1)) - 1
        t = (x - x_old[k]) / (x_old[k + 1] - x_old[k])
        if not extrapolate:
            t = min(max(t, 0.0), 1.0)
        rows.append((1 - t) * table[k] + t * table[k + 1])
    return np.stack(rows).astype(table.dtype)
