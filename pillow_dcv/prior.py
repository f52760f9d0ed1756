"""Integer-exact hyper-synthesis: the path that gives the entropy decoder its tables.

Float networks are not bit-reproducible across CPUs, BLAS builds, thread counts or onnxruntime
optimisation levels, and one flipped table index corrupts the rest of a stream. So this path
uses integer weights and integer activations evaluated as floating-point matrix products in which
every product and every partial sum is an integer the type represents exactly: below 2**24 in
float32, below 2**53 in float64. Then the result is exact whatever the summation order, FMA or
SIMD. Each layer uses float32 (twice as fast) when a bound computed from its weights proves it
exact, float64 otherwise. Requantisation divides by powers of two with round-half-up (also
exact), and scale indices come from integer thresholds. The checkerboard context model, which
corrects the tables of half the latents from the decoded other half, is built the same way.
See spec/format.md section 6.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]
Update = Callable[[np.ndarray, np.ndarray], np.ndarray]
DEFAULT_ACTIVATION_MAX = 2**16 - 1  # models without `hs_activation_max` (dcv-ms2-s03 and older)
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53


def _phase_taps(k: int, r: int) -> list[tuple[int, int]]:
    """(kernel tap, input offset) pairs that reach output phase r of a stride-2 transposed
    convolution with padding k // 2: output 2j + r sums input j + offset times tap."""
    p = k // 2
    return [(t, (r + p - t) // 2) for t in range(k) if (t - r - p) % 2 == 0]


def sum_bounds(row_l1: np.ndarray, input_max: int, bias: np.ndarray, shift: int, last: bool) -> np.ndarray:
    """Per output row, the largest |partial sum|: sum|w| * max|x| + |bias| + rounding offset."""
    rounding = 2 ** (shift - 1) if shift > 0 and not last else 0
    bound = np.asarray(row_l1, dtype=np.int64) * input_max + np.abs(np.asarray(bias, dtype=np.int64)) + rounding
    if bound.max() >= FLOAT64_EXACT:
        raise ValueError("integer prior: accumulator bound exceeds 2**53")
    return bound


def exact_dtype(row_l1: int, input_max: int, bias: np.ndarray, shift: int, last: bool) -> type:
    """float32 when |every partial sum| < 2**24 in every row, float64 otherwise."""
    bound = sum_bounds(np.full(len(bias), row_l1), input_max, bias, shift, last)
    return np.float32 if bound.max() < FLOAT32_EXACT else np.float64


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
        # per output, the largest sum of |weights| that reaches it
        self.rows_l1 = np.max([np.abs(m.astype(np.int64)).sum(axis=1) for _, _, m in self.phases], axis=0)
        self.bias = b
        self.dtype = np.float64
        self.float32_rows = None  # a split layer: these outputs in float32, the others in float64

    def choose_dtype(self, input_max: int) -> None:
        bound = sum_bounds(self.rows_l1, input_max, self.bias, self.shift, self.last)
        fits = bound < FLOAT32_EXACT
        self.dtype = np.float32 if fits.all() else np.float64
        if self.dtype == np.float64 and fits.any():
            # Rows proven exact in float32 get a float32 GEMM of their own: the same integers, and
            # most of the work at float32 speed (the last hyper-synthesis layer: ~70 % of its rows).
            self.float32_rows, self.float64_rows = np.flatnonzero(fits), np.flatnonzero(~fits)
            self.split_phases = [
                (m[self.float32_rows].astype(np.float32), m[self.float64_rows].astype(np.float64))
                for _, _, m in self.phases
            ]
            self.split_bias = (
                self.bias[self.float32_rows].astype(np.float32)[:, None],
                self.bias[self.float64_rows].astype(np.float64)[:, None],
            )
        self.phases = [(rows, cols, m.astype(self.dtype)) for rows, cols, m in self.phases]
        self.bias = self.bias.astype(self.dtype)[:, None]

    def _gemm(self, phase: int, patches: np.ndarray, matmul: MatMul) -> np.ndarray:
        if self.float32_rows is None:
            out = matmul(self.phases[phase][2], patches)
            out += self.bias
            return out
        (m32, m64), (b32, b64) = self.split_phases[phase], self.split_bias
        out = np.empty((self.out_channels, patches.shape[1]), dtype=np.float64)
        out[self.float32_rows] = matmul(m32, patches.astype(np.float32)) + b32
        out[self.float64_rows] = matmul(m64, patches) + b64
        return out

    def __call__(self, x: np.ndarray, matmul: MatMul) -> np.ndarray:
        c, h, w = x.shape
        if self.pad == 0 and self.kind == "conv":  # 1x1: the input is its own patch matrix
            return self._gemm(0, x.reshape(c, h * w).astype(self.dtype, copy=False), matmul).reshape(-1, h, w)
        xp = np.pad(x.astype(self.dtype, copy=False), ((0, 0), (self.pad, self.pad), (self.pad, self.pad)))
        if self.kind == "deconv":  # phase (rh, rw) holds output rows 2j + rh and columns 2i + rw
            out = np.empty((self.out_channels, h, 2, w, 2), dtype=self.dtype)  # a split layer is float64
        for n, (rows, cols, _) in enumerate(self.phases):
            patches = np.empty((c, len(rows), len(cols), h, w), dtype=self.dtype)
            for a, dy in enumerate(rows):
                for e, dx in enumerate(cols):
                    patches[:, a, e] = xp[:, self.pad + dy : self.pad + dy + h, self.pad + dx : self.pad + dx + w]
            result = self._gemm(n, patches.reshape(-1, h * w), matmul).reshape(self.out_channels, h, w)
            if self.kind == "conv":
                return result
            out[:, :, n // 2, :, n % 2] = result
        return out.reshape(self.out_channels, 2 * h, 2 * w)


def requantise_(acc: np.ndarray, shift: int) -> np.ndarray:
    """floor(acc / 2**shift + 1/2), exact for integer-valued input, in place on a float array the
    caller owns (temporaries the size of a layer's output cost more than the arithmetic)."""
    if shift <= 0:
        acc *= acc.dtype.type(2 ** (-shift))
    else:
        acc += acc.dtype.type(2 ** (shift - 1))
        acc *= acc.dtype.type(2.0**-shift)
        np.floor(acc, out=acc)
    return acc


def requantise_clip_(acc: np.ndarray, shift: int, low: int, high: int) -> np.ndarray:
    """clip(requantise_(acc, shift), low, high), in place."""
    return np.clip(requantise_(acc, shift), low, high, out=acc)


def requantise_int(acc: np.ndarray, shift: int) -> np.ndarray:
    """requantise_() on int64: an arithmetic right shift of acc + 2**(shift - 1), or a left shift."""
    return (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc << -shift


def anchor_mask(h: int, w: int) -> np.ndarray:
    """Checkerboard: positions (i + j) even are anchors, coded before the others."""
    return (np.add.outer(np.arange(h), np.arange(w)) % 2) == 0


def checkerboard_taps(k: int) -> list[tuple[int, int]]:
    """Offsets of a k x k kernel that reach anchors from a non-anchor: (dy + dx) odd."""
    r = range(-(k // 2), k // 2 + 1)
    return [(dy, dx) for dy in r for dx in r if (dy + dx) % 2]


# A tile's latent has even height and width (tiles are multiples of 64 pixels), so anchors and
# non-anchors are each two strided phases of it: (row, column) parity (0, 0) and (1, 1) for the
# anchors, (0, 1) and (1, 0) for the others. Strided slices avoid any fancy indexing.
ANCHOR_PHASES = ((0, 0), (1, 1))
OTHER_PHASES = ((0, 1), (1, 0))


ALL_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


class Part:
    """The positions of one coding stage: channels [first, stop) of an (M, h, w) latent, at the
    anchors, at the others, or everywhere. take() and put() read and write them in (channel, row,
    column) order, the order of section 7.3, as boolean indexing with mask() would, but as strided
    slices: a checkerboard row holds every other column, starting at the row's parity."""

    def __init__(self, first: int, stop: int, where: str) -> None:
        if where not in ("all", "anchors", "others"):
            raise ValueError(f"unknown part {where!r}")
        self.channels, self.where = slice(first, stop), where

    def __repr__(self) -> str:
        return f"Part({self.channels.start}, {self.channels.stop}, {self.where!r})"

    def mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        m, h, w = shape
        out = np.zeros(shape, dtype=bool)
        anchors = anchor_mask(h, w)
        out[self.channels] = {"all": True, "anchors": anchors, "others": ~anchors}[self.where]
        return out

    def _columns(self) -> tuple[int, int]:  # first column on even rows, on odd rows
        return (0, 1) if self.where == "anchors" else (1, 0)

    def take(self, a: np.ndarray) -> np.ndarray:
        """a[mask] for an (M, h, w) array: a copy, flat."""
        a = a[self.channels]
        if self.where == "all":
            return a.ravel()
        even, odd = self._columns()
        return np.stack([a[:, 0::2, even::2], a[:, 1::2, odd::2]], axis=2).ravel()

    def put(self, a: np.ndarray, values: np.ndarray) -> None:
        """a[mask] = values."""
        a = a[self.channels]
        if self.where == "all":
            a[...] = values.reshape(a.shape)
            return
        even, odd = self._columns()
        c, h, w = a.shape
        v = values.reshape(c, h // 2, 2, w // 2)
        a[:, 0::2, even::2] = v[:, :, 0]
        a[:, 1::2, odd::2] = v[:, :, 1]


class _PhaseConv:
    """A k x k convolution of an input known only at some phases of the latent's 2x2 grid (zeros
    elsewhere), evaluated at some phases only. Just the taps that reach a known input count: for the
    checkerboard context (anchors in, non-anchors out) half the taps and a quarter of the work."""

    def __init__(
        self, w: np.ndarray, b: np.ndarray, shift: int, input_max: int,
        in_phases: tuple[tuple[int, int], ...], out_phases: tuple[tuple[int, int], ...],
    ) -> None:
        self.shift, self.in_phases, self.out_phases = shift, in_phases, out_phases
        self.pad = w.shape[-1] // 2
        r = range(-self.pad, self.pad + 1)
        reach = [{(dy, dx) for dy in r for dx in r if ((a + dy) % 2, (e + dx) % 2) in in_phases} for a, e in out_phases]
        if any(taps != reach[0] for taps in reach):
            raise ValueError("output phases that see different taps")
        self.taps = sorted(reach[0])
        taps = np.stack([w[:, :, self.pad + dy, self.pad + dx] for dy, dx in self.taps], axis=2)  # (O, C, T)
        matrix = taps.reshape(w.shape[0], -1)
        row_l1 = int(np.abs(matrix.astype(np.int64)).sum(axis=1).max())
        self.dtype = exact_dtype(row_l1, input_max, b, shift, last=False)
        self.matrix = matrix.astype(self.dtype)
        self.bias = b.astype(self.dtype)[:, None]

    def __call__(self, inputs: list[np.ndarray], matmul: MatMul) -> np.ndarray:
        """inputs: the input at each of in_phases, each (C, h/2, w/2) -> (O, n) at out_phases, one
        phase after the other, each in raster order."""
        c, h2, w2 = inputs[0].shape
        p = self.pad
        xp = np.zeros((c, 2 * h2 + 2 * p, 2 * w2 + 2 * p), dtype=self.dtype)
        for (r, q), x in zip(self.in_phases, inputs):
            xp[:, p + r : p + r + 2 * h2 : 2, p + q : p + q + 2 * w2 : 2] = x
        patches = np.empty((c, len(self.taps), len(self.out_phases), h2, w2), dtype=self.dtype)
        for t, (dy, dx) in enumerate(self.taps):
            for n, (r, q) in enumerate(self.out_phases):
                y0, x0 = p + r + dy, p + q + dx
                patches[:, t, n] = xp[:, y0 : y0 + 2 * h2 : 2, x0 : x0 + 2 * w2 : 2]
        return matmul(self.matrix, patches.reshape(c * len(self.taps), -1)) + self.bias


class ScaleIndex:
    """searchsorted(thresholds, acc, side="right") in a few passes instead of a binary search.

    Accumulators are clipped to [0, last threshold] (which keeps every index) and so are below
    2**24, exact in float32. The key of one is its float32 exponent and top mantissa bits, ordered
    like the accumulators. With enough mantissa bits no key holds two thresholds; then the index is
    the number of thresholds with a smaller key plus one exact integer comparison. Equal to
    searchsorted for every int64 (tests/test_codec.py), 7x faster on a Kodak tile.
    """

    def __init__(self, thresholds: np.ndarray) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.int64)
        self.below = None  # stays None where no key separates the thresholds: plain searchsorted
        if len(self.thresholds) == 0 or self.thresholds[0] <= 0 or self.thresholds[-1] >= FLOAT32_EXACT:
            return
        if np.any(np.diff(self.thresholds) <= 0):
            raise ValueError("scale thresholds must increase")
        for bits in range(2, 16):
            self.shift = 23 - bits
            keys = self._key(self.thresholds)
            if np.all(np.diff(keys) > 0):  # at most one threshold per key
                break
        else:
            return
        size = int(keys[-1]) + 1
        self.candidate = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
        self.candidate[keys] = self.thresholds
        self.below = np.searchsorted(keys, np.arange(size), side="left").astype(np.int64)

    def _key(self, acc: np.ndarray) -> np.ndarray:
        return acc.astype(np.float32).view(np.int32) >> self.shift

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        if self.below is None:
            return np.searchsorted(self.thresholds, acc, side="right").astype(np.int64)
        # below 0 every index is 0; from the last threshold on, the last index: clipping keeps both
        a = np.clip(acc, 0, self.thresholds[-1])
        key = self._key(a)
        return self.below[key] + (a >= self.candidate[key])


class IntegerHyperSynthesis:
    """The integer prior as exported by training/export.py: hyper-synthesis layers (kind, weight,
    bias, shift) with ReLU between, and for models with a checkerboard context model, two context
    layers whose output corrects the means and scales of the non-anchor positions. With context
    fusion (`ctxf_*`), the context's hidden layer also sees the hyperprior's own S and U there.

    Every step is on integers: `hyper` and `context` return int64 accumulators in units of
    2**-output_frac_bits, `tables` turns them into means and scale indices. `matmul` computes the
    GEMMs (numpy's by default); any correct implementation gives the same integers, which is why
    the runtime may hand them to onnxruntime's thread pool.
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
        self.scale_index = ScaleIndex(self.scale_thresholds)
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
        self.has_context = "ctx_input_shift" in params
        if self.has_context:
            self.context_input_shift = int(params["ctx_input_shift"])
            self.context_input_max = int(params["ctx_input_max"])
            self._context_conv = _PhaseConv(
                params["ctx0_w"], params["ctx0_b"], int(params["ctx0_shift"]), self.context_input_max,
                ANCHOR_PHASES, OTHER_PHASES,
            )
            self._context_head = _Layer("conv", params["ctx1_w"], params["ctx1_b"], int(params["ctx1_shift"]), False)
            self._context_head.choose_dtype(self.activation_max)
        self.has_channel_context = "cc_input_shift" in params
        if self.has_channel_context:
            self.channel_input_shift = int(params["cc_input_shift"])
            self.channel_input_max = int(params["cc_input_max"])
            self._channel_nets = {
                anchors: (
                    _PhaseConv(
                        params[f"{net}0_w"], params[f"{net}0_b"], int(params[f"{net}0_shift"]), self.channel_input_max,
                        ANCHOR_PHASES if anchors else ALL_PHASES, ANCHOR_PHASES if anchors else OTHER_PHASES,
                    ),
                    _Layer("conv", params[f"{net}1_w"], params[f"{net}1_b"], int(params[f"{net}1_shift"]), False),
                )
                for anchors, net in ((True, "cca"), (False, "cco"))
            }
            for _, head in self._channel_nets.values():
                head.choose_dtype(self.activation_max)
        self._fusion = None
        if "ctxf_w" in params:
            self.fusion_input_shift = int(params["ctxf_input_shift"])
            self.fusion_input_max = int(params["ctxf_input_max"])
            self.fusion_shift = int(params["ctxf_shift"])
            self._fusion = _Layer("conv", params["ctxf_w"], params["ctxf_b"], self.fusion_shift, True)
            self._fusion.choose_dtype(self.fusion_input_max)

    @property
    def dtypes(self) -> list[str]:
        layers = self._gemms + ([self._context_conv, self._context_head] if self.has_context else [])
        layers += [self._fusion] if self.has_context and self._fusion is not None else []
        layers += [net for pair in self._channel_nets.values() for net in pair] if self.has_channel_context else []
        return [layer.dtype.__name__ for layer in layers]

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z: (Cz, h, w) integers -> the hyperprior's (mu, scale index), each (M, 4h, 4w)."""
        return self.tables(self.hyper(z))

    def stages(self, shape: tuple[int, int, int]) -> list[tuple[Part, Update | None]]:
        """The order in which a tile's y symbols are coded, as (part, update) pairs: before the
        symbols of a part are coded, update(acc, y_sym) refines the accumulators their tables come
        from, using the symbols coded so far (None: the hyperprior's as they are). An update only
        changes positions that later parts hold. The parts, concatenated, give the order of section
        7.3: all anchors, then the rest, each in (channel, row, column) order."""
        m, h, w = shape
        if not self.has_context:
            return [(Part(0, m, "all"), None)]
        if h % 2 or w % 2:
            raise ValueError("the checkerboard context needs an even latent height and width")
        if not self.has_channel_context:
            return [(Part(0, m, "anchors"), None), (Part(0, m, "others"), self.context)]
        half = m // 2
        return [
            (Part(0, half, "anchors"), None),
            (Part(half, m, "anchors"), lambda acc, y_sym: self.channel_context(acc, y_sym, anchors=True)),
            (Part(0, half, "others"), self.context),
            (Part(half, m, "others"), lambda acc, y_sym: self.channel_context(acc, y_sym, anchors=False)),
        ]

    def hyper(self, z: np.ndarray) -> np.ndarray:
        """z: (Cz, h, w) integers -> int64 accumulators (2M, 4h, 4w): scales, then means."""
        x = z
        for layer in self._gemms[:-1]:
            x = requantise_clip_(layer(x, self.matmul), layer.shift, 0, self.activation_max)  # ReLU, bound
        return self._gemms[-1](x, self.matmul).astype(np.int64)

    def tables(self, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Accumulators -> (mu as exact dyadic float64, scale index int64)."""
        scale_acc, mu_acc = np.split(acc, 2, axis=0)
        mu = mu_acc.astype(np.float64) * (2.0**-self.output_frac_bits)
        return mu, self.scale_index(scale_acc)

    def tables_at(self, acc: np.ndarray, part: Part) -> tuple[np.ndarray, np.ndarray]:
        """tables(acc) at the positions of one part only, flat in its order."""
        m = len(acc) // 2
        mu = part.take(acc[m:]).astype(np.float64) * (2.0**-self.output_frac_bits)
        return mu, self.scale_index(part.take(acc[:m]))

    def context(self, acc: np.ndarray, y_sym: np.ndarray) -> np.ndarray:
        """Accumulators with the non-anchor positions corrected from the anchors' symbols.

        The decoded anchors y_hat = symbol + mu, exact in the accumulators' fixed point, are
        requantised by ctx_input_shift bits and clipped; the symbols off the anchors are ignored.
        """
        m, h, w = y_sym.shape
        if h % 2 or w % 2:
            raise ValueError("the checkerboard context needs an even latent height and width")
        anchors = self._decoded_values(acc, y_sym, m, ANCHOR_PHASES, self.context_input_shift, self.context_input_max)
        hidden = self._context_conv(anchors, self.matmul)
        if self._fusion is not None:  # the sum is exact in int64, not proven so in float32
            hidden = hidden.astype(np.int64) + self._fused_hyperprior(acc)
            hidden = np.clip(requantise_int(hidden, self._context_conv.shift), 0, self.activation_max)
        else:
            hidden = requantise_clip_(hidden, self._context_conv.shift, 0, self.activation_max)
        head = self._context_head  # a 1x1 convolution: the n positions as an n x 1 image
        correction = requantise_(head(hidden[:, :, None], self.matmul)[:, :, 0], head.shift).astype(np.int64)
        out = acc.copy()
        for (r, q), part in zip(OTHER_PHASES, np.split(correction, 2, axis=1)):
            out[:, r::2, q::2] += part.reshape(2 * m, h // 2, w // 2)
        return out

    def channel_context(self, acc: np.ndarray, y_sym: np.ndarray, anchors: bool) -> np.ndarray:
        """Accumulators with the second half of the channels corrected from the first half: at the
        anchors from its anchors (anchors=True), or at the non-anchors from all of it.

        The first half's decoded values y_hat = symbol + mu, exact in the accumulators' fixed point
        (acc must hold the means those symbols were coded with), are requantised by cc_input_shift
        bits and clipped, as the context's input is.
        """
        m, h, w = y_sym.shape
        half = m // 2
        conv, head = self._channel_nets[anchors]
        x = self._decoded_values(acc, y_sym, half, conv.in_phases, self.channel_input_shift, self.channel_input_max)
        hidden = requantise_clip_(conv(x, self.matmul), conv.shift, 0, self.activation_max)
        correction = requantise_(head(hidden[:, :, None], self.matmul)[:, :, 0], head.shift).astype(np.int64)
        out = acc.copy()
        scale_part, mean_part = np.split(correction, 2, axis=0)
        for n, (r, q) in enumerate(conv.out_phases):
            cols = slice(n * (h // 2) * (w // 2), (n + 1) * (h // 2) * (w // 2))
            out[half:m, r::2, q::2] += scale_part[:, cols].reshape(half, h // 2, w // 2)
            out[m + half :, r::2, q::2] += mean_part[:, cols].reshape(half, h // 2, w // 2)
        return out

    def _decoded_values(
        self, acc: np.ndarray, y_sym: np.ndarray, channels: int, phases: tuple[tuple[int, int], ...], shift: int,
        clip: int,
    ) -> list[np.ndarray]:
        """y_hat = symbol + mu of the first `channels` channels at each of `phases`, exact in the
        accumulators' fixed point, requantised by `shift` bits and clipped to +-clip: the input of
        the context networks."""
        m = y_sym.shape[0]
        out = []
        for r, q in phases:
            y_fixed = (y_sym[:channels, r::2, q::2].astype(np.int64) << self.output_frac_bits)
            y_fixed += acc[m : m + channels, r::2, q::2]
            out.append(np.clip(requantise_int(y_fixed, shift), -clip, clip))
        return out

    def _fused_hyperprior(self, acc: np.ndarray) -> np.ndarray:
        """S and U at the non-anchors (in the context's order), requantised and clipped, through a
        1x1 convolution into the units of the context's layer-0 accumulator."""
        x = np.concatenate([acc[:, r::2, q::2].reshape(len(acc), -1) for r, q in OTHER_PHASES], axis=1)
        x = np.clip(requantise_int(x, self.fusion_input_shift), -self.fusion_input_max, self.fusion_input_max)
        out = self._fusion(x[:, :, None], self.matmul)[:, :, 0].astype(np.int64)
        return requantise_int(out, self.fusion_shift)
