"""What would an encoder gain by coding each photo in the best of its 8 orientations? (session 20)

The transforms are convolutions with learned, asymmetric filters, so a photo flipped or transposed
codes to a different size and PSNR. An encoder could try several orientations and keep the one with
the lowest rate-distortion cost (bpp + lambda * MSE on 0..255, the training loss), and the header
would say which one to undo. This measures that gain with real .dcv bytes before touching the format:
each held-out photo (768x768 centre) is coded in every orientation at every quality, and the best-of-K
choice for K = 2, 4, 8 is compared with the identity by BD-rate.

    python training/experiments/orientation_search.py [--model dcv-ms2-s30] [--images DIR]

Session 20, dcv-ms2-s19 (this script's order; training/LOG.md has the codec's order, 0 5 3 6 1 2 4 7):
held-out photos best of 2 / 4 / 8: -0.44 / -1.33 / -2.05 %; Kodak (qualities 1 3 5 7 8): -0.21 / -0.62 /
-0.84 %.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_models import QUALITIES, centre_crop, photo_paths  # noqa: E402
from rd_benchmark import bd_rate  # noqa: E402

import pillow_dcv  # noqa: E402
from pillow_dcv import codec  # noqa: E402
from pillow_dcv.models import DEFAULT_MODEL, get_model  # noqa: E402

# the 8 symmetries of the rectangle as (transpose, flip rows, flip columns); the identity first, then
# the ones a cheap search would try first
ORIENTATIONS = [(t, fr, fc) for t in (0, 1) for fr in (0, 1) for fc in (0, 1)]
ORIENTATIONS.sort(key=lambda o: (o[0] + o[1] + o[2], o[0]))


def orient(a: np.ndarray, o: tuple[int, int, int]) -> np.ndarray:
    t, fr, fc = o
    a = a.transpose(1, 0, 2) if t else a
    a = a[::-1] if fr else a
    return np.ascontiguousarray(a[:, ::-1] if fc else a)


def unorient(a: np.ndarray, o: tuple[int, int, int]) -> np.ndarray:
    t, fr, fc = o
    a = a[:, ::-1] if fc else a
    a = a[::-1] if fr else a
    return np.ascontiguousarray(a.transpose(1, 0, 2) if t else a)


def measure(photo: np.ndarray, quality: float, model_id: str) -> list[tuple[int, float]]:
    """(bits, MSE on 0..255) of the photo coded in each orientation."""
    results = []
    for o in ORIENTATIONS:
        data = codec.encode(orient(photo, o), "RGB", quality, orientation=0, model_id=model_id)
        fp = io.BytesIO(data)
        decoded = unorient(codec.decode(fp, codec.read_info(fp)), o)
        mse = float(np.mean((decoded.astype(np.float64) - photo.astype(np.float64)) ** 2))
        results.append((8 * len(data), mse))
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--images", type=Path, help="folder of photos (default: the held-out training photos)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--qualities", type=float, nargs="+", default=QUALITIES)
    ap.add_argument("--save", type=Path, help="write the (quality, photo, orientation, [bits, MSE]) table (.npy)")
    args = ap.parse_args()
    pillow_dcv.set_threads(args.threads)
    paths = photo_paths(args.images)
    photos = [centre_crop(p) for p in paths]
    model = get_model(args.model)
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{len(photos)} photos: {', '.join(p.name for p in paths)}")
    # table[q][photo] = [(bits, mse) per orientation]
    table = [[measure(a, q, args.model) for a in photos] for q in args.qualities]
    if args.save:
        np.save(args.save, np.array(table))  # (quality, photo, orientation, [bits, mse])
    pixels = [a.shape[0] * a.shape[1] for a in photos]

    def curve(k: int) -> tuple[list[float], list[float]]:
        rates, psnrs = [], []
        for qi, rows in enumerate(table):
            lam = model.rd_lambda(args.qualities[qi])
            chosen = [min(r[:k], key=lambda bm, n=n: bm[0] / n + lam * bm[1]) for r, n in zip(rows, pixels)]
            rates.append(sum(b for b, _ in chosen) / sum(pixels))
            psnrs.append(float(np.mean([10 * np.log10(255**2 / m) for _, m in chosen])))
        return rates, psnrs

    base = curve(1)
    for k in (2, 4, 8):
        print(f"best of {k} orientations: BD-rate {bd_rate(*base, *curve(k)):+.2f} %")
    # how much each orientation alone differs (is one systematically better?)
    for j, o in enumerate(ORIENTATIONS[1:], 1):
        rates = [sum(r[j][0] for r in rows) / sum(pixels) for rows in table]
        psnrs = [float(np.mean([10 * np.log10(255**2 / r[j][1]) for r in rows])) for rows in table]
        print(f"orientation {o} alone: BD-rate {bd_rate(*base, rates, psnrs):+.2f} %")


if __name__ == "__main__":
    main()
