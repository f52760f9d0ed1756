"""What would a per-picture linear filter after the synthesis buy? (session 21)

Classical codecs fit an adaptive loop filter (VVC's ALF) per picture: the encoder solves least
squares between the decoded and the original picture and sends the coefficients. The synthesis is
trained for MSE over all photos, but one picture's blur or ringing may still be linearly correctable.
This measures the gain before any format work: every photo is coded to real .dcv bytes (effort 1)
and decoded; a 5x5 point-symmetric cross-channel filter is fitted to it by least squares, its
coefficients rounded (plainly in session 21's first run, then one at a time with the error carried
to the rest) and counted as side information (signed Exp-Golomb bits). Printed: BD-rate of plain
coding against a global filter (fitted on training photos), the per-photo filter at each step, and
the per-photo best of those (the oracle table in training/LOG.md came from an earlier version).

    python training/experiments/wiener_filter.py [--images DIR] [--qualities 1 3 5 7 8]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_models import centre_crop, photo_paths  # noqa: E402
from rd_benchmark import bd_rate  # noqa: E402

sys.path.insert(0, str(ROOT / "training"))
from tables import fit_photos  # noqa: E402

import pillow_dcv  # noqa: E402
from pillow_dcv import codec  # noqa: E402


def taps(radius: int, symmetric: bool) -> list[tuple[int, int]]:
    """Offsets of a (2r+1)^2 window; with symmetric, one of each +-d pair (the pair shares a weight)."""
    out = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    return [d for d in out if d >= (0, 0)] if symmetric else out


def features(img: np.ndarray, offs, symmetric: bool, cross: bool) -> list[np.ndarray]:
    """Per output channel: the design matrix (pixels, features) of the decoded picture (H, W, 3) float."""
    h, w, _ = img.shape
    r = max(max(abs(a), abs(b)) for a, b in offs)
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")

    def shifted(dy, dx, c):
        return p[r + dy : r + dy + h, r + dx : r + dx + w, c]

    mats = []
    for c in range(3):
        cols = []
        for ci in (range(3) if cross else (c,)):
            for dy, dx in offs:
                v = shifted(dy, dx, ci)
                if symmetric and (dy, dx) != (0, 0):
                    v = v + shifted(-dy, -dx, ci)
                cols.append(v.ravel())
        cols.append(np.ones(h * w))
        mats.append(np.stack(cols, axis=1))
    return mats


def coded(a: np.ndarray, q: float) -> tuple[int, np.ndarray]:
    data = codec.encode(a, "RGB", q, effort=1)
    fp = io.BytesIO(data)
    return 8 * len(data), codec.decode(fp, codec.read_info(fp)).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255**2 / np.mean((np.clip(np.rint(a), 0, 255) - b) ** 2))


def eg_bits(k: np.ndarray) -> float:
    """Bits of signed Exp-Golomb codes of the integers k (a stand-in for a real side-info coder)."""
    u = np.where(k > 0, 2 * k - 1, -2 * k)
    return float(np.sum(2 * np.floor(np.log2(u + 1)) + 1))


def gptq_round(w: np.ndarray, h: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Integers k such that k * step is close to w in the metric h (= A^T A): round one coefficient at a
    time and let the ones not yet rounded absorb its error (optimal brain surgeon / GPTQ)."""
    w = w.copy()
    hinv = np.linalg.inv(h)
    k = np.zeros(len(w))
    for i in range(len(w)):
        k[i] = np.rint(w[i] / step[i])
        err = w[i] - k[i] * step[i]
        rest = slice(i + 1, None)
        w[rest] -= err * hinv[i, rest] / hinv[i, i]
        # condition the inverse on coefficient i being fixed
        hinv[rest, rest] -= np.outer(hinv[rest, i], hinv[i, rest]) / hinv[i, i]
    return k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path)
    ap.add_argument("--qualities", type=float, nargs="+", default=[1, 3, 5, 7, 8])
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--fit", type=int, default=12, help="training photos for the global filter")
    ap.add_argument("--radius", type=int, default=2)
    ap.add_argument("--oracle", action="store_true", help="also print the per-photo oracle of each variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=float, nargs="+", default=[32, 64, 256])
    args = ap.parse_args()
    pillow_dcv.set_threads(args.threads)
    paths = photo_paths(args.images)
    photos = [centre_crop(p, args.side) for p in paths]
    train_dir = (ROOT / "../shared/data/train").resolve()
    fit = fit_photos(train_dir, 8, args.fit, args.side)
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{len(photos)} photos: {', '.join(p.name for p in paths)}; global filter from {len(fit)} training photos",
          flush=True)
    offs, sym, cross = taps(args.radius, True), True, True
    steps = tuple(1 / float(v) for v in args.steps)
    curves = {k: ([], []) for k in ("base", "global", *(f"image {s:.4f}" for s in steps), "best")}
    for q in args.qualities:
        # global filter: normal equations summed over the training photos
        ata, atb = None, None
        for a in fit:
            _, dec = coded(a, q)
            for c, m in enumerate(features(dec, offs, sym, cross)):
                if ata is None:
                    ata, atb = np.zeros((3, m.shape[1], m.shape[1])), np.zeros((3, m.shape[1]))
                ata[c] += m.T @ m
                atb[c] += m.T @ a[:, :, c].ravel()
        glob = [np.linalg.solve(ata[c], atb[c]) for c in range(3)]
        rows = {k: [] for k in curves}  # (bits, psnr) per photo
        for a in photos:
            bits, dec = coded(a, q)
            orig = a.astype(np.float64)
            mats = features(dec, offs, sym, cross)
            out_g = np.stack([(m @ g).reshape(dec.shape[:2]) for m, g in zip(mats, glob)], axis=2)
            rows["base"].append((bits, psnr(dec, orig)))
            rows["global"].append((bits, psnr(out_g, orig)))
            lam = pillow_dcv.models.get_model().rd_lambda(q)
            n = a.shape[0] * a.shape[1]
            best = min(rows["base"][-1], rows["global"][-1],
                       key=lambda bp: bp[0] / n + lam * 255**2 / 10 ** (bp[1] / 10))
            for s in steps:
                out = np.empty_like(dec)
                side = 8  # a flag byte
                for c, (m, g) in enumerate(zip(mats, glob)):
                    h = m.T @ m
                    coef = np.linalg.solve(h, m.T @ orig[:, :, c].ravel())
                    step = np.full(len(coef), s)
                    step[-1] = 1 / 8  # the bias in 1/8 of a level
                    k = gptq_round(coef - g, h, step)
                    side += eg_bits(k)
                    out[:, :, c] = (m @ (g + k * step)).reshape(dec.shape[:2])
                rows[f"image {s:.4f}"].append((bits + side, psnr(out, orig)))
                best = min(best, rows[f"image {s:.4f}"][-1],
                           key=lambda bp: bp[0] / n + lam * 255**2 / 10 ** (bp[1] / 10))
            rows["best"].append(best)
        pixels = sum(a.shape[0] * a.shape[1] for a in photos)
        line = f"q{q:g}:"
        for k, (rates, psnrs) in curves.items():
            rates.append(sum(b for b, _ in rows[k]) / pixels)
            psnrs.append(float(np.mean([p for _, p in rows[k]])))
            line += f" {k} {rates[-1]:.4f}/{psnrs[-1]:.3f};"
        print(line, flush=True)
    for k in list(curves)[1:]:
        print(f"{k}: BD-rate {bd_rate(*curves['base'], *curves[k]):+.2f} %")


if __name__ == "__main__":
    main()
