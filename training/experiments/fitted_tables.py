#!/usr/bin/env python3
"""Fitted entropy tables (training/tables.py): what they save against the model's own, in real symbols.

The runtime codes each latent symbol round(y - mu) with the discretised Gaussian of its scale level
(64 levels), and each hyper-latent symbol with its channel's learned density. Training fits both
through the noisy proxy, not the rounded symbols a file holds, and one z density serves every
quality. This fits the tables as export does (the y levels over all qualities, z per channel and
quality, on training photos that are neither held out nor Kodak) and prints the bytes the held-out
photos' symbols would take under the model's and the fitted tables (ideal code lengths -log2 p of
the integer tables; the symbols, hence the pixels, are the same). `--write ID` also writes the model
with the fitted tables as bundled model ID, for real files. It needs a model with its own tables
(export fits them by default since session 17):

    python training/export.py --model-tables --model-id dcv-own
    python training/experiments/fitted_tables.py --model dcv-own [--fit 48] --write dcv-fitted
    python benchmarks/compare_models.py dcv-own dcv-fitted
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "training"))

from compare_models import QUALITIES, centre_crop, held_out_photos  # noqa: E402
from tables import copy_model, fit_photos, fit_tables, ideal_bits  # noqa: E402

from pillow_dcv import codec  # noqa: E402
from pillow_dcv.models import MODELS_DIR, get_model  # noqa: E402


def photo_symbols(model, a: np.ndarray, quality: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(symbols, table) of the z part and of all y parts of a one-tile photo, flat."""
    gain, _ = model.gains(quality)
    a = codec.pad_to_multiple(a, codec.DOWNSAMPLING)
    _, _, parts = codec.tile_symbols(model, a, (0, a.shape[0], 0, a.shape[1]), gain)
    z = parts[0][0].ravel(), np.asarray(parts[0][1]).ravel()
    y = np.concatenate([s.ravel() for s, _, _ in parts[1:]]), np.concatenate([t.ravel() for _, t, _ in parts[1:]])
    return [z, y]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a bundled model with its own tables")
    ap.add_argument("--fit", type=int, default=48, help="training photos to fit the tables on")
    ap.add_argument("--write", metavar="MODEL_ID", help="also write the model with the fitted tables")
    args = ap.parse_args()
    model = get_model(args.model)
    cfg = tomllib.loads((ROOT / "training" / "config.toml").read_text())
    photos = fit_photos((ROOT / cfg["data"]["train_dir"]).resolve(), cfg["run"]["holdout_images"], args.fit)
    print(f"fitting on {len(photos)} training photos (512x512 centres), 8 qualities", flush=True)
    params = fit_tables(model, photos)
    folder = MODELS_DIR / args.write if args.write else Path(tempfile.mkdtemp()) / "fitted"
    fitted = copy_model(model, folder, params)
    held = [centre_crop(p, 512) for p in held_out_photos()]
    cz, y, z, y_new, z_new = model.z_channels, model.y_tables, model.z_tables, fitted.y_tables, fitted.z_tables
    print("bytes per held-out photo (512x512), ideal code lengths: y, z, both")
    for q in QUALITIES:
        old = np.zeros(2)
        new = np.zeros(2)
        for a in held:
            (zs, zt), (ys, yt) = photo_symbols(model, a, q)
            old += ideal_bits(y.counts, y.offsets, ys, yt), ideal_bits(z.counts, z.offsets, zs, zt)
            zt_new = zt + fitted.z_row(q) * cz  # the same channels, in the row of this quality
            new += ideal_bits(y_new.counts, y.offsets, ys, yt), ideal_bits(z_new.counts, z_new.offsets, zs, zt_new)
        old, new = old / 8 / len(held), new / 8 / len(held)
        change = 100 * (new - old) / old
        both = 100 * (new.sum() - old.sum()) / old.sum()
        print(f"  q{q}: y {old[0]:7.0f} -> {new[0]:7.0f} ({change[0]:+.2f} %), z {old[1]:5.0f} -> {new[1]:5.0f} "
              f"({change[1]:+.2f} %), both {both:+.2f} %")
    if args.write:
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
