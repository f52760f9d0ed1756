"""BD-rate between two training checkpoints on the held-out photos, all 8 qualities (session 12).

The training log evaluates q1, q4 and q8 only, and an A/B arm that moves along the curve (fewer bits
and less PSNR at one quality) cannot be judged from three points. This evaluates both checkpoints'
EMA weights at every quality (estimated bits of rounded latents, 8-bit PSNR, the 8 held-out photos'
512x512 centres) and prints the BD-rate of the second against the first (negative = better). Cheaper
than exporting both (benchmarks/compare_models.py measures real files).

    python training/experiments/compare_checkpoints.py ~/.cache/pillow-dcv/ckpt.pt ~/.cache/pillow-dcv/ckpt-b.pt
    python training/experiments/compare_checkpoints.py ~/.cache/pillow-dcv/ckpt.pt ~/.cache/pillow-dcv/ckpt.pt#ema_slow

With ``--by-source`` it also prints the BD-rate over the held-out BSDS500 photos (small JPEGs) and over
the others apart (session 18's data-weighting A/B); ``--kodak N`` adds every 24/N-th Kodak image as a
second, clean set (a check for a decision about clean photos, not a set to tune on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from data import held_out  # noqa: E402
from model import DCVModel  # noqa: E402
from rd_benchmark import bd_rate  # noqa: E402
from train import evaluate, load_eval_image, load_eval_images  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared/data"
TRAIN_DIR = SHARED / "train"


def load_ema(path: str) -> tuple[DCVModel, int]:
    """A checkpoint's EMA weights (PATH#ema_slow: its slow average), or exported weights."""
    path, _, key = path.partition("#")
    state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False)
    model = DCVModel(**state["config"]["model"])
    model.load_state_dict({k: v.float() for k, v in (state.get(key or "ema") or state["state_dict"]).items()})
    return model.eval().requires_grad_(False), state.get("step", 0)


def image_sets(by_source: bool, kodak: int) -> dict[str, list]:
    """Image sets to evaluate. With by_source the held-out photos come as two sets (BSDS500, others),
    and their whole-set curve is the weighted mean of the two, not a second evaluation."""
    paths = held_out(TRAIN_DIR, 8)
    images = [load_eval_image(p, 512) for p in paths]
    if by_source:
        bsds = [p.relative_to(TRAIN_DIR).parts[0] == "bsds500" for p in paths]
        sets = {
            "held-out bsds500": [im for im, b in zip(images, bsds) if b],
            "held-out others": [im for im, b in zip(images, bsds) if not b],
        }
    else:
        sets = {"held-out": images}
    if kodak:
        sets["kodak"] = load_eval_images(SHARED / "kodak", kodak)
    return sets


def pooled(parts: list[tuple[int, list[float], list[float]]]) -> tuple[list[float], list[float]]:
    """The mean curve of several image sets, from each set's (size, rates, PSNRs)."""
    total = sum(n for n, _, _ in parts)
    rates = [sum(n * r[k] for n, r, _ in parts) / total for k in range(len(parts[0][1]))]
    psnrs = [sum(n * p[k] for n, _, p in parts) / total for k in range(len(parts[0][2]))]
    return rates, psnrs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--by-source", action="store_true", help="also BSDS500 and the other held-out photos apart")
    ap.add_argument("--kodak", type=int, default=0, help="also this many Kodak images (spread over the 24)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sets = image_sets(args.by_source, args.kodak)
    groups = [name for name in sets if name.startswith("held-out ")]
    curves: dict[str, list] = {name: [] for name in (["held-out"] if groups else []) + list(sets)}
    for path in (args.first, args.second):
        model, step = load_ema(path)
        for name, images in sets.items():
            result = evaluate(model, images, range(len(model.lambdas)))
            curves[name].append((result["bpp"], result["psnr"]))
        if groups:
            curves["held-out"].append(pooled([(len(sets[g]), *curves[g][-1]) for g in groups]))
        for name, runs in curves.items():
            rates, psnrs = runs[-1]
            size = len(sets[name]) if name in sets else sum(len(sets[g]) for g in groups)
            print(f"{path} (step {step}), {name} ({size}): "
                  + ", ".join(f"{r:.4f}/{p:.3f}" for r, p in zip(rates, psnrs)), flush=True)
    for name, ((ra, pa), (rb, pb)) in curves.items():
        print(f"BD-rate of the second against the first, {name}: {bd_rate(ra, pa, rb, pb):+.2f} %")


if __name__ == "__main__":
    main()
