"""The post-filter (spec 4.5) on and off, same encoder otherwise: BD-rate of real files (session 21).

    python training/experiments/post_filter_ab.py [--images DIR] [--effort 2] [--every 1] [--side 768]

Both arms run the orientation search at `effort`; the control's encoder is offered no filter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_models import QUALITIES, centre_crop, curve, photo_paths  # noqa: E402
from rd_benchmark import bd_rate  # noqa: E402

import pillow_dcv  # noqa: E402
from pillow_dcv import codec  # noqa: E402
from pillow_dcv.models import DEFAULT_MODEL  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, help="folder of photos (default: the held-out training photos)")
    ap.add_argument("--effort", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="every n-th photo of the folder")
    ap.add_argument("--side", type=int, default=768, help="centre crops of at most side x side")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    pillow_dcv.set_threads(args.threads)
    paths = photo_paths(args.images)[:: args.every]
    photos = [centre_crop(p, args.side) for p in paths]
    print(f"$ python {' '.join(sys.argv)}")
    print(f"{len(photos)} photos: {', '.join(p.name for p in paths)}", flush=True)
    with_filter = curve(DEFAULT_MODEL, photos, effort=args.effort)
    candidates, codec.FILTER_CANDIDATES = codec.FILTER_CANDIDATES, ()
    without = curve(DEFAULT_MODEL, photos, effort=args.effort)
    codec.FILTER_CANDIDATES = candidates
    for i, q in enumerate(QUALITIES):
        print(f"q{q}: without {without[0][i]:.4f}/{without[1][i]:.3f}", end="  ")
        print(f"with {with_filter[0][i]:.4f}/{with_filter[1][i]:.3f}")
    print(f"BD-rate of the post-filter: {bd_rate(*without, *with_filter):+.2f} %")


if __name__ == "__main__":
    main()
