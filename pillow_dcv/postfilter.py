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

from collections.abc import Callable
from concurrent.futures import Executor
from typing import NamedTuple

import numpy as np

from .container import MAX_FILTER_COEFFICIENT as MAX_COEFFICIENT  # |k|: far beyond any useful filter
from .container import coefficient_groups

BIAS_STEP = 1 / 8  # levels
KERNEL = 5  # the decoder's convolution is always 5x5 (radius 1 leaves the outer ring at zero)


def half_window(radius: int) -> list[tuple[int, int]]:
    """The offsets d that carry a coefficient, in the chunk's order: (0, 0), then raster order of
    the offsets after it (the other half of the window mirrors them)."""
    return [(dy, dx) for dy in range(radius + 1) for dx in range(-radius, radius + 1) if dy > 0 or dx >= 0]


def coefficient_count(radius: int) -> int:
    """Integers in a `fILT` chunk: per output channel, one per (input channel, offset), then a bias."""
    return 3 * (3 * len(half_window(radius)) + 1)


def taps(own_radius: int, cross_radius: int) -> list[list[tuple[int, tuple[int, int]]]]:
    """Per output channel, its (input channel, offset) taps in the chunk's order (spec 4.6): its own
    channel's half-window of own_radius, the other channels' of cross_radius; the bias follows them."""
    return [
        [(ci, d) for ci in range(3) for d in half_window(own_radius if ci == c else cross_radius)] for c in range(3)
    ]


def kernel(radius: int, step_log2: int, coefficients: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `fILT` filter (spec 4.5): every channel's window has the same radius."""
    return class_kernel(radius, radius, step_log2, coefficients)


def class_kernel(
    own_radius: int, cross_radius: int, step_log2: int, coefficients: list[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights (3, 3, 5, 5) and bias (3,), both float32, for the synthesis output in 0..1 units
    (the bias scales with it; the weights do not). The identity is included."""
    k = np.asarray(coefficients, dtype=np.float64)
    step = 2.0**-step_log2
    w = np.zeros((3, 3, KERNEL, KERNEL))
    bias = np.zeros(3)
    c0 = KERNEL // 2
    i = 0
    for c, channel_taps in enumerate(taps(own_radius, cross_radius)):
        w[c, c, c0, c0] = 1.0
        for ci, (dy, dx) in channel_taps:
            w[c, ci, c0 + dy, c0 + dx] += k[i] * step
            if (dy, dx) != (0, 0):
                w[c, ci, c0 - dy, c0 - dx] += k[i] * step
            i += 1
        bias[c] = k[i] * BIAS_STEP / 255.0
        i += 1
    return w.astype(np.float32), bias.astype(np.float32)


class Kernel(NamedTuple):
    """What the runtime's filter takes from a file's `fILT` or `fILC` payload."""

    weights: np.ndarray  # (3n, 3, 5, 5) of its n filters
    bias: np.ndarray  # (3n,)
    threshold: int | None  # the activity between two filters; None for one
    clipped: bool  # whether the filter sees the synthesis output clipped to 0..255 (fILC) or as it is (fILT)


def chunk_kernel(post_filter: dict | None, class_filter: dict | None) -> Kernel | None:
    """The filter of a file's `fILT` or `fILC` payload; None if it has neither."""
    if post_filter is not None:
        weights, bias = kernel(post_filter["radius"], post_filter["step_log2"], post_filter["coefficients"])
        return Kernel(weights, bias, None, clipped=False)
    if class_filter is None:
        return None
    parts = [
        class_kernel(w["own_radius"], w["cross_radius"], w["step_log2"], k)
        for w, k in zip(class_filter["windows"], class_filter["coefficients"])
    ]
    weights, bias = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return Kernel(weights, bias, class_filter["threshold"], clipped=True)


def luma(levels: np.ndarray) -> np.ndarray:
    """L = R + 2G + B (spec 4.6) of 8-bit pixels (H, W, 3), float32 (exact: integers below 2^24)."""
    x = levels.astype(np.float32)
    return x[..., 0] + 2 * x[..., 1] + x[..., 2]


def activity(lum: np.ndarray) -> np.ndarray:
    """The local activity that picks a pixel's class (spec 4.6), (H, W) float32 holding integers, of
    the luma (H, W): the 3x3 sum of its absolute Laplacian, edges repeated."""
    x = np.pad(lum.astype(np.float32), 2, mode="edge")
    lap = x[1:-1, 1:-1] * np.float32(4)  # in place from here on: fewer passes over fresh memory
    for neighbour in (x[:-2, 1:-1], x[2:, 1:-1], x[1:-1, :-2], x[1:-1, 2:]):
        lap -= neighbour
    np.abs(lap, out=lap)
    rows = lap[:, :-2] + lap[:, 1:-1]  # the 3x3 sum as two passes of three
    rows += lap[:, 2:]
    out = rows[:-2] + rows[1:-1]
    out += rows[2:]
    return out


def pick_classes(x_hat: np.ndarray, filtered: np.ndarray, threshold: int) -> np.ndarray:
    """Two filters' outputs (1, 6, H, W) -> (1, 3, H, W), a view of `filtered` (which it overwrites):
    each pixel takes the second's where the activity of the unfiltered synthesis output x_hat (1, 3,
    H, W, already clipped to 0..1), rounded to 8 bits, exceeds the threshold. (numpy: onnxruntime's
    one-channel convolutions took four times as long.)"""
    rounded = x_hat[0] * np.float32(255)
    np.rint(rounded, out=rounded)
    lum = rounded[1] * np.float32(2)
    lum += rounded[0]
    lum += rounded[2]
    picked = filtered[:, :3]  # the first filter's outputs, overwritten where the second's are picked
    np.copyto(picked, filtered[:, 3:], where=activity(lum) > threshold)
    return picked


def einsum_gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^T b (float64) in einsum's own loops, not BLAS: a threaded BLAS GEMM on these thin matrices spins
    for seconds when the cores are busy with other work (0.3 s -> 8 s for a Kodak picture)."""
    return np.einsum("pi,pj->ij", a, b, optimize=False)


def normal_equations(
    decoded: np.ndarray,
    original: np.ndarray,
    radius: int,
    classes: np.ndarray | None = None,
    count: int = 1,
    pool: Executor | None = None,
    gram: Callable[[np.ndarray, np.ndarray], np.ndarray] = einsum_gram,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares statistics of the filter's correction on a picture, per class of pixels (`classes`,
    (H, W) of 0..count-1; None: one class): H = A^T A (count, F, F), G = A^T R (count, F, 3) and the
    sums of R^2 (count, 3), with A the features (the offset pairs of every channel, then 1) and R the
    residual original - decoded, all in levels. Computed in strips of 64 rows, so memory stays small;
    with a `pool`, strips are its tasks (the sums are still added in strip order: the same numbers).
    `gram(a, b)` computes a^T b in float64 (the codec's is onnxruntime's, ~6x einsum's loops)."""
    offsets = half_window(radius)
    h, w, _ = decoded.shape
    x = np.pad(decoded.astype(np.float32), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    n_feat = 3 * len(offsets) + 1

    def strip(y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        bounds = [0, len(a)]
        if classes is not None:  # the pixels of each class together, in one copy
            labels = classes[y0:y1].ravel()
            order = np.argsort(labels, kind="stable")
            a, r = a[order], r[order]
            bounds = np.concatenate(([0], np.cumsum(np.bincount(labels, minlength=count)))).tolist()
        hh, gg, rr = np.zeros((count, n_feat, n_feat)), np.zeros((count, n_feat, 3)), np.zeros((count, 3))
        for k in range(count):
            ak, rk = a[bounds[k] : bounds[k + 1]], r[bounds[k] : bounds[k + 1]]
            if len(ak):
                hh[k] = gram(ak, ak)
                gg[k] = gram(ak, rk)
                rr[k] = np.sum(rk * rk, axis=0)
        return hh, gg, rr

    hh, gg, rr = np.zeros((count, n_feat, n_feat)), np.zeros((count, n_feat, 3)), np.zeros((count, 3))
    for sh, sg, sr in (pool.map if pool is not None else map)(strip, range(0, h, 64)):
        hh += sh
        gg += sg
        rr += sr
    return hh, gg, rr


def restrict(hh: np.ndarray, gg: np.ndarray, radius: int, to_radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The statistics of a smaller window taken from a larger window's: its offsets' pair sums are the
    same features (the edge is replicated either way), so one pass over the picture serves both."""
    idx = feature_indices(radius, [(ci, d) for ci in range(3) for d in half_window(to_radius)])
    return hh[np.ix_(idx, idx)], gg[idx]


def feature_indices(radius: int, channel_taps: list[tuple[int, tuple[int, int]]]) -> list[int]:
    """Where taps (and then the bias) sit among the features of `normal_equations` at `radius`."""
    offsets = half_window(radius)
    return [ci * len(offsets) + offsets.index(d) for ci, d in channel_taps] + [3 * len(offsets)]


def fit_class(
    hh: np.ndarray, gg: np.ndarray, rr: np.ndarray, radius: int, own_radius: int, cross_radius: int, step_log2: int
) -> tuple[list[int], float]:
    """One class's coefficients in the chunk's order (spec 4.6) from its statistics at `radius`, and the
    squared error left after them. Each output channel has its own taps, so its own least squares."""
    coefficients, error = [], 0.0
    for c, channel_taps in enumerate(taps(own_radius, cross_radius)):
        idx = feature_indices(radius, channel_taps)
        hc, gc = hh[np.ix_(idx, idx)], gg[idx][:, [c]]
        k = quantised_fit(hc, gc, step_log2)
        coefficients += [int(v) for v in k[0]]
        error += squared_error(hc, gc, float(rr[c]), k, step_log2)
    return coefficients, error


def golomb_orders(own_radius: int, cross_radius: int, coefficients: list[int]) -> tuple[list[int], int]:
    """The Exp-Golomb order (0..7) of each group that codes a class's coefficients in the fewest bits,
    and that count of bits (spec 4.6)."""
    groups = np.asarray(coefficient_groups(own_radius, cross_radius))
    u = np.abs(2 * np.asarray(coefficients, dtype=np.int64) + (np.asarray(coefficients) < 0))  # zigzag
    orders, total = [], 0
    for g in range(5):
        ug = u[groups == g]
        lengths = [int(np.sum(2 * _bit_length(ug + (1 << m)) - 1 - m)) for m in range(8)]
        orders.append(int(np.argmin(lengths)))
        total += min(lengths)
    return orders, total


def _bit_length(v: np.ndarray) -> np.ndarray:
    return np.floor(np.log2(v)).astype(np.int64) + 1


def ridged(hh: np.ndarray) -> np.ndarray:
    """H with a small ridge on its diagonal: a flat picture leaves H singular."""
    n = hh.shape[0]
    return hh + np.eye(n) * (1e-6 * np.trace(hh) / n + 1e-9)


def least_squares_gain(hh: np.ndarray, gg: np.ndarray) -> float:
    """The squared error that the unquantised least-squares filter of statistics hh, gg takes off."""
    return float(np.sum(gg * np.linalg.solve(ridged(hh), gg)))


def quantised_fit(hh: np.ndarray, gg: np.ndarray, step_log2: int) -> np.ndarray:
    """Integer coefficients (C, F) of the least-squares correction, rounded one at a time while the
    ones not yet rounded absorb the error in the metric H (optimal brain surgeon, as in GPTQ): plain
    rounding at a usable step loses most of the gain, because neighbouring pixels are so alike."""
    n = hh.shape[0]
    ridge = ridged(hh)
    step = np.full(n, 2.0**-step_log2)
    step[-1] = BIAS_STEP
    out = np.zeros((gg.shape[1], n), dtype=np.int64)
    w = np.linalg.solve(ridge, gg)  # (F, C): channels with the same taps share H, so they are rounded together
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
    """Sum of squared errors (levels^2) after the correction with integer coefficients k (C, F), before
    rounding to 8 bits: ||R - A w||^2 = sum R^2 - 2 w^T G + w^T H w, channel by channel (G is (F, C))."""
    step = np.full(hh.shape[0], 2.0**-step_log2)
    step[-1] = BIAS_STEP
    w = k * step  # (3, F)
    return rr - 2 * float(np.sum(w.T * gg)) + float(np.einsum("cf,fg,cg->", w, hh, w))
