"""How much faster is an int8 synthesis, and what does it cost in PSNR? (session 12)

The synthesis is ~200 of the ~350 ms/Mpx of a decode, which is what keeps a wider decoder out of the
400 ms/Mpx budget. onnxruntime runs int8 convolutions with VNNI, but not int8 transposed
convolutions, so each transposed convolution is first rewritten as a convolution + depth-to-space
(`subpixel_synthesis.py`), then the convolutions are quantised statically (QDQ: int8 weights per
channel, uint8 activations per tensor, calibrated on real latents of training photos); the inverse
GDNs stay float. Measured: PSNR of the float and the int8 graphs on the held-out photos (the same
rounded latents) and the synthesis time at Kodak size.

    python training/experiments/int8_synthesis.py training/weights/dcv-ms2-s26.pt
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import held_out, list_images  # noqa: E402
from export import Synthesis, bake_gdn, export_onnx  # noqa: E402
from reconstruction_offset import TRAIN_DIR, load  # noqa: E402
from subpixel_synthesis import SubpixelDeconv  # noqa: E402
from train import load_eval_image, to_tensor  # noqa: E402

OUT = Path("/tmp/int8-synthesis")


def rounded_latent(model, img: np.ndarray, qi: int) -> tuple[np.ndarray, np.ndarray]:
    x = to_tensor(img[None])
    gain, inv_gain = model.gains(torch.tensor([qi]))
    y = model.g_a(x) * gain
    y_hat, _, _ = model.entropy_parameters(y, model.h_s(torch.round(model.h_a(y))))
    return y_hat.numpy(), inv_gain.numpy()


class Latents(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def psnr(x: np.ndarray, x_hat: np.ndarray) -> float:
    mse = np.mean((np.round(np.clip(x_hat, 0, 1) * 255) - x.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / mse)


def main() -> None:
    torch.set_num_threads(2)
    model = load(sys.argv[1])
    bake_gdn(model)
    OUT.mkdir(exist_ok=True)
    sub = copy.deepcopy(Synthesis(model))
    for i, layer in enumerate(sub.g_s):
        if isinstance(layer, nn.ConvTranspose2d):
            sub.g_s[i] = SubpixelDeconv(layer)
    m = model.m
    args = (torch.rand(1, m, 8, 12), torch.ones(1, m, 1, 1))
    export_onnx(Synthesis(model), args, ["y_hat", "inv_gain"], ["x_hat"], OUT / "deconv.onnx")
    export_onnx(sub, args, ["y_hat", "inv_gain"], ["x_hat"], OUT / "subpixel.onnx")

    holdout = held_out(TRAIN_DIR, 8)
    others = [p for p in list_images(TRAIN_DIR) if p not in holdout]
    with torch.no_grad():
        calib = []
        for p in others[5::60][:12]:
            img = load_eval_image(p, 256)
            for qi in range(8):
                y_hat, inv_gain = rounded_latent(model, img, qi)
                calib.append({"y_hat": y_hat, "inv_gain": inv_gain})
        tests = {qi: [] for qi in (0, 3, 7)}
        for p in holdout:
            img = load_eval_image(p, 512)
            for qi in tests:
                tests[qi].append((img, *rounded_latent(model, img, qi)))

    graph = onnx.load(str(OUT / "subpixel.onnx"))
    big_convs = [
        n.name for n in graph.graph.node
        if n.op_type == "Conv" and "/conv/" in n.name
    ]
    print("quantised:", big_convs)
    variants = {"deconv fp32": OUT / "deconv.onnx", "subpixel fp32": OUT / "subpixel.onnx"}
    subsets = {"all": big_convs, "2+4": big_convs[1:3], "2": big_convs[1:2], "4": big_convs[2:3],
               "6": big_convs[3:]}
    method = CalibrationMethod.MinMax
    for label, nodes in subsets.items():
        path = OUT / f"int8-{label}.onnx"
        quantize_static(
            str(OUT / "subpixel.onnx"), str(path), Latents(calib), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, calibrate_method=method,
        )
        variants[f"int8 {label}"] = path

    feed = {"y_hat": tests[3][0][1][:, :, :32, :32], "inv_gain": tests[3][0][2]}
    kodak = {"y_hat": np.random.default_rng(0).normal(0, 2, (1, m, 32, 48)).astype(np.float32),
             "inv_gain": feed["inv_gain"]}
    for name, path in variants.items():
        sess = session(path)
        scores = []
        for items in tests.values():
            scores.append(np.mean([psnr(img, sess.run(None, {"y_hat": y, "inv_gain": g})[0][0].transpose(1, 2, 0))
                                   for img, y, g in items]))
        sess.run(None, kodak)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            sess.run(None, kodak)
            times.append(time.perf_counter() - t0)
        print(f"{name:16s} q1/q4/q8 PSNR " + " / ".join(f"{s:.3f}" for s in scores)
              + f"   {1000 * min(times) / (512 * 768 / 1e6):.0f} ms/Mpx (2 threads)", flush=True)


if __name__ == "__main__":
    main()
