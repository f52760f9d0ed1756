"""Widen a run's synthesis at 1/8 resolution, keeping what it computes (session 16 A/B).

    python training/experiments/widen_synthesis.py ~/.cache/pillow-dcv/ckpt.pt \
        ~/.cache/pillow-dcv/ckpt-wide.pt --width 128

The synthesis' first layer (192 -> 96 channels, a transposed convolution) is its bottleneck (session
7), and a wider one costs the decoder little (`synthesis_cost.py`: [128, 64, 32] +24 ms/Mpx warm). The
new output channels of the first layer get random filters with the spread of the old ones; the inverse
GDN passes them through unchanged and leaves the old channels alone (beta 1, no cross terms); the
second layer reads them with zero weights. So the widened model computes exactly what the run did,
and training decides what the new channels are worth. The whole checkpoint is widened (weights, EMA,
slow EMA and Adam's moments, which start at zero for the new entries), so it resumes like the run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import GDN, DCVModel  # noqa: E402
from train import parameter_groups  # noqa: E402

# parameter -> axis of the first layer's output channels in it
WIDENED_AXES = {"g_s.0.weight": (1,), "g_s.0.bias": (0,), "g_s.1.beta": (0,), "g_s.1.gamma": (0, 1),
                "g_s.2.weight": (0,)}


def grow(tensor: torch.Tensor, axes: tuple[int, ...], width: int, fill: torch.Tensor | float) -> torch.Tensor:
    """tensor with each of `axes` grown to `width`; the old values keep their place at the start."""
    shape = list(tensor.shape)
    for axis in axes:
        shape[axis] = width
    out = fill.to(tensor.dtype).clone() if isinstance(fill, torch.Tensor) else torch.full(shape, float(fill))
    out[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return out


def widen_weights(sd: dict[str, torch.Tensor], width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    sd = dict(sd)
    old = sd["g_s.0.bias"].shape[0]
    g = torch.Generator().manual_seed(seed)
    w = sd["g_s.0.weight"].float()
    random_filters = torch.randn((w.shape[0], width, *w.shape[2:]), generator=g) * w.std()
    sd["g_s.0.weight"] = grow(w, (1,), width, random_filters)
    sd["g_s.0.bias"] = grow(sd["g_s.0.bias"].float(), (0,), width, 0.0)
    sd["g_s.1.beta"] = grow(sd["g_s.1.beta"].float(), (0,), width, math.sqrt(1 + GDN.PEDESTAL))  # beta 1
    sd["g_s.1.gamma"] = grow(sd["g_s.1.gamma"].float(), (0, 1), width, math.sqrt(GDN.PEDESTAL))  # gamma 0
    sd["g_s.2.weight"] = grow(sd["g_s.2.weight"].float(), (0,), width, 0.0)
    assert sd["g_s.0.bias"].shape[0] == width > old
    return sd


def reshape_moments(
    opt_state: dict, model: DCVModel, optim: dict, axes_of: dict[str, tuple[int, ...]],
    change: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor],
) -> dict:
    """Adam's state (in the order of train.parameter_groups) for `model`, whose parameters named in
    `axes_of` changed size along those axes: `change(moment, axes)` gives each of their moments."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in parameter_groups(model, optim) for p in group["params"]]
    state = dict(opt_state["state"])
    for name, axes in axes_of.items():
        index = order.index(name)
        state[index] = {k: (change(v, axes) if k in ("exp_avg", "exp_avg_sq") else v)
                        for k, v in state[index].items()}
    return {"state": state, "param_groups": opt_state["param_groups"]}


def widen_moments(opt_state: dict, model: DCVModel, optim: dict, width: int) -> dict:
    """Adam's moments for the widened model; new entries start at zero."""
    return reshape_moments(opt_state, model, optim, WIDENED_AXES, lambda v, axes: grow(v, axes, width, 0.0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args()
    src = torch.load(Path(args.checkpoint).expanduser(), map_location="cpu")
    cfg = src["config"]
    channels = list(cfg["model"]["synthesis_channels"])
    cfg = {**cfg, "model": {**cfg["model"], "synthesis_channels": [args.width, *channels[1:]]}}
    model = DCVModel(**cfg["model"])
    out = {**src, "config": cfg, "model": widen_weights(src["model"], args.width)}
    for key in ("ema", "ema_slow"):
        if key in src:
            out[key] = widen_weights(src[key], args.width)
    out["opt"] = widen_moments(src["opt"], model, cfg["optim"], args.width)
    torch.save(out, Path(args.out).expanduser())
    print(f"synthesis {channels} -> {cfg['model']['synthesis_channels']}: {args.out} (step {src['step']})")


if __name__ == "__main__":
    main()
