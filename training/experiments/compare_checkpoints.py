"""BD-rate between two training checkpoints on the held-out photos, all 8 qualities (session 12).

The training log evaluates q1, q4 and q8 only, and an A/B arm that moves along the curve (fewer bits
and less PSNR at one quality) cannot be judged from three points. This evaluates both checkpoints'
EMA weights at every quality (estimated bits of rounded latents, 8-bit PSNR, the 8 held-out photos'
512x512 centres) and prints the BD-rate of the second against the first (negative = better). Cheaper
than exporting both (benchmarks/compare_models.py measures real files).

    python training/experiments/compare_checkpoints.py ~/.cache/pillow-dcv/ckpt.pt ~/.cache/pillow-dcv/ckpt-b.pt
    python training/experiments/compare_checkpoints.py ~/.cache/pillow-dcv/ckpt.pt ~/.cache/pillow-dcv/ckpt.pt#ema_slow
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from data import held_out  # noqa: E402
from model import DCVModel  # noqa: E402
from rd_benchmark import bd_rate  # noqa: E402
from train import evaluate, load_eval_image  # noqa: E402

TRAIN_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/train"


def load_ema(path: str) -> tuple[DCVModel, int]:
    """A checkpoint's EMA weights (PATH#ema_slow: its slow average), or exported weights."""
    path, _, key = path.partition("#")
    state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False)
    model = DCVModel(**state["config"]["model"])
    model.load_state_dict({k: v.float() for k, v in (state.get(key or "ema") or state["state_dict"]).items()})
    return model.eval().requires_grad_(False), state.get("step", 0)


def main() -> None:
    torch.set_num_threads(1)
    images = [load_eval_image(p, 512) for p in held_out(TRAIN_DIR, 8)]
    curves = []
    for path in sys.argv[1:3]:
        model, step = load_ema(path)
        result = evaluate(model, images, range(len(model.lambdas)))
        rates, psnrs = result["bpp"], result["psnr"]
        curves.append((rates, psnrs))
        print(f"{path} (step {step}): " + ", ".join(f"{r:.4f}/{p:.3f}" for r, p in zip(rates, psnrs)), flush=True)
    (ra, pa), (rb, pb) = curves
    print(f"BD-rate of the second against the first: {bd_rate(ra, pa, rb, pb):+.2f} %")


if __name__ == "__main__":
    main()
