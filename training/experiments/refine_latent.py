"""How much does encoder-side latent refinement gain? (session 9 experiment)

For a few held-out photos and qualities: the latent y from the analysis transform, then K Adam steps
on y alone (hyper-latent z fixed from the first y), minimising bits + lambda * 255^2 * MSE with
straight-through rounding. Prints estimated bits and PSNR with hard rounding before and after.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tomllib  # noqa: E402

from data import held_out  # noqa: E402
from model import DCVModel, gaussian_likelihood, ste_round  # noqa: E402
from train import load_eval_image, to_tensor  # noqa: E402


def measure(model, x, y, z, hyper, inv_gain):
    y_hat, scale, mu = model.entropy_parameters(y, hyper)
    bits = -torch.log2(gaussian_likelihood(y_hat - mu, scale).clamp_min(1e-9)).sum()
    bits += -torch.log2(model.entropy_bottleneck.likelihood(z).clamp_min(1e-9)).sum()
    x_hat = model.g_s(y_hat * inv_gain).clamp(0, 1)
    mse = ((x_hat * 255).round() / 255 - x).pow(2).mean().item()
    return bits.item() / (x.shape[2] * x.shape[3]), 10 * math.log10(1 / mse)


def main() -> None:
    torch.set_num_threads(1)
    ckpt = sys.argv[1]
    steps = [int(s) for s in sys.argv[2].split(",")]
    lr = float(sys.argv[3])
    mode = sys.argv[4]
    cfg = tomllib.loads(Path("training/config.toml").read_text())
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = DCVModel(**cfg["model"])
    model.load_state_dict(state["ema"])
    model.eval().requires_grad_(False)
    images = [load_eval_image(p, 512) for p in held_out(Path(cfg["data"]["train_dir"]), 8)[:3]]
    for qi in (0, 3, 7):
        lmbda = model.lambdas[qi]
        for img in images:
            x = to_tensor(img[None]).contiguous()
            gain, inv_gain = model.gains(torch.tensor([qi]))
            with torch.no_grad():
                y0 = model.g_a(x) * gain
                z = torch.round(model.h_a(y0))
                hyper = model.h_s(z)
                base = measure(model, x, y0, z, hyper, inv_gain)
            y = y0.clone().requires_grad_(True)
            opt = torch.optim.Adam([y], lr=lr)
            t0 = time.time()

            def rd(bpp: float, psnr: float, lmbda: float = lmbda) -> float:
                return bpp + lmbda * 255**2 * 10 ** (-psnr / 10)

            row = [f"q{qi + 1}", f"base {base[0]:.4f}/{base[1]:.2f}"]
            for k in range(1, max(steps) + 1):
                y_hat, scale, mu = model.entropy_parameters(y, hyper, ste_round)
                if mode == "noise":  # the training proxy: noisy y for the rate, rounded for the distortion
                    v = y + torch.empty_like(y).uniform_(-0.5, 0.5) - mu
                else:
                    v = y_hat - mu
                bits = -torch.log2(gaussian_likelihood(v, scale).clamp_min(1e-9)).sum()
                x_hat = model.g_s(y_hat * inv_gain)
                npix = x.shape[2] * x.shape[3]
                loss = bits / npix + lmbda * 255**2 * (x_hat - x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if k in steps:
                    with torch.no_grad():
                        bpp, psnr = measure(model, x, y.detach(), z, hyper, inv_gain)
                    d_bits = 100 * (bpp / base[0] - 1)
                    gain_loss = 100 * (rd(bpp, psnr) / rd(*base) - 1)
                    row.append(f"{k}: {bpp:.4f}/{psnr:.2f} ({d_bits:+.1f} %, {psnr - base[1]:+.2f} dB, "
                               f"loss {gain_loss:+.2f} %)")
            row.append(f"{time.time() - t0:.0f} s")
            print("  ".join(row), flush=True)


if __name__ == "__main__":
    main()
