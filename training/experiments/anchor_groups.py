"""What would finer channel groups for the anchors save? A rate-only estimate (session 12).

The first slice's anchors (a quarter of the symbols) are coded from the hyperprior alone and cost a
quarter of the bits. Split each slice's anchors in two groups of M/4 channels: the second group is
corrected from the first group's decoded anchors (a new network, zero-initialised, so the model
starts as it is). Everything else is frozen; only the new networks learn, from the rate of the
current model's latents (noise proxy, as in training). Estimated bits on the held-out photos with
rounding, per coding stage, against the unchanged model. A lower bound on what joint training gives.

    python training/experiments/anchor_groups.py ~/.cache/pillow-dcv/ckpt-ab12-start.pt [steps]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import CropSampler, cache_entries, held_out  # noqa: E402
from model import DCVModel, anchor_mask, conv, gaussian_likelihood  # noqa: E402
from train import load_eval_image, to_tensor  # noqa: E402

TRAIN_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/train"
CACHE = Path("~/.cache/pillow-dcv/data").expanduser()


def group_context(m: int, hidden: int) -> nn.Sequential:
    """M/4 decoded channels (3x3) -> corrections of the next M/4 channels' scales and means."""
    head = nn.Conv2d(hidden, m // 2, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(conv(m // 4, hidden, 3, 1), nn.ReLU(), head)


class AnchorGroups(nn.Module):
    def __init__(self, model: DCVModel, hidden: int = 64) -> None:
        super().__init__()
        self.model = model
        self.first = group_context(model.m, hidden)  # group 2 from group 1
        self.second = group_context(model.m, hidden)  # group 4 from group 3

    def entropy_parameters(self, y, hyper, rounding, extra: bool = True):
        """As DCVModel._entropy_parameters_sliced, with the two group corrections on the anchors."""
        md = self.model
        half, q = md.m // 2, md.m // 4
        anchor = anchor_mask(y.shape[2], y.shape[3], y.device)
        scale, mu = hyper.chunk(2, dim=1)
        scale, mu = scale.clone(), mu.clone()

        def corrected(net, src, lo):
            ds, dm = net(src * anchor).float().chunk(2, dim=1)
            scale[:, lo : lo + q] = scale[:, lo : lo + q] + ds
            mu[:, lo : lo + q] = mu[:, lo : lo + q] + dm

        g1 = rounding(y[:, :q] - mu[:, :q]) + mu[:, :q]
        if extra:
            corrected(self.first, g1, q)
        y1_hat = rounding(y[:, :half] - mu[:, :half]) + mu[:, :half]
        ds, dm = md.channel_context_anchor(y1_hat * anchor).float().chunk(2, dim=1)
        scale_a = torch.cat([scale[:, :half], scale[:, half:] + ds], 1)
        mu_a = torch.cat([mu[:, :half], mu[:, half:] + dm], 1)
        if extra:
            g3 = rounding(y[:, half : half + q] - mu_a[:, half : half + q]) + mu_a[:, half : half + q]
            ds, dm = self.second(g3 * anchor).float().chunk(2, dim=1)
            scale_a = torch.cat([scale_a[:, : half + q], scale_a[:, half + q :] + ds], 1)
            mu_a = torch.cat([mu_a[:, : half + q], mu_a[:, half + q :] + dm], 1)
        y_hat_a = rounding(y - mu_a) + mu_a
        hyper0 = hyper  # the fusion sees the hyperprior's own output
        scale0, mu0 = hyper0.chunk(2, dim=1)
        scale_c, mu_c = md._spatial_correction(y_hat_a * anchor, hyper0).chunk(2, dim=1)
        scale_n, mu_n = scale0 + scale_c, mu0 + mu_c
        y1_full = torch.where(anchor, y_hat_a[:, :half], rounding(y[:, :half] - mu_n[:, :half]) + mu_n[:, :half])
        ds, dm = md.channel_context_other(y1_full).float().chunk(2, dim=1)
        scale_n = torch.cat([scale_n[:, :half], scale_n[:, half:] + ds], 1)
        mu_n = torch.cat([mu_n[:, :half], mu_n[:, half:] + dm], 1)
        scale = torch.where(anchor, scale_a, scale_n)
        mu = torch.where(anchor, mu_a, mu_n)
        return torch.where(anchor, y_hat_a, rounding(y - mu) + mu), scale, mu


def ste(x):
    return x + (torch.round(x) - x).detach()


def latents(md: DCVModel, x: torch.Tensor, q: torch.Tensor):
    with torch.no_grad():
        gain, _ = md.gains(q)
        y = md.g_a(x).float() * gain
        hyper = md.h_s(torch.round(md.h_a(y))).float()
    return y, hyper


def stage_bits(groups: AnchorGroups, images: list[np.ndarray], qi: int, extra: bool) -> np.ndarray:
    md = groups.model
    q = md.m // 4
    total = np.zeros(6)
    with torch.no_grad():
        for img in images:
            x = to_tensor(img[None])
            y, hyper = latents(md, x, torch.tensor([qi]))
            y_hat, scale, mu = groups.entropy_parameters(y, hyper, torch.round, extra)
            b = -torch.log2(gaussian_likelihood(y_hat - mu, scale).clamp_min(1e-9))[0]
            a = anchor_mask(y.shape[2], y.shape[3])[0, 0]
            parts = [b[i * q : (i + 1) * q][:, a].sum() for i in range(4)]
            parts += [b[: 2 * q][:, ~a].sum(), b[2 * q :][:, ~a].sum()]
            total += np.array([float(p) for p in parts]) / (x.shape[2] * x.shape[3])
    return total / len(images)


def main() -> None:
    torch.set_num_threads(1)
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    state = torch.load(Path(sys.argv[1]).expanduser(), map_location="cpu", weights_only=False)
    md = DCVModel(**state["config"]["model"])
    md.load_state_dict(state["ema"])
    md.eval().requires_grad_(False)
    groups = AnchorGroups(md)
    holdout = held_out(TRAIN_DIR, 8)
    images = [load_eval_image(p, 512) for p in holdout]
    sampler = CropSampler(CACHE, 256, seed=1, exclude=cache_entries(TRAIN_DIR, holdout))
    params = list(groups.first.parameters()) + list(groups.second.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    t0 = time.time()
    for step in range(1, steps + 1):
        x = to_tensor(sampler.batch(8))
        qs = torch.randint(0, 8, (8,))
        y, hyper = latents(md, x, qs)
        y_hat, scale, mu = groups.entropy_parameters(y, hyper, ste)
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        bits = -torch.log2(gaussian_likelihood(noisy - mu, scale).clamp_min(1e-9)).sum((1, 2, 3))
        loss = (bits / (x.shape[2] * x.shape[3])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == steps:
            print(f"step {step} ({time.time() - t0:.0f} s): training bpp {loss.item():.4f}", flush=True)
    names = ["g1 anchors", "g2 anchors", "g3 anchors", "g4 anchors", "s1 others", "s2 others"]
    for qi in (0, 3, 7):
        base, new = stage_bits(groups, images, qi, False), stage_bits(groups, images, qi, True)
        print(f"q{qi + 1}: bpp(y) {base.sum():.4f} -> {new.sum():.4f} ({100 * (new.sum() / base.sum() - 1):+.2f} %); "
              + ", ".join(f"{n} {100 * b / base.sum():.1f} % -> {100 * (v / b - 1):+.1f} %"
                          for n, b, v in zip(names, base, new)), flush=True)


if __name__ == "__main__":
    main()
