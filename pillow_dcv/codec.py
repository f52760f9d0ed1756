"""The codec: pixel arrays <-> container chunks, via the model and the entropy coder.

Knows nothing about Pillow. Images are coded as independent tiles (bounded memory, parallel-
friendly); neighbouring tiles overlap and are cross-faded so their edges do not show.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from . import container, entropy
from .models import DEFAULT_MODEL, Model, get_model

DOWNSAMPLING = 64  # g_a (x16) then h_a (x4): tiles are padded to a multiple of this
DEFAULT_TILE_SIZE = 768
DEFAULT_OVERLAP = 32
MIN_QUALITY, MAX_QUALITY = 1.0, 8.0
MODES = ("RGB", "L", "RGBA", "LA")
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
    if h["tile_overlap"] * 2 >= h["tile_size"]:
        raise CorruptFileError("invalid tile overlap in header")
    expected = tile_count(h["width"], h["height"], h["tile_size"])  # arithmetic: no list for hostile sizes
    if len(index.tile_offsets) != expected:
        raise CorruptFileError(f"expected {expected} tiles, found {len(index.tile_offsets)}")
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
    """Core rectangles (y0, y1, x0, x1) in raster order."""
    return [
        (y, min(y + tile, height), x, min(x + tile, width))
        for y in range(0, height, tile)
        for x in range(0, width, tile)
    ]


def tile_count(width: int, height: int, tile: int) -> int:
    return -(-width // tile) * -(-height // tile)


def extend(core: tuple[int, int, int, int], overlap: int, width: int, height: int) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = core
    return max(0, y0 - overlap), min(height, y1 + overlap), max(0, x0 - overlap), min(width, x1 + overlap)


def ramp(start: int, stop: int, core0: int, core1: int, size: int, overlap: int) -> np.ndarray:
    """1-D blending weights over [start, stop): a linear cross-fade across each interior boundary.

    Across a boundary b the band [b - overlap, b + overlap) is shared; the two tiles' weights there
    are t and 1 - t, so every pixel's weights add up to one.
    """
    p = np.arange(start, stop, dtype=np.float32) + 0.5
    w = np.ones(stop - start, dtype=np.float32)
    if overlap:
        if core0 > 0:
            w = np.minimum(w, np.clip((p - (core0 - overlap)) / (2 * overlap), 0, 1))
        if core1 < size:
            w = np.minimum(w, np.clip(((core1 + overlap) - p) / (2 * overlap), 0, 1))
    return w


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    h, w = x.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    return np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else x


def symbols_crc(z: np.ndarray, y: np.ndarray) -> int:
    crc = zlib.crc32(z.astype("<i4").tobytes())
    return zlib.crc32(y.astype("<i4").tobytes(), crc)


def encode_tile(model: Model, pixels: np.ndarray, gain: np.ndarray, index: int) -> dict:
    x = pad_to_multiple(pixels, DOWNSAMPLING).astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    y, z = model.analysis(np.ascontiguousarray(x), gain)
    z_channel = np.broadcast_to(np.arange(z.shape[1])[:, None, None], z.shape[1:])
    z_sym = model.z_tables.clamp(np.rint(z[0]).astype(np.int64), z_channel)
    mu, scale_index = model.prior(z_sym)
    y_sym = model.y_tables.clamp(np.rint(y[0].astype(np.float64) - mu).astype(np.int64), scale_index)
    return {
        "index": index,
        "symbols_crc": symbols_crc(z_sym, y_sym),
        "z_stream": entropy.encode(z_sym, z_channel, model.z_tables),
        "y_stream": entropy.encode(y_sym, scale_index, model.y_tables),
    }


def decode_tile(model: Model, tile: dict, height: int, width: int, inv_gain: np.ndarray, **session_args) -> np.ndarray:
    """-> float32 (h, w, 3) in [0, 255] for a tile region of the given size."""
    hp, wp = -(-height // DOWNSAMPLING) * DOWNSAMPLING, -(-width // DOWNSAMPLING) * DOWNSAMPLING
    cz = len(model.z_tables.offsets)
    z_shape = (cz, hp // DOWNSAMPLING, wp // DOWNSAMPLING)
    z_channel = np.broadcast_to(np.arange(cz)[:, None, None], z_shape)
    try:
        z_sym = entropy.decode(tile["z_stream"], z_channel, model.z_tables).reshape(z_shape)
        mu, scale_index = model.prior(z_sym)
        y_sym = entropy.decode(tile["y_stream"], scale_index, model.y_tables).reshape(scale_index.shape)
    except (ValueError, RuntimeError, OverflowError) as e:
        raise CorruptFileError(f"damaged entropy-coded data in tile {tile['index']}: {e}") from None
    if symbols_crc(z_sym, y_sym) != tile["symbols_crc"]:
        raise CorruptFileError(f"tile {tile['index']}: decoded symbols do not match their checksum")
    y_hat = (y_sym + mu).astype(np.float32)[None]
    x_hat = model.synthesis(y_hat, inv_gain, **session_args)[0, :, :height, :width]
    return np.clip(x_hat.transpose(1, 2, 0) * 255.0, 0.0, 255.0)


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


def encode(
    pixels: np.ndarray,
    mode: str,
    quality: float = 4,
    *,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    model_id: str = DEFAULT_MODEL,
) -> bytes:
    """Encode an (H, W, C) uint8 array (C = 3 for RGB, 1 for L, 4 for RGBA, 2 for LA) to .dcv bytes."""
    if mode not in MODES:
        raise ValueError(f"cannot encode mode {mode}")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != len(mode):
        raise ValueError(f"expected an (H, W, {len(mode)}) uint8 array for mode {mode}")
    height, width = pixels.shape[:2]
    if not (1 <= width <= container.MAX_SIDE and 1 <= height <= container.MAX_SIDE):
        raise ValueError(f"image size {width}x{height} is outside 1..{container.MAX_SIDE}")
    if tile_size % DOWNSAMPLING or not DOWNSAMPLING <= tile_size <= 4096:
        raise ValueError(f"tile_size must be a multiple of {DOWNSAMPLING} from 64 to 4096")
    if not 0 <= overlap < tile_size // 2 or overlap > 255:
        raise ValueError("overlap must be from 0 to min(255, tile_size / 2)")
    q = validate_quality(quality)
    try:
        model = get_model(model_id)
    except KeyError:
        raise ValueError(f"unknown model {model_id!r}") from None
    gain, _ = model.gains(q)
    colour = pixels[:, :, :3] if mode.startswith("RGB") else np.repeat(pixels[:, :, :1], 3, axis=2)
    tiles = []
    for i, core in enumerate(tile_grid(width, height, tile_size)):
        y0, y1, x0, x1 = extend(core, overlap, width, height)
        tiles.append(encode_tile(model, colour[y0:y1, x0:x1], gain, i))
    header = {
        "version_major": container.VERSION_MAJOR,
        "version_minor": container.VERSION_MINOR,
        "width": width,
        "height": height,
        "colour": "rgb" if mode.startswith("RGB") else "gray",
        "alpha": mode.endswith("A"),
        "quality": int(q * 256),
        "tile_size": tile_size,
        "tile_overlap": overlap,
        "model_id": model.model_id,
        "model_hash": model.hash,
        "coder": entropy.CODER_NAME,
    }
    alpha = encode_alpha(pixels[:, :, -1]) if mode.endswith("A") else None
    c = container.Container(header=header, tiles=tiles, alpha=alpha, icc_profile=icc_profile, exif=exif, xmp=xmp)
    return container.build(c)


def decode(fp: BinaryIO, info: Info, **session_args) -> np.ndarray:
    """Decode the pixels of a file opened with :func:`read_info` -> (H, W, C) uint8.

    Tiles are decoded one row of tiles at a time into a float band; rows that no later tile
    touches are rounded into the output at once, so memory beyond the output stays bounded by
    one band whatever the image size.
    """
    header = info.index.container.header
    try:
        model = get_model(header["model_id"])
    except KeyError:
        raise CorruptFileError(f"file needs model {header['model_id']!r}, which this version lacks") from None
    if model.hash != header["model_hash"]:
        raise CorruptFileError(f"file was made with different weights for model {header['model_id']!r}")
    width, height = info.width, info.height
    tile_size, overlap = header["tile_size"], header["tile_overlap"]
    _, inv_gain = model.gains(info.quality)
    grid = tile_grid(width, height, tile_size)
    tiles = iter(zip(range(len(grid)), grid, info.index.tile_offsets))
    out = np.empty((height, width, len(info.mode)), dtype=np.uint8)
    colour_channels = 1 if info.mode.startswith("L") else 3
    carry = None  # partial sums of rows shared with the next row of tiles
    for row_start in range(0, height, tile_size):
        row_end = min(row_start + tile_size, height)
        band_y0, band_y1 = max(0, row_start - overlap), min(height, row_end + overlap)
        band = np.zeros((band_y1 - band_y0, width, 3), dtype=np.float32)
        if carry is not None:
            band[: len(carry)] += carry
        for _ in range(0, width, tile_size):
            i, core, (offset, size) = next(tiles)
            region, (y0, y1, x0, x1) = _read_and_decode_tile(fp, model, i, core, offset, size, info, inv_gain,
                                                            session_args)
            wy = ramp(y0, y1, core[0], core[1], height, overlap)
            wx = ramp(x0, x1, core[2], core[3], width, overlap)
            band[y0 - band_y0 : y1 - band_y0, x0:x1] += region * (wy[:, None, None] * wx[None, :, None])
        done = band_y1 if row_end == height else row_end - overlap  # rows no later tile touches
        finished = band[: done - band_y0]
        if colour_channels == 1:
            finished = finished.mean(axis=2, keepdims=True)
        out[band_y0:done, :, :colour_channels] = np.rint(finished)
        carry = band[done - band_y0 :]
    if info.mode.endswith("A"):
        out[:, :, -1] = decode_alpha(info.index.container.alpha, height, width)
    return out


def _read_and_decode_tile(fp, model, i, core, offset, size, info, inv_gain, session_args):
    try:
        _, tile = container.read_chunk(fp, offset, size)
    except container.ContainerError as e:
        raise CorruptFileError(str(e)) from None
    if tile["index"] != i:
        raise CorruptFileError(f"tile {i} is out of order")
    y0, y1, x0, x1 = extend(core, info.index.container.header["tile_overlap"], info.width, info.height)
    return decode_tile(model, tile, y1 - y0, x1 - x0, inv_gain, **session_args), (y0, y1, x0, x1)
