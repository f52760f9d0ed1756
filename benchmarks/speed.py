"""Encode/decode speed and peak memory of DCV, on a Kodak image and on a 24-megapixel photo.

    python benchmarks/speed.py [--image PATH] [--big-side 6000x4000] [--threads N] [--repeat 3]

Each measurement runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own: the decode run only decodes the file that the encode run wrote. Each is run --repeat times
(this machine's speed varies by a third from run to run) and the median is printed, with the range.
"decode" is the first decode in the process (its memory is touched for the first time); "again" is
the mean of two more decodes of the same file in that process, what a program that decodes many
pictures sees. The 24 MP image is a Lanczos upscale of a Kodak photo (no such photo ships with the
data). Prints the command, machine and library versions first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KODAK = ROOT.parent / "shared" / "data" / "kodak" / "kodim01.png"

CHILD = r"""
import io, json, os, resource, sys, threading, time
from PIL import Image
import pillow_dcv
path, width, height, quality, threads, what, coded, effort = sys.argv[1:9]
pillow_dcv.set_threads(int(threads))
# Set-up is not part of the per-image time: load the model and create the onnxruntime sessions by
# coding small images once (a program that codes one image pays this once; it is printed apart).
t = time.perf_counter()
for size, tile in (((64, 64), 1024), ((128, 64), 64)):  # one tile, and two: the worker threads' sessions
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 140, 160)).save(buf, "DCV", quality=float(quality), tile_size=tile, effort=2)
    Image.open(io.BytesIO(buf.getvalue())).load()
model = pillow_dcv.models.get_model()
model.session("post_filter")  # those flat pictures have no post-filter
if pillow_dcv.models.thread_count() > 1:
    model.session("post_filter", threads=pillow_dcv.models.thread_count() // pillow_dcv.codec.MAX_WORKERS or 1)
setup = time.perf_counter() - t
stages, again, lock = {}, [], threading.Lock()
def timed(owner, name, label):  # per-stage wall time of the decode
    f = getattr(owner, name)
    def wrapper(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k); dt = time.perf_counter() - t0
        with lock:  # the decoder's worker threads
            stages[label] = stages.get(label, 0) + dt
        return r
    setattr(owner, name, wrapper)
if what == "encode":
    im = Image.open(path).convert("RGB")
    if int(width):
        im = im.resize((int(width), int(height)), Image.Resampling.LANCZOS)
    pixels = im.width * im.height
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    im.save(coded, "DCV", quality=float(quality), effort=int(effort))
    dt = time.perf_counter() - t
else:  # decode only: the file was written by the encode run, so the peak below is the decoder's own
    model = pillow_dcv.models.get_model()
    timed(pillow_dcv.entropy.Decoder, "decode", "entropy"); timed(model.prior, "hyper", "prior")
    timed(model.prior, "context", "context"); timed(model, "synthesis", "synthesis")
    timed(model, "post_filter", "post-filter")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter(); out = Image.open(coded); out.load(); dt = time.perf_counter() - t
    pixels = out.width * out.height
    first, peak_first = dict(stages), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        t = time.perf_counter(); Image.open(coded).load(); again.append(time.perf_counter() - t)
    stages = first
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peak_again = peak
if what == "decode":
    peak = peak_first  # the later decodes' arenas and fragmentation are printed apart
mpx = pixels / 1e6
again = sum(again) / len(again) * 1000 / mpx if again else None
print(json.dumps({"what": what, "mpx": mpx, "ms_per_mpx": dt * 1000 / mpx, "again": again, "seconds": dt,
                  "setup_s": setup, "peak_rss_mb": peak / 1024, "peak_again_mb": peak_again / 1024,
                  "bpp": os.path.getsize(coded) * 8 / pixels,
                  "stages_ms_per_mpx": {k: v * 1000 / mpx for k, v in stages.items()}}))
"""


def measure(
    path: Path, size: tuple[int, int], quality: float, threads: int, what: str, coded: Path, effort: int
) -> dict:
    args = [sys.executable, "-c", CHILD, *map(str, (path, *size, quality, threads, what, coded, effort))]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.platform()}, {cpu}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", type=Path, default=KODAK)
    ap.add_argument("--big-side", default="6000x4000", help="size of the large test image (WxH); none: skip it")
    ap.add_argument("--quality", type=float, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (the median is printed)")
    args = ap.parse_args()
    import numpy
    import onnxruntime
    import PIL

    import pillow_dcv

    print("$ python " + " ".join(sys.argv))
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}; {machine()}")
    print(
        f"pillow-dcv {pillow_dcv.__version__}, Pillow {PIL.__version__}, numpy {numpy.__version__}, "
        f"onnxruntime {onnxruntime.__version__}; threads {args.threads or os.cpu_count()}; quality {args.quality}"
    )
    big = None if args.big_side == "none" else tuple(int(v) for v in args.big_side.split("x"))
    # encode at effort 1 (no orientation search) and at the default; decode the default's file
    default = pillow_dcv.codec.DEFAULT_EFFORT
    runs = (("encode", 1), ("encode", default), ("decode", default))
    print(
        f"{'image':28} {'op':9} {'Mpx':>6} {'ms/Mpx':>8} {'range':>11} {'again':>6} {'s':>7} {'peak RSS MB':>12} "
        f"{'bpp':>6} {'set-up s':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [(args.image.name, (0, 0))] + ([(f"{args.image.name} upscaled {args.big_side}", big)] if big else [])
        for label, size in sizes:
            coded = Path(tmp) / "image.dcv"
            for what, effort in runs:
                # the encodes write the same file: the decode reads the last
                run_args = (args.image, size, args.quality, args.threads, what, coded, effort)
                tries = [measure(*run_args) for _ in range(args.repeat)]
                tries.sort(key=lambda r: r["ms_per_mpx"])
                r = tries[len(tries) // 2]
                op = f"{what} e{effort}" if what == "encode" else what
                spread = f"{tries[0]['ms_per_mpx']:.0f}-{tries[-1]['ms_per_mpx']:.0f}"
                again = f"{statistics.median(t['again'] for t in tries):.0f}" if r["again"] else ""
                print(
                    f"{label:28} {op:9} {r['mpx']:>6.2f} {r['ms_per_mpx']:>8.0f} {spread:>11} {again:>6} "
                    f"{r['seconds']:>7.2f} {max(t['peak_rss_mb'] for t in tries):>12.0f} {r['bpp']:>6.3f} "
                    f"{r['setup_s']:>9.2f}"
                )
                if r["again"]:
                    peak_again = max(t["peak_again_mb"] for t in tries)
                    print(f"{'':28} {'':9} peak RSS after the later decodes: {peak_again:.0f} MB")
                if r["stages_ms_per_mpx"]:
                    parts = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_ms_per_mpx"].items())
                    rest = r["ms_per_mpx"] - sum(r["stages_ms_per_mpx"].values())
                    print(f"{'':28} {'':9} ms/Mpx by stage: {parts}, other {rest:.0f}")
    print("ms/Mpx: the median run (range: all runs); again: later decodes in the same process; peak: the largest")
    print("set-up: loading the model and creating the onnxruntime sessions, once per process (not in ms/Mpx)")
    print("by stage: wall time in each, summed over the decoder's worker threads (several tiles, or a tile's bands)")


if __name__ == "__main__":
    main()
