"""Would a per-picture correction of the synthesis' last layer beat the pixel post-filter? (session 22)

The `fILT` post-filter (format 4.1) corrects the synthesis output with a 5x5 cross-channel linear
filter fitted per picture. The last transposed convolution is itself linear in its 32 input feature
maps, so the encoder could as well fit a correction of that layer's weights: each output pixel sees
32 channels x 2x2 input positions (which ones depends on its phase), a far richer basis than the
three output channels. This measures, on real .dcv files (effort 1), what each variant buys with its
coefficients rounded (one at a time, the rest absorbing the error, as `postfilter.quantised_fit`)
and counted as zigzag varints:

- pixel: the shipped 5x5 point-symmetric cross-channel filter (120 coefficients + 3 biases);
- phase1x1: per output phase, a 1x1 map from the 32 co-located features (4 x 32 x 3 + 3);
- last: the full last layer's delta, per phase 32 x 2 x 2 features (4 x 128 x 3 + 3);
- last+pixel: both feature sets in one fit.

    python training/experiments/feature_filter.py [--images DIR] [--side 512]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_models import centre_crop, photo_paths  # noqa: E402
from rd_benchmark import bd_rate  # noqa: E402

import pillow_dcv  # noqa: E402
from pillow_dcv import codec, postfilter  # noqa: E402
from pillow_dcv.models import get_model  # noqa: E402

FEATURES = "/g_s/g_s.5/Mul_1_output_0"  # the last transposed convolution's input (32 channels, H/2)


def feature_session(model) -> ort.InferenceSession:
    m = onnx.load(str(model.folder / "synthesis.onnx"))
    m.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def coded(model, sess, a: np.ndarray, q: float):
    """Bits, x_hat (H, W, 3) in levels before rounding, features (32, Hp/2, Wp/2) of one picture."""
    data = codec.encode(a, "RGB", q, effort=1)
    store = {}

    def synthesis(y_hat, inv_gain, **_):
        x_hat, f = sess.run(None, {"y_hat": y_hat, "inv_gain": inv_gain})
        store["f"] = f[0]
        store["x"] = x_hat
        return x_hat

    model.synthesis = synthesis
    try:
        fp = io.BytesIO(data)
        codec.decode(fp, codec.read_info(fp))
    finally:
        del model.synthesis
    h, w = a.shape[:2]
    x = store["x"][0, :, :h, :w].transpose(1, 2, 0).astype(np.float64) * 255
    return 8 * len(data), x, store["f"]


def phase_features(f: np.ndarray, h: int, w: int, py: int, px: int, window: int) -> np.ndarray:
    """Features (pixels of phase py, px, F) of the output pixels (2a+py, 2b+px) inside h x w: the input
    positions the last layer reads for that phase (window 2), or the co-located one (window 1)."""
    fp = np.pad(f, ((0, 0), (1, 1), (1, 1)))
    ha, wb = (h - py + 1) // 2, (w - px + 1) // 2
    offs = [(0, 0)] if window == 1 else [(dy, dx) for dy in (py - 1, py) for dx in (px - 1, px)]
    cols = [fp[:, 1 + dy : 1 + dy + ha, 1 + dx : 1 + dx + wb].reshape(f.shape[0], -1) for dy, dx in offs]
    return np.concatenate(cols, axis=0).T


def pixel_features(x: np.ndarray) -> np.ndarray:
    """The pixel filter's features (pixels, 3 x 13) of x (H, W, 3), as postfilter.normal_equations."""
    r = 2
    p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = x.shape[:2]
    cols = []
    for ci in range(3):
        for dy, dx in postfilter.half_window(r):
            v = p[r + dy : r + dy + h, r + dx : r + dx + w, ci]
            if (dy, dx) != (0, 0):
                v = v + p[r - dy : r - dy + h, r - dx : r - dx + w, ci]
            cols.append(v)
    return np.stack(cols, axis=2)


def activity_classes(x: np.ndarray, classes: int) -> np.ndarray:
    """Per pixel, its class 0..classes-1 by local activity (the 3x3 sum of |Laplacian| of the luma),
    split at the picture's quantiles, as a classical adaptive loop filter classifies."""
    y = x @ np.array([0.299, 0.587, 0.114])
    p = np.pad(y, 1, mode="edge")
    lap = np.abs(4 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:])
    lp = np.pad(lap, 1, mode="edge")
    act = sum(lp[dy : dy + y.shape[0], dx : dx + y.shape[1]] for dy in range(3) for dx in range(3))
    edges = np.quantile(act, np.arange(1, classes) / classes)
    return np.searchsorted(edges, act)


def fit_groups(kind: str, x: np.ndarray, f: np.ndarray, px: np.ndarray, resid: np.ndarray) -> list:
    """The (features, residual) pairs fitted apart for one variant (one per class or output phase)."""
    h, w = x.shape[:2]
    n = h * w
    if kind == "pixel":
        return [(px.reshape(n, -1), resid.reshape(n, 3))]
    if kind.startswith("class"):  # e.g. class3: activity classes by the picture's quantiles
        cls = activity_classes(x, int(kind[5:]))
        return [(px[cls == c], resid[cls == c]) for c in range(int(kind[5:]))]
    out = []
    for py in (0, 1):
        for pxx in (0, 1):
            feats = phase_features(f, h, w, py, pxx, 1 if kind == "phase1x1" else 2)
            r = resid[py::2, pxx::2].reshape(-1, 3)
            if kind == "last+pixel":
                feats = np.concatenate([feats, px[py::2, pxx::2].reshape(len(r), -1)], axis=1)
            out.append((feats.astype(np.float64), r))
    return out


def varint_bytes(k: np.ndarray) -> int:
    u = np.where(k >= 0, 2 * k, -2 * k - 1)
    return int(np.sum(1 + (u >= 128) + (u >= 16384)))


def fit(groups, step_log2: int) -> tuple[float, int]:
    """Squared error after the quantised fit and its side bytes, summed over groups (A, R)."""
    err, side = 0.0, 0
    for a, r in groups:
        a1 = np.concatenate([a, np.ones((len(a), 1))], axis=1)
        hh, gg, rr = a1.T @ a1, a1.T @ r, float(np.sum(r * r))
        if step_log2 is None:  # unquantised
            w = np.linalg.lstsq(a1, r, rcond=None)[0]
            err += float(np.sum((r - a1 @ w) ** 2))
            continue
        k = postfilter.quantised_fit(hh, gg, step_log2)
        err += postfilter.squared_error(hh, gg, rr, k, step_log2)
        side += varint_bytes(k)
    return err, side


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--qualities", type=float, nargs="+", default=[1, 3, 5, 7, 8])
    ap.add_argument("--variants", nargs="+", default=["pixel", "phase1x1", "last", "last+pixel"])
    ap.add_argument("--steps", type=int, nargs="+", default=[6, 7, 8, 9, 10])
    args = ap.parse_args()
    pillow_dcv.set_threads(1)
    model = get_model()
    sess = feature_session(model)
    paths = photo_paths(args.images)[:: args.every]
    photos = [centre_crop(p, args.side) for p in paths]
    print(f"$ python {' '.join(sys.argv)}\n{len(photos)} photos", flush=True)
    variants = tuple(args.variants)
    curves = {k: ([], []) for k in ("base", *variants, *(v + " oracle" for v in variants))}
    pixels = sum(a.shape[0] * a.shape[1] for a in photos)
    for q in args.qualities:
        lam = model.rd_lambda(q)
        tot = {k: [0, []] for k in curves}  # bits, per-photo PSNR
        for a in photos:
            bits, x, f = coded(model, sess, a, q)
            h, w = a.shape[:2]
            n = h * w
            orig = a.astype(np.float64)
            resid = orig - x
            px = pixel_features(x)

            base_err = float(np.sum(resid**2))  # all errors before rounding to 8 bits
            tot["base"][0] += bits
            tot["base"][1].append(10 * np.log10(255**2 * n / base_err))
            for kind in variants:
                g = fit_groups(kind, x, f, px, resid)
                err, _ = fit(g, None)
                tot[kind + " oracle"][0] += bits
                tot[kind + " oracle"][1].append(10 * np.log10(255**2 * n / err))
                best = (bits, base_err)
                for s in args.steps:
                    err, side = fit(g, s)
                    cand = (bits + 8 * (side + 4), err)
                    if cand[0] / n + lam * cand[1] / n < best[0] / n + lam * best[1] / n:
                        best = cand
                tot[kind][0] += best[0]
                tot[kind][1].append(10 * np.log10(255**2 * n / best[1]))
        line = f"q{q:g}:"
        for k, (rates, psnrs) in curves.items():
            rates.append(tot[k][0] / pixels)
            psnrs.append(float(np.mean(tot[k][1])))
            line += f" {k} {rates[-1]:.4f}/{psnrs[-1]:.3f};"
        print(line, flush=True)
    for k in list(curves)[1:]:
        print(f"{k}: BD-rate {bd_rate(*curves['base'], *curves[k]):+.2f} %")


if __name__ == "__main__":
    main()
