#!/usr/bin/env python3
"""Rate-distortion benchmark: DCV against JPEG, WebP, AVIF, JPEG 2000 and JPEG XL on the same images.

Every codec is run through Pillow (``im.save(buf, FORMAT, **kwargs)`` and ``Image.open(buf).load()``), so
encode and decode times include the same Pillow overhead for all of them. Bits per pixel come from the real
encoded bytes. See benchmarks/README.md for what is written and how to read it.

    python3 benchmarks/rd_benchmark.py                      # Kodak, all codecs, into benchmarks/out/
    python3 benchmarks/rd_benchmark.py --limit 2 --codecs dcv,webp,jpeg --out /tmp/bench
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import importlib.metadata
import io
import json
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, features
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

import pillow_dcv  # noqa: E402  (registers DCV with Pillow)

try:
    import pillow_jxl  # noqa: F401  (registers JXL with Pillow)

    HAVE_JXL = True
except ImportError:
    HAVE_JXL = False

DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "data" / "kodak"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "out"
IMAGE_SUFFIXES = {".png", ".ppm", ".pnm", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".tga"}
ANCHORS = ("WebP", "AVIF")
CROP_CODECS = ("DCV", "AVIF", "WebP", "JPEG")
BD_MIN_POINTS = 4  # a cubic fit needs four points


# --------------------------------------------------------------------------------------------------------------
# Codec registry
# --------------------------------------------------------------------------------------------------------------


class Codec(NamedTuple):
    """How to run one codec: Pillow format name, the settings swept, and settings -> save kwargs."""

    format: str
    settings: list[float]
    save_kwargs: Callable[[float], dict[str, Any]]
    param: str  # what a setting means, for the CSV and the plot legends


def _j2k_kwargs(bpp: float) -> dict[str, Any]:
    # "rates" is a compression ratio against the raw 24 bpp. Pillow's defaults (reversible 5/3 wavelet, no
    # colour transform) are the lossless configuration; the 9/7 wavelet with the RCT/ICT is the usual lossy one.
    return {"quality_mode": "rates", "quality_layers": [24.0 / bpp], "irreversible": True, "mct": 1}


_jxl_threads = -1  # -1: libjxl's default (one per core); set by set_threads


def _jxl_kwargs(quality: float) -> dict[str, Any]:
    return {"quality": int(quality), "num_threads": _jxl_threads}


_dcv_effort: int | None = None  # None: the plugin's default; set by --dcv-effort


def _dcv_kwargs(quality: float) -> dict[str, Any]:
    return {"quality": quality} if _dcv_effort is None else {"quality": quality, "effort": _dcv_effort}


# Library defaults for effort/speed (DCV effort 4, WebP method 4, AVIF speed 6 with aom, JPEG XL effort 7,
# libjpeg 4:2:0).
# The ranges cover roughly 0.1 to 2 bpp on Kodak (JPEG cannot go much below 0.2 bpp).
CODECS: dict[str, Codec] = {
    "DCV": Codec("DCV", [1, 2, 3, 4, 5, 6, 7, 8], _dcv_kwargs, "quality"),
    "JPEG": Codec("JPEG", [3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90], lambda q: {"quality": int(q)}, "quality"),
    "WebP": Codec("WEBP", [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90], lambda q: {"quality": int(q)}, "quality"),
    "AVIF": Codec("AVIF", [5, 15, 25, 35, 45, 55, 65, 75, 85], lambda q: {"quality": int(q)}, "quality"),
    "JPEG2000": Codec("JPEG2000", [0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0], _j2k_kwargs, "target bpp"),
    "JXL": Codec("JXL", [0, 5, 10, 20, 30, 45, 60, 70, 80, 88], _jxl_kwargs, "quality"),
}


def set_threads(threads: int) -> None:
    """Threads for the codecs that can use several (0: each library's default). Metrics are not timed."""
    global _jxl_threads
    pillow_dcv.set_threads(threads)
    from PIL import AvifImagePlugin

    AvifImagePlugin.DEFAULT_MAX_THREADS = threads  # encode and decode; 0 means one per core
    if HAVE_JXL:
        from pillow_jxl import JpegXLImagePlugin

        _jxl_threads = threads if threads > 0 else -1
        JpegXLImagePlugin.DECODE_THREADS = _jxl_threads


# --------------------------------------------------------------------------------------------------------------
# Encoding, decoding, metrics
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Coded:
    data: bytes
    decoded: np.ndarray  # HxWx3 uint8
    encode_s: float
    decode_s: float


def decode_bytes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im)


def encode_decode(codec: Codec, setting: float, image: Image.Image, repeat: int = 1) -> Coded:
    """Encode then decode ``image`` (RGB); times are the best of ``repeat`` runs."""
    kwargs = codec.save_kwargs(setting)
    encode_s = decode_s = math.inf
    data = b""
    decoded = np.empty(0, np.uint8)
    for _ in range(repeat):
        buf = io.BytesIO()
        t0 = time.perf_counter()
        image.save(buf, codec.format, **kwargs)
        encode_s = min(encode_s, time.perf_counter() - t0)
        data = buf.getvalue()
    for _ in range(repeat):
        t0 = time.perf_counter()
        decoded = decode_bytes(data)
        decode_s = min(decode_s, time.perf_counter() - t0)
    if decoded.shape != (image.height, image.width, 3):
        raise ValueError(f"decoded shape {decoded.shape} != {(image.height, image.width, 3)}")
    return Coded(data, decoded, encode_s, decode_s)


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def decode_py_peak_mib(data: bytes) -> float:
    """Peak of Python-visible allocations (numpy arrays included) during a decode, by tracemalloc.

    Memory allocated inside C libraries (libavif, onnxruntime's arena, ...) is not seen; see cold_decode_peak.
    """
    gc.collect()
    tracemalloc.start()
    try:
        decode_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


class MsSsim:
    """MS-SSIM (pytorch_msssim, 5 scales, data_range 255) against one reference kept as a tensor."""

    def __init__(self) -> None:
        import torch
        from pytorch_msssim import ms_ssim

        self.torch, self.ms_ssim = torch, ms_ssim
        self.reference: Any = None
        self.warned = False

    @staticmethod
    def fits(shape: Sequence[int]) -> bool:
        return min(shape[:2]) > (11 - 1) * 2**4  # pytorch_msssim's bound for 5 scales and an 11-tap window

    def tensor(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(np.array(a, dtype=np.float32)).permute(2, 0, 1)[None]

    def set_reference(self, a: np.ndarray) -> None:
        self.reference = self.tensor(a) if self.fits(a.shape) else None
        if self.reference is None and not self.warned:
            tqdm.write(f"note: images smaller than 161 px on a side get no MS-SSIM (got {a.shape[1]}x{a.shape[0]})")
            self.warned = True

    def __call__(self, b: np.ndarray) -> float:
        if self.reference is None:
            return math.nan
        with self.torch.no_grad():
            return float(self.ms_ssim(self.reference, self.tensor(b), data_range=255, size_average=True))


def msssim_db(value: float) -> float:
    return -10 * math.log10(max(1 - value, 1e-10)) if not math.isnan(value) else math.nan


_PROBE = """
import io, json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from PIL import Image
import pillow_dcv
try:
    import pillow_jxl
except ImportError:
    pass
pillow_dcv.set_threads(int(sys.argv[3]))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def decode(path):
    with Image.open(io.BytesIO(open(path, "rb").read())) as im:
        im.load()
        return np.asarray(im.convert("RGB"))
if len(sys.argv) > 4:
    decode(sys.argv[4])  # warm: first use (model loading, sessions, arenas) on a small image
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS to the current RSS
except OSError:
    pass
before = status("VmRSS:")
decode(sys.argv[2])
print(json.dumps({"peak_mib": (status("VmHWM:") - before) / 2**20}))
"""


@dataclass
class Memory:
    codec: str
    param: str
    setting: float
    image: str
    bpp: float
    cold_decode_peak_mib: float
    warm_decode_peak_mib: float


def decode_peak_mib(data: bytes, tmp: Path, threads: int, warm_data: bytes | None = None) -> float:
    """Peak RSS growth of a fresh process while it decodes ``data`` once.

    Cold (no ``warm_data``): first use included (DCV loads its model and creates its onnxruntime sessions).
    Warm: the process first decodes ``warm_data`` (the same codec on a small image), so library and model
    initialisation are left out; what remains is what decoding this image costs on top of a process that
    has decoded before (allocator arenas already grown by the small image are not counted twice).
    """
    if not Path("/proc/self/status").exists():
        return math.nan
    files = [tmp.with_suffix(".main"), tmp.with_suffix(".warm")]
    files[0].write_bytes(data)
    cmd = [sys.executable, "-c", _PROBE, str(REPO_ROOT), str(files[0]), str(threads)]
    if warm_data is not None:
        files[1].write_bytes(warm_data)
        cmd.append(str(files[1]))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
        return float(json.loads(out.strip().splitlines()[-1])["peak_mib"])
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError) as e:
        print(f"warning: memory probe failed: {e}")
        return math.nan
    finally:
        for f in files:
            f.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Bjøntegaard delta
# --------------------------------------------------------------------------------------------------------------


def _curve(rates: Sequence[float], metric: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(log rate, metric) of the finite points, sorted by rate."""
    r, m = np.asarray(rates, np.float64), np.asarray(metric, np.float64)
    keep = np.isfinite(r) & np.isfinite(m) & (r > 0)
    r, m = r[keep], m[keep]
    order = np.argsort(r)
    return np.log(r[order]), m[order]


def _bd(xa: np.ndarray, ya: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    """Mean of (cubic fit of yt over xt) - (cubic fit of ya over xa) over the interval where the x ranges overlap.

    NaN when a curve has fewer than four distinct x values, the ranges do not overlap or a fit is degenerate.
    """
    if len(np.unique(xa)) < BD_MIN_POINTS or len(np.unique(xt)) < BD_MIN_POINTS:
        return math.nan
    lo, hi = max(xa.min(), xt.min()), min(xa.max(), xt.max())
    if not hi > lo:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.RankWarning)
        try:
            ia, it = np.polyint(np.polyfit(xa, ya, 3)), np.polyint(np.polyfit(xt, yt, 3))
        except (np.exceptions.RankWarning, np.linalg.LinAlgError):
            return math.nan
    area_a = np.polyval(ia, hi) - np.polyval(ia, lo)
    area_t = np.polyval(it, hi) - np.polyval(it, lo)
    return float((area_t - area_a) / (hi - lo))


def bd_rate(
    rates_a: Sequence[float], metric_a: Sequence[float], rates_t: Sequence[float], metric_t: Sequence[float]
) -> float:
    """Bjøntegaard delta rate of test t against anchor a, in percent (negative: t needs fewer bits).

    The classic VCEG-M33 method: fit log(rate) as a cubic polynomial of the quality metric for each curve,
    integrate both over the overlapping metric interval, and turn the mean log-rate difference into a ratio.
    """
    la, ma = _curve(rates_a, metric_a)
    lt, mt = _curve(rates_t, metric_t)
    return (math.exp(_bd(ma, la, mt, lt)) - 1) * 100


def bd_metric(
    rates_a: Sequence[float], metric_a: Sequence[float], rates_t: Sequence[float], metric_t: Sequence[float]
) -> float:
    """Bjøntegaard delta of the metric (e.g. BD-PSNR in dB) at equal rate, over the overlapping log-rate range."""
    la, ma = _curve(rates_a, metric_a)
    lt, mt = _curve(rates_t, metric_t)
    return _bd(la, ma, lt, mt)


def rate_at(rates: Sequence[float], metric: Sequence[float], at: float) -> float:
    """A curve's rate at a metric value, from the cubic fit of log(rate) that BD-rate uses; NaN outside the
    curve's metric range (no extrapolation) or with fewer than four points."""
    lr, m = _curve(rates, metric)
    if len(np.unique(m)) < BD_MIN_POINTS or not m.min() <= at <= m.max():
        return math.nan
    return float(np.exp(np.polyval(np.polyfit(m, lr, 3), at)))


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Point:
    codec: str
    param: str
    setting: float
    image: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    msssim: float
    msssim_db: float
    encode_ms_per_mpx: float
    decode_ms_per_mpx: float
    decode_py_peak_mib: float


@dataclass
class Average:
    codec: str
    param: str
    setting: float
    images: int
    bpp: float
    psnr: float
    msssim: float
    msssim_db: float
    encode_ms_per_mpx: float
    decode_ms_per_mpx: float
    decode_py_peak_mib: float


def average(points: list[Point], n_images: int) -> list[Average]:
    """Mean over images per codec/setting; settings that failed on some image are left out."""
    groups: dict[tuple[str, float], list[Point]] = defaultdict(list)
    for p in points:
        groups[(p.codec, p.setting)].append(p)
    out = []
    for (codec, setting), ps in groups.items():
        if len(ps) != n_images:
            print(f"note: {codec} {setting} has {len(ps)}/{n_images} images, left out of the averages")
            continue
        names = ("bpp", "psnr", "msssim", "encode_ms_per_mpx", "decode_ms_per_mpx", "decode_py_peak_mib")
        mean = {k: float(np.mean([getattr(p, k) for p in ps])) for k in names}
        ms = mean["msssim"]
        out.append(
            Average(
                codec,
                ps[0].param,
                setting,
                len(ps),
                mean["bpp"],
                mean["psnr"],
                ms,
                msssim_db(ms),
                mean["encode_ms_per_mpx"],
                mean["decode_ms_per_mpx"],
                mean["decode_py_peak_mib"],
            )
        )
    return out


def write_csv(path: Path, rows: Sequence[Any]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})


def curves(avgs: list[Average]) -> dict[str, list[Average]]:
    by_codec: dict[str, list[Average]] = defaultdict(list)
    for a in avgs:
        by_codec[a.codec].append(a)
    return {c: sorted(v, key=lambda a: a.bpp) for c, v in by_codec.items()}


def bd_table(avgs: list[Average]) -> str:
    """Markdown tables of BD-rate (PSNR, MS-SSIM dB) and BD-PSNR of every codec against each anchor."""
    cs = curves(avgs)
    lines = []
    for anchor in ANCHORS:
        if anchor not in cs:
            lines.append(f"*No {anchor} results: no table against {anchor}.*\n")
            continue
        a = cs[anchor]
        lines += [
            f"### Against {anchor}",
            "",
            "| codec | BD-rate PSNR | BD-rate MS-SSIM | BD-PSNR | bpp range |",
            "|---|---:|---:|---:|---|",
        ]
        for codec, t in cs.items():
            if codec == anchor:
                continue
            args = ([x.bpp for x in a], [x.psnr for x in a], [x.bpp for x in t], [x.psnr for x in t])
            r_psnr, d_psnr = bd_rate(*args), bd_metric(*args)
            r_ms = bd_rate([x.bpp for x in a], [x.msssim_db for x in a], [x.bpp for x in t], [x.msssim_db for x in t])
            lines.append(
                f"| {codec} | {_pct(r_psnr)} | {_pct(r_ms)} | {_db(d_psnr)} | {t[0].bpp:.3f}–{t[-1].bpp:.3f} |"
            )
        lines.append("")
    lines += [
        "BD-rate: average bitrate difference at equal quality over the overlapping quality range "
        "(negative = fewer bits than the anchor = better); cubic fit of log-rate against PSNR, or against "
        "MS-SSIM in dB (−10·log10(1−MS-SSIM)), VCEG-M33. BD-PSNR: average PSNR difference at equal rate "
        "(positive = better). 'n/a': fewer than 4 points or no overlap.",
        "",
    ]
    return "\n".join(lines)


def point_table(avgs: list[Average], codec: str = "DCV") -> str:
    """Where a codec gains or loses along its curve: at each of its settings, its rate against each
    anchor's rate at the same PSNR (the anchor's fitted curve, inside its PSNR range only)."""
    cs = curves(avgs)
    anchors = [a for a in ANCHORS if a in cs and a != codec]
    if codec not in cs or not anchors:
        return ""
    lines = [
        f"### {codec} setting by setting",
        "",
        "| setting | bpp | PSNR | " + " | ".join(f"vs {a} at equal PSNR" for a in anchors) + " |",
        "|---:|---:|---:|" + "---:|" * len(anchors),
    ]
    for t in sorted(cs[codec], key=lambda x: x.setting):
        cells = []
        for a in anchors:
            ref = rate_at([x.bpp for x in cs[a]], [x.psnr for x in cs[a]], t.psnr)
            cells.append(_pct((t.bpp / ref - 1) * 100))
        lines.append(f"| {t.setting:g} | {t.bpp:.3f} | {t.psnr:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Rate against the anchor's rate at the same PSNR; 'n/a' outside the anchor's range.", ""]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.1f} %"


def _db(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.2f} dB"


# --------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------

MAX_PLOT_BPP = 2.0


def plot_rd(avgs: list[Average], attr: str, ylabel: str, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    shown: list[float] = []
    for codec, pts in curves(avgs).items():
        x, y = [p.bpp for p in pts], [getattr(p, attr) for p in pts]
        ax.plot(x, y, marker="o", markersize=4, label=codec, linewidth=2.5 if codec == "DCV" else 1.5)
        shown += [v for u, v in zip(x, y, strict=True) if u <= MAX_PLOT_BPP and math.isfinite(v)]
    ax.set_xlim(0, MAX_PLOT_BPP)
    if shown:
        lo, hi = min(shown), max(shown)
        ax.set_ylim(lo - 0.03 * (hi - lo + 1e-9), hi + 0.03 * (hi - lo + 1e-9))
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_speed(avgs: list[Average], memory: list[Memory], path: Path, threads: int) -> None:
    import matplotlib.pyplot as plt

    cs = curves(avgs)
    names = list(cs)
    enc = [float(np.mean([a.encode_ms_per_mpx for a in cs[n]])) for n in names]
    dec = [float(np.mean([a.decode_ms_per_mpx for a in cs[n]])) for n in names]
    by_codec = {m.codec: m for m in memory}
    cold = [by_codec[n].cold_decode_peak_mib if n in by_codec else math.nan for n in names]
    warm = [by_codec[n].warm_decode_peak_mib if n in by_codec else math.nan for n in names]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(names))
    w = 0.38
    for offset, values, label in ((-w / 2, enc, "encode"), (w / 2, dec, "decode")):
        bars = ax.bar(x + offset, values, w, label=label)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8)
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_ylabel("ms per megapixel (log scale)")
    ax.set_title(f"Speed, mean over settings and images (threads: {threads or 'library default'})")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    for offset, values, label in ((-w / 2, cold, "cold (first use)"), (w / 2, warm, "warm")):
        bars = bx.bar(x + offset, values, w, label=label)
        bx.bar_label(bars, labels=["n/a" if math.isnan(v) else f"{v:.0f}" for v in values], fontsize=8)
    bx.set_xticks(x, names, rotation=30)
    bx.set_ylabel("MiB")
    bx.set_title("Decode peak RSS growth, one image")
    bx.legend(fontsize=8)
    bx.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def busiest_window(a: np.ndarray, size: int, stride: int = 16) -> tuple[int, int]:
    """Top-left (x, y) of the size x size window with the most gradient energy (a detailed region)."""
    g = a.astype(np.float32).mean(axis=2)
    energy = np.zeros_like(g)
    energy[:, 1:] += np.abs(np.diff(g, axis=1))
    energy[1:, :] += np.abs(np.diff(g, axis=0))
    s = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = g.shape
    best, pos = -1.0, (0, 0)
    for y in range(0, max(h - size, 0) + 1, stride):
        for x in range(0, max(w - size, 0) + 1, stride):
            y1, x1 = min(y + size, h), min(x + size, w)
            e = s[y1, x1] - s[y, x1] - s[y1, x] + s[y, x]
            if e > best:
                best, pos = e, (x, y)
    return pos


@dataclass
class CropResult:
    """What is kept of each coded version of the crop image."""

    image: str
    data: bytes
    crop: np.ndarray
    bpp: float
    psnr: float


@dataclass
class CropPanel:
    title: str
    pixels: np.ndarray


def plot_crops(panels: list[CropPanel], suptitle: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.9), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        ax.imshow(panel.pixels, interpolation="nearest")
        ax.set_title(panel.title, fontsize=10)
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(threads: int) -> list[str]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        from PIL.AvifImagePlugin import _avif

        avif_codecs = _avif.codec_versions()
    except (ImportError, AttributeError):
        avif_codecs = "unknown"
    models = ", ".join(pillow_dcv.available_models()) or "none"
    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"machine: {platform.platform()}; CPU: {_cpu_model()}; cores: {os.cpu_count()} (usable: {affinity})",
        f"python: {platform.python_version()}; threads per codec: {threads or 'library default'}",
        f"pillow-dcv: {pillow_dcv.__version__} (git {_git_revision()}; models: {models}; "
        f"effort: {_dcv_effort or pillow_dcv.codec.DEFAULT_EFFORT})",
        f"Pillow: {Image.__version__}; numpy: {np.__version__}; onnxruntime: {_version('onnxruntime')}; "
        f"torch: {_version('torch')}; pytorch-msssim: {_version('pytorch-msssim')}; "
        f"matplotlib: {_version('matplotlib')}",
        f"pillow-jxl-plugin: {_version('pillow-jxl-plugin') if HAVE_JXL else 'not installed'}",
        f"libjpeg: {features.version('jpg')}; libwebp: {features.version('webp')}; "
        f"libavif: {features.version('avif')} ({avif_codecs}); openjpeg: {features.version('jpg_2000')}",
    ]


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def find_images(folder: Path, limit: int | None) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return paths[:limit] if limit else paths


def select_codecs(spec: str | None) -> dict[str, Codec]:
    names = {n.lower(): n for n in CODECS}
    wanted = list(CODECS) if spec is None else []
    if spec is not None:
        for s in spec.split(","):
            key = s.strip().lower()
            if key not in names:
                raise SystemExit(f"unknown codec {s!r}; choose from {', '.join(CODECS)}")
            wanted.append(names[key])
    if "JXL" in wanted and not HAVE_JXL:
        print("note: JPEG XL skipped: pillow-jxl-plugin is not installed (pip install pillow-jxl-plugin)")
        wanted.remove("JXL")
    return {n: CODECS[n] for n in wanted}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (sorted by name)")
    ap.add_argument("--codecs", default=None, help=f"comma-separated subset of {','.join(CODECS)} (default: all)")
    ap.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="K",
        help="keep every K-th setting of each codec (and the last), for quick runs",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for DCV, AVIF and JPEG XL (0: each library's default; default: %(default)s)",
    )
    ap.add_argument("--dcv-effort", type=int, default=None, help="DCV's effort (default: the plugin's)")
    ap.add_argument("--repeat", type=int, default=1, help="time each encode/decode N times, keep the fastest")
    ap.add_argument("--crop-image", default=None, help="image (file name) for crops.png (default: the first)")
    ap.add_argument("--crop-size", type=int, default=192, help="crop side in pixels (default: %(default)s)")
    ap.add_argument("--crop-bpp", type=float, default=0.25, help="target bpp of the crops (default: %(default)s)")
    return ap.parse_args(argv)


def nearest_settings(crop_data: dict[tuple[str, float], CropResult], target_bpp: float) -> dict[str, float]:
    """Per codec, the setting whose bpp on the crop image is closest to target_bpp."""
    chosen: dict[str, tuple[float, float]] = {}
    for (name, setting), r in crop_data.items():
        d = abs(r.bpp - target_bpp)
        if name not in chosen or d < chosen[name][0]:
            chosen[name] = (d, setting)
    return {n: s for n, (_, s) in chosen.items()}


def measure_memory(
    codecs: dict[str, Codec],
    crop_data: dict[tuple[str, float], CropResult],
    image: Image.Image,
    args: argparse.Namespace,
) -> list[Memory]:
    """Cold and warm decode peak memory per codec, each in a fresh process, on the crop image's file at the
    setting nearest the crop target (memory hardly depends on the setting)."""
    small = image.crop((0, 0, min(image.width, 64), min(image.height, 64)))
    out = []
    for name, setting in tqdm(nearest_settings(crop_data, args.crop_bpp).items(), desc="decode memory", unit="codec"):
        r = crop_data[(name, setting)]
        warm_data = encode_decode(codecs[name], setting, small).data
        tmp = args.out / ".probe"
        cold = decode_peak_mib(r.data, tmp, args.threads)
        warm = decode_peak_mib(r.data, tmp, args.threads, warm_data)
        out.append(Memory(name, codecs[name].param, setting, r.image, r.bpp, cold, warm))
    return out


def warm_up(codecs: dict[str, Codec], image: Image.Image) -> None:
    """Load models and libraries before timing (DCV creates its onnxruntime sessions on first use)."""
    small = image.crop((0, 0, min(image.width, 128), min(image.height, 128)))
    for codec in codecs.values():
        encode_decode(codec, codec.settings[len(codec.settings) // 2], small)


def main(argv: Sequence[str] | None = None) -> int:
    global _dcv_effort
    args = parse_args(argv)
    _dcv_effort = args.dcv_effort
    env = environment(args.threads)
    print("\n".join(env))
    set_threads(args.threads)
    codecs = select_codecs(args.codecs)
    if args.every > 1:
        codecs = {
            n: c._replace(settings=sorted({*c.settings[:: args.every], c.settings[-1]})) for n, c in codecs.items()
        }
    paths = find_images(args.images, args.limit)
    crop_name = args.crop_image or paths[0].name
    if crop_name not in {p.name for p in paths}:
        raise SystemExit(f"--crop-image {crop_name} is not among the images used")
    args.out.mkdir(parents=True, exist_ok=True)
    counts = ", ".join(f"{n} ({len(c.settings)})" for n, c in codecs.items())
    print(f"images: {len(paths)} from {args.images}; codecs (settings): {counts}")
    print(f"output: {args.out}")

    metric = MsSsim()
    points: list[Point] = []
    crop_data: dict[tuple[str, float], CropResult] = {}
    crop_pos, crop_ref, crop_image = (0, 0), np.empty(0, np.uint8), Image.new("RGB", (1, 1))
    seconds: dict[str, float] = defaultdict(float)
    total = len(paths) * sum(len(c.settings) for c in codecs.values())
    with tqdm(total=total, unit="pt", dynamic_ncols=True) as bar:
        for i, path in enumerate(paths):
            with Image.open(path) as im:
                image = im.convert("RGB")
            image.load()
            if i == 0:
                warm_up(codecs, image)
            ref = np.asarray(image)
            metric.set_reference(ref)
            mpx = image.width * image.height / 1e6
            if path.name == crop_name:
                crop_image = image
                crop_pos = busiest_window(ref, args.crop_size)
                x, y = crop_pos
                crop_ref = ref[y : y + args.crop_size, x : x + args.crop_size]
            for name, codec in codecs.items():
                for setting in codec.settings:
                    bar.set_description(f"{path.stem} {name} {setting:g}")
                    t0 = time.perf_counter()
                    try:
                        coded = encode_decode(codec, setting, image, args.repeat)
                    except Exception as e:  # noqa: BLE001  (one failing point must not end the run)
                        tqdm.write(f"warning: {name} {setting} on {path.name} failed: {type(e).__name__}: {e}")
                        bar.update()
                        continue
                    p, ms = psnr(ref, coded.decoded), metric(coded.decoded)
                    peak = decode_py_peak_mib(coded.data)
                    bpp = len(coded.data) * 8 / (image.width * image.height)
                    points.append(
                        Point(
                            name,
                            codec.param,
                            setting,
                            path.name,
                            image.width,
                            image.height,
                            len(coded.data),
                            bpp,
                            p,
                            ms,
                            msssim_db(ms),
                            coded.encode_s * 1e3 / mpx,
                            coded.decode_s * 1e3 / mpx,
                            peak,
                        )
                    )
                    if path.name == crop_name:
                        x, y = crop_pos
                        pixels = coded.decoded[y : y + args.crop_size, x : x + args.crop_size].copy()
                        crop_data[(name, setting)] = CropResult(path.name, coded.data, pixels, bpp, p)
                    seconds[name] += time.perf_counter() - t0
                    bar.update()
            _malloc_trim()

    if not points:
        print("no results")
        return 1
    write_csv(args.out / "points.csv", points)
    avgs = average(points, len(paths))
    write_csv(args.out / "average.csv", avgs)

    memory = measure_memory(codecs, crop_data, crop_image, args)
    write_csv(args.out / "memory.csv", memory)

    table = bd_table(avgs) + "\n" + point_table(avgs)
    per_image_s = {n: s / len(paths) for n, s in seconds.items()}
    timing = "; ".join(f"{n}: {s:.1f} s" for n, s in per_image_s.items())
    mem_text = "; ".join(f"{m.codec}: {m.cold_decode_peak_mib:.0f} / {m.warm_decode_peak_mib:.0f} MiB" for m in memory)
    report = "\n".join(
        [
            "# Rate-distortion benchmark",
            "",
            f"{len(paths)} images from `{args.images}`; means over images of bpp, PSNR (dB) and MS-SSIM.",
            "",
            "```",
            *env,
            "```",
            "",
            table,
            f"Wall time per image, all settings, metrics included: {timing}.",
            "",
            f"Decode peak RSS growth, cold / warm, of a fresh process decoding {crop_name} (setting nearest "
            f"{args.crop_bpp} bpp): {mem_text or 'n/a'}.",
            "",
        ]
    )
    (args.out / "bdrate.md").write_text(report)
    (args.out / "run_info.txt").write_text("\n".join(env) + "\n")
    print()
    print(table)
    print(f"wall time per image (all settings, metrics included): {timing}")
    print(f"decode peak RSS growth, cold / warm: {mem_text or 'n/a'}")

    plot_rd(avgs, "psnr", "RGB PSNR (dB)", f"PSNR vs rate, mean over {len(paths)} image(s)", args.out / "rd_psnr.png")
    plot_rd(
        avgs,
        "msssim_db",
        "MS-SSIM (dB) = −10·log10(1−MS-SSIM)",
        f"MS-SSIM vs rate, mean over {len(paths)} image(s)",
        args.out / "rd_msssim.png",
    )
    plot_speed(avgs, memory, args.out / "speed.png", args.threads)

    x, y = crop_pos
    panels = [CropPanel("original", crop_ref)]
    chosen = nearest_settings(crop_data, args.crop_bpp)
    for name in CROP_CODECS:
        if name in chosen:
            s, r = chosen[name], crop_data[(name, chosen[name])]
            title = f"{name} ({codecs[name].param} {s:g})\n{r.bpp:.3f} bpp, {r.psnr:.2f} dB"
            panels.append(CropPanel(title, r.crop))
    note = (
        f"{crop_name}, {args.crop_size}x{args.crop_size} crop at x={x}, y={y}; each codec at its setting "
        f"nearest {args.crop_bpp} bpp (bpp and PSNR of the whole image)"
    )
    plot_crops(panels, textwrap.fill(note, 140), args.out / "crops.png")
    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir() if not p.name.startswith('.')))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
