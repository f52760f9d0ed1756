"""Fitted entropy tables (training/tables.py; numpy, Pillow and the runtime only)."""

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from tables import fitted_counts, ideal_bits, level_histograms  # noqa: E402

from pillow_dcv import codec  # noqa: E402
from pillow_dcv.models import get_model  # noqa: E402


def test_fitted_counts_follow_the_histogram_and_keep_the_gaussian_where_unseen() -> None:
    gaussian = [np.array([1, 10, 100, 10, 1]), np.array([5, 20, 50, 20, 5])]
    hist = [np.array([0, 0, 1000, 0, 0]), np.zeros(5, dtype=np.int64)]
    peaked, unseen = fitted_counts(gaussian, hist, pseudo_counts=16)
    assert peaked.min() >= 1 and unseen.min() >= 1  # every symbol stays codable
    assert peaked[2] / peaked.sum() > gaussian[0][2] / gaussian[0].sum()
    np.testing.assert_allclose(unseen / unseen.sum(), gaussian[1] / gaussian[1].sum(), atol=1e-5)


def test_tables_fitted_to_an_image_code_its_symbols_in_fewer_bits(photo: Image.Image) -> None:
    model = get_model()
    a = np.asarray(photo.crop((0, 0, 128, 128)))
    hist = level_histograms(model, [a], [2])
    gain, _ = model.gains(2)
    _, y_sym, parts = codec.tile_symbols(model, a, (0, 128, 0, 128), gain)
    assert sum(int(h.sum()) for h in hist) == y_sym.size
    t = model.y_tables
    symbols = np.concatenate([s.ravel() for s, _, _ in parts[1:]])
    table = np.concatenate([k.ravel() for _, k, _ in parts[1:]])
    fitted = fitted_counts(t.counts, hist)
    assert ideal_bits(fitted, t.offsets, symbols, table) < ideal_bits(t.counts, t.offsets, symbols, table)


def test_tile_symbols_are_what_a_file_holds(photo: Image.Image) -> None:
    model = get_model()
    a = np.asarray(photo.crop((0, 0, 128, 64)))
    gain, _ = model.gains(3)
    z_sym, y_sym, _ = codec.tile_symbols(model, a, (0, 64, 0, 128), gain)
    data = codec.encode(a, "RGB", 3)
    info = codec.read_info(io.BytesIO(data))
    assert info.index.tile_offsets  # one tile, whose CRC covers exactly these symbols
    _, tile = codec.container.read_chunk(io.BytesIO(data), *info.index.tile_offsets[0])
    assert tile["symbols_crc"] == codec.symbols_crc(0, z_sym, y_sym)
