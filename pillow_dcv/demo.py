"""The main job: encode the bundled sample photo at several qualities, decode it, and compare.

    python -m pillow_dcv.demo [IMAGE]

For each DCV quality it prints file size, bits per pixel, RGB PSNR and encode/decode time, next to
WebP and AVIF (Pillow's own encoders, default settings) at the quality setting whose file size is
closest to the DCV file.
"""

from __future__ import annotations

import io
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, features

import pillow_dcv

SAMPLE = Path(__file__).resolve().parent / "samples" / "sample.png"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(im: Image.Image, fmt: str, quality: float) -> dict:
    buf = io.BytesIO()
    t0 = time.perf_counter()
    im.save(buf, fmt, quality=quality)
    t1 = time.perf_counter()
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    t2 = time.perf_counter()
    pixels = np.asarray(out.convert("RGB"))
    return {"bytes": buf.getbuffer().nbytes, "psnr": psnr(pixels, np.asarray(im)),
            "encode": t1 - t0, "decode": t2 - t1, "quality": quality}


def closest_size(im: Image.Image, fmt: str, target: int) -> dict:
    """Bisect the 0..100 quality scale for the file size closest to target."""
    lo, hi, best = 0, 100, None
    while lo <= hi:
        q = (lo + hi) // 2
        r = run(im, fmt, q)
        if best is None or abs(r["bytes"] - target) < abs(best["bytes"] - target):
            best = r
        if r["bytes"] < target:
            lo = q + 1
        else:
            hi = q - 1
    return best


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else SAMPLE
    im = Image.open(path).convert("RGB")
    pixels = im.width * im.height
    print(f"$ python -m pillow_dcv.demo {' '.join(argv)}".rstrip())
    print(f"image: {path.name} {im.width}x{im.height}; machine: {platform.machine()} {os.cpu_count()} cores; "
          f"pillow-dcv {pillow_dcv.__version__}, Pillow {Image.__version__}, "
          f"libwebp {features.version('webp')}, libavif {features.version('avif')}")
    run(im, "DCV", 4)  # load the model once so the timings below are per image
    header = f"{'codec':6} {'q':>5} {'bytes':>8} {'bpp':>6} {'PSNR':>6} {'enc ms':>7} {'dec ms':>7}"
    print(header)
    print("-" * len(header))
    for q in (1, 2, 4, 6, 8):
        dcv = run(im, "DCV", q)
        rows = [("DCV", dcv)]
        for fmt in ("WEBP", "AVIF"):
            if features.check(fmt.lower()):
                rows.append((fmt, closest_size(im, fmt, dcv["bytes"])))
        for name, r in rows:
            print(f"{name:6} {r['quality']:>5} {r['bytes']:>8} {r['bytes'] * 8 / pixels:>6.3f} {r['psnr']:>6.2f} "
                  f"{r['encode'] * 1000:>7.0f} {r['decode'] * 1000:>7.0f}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
