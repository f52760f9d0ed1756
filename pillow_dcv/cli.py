"""The ``dcv`` command: encode, decode and inspect .dcv files.

    dcv encode IN... [-q 6] [-e 4] [-o DIR]   any image Pillow reads -> IN.dcv
    dcv decode IN.dcv OUT.png            .dcv -> any format Pillow writes
    dcv info X.dcv...                    header, chunk table, bits per pixel

Exit status: 0 on success, 1 if any file failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from . import DcvImagePlugin, codec
from .models import set_threads


def progress(items: list, description: str) -> Iterator:
    """tqdm when it is installed and there is more than one file; otherwise plain iteration."""
    if len(items) > 1:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return iter(tqdm(items, desc=description, unit="file"))
    return iter(items)


def encode_files(
    paths: Iterable[Path], quality: float, out_dir: Path | None, effort: int = codec.DEFAULT_EFFORT
) -> int:
    paths = list(paths)
    failures = 0
    for path in progress(paths, "encoding"):
        target = (out_dir or path.parent) / (path.stem + ".dcv")
        try:
            with Image.open(path) as im:
                t = time.perf_counter()
                im.save(target, "DCV", quality=quality, effort=effort)
                elapsed = time.perf_counter() - t
                bpp = target.stat().st_size * 8 / (im.width * im.height)
            if len(paths) == 1:
                print(f"{path} -> {target}: {target.stat().st_size} bytes, {bpp:.3f} bpp, {elapsed:.2f} s")
        except (OSError, ValueError, SyntaxError) as e:
            print(f"dcv: {path}: {e}", file=sys.stderr)
            failures += 1
    return failures


def decode_file(source: Path, target: Path) -> int:
    try:
        with Image.open(source) as im:
            if im.format != "DCV":
                raise ValueError("not a DCV file")
            im.save(target)
    except (OSError, ValueError, SyntaxError) as e:
        print(f"dcv: {source}: {e}", file=sys.stderr)
        return 1
    return 0


def info_files(paths: Iterable[Path]) -> int:
    failures = 0
    for path in paths:
        try:
            with open(path, "rb") as f:
                info = codec.read_info(f)
                description = codec.describe(info)
                size = path.stat().st_size
        except (OSError, ValueError) as e:
            print(f"dcv: {path}: {e}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path}: {info.width}x{info.height} {info.mode}, {size} bytes, "
              f"{size * 8 / (info.width * info.height):.4f} bpp")
        for key, value in description["header"].items():
            print(f"  {key:14} {value}")
        print(f"  {'chunk':6} {'offset':>10} {'size':>10}")
        for chunk_type, offset, chunk_size in description["chunks"]:
            print(f"  {chunk_type:6} {offset:>10} {chunk_size:>10}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dcv", description="DCV learned image codec")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: one per core)")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="encode images to .dcv")
    enc.add_argument("inputs", nargs="+", type=Path)
    enc.add_argument("-q", "--quality", type=float, default=DcvImagePlugin.DEFAULT_QUALITY, help="1 (smallest) .. 8")
    enc.add_argument("-e", "--effort", type=int, default=codec.DEFAULT_EFFORT,
                     help="orientations tried (from 2 on, also a post-filter), 1 (fastest) .. 8 (smallest files); "
                     "default %(default)s")
    enc.add_argument("-o", "--out-dir", type=Path)
    dec = sub.add_parser("decode", help="decode a .dcv file to any format Pillow writes")
    dec.add_argument("input", type=Path)
    dec.add_argument("output", type=Path)
    inf = sub.add_parser("info", help="show header, chunk table and bits per pixel")
    inf.add_argument("inputs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.command == "encode":
        try:
            codec.validate_quality(args.quality)
            codec.validate_effort(args.effort)
        except ValueError as e:
            parser.error(str(e))
        if args.out_dir is not None:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        failures = encode_files(args.inputs, args.quality, args.out_dir, args.effort)
    elif args.command == "decode":
        failures = decode_file(args.input, args.output)
    else:
        failures = info_files(args.inputs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
