"""Pack what a lent GPU machine needs to go on training: it sees only the repository and up to 64 MiB
of carried, git-ignored files, not ../shared and not ~/.cache.

    python training/gpu_pack.py [--checkpoint ~/.cache/pillow-dcv/ckpt.pt] [--out gpu_carry]

writes gpu_carry/start.pt (the run's EMA weights, fp16, 10 MB) and gpu_carry/crops.{bin,json}
(JPEG crops of 288x288 from the training photos, held-out photos excluded, ~52 KB each), then prints
the device command. The 64 MiB that travel include the repository's own files (~20 MiB), so the crops
get what is left (~33 MiB, ~650 crops). What comes back ($OUT/ema.pt, the EMA weights after the GPU steps, fp16)
continues on the CPU with `python training/train.py --init <files_at>/ema.pt` after moving the old
~/.cache/pillow-dcv/ckpt.pt aside (a fresh Adam; the EMA becomes the model too).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import cache_entries, held_out, write_pack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20
DEVICE_COMMAND = (
    "PYTHONUNBUFFERED=1 timeout -s TERM 560 python3 training/train.py --device cuda --pack {out} "
    "--init {out}/start.pt --checkpoint /tmp/ckpt.pt --log $OUT/train.jsonl --batch 32 --crop 256 "
    "--max-hours 0.13 --export-ema $OUT/ema.pt"
)


def travelling_bytes() -> int:
    """Tracked and untracked-not-ignored files: what travels to the device besides the carried paths."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="~/.cache/pillow-dcv/ckpt.pt")
    ap.add_argument("--cache", default="~/.cache/pillow-dcv/data")
    ap.add_argument("--train-dir", default=str(ROOT.parent / "shared/data/train"))
    ap.add_argument("--out", default="gpu_carry")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(exist_ok=True)

    state = torch.load(Path(args.checkpoint).expanduser(), map_location="cpu")
    half = {k: v.half() for k, v in state["ema"].items()}
    torch.save({"config": state["config"], "step": state["step"], "hours": state["hours"], "state_dict": half},
               out / "start.pt")
    repository = travelling_bytes()
    budget = CARRY_LIMIT - repository - (out / "start.pt").stat().st_size - 2**20  # margin
    train_dir = Path(args.train_dir)
    exclude = cache_entries(train_dir, held_out(train_dir, state["config"]["run"].get("holdout_images", 0)))
    count = write_pack(Path(args.cache).expanduser(), out, budget, exclude)
    total = sum(p.stat().st_size for p in out.iterdir()) + repository
    print(f"{out}: step {state['step']}, {count} crops; {total / 2**20:.1f} MiB travel with the repository "
          "(limit 64)")
    print("device command (carry ['" + args.out + "']):")
    print(DEVICE_COMMAND.format(out=args.out))


if __name__ == "__main__":
    main()
