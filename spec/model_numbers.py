"""Print the numbers sections 6, 6.1 and 6.2 quote for a model's integer prior.

    python spec/model_numbers.py [model_id]      (default: pillow_dcv.codec.DEFAULT_MODEL)

Weight bits are magnitude bits, ceil(log2(max|W| + 1)); Sum|W| is per output, over the taps that
reach it (a deconv phase, the anchor taps of the checkerboard context), as the decoder bounds it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from pillow_dcv import codec
from pillow_dcv.prior import ExactGemm, IntegerHyperSynthesis


def magnitude_bits(w: np.ndarray) -> int:
    return math.ceil(math.log2(int(np.abs(w.astype(np.int64)).max()) + 1))


def describe(name: str, w: np.ndarray, gemms: list[ExactGemm], extra: str = "") -> None:
    row_l1 = max(int(g.row_l1.max()) for g in gemms)
    print(
        f"{name:6s} {tuple(w.shape)!s:20s} bits {magnitude_bits(w):2d}  max|W| {int(np.abs(w).max()):6d}  "
        f"max Sum|W| {row_l1:9,d}  8-bit GEMMs {gemms[0].products} "
        f"({gemms[0].input_bytes} input x {gemms[0].weight_parts} weight bytes){extra}"
    )


def main() -> None:
    model_id = sys.argv[1] if len(sys.argv) > 1 else codec.DEFAULT_MODEL
    folder = Path(codec.__file__).parent / "models" / model_id
    params = dict(np.load(folder / "prior.npz"))
    prior = IntegerHyperSynthesis(params)
    print(f"{model_id}: hs_activation_max {prior.activation_max}, hs_out_frac_bits {prior.output_frac_bits}, "
          f"z range {prior.z_range}")
    for i, layer in enumerate(prior._gemms):
        describe(f"hs{i}", params[f"hs{i}_w"], layer.gemms, f"  {layer.kind}  shift {layer.shift}")
    for key in ("ctx_input_shift", "ctx_input_max", "ctxf_input_shift", "ctxf_input_max", "ctxf_shift",
                "cc_input_shift", "cc_input_max"):
        if key in params:
            print(f"{key} {int(params[key])}")
    if prior.has_context:
        conv = prior._context_conv
        describe("ctx0", params["ctx0_w"], [conv.gemm], f"  {len(conv.taps)} taps  shift {conv.shift}")
        head = prior._context_head
        describe("ctx1", params["ctx1_w"], head.gemms, f"  shift {head.shift}")
    if prior._fusion is not None:
        describe("ctxf", params["ctxf_w"], prior._fusion.gemms)
    if prior.has_channel_context:
        for anchors, (conv, head) in prior._channel_nets.items():
            net = "cca" if anchors else "cco"
            describe(f"{net}0", params[f"{net}0_w"], [conv.gemm], f"  {len(conv.taps)} taps  shift {conv.shift}")
            describe(f"{net}1", params[f"{net}1_w"], head.gemms, f"  shift {head.shift}")


if __name__ == "__main__":
    main()
