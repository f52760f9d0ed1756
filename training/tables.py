"""`y` entropy tables fitted to the symbols a model really codes (session 17; spec section 5.4).

Training fits a Gaussian per latent through the noisy proxy of rounding, so the discretised Gaussian
of a scale level is not quite the distribution of the rounded symbols that files hold. The tables
are model data (the counts in prior.npz), so export can replace each level's Gaussian by the
histogram of that level's symbols on training photos (never the held-out ones, never Kodak), run
through the runtime's own encoder at every quality, with a few pseudo-counts of the Gaussian for the
tails. The supports stay those of the Gaussian tables, so the symbols, and every pixel, stay the
same; only the bits change. Numpy and the runtime only: export runs it, tests run it without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from data import held_out, list_images
from PIL import Image

from pillow_dcv import codec

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


def level_histograms(model, photos: list[np.ndarray], qualities) -> list[np.ndarray]:
    """Per `y` table, how often each symbol of its support occurs in the photos' one-tile files
    (RGB, at most 1024x1024) at each quality."""
    tables = model.y_tables
    hist = [np.zeros(len(c), dtype=np.int64) for c in tables.counts]
    for photo in photos:
        a = codec.pad_to_multiple(photo, codec.DOWNSAMPLING)
        cell = (0, a.shape[0], 0, a.shape[1])
        for q in qualities:
            gain, _ = model.gains(q)
            _, _, parts = codec.tile_symbols(model, a, cell, gain)
            for symbols, table, _ in parts[1:]:
                for k in np.unique(table):
                    chosen = symbols[table == k] - tables.offsets[k]
                    hist[k] += np.bincount(chosen, minlength=len(hist[k]))
    return hist


def fitted_counts(
    gaussian: list[np.ndarray], hist: list[np.ndarray], pseudo_counts: float = GAUSSIAN_PSEUDO_COUNTS
) -> list[np.ndarray]:
    """Counts (each >= 1, same supports) of the histogram plus `pseudo_counts` symbols drawn from the
    Gaussian table: a level seen rarely or never keeps its Gaussian."""
    out = []
    for c, h in zip(gaussian, hist, strict=True):
        if len(c) != len(h):
            raise ValueError("a histogram must cover its table's support")
        p = (h + pseudo_counts * c / c.sum()) / (h.sum() + pseudo_counts)
        out.append(np.round(p * TABLE_PRECISION).astype(np.int64) + 1)
    return out


def ideal_bits(counts: list[np.ndarray], offsets: np.ndarray, symbols: np.ndarray, table: np.ndarray) -> float:
    """-log2 p summed over symbols, symbol i coded with table[i]: the length an exact coder reaches."""
    total = 0.0
    for k in np.unique(table):
        c = counts[k]
        total -= float(np.log2(c[symbols[table == k] - offsets[k]] / c.sum()).sum())
    return total
