"""The container layer alone: byte-exact build/parse round trips, ordering rules, limits."""

from __future__ import annotations

import io
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillow_dcv import container as C

headers = st.fixed_dictionaries(
    {
        "version_major": st.just(C.VERSION_MAJOR),
        "version_minor": st.integers(0, 255),
        "width": st.integers(1, 65535),
        "height": st.integers(1, 65535),
        "colour": st.sampled_from(["rgb", "gray"]),
        "alpha": st.booleans(),
        "quality": st.integers(256, 2048),
        "tile_size": st.integers(1, 1023).map(lambda t: t * 64),
        "model_id": st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=16),
        "model_hash": st.binary(min_size=C.MODEL_HASH_SIZE, max_size=C.MODEL_HASH_SIZE),
        "coder": st.just("ans32"),
        "orientation": st.integers(0, 7),
    }
)
# 1 to 4 tiles: the header's size and tile size say how many a file holds
grids = st.tuples(st.integers(1, 2), st.integers(1, 2))
tile_payloads = st.fixed_dictionaries(
    {"symbols_crc": st.integers(0, 2**32 - 1), "stream": st.binary(max_size=64)}
)
ancillary_types = st.tuples(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3),
).map(lambda t: (t[0] + t[1]).encode()).filter(lambda t: t not in (C.ICC, C.EXIF, C.XMP, C.FILTER, C.CLASS_FILTER))
metadata = st.none() | st.binary(min_size=1, max_size=64)
post_filters = st.none() | st.sampled_from([1, 2]).flatmap(
    lambda r: st.fixed_dictionaries(
        {
            "radius": st.just(r),
            "step_log2": st.integers(4, 14),
            "coefficients": st.lists(
                st.integers(-C.MAX_FILTER_COEFFICIENT, C.MAX_FILTER_COEFFICIENT),
                min_size=3 * (3 * (2 * r * r + 2 * r + 1) + 1),
                max_size=3 * (3 * (2 * r * r + 2 * r + 1) + 1),
            ),
        }
    )
)

coefficients = st.integers(-C.MAX_FILTER_COEFFICIENT, C.MAX_FILTER_COEFFICIENT)
class_windows = st.integers(1, 2).flatmap(
    lambda own: st.fixed_dictionaries(
        {
            "own_radius": st.just(own),
            "cross_radius": st.integers(0, own),
            "step_log2": st.integers(4, 14),
            "orders": st.lists(st.integers(0, 7), min_size=C.FILTER_GROUPS, max_size=C.FILTER_GROUPS),
        }
    )
)


@st.composite
def class_filters(draw) -> dict:
    count = draw(st.integers(1, C.MAX_FILTER_CLASSES))
    windows = draw(st.lists(class_windows, min_size=count, max_size=count))
    sizes = [len(C.coefficient_groups(w["own_radius"], w["cross_radius"])) for w in windows]
    return {
        "count": count,
        "threshold": draw(st.integers(0, 65535)) if count == 2 else None,
        "windows": windows,
        # mostly small values, as filters have, and sometimes any value the format allows
        "coefficients": [draw(st.lists(st.integers(-40, 40) | coefficients, min_size=n, max_size=n)) for n in sizes],
    }


# a file has at most one of the two post-filter chunks
post_filter_chunks = st.fixed_dictionaries({"post_filter": post_filters}) | st.fixed_dictionaries(
    {"class_filter": st.none() | class_filters()}
)


@st.composite
def containers(draw) -> C.Container:
    header = draw(headers)
    columns, rows = draw(grids)
    t, most = header["tile_size"], C.MAX_SIDE
    header["width"] = draw(st.integers((columns - 1) * t + 1, min(columns * t, most)))
    header["height"] = draw(st.integers((rows - 1) * t + 1, min(rows * t, most)))
    alpha = {"method": "zlib-left", "data": draw(st.binary(max_size=32))} if header["alpha"] else None
    return C.Container(
        header=header,
        tiles=draw(st.lists(tile_payloads, min_size=columns * rows, max_size=columns * rows)),
        alpha=alpha,
        icc_profile=draw(metadata),
        exif=draw(metadata),
        xmp=draw(metadata),
        **draw(post_filter_chunks),
        unknown=draw(st.lists(st.tuples(ancillary_types, st.binary(max_size=16)), max_size=3)),
    )


@settings(max_examples=200, deadline=None)
@given(containers())
def test_build_parse_build_is_byte_identical(c: C.Container) -> None:
    data = C.build(c)
    parsed = C.parse(data)
    assert parsed == c
    assert C.build(parsed) == data
    # the lazy scanner sees the same small chunks and finds every tile
    index = C.scan(io.BytesIO(data))
    assert index.container.header == c.header
    assert index.container.exif == c.exif and index.container.unknown == c.unknown
    assert index.container.post_filter == c.post_filter and index.container.class_filter == c.class_filter
    assert len(index.tile_offsets) == len(c.tiles)
    for (offset, size), tile in zip(index.tile_offsets, c.tiles):
        assert C.read_chunk(io.BytesIO(data), offset, size) == (C.TILE, tile)


def minimal(tiles: int = 1) -> C.Container:
    """A valid container of a 64 x 2 image in one 64-pixel tile, or of 64*tiles x 2 in a row of them."""
    header = {
        "version_major": C.VERSION_MAJOR, "version_minor": 0, "width": 64 * tiles, "height": 2, "colour": "rgb",
        "alpha": False, "quality": 1024, "tile_size": 64, "model_id": "m", "model_hash": bytes(C.MODEL_HASH_SIZE),
        "coder": "ans32", "orientation": 0,
    }
    return C.Container(header=header, tiles=[{"symbols_crc": i, "stream": b""} for i in range(tiles)])


def raw_chunk(chunk_type: bytes, payload: bytes) -> bytes:
    """A chunk with a correct CRC around any payload (the builder would refuse a bad header)."""
    body = chunk_type + len(payload).to_bytes(4, "big") + payload
    return body + zlib.crc32(body).to_bytes(4, "big")


def chunks_file(*chunks: tuple[bytes, object]) -> bytes:
    return C.DCVFile.build({"chunks": [C.chunk(t, d) for t, d in chunks]})


def test_unknown_critical_chunk_is_rejected() -> None:
    c = minimal()
    data = chunks_file((C.HEADER, c.header), (b"ZZZZ", b"x"), (C.TILE, c.tiles[0]))
    with pytest.raises(C.ContainerError, match="unknown critical chunk"):
        C.parse(data)


def test_unknown_ancillary_chunk_is_kept() -> None:
    c = minimal()
    data = chunks_file((C.HEADER, c.header), (b"zzzz", b"x"), (C.TILE, c.tiles[0]))
    assert C.parse(data).unknown == [(b"zzzz", b"x")]


@pytest.mark.parametrize(
    "order, message",
    [
        ("THT", "first chunk must be DHDR"),
        ("", "first chunk must be DHDR"),
        ("HTeT", "after the first TILE"),
        ("HHTT", "more than one DHDR"),
        ("HeeTT", "more than one"),
        ("HT", "truncated DCV file: expected 2 tiles, found 1"),
        ("HTTT", "data after the last tile"),
        ("HTTe", "data after the last tile"),
    ],
)
def test_ordering_rules(order: str, message: str) -> None:
    c = minimal(tiles=2)
    table = {"H": (C.HEADER, c.header), "T": (C.TILE, c.tiles[0]), "e": (C.EXIF, b"ex")}
    data = chunks_file(*[table[k] for k in order])
    with pytest.raises(C.ContainerError, match=message):
        C.parse(data)


def test_crc_mismatch_is_reported() -> None:
    data = bytearray(C.build(minimal()))
    data[20] ^= 1  # inside the DHDR data
    with pytest.raises(C.ContainerError, match="damaged"):
        C.parse(bytes(data))
    with pytest.raises(C.ContainerError):
        C.verify(io.BytesIO(bytes(data)))


def test_data_after_the_last_tile_is_rejected() -> None:
    data = C.build(minimal()) + b"junk"
    with pytest.raises(C.ContainerError, match="after the last tile"):
        C.parse(data)
    with pytest.raises(C.ContainerError, match="after the last tile"):
        C.scan(io.BytesIO(data))


def test_huge_length_does_not_allocate() -> None:
    data = bytearray(C.build(minimal()))
    tile_at = data.index(C.TILE)
    data[tile_at + 4 : tile_at + 8] = (2**32 - 1).to_bytes(4, "big")
    with pytest.raises(C.ContainerError, match="truncated or damaged"):
        C.scan(io.BytesIO(bytes(data)))


def test_bad_tile_size_and_version() -> None:
    c = minimal()
    c.header["tile_size"] = 100
    with pytest.raises(C.ContainerError, match="tile size"):
        C.parse(C.build(c))
    for major in (1, 2, 3):  # 1 blended overlapping tiles; 2 had two streams per tile; 3 no orientation
        c = minimal()
        c.header["version_major"] = major
        with pytest.raises(C.ContainerError, match="unsupported DCV version"):
            C.parse(C.build(c))
    c = minimal()
    header = C.Header.build(c.header)[:-1] + b"\x08"  # orientation 8: there are 8, 0..7
    with pytest.raises(C.ContainerError, match="damaged chunk"):
        C.parse(C.SIGNATURE + raw_chunk(C.HEADER, header) + raw_chunk(C.TILE, bytes(4)))


def test_version_3_header_is_reported_as_such() -> None:
    """A 3.1 file's DHDR is a byte shorter (no orientation): the version is read before the layout."""
    c = minimal()
    header = {**c.header, "version_major": 3, "version_minor": 1}
    data = C.SIGNATURE + raw_chunk(C.HEADER, C.Header.build(header)[:-1])
    with pytest.raises(C.ContainerError, match=r"unsupported DCV version 3\.1"):
        C.parse(data)


def test_one_tile_file_overhead() -> None:
    """What a one-tile RGB file spends besides its entropy-coded stream: signature 8, DHDR 12 + 38,
    TILE 12 + 4 (the symbols CRC)."""
    c = minimal()
    assert len(C.build(c)) == 8 + 12 + 38 + 12 + 4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | st.binary(max_size=40).map(lambda codes: b"\x02\x01\x00" + b"\x48\x00\x00" * 2 + codes))
def test_any_filter_payload_parses_or_is_reported(payload: bytes) -> None:
    """Behind a correct CRC a fILC or fILT payload is either a filter or a ContainerError, and one that
    parses builds back to the same bytes (the Exp-Golomb codes have one spelling)."""
    data = C.build(minimal())
    head = len(C.SIGNATURE) + 12 + 38
    for chunk_type in (C.CLASS_FILTER, C.FILTER):
        try:
            parsed = C.parse(data[:head] + raw_chunk(chunk_type, payload) + data[head:])
        except C.ContainerError:
            continue
        value = parsed.class_filter if chunk_type == C.CLASS_FILTER else parsed.post_filter
        assert C.chunk_bytes(chunk_type, value) == raw_chunk(chunk_type, payload)
