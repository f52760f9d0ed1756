"""What the integer prior's precision costs once its GEMMs are exact integer GEMMs (session 11).

With float32 GEMMs, weight bits were bounded by exactness (7-8 bits in the context's 5x5 layer);
pillow_dcv.prior.ExactGemm computes any width exactly, at one 8-bit GEMM per operand byte. Per
setting, estimated bits of the integer prior against the float model, per quality
(experiments/prior_cost.py's table), for one checkpoint:

    python training/experiments/integer_precision.py training/weights/dcv-ms2-s30.pt [SETTING ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import export  # noqa: E402
from prior_cost import build, costs, make_prior  # noqa: E402

SETTINGS = {  # export constants per setting
    "7-bit weights, 10-bit activations": dict(WEIGHT_BITS=7),
    "14-bit weights, 10-bit activations": dict(WEIGHT_BITS=14),
    "14-bit weights, 15-bit activations": dict(
        WEIGHT_BITS=14, ACTIVATION_BITS=14, ACTIVATION_MAX=2**15 - 1, CONTEXT_HIDDEN_BITS=16,
        CONTEXT_INPUT_BITS=(9, 11, 13),
    ),
    # one input byte everywhere (session 28: the prior would take ~14 ms less per Kodak tile): activations
    # at 7 bits of their calibrated maximum clipped at 255, context inputs within +-127
    # one input byte for the context networks only (their 5x5 and 3x3 layers are the prior's largest
    # GEMMs): the decoded anchors within +-127. Session 29, dcv-ms2-s28: |y_hat| reaches 153, so a step
    # of 4; +24 % estimated bits (q1 +106 %, q8 +9 %)
    "8-bit context inputs": dict(CONTEXT_INPUT_BITS=(6,)),
    "14-bit weights, 8-bit activations": dict(
        WEIGHT_BITS=14, ACTIVATION_BITS=7, ACTIVATION_MAX=2**8 - 1, CONTEXT_HIDDEN_BITS=9, CONTEXT_INPUT_BITS=(6,),
    ),
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    model, pairs = build(sys.argv[1])
    chosen = sys.argv[2:]  # setting names; default all
    for name, constants in SETTINGS.items():
        if chosen and name not in chosen:
            continue
        for key, value in constants.items():
            setattr(export, key, value)
        print(f"== {name}", flush=True)
        prior = make_prior(model, pairs)
        print(f"8-bit GEMMs per layer: {prior.products}")
        costs(model, prior, pairs)
