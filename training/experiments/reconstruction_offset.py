"""Does reconstructing each latent at its bin's centroid instead of the bin's centre pay? (session 12)

A symbol q = round(y - mu) says only that y lies in [mu + q - 1/2, mu + q + 1/2). For a peaked
distribution the values in the bins next to the mean sit mostly on the side towards the mean, so
their average is not mu + q. The decoder knows each symbol's scale index exactly; a table
offset[scale index, min(|q|, 3)], measured on training photos, moves the synthesis input to
mu + q + sign(q) * offset. The bits do not change; this measures the PSNR on the held-out photos.

    python training/experiments/reconstruction_offset.py training/weights/dcv-ms2-s30.pt
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import held_out, list_images  # noqa: E402
from export import SCALE_TABLE  # noqa: E402
from model import SCALE_MIN, DCVModel  # noqa: E402
from train import load_eval_image, to_tensor  # noqa: E402

TRAIN_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/train"
MAGNITUDES = 3  # |q| = 1, 2, >= 3


def load(weights: str) -> DCVModel:
    state = torch.load(weights, map_location="cpu", weights_only=False)
    sd = state.get("state_dict") or state["ema"]
    model = DCVModel(**state["config"]["model"])
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model.eval().requires_grad_(False)


def latents(model: DCVModel, img: np.ndarray, qi: int):
    x = to_tensor(img[None])
    gain, inv_gain = model.gains(torch.tensor([qi]))
    y = model.g_a(x) * gain
    z = torch.round(model.h_a(y))
    y_hat, scale, mu = model.entropy_parameters(y, model.h_s(z))
    thresholds = np.sqrt(SCALE_TABLE[:-1] * SCALE_TABLE[1:])
    index = np.searchsorted(thresholds, scale.clamp_min(SCALE_MIN).numpy(), side="right")
    return x, y, y_hat, mu, index, inv_gain


def table_keys(q: np.ndarray, index: np.ndarray) -> np.ndarray:
    return (index * MAGNITUDES + np.minimum(np.abs(q), MAGNITUDES) - 1).astype(np.int64)


def fit(model: DCVModel, paths: list[Path]) -> np.ndarray:
    """Mean of sign(q) * (y - mu - q) per (scale index, |q|), over all qualities."""
    size = len(SCALE_TABLE) * MAGNITUDES
    sums, counts = np.zeros(size), np.zeros(size)
    for p in paths:
        img = load_eval_image(p, 768)
        for qi in range(len(model.gain)):
            _, y, y_hat, mu, index, _ = latents(model, img, qi)
            q = np.rint((y_hat - mu).numpy())
            r = (y - y_hat).numpy()
            nz = q != 0
            keys = table_keys(q[nz], index[nz])
            np.add.at(sums, keys, np.sign(q[nz]) * r[nz])
            np.add.at(counts, keys, 1)
    # few samples: shrink towards 0
    return (sums / np.maximum(counts + 20, 1)).reshape(len(SCALE_TABLE), MAGNITUDES), counts


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    mse = ((x_hat.clamp(0, 1) * 255).round() / 255 - x).pow(2).mean().item()
    return 10 * math.log10(1 / mse)


def evaluate(model: DCVModel, paths: list[Path], offset: np.ndarray, scale: float = 1.0) -> None:
    flat = offset.reshape(-1)
    for qi in range(len(model.gain)):
        base, moved = [], []
        for p in paths:
            x, _, y_hat, mu, index, inv_gain = latents(model, load_eval_image(p, 512), qi)
            q = np.rint((y_hat - mu).numpy())
            shift = np.zeros_like(q)
            nz = q != 0
            shift[nz] = np.sign(q[nz]) * flat[table_keys(q[nz], index[nz])] * scale
            base.append(psnr(x, model.g_s(y_hat * inv_gain)))
            moved.append(psnr(x, model.g_s((y_hat + torch.from_numpy(shift).float()) * inv_gain)))
        print(f"q{qi + 1}: {np.mean(base):.3f} -> {np.mean(moved):.3f} dB ({np.mean(moved) - np.mean(base):+.3f})",
              flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    model = load(sys.argv[1])
    holdout = held_out(TRAIN_DIR, 8)
    others = [p for p in list_images(TRAIN_DIR) if p not in holdout]
    offset, counts = fit(model, others[3::47][:16])
    np.set_printoptions(precision=3, suppress=True, linewidth=150)
    print("offset per scale index (rows with data), |q| = 1, 2, >=3; counts")
    for i in range(len(SCALE_TABLE)):
        c = counts.reshape(-1, MAGNITUDES)[i]
        if c.sum():
            print(f"{i:2d} s={SCALE_TABLE[i]:.3f} {offset[i]} {c.astype(int)}")
    evaluate(model, holdout, offset)
