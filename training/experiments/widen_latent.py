"""Widen a trained model's latent from M to M' channels, keeping what it computes (session 7 A/B).

    python training/experiments/widen_latent.py --checkpoint ~/.cache/pillow-dcv/ckpt.pt --m 256 \
        --out ~/.cache/pillow-dcv/widened-256.pt

Half of the new channels join each channel-context slice (at its end), so slice 1 stays the first
M'/2 channels. The synthesis, the hyper-analysis and every context network read the new channels
with zero weights, and the hyper-synthesis predicts mean 0 and a fixed scale for them, so the
widened model decodes exactly as before; the new analysis filters are random (the old ones' spread),
so the new latents are non-zero and training sees what they are worth. The output is a weights file
for ``train.py --init`` (model and EMA widened alike; the optimizer starts fresh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import DCVModel  # noqa: E402

NEW_SCALE = 1.0  # the hyperprior's scale for the new channels until it learns them


def channel_map(m: int, m_new: int) -> torch.Tensor:
    """New index of each old latent channel: each slice keeps its channels at its start."""
    half, half_new = m // 2, m_new // 2
    old = torch.arange(m)
    return torch.where(old < half, old, old - half + half_new)


def widen(sd: dict[str, torch.Tensor], cfg: dict, m_new: int, seed: int = 0) -> dict[str, torch.Tensor]:
    m = cfg["m"]
    new_model = DCVModel(**{**cfg, "m": m_new})
    out = {k: torch.zeros_like(v) for k, v in new_model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    idx = channel_map(m, m_new)
    idx2 = torch.cat([idx, idx + m_new])  # (scales; means) pairs of axes of size 2M
    hidden_old, hidden_new = 3 * m // 2, 3 * m_new // 2
    axes = {  # parameter -> {axis: index map} for its latent-sized axes
        "g_a.6.weight": {0: idx}, "g_a.6.bias": {0: idx},
        "h_a.0.weight": {1: idx},
        "h_s.2.weight": {1: torch.arange(hidden_old)}, "h_s.2.bias": {0: torch.arange(hidden_old)},
        "h_s.4.weight": {0: idx2, 1: torch.arange(hidden_old)}, "h_s.4.bias": {0: idx2},
        "g_s.0.weight": {0: idx},
        "context_prediction.0.weight": {1: idx},
        "context_prediction.2.weight": {0: idx2}, "context_prediction.2.bias": {0: idx2},
        "context_fusion.weight": {1: idx2},
        "gain": {1: idx}, "inv_gain": {1: idx},
    }
    half, half_new = m // 2, m_new // 2
    for net in ("channel_context_anchor", "channel_context_other"):
        axes[f"{net}.0.weight"] = {1: torch.arange(half)}
        slice2 = torch.arange(half)  # head rows: scales then means of slice 2
        axes[f"{net}.2.weight"] = {0: torch.cat([slice2, slice2 + half_new])}
        axes[f"{net}.2.bias"] = {0: torch.cat([slice2, slice2 + half_new])}
    for k, v in sd.items():
        v = v.float()
        if k not in axes:
            out[k] = v.clone()
            continue
        # the old tensor lands at the mapped positions of its latent-sized axes
        index = [axes[k].get(axis, torch.arange(size)) for axis, size in enumerate(v.shape)]
        out[k][torch.meshgrid(*index, indexing="ij")] = v
    new = torch.ones(m_new, dtype=torch.bool)
    new[idx] = False
    # new analysis filters: random, with the spread of the old ones
    w = sd["g_a.6.weight"].float()
    out["g_a.6.weight"][new] = torch.randn(out["g_a.6.weight"][new].shape, generator=g) * w.std()
    # new hyper-synthesis hidden channels: random in, zero out (h_s.4 reads them with zero weights)
    w = sd["h_s.2.weight"].float()
    out["h_s.2.weight"][:, hidden_old:] = torch.randn(out["h_s.2.weight"][:, hidden_old:].shape, generator=g) * w.std()
    out["h_s.4.bias"][:m_new][new] = NEW_SCALE
    # gains of the new channels: the old channels' mean per quality (in the log domain)
    for k in ("gain", "inv_gain"):
        out[k][:, new] = sd[k].float().mean(dim=1, keepdim=True)
    assert hidden_new >= hidden_old
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--m", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    src = torch.load(Path(args.checkpoint).expanduser(), map_location="cpu")
    cfg = src["config"]["model"]
    state = {
        "config": {**src["config"], "model": {**cfg, "m": args.m}},
        "step": src["step"], "hours": src["hours"],
        "state_dict": widen(src["model"], cfg, args.m),
        "ema": widen(src["ema"], cfg, args.m),
    }
    torch.save(state, Path(args.out).expanduser())
    print(f"widened M {cfg['m']} -> {args.m}: {args.out}")


if __name__ == "__main__":
    main()
