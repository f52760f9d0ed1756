"""The codec: pixel arrays <-> container chunks, via the model and the entropy coder.

Knows nothing about Pillow. The latent is entropy-coded in independent tiles (bounded memory, a
damaged tile is reported on its own), but the pixels are the synthesis of the whole latent mosaic:
the decoder synthesises each tile with a margin of its neighbours' latents, so no pixel is coded
twice and tile edges do not show (the hyper-prior's context stops at a tile edge, which costs ~1 %).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from . import container, entropy, postfilter
from .models import DEFAULT_MODEL, Model, get_model, thread_count, use_threads_in_this_thread
from .prior import Part

DOWNSAMPLING = 64  # g_a (x16) then h_a (x4): tiles are padded to a multiple of this
DEFAULT_TILE_SIZE = 1024
LATENT_STRIDE = 16  # g_a downsamples by 16
# Pixels of context around a tile for the analysis (encoder only: any latents decode correctly, this
# makes a tile's latents close to those of the whole image) and latent cells around a tile for the
# synthesis: the synthesis' reach (2 cells, tests/test_codec.py), so pieces join exactly, the 2 pixels the
# post-filter reads beyond a cell included (3 cost ~5 % more synthesis on a Kodak picture's two bands).
ANALYSIS_MARGIN = 64
SYNTHESIS_MARGIN = 2
MIN_QUALITY, MAX_QUALITY = 1.0, 8.0
MODES = ("RGB", "L", "RGBA", "LA")
# The transforms' learned filters are not symmetric, so a picture turned or mirrored codes to other
# bits and errors. The encoder tries `effort` of the 8 orientations (the identity, the three rotations,
# then the four reflections) and keeps the one with the lowest rate + lambda * distortion; the header
# says which, and the decoder turns the pixels back (spec section 4.1).
ORIENTATIONS = (0, 5, 3, 6, 1, 2, 4, 7)
MIN_EFFORT, MAX_EFFORT = 1, len(ORIENTATIONS)
DEFAULT_EFFORT = 4
PAD_BLUR = 32  # pixels: the widest blur of the padding (pad_to_multiple)
SEARCH_SIDE = 1024  # a larger picture is searched on its centre: the search costs at most ~1 Mpx a try
# A picture of several tiles is coded by this many worker threads at most, each running its tasks (a
# tile's analysis and entropy coding, or its entropy decoding, a cell's synthesis) on its share of the
# cores; the decoder entropy-decodes the next row of tiles beside the synthesis of this one. Each
# worker holds a synthesis window of ~350 MB, so more workers would take a 24 MP decode past 2 GB (on
# 2 cores: 490 -> 340-390 ms/Mpx, peak 830 -> 1200 MB; training/LOG.md session 24).
MAX_WORKERS = 2
MIN_BAND = 4 * SYNTHESIS_MARGIN  # latent rows (_bands)
SIGNATURE = container.SIGNATURE


class NotDCVError(ValueError):
    """The data does not start with the DCV signature."""


class CorruptFileError(OSError):
    """The file is a DCV file but damaged, truncated or not decodable by this version."""


@dataclass
class Info:
    """What is known about a file before decoding it."""

    width: int
    height: int
    mode: str
    quality: float
    model_id: str
    icc_profile: bytes | None
    exif: bytes | None
    xmp: bytes | None
    index: container.Index


def read_info(fp: BinaryIO) -> Info:
    """Read the small chunks at the start of a file; the tile payloads are only located."""
    start = fp.tell()
    if fp.read(len(container.SIGNATURE)) != container.SIGNATURE:
        raise NotDCVError("not a DCV file")
    fp.seek(start)
    try:
        index = container.scan(fp)
    except container.ContainerError as e:
        raise CorruptFileError(str(e)) from None
    h = index.container.header
    quality = h["quality"] / 256
    if not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise CorruptFileError(f"invalid quality {quality} in header")
    mode = ("L" if h["colour"] == "gray" else "RGB") + ("A" if h["alpha"] else "")
    c = index.container
    return Info(h["width"], h["height"], mode, quality, h["model_id"], c.icc_profile, c.exif, c.xmp, index)


def describe(info: Info) -> dict:
    """Header fields and the chunk table (type, offset, size) for tools such as ``dcv info``."""
    header = dict(info.index.container.header)
    header["model_hash"] = header["model_hash"].hex()
    header["quality"] = info.quality
    chunks = [(t.decode("latin-1"), offset, size) for t, offset, size in info.index.chunk_table]
    return {"header": header, "chunks": chunks}


def verify(fp: BinaryIO) -> None:
    """Check structure and every CRC without decoding."""
    try:
        container.verify(fp)
    except container.ContainerError as e:
        raise CorruptFileError(str(e)) from None


# -- tiles ---------------------------------------------------------------------------------------


def tile_grid(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Rectangles (y0, y1, x0, x1) in raster order."""
    return [
        (y, min(y + tile, height), x, min(x + tile, width))
        for y in range(0, height, tile)
        for x in range(0, width, tile)
    ]


def padded_size(n: int) -> int:
    return -(-n // DOWNSAMPLING) * DOWNSAMPLING


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """The (H, W, C) uint8 picture padded on the bottom and right to a multiple of `multiple`.

    The decoder crops the padding away, so it only has to be cheap to code. Repeating the edge pixels
    turns a textured last row into streaks; here the k-th padded row (then column) is the edge row
    box-blurred along its length with radius min(k, PAD_BLUR): continuous at the edge, smooth beyond
    (session 20: -1.1 to -2.0 % BD-rate on photos whose sides are not multiples of 64).
    """
    h, w = x.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    out = np.empty((h + ph, w + pw, x.shape[2]), dtype=np.uint8)
    out[:h, :w] = x
    for k in range(1, ph + 1):
        out[h + k - 1, :w] = _box_blur(x[h - 1], min(k, PAD_BLUR))
    for k in range(1, pw + 1):  # over the padded rows too
        out[:, w + k - 1] = _box_blur(out[:, w - 1], min(k, PAD_BLUR))
    return out


def _box_blur(line: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a window of 2 * radius + 1 along a (n, C) line, edges repeated, rounded to uint8."""
    padded = np.pad(line.astype(np.float64), ((radius + 1, radius), (0, 0)), mode="edge")
    sums = np.cumsum(padded, axis=0)
    return np.rint((sums[2 * radius + 1 :] - sums[: -2 * radius - 1]) / (2 * radius + 1)).astype(np.uint8)


def symbols_crc(index: int, z: np.ndarray, y: np.ndarray) -> int:
    """CRC-32 of the tile's index and its symbols: a tile moved to another place fails it too."""
    crc = zlib.crc32(np.array([index], dtype="<u4").tobytes())
    crc = zlib.crc32(z.astype("<i4").tobytes(), crc)
    return zlib.crc32(y.astype("<i4").tobytes(), crc)


def encode_tile(
    model: Model, padded: np.ndarray, cell: tuple[int, ...], gain: np.ndarray, index: int, z_row: int = 0
) -> dict:
    """Code the latents of one tile cell of the padded image, analysed with a margin of context."""
    z_sym, y_sym, parts = tile_symbols(model, padded, cell, gain, z_row)
    return {"symbols_crc": symbols_crc(index, z_sym, y_sym), "stream": entropy.encode(parts)}


def tile_symbols(
    model: Model, padded: np.ndarray, cell: tuple[int, ...], gain: np.ndarray, z_row: int = 0
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray, entropy.Tables]]]:
    """The z and y symbols of one tile cell, and the stream's parts ``(symbols, table, tables)`` in
    coding order (section 7.3); z uses row `z_row` of the z tables (Model.z_row)."""
    z_sym, y_sym, parts, _ = _tile_latents(model, padded, cell, gain, z_row)
    return z_sym, y_sym, parts


def _tile_latents(
    model: Model, padded: np.ndarray, cell: tuple[int, ...], gain: np.ndarray, z_row: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray, entropy.Tables]], np.ndarray]:
    """tile_symbols, plus the latents the decoder will rebuild from them (as decode_tile does)."""
    y0, y1, x0, x1 = cell
    hp, wp = padded.shape[:2]
    wy0, wy1 = max(0, y0 - ANALYSIS_MARGIN), min(hp, y1 + ANALYSIS_MARGIN)
    wx0, wx1 = max(0, x0 - ANALYSIS_MARGIN), min(wp, x1 + ANALYSIS_MARGIN)
    x = padded[wy0:wy1, wx0:wx1].astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    y, z = model.analysis(np.ascontiguousarray(x), gain)
    s, d = LATENT_STRIDE, DOWNSAMPLING  # the margins are multiples of 64, so the grids line up
    y = y[0, :, (y0 - wy0) // s : (y1 - wy0) // s, (x0 - wx0) // s : (x1 - wx0) // s]
    z = z[0, :, (y0 - wy0) // d : (y1 - wy0) // d, (x0 - wx0) // d : (x1 - wx0) // d]
    z_table = np.broadcast_to(z_row * model.z_channels + np.arange(z.shape[0])[:, None, None], z.shape)
    z_sym = model.z_tables.clamp(np.rint(z).astype(np.int64), z_table)
    y = y.astype(np.float64)
    acc = model.prior.hyper(z_sym)
    y_sym = np.zeros(y.shape, dtype=np.int64)
    centre = np.empty(y.shape)
    parts = [(z_sym, z_table, model.z_tables)]
    # each part is quantised around the means the decoder will have for it
    for part, update in model.prior.stages(y.shape):
        if update is not None:
            acc = update(acc, y_sym)
        symbols, scale_index, mu = quantise_latent(model, part.take(y), acc, part)
        part.put(y_sym, symbols)
        # what the decoder adds to each symbol (decode_tile): the encoder's search looks at its result
        part.put(centre, mu + reconstruction_offset(model, symbols, scale_index))
        parts.append((symbols, scale_index, model.y_tables))
    return z_sym, y_sym, parts, (y_sym + centre).astype(np.float32)


def quantise_latent(
    model: Model, y: np.ndarray, acc: np.ndarray, part: Part
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symbols of the latents y of one part (flat, in its order), around the means of the prior's
    accumulators there; their table indices; and those means."""
    mu, scale_index = model.prior.tables_at(acc, part)
    return model.y_tables.clamp(np.rint(y - mu).astype(np.int64), scale_index), scale_index, mu


def decode_tile(
    model: Model, tile: dict, index: int, height: int, width: int, z_row: int = 0, helper: Executor | None = None
) -> np.ndarray:
    """Latents of tile `index`, a cell of height x width padded pixels -> float32 (M, height/16,
    width/16): the symbols plus the means they were coded with (and the reconstruction offsets).
    `helper`: an idle worker that computes part of the prior ahead (`IntegerHyperSynthesis.decoding_stages`)."""
    cz = model.z_channels
    z_shape = (cz, height // DOWNSAMPLING, width // DOWNSAMPLING)
    z_table = np.broadcast_to(z_row * cz + np.arange(cz)[:, None, None], z_shape)
    try:
        stream = entropy.Decoder(tile["stream"])
        z_sym = stream.decode(z_table, model.z_tables).reshape(z_shape)
        acc, stages = model.prior.decoding_stages(z_sym, helper)
        y_sym = np.zeros((acc.shape[0] // 2, *acc.shape[1:]), dtype=np.int64)
        centre = np.empty(y_sym.shape)  # what a symbol is added to: its mean, plus the offset
        for part, update in stages:
            if update is not None:
                acc = update(acc, y_sym)
            mu_part, scale_index = model.prior.tables_at(acc, part)
            symbols = stream.decode(scale_index, model.y_tables)
            part.put(centre, mu_part + reconstruction_offset(model, symbols, scale_index))
            part.put(y_sym, symbols)
        stream.finish()
    except (ValueError, RuntimeError, OverflowError) as e:
        raise CorruptFileError(f"damaged entropy-coded data in tile {index}: {e}") from None
    if symbols_crc(index, z_sym, y_sym) != tile["symbols_crc"]:
        raise CorruptFileError(f"tile {index}: decoded symbols do not match their checksum")
    return (y_sym + centre).astype(np.float32)


def reconstruction_offset(model: Model, symbols: np.ndarray, scale_index: np.ndarray) -> np.ndarray | float:
    """Where in its bin the synthesis takes each latent: sign(q) * offset[min(|q|, 3) - 1, scale
    index], and 0 for q = 0 (spec section 5.6); 0 for models without the table."""
    table = model.recon_offsets
    if table is None:
        return 0.0
    rows, levels = table.shape
    signed = np.concatenate([-table[::-1], np.zeros((1, levels)), table]).ravel()  # rows for q = -3 .. 3
    return signed[(np.clip(symbols, -rows, rows) + rows) * levels + scale_index]


# -- alpha ---------------------------------------------------------------------------------------


def encode_alpha(alpha: np.ndarray) -> dict:
    """Lossless: left-neighbour differences (mod 256) per row, then zlib."""
    diff = np.diff(alpha.astype(np.uint8), axis=1, prepend=np.uint8(0))
    return {"method": "zlib-left", "data": zlib.compress(diff.tobytes(), 9)}


def decode_alpha(chunk: dict, height: int, width: int) -> np.ndarray:
    expected = height * width
    d = zlib.decompressobj()
    try:
        raw = d.decompress(chunk["data"], expected)
    except zlib.error as e:
        raise CorruptFileError(f"damaged alpha chunk: {e}") from None
    if len(raw) != expected or d.unconsumed_tail or not d.eof or d.unused_data:
        raise CorruptFileError("alpha chunk has the wrong size")
    diff = np.frombuffer(raw, dtype=np.uint8).reshape(height, width)
    return np.cumsum(diff, axis=1, dtype=np.uint8)


# -- images --------------------------------------------------------------------------------------



def validate_quality(quality: float) -> float:
    if isinstance(quality, bool) or not isinstance(quality, (int, float, np.integer, np.floating)):
        raise ValueError(f"quality must be a number from 1 to 8, not {quality!r}")
    q = float(quality)
    if not MIN_QUALITY <= q <= MAX_QUALITY:
        raise ValueError(f"quality must be from 1 to 8, got {quality}")
    # the header stores quality in 8.8 fixed point: round here so encoder and decoder agree
    return round(q * 256) / 256


def validate_effort(effort: int) -> int:
    if isinstance(effort, bool) or not isinstance(effort, (int, np.integer)):
        raise ValueError(f"effort must be an integer from {MIN_EFFORT} to {MAX_EFFORT}, not {effort!r}")
    if not MIN_EFFORT <= effort <= MAX_EFFORT:
        raise ValueError(f"effort must be from {MIN_EFFORT} to {MAX_EFFORT}, got {effort}")
    return int(effort)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The picture as it is coded: transposed if bit 2, then flipped top-bottom if bit 1, then
    left-right if bit 0 (a view)."""
    if orientation & 4:
        pixels = pixels.transpose(1, 0, *range(2, pixels.ndim))
    if orientation & 2:
        pixels = pixels[::-1]
    return pixels[:, ::-1] if orientation & 1 else pixels


def unorient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The inverse of :func:`orient` (a view)."""
    if orientation & 1:
        pixels = pixels[:, ::-1]
    if orientation & 2:
        pixels = pixels[::-1]
    return pixels.transpose(1, 0, *range(2, pixels.ndim)) if orientation & 4 else pixels


def encode(
    pixels: np.ndarray,
    mode: str,
    quality: float = 4,
    *,
    effort: int = DEFAULT_EFFORT,
    orientation: int | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
    model_id: str = DEFAULT_MODEL,
) -> bytes:
    """Encode an (H, W, C) uint8 array (C = 3 for RGB, 1 for L, 4 for RGBA, 2 for LA) to .dcv bytes.

    `effort` (1..8) is how many orientations the encoder tries (time grows with it); `orientation`
    (0..7) skips the search and codes that one.
    """
    if mode not in MODES:
        raise ValueError(f"cannot encode mode {mode}")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != len(mode):
        raise ValueError(f"expected an (H, W, {len(mode)}) uint8 array for mode {mode}")
    height, width = pixels.shape[:2]
    if not (1 <= width <= container.MAX_SIDE and 1 <= height <= container.MAX_SIDE):
        raise ValueError(f"image size {width}x{height} is outside 1..{container.MAX_SIDE}")
    if tile_size % DOWNSAMPLING or not DOWNSAMPLING <= tile_size <= 4096:
        raise ValueError(f"tile_size must be a multiple of {DOWNSAMPLING} from 64 to 4096")
    q = validate_quality(quality)
    effort = validate_effort(effort)
    if orientation is not None and (isinstance(orientation, bool) or orientation not in range(8)):
        raise ValueError(f"orientation must be from 0 to 7, got {orientation!r}")
    try:
        model = get_model(model_id)
    except KeyError:
        raise ValueError(f"unknown model {model_id!r}") from None
    colour = pixels[:, :, :3] if mode.startswith("RGB") else np.repeat(pixels[:, :, :1], 3, axis=2)
    tiles = class_filter = None
    if orientation is None:
        orientation, tiles, trial = best_orientation(model, colour, q, ORIENTATIONS[:effort], tile_size)
        if trial is not None:  # effort >= 2: the search decoded the picture's centre, so fit a filter to it
            class_filter = fit_post_filter(*trial, model.rd_lambda(q), width * height, model)
    if tiles is None:
        tiles = encode_tiles(model, orient(colour, orientation), q, tile_size)
    header = {
        "version_major": container.VERSION_MAJOR,
        "version_minor": container.VERSION_MINOR,
        "width": width,
        "height": height,
        "colour": "rgb" if mode.startswith("RGB") else "gray",
        "alpha": mode.endswith("A"),
        "quality": int(q * 256),
        "tile_size": tile_size,
        "model_id": model.model_id,
        "model_hash": model.hash[: container.MODEL_HASH_SIZE],
        "coder": entropy.CODER_NAME,
        "orientation": orientation,
    }
    alpha = encode_alpha(pixels[:, :, -1]) if mode.endswith("A") else None
    c = container.Container(
        header=header, tiles=tiles, alpha=alpha, icc_profile=icc_profile, exif=exif, xmp=xmp, class_filter=class_filter
    )
    return container.build(c)


def encode_tiles(model: Model, colour: np.ndarray, quality: float, tile_size: int) -> list[dict]:
    """The TILE payloads of an (H, W, 3) uint8 picture, in raster order."""
    gain, _ = model.gains(quality)
    padded = pad_to_multiple(np.ascontiguousarray(colour), DOWNSAMPLING)
    cells = tile_grid(padded.shape[1], padded.shape[0], tile_size)
    z_row = model.z_row(int(quality * 256) / 256)  # from the quality the header stores, as the decoder does
    with _workers(len(cells)) as pool:
        tiles = [pool.submit(encode_tile, model, padded, cell, gain, i, z_row) for i, cell in enumerate(cells)]
        return [tile.result() for tile in tiles]


def best_orientation(
    model: Model, colour: np.ndarray, quality: float, candidates: tuple[int, ...], tile_size: int
) -> tuple[int, list[dict] | None, tuple[np.ndarray, np.ndarray] | None]:
    """The candidate orientation whose file costs least in bits per pixel + lambda * MSE (the loss the
    model was trained on), measured by coding and decoding the picture's centre (SEARCH_SIDE square);
    its tiles when that centre is the whole picture (None otherwise); and the centre as coded
    (turned) with its decoded pixels (None when there was only one candidate, so nothing was tried)."""
    if len(candidates) == 1:
        return candidates[0], None, None
    height, width = colour.shape[:2]
    y0, x0 = max(0, (height - SEARCH_SIDE) // 2), max(0, (width - SEARCH_SIDE) // 2)
    sample = colour[y0 : y0 + SEARCH_SIDE, x0 : x0 + SEARCH_SIDE]
    turned = [np.ascontiguousarray(orient(sample, o)) for o in candidates]
    with _workers(len(turned)) as pool:  # the candidates are independent: one a worker
        tried = [trial.result() for trial in [pool.submit(rd_cost, model, t, quality, tile_size) for t in turned]]
    best = int(np.argmin([cost for cost, _, _ in tried]))
    _, tiles, decoded = tried[best]
    return candidates[best], tiles if sample.shape == colour.shape else None, (turned[best], decoded)


def rd_cost(model: Model, colour: np.ndarray, quality: float, tile_size: int) -> tuple[float, list[dict], np.ndarray]:
    """Bits per pixel of the picture's tile streams + lambda * MSE (0..255) of its decoded pixels, its
    TILE payloads, and those pixels. The pixels come from the latents the encoder quantised, as the
    decoder rebuilds them, not from a second pass through the prior and the entropy decoder."""
    gain, _ = model.gains(quality)
    padded = pad_to_multiple(colour, DOWNSAMPLING)
    hp, wp = padded.shape[:2]
    s = LATENT_STRIDE
    mosaic = np.empty((model.latent_channels, hp // s, wp // s), dtype=np.float32)
    tiles = []
    for i, (y0, y1, x0, x1) in enumerate(tile_grid(wp, hp, tile_size)):
        z_sym, y_sym, parts, y_hat = _tile_latents(model, padded, (y0, y1, x0, x1), gain, model.z_row(quality))
        tiles.append({"symbols_crc": symbols_crc(i, z_sym, y_sym), "stream": entropy.encode(parts)})
        mosaic[:, y0 // s : y1 // s, x0 // s : x1 // s] = y_hat
    rows = (mosaic[:, y0 // s : (y0 + tile_size) // s] for y0 in range(0, hp, tile_size))
    decoded = synthesise(model, rows, "RGB", colour.shape[1], colour.shape[0], tile_size, quality)
    mse = float(np.mean(np.square(decoded.astype(np.float64) - colour)))
    bits = 8 * sum(len(t["stream"]) for t in tiles)
    return bits / (colour.shape[0] * colour.shape[1]) + model.rd_lambda(quality) * mse, tiles, decoded


# The windows (own radius, cross radius) and steps (step_log2) the encoder tries for each class of the
# post-filter: 3x3, 5x5 on a channel itself with 3x3 across, and 5x5; 2^-7 at low rates and 2^-9 at high
# ones won on Kodak-sized pictures (training/LOG.md sessions 21, 23)
FILTER_CANDIDATES = (
    (1, 1, 6), (1, 1, 7), (1, 1, 8), (1, 1, 9), (2, 1, 7), (2, 1, 8), (2, 1, 9), (2, 2, 7), (2, 2, 8), (2, 2, 9)
)
MIN_CLASS_SHARE = 1 / 16  # a class that small is not worth its filter
# The activity quantiles the encoder tries as the threshold between two classes: the octiles gained -0.14 %
# BD-rate over the quartiles, and those -0.30 % over the median alone (held-out photos; LOG session 23)
CLASS_SPLITS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
# Of those, the encoder fits quantised filters to the classes of the few splits whose unquantised
# least-squares gain is largest (None: every split)
CLASS_SPLITS_FITTED: int | None = 2


def fit_post_filter(
    original: np.ndarray, decoded: np.ndarray, rd_lambda: float, pixels: int, model: Model | None = None
) -> dict | None:
    """The `fILC` payload (spec 4.6) that lowers bits per pixel + lambda * MSE the most, fitted to a
    decoded picture (or its centre) and weighed for a picture of `pixels` pixels; None if none pays.

    It weighs one filter for all pixels against two, split at each of CLASS_SPLITS' quantiles of the
    activity. One pass over the picture gathers the statistics of the pixels between consecutive
    quantiles; each class's are sums of those. Its cost counts the chunk's bytes; its gain is the
    least-squares error before rounding to 8 bits, as MSE over the three channels (like the
    orientation search's)."""
    n = original.size
    widest = max(r for r, _, _ in FILTER_CANDIDATES)
    act = postfilter.activity(postfilter.luma(decoded))
    thresholds = np.minimum(np.quantile(act, CLASS_SPLITS, method="lower").astype(int), 65535)
    bins = np.searchsorted(thresholds, act, side="left")  # how many thresholds lie below each pixel's activity
    with _workers(len(decoded) // 64) as pool:
        hh, gg, rr = postfilter.normal_equations(
            decoded, original, widest, bins.astype(np.int8), count=len(thresholds) + 1, pool=pool,
            gram=model.gram if model is not None else postfilter.einsum_gram,
        )
    sizes = np.bincount(bins.ravel(), minlength=len(thresholds) + 1)
    options = [(None, [_best_class_fit(hh.sum(0), gg.sum(0), rr.sum(0), widest, rd_lambda, n, pixels)])]
    splits = [
        (j, (slice(0, j + 1), slice(j + 1, None)))  # the bins at or below the threshold, and above it
        for j, threshold in enumerate(thresholds)
        if threshold not in thresholds[:j] and MIN_CLASS_SHARE <= sizes[j + 1 :].sum() / act.size <= 1 - MIN_CLASS_SHARE
    ]
    if CLASS_SPLITS_FITTED is not None:  # the quantised fits cost; the splits' unquantised gains rank them
        splits.sort(key=lambda split: -sum(postfilter.least_squares_gain(hh[p].sum(0), gg[p].sum(0)) for p in split[1]))
        splits = sorted(splits[:CLASS_SPLITS_FITTED])
    for j, parts in splits:
        fits = [_best_class_fit(hh[p].sum(0), gg[p].sum(0), rr[p].sum(0), widest, rd_lambda, n, pixels) for p in parts]
        options.append((int(thresholds[j]), fits))
    best, best_gain = None, 0.0
    for threshold, fits in options:
        payload = {
            "count": len(fits),
            "threshold": threshold,
            "windows": [window for window, _, _ in fits],
            "coefficients": [k for _, k, _ in fits],
        }
        side_bits = 8 * len(container.chunk_bytes(container.CLASS_FILTER, payload))
        gain = rd_lambda * sum(g for _, _, g in fits) / n - side_bits / pixels
        if gain > best_gain:
            best, best_gain = payload, gain
    return best


def _best_class_fit(hh, gg, rr, radius: int, rd_lambda: float, n: int, pixels: int) -> tuple[dict, list[int], float]:
    """One class's window, coefficients and squared-error gain, the candidate that gains the most net
    of its coded size (header and Exp-Golomb codes)."""
    best, best_net = None, -np.inf
    for own, cross, step_log2 in FILTER_CANDIDATES:
        k, error = postfilter.fit_class(hh, gg, rr, radius, own, cross, step_log2)
        orders, bits = postfilter.golomb_orders(own, cross, k)
        gain = float(rr.sum()) - error
        net = rd_lambda * gain / n - (bits + 24) / pixels
        if net > best_net:
            window = {"own_radius": own, "cross_radius": cross, "step_log2": step_log2, "orders": orders}
            best, best_net = (window, k, gain), net
    return best


def decode(fp: BinaryIO, info: Info, **session_args) -> np.ndarray:
    """Decode the pixels of a file opened with :func:`read_info` -> (H, W, C) uint8."""
    header = info.index.container.header
    try:
        model = get_model(header["model_id"])
    except KeyError:
        raise CorruptFileError(f"file needs model {header['model_id']!r}, which this version lacks") from None
    if model.hash[: container.MODEL_HASH_SIZE] != header["model_hash"]:
        raise CorruptFileError(f"file was made with different weights for model {header['model_id']!r}")
    orientation = header["orientation"]
    width, height = (info.height, info.width) if orientation & 4 else (info.width, info.height)

    tile_size = header["tile_size"]
    kernel = postfilter.chunk_kernel(info.index.container.post_filter, info.index.container.class_filter)
    tile_offsets = info.index.tile_offsets
    one_tile = len(tile_offsets) == 1
    # A single tile's entropy decoding stays in this thread (its onnxruntime GEMMs on all cores); the
    # synthesis of its bands runs on workers all the same (_bands).
    with _workers(len(tile_offsets)) as pool, _workers(MAX_WORKERS if one_tile else 1) as band_pool:
        helper = band_pool if band_pool.workers > 1 else None  # idle until the bands: it helps the prior
        rows = _decode_latent_rows(fp, model, tile_offsets, width, height, tile_size, info.quality, pool, helper)
        coded = synthesise(
            model, rows, info.mode, width, height, tile_size, info.quality, kernel, band_pool if one_tile else pool,
            **session_args,
        )
    out = np.ascontiguousarray(unorient(coded, orientation)) if orientation else coded
    if info.mode.endswith("A"):
        out[:, :, -1] = decode_alpha(info.index.container.alpha, info.height, info.width)
    return out


class _Inline(Executor):
    """Runs each task at once in the calling thread: the codec with one worker."""

    workers = 1

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future


class _Workers(ThreadPoolExecutor):
    """Worker threads that each run onnxruntime on their share of the threads, and that drop the tasks
    still queued when the work stops early (a damaged tile)."""

    def __init__(self, workers: int, threads_each: int) -> None:
        super().__init__(workers, "dcv-worker", initializer=use_threads_in_this_thread, initargs=(threads_each,))
        self.workers = workers

    def __exit__(self, *exc) -> None:
        self.shutdown(wait=True, cancel_futures=True)


def _workers(tasks: int) -> Executor:
    """Where the codec runs `tasks` independent tasks: threads when there are several tasks and the
    codec several threads (onnxruntime uses them all on a single tile's transforms)."""
    threads = thread_count()
    workers = min(MAX_WORKERS, threads, tasks)
    return _Workers(workers, threads // workers) if workers > 1 else _Inline()


def synthesise(
    model: Model, latent_rows: Iterator[np.ndarray], mode: str, width: int, height: int, tile_size: int,
    quality: float, kernel: postfilter.Kernel | None = None, pool: Executor | None = None, **session_args,
) -> np.ndarray:
    """Pixels (height, width, len(mode)) uint8 of a picture from its latents, given one row of tiles
    at a time (M, rows/16, padded width/16), top to bottom (an alpha channel is left unset), through
    the file's post-filter if it has one (`postfilter.chunk_kernel`). The cells of a row are
    synthesised as tasks of `pool` (default: one after the other), in bands of latent rows when the
    row has fewer cells than the pool has workers (`_bands`).

    The pixels are the synthesis of the whole latent mosaic. It is computed one tile at a time
    on the tile's latents plus SYNTHESIS_MARGIN cells of its neighbours', which is exact because
    the synthesis reaches less far. So one row of tiles is synthesised once the next row's
    latents are decoded, and memory stays bounded by about three rows of latents (the decoder
    entropy-decodes one more row beside the synthesis) and a synthesis window per worker.
    """
    pool = pool or _Inline()
    hp, wp = padded_size(height), padded_size(width)
    _, inv_gain = model.gains(quality)
    row_starts = list(range(0, hp, tile_size))
    out = np.empty((height, width, len(mode)), dtype=np.uint8)
    margin = SYNTHESIS_MARGIN
    above = None  # the last latent rows of the previous row of tiles
    current = next(latent_rows)
    for r, y0 in enumerate(row_starts):
        below = next(latent_rows) if r + 1 < len(row_starts) else None
        parts = [p for p in (above, current, below[:, :margin] if below is not None else None) if p is not None]
        band = np.concatenate(parts, axis=1) if len(parts) > 1 else current
        top = 0 if above is None else above.shape[1]
        rows = (y0, min(y0 + tile_size, height))
        cells = []
        x_starts = range(0, wp, tile_size)  # every cell starts inside the image: wp - width < 64 <= tile_size
        for x0 in x_starts:
            cols = (x0, min(x0 + tile_size, width))
            for part_rows, part_top in _bands(rows, top, -(-pool.workers // len(x_starts))):
                args = (model, band, part_top, x0 // LATENT_STRIDE, part_rows, cols, inv_gain, kernel, out, mode,
                        session_args)
                cells.append(pool.submit(_synthesise_cell, *args))
        for cell in cells:
            cell.result()
        above, current = current[:, -margin:], below
    return out


def _bands(rows: tuple[int, int], top: int, count: int) -> list[tuple[tuple[int, int], int]]:
    """A cell's pixel rows cut into up to `count` bands of whole latent rows, each with its first
    latent row: (rows, top) pairs. onnxruntime's convolutions gain little from a second thread here
    (1.1x), so a row of tiles with fewer cells than workers is synthesised in bands side by side, each
    on one thread, the latent margins computed twice: a Kodak picture 472 -> 433 ms/Mpx (LOG session
    25). A band is at least MIN_BAND latent rows, or the margins would cost more than they give."""
    latent_rows = -(-(rows[1] - rows[0]) // LATENT_STRIDE)
    count = max(1, min(count, latent_rows // MIN_BAND))
    step = -(-latent_rows // count)
    return [
        ((rows[0] + r * LATENT_STRIDE, min(rows[1], rows[0] + (r + step) * LATENT_STRIDE)), top + r)
        for r in range(0, latent_rows, step)
    ]


def _decode_latent_rows(
    fp: BinaryIO, model: Model, tile_offsets: list, width: int, height: int, tile_size: int, quality: float,
    pool: Executor, helper: Executor | None = None,
) -> Iterator[np.ndarray]:
    """Entropy-decode the tiles into latent bands (M, rows/16, padded width/16), one row of tiles at a
    time, each tile a task of `pool` (with `helper`'s help, see decode_tile). A row's tasks are handed
    out before the row above is yielded, so workers decode it while that one is synthesised. The file
    is read here, in the caller's thread."""
    hp, wp = padded_size(height), padded_size(width)
    z_row = model.z_row(quality)
    tiles = iter(enumerate(tile_offsets))

    def submit_row(y0: int) -> list[Future]:
        y1 = min(y0 + tile_size, hp)
        cells = []
        for x0 in range(0, wp, tile_size):
            x1 = min(x0 + tile_size, wp)
            i, (offset, size) = next(tiles)
            try:
                _, tile = container.read_chunk(fp, offset, size)
            except container.ContainerError as e:
                raise CorruptFileError(str(e)) from None
            cells.append(pool.submit(decode_tile, model, tile, i, y1 - y0, x1 - x0, z_row, helper))
        return cells

    row_starts = range(0, hp, tile_size)
    ahead = submit_row(row_starts[0])
    for r in range(len(row_starts)):
        cells, ahead = ahead, submit_row(row_starts[r + 1]) if r + 1 < len(row_starts) else []
        latents = [cell.result() for cell in cells]
        yield np.concatenate(latents, axis=2) if len(latents) > 1 else latents[0]


def _synthesise_cell(model, band, top, lx0, rows, cols, inv_gain, kernel, out, mode, session_args) -> None:
    """Pixels rows x cols of `out` from a latent band whose row `top` is the cell's first (in the worker:
    the cells of a row are disjoint parts of `out`). The post-filter runs on the cell and the pixels
    within its reach around it: its edge is the padded picture's where the window has no margin, and
    elsewhere the pixels it reads are exact (the margin outreaches it, tests/test_codec.py)."""
    s, margin = LATENT_STRIDE, SYNTHESIS_MARGIN
    height, width = rows[1] - rows[0], cols[1] - cols[0]
    r0, r1 = max(0, top - margin), min(band.shape[1], top + -(-height // s) + margin)
    c0, c1 = max(0, lx0 - margin), min(band.shape[2], lx0 + -(-width // s) + margin)
    window = np.ascontiguousarray(band[None, :, r0:r1, c0:c1])
    x_hat = model.synthesis(window, inv_gain, **session_args)
    oy, ox = (top - r0) * s, (lx0 - c0) * s
    if kernel is not None:  # not on the rest of the margin: the pixels kept are the same
        reach = postfilter.KERNEL // 2
        y0, x0 = max(0, oy - reach), max(0, ox - reach)
        around = x_hat[:, :, y0 : oy + height + reach, x0 : ox + width + reach]
        x_hat = apply_post_filter(model, np.ascontiguousarray(around), kernel, **session_args)
        oy, ox = oy - y0, ox - x0
    _store(out, x_hat[0, :, oy : oy + height, ox : ox + width], rows, cols, mode)


def apply_post_filter(model: Model, x_hat: np.ndarray, kernel: postfilter.Kernel, **session_args) -> np.ndarray:
    """The synthesis output (1, 3, H, W) through a file's post-filter (spec 4.5, 4.6)."""
    if kernel.clipped:  # the encoder fits fILC to clipped pixels: on unclipped ones it gains about half
        np.clip(x_hat, 0.0, 1.0, out=x_hat)
    filtered = model.post_filter(x_hat, kernel.weights, kernel.bias, **session_args)
    return filtered if kernel.threshold is None else postfilter.pick_classes(x_hat, filtered, kernel.threshold)


def _store(out: np.ndarray, x_hat: np.ndarray, rows, cols, mode: str) -> None:
    """A cell's synthesis output (3, h, w), 0..1 units, into rows x cols of `out` as 8-bit levels."""
    levels = x_hat * np.float32(255)
    target = out[rows[0] : rows[1], cols[0] : cols[1]]
    if mode.startswith("L"):  # gray was coded as R = G = B; the mean of the unrounded channels
        np.clip(levels, 0.0, 255.0, out=levels)
        target[:, :, 0] = np.rint(levels.mean(axis=0))
    else:  # rounded before clipping: the same levels, the ends being integers
        np.rint(levels, out=levels)
        np.clip(levels, 0.0, 255.0, out=levels)
        np.copyto(target[:, :, :3], levels.transpose(1, 2, 0), casting="unsafe")
