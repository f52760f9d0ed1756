"""The post-filter (spec section 4.5): its chunk, its meaning, and what the encoder gains with it."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import psnr

from pillow_dcv import codec, container, postfilter
from pillow_dcv.models import get_model


def spec_filter(x: np.ndarray, radius: int, step_log2: int, k: list[int]) -> np.ndarray:
    """Section 4.5 word for word, on (H, W, 3) levels: pair sums over the half-window, edges repeated."""
    offsets = postfilter.half_window(radius)
    k = np.asarray(k, dtype=np.float64).reshape(3, 3 * len(offsets) + 1)
    h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")

    def at(dy: int, dx: int, c: int) -> np.ndarray:
        return xp[radius + dy : radius + dy + h, radius + dx : radius + dx + w, c]

    out = x.astype(np.float64) + k[:, -1] / 8
    for c in range(3):
        for ci in range(3):
            for j, (dy, dx) in enumerate(offsets):
                pair = at(dy, dx, ci) + (at(-dy, -dx, ci) if (dy, dx) != (0, 0) else 0)
                out[:, :, c] += k[c, ci * len(offsets) + j] * 2.0**-step_log2 * pair
    return out


def spec_activity(levels: np.ndarray) -> np.ndarray:
    """Section 4.6 word for word: L = R + 2G + B of the rounded pixels, edges repeated; the 3x3 sum of
    |4 L(q) - L(q + (0, 1)) - L(q - (0, 1)) - L(q + (1, 0)) - L(q - (1, 0))|."""
    h, w, _ = levels.shape
    u = np.pad(np.rint(levels).astype(np.int64), ((2, 2), (2, 2), (0, 0)), mode="edge")
    lum = u[:, :, 0] + 2 * u[:, :, 1] + u[:, :, 2]

    def at(dy: int, dx: int) -> np.ndarray:
        return lum[2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]

    out = np.zeros((h, w), dtype=np.int64)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            out += np.abs(4 * at(i, j) - at(i, j + 1) - at(i, j - 1) - at(i + 1, j) - at(i - 1, j))
    return out


def spec_class_filter(x: np.ndarray, class_filter: dict) -> np.ndarray:
    """Section 4.6 word for word, on (H, W, 3) levels: clip, pick each pixel's class by its activity,
    apply that class's filter (each input channel with its own or the cross window)."""
    x = np.clip(x.astype(np.float64), 0, 255)
    h, w, _ = x.shape
    xp = np.pad(x, ((2, 2), (2, 2), (0, 0)), mode="edge")
    outs = []
    for window, k in zip(class_filter["windows"], class_filter["coefficients"]):
        out, i = x.copy(), 0
        for c in range(3):
            for ci in range(3):
                for dy, dx in postfilter.half_window(window["own_radius"] if ci == c else window["cross_radius"]):
                    pair = xp[2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w, ci]
                    if (dy, dx) != (0, 0):
                        pair = pair + xp[2 - dy : 2 - dy + h, 2 - dx : 2 - dx + w, ci]
                    out[:, :, c] += k[i] * 2.0 ** -window["step_log2"] * pair
                    i += 1
            out[:, :, c] += k[i] / 8
            i += 1
        outs.append(out)
    if class_filter["count"] == 1:
        return outs[0]
    return np.where((spec_activity(x) > class_filter["threshold"])[:, :, None], outs[1], outs[0])


def random_class_filter(rng: np.random.Generator, count: int, threshold: int) -> dict:
    windows = [{"own_radius": 2, "cross_radius": 1, "step_log2": 8, "orders": [0] * 5},
               {"own_radius": 1, "cross_radius": 0, "step_log2": 7, "orders": [0] * 5}][:count]
    sizes = [len(container.coefficient_groups(w["own_radius"], w["cross_radius"])) for w in windows]
    coefficients = [rng.integers(-40, 40, n).tolist() for n in sizes]
    return {"count": count, "threshold": threshold if count == 2 else None, "windows": windows,
            "coefficients": coefficients}


def test_activity_is_the_spec_formula() -> None:
    levels = np.random.default_rng(5).integers(0, 256, (23, 31, 3)).astype(np.uint8)
    np.testing.assert_array_equal(postfilter.activity(postfilter.luma(levels)), spec_activity(levels))


@pytest.mark.parametrize("count", [1, 2])
def test_runtime_class_filter_is_the_spec_formula(count: int) -> None:
    """The runtime graph: clipping, the activity of the rounded pixels, the threshold, both windows."""
    rng = np.random.default_rng(count)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 3, (41, 37, 3)), axis=0), axis=1) / 4 + 128
    levels = np.rint(smooth) + rng.uniform(-0.3, 0.3, smooth.shape)  # no pixel near a rounding boundary
    levels[:5] = rng.uniform(-30, 290, (5, 37, 3))  # some beyond 0..255, which fILC clips first
    class_filter = random_class_filter(rng, count, int(np.median(spec_activity(np.clip(levels, 0, 255)))))
    kernel = postfilter.chunk_kernel(None, class_filter)
    x_hat = np.ascontiguousarray((levels / 255).transpose(2, 0, 1)[None], dtype=np.float32)
    runtime = codec.apply_post_filter(get_model(), x_hat, kernel)[0]
    np.testing.assert_allclose(runtime.transpose(1, 2, 0) * 255, spec_class_filter(levels, class_filter), atol=2e-3)


@pytest.mark.parametrize("radius, step_log2", [(1, 6), (2, 8), (2, 14)])
def test_runtime_filter_is_the_spec_formula(radius: int, step_log2: int) -> None:
    rng = np.random.default_rng(radius * 100 + step_log2)
    levels = rng.uniform(0, 255, (37, 29, 3))
    k = rng.integers(-(2 ** (step_log2 - 2)), 2 ** (step_log2 - 2), postfilter.coefficient_count(radius))
    weights, bias = postfilter.kernel(radius, step_log2, k)
    x_hat = np.ascontiguousarray((levels / 255).transpose(2, 0, 1)[None], dtype=np.float32)
    runtime = get_model().post_filter(x_hat, weights, bias)[0].transpose(1, 2, 0) * 255
    np.testing.assert_allclose(runtime, spec_filter(levels, radius, step_log2, k), atol=2e-3)


def test_coefficient_order_is_the_spec_order() -> None:
    assert postfilter.half_window(1) == [(0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert len(postfilter.half_window(2)) == 13 and postfilter.coefficient_count(2) == 120
    # one coefficient at a time lands where section 4.5 says: output G, input B, offset (1, -1)
    k = np.zeros(postfilter.coefficient_count(1), dtype=int)
    k[1 * 16 + 2 * 5 + 2] = 64
    weights, bias = postfilter.kernel(1, 6, k)
    delta = weights - postfilter.kernel(1, 6, np.zeros_like(k))[0]
    assert np.argwhere(delta).tolist() == [[1, 2, 1, 3], [1, 2, 3, 1]] and np.all(delta[delta != 0] == 1)
    assert not bias.any()


def test_fit_recovers_a_known_blur(photo) -> None:
    """A picture blurred by a known symmetric filter is sharpened back: the fitted correction removes
    much of the error, and rounding with the error carried forward keeps nearly all of that gain at
    step 2^-8, where plain rounding loses much of it."""
    original = np.asarray(photo).astype(np.float64)
    blurred = spec_filter(original, 1, 4, [0] * 48)  # the identity (all-zero correction)
    blurred = 0.6 * blurred + 0.1 * (np.roll(blurred, 1, 0) + np.roll(blurred, -1, 0) + np.roll(blurred, 1, 1)
                                      + np.roll(blurred, -1, 1))
    blurred = np.rint(blurred)
    (hh,), (gg,), (rr,) = postfilter.normal_equations(blurred, original, 2)
    rr = float(rr.sum())
    before = rr
    plain = np.clip(np.rint(np.linalg.solve(hh, gg).T * 2.0**8), -2**20, 2**20)
    plain[:, -1] = np.rint(np.linalg.solve(hh, gg).T[:, -1] * 8)
    k = postfilter.quantised_fit(hh, gg, 8)
    after = postfilter.squared_error(hh, gg, rr, k, 8)
    best = rr - float(np.sum(gg * np.linalg.solve(hh, gg)))  # the unrounded least-squares optimum
    assert best < 0.7 * before
    assert after - best < 0.05 * (before - best)  # rounding keeps 95 % of the gain
    assert postfilter.squared_error(hh, gg, rr, plain.astype(np.int64), 8) - best > 0.2 * (before - best)
    filtered = spec_filter(blurred, 2, 8, k.ravel())
    assert np.sum((filtered - original) ** 2) == pytest.approx(after, rel=1e-6)


def strip_filter(data: bytes) -> bytes:
    c = container.parse(data)
    c.post_filter = c.class_filter = None
    return container.build(c)


def test_smaller_window_statistics_come_from_the_wider_ones(photo) -> None:
    """The encoder computes the 5x5 window's normal equations once and takes the 3x3's from them."""
    original = np.asarray(photo.convert("RGB"))[:70, :90]
    decoded = np.clip(original + np.random.default_rng(1).normal(0, 6, original.shape), 0, 255).astype(np.float32)
    h1, g1, r1 = postfilter.normal_equations(decoded, original, 1)
    h2, g2, r2 = postfilter.normal_equations(decoded, original, 2)
    hs, gs = postfilter.restrict(h2[0], g2[0], 2, 1)
    assert hs.shape == h1[0].shape and np.array_equal(r1, r2)
    np.testing.assert_allclose(hs, h1[0], rtol=1e-12)
    np.testing.assert_allclose(gs, g1[0], rtol=1e-12, atol=1e-9)
    # per class, the statistics are those of each class's pixels, and add up to the whole picture's
    classes = (np.arange(70)[:, None] + np.arange(90)) % 3 == 0
    hc, gc, rc = postfilter.normal_equations(decoded, original, 2, classes.astype(np.int8), count=2)
    np.testing.assert_allclose(hc.sum(0), h2[0], rtol=1e-12)
    np.testing.assert_allclose(gc.sum(0), g2[0], rtol=1e-12, atol=1e-6)
    np.testing.assert_allclose(rc.sum(0), r2[0], rtol=1e-12)
    assert hc[1, -1, -1] == classes.sum()  # the bias feature counts the class's pixels
    # the encoder's worker threads take a strip each (70 rows: two), and the sums are the same numbers
    with ThreadPoolExecutor(2) as pool:
        hp, gp, rp = postfilter.normal_equations(decoded, original, 2, classes.astype(np.int8), count=2, pool=pool)
    assert np.array_equal(hp, hc) and np.array_equal(gp, gc) and np.array_equal(rp, rc)
    # the codec's a^T b runs on onnxruntime (float64 GEMM): the same statistics up to summation order
    from pillow_dcv.models import get_model

    labels = classes.astype(np.int8)
    ho, go, ro = postfilter.normal_equations(decoded, original, 2, labels, count=2, gram=get_model().gram)
    np.testing.assert_allclose(ho, hc, rtol=1e-12)
    np.testing.assert_allclose(go, gc, rtol=1e-10, atol=1e-6)
    assert np.array_equal(ro, rc)


def test_encoder_adds_a_filter_that_pays(sample) -> None:
    """From effort 2 on the encoder may add a fILC chunk; when it does, the filtered picture is
    better by more than the chunk costs (rate + lambda * distortion); effort 1 never adds one. A file
    without the chunk (what a 4.0 decoder sees) still decodes to the unfiltered picture."""
    pixels = np.ascontiguousarray(np.asarray(sample))
    model = get_model()
    found = set()
    for quality in (3, 7):
        data = codec.encode(pixels, "RGB", quality, effort=2)
        parsed = container.parse(data)
        assert parsed.post_filter is None  # the encoder writes fILC only
        plain = codec.container.parse(codec.encode(pixels, "RGB", quality, effort=1))
        assert plain.post_filter is None and plain.class_filter is None
        if parsed.class_filter is None:
            continue
        found.add(parsed.class_filter["count"])
        bare = strip_filter(data)
        with_filter = codec.decode(io.BytesIO(data), codec.read_info(io.BytesIO(data)))
        without = codec.decode(io.BytesIO(bare), codec.read_info(io.BytesIO(bare)))
        n = pixels.shape[0] * pixels.shape[1]

        def cost(size: int, decoded: np.ndarray, n: int = n, lam: float = model.rd_lambda(quality)) -> float:
            return 8 * size / n + lam * np.mean((decoded.astype(np.float64) - pixels) ** 2)

        assert psnr(with_filter, pixels) > psnr(without, pixels) + 0.02
        assert cost(len(data), with_filter) < cost(len(bare), without)
    assert 2 in found  # this photo gains from two classes: the test would notice them never chosen


def test_encoder_fits_the_best_ranked_splits_only(sample, monkeypatch) -> None:
    """The quantised fits are what an effort-2+ encode spends its time on: the encoder ranks the class
    splits by their unquantised least-squares gain and fits only the best CLASS_SPLITS_FITTED. On this
    photo that chooses what fitting every split chooses (held-out photos: 63 of 64 files the same,
    BD-rate -0.00 %, training/LOG.md session 24)."""
    pixels = np.ascontiguousarray(np.asarray(sample))
    model = get_model()
    _, _, decoded = codec.rd_cost(model, pixels, 3, codec.DEFAULT_TILE_SIZE)
    fits = []
    best_class_fit = codec._best_class_fit
    monkeypatch.setattr(codec, "_best_class_fit", lambda *a: fits.append(1) or best_class_fit(*a))
    args = (pixels, decoded, model.rd_lambda(3), pixels.shape[0] * pixels.shape[1])
    pruned = codec.fit_post_filter(*args)
    assert len(fits) == 1 + 2 * codec.CLASS_SPLITS_FITTED  # one class alone, then two per split
    fits.clear()
    monkeypatch.setattr(codec, "CLASS_SPLITS_FITTED", None)
    unpruned = codec.fit_post_filter(*args)
    assert len(fits) > 1 + 2 * 4
    assert pruned == unpruned and pruned["count"] == 2


@pytest.mark.parametrize("chunk", ["fILT", "fILC"])
def test_filter_is_applied_across_tiles(sample, chunk: str) -> None:
    """The filter runs on each cell's synthesis window; the windows' margins make the tiled picture
    the same as one tile (within float rounding of the pixels)."""
    pixels = np.ascontiguousarray(np.asarray(sample.crop((0, 0, 200, 136))))
    data = codec.encode(pixels, "RGB", 5, orientation=0, tile_size=64)
    c = container.parse(data)
    bare = codec.decode(io.BytesIO(data), codec.read_info(io.BytesIO(data)))
    if chunk == "fILT":
        k = np.zeros(postfilter.coefficient_count(2), dtype=int)
        k[[1, 2, 40 + 13 + 3, 80 + 26 + 7]] = [-40, 9, 12, -20]  # some sharpening and some cross-channel
        c.post_filter = {"radius": 2, "step_log2": 8, "coefficients": k.tolist()}
        expected = spec_filter(bare.astype(np.float64), 2, 8, k)
    else:
        threshold = int(np.median(postfilter.activity(postfilter.luma(bare))))
        c.class_filter = random_class_filter(np.random.default_rng(3), 2, threshold)
        expected = spec_class_filter(bare, c.class_filter)
    filtered = container.build(c)
    decoded = codec.decode(io.BytesIO(filtered), codec.read_info(io.BytesIO(filtered)))
    expected = np.clip(np.rint(expected), 0, 255)
    # the spec filter on rounded pixels against the runtime on unrounded ones: within a few levels (a
    # pixel whose activity is at the threshold may take the other class), and the same except at the
    # padded picture's edge where the decoder sees the padding
    diff = np.abs(decoded[:-4, :-4].astype(int) - expected[:-4, :-4])
    assert diff.max() <= (2 if chunk == "fILT" else 12) and np.mean(diff > 2) < 0.01
    assert not np.array_equal(decoded, bare)


@pytest.mark.parametrize(
    "payload, message",
    [
        (bytes([3, 8]) + bytes(48), "damaged chunk"),  # radius 3
        (bytes([1, 3]) + bytes(48), "damaged chunk"),  # step below 2^-4
        (bytes([1, 15]) + bytes(48), "damaged chunk"),  # step above 2^-14
        (bytes([1, 8]) + bytes(47), "47 coefficients, radius 1 needs 48"),
        (bytes([1, 8]) + bytes(49), "49 coefficients"),
        (bytes([1, 8]) + bytes(47) + b"\x80", "damaged chunk"),  # a varint cut short
        (bytes([1, 8]) + bytes(47) + b"\x82\x80\x80\x01", "out of range"),  # 2^21 + 1 -> -2^20 - 1
        (bytes([2, 8]) + bytes(400), "too large"),
    ],
)
def test_bad_filter_chunks_are_reported(payload: bytes, message: str) -> None:
    from test_container import minimal, raw_chunk

    c = minimal()
    data = container.build(c)
    head = len(container.SIGNATURE) + 12 + 38  # signature, then DHDR
    damaged = data[:head] + raw_chunk(container.FILTER, payload) + data[head:]
    with pytest.raises(container.ContainerError, match=message):
        container.parse(damaged)


def test_one_filter_chunk_at_most() -> None:
    from test_container import minimal, raw_chunk

    data = container.build(minimal())
    head = len(container.SIGNATURE) + 12 + 38
    chunk = raw_chunk(container.FILTER, bytes([1, 8]) + bytes(48))
    assert container.parse(data[:head] + chunk + data[head:]).post_filter["coefficients"] == [0] * 48
    classes = raw_chunk(container.CLASS_FILTER, ONE_CLASS)
    assert container.parse(data[:head] + classes + data[head:]).class_filter["coefficients"] == [[0] * 24]
    for pair in (chunk + chunk, chunk + classes, classes + chunk, classes + classes):
        with pytest.raises(container.ContainerError, match="more than one post-filter chunk"):
            container.parse(data[:head] + pair + data[head:])


# fILC with one class, own radius 1, cross radius 0, step 2^-8, all orders 0, 24 zeros: 24 one-bit codes
ONE_CLASS = bytes([1, 0b0100_1000, 0, 0]) + b"\xff\xff\xff"


def test_exp_golomb_codes_are_the_spec_bits() -> None:
    """Section 4.6's example, derived by hand: one class, own radius 1 and cross radius 0 (8
    coefficients per output channel: 5 own taps, 2 cross centres, the bias), orders 0, 1, 2, 0, 3."""
    window = {"own_radius": 1, "cross_radius": 0, "step_log2": 8, "orders": [0, 1, 2, 0, 3]}
    k = [-1, 2, 0, 0, 0, 0, 0, 5] + [0] * 16
    bits = (
        "010" + "0110" + "10" * 3 + "100" * 2 + "010010"  # R: -1 (order 0), 2 and zeros (1), zeros (2), 5 (3)
        + "100" + "1" + "10" * 4 + "100" + "1000"  # G: zeros, input channels R (cross), G (own), B (cross)
        + "100" * 2 + "1" + "10" * 4 + "1000"  # B: zeros
    )
    assert len(bits) == 63
    payload = {"count": 1, "threshold": None, "windows": [window], "coefficients": [k]}
    data = container.chunk_bytes(container.CLASS_FILTER, payload)[8:-4]
    # count, then own 01 | cross 00 | step 1000 | orders 000 001 010 000 011 | 0, then the codes, zero-padded
    assert data == bytes([1]) + int("01" "00" "1000" "000" "001" "010" "000" "011" "0", 2).to_bytes(3, "big") + int(
        bits + "0", 2
    ).to_bytes(8, "big")
    orders, total = postfilter.golomb_orders(1, 0, k)
    assert total <= 63 and orders[1] <= 1  # the encoder's orders are at least as good as these


@pytest.mark.parametrize(
    "payload, message",
    [
        (bytes([0]), "damaged chunk"),  # no class
        (bytes([3, 0, 0]) + ONE_CLASS[1:] * 3, "damaged chunk"),  # three classes
        (bytes([1, 0b1100_1000, 0, 0]) + b"\xff" * 3, "damaged chunk"),  # own radius 3
        (bytes([1, 0b0110_1000, 0, 0]) + b"\xff" * 9, "damaged chunk"),  # cross radius above own
        (bytes([1, 0b0100_1111, 0, 0]) + b"\xff" * 3, "damaged chunk"),  # step 2^-15
        (bytes([1, 0b0100_1000, 0, 1]) + b"\xff" * 3, "damaged chunk"),  # the header's last bit set
        (ONE_CLASS[:-1], "cut short"),
        (ONE_CLASS + b"\x00", "more than zero padding"),
        (ONE_CLASS[:-1] + b"\xfe\x81", "more than zero padding"),  # 23 ones, a -1, a one in the padding
        (ONE_CLASS[:-3] + bytes(3) + b"\x01", "too long"),  # 23 zeros before a one
        (ONE_CLASS[:-3] + b"\x00\x00\x02" + bytes(3), "out of range"),  # order 0, 2^21 + 1 -> -2^20 - 1
        (bytes([1]) + bytes(3000), "too large"),
    ],
)
def test_bad_class_filter_chunks_are_reported(payload: bytes, message: str) -> None:
    from test_container import minimal, raw_chunk

    data = container.build(minimal())
    head = len(container.SIGNATURE) + 12 + 38
    damaged = data[:head] + raw_chunk(container.CLASS_FILTER, payload) + data[head:]
    with pytest.raises(container.ContainerError, match=message):
        container.parse(damaged)
