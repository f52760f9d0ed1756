"""The classified post-filter (`fILC`, format 4.2, spec 4.6) against the single one (`fILT`, 4.1): BD-rate
of real files with the same tiles (session 23).

    python training/experiments/class_filter_ab.py [--images DIR] [--effort 2] [--every 1] [--side 768]
        [--control fILT|QUANTILES|unpruned]

Each photo and quality is encoded once; the encoder's filter fit is intercepted, and the control
file is the same file with another filter chunk in place of the fILC the encoder chose: session 21's
fILT (one 3x3 or 5x5 filter, varint coefficients), or the fILC of an encoder that tries other
quantiles of the activity as the classes' threshold (`--control 0.5`: the median only), or one that
fits quantised filters for every split instead of the best CLASS_SPLITS_FITTED by their unquantised
gain (`--control unpruned`, session 24). Both files are decoded through Pillow.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_models import QUALITIES, centre_crop, photo_paths  # noqa: E402
from rd_benchmark import bd_rate, psnr  # noqa: E402

import pillow_dcv  # noqa: E402
from pillow_dcv import codec, container, postfilter  # noqa: E402

# session 21's candidates: (radius, step_log2)
FILT_CANDIDATES = ((1, 6), (1, 7), (1, 8), (1, 9), (2, 7), (2, 8), (2, 9))


def fit_filt(original: np.ndarray, decoded: np.ndarray, rd_lambda: float, pixels: int) -> dict | None:
    """Session 21's encoder: the fILT payload that lowers bpp + lambda * MSE the most, or None."""
    n = original.size  # session 21 divided by the pixels, not the values: 3x the weight on the error
    hh, gg, rr = postfilter.normal_equations(decoded, original, 2)
    best, best_gain = None, 0.0
    for radius, step_log2 in FILT_CANDIDATES:
        h, g = postfilter.restrict(hh[0], gg[0], 2, radius)
        k = postfilter.quantised_fit(h, g, step_log2)
        payload = {"radius": radius, "step_log2": step_log2, "coefficients": [int(v) for v in k.ravel()]}
        side_bits = 8 * len(container.chunk_bytes(container.FILTER, payload))
        gain = rd_lambda * (rr.sum() - postfilter.squared_error(h, g, rr.sum(), k, step_log2)) / n - side_bits / pixels
        if gain > best_gain:
            best, best_gain = payload, gain
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, help="folder of photos (default: the held-out training photos)")
    ap.add_argument("--effort", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="every n-th photo of the folder")
    ap.add_argument("--side", type=int, default=768, help="centre crops of at most side x side")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--control", default="fILT", help="fILT, unpruned, or the control's quantiles, comma-separated")
    args = ap.parse_args()
    pillow_dcv.set_threads(args.threads)
    paths = photo_paths(args.images)[:: args.every]
    photos = [centre_crop(p, args.side) for p in paths]
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{len(photos)} photos: {', '.join(p.name for p in paths)}", flush=True)

    fit_filc, captured = codec.fit_post_filter, []

    def intercept(*fit_args):
        captured.append(fit_args)
        return fit_filc(*fit_args)

    codec.fit_post_filter = intercept
    def control(c: container.Container, fit_args: tuple) -> None:
        if args.control == "fILT":
            c.class_filter, c.post_filter = None, fit_filt(*fit_args)
        elif args.control == "unpruned":  # quantised fits for the classes of every split (session 23)
            fitted, codec.CLASS_SPLITS_FITTED = codec.CLASS_SPLITS_FITTED, None
            c.class_filter = fit_filc(*fit_args)
            codec.CLASS_SPLITS_FITTED = fitted
        else:
            splits, codec.CLASS_SPLITS = codec.CLASS_SPLITS, tuple(float(v) for v in args.control.split(","))
            c.class_filter = fit_filc(*fit_args)
            codec.CLASS_SPLITS = splits

    print(f"fILC: thresholds at the activity quantiles {codec.CLASS_SPLITS}")
    arms = {"control": ([], []), "fILC": ([], [])}
    classes = []
    for q in QUALITIES:
        sums = {arm: [0, 0, []] for arm in arms}
        for a in photos:
            captured.clear()
            data = codec.encode(a, "RGB", q, effort=args.effort)
            c = container.parse(data)
            classes.append(0 if c.class_filter is None else c.class_filter["count"])
            control(c, captured[0])
            for arm, file in (("fILC", data), ("control", container.build(c))):
                decoded = np.asarray(Image.open(io.BytesIO(file)).convert("RGB"))
                sums[arm][0] += 8 * len(file)
                sums[arm][1] += a.shape[0] * a.shape[1]
                sums[arm][2].append(psnr(a, decoded))
        for arm, (bits, pixels, values) in sums.items():
            arms[arm][0].append(bits / pixels)
            arms[arm][1].append(float(np.mean(values)))
        print(f"q{q}: {args.control} {arms['control'][0][-1]:.4f}/{arms['control'][1][-1]:.3f}", end="  ")
        print(f"fILC {arms['fILC'][0][-1]:.4f}/{arms['fILC'][1][-1]:.3f}", flush=True)
    print(f"files with 0 / 1 / 2 classes: {[classes.count(k) for k in range(3)]}")
    print(f"BD-rate of fILC against {args.control}: {bd_rate(*arms['control'], *arms['fILC']):+.2f} %")


if __name__ == "__main__":
    main()
