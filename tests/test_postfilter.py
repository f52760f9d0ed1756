"""The post-filter (spec section 4.5): its chunk, its meaning, and what the encoder gains with it."""

from __future__ import annotations

import io

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
    hh, gg, rr = postfilter.normal_equations(blurred, original, 2)
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
    c.post_filter = None
    return container.build(c)


def test_smaller_window_statistics_come_from_the_wider_ones(photo) -> None:
    """The encoder computes the 5x5 window's normal equations once and takes the 3x3's from them."""
    original = np.asarray(photo.convert("RGB"))[:70, :90]
    decoded = np.clip(original + np.random.default_rng(1).normal(0, 6, original.shape), 0, 255).astype(np.float32)
    h1, g1, r1 = postfilter.normal_equations(decoded, original, 1)
    h2, g2, r2 = postfilter.normal_equations(decoded, original, 2)
    hs, gs = postfilter.restrict(h2, g2, 2, 1)
    assert hs.shape == h1.shape and r1 == r2
    np.testing.assert_allclose(hs, h1, rtol=1e-12)
    np.testing.assert_allclose(gs, g1, rtol=1e-12, atol=1e-9)


def test_encoder_adds_a_filter_that_pays(sample) -> None:
    """From effort 2 on the encoder may add a fILT chunk; when it does, the filtered picture is
    better by more than the chunk costs (rate + lambda * distortion); effort 1 never adds one. A file
    without the chunk (what a 4.0 decoder sees) still decodes to the unfiltered picture."""
    pixels = np.ascontiguousarray(np.asarray(sample.crop((100, 40, 484, 296))))
    model = get_model()
    found = 0
    for quality in (3, 7):
        data = codec.encode(pixels, "RGB", quality, effort=2)
        parsed = container.parse(data)
        assert codec.container.parse(codec.encode(pixels, "RGB", quality, effort=1)).post_filter is None
        if parsed.post_filter is None:
            continue
        found += 1
        bare = strip_filter(data)
        with_filter = codec.decode(io.BytesIO(data), codec.read_info(io.BytesIO(data)))
        without = codec.decode(io.BytesIO(bare), codec.read_info(io.BytesIO(bare)))
        n = pixels.shape[0] * pixels.shape[1]

        def cost(size: int, decoded: np.ndarray, n: int = n, lam: float = model.rd_lambda(quality)) -> float:
            return 8 * size / n + lam * np.mean((decoded.astype(np.float64) - pixels) ** 2)

        assert psnr(with_filter, pixels) > psnr(without, pixels) + 0.02
        assert cost(len(data), with_filter) < cost(len(bare), without)
    assert found  # this photo gains at some quality: the test would not notice a filter never chosen


def test_filter_is_applied_across_tiles(sample) -> None:
    """The filter runs on each cell's synthesis window; the windows' margins make the tiled picture
    the same as one tile (within float rounding of the pixels)."""
    pixels = np.ascontiguousarray(np.asarray(sample.crop((0, 0, 200, 136))))
    data = codec.encode(pixels, "RGB", 5, orientation=0, tile_size=64)
    c = container.parse(data)
    k = np.zeros(postfilter.coefficient_count(2), dtype=int)
    k[[1, 2, 40 + 13 + 3, 80 + 26 + 7]] = [-40, 9, 12, -20]  # some sharpening and some cross-channel
    c.post_filter = {"radius": 2, "step_log2": 8, "coefficients": k.tolist()}
    filtered = container.build(c)
    decoded = codec.decode(io.BytesIO(filtered), codec.read_info(io.BytesIO(filtered)))
    bare = codec.decode(io.BytesIO(data), codec.read_info(io.BytesIO(data)))
    expected = np.clip(np.rint(spec_filter(bare.astype(np.float64), 2, 8, k)), 0, 255)
    # the spec filter on rounded pixels against the runtime on unrounded ones: within a level or two,
    # and the same except at the padded picture's edge where the decoder sees the padding
    assert np.abs(decoded[:-4, :-4].astype(int) - expected[:-4, :-4]).max() <= 2
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
    with pytest.raises(container.ContainerError, match="more than one fILT"):
        container.parse(data[:head] + chunk + chunk + data[head:])
