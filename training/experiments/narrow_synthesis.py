"""Narrow a run's synthesis at 1/2 resolution, 32 -> 16 channels (session 28 A/B, for decode time).

    python training/experiments/narrow_synthesis.py ~/.cache/pillow-dcv/ckpt.pt \
        ~/.cache/pillow-dcv/ckpt-narrow.pt --width 16

The layers at 1/2 resolution are ~40 % of a band's synthesis time, and onnxruntime's blocked kernels
work in groups of 16 channels here: [96, 64, 16] runs a band ~21 % faster than [96, 64, 32], where 24
channels gain only ~6 % (training/LOG.md session 28). Unlike widening, narrowing cannot keep what the
model computes, so it starts as close as it can: the kept channels of the 64 -> 32 layer are the ones
whose share of the output carries the most energy on training crops (every quality), the inverse GDN
keeps their block of gamma, and the last layer's weights are refitted by least squares, phase by
phase, so that the narrow synthesis best matches the wide one's output on those crops. The whole
checkpoint is narrowed: the EMA as above, then its narrowed layers (4-6) alone trained for a few
hundred steps to reproduce the wide synthesis' output from their unchanged inputs (`distil`); the raw
weights and the slow EMA take those layers, and Adam's moments are sliced, so it resumes like a run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import CropSampler  # noqa: E402
from lower_synthesis import phase_taps  # noqa: E402
from model import DCVModel, ste_round  # noqa: E402
from widen_synthesis import reshape_moments  # noqa: E402

# parameter -> axes of the 1/2-resolution channels in it
NARROWED_AXES = {"g_s.4.weight": (1,), "g_s.4.bias": (0,), "g_s.5.beta": (0,), "g_s.5.gamma": (0, 1),
                 "g_s.6.weight": (0,)}


def take(tensor: torch.Tensor, axes: tuple[int, ...], keep: torch.Tensor) -> torch.Tensor:
    for axis in axes:
        tensor = tensor.index_select(axis, keep)
    return tensor.contiguous()


@torch.no_grad()
def synthesis_inputs(model: DCVModel, crops: torch.Tensor) -> torch.Tensor:
    """The synthesis input (the quantised latent times the inverse gain) of `crops`, every quality."""
    inputs = []
    for q in range(model.gain.shape[0]):
        gain, inv_gain = model.gains(torch.full((len(crops),), q, dtype=torch.long))
        y = model.analyse(crops) * gain
        z_hat = torch.round(model.h_a(y))
        y_hat, scale, mu = model.entropy_parameters(y, model.h_s(z_hat), ste_round)
        inputs.append(model.synthesis_input(y_hat, scale, mu) * inv_gain)
    return torch.cat(inputs)


def channel_energy(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Energy of each channel's share of the last layer's output (without its bias)."""
    out = []
    for c in range(a.shape[1]):
        part = F.conv_transpose2d(a[:, c : c + 1], w[c : c + 1], stride=2, padding=1)
        out.append(part.pow(2).mean())
    return torch.stack(out)


def refit_last_layer(
    a: torch.Tensor, target: torch.Tensor, bias: torch.Tensor, k: int = 4, pad: int = 1
) -> torch.Tensor:
    """ConvTranspose weights (C, 3, k, k) for inputs `a` (N, C, h, w) whose output best matches `target`
    (N, 3, 2h, 2w) with the bias fixed: one least-squares fit per output phase over its taps."""
    n, c, h, w = a.shape
    out = torch.zeros(c, target.shape[1], k, k, dtype=torch.float64)
    padded = F.pad(a, (1, 1, 1, 1)).double()
    for ry in (0, 1):
        for rx in (0, 1):
            rows, cols = phase_taps(k, pad, ry), phase_taps(k, pad, rx)
            features = [padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, _ in rows for dx, _ in cols]
            x = torch.stack(features, dim=2).permute(0, 3, 4, 1, 2).reshape(-1, c * len(features))
            t = target[:, :, ry::2, rx::2].double() - bias.double()[None, :, None, None]
            t = t.permute(0, 2, 3, 1).reshape(-1, 3)
            gram = x.T @ x + 1e-6 * torch.eye(x.shape[1], dtype=torch.float64) * x.pow(2).mean()
            solution = torch.linalg.solve(gram, x.T @ t).reshape(c, len(rows), len(cols), -1)
            for i, (_, ty) in enumerate(rows):
                for j, (_, tx) in enumerate(cols):
                    out[:, :, ty, tx] = solution[:, i, j]
    return out.float()


def narrowed(cfg: dict, width: int) -> dict:
    """The run's config with `width` channels at 1/2 resolution."""
    channels = [*cfg["model"]["synthesis_channels"][:-1], width]
    return {**cfg, "model": {**cfg["model"], "synthesis_channels": channels}}


def crops_from_cache(cfg: dict, count: int, seed: int) -> torch.Tensor:
    """`count` random 256x256 training crops, (N, 3, 256, 256) in 0..1."""
    sampler = CropSampler(Path(cfg["data"]["cache_dir"]).expanduser(), 256, seed=seed)
    return torch.from_numpy(sampler.batch(count)).permute(0, 3, 1, 2).float() / 255


def narrow_weights(sd: dict, cfg: dict, crops: torch.Tensor, width: int) -> tuple[dict, torch.Tensor]:
    """The state dict with the 1/2-resolution layer narrowed to the `width` channels of most output
    energy, the last layer refitted; and the kept channels."""
    model = DCVModel(**cfg["model"])
    model.load_state_dict(sd)
    model.eval()
    with torch.no_grad():
        quarter = model.g_s[:4](synthesis_inputs(model, crops))  # narrowing leaves it as it is
        a = model.g_s[4:6](quarter)  # the inverse GDN's output at 1/2 resolution
        x_hat = model.g_s[6](a)
    energy = channel_energy(a, sd["g_s.6.weight"].float())
    keep = torch.sort(torch.argsort(energy, descending=True)[:width]).values
    out = dict(sd)
    for name, axes in NARROWED_AXES.items():
        out[name] = take(sd[name], axes, keep)
    narrow = DCVModel(**narrowed(cfg, width)["model"])
    narrow.load_state_dict(out)
    narrow.eval()
    with torch.no_grad():
        a_narrow = narrow.g_s[4:6](quarter)
    out["g_s.6.weight"] = refit_last_layer(a_narrow, x_hat, sd["g_s.6.bias"].float()).to(sd["g_s.6.weight"].dtype)
    narrow.load_state_dict(out)
    with torch.no_grad():
        mse = F.mse_loss(narrow.g_s[6](a_narrow), x_hat).item()
    print(f"kept channels {keep.tolist()}; output MSE against the wide synthesis {mse:.3g}")
    return out, keep


def distil(sd: dict, wide_sd: dict, cfg: dict, crops: torch.Tensor, steps: int, lr: float = 1e-3) -> dict:
    """Train the narrowed layers 4-6 alone to reproduce the wide synthesis' output on `crops` (every
    quality), from their inputs at 1/4 resolution, which narrowing leaves as they were."""
    wide = DCVModel(**cfg["model"])
    wide.load_state_dict(wide_sd)
    wide.eval()
    narrow = DCVModel(**narrowed(cfg, sd["g_s.4.bias"].shape[0])["model"])
    narrow.load_state_dict(sd)
    with torch.no_grad():
        inputs = wide.g_s[:4](synthesis_inputs(wide, crops))
        target = wide.g_s[4:](inputs)
    layers = narrow.g_s[4:]
    opt = torch.optim.Adam(layers.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps + 1):
        pick = torch.randint(0, len(inputs), (16,), generator=generator)
        loss = F.mse_loss(layers(inputs[pick]), target[pick])
        if step % 100 == 0:
            with torch.no_grad():
                batches = range(0, len(inputs), 16)
                mse = sum(F.mse_loss(layers(inputs[i : i + 16]), target[i : i + 16]).item() for i in batches)
            print(f"  distil step {step}: output MSE against the wide synthesis {mse / len(batches):.3g}", flush=True)
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = dict(sd)
    out.update({k: v.detach().to(sd[k].dtype) for k, v in narrow.state_dict().items() if k.startswith("g_s.")})
    return out


def narrow_moments(opt_state: dict, model: DCVModel, optim: dict, keep: torch.Tensor) -> dict:
    """Adam's moments for the narrowed model, sliced like the weights."""
    return reshape_moments(opt_state, model, optim, NARROWED_AXES, lambda v, axes: take(v, axes, keep))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--distil-steps", type=int, default=400)
    args = ap.parse_args()
    torch.manual_seed(0)
    src = torch.load(Path(args.checkpoint).expanduser(), map_location="cpu", weights_only=False)
    cfg = src["config"]
    # channels chosen on the EMA (the weights that ship)
    ema, keep = narrow_weights(src["ema"], cfg, crops_from_cache(cfg, args.crops, seed=1), args.width)
    if args.distil_steps:
        more = crops_from_cache(cfg, 2 * args.crops, seed=2)
        ema = distil(ema, src["ema"], cfg, more, args.distil_steps)
    out = {**src, "ema": ema}
    # the raw weights and the slow EMA take the EMA's narrowed layers (the rest as they were)
    layers = {k: ema[k] for k in (*NARROWED_AXES, "g_s.6.bias")}
    out["model"] = {**src["model"], **layers}
    if "ema_slow" in src:
        out["ema_slow"] = {**src["ema_slow"], **layers}
    channels = list(cfg["model"]["synthesis_channels"])
    narrow_cfg = out["config"] = narrowed(cfg, args.width)
    out["opt"] = narrow_moments(src["opt"], DCVModel(**narrow_cfg["model"]), cfg["optim"], keep)
    torch.save(out, Path(args.out).expanduser())
    print(f"synthesis {channels} -> {narrow_cfg['model']['synthesis_channels']}: {args.out} (step {src['step']})")


if __name__ == "__main__":
    main()
