"""Damaged files: every truncation point and random byte flips of the golden files.

Only Pillow's allow-list of exceptions may come out, quickly and without large allocations;
never a crash, a hang or a silently wrong picture of the wrong size.
"""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

FIXTURES = sorted((ROOT / "fixtures").glob("*.dcv"))
ALLOWED = (SyntaxError, OSError, ValueError, Image.DecompressionBombError)


def open_and_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data), formats=["DCV"]) as im:
        size = im.size
        im.load()
        assert im.size == size


def check_damaged(data: bytes) -> bool:
    """True if decoding raised an allowed exception, False if it decoded."""
    try:
        open_and_decode(data)
    except ALLOWED:
        return True
    return False


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_every_truncation_fails_cleanly(path) -> None:
    data = path.read_bytes()
    start = time.perf_counter()
    for n in range(len(data)):
        assert check_damaged(data[:n]), f"truncated to {n} bytes but decoded"
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_random_byte_flips_fail_cleanly(path) -> None:
    data = path.read_bytes()
    rng = np.random.default_rng(len(data))
    tracemalloc.start()
    try:
        for _ in range(150):
            damaged = bytearray(data)
            for pos in rng.integers(0, len(data), rng.integers(1, 4)):
                damaged[pos] ^= int(rng.integers(1, 256))
            t = time.perf_counter()
            # every chunk is CRC-protected: a flip anywhere must be detected
            assert check_damaged(bytes(damaged)), "damaged file decoded"
            assert time.perf_counter() - t < 10
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20


def test_hostile_header_sizes_do_not_allocate() -> None:
    """A header announcing 65535x65535 with a tiny payload: rejected before any decoding."""
    from pillow_dcv import container

    data = (FIXTURES[0]).read_bytes()
    parsed = container.parse(data)
    parsed.header["width"] = parsed.header["height"] = 65535
    forged = container.build(parsed)
    tracemalloc.start()
    try:
        with pytest.raises(ALLOWED):
            open_and_decode(forged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_hostile_tile_grid_is_rejected_quickly() -> None:
    """65535x65535 in 64-pixel tiles announces a million tiles: counted, not listed."""
    from pillow_dcv import codec, container

    parsed = container.parse((FIXTURES[0]).read_bytes())
    parsed.header.update(width=65535, height=65535, tile_size=64)
    start = time.perf_counter()
    with pytest.raises(OSError, match="expected 1048576 tiles"):
        codec.read_info(io.BytesIO(container.build(parsed)))
    assert time.perf_counter() - start < 0.5
