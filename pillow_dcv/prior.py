"""Integer-exact hyper-synthesis: the path that gives the entropy decoder its tables.

Float networks are not bit-reproducible across CPUs, BLAS builds, thread counts or onnxruntime
optimisation levels, and one flipped table index corrupts the rest of a stream. So this path
uses integer weights and integer activations evaluated as float64 matrix products: every
product and every partial sum is an integer below 2**53, hence exact whatever the summation
order, FMA or SIMD. Requantisation divides by powers of two with round-half-up (also exact),
and scale indices come from integer thresholds. See spec/format.md section 6.
"""

from __future__ import annotations

import numpy as np

# Activations are clipped to this many bits; with int16 weights and at most 25 * 512 terms per
# sum, |accumulator| < 2**16 * 2**15 * 12800 < 2**45, far below 2**53.
ACTIVATION_BITS = 16


def _pad(x: np.ndarray, p: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (p, p), (p, p)))


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Stride-1 'same' convolution. x: (C, H, W) float64 integers; w: (O, C, k, k)."""
    o, c, k, _ = w.shape
    _, h, wd = x.shape
    xp = _pad(x, k // 2)
    cols = np.empty((c, k, k, h, wd), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = xp[:, i : i + h, j : j + wd]
    out = w.reshape(o, -1) @ cols.reshape(c * k * k, h * wd)
    return out.reshape(o, h, wd) + bias[:, None, None]


def conv_transpose2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int = 2) -> np.ndarray:
    """ConvTranspose2d(k, stride, padding=k//2, output_padding=stride-1). w: (C, O, k, k).

    One matrix product gives every output contribution; a col2im of k*k shifted additions places
    them. Each addition adds integers, so the order does not matter.
    """
    c, o, k, _ = w.shape
    _, h, wd = x.shape
    contrib = (w.reshape(c, o * k * k).T @ x.reshape(c, h * wd)).reshape(o, k, k, h, wd)
    full = np.zeros((o, stride * (h - 1) + k + stride, stride * (wd - 1) + k + stride), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            full[:, i : i + stride * h : stride, j : j + stride * wd : stride] += contrib[:, i, j]
    p = k // 2
    return full[:, p : p + stride * h, p : p + stride * wd] + bias[:, None, None]


def requantise(acc: np.ndarray, shift: int) -> np.ndarray:
    """floor(acc / 2**shift + 1/2), exact for integer-valued float64 input."""
    if shift <= 0:
        return acc * float(2 ** (-shift))
    return np.floor((acc + float(2 ** (shift - 1))) * (2.0**-shift))


class IntegerHyperSynthesis:
    """Layers as exported by training/export.py: (kind, weight, bias, shift) with ReLU between."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        self.layers = []
        count = int(params["hs_layers"])
        for i in range(count):
            self.layers.append(
                (
                    str(params[f"hs{i}_kind"]),
                    params[f"hs{i}_w"].astype(np.float64),
                    params[f"hs{i}_b"].astype(np.float64),
                    int(params[f"hs{i}_shift"]),
                )
            )
        self.output_frac_bits = int(params["hs_out_frac_bits"])
        self.scale_thresholds = params["scale_thresholds"].astype(np.int64)

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z: (Cz, h, w) integers -> (mu as exact dyadic float64, scale index int64), each (M, 4h, 4w)."""
        x = z.astype(np.float64)
        limit = float(2**ACTIVATION_BITS - 1)
        for n, (kind, w, b, shift) in enumerate(self.layers):
            acc = conv_transpose2d(x, w, b) if kind == "deconv" else conv2d(x, w, b)
            if n == len(self.layers) - 1:
                break
            x = np.clip(requantise(acc, shift), 0.0, limit)  # ReLU and a hard bound
        scale_acc, mu_acc = np.split(acc, 2, axis=0)
        mu = mu_acc * (2.0**-self.output_frac_bits)
        index = np.searchsorted(self.scale_thresholds, scale_acc.astype(np.int64), side="right")
        return mu, index.astype(np.int64)
