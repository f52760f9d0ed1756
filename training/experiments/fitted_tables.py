#!/usr/bin/env python3
"""Fitted entropy tables: what does the Gaussian shape of the y tables cost, in real symbols?

The runtime codes each latent symbol round(y - mu) with the discretised Gaussian of its scale level
(64 levels). Training fits that Gaussian through the noisy proxy, not the rounded symbols a file
holds, so the symbols' real distribution per level may be peakier or heavier-tailed. This collects
the symbols and scale indices of the bundled model on training photos (not the held-out ones, not
Kodak), at all 8 qualities, fits one table per scale level (the histogram plus `--prior` pseudo-counts
of the Gaussian, on the same support), and prints the bits the held-out photos' symbols would take
under the shipped and the fitted tables (ideal code lengths -log2 p of the integer tables; the
symbols, hence the pixels, are the same). A table swap changes the model data only, not the format.
`--write ID` also writes the model with fitted tables as bundled model ID, for real files:

    python training/experiments/fitted_tables.py [--model dcv-ms2-s16] [--fit 48] [--prior 16] [--write ID]
    python benchmarks/compare_models.py dcv-ms2-s16 ID
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "training"))

from compare_models import QUALITIES, centre_crop, held_out_photos  # noqa: E402
from tables import fit_photos, fitted_counts, ideal_bits, level_histograms  # noqa: E402

from pillow_dcv import codec  # noqa: E402
from pillow_dcv.models import DEFAULT_MODEL, MODELS_DIR, get_model  # noqa: E402


def y_symbols(model, a: np.ndarray, quality: float) -> tuple[np.ndarray, np.ndarray]:
    """All y symbols of a one-tile photo and their table indices, flat."""
    gain, _ = model.gains(quality)
    a = codec.pad_to_multiple(a, codec.DOWNSAMPLING)
    _, _, parts = codec.tile_symbols(model, a, (0, a.shape[0], 0, a.shape[1]), gain)
    return np.concatenate([s.ravel() for s, _, _ in parts[1:]]), np.concatenate([t.ravel() for _, t, _ in parts[1:]])


def write_model(model, counts: list[np.ndarray], model_id: str) -> None:
    """A copy of the model's folder with the fitted y tables, for benchmarks/compare_models.py."""
    out = MODELS_DIR / model_id
    out.mkdir(exist_ok=True)
    for name in ("analysis.onnx", "synthesis.onnx", "model.json"):
        shutil.copyfile(model.folder / name, out / name)
    with np.load(model.folder / "prior.npz") as f:
        params = {k: f[k] for k in f.files}
    params["y_counts"] = np.concatenate(counts).astype(np.uint32)
    np.savez_compressed(out / "prior.npz", **params)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--fit", type=int, default=48, help="training photos to fit the tables on")
    ap.add_argument("--prior", type=float, nargs="+", default=[4, 16, 64, 256], help="Gaussian pseudo-counts per level")
    ap.add_argument("--write", metavar="MODEL_ID", help="also write the model fitted with the first --prior")
    args = ap.parse_args()
    model = get_model(args.model)
    cfg = tomllib.loads((ROOT / "training" / "config.toml").read_text())
    held = held_out_photos()
    photos = fit_photos((ROOT / cfg["data"]["train_dir"]).resolve(), cfg["run"]["holdout_images"], args.fit)
    print(f"fitting on {len(photos)} training photos (512x512 centres), 8 qualities", flush=True)
    hist = level_histograms(model, photos, QUALITIES)
    print(f"symbols per level: {[int(h.sum()) for h in hist]}")
    test = {q: [y_symbols(model, centre_crop(p, 512), q) for p in held] for q in QUALITIES}
    t = model.y_tables
    for prior in args.prior:
        counts = fitted_counts(t.counts, hist, prior)
        print(f"{prior:g} pseudo-counts per level, y bytes per held-out photo:")
        for q in QUALITIES:
            old = sum(ideal_bits(t.counts, t.offsets, s, i) for s, i in test[q]) / 8 / len(test[q])
            new = sum(ideal_bits(counts, t.offsets, s, i) for s, i in test[q]) / 8 / len(test[q])
            print(f"  q{q}: {old:8.0f} -> {new:8.0f} ({100 * (new - old) / old:+.2f} %)")
    if args.write:
        write_model(model, fitted_counts(t.counts, hist, args.prior[0]), args.write)


if __name__ == "__main__":
    main()
