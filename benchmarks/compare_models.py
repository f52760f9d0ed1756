#!/usr/bin/env python3
"""Two bundled DCV models on the same photos, through real .dcv bytes: the ship-or-not check.

    python benchmarks/compare_models.py dcv-ms2-s29 dcv-ms2-s30            # held-out training photos
    python benchmarks/compare_models.py dcv-ms2-s29 dcv-ms2-s30 --images ../shared/data/kodak

The default photos are the ones training never samples (training/config.toml `holdout_images`), so
the decision is not tuned to Kodak, the set the results are reported on. Each photo is centre-cropped
to at most 768x768 (bigger ones would be several tiles). Prints bpp and PSNR per quality and the
BD-rate of the second model against the first (negative: the second needs fewer bits). Both are
coded at effort 1 (no orientation search) unless --effort says otherwise, so that the weights alone
are compared.
"""

from __future__ import annotations

import argparse
import io
import sys
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rd_benchmark import bd_rate, psnr  # noqa: E402

import pillow_dcv  # noqa: E402
from pillow_dcv import codec  # noqa: E402

QUALITIES = (1, 2, 3, 4, 5, 6, 7, 8)


def held_out_photos() -> list[Path]:
    from data import held_out  # training/data.py: the same list train.py leaves out

    cfg = tomllib.loads((ROOT / "training" / "config.toml").read_text())
    return held_out((ROOT / cfg["data"]["train_dir"]).resolve(), cfg["run"]["holdout_images"])


def photo_paths(folder: Path | None) -> list[Path]:
    """The photos of a folder, sorted (default: the held-out training photos)."""
    if folder is None:
        return held_out_photos()
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".ppm"))


def centre_crop(path: Path, side: int = 768) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    cw, ch = min(w, side), min(h, side)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return np.asarray(im.crop((x0, y0, x0 + cw, y0 + ch)))


def curve(
    model_id: str, photos: list[np.ndarray], encode=codec.encode, effort: int = 1
) -> tuple[list[float], list[float]]:
    """Mean bpp (real bytes) and mean RGB PSNR per quality (`encode`: codec.encode or a variant of it)."""
    rates, psnrs = [], []
    for q in QUALITIES:
        bits = pixels = 0
        values = []
        for a in photos:
            data = encode(a, "RGB", q, model_id=model_id, effort=effort)
            decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            bits += 8 * len(data)
            pixels += a.shape[0] * a.shape[1]
            values.append(psnr(a, decoded))
        rates.append(bits / pixels)
        psnrs.append(float(np.mean(values)))
    return rates, psnrs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("anchor", help="model id, e.g. the shipped one")
    ap.add_argument("test", help="model id of the candidate")
    ap.add_argument("--images", type=Path, help="folder of photos (default: the held-out training photos)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--effort", type=int, default=1, help="orientations the encoder tries (default: 1, none)")
    args = ap.parse_args()
    pillow_dcv.set_threads(args.threads)
    paths = photo_paths(args.images)
    photos = [centre_crop(p) for p in paths]
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{len(photos)} photos: {', '.join(p.name for p in paths)}")
    anchor, test = curve(args.anchor, photos, effort=args.effort), curve(args.test, photos, effort=args.effort)
    print(f"{'quality':>7} {args.anchor + ' bpp/PSNR':>26} {args.test + ' bpp/PSNR':>26}")
    for i, q in enumerate(QUALITIES):
        print(f"{q:>7} " + " ".join(f"{r[i]:>17.3f} / {p[i]:5.2f}" for r, p in (anchor, test)))
    rate = bd_rate(*anchor, *test)
    print(f"BD-rate (PSNR) of {args.test} against {args.anchor}: {rate:+.2f} %")


if __name__ == "__main__":
    main()
