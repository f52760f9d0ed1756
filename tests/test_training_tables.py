"""Fitted entropy tables (training/tables.py; numpy, Pillow and the runtime only) and rows of z
tables per quality in the runtime (spec sections 5.3, 5.4 and 7.3)."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from tables import copy_model, fit_tables, fitted_counts, histograms, ideal_bits  # noqa: E402

from pillow_dcv import codec, models  # noqa: E402


def test_fitted_counts_follow_the_histogram_and_keep_the_base_where_unseen() -> None:
    base = [np.array([1, 10, 100, 10, 1]), np.array([5, 20, 50, 20, 5])]
    hist = [np.array([0, 0, 1000, 0, 0]), np.zeros(5, dtype=np.int64)]
    peaked, unseen = fitted_counts(base, hist, pseudo_counts=16)
    assert peaked.min() >= 1 and unseen.min() >= 1  # every symbol stays codable
    assert peaked[2] / peaked.sum() > base[0][2] / base[0].sum()
    np.testing.assert_allclose(unseen / unseen.sum(), base[1] / base[1].sum(), atol=1e-5)
    with pytest.raises(ValueError):
        fitted_counts(base, [np.zeros(4, dtype=np.int64), hist[1]])


def first_z_row(model: models.Model) -> dict[str, np.ndarray]:
    """prior.npz entries that keep only the first row of a model's z tables: one table per channel."""
    t, cz = model.z_tables, model.z_channels
    return {
        "z_counts": np.concatenate(t.counts[:cz]).astype(np.uint32),
        "z_lengths": np.array([len(c) for c in t.counts[:cz]], dtype=np.int64),
        "z_offsets": t.offsets[:cz],
        "z_rows": np.array(1, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def own_model(tmp_path_factory: pytest.TempPathFactory) -> models.Model:
    """The bundled model with one z table per channel, as export makes it before fitting."""
    bundled = models.get_model()
    model = copy_model(bundled, tmp_path_factory.mktemp("models") / "dcv-test-own", first_z_row(bundled))
    assert model.z_rows == 1
    return model


@pytest.fixture(scope="module")
def fitted_model(tmp_path_factory: pytest.TempPathFactory, own_model: models.Model, photo: Image.Image):
    """own_model with tables fitted to one 256x192 photo."""
    a = np.asarray(photo)
    folder = tmp_path_factory.mktemp("models") / "dcv-test-fit"
    return own_model, copy_model(own_model, folder, fit_tables(own_model, [a])), a


def test_histograms_count_every_symbol(own_model: models.Model, photo: Image.Image) -> None:
    model = own_model
    a = np.asarray(photo.crop((0, 0, 128, 64)))
    y_hist, z_hist = histograms(model, [a], [2, 5])
    z_sym, y_sym, _ = codec.tile_symbols(model, a, (0, 64, 0, 128), model.gains(2)[0])
    assert sum(int(h.sum()) for h in y_hist) == 2 * y_sym.size
    assert sum(int(h.sum()) for h in z_hist[2]) == sum(int(h.sum()) for h in z_hist[5]) == z_sym.size


def test_fitted_tables_code_the_photo_they_were_fitted_to_in_fewer_bits(fitted_model) -> None:
    model, fitted, a = fitted_model
    assert fitted.z_rows == 8 and fitted.z_channels == model.z_channels
    cell = (0, a.shape[0], 0, a.shape[1])
    before, after = np.zeros(2), np.zeros(2)  # z, y: over all qualities, as they were fitted
    for q in range(1, 9):
        gain, _ = model.gains(q)
        _, _, old = codec.tile_symbols(model, a, cell, gain)
        _, _, new = codec.tile_symbols(fitted, a, cell, gain, fitted.z_row(q))
        for i, ((s0, t0, tables0), (s1, t1, tables1)) in enumerate(zip(old, new, strict=True)):
            np.testing.assert_array_equal(s0, s1)  # the same symbols: same supports
            before[min(i, 1)] += ideal_bits(tables0.counts, tables0.offsets, s0.ravel(), np.asarray(t0).ravel())
            after[min(i, 1)] += ideal_bits(tables1.counts, tables1.offsets, s1.ravel(), np.asarray(t1).ravel())
    assert np.all(after < 0.99 * before)


def test_z_row_is_the_nearest_whole_quality(fitted_model) -> None:
    model, fitted, _ = fitted_model
    assert [fitted.z_row(q) for q in (1.0, 1.49609375, 1.5, 2.0, 7.99609375, 8.0)] == [0, 0, 1, 1, 7, 7]
    assert {model.z_row(q) for q in (1.0, 4.5, 8.0)} == {0}


def test_files_with_fitted_tables_are_smaller_and_decode_to_the_same_pixels(
    fitted_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sizes summed over the ladder: the y tables are fitted over all qualities at once, and a
    # file's rANS stream grows in 32-bit words, so one quality of a small photo may tie.
    model, fitted, a = fitted_model
    monkeypatch.setitem(models._models, "dcv-test-own", model)
    monkeypatch.setitem(models._models, "dcv-test-fit", fitted)
    sizes = np.zeros(2, dtype=np.int64)
    for quality in (1.0, 2.498, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0):
        files = [codec.encode(a, "RGB", quality, effort=1, model_id=m) for m in ("dcv-test-own", "dcv-test-fit")]
        sizes += [len(f) for f in files]
        pixels = [codec.decode(io.BytesIO(f), codec.read_info(io.BytesIO(f))) for f in files]
        np.testing.assert_array_equal(pixels[0], pixels[1])
    assert sizes[1] < 0.99 * sizes[0]


def test_tile_symbols_are_what_a_file_holds(photo: Image.Image) -> None:
    model = models.get_model()
    a = np.asarray(photo.crop((0, 0, 128, 64)))
    z_sym, y_sym, _ = codec.tile_symbols(model, a, (0, 64, 0, 128), model.gains(3)[0], model.z_row(3))
    data = codec.encode(a, "RGB", 3, effort=1)
    info = codec.read_info(io.BytesIO(data))
    _, tile = codec.container.read_chunk(io.BytesIO(data), *info.index.tile_offsets[0])
    assert tile["symbols_crc"] == codec.symbols_crc(0, z_sym, y_sym)
