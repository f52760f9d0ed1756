"""A/B of session 2: last hyper-synthesis layer 3x3 vs 1x1, fine-tuning h_s only (rate only).

    cp ~/.cache/pillow-dcv/ckpt.pt ~/.cache/pillow-dcv/ckpt-hyperab.pt   # a light-synthesis checkpoint
    python training/experiments/hyper_kernel_ab.py 3 400; python training/experiments/hyper_kernel_ab.py 1 400
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import CropSampler  # noqa: E402
from model import DCVModel, gaussian_likelihood  # noqa: E402
from train import load_eval_images, to_tensor  # noqa: E402

torch.set_num_threads(1)
kernel, steps = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
m = DCVModel(synthesis_channels=(96, 64, 32), synthesis_kernels=(5, 5, 4, 4), hyper_kernel=kernel)
src = torch.load(Path.home() / ".cache/pillow-dcv/ckpt-hyperab.pt", map_location="cpu")
own = m.state_dict()
sd = {}
for k, v in src["ema"].items():
    if own[k].shape == v.shape:
        sd[k] = v
    else:
        c = (v.shape[2] - own[k].shape[2]) // 2
        sd[k] = v[:, :, c : c + own[k].shape[2], c : c + own[k].shape[3]].clone()
m.load_state_dict(sd)
m.requires_grad_(False)
m.h_s.requires_grad_(True)
opt = torch.optim.Adam(m.h_s.parameters(), lr=2e-4)
sampler = CropSampler(Path.home() / ".cache/pillow-dcv/data", 192, seed=1)


def rate(x, q):
    gain, _ = m.gains(q)
    with torch.no_grad():
        y = m.g_a(x) * gain
        z = torch.round(m.h_a(y))
    scale, mu = m.h_s(z).chunk(2, 1)
    y_hat = y + (torch.round(y - mu) + mu - y).detach()
    bits = -torch.log2(gaussian_likelihood(y_hat - mu, scale).clamp_min(1e-9)).sum()
    return bits / (x.shape[0] * x.shape[2] * x.shape[3])


evals = [to_tensor(a[None]) for a in load_eval_images(Path(__file__).resolve().parents[3] / "shared/data/kodak", 6)]


def evaluate():
    with torch.no_grad():
        return [round(float(np.mean([rate(x, torch.tensor([q])).item() for x in evals])), 4) for q in (0, 3, 7)]


print(kernel, "start", evaluate(), flush=True)
t = time.time()
for _ in range(steps):
    x = to_tensor(sampler.batch(8))
    q = torch.randint(0, 8, (8,))
    loss = rate(x, q)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(kernel, "after", steps, evaluate(), f"{time.time() - t:.0f}s", flush=True)
