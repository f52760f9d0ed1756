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
from pillow_dcv.prior import FLOAT32_EXACT, IntegerHyperSynthesis


def magnitude_bits(w: np.ndarray) -> int:
    return math.ceil(math.log2(int(np.abs(w.astype(np.int64)).max()) + 1))


def describe(name: str, w: np.ndarray, row_l1: np.ndarray, dtype: type, extra: str = "") -> None:
    print(
        f"{name:6s} {tuple(w.shape)!s:20s} bits {magnitude_bits(w):2d}  max|W| {int(np.abs(w).max()):6d}  "
        f"max Sum|W| {int(np.max(row_l1)):8,d}  {dtype.__name__}{extra}"
    )


def main() -> None:
    model_id = sys.argv[1] if len(sys.argv) > 1 else codec.DEFAULT_MODEL
    folder = Path(codec.__file__).parent / "models" / model_id
    params = dict(np.load(folder / "prior.npz"))
    prior = IntegerHyperSynthesis(params)
    print(f"{model_id}: hs_activation_max {prior.activation_max}, hs_out_frac_bits {prior.output_frac_bits}")
    for i, layer in enumerate(prior._gemms):
        extra = f"  shift {layer.shift}"
        if layer.float32_rows is not None:
            extra += f"  ({len(layer.float32_rows)} of {layer.out_channels} rows in float32)"
        describe(f"hs{i}", params[f"hs{i}_w"], layer.rows_l1, layer.dtype, f" {layer.kind}{extra}")
    for key in ("ctx_input_shift", "ctxf_input_shift", "ctxf_shift", "cc_input_shift"):
        if key in params:
            print(f"{key} {int(params[key])}")
    if prior.has_context:
        conv = prior._context_conv
        describe("ctx0", params["ctx0_w"], np.abs(conv.matrix.astype(np.int64)).sum(1), conv.dtype,
                 f"  {len(conv.taps)} taps  shift {conv.shift}")
        head = prior._context_head
        describe("ctx1", params["ctx1_w"], head.rows_l1, head.dtype, f"  shift {head.shift}")
    if prior._fusion is not None:
        describe("ctxf", params["ctxf_w"], prior._fusion.rows_l1, prior._fusion.dtype)
    if prior.has_channel_context:
        for anchors, (conv, head) in prior._channel_nets.items():
            net = "cca" if anchors else "cco"
            describe(f"{net}0", params[f"{net}0_w"], np.abs(conv.matrix.astype(np.int64)).sum(1), conv.dtype,
                     f"  {len(conv.taps)} taps  shift {conv.shift}")
            describe(f"{net}1", params[f"{net}1_w"], head.rows_l1, head.dtype, f"  shift {head.shift}")
    print(f"float32 bound 2^24 = {FLOAT32_EXACT:,d}")


if __name__ == "__main__":
    main()
