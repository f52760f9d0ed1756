"""What the encoder's padding costs (session 20).

The coded picture is padded on the bottom and right to a multiple of 64 (spec 8.1). The decoder
crops the padding away, so the encoder may fill it with anything; the reference repeats the edge
pixels, which turns a textured last row into streaks the latent has to code. This codes photos whose
sides are not multiples of 64 (the held-out photos, uncropped) with other fillings and prints the
BD-rate of each against edge repetition (effort 1, real .dcv bytes). "blur" is what the codec does
since session 20 (`codec.pad_to_multiple`).

    python training/experiments/padding.py [--images DIR] [--others 10]

Session 20, dcv-ms2-s19: on the 6 held-out photos that need padding (5 BSDS500, 481x321) reflect
+8.63 %, fade -1.34 %, blur-fade -1.71 %, blur -2.0 % (a blur radius growing to 32: -1.99 %; to 64 or
128: -2.00 / -2.01 %; to 8 with a fade to the mean over 8: -1.66 %); on 10 other training photos (no
BSDS500, 680-1024 pixels a side) blur -1.07 %.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_models import QUALITIES, held_out_photos  # noqa: E402
from rd_benchmark import bd_rate  # noqa: E402

from pillow_dcv import codec  # noqa: E402


def pad_edge(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    return np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="edge")


def pad_reflect(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    return np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="symmetric")


def _fade(x: np.ndarray, ph: int, pw: int, blur: bool) -> np.ndarray:
    """Edge repetition that fades to the picture's mean colour over 16 pixels (and, with blur, is
    smoothed more the farther it is from the edge): continuous at the edge, flat beyond."""
    out = pad_edge(x, ph, pw).astype(np.float64)
    mean = x.reshape(-1, x.shape[2]).mean(0)
    h, w = x.shape[:2]
    for axis, n, size in ((0, ph, h), (1, pw, w)):
        if not n:
            continue
        for k in range(1, n + 1):
            t = min(1.0, k / 16)
            index = [slice(None)] * 3
            index[axis] = size + k - 1
            line = out[tuple(index)]
            if blur:
                radius = min(k, 16)
                kernel = np.ones(2 * radius + 1) / (2 * radius + 1)
                line = np.stack([np.convolve(np.pad(line[:, c], radius, mode="edge"), kernel, "valid")
                                 for c in range(line.shape[1])], 1)
            out[tuple(index)] = (1 - t) * line + t * mean
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pad_fade(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    return _fade(x, ph, pw, blur=False)


def pad_blur_fade(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    return _fade(x, ph, pw, blur=True)


CODEC_PAD = codec.pad_to_multiple


def pad_codec(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    return CODEC_PAD(x, 64)


FILLINGS = {"edge": pad_edge, "reflect": pad_reflect, "fade": pad_fade, "blur-fade": pad_blur_fade, "blur": pad_codec}


def curve(photos: list[np.ndarray], filling) -> tuple[list[float], list[float]]:
    def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
        h, w = x.shape[:2]
        ph, pw = -h % multiple, -w % multiple
        return filling(x, ph, pw) if ph or pw else x

    original = codec.pad_to_multiple
    codec.pad_to_multiple = pad_to_multiple
    try:
        rates, psnrs = [], []
        for q in QUALITIES:
            bits = pixels = 0
            values = []
            for a in photos:
                data = codec.encode(a, "RGB", q, effort=1)
                decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)
                bits += 8 * len(data)
                pixels += a.shape[0] * a.shape[1]
                values.append(10 * np.log10(255**2 / np.mean((decoded - a) ** 2)))
            rates.append(bits / pixels)
            psnrs.append(float(np.mean(values)))
        return rates, psnrs
    finally:
        codec.pad_to_multiple = original


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, help="folder of photos (default: the held-out training photos)")
    ap.add_argument("--max-side", type=int, default=1100, help="skip photos larger than this")
    ap.add_argument("--others", type=int, default=0,
                    help="instead: this many other training photos (not held out, not BSDS500), drawn with seed 20")
    ap.add_argument("--fillings", nargs="+", default=list(FILLINGS)[1:])
    args = ap.parse_args()
    if args.others:
        held = set(held_out_photos())
        train = held_out_photos()[0].parents[1]
        paths = [p for p in sorted(train.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                 and p not in held and "bsds" not in str(p.relative_to(train)).lower()]
        random.Random(20).shuffle(paths)
    else:
        paths = sorted(args.images.iterdir()) if args.images else held_out_photos()
    photos = []
    for p in paths:
        with Image.open(p) as im:
            if max(im.size) > args.max_side or not (im.size[0] % 64 or im.size[1] % 64):
                continue
            photos.append(np.asarray(im.convert("RGB")))
        if args.others and len(photos) == args.others:
            break
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{len(photos)} photos, sizes {sorted({(a.shape[1], a.shape[0]) for a in photos})}")
    base = curve(photos, pad_edge)
    print("edge: " + ", ".join(f"{r:.3f}/{p:.2f}" for r, p in zip(*base)))
    for name in args.fillings:
        test = curve(photos, FILLINGS[name])
        print(f"{name}: " + ", ".join(f"{r:.3f}/{p:.2f}" for r, p in zip(*test)))
        print(f"{name} against edge: BD-rate {bd_rate(*base, *test):+.2f} %")


if __name__ == "__main__":
    main()
