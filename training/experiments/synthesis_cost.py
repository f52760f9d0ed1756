"""What wider synthesis transforms would cost the decoder (session 16): a price list for capacity.

Every A/B since session 11 says the model is limited by its size, and the decoder's time budget
(400 ms/Mpx, ~358 used) is what limits the size. This times candidate synthesis shapes as onnxruntime
runs them in the runtime (same session options, float16-stored weights are not needed for timing),
on a Kodak-sized latent (192 x 32 x 48 -> 512 x 768), each in a fresh process: the first run (page
faults of the memory arena, what a one-image decode pays) and the median of the next five.
Random weights: the time does not depend on the values.

    python training/experiments/synthesis_cost.py            # pause training first for clean times
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import synthesis_transform  # noqa: E402

# (channels, kernels, residual hidden channels)
CANDIDATES = {
    "shipped [96, 64, 32]": ((96, 64, 32), (5, 5, 4, 4), 0),
    "residual 96 at 1/8": ((96, 64, 32), (5, 5, 4, 4), 96),
    "residual 48 at 1/8": ((96, 64, 32), (5, 5, 4, 4), 48),
    "[128, 64, 32]": ((128, 64, 32), (5, 5, 4, 4), 0),
    "[128, 64, 24]": ((128, 64, 24), (5, 5, 4, 4), 0),
    "[128, 48, 24]": ((128, 48, 24), (5, 5, 4, 4), 0),
    "[160, 64, 24]": ((160, 64, 24), (5, 5, 4, 4), 0),
    "[128, 64, 32], k 5 5 3 3": ((128, 64, 32), (5, 5, 3, 3), 0),
}

CHILD = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.intra_op_num_threads = 2
opts.inter_op_num_threads = 1
opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
opts.enable_mem_pattern = False
s = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
y = np.random.default_rng(0).normal(0, 2, (1, 192, 32, 48)).astype(np.float32)
times = []
for _ in range(6):
    t = time.perf_counter(); s.run(None, {"y": y}); times.append(time.perf_counter() - t)
mpx = 512 * 768 / 1e6
print(json.dumps({"first": times[0] * 1e3 / mpx, "warm": sorted(times[1:])[2] * 1e3 / mpx}))
"""


def multiply_adds(channels: tuple[int, ...], kernels: tuple[int, ...], residual: int, m: int = 192) -> int:
    """Per output pixel: a stride-2 transposed convolution with k x k kernels does k^2 / 4
    multiply-adds per output position and input-output channel pair."""
    widths = (m, *channels, 3)
    total = 0.0
    for i, k in enumerate(kernels):
        total += widths[i] * widths[i + 1] * k * k / 4 / 4 ** (len(kernels) - 1 - i)
    if residual:
        total += 2 * widths[1] * residual * 9 / 64
    return round(total)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, (channels, kernels, residual) in CANDIDATES.items():
            net = synthesis_transform(192, channels, kernels, residual).eval()
            path = Path(tmp) / "synthesis.onnx"
            torch.onnx.export(
                net, torch.zeros(1, 192, 8, 8), str(path), input_names=["y"], output_names=["x"],
                dynamic_axes={"y": {2: "h", 3: "w"}}, opset_version=17, dynamo=False,
            )
            out = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                                            text=True, check=True).stdout)
            macs = multiply_adds(channels, kernels, residual)
            print(f"| {name} | {macs / 1000:.1f}k | {out['first']:.0f} | {out['warm']:.0f} |", flush=True)


if __name__ == "__main__":
    print("| synthesis | multiply-adds per pixel | first run ms/Mpx | warm ms/Mpx |\n|---|---:|---:|---:|")
    main()
