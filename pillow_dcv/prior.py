"""Integer-exact hyper-synthesis: the path that gives the entropy decoder its tables.

Float networks are not bit-reproducible across CPUs, BLAS builds, thread counts or onnxruntime
optimisation levels, and one flipped table index corrupts the rest of a stream. So this path
uses integer weights and integer activations evaluated as floating-point matrix products in which
every product and every partial sum is an integer the type represents exactly: below 2**24 in
float32, below 2**53 in float64. Then the result is exact whatever the summation order, FMA or
SIMD. Each layer uses float32 (twice as fast) when a bound computed from its weights proves it
exact, float64 otherwise. Requantisation divides by powers of two with round-half-up (also
exact), and scale indices come from integer thresholds. See spec/format.md section 6.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]
DEFAULT_ACTIVATION_MAX = 2**16 - 1  # models without `hs_activation_max` (dcv-ms2-s03 and older)
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53


def _phase_taps(k: int, r: int) -> list[tuple[int, int]]:
    """(kernel tap, input offset) pairs that reach output phase r of a stride-2 transposed
    convolution with padding k // 2: output 2j + r sums input j + offset times tap."""
    p = k // 2
    return [(t, (r + p - t) // 2) for t in range(k) if (t - r - p) % 2 == 0]


class _Layer:
    """One layer as im2col GEMMs. A stride-2 transposed convolution is split into its four output
    phases (polyphase): each is an ordinary convolution of the input, so no output is scattered."""

    def __init__(self, kind: str, w: np.ndarray, b: np.ndarray, shift: int, last: bool) -> None:
        self.kind, self.shift, self.last = kind, shift, last
        k = w.shape[-1]
        if kind == "deconv":
            self.out_channels = w.shape[1]
            self.phases = []  # ((row offsets), (column offsets), matrix) for phases (0,0), (0,1), (1,0), (1,1)
            for rh in (0, 1):
                for rw in (0, 1):
                    th, tw = _phase_taps(k, rh), _phase_taps(k, rw)
                    taps = w[:, :, [t for t, _ in th]][:, :, :, [t for t, _ in tw]]  # (C, O, a, e)
                    matrix = taps.transpose(1, 0, 2, 3).reshape(self.out_channels, -1)
                    self.phases.append(([s for _, s in th], [s for _, s in tw], matrix))
            self.pad = max(abs(s) for r in (0, 1) for _, s in _phase_taps(k, r))
        else:
            self.out_channels = w.shape[0]
            offsets = [a - k // 2 for a in range(k)]
            self.phases = [(offsets, offsets, w.reshape(self.out_channels, -1))]
            self.pad = k // 2
        # the largest sum of |weights| that reaches one output
        self.row_l1 = max(int(np.abs(m.astype(np.int64)).sum(axis=1).max()) for _, _, m in self.phases)
        self.bias = b
        self.dtype = np.float64

    def choose_dtype(self, input_max: int) -> None:
        """float32 when |every partial sum| < 2**24: sum|w| * max|x| + |bias| + rounding offset."""
        rounding = 2 ** (self.shift - 1) if self.shift > 0 and not self.last else 0
        bound = self.row_l1 * input_max + int(np.abs(self.bias).max()) + rounding
        if bound >= FLOAT64_EXACT:
            raise ValueError("integer prior: accumulator bound exceeds 2**53")
        self.dtype = np.float32 if bound < FLOAT32_EXACT else np.float64
        self.phases = [(rows, cols, m.astype(self.dtype)) for rows, cols, m in self.phases]
        self.bias = self.bias.astype(self.dtype)[:, None]

    def __call__(self, x: np.ndarray, matmul: MatMul) -> np.ndarray:
        c, h, w = x.shape
        xp = np.pad(x.astype(self.dtype, copy=False), ((0, 0), (self.pad, self.pad), (self.pad, self.pad)))
        outs = []
        for rows, cols, matrix in self.phases:
            patches = np.empty((c, len(rows), len(cols), h, w), dtype=self.dtype)
            for a, dy in enumerate(rows):
                for e, dx in enumerate(cols):
                    patches[:, a, e] = xp[:, self.pad + dy : self.pad + dy + h, self.pad + dx : self.pad + dx + w]
            outs.append(matmul(matrix, patches.reshape(-1, h * w)) + self.bias)
        if self.kind == "conv":
            return outs[0].reshape(self.out_channels, h, w)
        # phase (rh, rw) holds output rows 2j + rh and columns 2i + rw
        out = np.stack(outs).reshape(2, 2, self.out_channels, h, w).transpose(2, 3, 0, 4, 1)
        return out.reshape(self.out_channels, 2 * h, 2 * w)


def requantise(acc: np.ndarray, shift: int) -> np.ndarray:
    """floor(acc / 2**shift + 1/2), exact for integer-valued input."""
    if shift <= 0:
        return acc * acc.dtype.type(2 ** (-shift))
    return np.floor((acc + acc.dtype.type(2 ** (shift - 1))) * acc.dtype.type(2.0**-shift))


class IntegerHyperSynthesis:
    """Layers as exported by training/export.py: (kind, weight, bias, shift) with ReLU between.

    `matmul` computes the GEMMs (numpy's by default); any correct implementation gives the same
    integers, which is why the runtime may hand them to onnxruntime's thread pool.
    """

    def __init__(self, params: dict[str, np.ndarray], matmul: MatMul = np.matmul) -> None:
        self.matmul = matmul
        count = int(params["hs_layers"])
        self.layers = [
            (str(params[f"hs{i}_kind"]), params[f"hs{i}_w"], params[f"hs{i}_b"], int(params[f"hs{i}_shift"]))
            for i in range(count)
        ]
        self.activation_max = int(params.get("hs_activation_max", DEFAULT_ACTIVATION_MAX))
        self.output_frac_bits = int(params["hs_out_frac_bits"])
        self.scale_thresholds = params["scale_thresholds"].astype(np.int64)
        # the largest |z| the z tables can produce bounds the first layer's input
        z_lo = params["z_offsets"].astype(np.int64)
        z_hi = z_lo + params["z_lengths"].astype(np.int64) - 1
        input_max = int(max(np.abs(z_lo).max(), np.abs(z_hi).max()))
        self._gemms = []
        for n, (kind, w, b, shift) in enumerate(self.layers):
            layer = _Layer(kind, w, b, shift, last=n == count - 1)
            layer.choose_dtype(input_max)
            self._gemms.append(layer)
            input_max = self.activation_max

    @property
    def dtypes(self) -> list[str]:
        return [layer.dtype.__name__ for layer in self._gemms]

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z: (Cz, h, w) integers -> (mu as exact dyadic float64, scale index int64), each (M, 4h, 4w)."""
        x = z
        for layer in self._gemms[:-1]:
            x = np.clip(requantise(layer(x, self.matmul), layer.shift), 0, self.activation_max)  # ReLU, bound
        acc = self._gemms[-1](x, self.matmul)
        scale_acc, mu_acc = np.split(acc, 2, axis=0)
        mu = mu_acc.astype(np.float64) * (2.0**-self.output_frac_bits)
        index = np.searchsorted(self.scale_thresholds, scale_acc.astype(np.int64), side="right")
        return mu, index.astype(np.int64)
