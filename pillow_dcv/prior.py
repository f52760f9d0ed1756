"""Integer-exact hyper-synthesis: the path that gives the entropy decoder its tables.

Float networks are not bit-reproducible across CPUs, BLAS builds, thread counts or onnxruntime
optimisation levels, and one flipped table index corrupts the rest of a stream. So this path
uses integer weights and integer activations, and its matrix products are integer GEMMs: 8-bit
inputs times 8-bit weights with 32-bit sums (onnxruntime's MatMulInteger, VNNI on x86), which no
summation order, FMA or SIMD width can change. Wider operands are cut into bytes and the partial
products added in int64 (ExactGemm). Requantisation divides by powers of two with round-half-up
(also exact), and scale indices come from integer thresholds. The checkerboard context model,
which corrects the tables of half the latents from the decoded other half, is built the same way.
See spec/format.md section 6.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

# (N, K) uint8 @ (K, O) int8 -> (N, O) int32, exactly: onnxruntime's MatMulInteger in the runtime
IntMatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]
Update = Callable[[np.ndarray, np.ndarray], np.ndarray]
DEFAULT_ACTIVATION_MAX = 2**16 - 1  # models without `hs_activation_max` (dcv-ms2-s03 and older)
INT32_SUM_LIMIT = 2**31


def blas_int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The IntMatMul contract through numpy's float64 BLAS: every partial sum of bytes times int8 is
    below 2**31, far inside float64's exact integers, so this is exact too (tests, export)."""
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int32)


class ExactGemm:
    """weights (O, K) @ x.T for integer x (N, K) in [low, high]: (N, O) int64, exactly.

    x is offset to be non-negative and cut into bytes; a weight into 7-bit lower parts and a signed
    top byte. One IntMatMul multiplies every byte plane (stacked along N) by every weight part
    (side by side along O), each sum below K * 255 * 128 < 2**31; the partial products are then
    shifted and added in int64, and the offset's share (offset * row sums) taken off.
    """

    def __init__(self, weights: np.ndarray, low: int, high: int) -> None:
        w = np.asarray(weights, dtype=np.int64)
        if w.shape[1] * 255 * 128 >= INT32_SUM_LIMIT:
            raise ValueError("integer prior: too many inputs per output for 32-bit sums")
        self.offset = max(0, -int(low))
        self.input_bytes = max(1, (int(high) + self.offset).bit_length() + 7) // 8
        parts = []  # least significant first
        rest = w
        while rest.min() < -128 or rest.max() > 127:
            parts.append(rest & 127)
            rest = rest >> 7  # exact: the low 7 bits are in the part below
        parts.append(rest)
        self.weight_parts = len(parts)
        self.matrix = np.ascontiguousarray(np.concatenate(parts, axis=0).T.astype(np.int8))  # (K, parts * O)
        # A byte plane's partial products, weight parts shifted and added (Horner), stay below this
        # bound; where it fits 32 bits they are recombined in int32, half the memory traffic of int64.
        part_bound = sum(np.abs(part).sum(axis=1).max() << (7 * j) for j, part in enumerate(parts))
        self.parts_in_int32 = 255 * int(part_bound) < INT32_SUM_LIMIT
        self.offset_share = self.offset * w.sum(axis=1)
        self.row_l1 = np.abs(w).sum(axis=1)  # with the largest |input|, the bound on |accumulator|
        # patch matrices in the narrowest type that holds an offset input
        self.dtype = np.dtype("<i2" if int(high) + self.offset < 2**15 else "<i4")

    @property
    def products(self) -> int:
        """8-bit GEMMs per call: the cost of this layer relative to one of 8-bit operands."""
        return self.input_bytes * self.weight_parts

    def __call__(self, x: np.ndarray, matmul: IntMatMul, offset_applied: bool = False) -> np.ndarray:
        """x: (N, K) integers in [low, high], or x + offset if offset_applied."""
        if self.offset and not offset_applied:
            x = x + self.offset
        n, k = x.shape
        if self.input_bytes == 1:
            planes = x.astype(np.uint8)
        else:  # the bytes of the non-negative inputs, one plane per byte (a cast to uint8 keeps the low byte)
            unsigned = np.asarray(x, dtype=self.dtype).view(self.dtype.str.replace("i", "u"))
            planes = np.empty((self.input_bytes, n, k), dtype=np.uint8)
            np.copyto(planes[0], unsigned, casting="unsafe")
            for i in range(1, self.input_bytes):
                np.right_shift(unsigned, 8 * i, out=planes[i], casting="unsafe")
        r = matmul(planes.reshape(-1, k), self.matrix).reshape(self.input_bytes, n, self.weight_parts, -1)
        if self.parts_in_int32:  # each plane's sum over the weight parts (Horner), then over the planes
            plane_sums = r[:, :, -1]
            for j in range(self.weight_parts - 2, -1, -1):
                plane_sums = plane_sums << 7  # a contiguous copy: numpy is slow in place on strided parts
                plane_sums += r[:, :, j]
            out = plane_sums[-1].astype(np.int64)
            for i in range(self.input_bytes - 2, -1, -1):
                out <<= 8
                out += plane_sums[i]
        else:
            out = r[0, :, 0].astype(np.int64)
            for i in range(self.input_bytes):
                for j in range(self.weight_parts):
                    if i or j:
                        out += r[i, :, j].astype(np.int64) << (8 * i + 7 * j)
        if self.offset:
            out -= self.offset_share
        return out


def _phase_taps(k: int, r: int) -> list[tuple[int, int]]:
    """(kernel tap, input offset) pairs that reach output phase r of a stride-2 transposed
    convolution with padding k // 2: output 2j + r sums input j + offset times tap."""
    p = k // 2
    return [(t, (r + p - t) // 2) for t in range(k) if (t - r - p) % 2 == 0]


def _patches(xp: np.ndarray, pad: int, h: int, w: int, offsets: list[tuple[int, int]]) -> np.ndarray:
    """(h * w, taps * C) patch matrix of a padded channels-last input (h + 2 pad, w + 2 pad, C): row
    (y, x) holds the input at (y + dy, x + dx) for each (dy, dx) in offsets, channels innermost."""
    c = xp.shape[2]
    out = np.empty((h, w, len(offsets), c), dtype=xp.dtype)
    for t, (dy, dx) in enumerate(offsets):
        out[:, :, t] = xp[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return out.reshape(h * w, -1)


class _Layer:
    """One layer as im2col GEMMs on channels-last integers. A stride-2 transposed convolution is
    split into its four output phases (polyphase): each is an ordinary convolution of the input,
    so no output is scattered."""

    def __init__(self, kind: str, w: np.ndarray, b: np.ndarray, shift: int) -> None:
        self.kind, self.shift = kind, shift
        self.bias = np.asarray(b, dtype=np.int64)
        k = w.shape[-1]
        self.phases = []  # (input offsets (dy, dx), (O, taps * C) weights with channels innermost)
        if kind == "deconv":
            self.out_channels = w.shape[1]
            for rh in (0, 1):
                for rw in (0, 1):
                    th, tw = _phase_taps(k, rh), _phase_taps(k, rw)
                    taps = w[:, :, [t for t, _ in th]][:, :, :, [t for t, _ in tw]]  # (C, O, a, e)
                    matrix = taps.transpose(1, 2, 3, 0).reshape(self.out_channels, -1)
                    self.phases.append(([(dy, dx) for _, dy in th for _, dx in tw], matrix))
            self.pad = max(abs(s) for r in (0, 1) for _, s in _phase_taps(k, r))
        else:
            self.out_channels = w.shape[0]
            r = range(-(k // 2), k // 2 + 1)
            self.phases = [([(dy, dx) for dy in r for dx in r], w.transpose(0, 2, 3, 1).reshape(self.out_channels, -1))]
            self.pad = k // 2
        self.gemms: list[ExactGemm] = []

    def prepare(self, low: int, high: int) -> None:
        """Cut the weights for inputs in [low, high]."""
        self.gemms = [ExactGemm(m, low, high) for _, m in self.phases]

    def __call__(self, x: np.ndarray, matmul: IntMatMul) -> np.ndarray:
        """x: (h, w, C) integers -> (h', w', O) int64 accumulators (bias added, not requantised)."""
        h, w, c = x.shape
        x = x.astype(self.gemms[0].dtype, copy=False)
        if self.pad == 0 and self.kind == "conv":  # 1x1: the input is its own patch matrix
            return (self.gemms[0](x.reshape(h * w, c), matmul) + self.bias).reshape(h, w, -1)
        xp = self.padded(x)
        results = [self.phase(xp, n, matmul) for n in range(len(self.phases))]
        if self.kind == "conv":
            return results[0].reshape(h, w, -1)
        out = np.empty((h, 2, w, 2, self.out_channels), dtype=np.int64)  # phase (rh, rw): rows 2j + rh
        for n, result in enumerate(results):
            out[:, n // 2, :, n % 2] = result.reshape(h, w, -1)
        return out.reshape(2 * h, 2 * w, self.out_channels)

    def padded(self, x: np.ndarray) -> np.ndarray:
        """The (h, w, C) input zero-padded for phase(), in the patch matrices' type."""
        p = self.pad
        return np.pad(x.astype(self.gemms[0].dtype, copy=False), ((p, p), (p, p), (0, 0)))

    def phase(self, xp: np.ndarray, n: int, matmul: IntMatMul) -> np.ndarray:
        """Output phase n of the padded input xp, bias added: (h * w, O) in raster order. For a
        transposed convolution phase n = 2 rh + rw holds output rows 2j + rh, columns 2i + rw."""
        p = self.pad
        h, w = xp.shape[0] - 2 * p, xp.shape[1] - 2 * p
        out = self.gemms[n](_patches(xp, p, h, w, self.phases[n][0]), matmul)
        out += self.bias
        return out


def requantise_int(acc: np.ndarray, shift: int) -> np.ndarray:
    """floor(acc / 2**shift + 1/2) on integers: an arithmetic right shift of acc + 2**(shift - 1),
    or a left shift."""
    return (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc << -shift


def requantise_clip(acc: np.ndarray, shift: int, low: int, high: int) -> np.ndarray:
    """clip(requantise_int(acc, shift), low, high), in place where it can."""
    if shift > 0:
        acc += 1 << (shift - 1)
        acc >>= shift
    else:
        acc <<= -shift
    return np.clip(acc, low, high, out=acc)


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
        taps = np.stack([w[:, :, self.pad + dy, self.pad + dx] for dy, dx in self.taps], axis=1)  # (O, T, C)
        self.gemm = ExactGemm(taps.reshape(w.shape[0], -1), -input_max, input_max)
        self.bias = np.asarray(b, dtype=np.int64)

    def __call__(self, inputs: list[np.ndarray], matmul: IntMatMul) -> np.ndarray:
        """inputs: the input at each of in_phases, each (C, h/2, w/2) -> (n, O) at out_phases, one
        phase after the other, each in raster order."""
        c, h2, w2 = inputs[0].shape
        p = self.pad
        offset = self.gemm.offset  # added here, once per input, instead of to the 12x larger patches
        xp = np.full((2 * h2 + 2 * p, 2 * w2 + 2 * p, c), offset, dtype=self.gemm.dtype)
        for (r, q), x in zip(self.in_phases, inputs):
            xp[p + r : p + r + 2 * h2 : 2, p + q : p + q + 2 * w2 : 2] = x.transpose(1, 2, 0) + offset
        patches = np.empty((len(self.out_phases), h2, w2, len(self.taps), c), dtype=self.gemm.dtype)
        for n, (r, q) in enumerate(self.out_phases):
            for t, (dy, dx) in enumerate(self.taps):
                y0, x0 = p + r + dy, p + q + dx
                patches[n, :, :, t] = xp[y0 : y0 + 2 * h2 : 2, x0 : x0 + 2 * w2 : 2]
        out = self.gemm(patches.reshape(len(self.out_phases) * h2 * w2, -1), matmul, offset_applied=True)
        out += self.bias
        return out


class ScaleIndex:
    """searchsorted(thresholds, acc, side="right") in a few passes instead of a binary search.

    Accumulators are clipped to [0, last threshold] (which keeps every index). The key of one is
    its float32 exponent and top mantissa bits: rounding to float32 never reverses an order, so keys
    are ordered like the accumulators, and where two accumulators share a key the exact comparison
    below tells them apart. With enough mantissa bits no key holds two thresholds; then the index is
    the number of thresholds with a smaller key plus one exact integer comparison. Equal to
    searchsorted for every int64 (tests/test_codec.py), 7x faster on a Kodak tile.
    """

    def __init__(self, thresholds: np.ndarray) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.int64)
        self.below = None  # stays None where no key separates the thresholds: plain searchsorted
        if len(self.thresholds) == 0 or self.thresholds[0] <= 0 or self.thresholds[-1] >= 2**62:
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
    8-bit GEMMs (numpy's BLAS by default); any correct implementation gives the same integers,
    which is why the runtime hands them to onnxruntime's MatMulInteger on its thread pool.
    """

    def __init__(self, params: dict[str, np.ndarray], matmul: IntMatMul = blas_int_matmul) -> None:
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
        low, high = self.z_range = int(z_lo.min()), int(z_hi.max())
        self._gemms = []
        for kind, w, b, shift in self.layers:
            layer = _Layer(kind, w, b, shift)
            layer.prepare(low, high)
            self._gemms.append(layer)
            low, high = 0, self.activation_max  # after ReLU and the clip
        self.has_context = "ctx_input_shift" in params
        if self.has_context:
            self.context_input_shift = int(params["ctx_input_shift"])
            self.context_input_max = int(params["ctx_input_max"])
            self._context_conv = _PhaseConv(
                params["ctx0_w"], params["ctx0_b"], int(params["ctx0_shift"]), self.context_input_max,
                ANCHOR_PHASES, OTHER_PHASES,
            )
            self._context_head = _Layer("conv", params["ctx1_w"], params["ctx1_b"], int(params["ctx1_shift"]))
            self._context_head.prepare(0, self.activation_max)
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
                    _Layer("conv", params[f"{net}1_w"], params[f"{net}1_b"], int(params[f"{net}1_shift"])),
                )
                for anchors, net in ((True, "cca"), (False, "cco"))
            }
            for _, head in self._channel_nets.values():
                head.prepare(0, self.activation_max)
        self._fusion = None
        if "ctxf_w" in params:
            self.fusion_input_shift = int(params["ctxf_input_shift"])
            self.fusion_input_max = int(params["ctxf_input_max"])
            self.fusion_shift = int(params["ctxf_shift"])
            self._fusion = _Layer("conv", params["ctxf_w"], params["ctxf_b"], self.fusion_shift)
            self._fusion.prepare(-self.fusion_input_max, self.fusion_input_max)

    @property
    def products(self) -> list[int]:
        """8-bit GEMMs per output phase of each layer (operand bytes): what the precision costs."""
        gemms = [g for layer in self._gemms for g in layer.gemms[:1]]
        if self.has_context:
            gemms += [self._context_conv.gemm, self._context_head.gemms[0]]
            gemms += [self._fusion.gemms[0]] if self._fusion is not None else []
        if self.has_channel_context:
            gemms += [g for conv, head in self._channel_nets.values() for g in (conv.gemm, head.gemms[0])]
        return [g.products for g in gemms]

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z: (Cz, h, w) integers -> the hyperprior's (mu, scale index), each (M, 4h, 4w)."""
        return self.tables(self.hyper(z))

    def stages(self, shape: tuple[int, int, int], helper: Executor | None = None) -> list[tuple[Part, Update | None]]:
        """The order in which a tile's y symbols are coded, as (part, update) pairs: before the
        symbols of a part are coded, update(acc, y_sym) refines the accumulators their tables come
        from, using the symbols coded so far (None: the hyperprior's as they are). An update only
        changes positions that later parts hold. The parts, concatenated, give the order of section
        7.3: all anchors, then the rest, each in (channel, row, column) order.

        With a `helper` (an idle thread), the context's hyperprior term, which depends on the
        hyperprior alone, is computed there while the anchors are coded: the same integers, ~3.6 ms
        less on the path of a Kodak tile's decode (training/LOG.md session 27)."""
        m, h, w = shape
        if not self.has_context:
            return [(Part(0, m, "all"), None)]
        if h % 2 or w % 2:
            raise ValueError("the checkerboard context needs an even latent height and width")
        fused = []  # the future of that term, once the first update has the hyperprior's accumulators

        def start_fusion(acc: np.ndarray, y_sym: np.ndarray) -> np.ndarray:
            fused.append(helper.submit(self._fused_hyperprior, acc))
            return acc  # context() and channel_context() return new arrays: this one stays as it is

        def context(acc: np.ndarray, y_sym: np.ndarray) -> np.ndarray:
            return self.context(acc, y_sym, fused[0].result() if fused else None)

        first = start_fusion if helper is not None and self._fusion is not None else None
        if not self.has_channel_context:
            return [(Part(0, m, "anchors"), first), (Part(0, m, "others"), context)]
        half = m // 2
        return [
            (Part(0, half, "anchors"), first),
            (Part(half, m, "anchors"), lambda acc, y_sym: self.channel_context(acc, y_sym, anchors=True)),
            (Part(0, half, "others"), context),
            (Part(half, m, "others"), lambda acc, y_sym: self.channel_context(acc, y_sym, anchors=False)),
        ]

    def decoding_stages(
        self, z: np.ndarray, helper: Executor | None = None
    ) -> tuple[np.ndarray, list[tuple[Part, Update | None]]]:
        """hyper(z) and stages(), as a decoder runs them: with a `helper` (an idle thread), the
        returned accumulators hold the anchors only, and the helper computes the others' (and the
        context's hyperprior term from them) while the anchors are decoded; the context's update
        fills them in. The hyper-synthesis' stride-2 transposed convolution before its 1x1 output
        layer makes each 2x2 phase of the latent a separate product, and the anchors are two of the
        phases. The same integers, ~half the hyper-synthesis off the decoder's path (LOG session 29)."""
        deconv, head = self._gemms[-2:] if len(self._gemms) > 1 else (None, self._gemms[-1])
        if helper is None or not self.has_context or deconv is None or deconv.kind != "deconv" or head.pad:
            acc = self.hyper(z)
            return acc, self.stages((len(acc) // 2, *acc.shape[1:]), helper)
        x = self._hidden(z, self._gemms[:-2])
        h, w, _ = x.shape
        xp = deconv.padded(x)

        def outputs(n: int) -> np.ndarray:  # the accumulators at phase n: (h * w, 2M)
            hidden = requantise_clip(deconv.phase(xp, n, self.matmul), deconv.shift, 0, self.activation_max)
            return head(hidden[:, None, :], self.matmul)[:, 0]  # the 1x1 layer on h * w positions

        def others() -> tuple[np.ndarray, np.ndarray]:  # in the context's order: phase after phase
            rows = np.concatenate([outputs(2 * r + q) for r, q in OTHER_PHASES])
            return rows, self._fused_rows(rows) if self._fusion is not None else None

        pending = helper.submit(others)
        acc = np.zeros((head.out_channels, 2 * h, 2 * w), dtype=np.int64)
        for r, q in ANCHOR_PHASES:
            acc[:, r::2, q::2] = outputs(2 * r + q).T.reshape(-1, h, w)

        def context(acc: np.ndarray, y_sym: np.ndarray) -> np.ndarray:
            rows, fused = pending.result()
            for (r, q), part in zip(OTHER_PHASES, np.split(rows, 2)):
                acc[:, r::2, q::2] = part.T.reshape(-1, h, w)  # acc is this decode's own array
            return self.context(acc, y_sym, fused)

        stages = self.stages((head.out_channels // 2, 2 * h, 2 * w))
        first_others = next(n for n, (part, _) in enumerate(stages) if part.where == "others")
        stages[first_others] = (stages[first_others][0], context)  # the context's update, after the merge
        return acc, stages

    def hyper(self, z: np.ndarray) -> np.ndarray:
        """z: (Cz, h, w) integers -> int64 accumulators (2M, 4h, 4w): scales, then means."""
        x = self._hidden(z, self._gemms[:-1])
        return np.ascontiguousarray(self._gemms[-1](x, self.matmul).transpose(2, 0, 1))

    def _hidden(self, z: np.ndarray, layers: list[_Layer]) -> np.ndarray:
        """z: (Cz, h, w) integers through `layers` (the first ones), each requantised, ReLU'd and
        clipped: channels-last (h', w', C)."""
        z = np.asarray(z)
        if z.size and (z.min() < self.z_range[0] or z.max() > self.z_range[1]):
            raise ValueError("hyper-latent outside the range of the z tables")  # the GEMMs assume it
        x = z.transpose(1, 2, 0)  # channels-last inside
        for layer in layers:
            x = requantise_clip(layer(x, self.matmul), layer.shift, 0, self.activation_max)  # ReLU, bound
        return x

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

    def context(self, acc: np.ndarray, y_sym: np.ndarray, fused: np.ndarray | None = None) -> np.ndarray:
        """Accumulators with the non-anchor positions corrected from the anchors' symbols.

        The decoded anchors y_hat = symbol + mu, exact in the accumulators' fixed point, are
        requantised by ctx_input_shift bits and clipped; the symbols off the anchors are ignored.
        `fused`: _fused_hyperprior(acc) if already computed (it reads the non-anchors of acc, which
        no earlier update changes).
        """
        m, h, w = y_sym.shape
        if h % 2 or w % 2:
            raise ValueError("the checkerboard context needs an even latent height and width")
        anchors = self._decoded_values(acc, y_sym, m, ANCHOR_PHASES, self.context_input_shift, self.context_input_max)
        hidden = self._context_conv(anchors, self.matmul)  # (n, hidden) at the non-anchors
        if self._fusion is not None:
            hidden += self._fused_hyperprior(acc) if fused is None else fused
        hidden = requantise_clip(hidden, self._context_conv.shift, 0, self.activation_max)
        correction = self._head(self._context_head, hidden)
        out = acc.copy()
        for (r, q), part in zip(OTHER_PHASES, np.split(correction, 2, axis=0)):
            out[:, r::2, q::2] += part.T.reshape(2 * m, h // 2, w // 2)
        return out

    def _head(self, head: _Layer, hidden: np.ndarray) -> np.ndarray:
        """A 1x1 output layer on (n, C) hidden values (the n positions as an n x 1 image),
        requantised to the accumulators' units: (n, O) int64."""
        return requantise_int(head(hidden[:, None, :], self.matmul)[:, 0], head.shift)

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
        hidden = requantise_clip(conv(x, self.matmul), conv.shift, 0, self.activation_max)
        correction = self._head(head, hidden)  # (n, M): scales, then means of the second half
        out = acc.copy()
        count = (h // 2) * (w // 2)
        for n, (r, q) in enumerate(conv.out_phases):
            rows = correction[n * count : (n + 1) * count]
            out[half:m, r::2, q::2] += rows[:, :half].T.reshape(half, h // 2, w // 2)
            out[m + half :, r::2, q::2] += rows[:, half:].T.reshape(half, h // 2, w // 2)
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
        1x1 convolution into the units of the context's layer-0 accumulator: (n, hidden)."""
        return self._fused_rows(np.concatenate([acc[:, r::2, q::2].reshape(len(acc), -1).T for r, q in OTHER_PHASES]))

    def _fused_rows(self, rows: np.ndarray) -> np.ndarray:
        """_fused_hyperprior of the hyperprior's accumulators at the non-anchors, (n, 2M) in its order."""
        x = np.clip(requantise_int(rows, self.fusion_input_shift), -self.fusion_input_max, self.fusion_input_max)
        return requantise_int(self._fusion(x[:, None, :], self.matmul)[:, 0], self.fusion_shift)
