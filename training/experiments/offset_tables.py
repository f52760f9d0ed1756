"""Are finer reconstruction-offset tables worth a format change? A rate-neutral estimate (session 15).

The offsets (spec section 5.6) move only the synthesis input, never a symbol, so a table's value is
its PSNR at unchanged bits. Everything but the table is frozen (a checkpoint's EMA weights); the
latents, means and scales of random training crops are computed once, and each table variant is
fitted to the crops' MSE alone (Adam), starting from the trained shared table. The held-out photos'
PSNR at all 8 qualities then compares the variants, the re-fitted shared table being the control.

    python training/experiments/offset_tables.py [--checkpoint ~/.cache/pillow-dcv/ckpt.pt] [--steps 400]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import CropSampler, cache_entries, held_out  # noqa: E402
from model import SCALE_THRESHOLDS, DCVModel  # noqa: E402
from train import load_eval_image, to_tensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAIN_DIR = ROOT.parent / "shared/data/train"
CACHE = Path("~/.cache/pillow-dcv/data").expanduser()
LEVELS = len(SCALE_THRESHOLDS) + 1
MAGNITUDES = 3


class Table(torch.nn.Module):
    """offset[|q| row, channel, scale level, quality] with some axes shared (size 1)."""

    def __init__(self, shared: torch.Tensor, channels: int, qualities: int) -> None:
        super().__init__()
        init = shared[:, None, :, None].repeat(1, channels, 1, qualities)  # (3, C, L, Q)
        self.table = torch.nn.Parameter(init.clone())

    def forward(self, y_hat, scale, mu, qi) -> torch.Tensor:
        q = torch.round(y_hat - mu)
        level = torch.bucketize(scale.contiguous(), THRESHOLDS, right=True)
        magnitude = q.abs().clamp(max=MAGNITUDES).long()
        t = F.pad(self.table, (0, 0, 0, 0, 0, 0, 1, 0))  # row 0: q = 0 stays at the centre
        b, c, h, w = y_hat.shape
        channel = torch.arange(c)[None, :, None, None] if t.shape[1] > 1 else torch.zeros(1, 1, 1, 1, dtype=torch.long)
        quality = qi[:, None, None, None] if t.shape[3] > 1 else torch.zeros(1, 1, 1, 1, dtype=torch.long)
        return y_hat + torch.sign(q) * t[magnitude, channel, level, quality]


THRESHOLDS = torch.tensor(SCALE_THRESHOLDS, dtype=torch.float32)


@torch.no_grad()
def latents(model: DCVModel, x: torch.Tensor, qi: torch.Tensor):
    gain, inv_gain = model.gains(qi)
    y = model.g_a(x) * gain
    z = torch.round(model.h_a(y))
    y_hat, scale, mu = model.entropy_parameters(y, model.h_s(z))
    return y_hat, scale, mu, inv_gain


def psnr_table(model: DCVModel, table: Table, images: list[np.ndarray]) -> list[float]:
    out = []
    for qi in range(8):
        values = []
        for img in images:
            x = to_tensor(img[None])
            q = torch.tensor([qi])
            y_hat, scale, mu, inv_gain = latents(model, x, q)
            with torch.no_grad():
                x_hat = model.synthesise(table(y_hat, scale, mu, q) * inv_gain).clamp(0, 1)
            mse = ((x_hat * 255).round() / 255 - x).pow(2).mean().item()
            values.append(10 * math.log10(1 / mse))
        out.append(float(np.mean(values)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="~/.cache/pillow-dcv/ckpt.pt")
    ap.add_argument("--crops", type=int, default=480)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    state = torch.load(Path(args.checkpoint).expanduser(), map_location="cpu", weights_only=False)
    model = DCVModel(**state["config"]["model"])
    model.load_state_dict({k: v.float() for k, v in state["ema"].items()})
    model.eval().requires_grad_(False)
    shared = model.reconstruction.table.detach().clone()
    print(f"step {state['step']}; shared table |max| {shared.abs().max():.3f}", flush=True)

    holdout = held_out(TRAIN_DIR, 8)
    sampler = CropSampler(CACHE, args.crop, seed=1, exclude=cache_entries(TRAIN_DIR, holdout))
    t0 = time.time()
    data = []
    for start in range(0, args.crops, 8):
        x = to_tensor(sampler.batch(8))
        qi = torch.arange(start, start + 8) % 8
        data.append((x, qi, *latents(model, x, qi)))
    print(f"{args.crops} crops prepared in {time.time() - t0:.0f} s", flush=True)
    images = [load_eval_image(p, 512) for p in holdout]

    variants = {"shared (control)": (1, 1), "per channel": (model.m, 1), "per quality": (1, 8),
                "per channel and quality": (model.m, 8)}
    base = psnr_table(model, Table(shared, 1, 1), images)
    print("trained table:", " ".join(f"{p:.3f}" for p in base), flush=True)
    for name, (channels, qualities) in variants.items():
        table = Table(shared, channels, qualities)
        opt = torch.optim.Adam(table.parameters(), lr=2e-3)
        t0 = time.time()
        for step in range(args.steps):
            x, qi, y_hat, scale, mu, inv_gain = data[step % len(data)]
            x_hat = model.synthesise(table(y_hat, scale, mu, qi) * inv_gain)
            # each sample's MSE weighted by its lambda, as in the RD loss
            lam = torch.tensor(model.lambdas)[qi]
            loss = (lam * (x_hat - x).pow(2).mean((1, 2, 3))).mean() * 255**2
            opt.zero_grad()
            loss.backward()
            opt.step()
        p = psnr_table(model, table, images)
        delta = " ".join(f"{a - b:+.3f}" for a, b in zip(p, base))
        print(f"{name:26s} {time.time() - t0:5.0f} s  dPSNR q1..q8 vs trained table: {delta}  "
              f"mean {np.mean(np.subtract(p, base)):+.4f} dB", flush=True)


if __name__ == "__main__":
    main()
