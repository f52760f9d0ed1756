"""Entropy tables fitted to the symbols a model really codes (session 17; spec section 5.4).

Training fits a Gaussian per latent through the noisy proxy of rounding, so the discretised Gaussian
of a scale level is not quite the distribution of the rounded symbols that files hold; and it fits
one z density per channel for all qualities, while z's spread changes with the quality. The tables
are model data (the counts in prior.npz), so export replaces each y level's Gaussian by the histogram
of that level's symbols, and each z channel's density by one histogram per quality, all from training
photos (never the held-out ones, never Kodak) run through the runtime's own encoder, with a few
pseudo-counts of the old table for the tails. The supports stay as they were, so the symbols, and
every pixel, stay the same; only the bits change. Numpy and the runtime only: export runs it, tests
run it without torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from data import held_out, list_images
from PIL import Image

from pillow_dcv import codec
from pillow_dcv.models import Model

TABLE_PRECISION = 2**20  # as the Gaussian tables (export.py)
GAUSSIAN_PSEUDO_COUNTS = 16.0  # per level: 4 to 256 gave the same held-out bits (LOG session 17)


def fit_photos(train_dir: Path, holdout: int, count: int = 48, side: int = 512) -> list[np.ndarray]:
    """`count` training photos spread over the set, none of the `holdout` that training leaves out
    for validation: RGB centres of at most side x side."""
    held = set(held_out(train_dir, holdout))
    pool = [p for p in list_images(train_dir) if p not in held]
    step = max(1, len(pool) // count)
    return [centre(Image.open(p).convert("RGB"), side) for p in pool[step // 3 :: step][:count]]


def centre(im: Image.Image, side: int) -> np.ndarray:
    w, h = im.size
    cw, ch = min(w, side), min(h, side)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return np.asarray(im.crop((x0, y0, x0 + cw, y0 + ch)))


def histograms(model, photos: list[np.ndarray], qualities) -> tuple[list[np.ndarray], dict[int, list[np.ndarray]]]:
    """How often each symbol of each table's support occurs in the photos' one-tile files (RGB, at
    most 1024x1024): per `y` table over all the qualities, and per `z` table per quality."""
    y_hist = _zeros(model.y_tables)
    z_hist = {q: _zeros(model.z_tables) for q in qualities}
    for photo in photos:
        a = codec.pad_to_multiple(photo, codec.DOWNSAMPLING)
        cell = (0, a.shape[0], 0, a.shape[1])
        for q in qualities:
            gain, _ = model.gains(q)
            _, _, parts = codec.tile_symbols(model, a, cell, gain)
            _count(z_hist[q], *parts[0])
            for part in parts[1:]:
                _count(y_hist, *part)
    return y_hist, z_hist


def _zeros(tables) -> list[np.ndarray]:
    return [np.zeros(len(c), dtype=np.int64) for c in tables.counts]


def _count(hist: list[np.ndarray], symbols: np.ndarray, table: np.ndarray, tables) -> None:
    symbols, table = symbols.ravel(), np.asarray(table).ravel()
    for k in np.unique(table):
        hist[k] += np.bincount(symbols[table == k] - tables.offsets[k], minlength=len(hist[k]))


def fitted_counts(
    base: list[np.ndarray], hist: list[np.ndarray], pseudo_counts: float = GAUSSIAN_PSEUDO_COUNTS
) -> list[np.ndarray]:
    """Counts (each >= 1, same supports) of the histogram plus `pseudo_counts` symbols drawn from the
    base table (the Gaussian, or the learned z density): a table seen rarely or never keeps its base."""
    out = []
    for c, h in zip(base, hist, strict=True):
        if len(c) != len(h):
            raise ValueError("a histogram must cover its table's support")
        p = (h + pseudo_counts * c / c.sum()) / (h.sum() + pseudo_counts)
        out.append(np.round(p * TABLE_PRECISION).astype(np.int64) + 1)
    return out


def fit_tables(model, photos: list[np.ndarray]) -> dict[str, np.ndarray]:
    """prior.npz entries for a model exported with the Gaussian y tables and one z table per channel:
    fitted y tables, and one row of fitted z tables per quality 1..K (`z_rows` = K; spec 5.3)."""
    if model.z_rows != 1:
        raise ValueError("fit_tables starts from a model with one z table per channel")
    qualities = range(1, len(model.log_gain) + 1)
    y_hist, z_hist = histograms(model, photos, qualities)
    z = [c for q in qualities for c in fitted_counts(model.z_tables.counts, z_hist[q])]
    lengths = np.array([len(c) for c in model.z_tables.counts], dtype=np.int64)
    return {
        "y_counts": np.concatenate(fitted_counts(model.y_tables.counts, y_hist)).astype(np.uint32),
        "z_counts": np.concatenate(z).astype(np.uint32),
        "z_lengths": np.tile(lengths, len(qualities)),
        "z_offsets": np.tile(model.z_tables.offsets, len(qualities)),
        "z_rows": np.array(len(qualities), dtype=np.int64),
    }


def ideal_bits(counts: list[np.ndarray], offsets: np.ndarray, symbols: np.ndarray, table: np.ndarray) -> float:
    """-log2 p summed over symbols, symbol i coded with table[i]: the length an exact coder reaches."""
    total = 0.0
    for k in np.unique(table):
        c = counts[k]
        total -= float(np.log2(c[symbols[table == k] - offsets[k]] / c.sum()).sum())
    return total


def copy_model(model: Model, folder: Path, params: dict[str, np.ndarray]) -> Model:
    """A copy of the model in `folder` with `params` replacing entries of its prior.npz, loaded."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("analysis.onnx", "synthesis.onnx", "model.json"):
        shutil.copyfile(model.folder / name, folder / name)
    with np.load(model.folder / "prior.npz") as f:
        old = {k: f[k] for k in f.files}
    np.savez_compressed(folder / "prior.npz", **{**old, **params})
    return Model(folder)
