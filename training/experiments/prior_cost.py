"""Where does the integer prior lose bits? (session 9 diagnostic)

Per quality, estimated bits of y with (a) the integer prior's means and scale indices, (b) the float
model's means with the integer scale indices, (c) the integer means with the float scales; each
against the float model. Builds the integer prior as export.py does, without writing files.

    python training/experiments/prior_cost.py training/weights/dcv-ms2-s30.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import export  # noqa: E402
from export import SCALE_TABLE, estimated_bits  # noqa: E402
from model import DCVModel  # noqa: E402


def build(weights: str) -> tuple[DCVModel, list]:
    state = torch.load(weights, map_location="cpu", weights_only=False)
    sd = state.get("state_dict") or state["ema"]
    model = DCVModel(**state["config"]["model"])
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.eval().requires_grad_(False)
    pairs = export.calibration_latents(model, sorted(export.CALIBRATION_DIR.glob("*"))[:4])
    return model, pairs


def make_prior(model: DCVModel, pairs: list):
    from pillow_dcv.prior import IntegerHyperSynthesis

    calibration = [(y, z) for _, y, z in pairs]
    params = export.quantise_hyper_synthesis(model, [z for _, z in calibration])
    params.update(export.gaussian_tables())
    params.update(export.factorized_tables(model))
    params.update(export.best_context(model, params, calibration))
    return IntegerHyperSynthesis(params)


def costs(model: DCVModel, prior, pairs: list) -> None:
    thresholds = np.sqrt(SCALE_TABLE[:-1] * SCALE_TABLE[1:])
    totals: dict[int, np.ndarray] = {}
    for q, y, z in pairs:
        with torch.no_grad():
            _, scale, mu = model.entropy_parameters(y, model.h_s(z))
        acc = prior.hyper(z[0].numpy())
        y64 = y[0].double().numpy()
        y_sym = np.zeros(y64.shape, dtype=np.int64)
        for part, update in prior.stages(y64.shape):
            if update is not None:
                acc = update(acc, y_sym)
            mu_int, index = prior.tables(acc)
            mask = part.mask(y64.shape)
            y_sym[mask] = np.rint(y64 - mu_int)[mask]
        mu_f, s_f = mu[0].double().numpy(), scale[0].double().numpy()
        s_table = SCALE_TABLE[np.searchsorted(thresholds, s_f, side="right")]
        row = [
            estimated_bits(y64 - mu_f, s_f),
            estimated_bits(y64 - mu_f, s_table),
            estimated_bits(y64 - mu_int, SCALE_TABLE[index]),
            estimated_bits(y64 - mu_f, SCALE_TABLE[index]),
            estimated_bits(y64 - mu_int, s_f),
        ]
        totals[q] = totals.get(q, 0) + np.array(row)
    print("quality: table only / integer prior / float mu + integer scale / integer mu + float scale")
    for q, t in sorted(totals.items()):
        print(f"q{q + 1}: " + " / ".join(f"{100 * (v / t[0] - 1):+.2f} %" for v in t[1:]))


if __name__ == "__main__":
    torch.set_num_threads(1)
    model, pairs = build(sys.argv[1])
    costs(model, make_prior(model, pairs), pairs)
