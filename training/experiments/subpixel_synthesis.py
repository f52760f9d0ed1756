"""Is the synthesis faster as convolutions + depth-to-space than as ONNX ConvTranspose? (session 9)

A stride-2 transposed convolution equals, per output phase, a small convolution of the input. With the
output shifted by one pixel, every phase of a k=4 (padding 1) layer reads the same 2x2 input window, and
every phase of a k=5 (padding 2, output padding 1) layer the same 3x3 window. So: pad, one convolution
with 4x the output channels, DepthToSpace, crop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def subpixel_weight(deconv: nn.ConvTranspose2d) -> tuple[torch.Tensor, int, int]:
    """Conv weight (4*cout, cin, K, K), the left/top input padding and the output crop."""
    w = deconv.weight.detach()  # (cin, cout, k, k)
    cin, cout, k, _ = w.shape
    p = deconv.padding[0]
    # output y = 2u + r reads input i = u - d through tap t = 2d + r + p. Shift the output by s
    # pixels: y + s = 2v + r' with window offsets e = i - v.
    best = None
    for s in (0, 1):
        offsets = {}
        for r in (0, 1):
            rr, carry = (r + s) % 2, (r + s) // 2  # y + s = 2(u + carry) + rr, so v = u + carry
            taps = {}
            for t in range(k):
                if (t - r - p) % 2 == 0:
                    d = (t - r - p) // 2
                    taps[-d - carry] = t  # offset of the input relative to v
            offsets[rr] = taps
        es = [e for taps in offsets.values() for e in taps]
        lo, hi = min(es), max(es)
        if best is None or hi - lo < best[0]:
            best = (hi - lo, s, lo, hi, offsets)
    _, s, lo, hi, offsets = best
    size = hi - lo + 1
    kc = torch.zeros(cout, 2, 2, cin, size, size)
    for ry, ty in offsets.items():
        for rx, tx in offsets.items():
            for ey, t_y in ty.items():
                for ex, t_x in tx.items():
                    kc[:, ry, rx, :, ey - lo, ex - lo] = w[:, :, t_y, t_x].T
    return kc.reshape(4 * cout, cin, size, size), lo, s


class SubpixelDeconv(nn.Module):
    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        w, lo, s = subpixel_weight(deconv)
        self.conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=0)
        self.conv.weight.data = w
        self.conv.bias.data = deconv.bias.detach().repeat_interleave(4)
        size = w.shape[2]
        self.pad = (-lo, size - 1 + lo)  # before, after: conv output v = 0..H-1 (+1 if shifted)
        self.shift = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        extra = self.shift
        x = F.pad(x, (self.pad[0], self.pad[1] + extra, self.pad[0], self.pad[1] + extra))
        y = F.pixel_shuffle(self.conv(x), 2)
        return y[:, :, self.shift : self.shift + 2 * h, self.shift : self.shift + 2 * w]


def compare_with_convtranspose(replacement: type[nn.Module], name: str, weights: str) -> None:
    """Every ConvTranspose2d of the exported synthesis replaced by ``replacement(layer)``: the largest
    output difference, then onnxruntime time at Kodak size against the ConvTranspose graph, 1 and 2
    threads (also used by phase_synthesis.py)."""
    import copy

    import onnxruntime as ort
    from export import Synthesis, bake_gdn
    from model import DCVModel

    state = torch.load(weights, weights_only=False)
    model = DCVModel(**state["config"]["model"])
    model.load_state_dict({k: v.float() for k, v in state["state_dict"].items()})
    model.eval().requires_grad_(False)
    bake_gdn(model)
    ref = Synthesis(model)
    other = copy.deepcopy(ref)
    for i, layer in enumerate(other.g_s):
        if isinstance(layer, nn.ConvTranspose2d):
            other.g_s[i] = replacement(layer)
    y = torch.randn(1, 192, 32, 48) * 3
    g = torch.ones(1, 192, 1, 1)
    with torch.no_grad():
        a, b = ref(y, g), other(y, g)
    print("max |diff| against ConvTranspose (torch)", (a - b).abs().max().item(), tuple(b.shape))
    out = Path("/tmp") / name
    out.mkdir(exist_ok=True)
    for graph, mod in (("deconv", ref), (name, other)):
        torch.onnx.export(mod, (y, g), str(out / f"{graph}.onnx"), input_names=["y_hat", "inv_gain"],
                          output_names=["x_hat"], dynamic_axes={"y_hat": {2: "h", 3: "w"}}, opset_version=17,
                          dynamo=False)
    mpx = 512 * 768 / 1e6
    for threads in (1, 2):
        for graph in ("deconv", name):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(str(out / f"{graph}.onnx"), opts, providers=["CPUExecutionProvider"])
            feed = {"y_hat": y.numpy(), "inv_gain": g.numpy()}
            sess.run(None, feed)
            times = []
            for _ in range(8):
                t0 = time.perf_counter()
                (o,) = sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            print(f"{threads} threads {graph}: {1000 * min(times) / mpx:.0f} ms/Mpx best, "
                  f"{1000 * np.median(times) / mpx:.0f} median (max diff vs torch {np.abs(o - a.numpy()).max():.2e})",
                  flush=True)


def main() -> None:
    weights = sys.argv[1] if len(sys.argv) > 1 else "training/weights/dcv-ms2-s30.pt"
    compare_with_convtranspose(SubpixelDeconv, "subpixel", weights)


if __name__ == "__main__":
    main()
