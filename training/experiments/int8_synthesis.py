"""How much faster is an int8 synthesis, and what does it cost in PSNR? (sessions 12 and 27)

The shipped synthesis graph (its transposed convolutions already lowered to phase convolutions) is
quantised statically by onnxruntime: QDQ, int8 weights per output channel, uint8 activations per
tensor, min/max calibration on the real latents of 8 training photos x 8 qualities (decoded from
`.dcv` files, so through the integer prior); the inverse GDNs stay float. Printed: PSNR of each graph
on the held-out photos' 512x512 centres (the same latents) at q1 / q4 / q8, and one Kodak band's
synthesis time on one thread (pause training first).

    python training/experiments/int8_synthesis.py [--model dcv-ms2-s30] [--out /tmp/int8-synthesis]
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import held_out, list_images  # noqa: E402

from pillow_dcv import codec, container, models  # noqa: E402

TRAIN_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "train"


class Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def centre(path: Path, side: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    s = min(side, *im.size)
    x0, y0 = (im.width - s) // 2, (im.height - s) // 2
    return im.crop((x0, y0, x0 + s, y0 + s))


def latents(model: models.Model, im: Image.Image, quality: float) -> dict[str, np.ndarray]:
    """The synthesis' inputs for a picture coded as one tile, decoded from the real file."""
    buf = io.BytesIO()
    im.save(buf, "DCV", quality=quality, effort=1, tile_size=1024)
    info = codec.read_info(io.BytesIO(buf.getvalue()))
    _, tile = container.read_chunk(io.BytesIO(buf.getvalue()), *info.index.tile_offsets[0])
    h, w = codec.padded_size(im.height), codec.padded_size(im.width)
    y = codec.decode_tile(model, tile, 0, h, w, model.z_row(quality))
    return {"y_hat": y[None], "inv_gain": model.gains(quality)[1]}


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def psnr(original: np.ndarray, x_hat: np.ndarray) -> float:
    levels = np.rint(np.clip(x_hat[0].transpose(1, 2, 0) * 255, 0, 255))[: original.shape[0], : original.shape[1]]
    return 10 * math.log10(255**2 / np.mean((levels - original.astype(np.float64)) ** 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=Path("/tmp/int8-synthesis"))
    args = ap.parse_args()
    args.out.mkdir(exist_ok=True)
    model = models.get_model(args.model)

    # the float graph with its fp16-stored weights folded, and every node named (quantize_static selects by name)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(args.out / "float.onnx")
    ort.InferenceSession(str(model.folder / "synthesis.onnx"), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(args.out / "float.onnx"))
    for i, node in enumerate(graph.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    onnx.save(graph, str(args.out / "float.onnx"))
    phases = [n.name for n in graph.graph.node if n.op_type == "Conv" and "phase" in n.input[1]]

    holdout = held_out(TRAIN_DIR, 8)
    others = [p for p in list_images(TRAIN_DIR) if p not in holdout]
    calibration = [latents(model, centre(p, 256), q) for p in others[5::60][:8] for q in range(1, 9)]
    pictures = [centre(p, 512) for p in holdout]
    tests = {q: [(np.asarray(im), latents(model, im, q)) for im in pictures] for q in (1, 4, 8)}

    variants = {"float": args.out / "float.onnx"}
    layers = {"all": phases, "layer 1": phases[0:4], "layer 2": phases[4:8], "layer 3": phases[8:12]}
    for label, nodes in layers.items():
        path = args.out / f"int8 {label}.onnx"
        quantize_static(
            str(args.out / "float.onnx"), str(path), Feeds(calibration), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax,
        )
        variants[f"int8 {label}"] = path

    band = {"y_hat": np.random.default_rng(0).normal(0, 2, (1, model.latent_channels, 19, 48)).astype(np.float32),
            "inv_gain": model.gains(4)[1]}
    sessions = {name: session(path) for name, path in variants.items()}
    times = {name: [] for name in sessions}
    for _ in range(12):  # interleaved: this machine's speed drifts
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, band)
            times[name].append(time.perf_counter() - t)
    for name, s in sessions.items():
        scores = [np.mean([psnr(img, s.run(None, feed)[0]) for img, feed in items]) for items in tests.values()]
        print(f"{name:14s} q1/q4/q8 PSNR " + " / ".join(f"{v:.3f}" for v in scores)
              + f"   {1000 * np.median(times[name][2:]):.1f} ms per Kodak band (1 thread)", flush=True)


if __name__ == "__main__":
    main()
