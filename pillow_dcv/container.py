"""The .dcv container: bytes <-> structured chunks. Defined once, with construct (spec/format.md).

This layer knows nothing about neural networks or Pillow. A file is an 8-byte signature followed
by chunks; each chunk is ``type (4 ASCII) | length (u32 BE, of data) | data | crc32 (u32 BE, of
type + length + data)``. The file ends right after its last tile chunk: the header says how many
there are. Errors leave this module only as :class:`ContainerError` (a ``ValueError``) with a
message saying what is wrong; callers map it to their own conventions.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from construct import (
    Adapter,
    Array,
    BitsInteger,
    BitStruct,
    Bytes,
    Check,
    Checksum,
    Const,
    ConstructError,
    GreedyBytes,
    GreedyRange,
    If,
    Int8ub,
    Int16ub,
    Int32ub,
    Mapping,
    PaddedString,
    Prefixed,
    RawCopy,
    Struct,
    Switch,
    Terminated,
    ValidationError,
    ZigZag,
    this,
)

SIGNATURE = b"\x89DCV\r\n\x1a\n"
VERSION_MAJOR = 4
VERSION_MINOR = 2

MAX_SIDE = 65535
MAX_CHUNK_LENGTH = 1 << 30
MAX_METADATA_LENGTH = 64 << 20
MAX_FILTER_COEFFICIENT = 1 << 20
MAX_FILTER_LENGTH = 2 + 120 * 3  # radius 2: 120 varints of |k| <= 2^20, at most 3 bytes each
MAX_FILTER_CLASSES = 2
MAX_CLASS_FILTER_LENGTH = 3 + 3 * MAX_FILTER_CLASSES + (MAX_FILTER_CLASSES * 120 * 43 + 7) // 8  # order-0 codes
FILTER_GROUPS = 5  # own centre, own others, cross centre, cross others, bias: one Exp-Golomb order each
MODEL_HASH_SIZE = 8  # bytes of the model's SHA-256 a file keeps: enough to tell weights apart

HEADER, TILE, ALPHA, FILTER, CLASS_FILTER = b"DHDR", b"TILE", b"ALPH", b"fILT", b"fILC"
ICC, EXIF, XMP = b"iCCP", b"eXIf", b"xMPt"
FILTER_LENGTH_LIMITS = {FILTER: MAX_FILTER_LENGTH, CLASS_FILTER: MAX_CLASS_FILTER_LENGTH}


class ContainerError(ValueError):
    """The bytes are not a well-formed .dcv container."""


Header = Struct(
    "version_major" / Int8ub,
    "version_minor" / Int8ub,
    "width" / Int16ub,
    "height" / Int16ub,
    Check((this.width >= 1) & (this.height >= 1)),
    "colour" / Mapping(Int8ub, {"rgb": 0, "gray": 1}),
    "alpha" / Mapping(Int8ub, {False: 0, True: 1}),
    "quality" / Int16ub,  # quality x 256 (8.8 fixed point): 256 .. 2048
    "tile_size" / Int16ub,  # pixels, a multiple of 64
    "model_id" / PaddedString(16, "ascii"),
    "model_hash" / Bytes(MODEL_HASH_SIZE),  # the first bytes of the SHA-256 of the model's files
    "coder" / Mapping(Int8ub, {"ans32": 1}),  # constriction AnsCoder, 32-bit words, little-endian
    # how the coded picture was turned: bit 2 transposed, then bit 1 flipped top-bottom, bit 0 left-right
    "orientation" / Int8ub,
    Check(this.orientation <= 7),
    Terminated,
)

Tile = Struct(
    "symbols_crc" / Int32ub,  # CRC-32 of the tile's index and its decoded symbols
    "stream" / GreedyBytes,  # one rANS stream: z, then the parts of y
)

Alpha = Struct(
    "method" / Mapping(Int8ub, {"zlib-left": 0}),
    "data" / GreedyBytes,
)

# The post-filter (section 4.5): ancillary, so a 4.0 decoder skips it and shows the unfiltered picture
Filter = Struct(
    "radius" / Int8ub,
    Check((this.radius >= 1) & (this.radius <= 2)),
    "step_log2" / Int8ub,  # the coefficients' step is 2^-step_log2
    Check((this.step_log2 >= 4) & (this.step_log2 <= 14)),
    "coefficients" / GreedyRange(ZigZag),  # signed LEB128 varints; how many follows from the radius
    Terminated,
)


def window_taps(radius: int) -> int:
    """Offsets in the half-window of a radius (spec 4.5): 1, 5 or 13."""
    return 2 * radius * radius + 2 * radius + 1


def coefficient_groups(own_radius: int, cross_radius: int) -> list[int]:
    """The Exp-Golomb group of each coefficient of a class, in the chunk's order (spec 4.6): per output
    channel, each input channel's taps (its own channel's window or the cross window), then the bias."""
    groups = []
    for c in range(3):
        for ci in range(3):
            centre, others = (0, 1) if ci == c else (2, 3)
            groups += [centre] + [others] * (window_taps(own_radius if ci == c else cross_radius) - 1)
        groups.append(4)
    return groups


class ExpGolombCoefficients(Adapter):
    """Every class's coefficients as signed Exp-Golomb codes, MSB first, one order per group; the last
    byte is padded with zero bits. The counts and orders come from the class headers before them."""

    MAX_PREFIX = 22  # zeros before a code's first one: enough for |k| <= 2^20 at order 0

    def _decode(self, data: bytes, context, path) -> list[list[int]]:
        bits = "".join(f"{b:08b}" for b in data)
        pos, out = 0, []
        for cls in context.windows:
            values = []
            for group in coefficient_groups(cls.own_radius, cls.cross_radius):
                order = cls.orders[group]
                one = bits.find("1", pos, pos + self.MAX_PREFIX + 1)
                if one < 0:
                    cut = len(bits) <= pos + self.MAX_PREFIX
                    raise ValidationError(f"fILC coefficients {'cut short' if cut else 'code too long'}", path=path)
                length = one - pos + 1 + order
                if one + length > len(bits):
                    raise ValidationError("fILC coefficients cut short", path=path)
                u = int(bits[one : one + length], 2) - (1 << order)
                pos = one + length
                k = (u >> 1) ^ -(u & 1)  # zigzag: 0, 1, 2, 3, ... -> 0, -1, 1, -2, ...
                if abs(k) > MAX_FILTER_COEFFICIENT:
                    raise ValidationError("fILC coefficient out of range", path=path)
                values.append(k)
            out.append(values)
        if len(bits) - pos >= 8 or "1" in bits[pos:]:
            raise ValidationError("fILC coefficients followed by more than zero padding", path=path)
        return out

    def _encode(self, classes: list[list[int]], context, path) -> bytes:
        codes = []
        for cls, values in zip(context.windows, classes, strict=True):
            groups = coefficient_groups(cls["own_radius"], cls["cross_radius"])
            if len(values) != len(groups):
                raise ValidationError(f"fILC class needs {len(groups)} coefficients, got {len(values)}", path=path)
            for group, k in zip(groups, values):
                order = cls["orders"][group]
                u = (2 * k if k >= 0 else -2 * k - 1) + (1 << order)
                codes.append("0" * (u.bit_length() - 1 - order) + format(u, "b"))
        bits = "".join(codes)
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


# A class's window and coding (section 4.6): 3 bytes
FilterClass = BitStruct(
    "own_radius" / BitsInteger(2),  # each output channel's window on its own input channel
    "cross_radius" / BitsInteger(2),  # ... and on the other two (0: the centre tap only)
    Check((this.own_radius >= 1) & (this.own_radius <= 2) & (this.cross_radius <= this.own_radius)),
    "step_log2" / BitsInteger(4),
    Check((this.step_log2 >= 4) & (this.step_log2 <= 14)),
    "orders" / Array(FILTER_GROUPS, BitsInteger(3)),
    Const(0, BitsInteger(1)),
)

# The classified post-filter (section 4.6, version 4.2): up to two filters, chosen per pixel by the
# local activity of the unfiltered picture. Ancillary like fILT, so older decoders skip it
ClassFilter = Struct(
    "count" / Int8ub,
    Check((this.count >= 1) & (this.count <= MAX_FILTER_CLASSES)),
    "threshold" / If(this.count == 2, Int16ub),  # activity above it: the second class
    "windows" / Array(this.count, FilterClass),
    "coefficients" / ExpGolombCoefficients(GreedyBytes),
    Terminated,
)

ChunkBody = Struct(
    "type" / Bytes(4),
    "data" / Prefixed(
        Int32ub,
        Switch(
            this.type,
            {HEADER: Header, TILE: Tile, ALPHA: Alpha, FILTER: Filter, CLASS_FILTER: ClassFilter},
            default=GreedyBytes,
        ),
    ),
)

Chunk = Struct(
    "body" / RawCopy(ChunkBody),
    "crc" / Checksum(Int32ub, lambda data: zlib.crc32(data), this.body.data),
)

ChunkHead = Struct("type" / Bytes(4), "length" / Int32ub)

DCVFile = Struct(
    "signature" / Const(SIGNATURE),
    "chunks" / GreedyRange(Chunk),  # for building; reading walks the chunks with checks (scan)
)


def is_critical(chunk_type: bytes) -> bool:
    """Like PNG: an upper-case first letter marks a chunk a decoder must understand."""
    return chunk_type[:1].isupper()


def tile_count(header: dict) -> int:
    """Tiles in the grid of a checked header: counted, not listed, so a hostile size costs nothing."""
    t = header["tile_size"]
    return -(-header["width"] // t) * -(-header["height"] // t)


@dataclass
class Container:
    """A parsed file: header, metadata, optional alpha, and the tile payloads in order."""

    header: dict
    tiles: list[dict] = field(default_factory=list)
    alpha: dict | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    post_filter: dict | None = None  # fILT (4.1): radius, step_log2, coefficients
    class_filter: dict | None = None  # fILC (4.2): count, threshold, windows, coefficients
    unknown: list[tuple[bytes, bytes]] = field(default_factory=list)  # ancillary chunks kept as-is


def chunk(chunk_type: bytes, data: object) -> dict:
    return {"body": {"value": {"type": chunk_type, "data": data}}}


def chunk_bytes(chunk_type: bytes, data: object) -> bytes:
    """One chunk as it is written (what it adds to a file)."""
    try:
        return Chunk.build(chunk(chunk_type, data))
    except ConstructError as e:
        raise ContainerError(f"cannot build {chunk_type!r} chunk: {e}") from None


def build(container: Container) -> bytes:
    """Chunks in the order the spec requires: header, metadata, alpha, tiles."""
    chunks = [chunk(HEADER, container.header)]
    for chunk_type, payload in ((ICC, container.icc_profile), (EXIF, container.exif), (XMP, container.xmp)):
        if payload is not None:
            chunks.append(chunk(chunk_type, payload))
    chunks += [chunk(t, d) for t, d in container.unknown]
    if container.post_filter is not None:
        chunks.append(chunk(FILTER, container.post_filter))
    if container.class_filter is not None:
        chunks.append(chunk(CLASS_FILTER, container.class_filter))
    if container.alpha is not None:
        chunks.append(chunk(ALPHA, container.alpha))
    chunks += [chunk(TILE, t) for t in container.tiles]
    try:
        return DCVFile.build({"chunks": chunks})
    except ConstructError as e:
        raise ContainerError(f"cannot build DCV container: {e}") from None


def parse(data: bytes) -> Container:
    """Parse and check a whole file held in memory, tiles included."""
    fp = io.BytesIO(data)
    index = scan(fp)
    index.container.tiles = [_plain(read_chunk(fp, offset, size)[1]) for offset, size in index.tile_offsets]
    return index.container


@dataclass
class Index:
    """What a lazy open learns from the small chunks, plus where the tiles lie in the file."""

    container: Container
    tile_offsets: list[tuple[int, int]]  # (offset of the chunk, total chunk size) per tile
    chunk_table: list[tuple[bytes, int, int]] = field(default_factory=list)  # (type, offset, size), all chunks


def scan(fp: BinaryIO) -> Index:
    """Read the header and metadata chunks, and skip over (but locate) the tile chunks.

    ``fp`` is positioned at the signature. Lengths are checked against the bytes that remain
    before anything is read, so a damaged length never causes a large allocation.
    """
    start = fp.tell()
    end = fp.seek(0, 2)
    fp.seek(start)
    if fp.read(len(SIGNATURE)) != SIGNATURE:
        raise ContainerError("not a DCV file (bad signature)")
    chunk_table: list[tuple[bytes, int, int]] = []

    def next_chunk() -> tuple[bytes, int, int] | None:
        offset = fp.tell()
        head_bytes = fp.read(ChunkHead.sizeof())
        if not head_bytes:
            return None
        if len(head_bytes) < ChunkHead.sizeof():
            raise ContainerError(f"truncated chunk at offset {offset}")
        head = ChunkHead.parse(head_bytes)
        size = ChunkHead.sizeof() + head.length + 4
        if head.length > MAX_CHUNK_LENGTH or offset + size > end:
            raise ContainerError(f"truncated or damaged chunk {head.type!r} at offset {offset}")
        if head.length > FILTER_LENGTH_LIMITS.get(head.type, MAX_CHUNK_LENGTH):
            raise ContainerError(f"{head.type.decode()} chunk at offset {offset} is too large")
        if head.type != TILE and head.length > MAX_METADATA_LENGTH:
            raise ContainerError(f"chunk {head.type!r} at offset {offset} is too large")
        chunk_table.append((head.type, offset, size))
        return head.type, offset, size

    first = next_chunk()
    if first is None or first[0] != HEADER:
        raise ContainerError("the first chunk must be DHDR")
    _check_version(fp, first[1])
    container = Container(header=_checked_header(read_chunk(fp, first[1], first[2])[1]))
    expected = tile_count(container.header)
    tile_offsets: list[tuple[int, int]] = []
    while len(tile_offsets) < expected:
        found = next_chunk()
        if found is None:
            raise ContainerError(f"truncated DCV file: expected {expected} tiles, found {len(tile_offsets)}")
        chunk_type, offset, size = found
        if chunk_type == TILE:
            tile_offsets.append((offset, size))
            fp.seek(offset + size)
        elif tile_offsets:
            raise ContainerError(f"chunk {chunk_type!r} after the first TILE")
        else:
            _add_chunk(container, *read_chunk(fp, offset, size))
    if fp.tell() != end:
        raise ContainerError(f"data after the last tile (the header announces {expected})")
    if container.header["alpha"] and container.alpha is None:
        raise ContainerError("header announces alpha but there is no ALPH chunk")
    return Index(container, tile_offsets, chunk_table)


def read_chunk(fp: BinaryIO, offset: int, size: int) -> tuple[bytes, object]:
    """Read one chunk located by :func:`scan`, checking its CRC."""
    fp.seek(offset)
    raw = fp.read(size)
    if len(raw) != size:
        raise ContainerError(f"truncated chunk at offset {offset}")
    try:
        parsed = Chunk.parse(raw)
    except ConstructError as e:
        raise ContainerError(f"damaged chunk at offset {offset}: {_reason(e)}") from None
    return parsed.body.value.type, parsed.body.value.data


def verify(fp: BinaryIO) -> None:
    """Check the structure and every CRC without decoding anything."""
    index = scan(fp)
    for offset, size in index.tile_offsets:
        read_chunk(fp, offset, size)


def _check_version(fp: BinaryIO, offset: int) -> None:
    """Before the header is parsed: another major version may lay it out differently."""
    fp.seek(offset + ChunkHead.sizeof())
    version = fp.read(2)
    if len(version) == 2 and version[0] != VERSION_MAJOR:
        raise ContainerError(f"unsupported DCV version {version[0]}.{version[1]}")


def _checked_header(data: object) -> dict:
    header = _plain(data)
    if header["tile_size"] == 0 or header["tile_size"] % 64:
        raise ContainerError(f"invalid tile size {header['tile_size']}")
    return header


def _checked_filter(data: object) -> dict:
    post_filter = _plain(data)
    post_filter["coefficients"] = list(post_filter["coefficients"])
    radius, count = post_filter["radius"], len(post_filter["coefficients"])
    expected = 3 * (3 * window_taps(radius) + 1)  # spec 4.5: 3 x (3 x offsets + bias)
    if count != expected:
        raise ContainerError(f"fILT chunk has {count} coefficients, radius {radius} needs {expected}")
    if max(abs(k) for k in post_filter["coefficients"]) > MAX_FILTER_COEFFICIENT:
        raise ContainerError("fILT coefficient out of range")
    return post_filter


def _add_chunk(container: Container, chunk_type: bytes, data: object) -> None:
    """A chunk before the first TILE: the ordering and count rules of spec/format.md section 3.4."""
    if chunk_type == HEADER:
        raise ContainerError("more than one DHDR chunk")
    if chunk_type == ALPHA:
        if container.alpha is not None or not container.header["alpha"]:
            raise ContainerError("unexpected ALPH chunk")
        container.alpha = _plain(data)
    elif chunk_type in (ICC, EXIF, XMP):
        attr = {ICC: "icc_profile", EXIF: "exif", XMP: "xmp"}[chunk_type]
        if getattr(container, attr) is not None:
            raise ContainerError(f"more than one {chunk_type!r} chunk")
        setattr(container, attr, bytes(data))
    elif chunk_type == FILTER:
        if container.post_filter is not None or container.class_filter is not None:
            raise ContainerError("more than one post-filter chunk (fILT, fILC)")
        container.post_filter = _checked_filter(data)
    elif chunk_type == CLASS_FILTER:
        if container.post_filter is not None or container.class_filter is not None:
            raise ContainerError("more than one post-filter chunk (fILT, fILC)")
        container.class_filter = _plain_class_filter(data)
    elif is_critical(chunk_type):
        raise ContainerError(f"unknown critical chunk {chunk_type!r}")
    else:
        container.unknown.append((chunk_type, bytes(data)))


def _plain_class_filter(data: object) -> dict:
    class_filter = _plain(data)
    class_filter["windows"] = [{**_plain(w), "orders": list(w.orders)} for w in data.windows]
    class_filter["coefficients"] = [list(k) for k in data.coefficients]
    return class_filter


def _plain(data: object) -> dict:
    return {k: v for k, v in dict(data).items() if not k.startswith("_")}


def _reason(error: ConstructError) -> str:
    return "; ".join(str(error).splitlines())[:200]  # where, then what
