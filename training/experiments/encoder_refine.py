"""Gradient-free encoder refinement: does coding a pre-emphasised picture, or a latent nudged by the
analysis of the reconstruction error, pay? (session 21)

The runtime has no gradients (onnxruntime, no torch), so session 9's per-image latent refinement by
Adam is out of reach. Two fixed-point steps need only the transforms the encoder already runs:

- pre-emphasis: x_{k+1} = x_k + alpha * (x - x_hat_k), coded from scratch (analysis and hyper-analysis
  of x_{k+1}); the decoder is unchanged, the error is measured against the original x;
- latent step: y_{k+1} = y_k + beta * (g_a(x) - g_a(x_hat_k)), z kept from the first analysis.

Each candidate is coded to real bytes (the codec's own quantisation and entropy coder) and decoded to
8-bit pixels. Reported: BD-rate of each fixed variant against plain coding, and of the per-image choice
of the lowest bpp + lambda * MSE (what an encoder could do without a format change).

    python training/experiments/encoder_refine.py [--model dcv-ms2-s30] [--images DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_models import QUALITIES, centre_crop, photo_paths  # noqa: E402
from rd_benchmark import bd_rate  # noqa: E402

import pillow_dcv  # noqa: E402
from pillow_dcv import codec, entropy  # noqa: E402
from pillow_dcv.models import DEFAULT_MODEL, get_model  # noqa: E402

ALPHAS = (0.5, 1.0)
BETAS = (0.5, 1.0)


def code(model, photo: np.ndarray, quality: float, x_in: np.ndarray, yz=None):
    """Code the analysis of x_in (or the given (y, z)) -> (bits, MSE against photo, float x_hat in [0, 1])."""
    gain, inv_gain = model.gains(quality)
    h, w = photo.shape[:2]
    analysis = model.analysis
    if yz is not None:
        model.analysis = lambda x, g: yz
    try:
        # the picture as the codec would take it; the patched analysis ignores it
        pix = np.clip(np.rint(x_in.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
        if yz is None:
            model.analysis = lambda x, g: analysis(x_in[None].astype(np.float32), g)
        z_sym, y_sym, parts, y_hat = codec._tile_latents(model, pix, (0, h, 0, w), gain, model.z_row(quality))
    finally:
        model.analysis = analysis
    bits = 8 * len(entropy.encode(parts))
    x_hat = model.synthesis(y_hat[None], inv_gain)[0]
    decoded = np.clip(np.rint(x_hat.transpose(1, 2, 0) * 255), 0, 255)
    mse = float(np.mean(np.square(decoded - photo.astype(np.float64))))
    return bits, mse, np.clip(x_hat, 0, 1)


def variants(model, photo: np.ndarray, quality: float, steps: int) -> dict[str, tuple[int, float]]:
    x = photo.astype(np.float32).transpose(2, 0, 1) / 255.0
    gain, _ = model.gains(quality)
    out = {}
    bits, mse, x_hat0 = code(model, photo, quality, x)
    out["base"] = (bits, mse)
    for alpha in ALPHAS:
        xk, x_hat = x, x_hat0
        for k in range(1, steps + 1):
            xk = xk + alpha * (x - x_hat)
            bits, mse, x_hat = code(model, photo, quality, xk)
            out[f"pre a={alpha} k={k}"] = (bits, mse)
    y0, z0 = model.analysis(x[None], gain)
    for beta in BETAS:
        yk, x_hat = y0, x_hat0
        for k in range(1, steps + 1):
            y_rec, _ = model.analysis(x_hat[None].astype(np.float32), gain)
            yk = yk + beta * (y0 - y_rec)
            bits, mse, x_hat = code(model, photo, quality, x, yz=(yk, z0))
            out[f"lat b={beta} k={k}"] = (bits, mse)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--images", type=Path, help="folder of photos (default: the held-out training photos)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--qualities", type=float, nargs="+", default=QUALITIES)
    args = ap.parse_args()
    pillow_dcv.set_threads(args.threads)
    paths = photo_paths(args.images)
    photos = [centre_crop(p, args.side) for p in paths]
    model = get_model(args.model)
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{len(photos)} photos: {', '.join(p.name for p in paths)}", flush=True)
    table = [[variants(model, a, q, args.steps) for a in photos] for q in args.qualities]
    names = list(table[0][0])
    pixels = [a.shape[0] * a.shape[1] for a in photos]

    def curve(pick) -> tuple[list[float], list[float]]:
        rates, psnrs = [], []
        for qi, rows in enumerate(table):
            lam = model.rd_lambda(args.qualities[qi])
            chosen = [pick(r, n, lam) for r, n in zip(rows, pixels)]
            rates.append(sum(b for b, _ in chosen) / sum(pixels))
            psnrs.append(float(np.mean([10 * np.log10(255**2 / m) for _, m in chosen])))
        return rates, psnrs

    base = curve(lambda r, n, lam: r["base"])
    print("base:", " ".join(f"{b:.3f}/{p:.2f}" for b, p in zip(*base)))
    for name in names[1:]:
        c = curve(lambda r, n, lam, name=name: r[name])
        print(f"{name}: BD-rate {bd_rate(*base, *c):+.2f} %  ({' '.join(f'{b:.3f}/{p:.2f}' for b, p in zip(*c))})")
    for group in ("pre", "lat", ""):
        c = curve(lambda r, n, lam, g=group: min((v for k, v in r.items() if k == "base" or k.startswith(g)),
                                                 key=lambda bm: bm[0] / n + lam * bm[1]))
        print(f"best of base + {group or 'all'}: BD-rate {bd_rate(*base, *c):+.2f} %")


if __name__ == "__main__":
    main()
