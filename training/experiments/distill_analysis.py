"""Start a lighter analysis transform from a trained model: fit it to the trained analysis's latents.

    python training/experiments/distill_analysis.py --teacher <weights or checkpoint of the heavier model> \
        --config training/experiments/light_analysis.toml --steps 1500 --out ~/.cache/pillow-dcv/light-ga.pt
    python training/train.py --config training/experiments/light_analysis.toml \
        --init ~/.cache/pillow-dcv/light-ga.pt --reset-ema

A new g_a trained from scratch inside the rate-distortion loss would send useless gradients into the
trained synthesis and prior for thousands of steps. Instead the student copies every other tensor
and first learns y = g_a(x) of the teacher (MSE on random training crops, all else frozen); then
ordinary training fine-tunes everything. Writes a weights file that `train.py --init` reads.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import CropSampler  # noqa: E402
from model import DCVModel  # noqa: E402
from train import expand, to_tensor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True, help="a train.py checkpoint or exported weights (training/weights/)")
    ap.add_argument("--config", required=True, help="the student's config (its [model] differs in g_a)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = tomllib.loads(Path(args.config).read_text())

    src = torch.load(expand(args.teacher), map_location="cpu")
    weights = {k: v.float() for k, v in (src.get("state_dict") or src["model"]).items()}  # weights file or checkpoint
    teacher = DCVModel(**src["config"]["model"])
    teacher.load_state_dict(weights)
    teacher.requires_grad_(False).eval()
    student = DCVModel(**cfg["model"])
    own = student.state_dict()
    student.load_state_dict(
        {k: v for k, v in weights.items() if not k.startswith("g_a.") and own[k].shape == v.shape}, strict=False
    )
    student.g_a.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(student.g_a.parameters(), lr=args.lr)
    sampler = CropSampler(expand(cfg["data"]["cache_dir"]), cfg["data"]["crop"], seed=int(time.time()))

    t0 = time.time()
    window = []
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:  # cosine to zero: a short fit should end settled
            g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        x = to_tensor(sampler.batch(cfg["data"]["batch"]))
        with torch.no_grad():
            target = teacher.g_a(x)
        loss = (student.g_a(x) - target).pow(2).mean() / target.pow(2).mean()  # relative error
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if step % 50 == 0:
            print(f"step {step} relative MSE {sum(window) / len(window):.4f} ({time.time() - t0:.0f} s)", flush=True)
            window.clear()
    torch.save(
        {"config": cfg, "state_dict": student.state_dict(), "step": src.get("step", 0), "hours": src.get("hours", 0.0)},
        expand(args.out),
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
