"""A per-picture linear filter after the synthesis (spec section 4.5, the `fILT` chunk).

Like a classical codec's adaptive loop filter: the encoder solves least squares between its own
decoded picture and the original, and sends the coefficients; the decoder convolves the synthesis
output with them. The synthesis is trained for the average photo, and one picture's residual blur
or colour shift is often linearly correctable (about +0.1 to +0.2 dB, training/LOG.md session 21).

The filter is point-symmetric and mixes the three channels: output channel c at pixel p is

    x_c(p) + b_c + sum over input channels c' and half-window offsets d of
                   k[c, c', d] * step * (x_c'(p + d) + x_c'(p - d))   (d = 0 counted once)

with x the synthesis output in levels (0..255), replicated beyond the padded picture's edges.
"""

from __future__ import annotations

import numpy as np

from .container import MAX_FILTER_COEFFICIENT as MAX_COEFFICIENT  # |k|: far beyond any useful filter

BIAS_STEP = 1 / 8  # levels
KERNEL = 5  # the decoder's convolution is always 5x5 (radius 1 leaves the outer ring at zero)


def half_window(radius: int) -> list[tuple[int, int]]:
    """The offsets d that carry a coefficient, in the chunk's order: (0, 0), then raster order of
    the offsets after it (the other half of the window mirrors them)."""
    return [(dy, dx) for dy in range(radius + 1) for dx in range(-radius, radius + 1) if dy > 0 or dx >= 0]


def coefficient_count(radius: int) -> int:
    """Integers in a `fILT` chunk: per output channel, one per (input channel, offset), then a bias."""
    return 3 * (3 * len(half_window(radius)) + 1)


def kernel(radius: int, step_log2: int, coefficients: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights (3, 3, 5, 5) and bias (3,), both float32, for the synthesis output in 0..1 units
    (the bias scales with it; the weights do not). The identity is included."""
    offsets = half_window(radius)
    k = np.asarray(coefficients, dtype=np.float64).reshape(3, 3 * len(offsets) + 1)
    step = 2.0**-step_log2
    w = np.zeros((3, 3, KERNEL, KERNEL))
    c0 = KERNEL // 2
    for c in range(3):
        w[c, c, c0, c0] = 1.0
        for ci in range(3):
            for j, (dy, dx) in enumerate(offsets):
                v = k[c, ci * len(offsets) + j] * step
                w[c, ci, c0 + dy, c0 + dx] += v
                if (dy, dx) != (0, 0):
                    w[c, ci, c0 - dy, c0 - dx] += v
    bias = k[:, -1] * BIAS_STEP / 255.0
    return w.astype(np.float32), bias.astype(np.float32)


def normal_equations(decoded: np.ndarray, original: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares statistics of the filter's correction on a picture: H = A^T A (F x F), G = A^T R
    (F x 3) and sum(R^2), with A the features (the offset pairs of every channel, then 1) and R the
    residual original - decoded, all in levels. Computed in strips, so memory stays small."""
    offsets = half_window(radius)
    h, w, _ = decoded.shape
    x = np.pad(decoded.astype(np.float32), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    n_feat = 3 * len(offsets) + 1
    hh = np.zeros((n_feat, n_feat))
    gg = np.zeros((n_feat, 3))
    rr = 0.0
    for y0 in range(0, h, 64):
        y1 = min(h, y0 + 64)
        cols = []
        for ci in range(3):
            for dy, dx in offsets:
                v = x[radius + y0 + dy : radius + y1 + dy, radius + dx : radius + dx + w, ci]
                if (dy, dx) != (0, 0):
                    v = v + x[radius + y0 - dy : radius + y1 - dy, radius - dx : radius - dx + w, ci]
                cols.append(v.ravel())
        cols.append(np.ones((y1 - y0) * w, dtype=np.float32))
        a = np.stack(cols, axis=1).astype(np.float64)
        r = (original[y0:y1].astype(np.float64) - decoded[y0:y1]).reshape(-1, 3)
        # einsum's own loops, not BLAS: a threaded BLAS GEMM on these thin matrices spins for seconds when
        # the cores are busy with other work (0.3 s -> 8 s for a Kodak picture); idle, einsum costs ~0.3 s more
        hh += np.einsum("pi,pj->ij", a, a, optimize=False)
        gg += np.einsum("pi,pc->ic", a, r, optimize=False)
        rr += float(np.sum(r * r))
    return hh, gg, rr


def restrict(hh: np.ndarray, gg: np.ndarray, radius: int, to_radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The statistics of a smaller window taken from a larger window's: its offsets' pair sums are the
    same features (the edge is replicated either way), so one pass over the picture serves both."""
    offsets = half_window(radius)
    keep = [i for i, d in enumerate(offsets) if max(abs(d[0]), abs(d[1])) <= to_radius]
    idx = [c * len(offsets) + i for c in range(3) for i in keep] + [hh.shape[0] - 1]
    return hh[np.ix_(idx, idx)], gg[idx]


def quantised_fit(hh: np.ndarray, gg: np.ndarray, step_log2: int) -> np.ndarray:
    """Integer coefficients (3, F) of the least-squares correction, rounded one at a time while the
    ones not yet rounded absorb the error in the metric H (optimal brain surgeon, as in GPTQ): plain
    rounding at a usable step loses most of the gain, because neighbouring pixels are so alike."""
    n = hh.shape[0]
    ridge = hh + np.eye(n) * (1e-6 * np.trace(hh) / n)  # a flat picture leaves H singular
    step = np.full(n, 2.0**-step_log2)
    step[-1] = BIAS_STEP
    out = np.zeros((3, n), dtype=np.int64)
    w = np.linalg.solve(ridge, gg)  # (F, 3): the three channels share H, so they are rounded together
    hinv = np.linalg.inv(ridge)
    for i in range(n):
        k = np.clip(np.rint(w[i] / step[i]), -MAX_COEFFICIENT, MAX_COEFFICIENT)
        out[:, i] = k
        err = w[i] - k * step[i]
        rest = slice(i + 1, None)
        w[rest] -= np.outer(hinv[i, rest] / hinv[i, i], err)
        hinv[rest, rest] -= np.outer(hinv[rest, i], hinv[i, rest]) / hinv[i, i]
    return out


def squared_error(hh: np.ndarray, gg: np.ndarray, rr: float, k: np.ndarray, step_log2: int) -> float:
    """Sum of squared errors (levels^2) after the correction with integer coefficients k (3, F), before
    rounding to 8 bits: ||R - A w||^2 = sum R^2 - 2 w^T G + w^T H w, channel by channel."""
    step = np.full(hh.shape[0], 2.0**-step_log2)
    step[-1] = BIAS_STEP
    w = k * step  # (3, F)
    return rr - 2 * float(np.sum(w.T * gg)) + float(np.einsum("cf,fg,cg->", w, hh, w))
