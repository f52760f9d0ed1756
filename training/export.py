"""Export a trained checkpoint to the runtime files in pillow_dcv/models/<model_id>/.

    python training/export.py --checkpoint ~/.cache/pillow-dcv/ckpt.pt --model-id dcv-ms1-a

Writes analysis.onnx (g_a + gains + h_a), synthesis.onnx (gains + g_s, transposed convolutions),
prior.npz (integer hyper-synthesis, integer entropy tables, gain vectors), and
training/weights/<model_id>.pt (the fp16 state dict, from which training can start on a fresh machine:
``train.py --init``). The entropy tables are then fitted to the exported model's own symbols on
training photos (training/tables.py; ``--model-tables`` keeps the model's own). Then checks ONNX
against PyTorch on real images and the integer prior against the float one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT))
from lower_synthesis import lower_transposed_convolutions  # noqa: E402
from model import SCALE_TABLE, DCVModel, anchor_mask  # noqa: E402

# Weights carry a sign and WEIGHT_BITS magnitude bits: the runtime's exact integer GEMMs cut them into a
# signed top byte and one 7-bit part (pillow_dcv.prior.ExactGemm), so 14 bits cost what 8 do.
WEIGHT_BITS = 14
# Activations carry ACTIVATION_BITS bits at the calibrated maximum and are clipped at twice that: two
# bytes in the integer GEMMs, as 10 bits were (session 11: the integer prior then costs +0.10 % estimated
# bits against the float model instead of +0.30 % with 10-bit activations, training/LOG.md).
ACTIVATION_BITS = 14
ACTIVATION_MAX = 2**15 - 1
# The context models' input (the decoded anchors) precision, measured by export on the calibration
# photos (session 11, 14-bit weights and activations: 9 bits +0.60 %, 11 +0.11 %, 13 +0.10 %).
CONTEXT_INPUT_BITS = (11, 12, 13)
# The context networks' hidden layers map their calibrated maximum to 2**16 and clip at ACTIVATION_MAX,
# i.e. at half that maximum: the finer steps matter more than the rare largest values (session 8,
# dcv-ms2-s09, at 9 / 10 / 11 bits with 10-bit activations: +4.64 / +2.81 / +2.30 % at q1).
CONTEXT_HIDDEN_BITS = 16
TABLE_PRECISION = 2**20
Z_SEARCH = 512  # hyper-latent support searched for the factorized tables
CALIBRATION_DIR = ROOT.parent / "shared/data/train/debian_wallpapers"  # the first 4 photos, every quality


class Analysis(nn.Module):
    def __init__(self, model: DCVModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.model.analyse(x) * gain
        return y, self.model.h_a(y)


class Synthesis(nn.Module):
    def __init__(self, model: DCVModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, y_hat: torch.Tensor, inv_gain: torch.Tensor) -> torch.Tensor:
        return self.model.synthesise(y_hat * inv_gain)


def bake_gdn(model: DCVModel) -> None:
    """Replace GDN parameters by their effective values so the graph is plain Mul/Conv/Sqrt/Div."""
    for module in model.modules():
        if module.__class__.__name__ == "GDN":
            beta, gamma = module.effective_params()
            module.beta.data, module.gamma.data = beta.detach().clone(), gamma.detach().clone()
            module.effective_params = lambda b=module.beta, g=module.gamma: (b, g)


def export_onnx(module: nn.Module, inputs: tuple, names: list[str], outputs: list[str], path: Path) -> None:
    dynamic = {n: {2: "h", 3: "w"} for n in names[:1]}
    dynamic.update({n: {2: "oh", 3: "ow"} for n in outputs})
    torch.onnx.export(
        module,
        inputs,
        str(path),
        input_names=names,
        output_names=outputs,
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )


def lower_synthesis(path: Path) -> None:
    """The stride-2 transposed convolutions but the last as four phase convolutions each
    (lower_synthesis.py): a faster synthesis and a smaller first decode; `check` below compares the
    result with PyTorch's transposed convolutions."""
    import onnx

    onnx.save(lower_transposed_convolutions(onnx.load(str(path))), str(path))


def store_weights_fp16(path: Path) -> None:
    """Halve the file: keep large float initializers as fp16 behind a Cast to float.

    onnxruntime folds the casts when it loads the model, so inference still runs in fp32; the
    export check below measures the (tiny) effect of the rounding.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < 1024:
            continue
        array = numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(array, name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT))
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_runtime_graphs(folder: Path = ROOT / "pillow_dcv" / "gemm") -> None:
    """The runtime's model-independent graphs: a one-node MatMulInteger (uint8 x int8 -> int32) for the
    integer prior, a float64 a^T b for the encoder's post-filter statistics, and the post-filter (spec
    4.5, 4.6): edge padding by 2, then a 5x5 convolution whose weights and bias are inputs (the file's
    fILT or fILC chunk; two fILC filters are one convolution with six outputs, and the codec picks each
    pixel's three)."""
    import onnx
    from onnx import TensorProto, helper

    def save(nodes, name, inputs, outputs, initializers=()) -> None:
        graph = helper.make_graph(nodes, name.split("_")[0], inputs, outputs, initializer=list(initializers))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model)
        onnx.save(model, str(folder / f"{name}.onnx"))

    folder.mkdir(exist_ok=True)
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, ["n", "k"])
    b = helper.make_tensor_value_info("b", TensorProto.INT8, ["k", "o"])
    c = helper.make_tensor_value_info("c", TensorProto.INT32, ["n", "o"])
    save([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "matmul_integer", [a, b], [c])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n", 3, 5, 5])  # n = 3 per filter (fILC: 1 or 2)
    bias = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", "h", "w"])
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 2, 2, 0, 0, 2, 2])
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"], mode="edge"),
             helper.make_node("Conv", ["padded", "w", "b"], ["y"])]
    save(nodes, "post_filter", [x, w, bias], [y], [pads])
    # the encoder's post-filter statistics: a^T b in float64 (features of a strip of pixels)
    a = helper.make_tensor_value_info("a", TensorProto.DOUBLE, ["n", "i"])
    b = helper.make_tensor_value_info("b", TensorProto.DOUBLE, ["n", "j"])
    c = helper.make_tensor_value_info("c", TensorProto.DOUBLE, ["i", "j"])
    nodes = [helper.make_node("Transpose", ["a"], ["at"]), helper.make_node("MatMul", ["at", "b"], ["c"])]
    save(nodes, "gram", [a, b], [c])


def fixed_point(x: np.ndarray, frac: int) -> np.ndarray:
    """Biases in an accumulator's fixed point: round(x * 2**frac) as int64."""
    return np.round(x * 2.0**frac).astype(np.int64)


def quantise_hyper_synthesis(model: DCVModel, calibration_z: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Integer weights and activations, power-of-two fixed point, activation ranges from calibration.

    Weights carry WEIGHT_BITS bits (quantise_weights); activations carry ACTIVATION_BITS bits at the
    calibrated maximum and are clipped at ACTIVATION_MAX.
    """
    layers = [m for m in model.h_s if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # Per-layer activation maxima after ReLU on calibration data.
    maxima = [0.0] * len(layers)
    with torch.no_grad():
        for z in calibration_z:
            x = z
            for i, layer in enumerate(layers[:-1]):
                x = torch.relu(layer(x))
                maxima[i] = max(maxima[i], float(x.max()))
    params: dict[str, np.ndarray] = {"hs_layers": np.array(len(layers)), "hs_activation_max": np.array(ACTIVATION_MAX)}
    frac_in = 0  # z is an integer
    for i, layer in enumerate(layers):
        kind = "deconv" if isinstance(layer, nn.ConvTranspose2d) else "conv"
        last = i == len(layers) - 1
        w = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        frac_out = frac_in if last else int(math.floor(math.log2(2**ACTIVATION_BITS / max(maxima[i], 1e-6))))
        wq, frac_w = quantise_weights(w, f"h_s layer {i}")
        acc_frac = frac_in + frac_w
        shift = 0 if last else acc_frac - frac_out
        bq = fixed_point(b, acc_frac)
        params[f"hs{i}_kind"] = np.array(kind)
        params[f"hs{i}_w"] = wq
        params[f"hs{i}_b"] = bq
        params[f"hs{i}_shift"] = np.array(shift)
        frac_in = acc_frac if last else frac_out
    params["hs_out_frac_bits"] = np.array(frac_in)
    midpoints = np.sqrt(SCALE_TABLE[:-1] * SCALE_TABLE[1:])
    params["scale_thresholds"] = np.ceil(midpoints * 2.0**frac_in).astype(np.int64)
    return params


def quantise_weights(w: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """WEIGHT_BITS-bit weights (plus sign) in power-of-two fixed point: (weights, frac_w)."""
    frac_w = int(math.floor(math.log2((2**WEIGHT_BITS - 1) / max(np.abs(w).max(), 1e-12))))
    print(f"{name}: {WEIGHT_BITS}-bit weights, 2**-{frac_w}")
    return np.round(w * 2.0**frac_w).astype(np.int16), frac_w


def quantise_context(
    model: DCVModel, calibration: list[tuple[torch.Tensor, torch.Tensor]], out_frac: int, input_bits: int
) -> dict[str, np.ndarray]:
    """The checkerboard context model on integers (pillow_dcv.prior.IntegerHyperSynthesis.context).

    Its input is the decoded anchors y_hat, known exactly in units of 2**-out_frac, rounded to
    ``frac_in`` fractional bits so that the calibrated maximum is about 2**input_bits; the
    hidden layer is calibrated with CONTEXT_HIDDEN_BITS; the 1x1 output layer is shifted to the
    hyper-synthesis' output units, to which it is added. With fusion, the hyperprior's S and U enter
    with the same input precision, and their 1x1 convolution is shifted into layer 0's units.
    """
    from pillow_dcv.prior import checkerboard_taps

    conv0, head = model.context_prediction[0], model.context_prediction[2]
    k = conv0.kernel_size[0]
    w0 = conv0.weight.detach().double().numpy().copy()
    keep = np.zeros((k, k), dtype=bool)
    for dy, dx in checkerboard_taps(k):
        keep[k // 2 + dy, k // 2 + dx] = True
    w0[:, :, ~keep] = 0.0  # these taps only ever see zeros (the non-anchors)
    fusion = model.context_fusion
    y_max, hyper_max, hidden_max = 1e-6, 1e-6, 1e-6
    with torch.no_grad():
        for y, z in calibration:
            hyper = model.h_s(z)
            _, mu = hyper.chunk(2, 1)
            y_hat, anchor = torch.round(y - mu) + mu, anchor_mask(y.shape[2], y.shape[3])
            y_max = max(y_max, float((y_hat * anchor).abs().max()))
            hyper_max = max(hyper_max, float((hyper * ~anchor).abs().max()))
            hidden = conv0(y_hat * anchor) + (fusion(hyper) if fusion is not None else 0)
            hidden_max = max(hidden_max, float((torch.relu(hidden) * ~anchor).max()))
    frac_in = min(out_frac, int(math.floor(math.log2(2**input_bits / y_max))))
    input_max = 2 ** (input_bits + 1) - 1
    frac_hidden = int(math.floor(math.log2(2**CONTEXT_HIDDEN_BITS / hidden_max)))
    b0 = conv0.bias.detach().double().numpy()
    w0q, frac_w0 = quantise_weights(w0, "context layer 0")
    w1 = head.weight.detach().double().numpy()
    b1 = head.bias.detach().double().numpy()
    w1q, frac_w1 = quantise_weights(w1, "context layer 1")
    print(f"context: input {frac_in} fractional bits (max |y_hat| {y_max:.1f}), hidden {frac_hidden}")
    params = quantise_fusion(fusion, out_frac, input_bits, hyper_max, frac_in + frac_w0) if fusion else {}
    return params | {
        "ctx_input_shift": np.array(out_frac - frac_in),
        "ctx_input_max": np.array(input_max),
        "ctx0_w": w0q,
        "ctx0_b": fixed_point(b0, frac_in + frac_w0),
        "ctx0_shift": np.array(frac_in + frac_w0 - frac_hidden),
        "ctx1_w": w1q,
        "ctx1_b": fixed_point(b1, frac_hidden + frac_w1),
        "ctx1_shift": np.array(frac_hidden + frac_w1 - out_frac),
    }


def quantise_channel_context(
    model: DCVModel, calibration: list[tuple[torch.Tensor, torch.Tensor]], out_frac: int, input_bits: int
) -> dict[str, np.ndarray]:
    """The two-slice channel context on integers (IntegerHyperSynthesis.channel_context): the first
    half's decoded values as input (one precision for both networks, like the context's), hidden
    layers calibrated with CONTEXT_HIDDEN_BITS, heads shifted to the units of S and U."""

    half = model.m // 2
    nets = {"cca": model.channel_context_anchor, "cco": model.channel_context_other}
    y_max, hidden_max = 1e-6, {name: 1e-6 for name in nets}
    with torch.no_grad():
        for y, z in calibration:
            hyper = model.h_s(z)
            y_hat, _, _ = model.entropy_parameters(y, hyper)
            y1 = y_hat[:, :half]  # at the anchors, y1 rounded around the hyperprior's means
            anchor = anchor_mask(y.shape[2], y.shape[3])
            y_max = max(y_max, float(y1.abs().max()))
            for name, where, x in (("cca", anchor, y1 * anchor), ("cco", ~anchor, y1)):
                hidden = torch.relu(nets[name][0](x)) * where
                hidden_max[name] = max(hidden_max[name], float(hidden.max()))
    frac_in = min(out_frac, int(math.floor(math.log2(2**input_bits / y_max))))
    input_max = 2 ** (input_bits + 1) - 1
    params = {"cc_input_shift": np.array(out_frac - frac_in), "cc_input_max": np.array(input_max)}
    for name in ("cca", "cco"):
        conv0, head = nets[name][0], nets[name][2]
        w0 = conv0.weight.detach().double().numpy().copy()
        if name == "cca":  # from an anchor, only the taps with dy + dx even reach anchors
            k = w0.shape[-1]
            odd = (np.add.outer(np.arange(k), np.arange(k)) - 2 * (k // 2)) % 2 == 1
            w0[:, :, odd] = 0.0
        b0 = conv0.bias.detach().double().numpy()
        frac_hidden = int(math.floor(math.log2(2**CONTEXT_HIDDEN_BITS / hidden_max[name])))
        w0q, frac_w0 = quantise_weights(w0, f"channel context {name} layer 0")
        b1 = head.bias.detach().double().numpy()
        w1 = head.weight.detach().double().numpy()
        w1q, frac_w1 = quantise_weights(w1, f"channel context {name} layer 1")
        params.update({
            f"{name}0_w": w0q,
            f"{name}0_b": fixed_point(b0, frac_in + frac_w0),
            f"{name}0_shift": np.array(frac_in + frac_w0 - frac_hidden),
            f"{name}1_w": w1q,
            f"{name}1_b": fixed_point(b1, frac_hidden + frac_w1),
            f"{name}1_shift": np.array(frac_hidden + frac_w1 - out_frac),
        })
    return params


def quantise_fusion(
    fusion: nn.Conv2d, out_frac: int, input_bits: int, hyper_max: float, frac_acc: int
) -> dict[str, np.ndarray]:
    """Context fusion on integers: S and U (units of 2**-out_frac) rounded to about ``input_bits``
    bits at the calibrated maximum, a 1x1 convolution, then shifted to layer 0's accumulator units
    (``frac_acc`` fractional bits), to which the runtime adds it before layer 0's requantisation."""
    frac_in = min(out_frac, int(math.floor(math.log2(2**input_bits / hyper_max))))
    input_max = 2 ** (input_bits + 1) - 1
    w = fusion.weight.detach().double().numpy()
    b = fusion.bias.detach().double().numpy()
    wq, frac_w = quantise_weights(w, "context fusion")
    print(f"context fusion: input {frac_in} fractional bits (max |S|, |U| {hyper_max:.1f})")
    return {
        "ctxf_input_shift": np.array(out_frac - frac_in),
        "ctxf_input_max": np.array(input_max),
        "ctxf_w": wq,
        "ctxf_b": fixed_point(b, frac_in + frac_w),
        "ctxf_shift": np.array(frac_in + frac_w - frac_acc),
    }


def gaussian_tables() -> dict[str, np.ndarray]:
    from scipy.special import ndtr

    counts, offsets = [], []
    for s in SCALE_TABLE:
        r = max(2, int(math.ceil(8 * s)))
        v = np.arange(-r, r + 1, dtype=np.float64)
        p = ndtr((v + 0.5) / s) - ndtr((v - 0.5) / s)
        counts.append(np.round(p * TABLE_PRECISION).astype(np.int64) + 1)
        offsets.append(-r)
    return pack_tables("y", counts, offsets)


def factorized_tables(model: DCVModel) -> dict[str, np.ndarray]:
    eb = model.entropy_bottleneck
    v = torch.arange(-Z_SEARCH, Z_SEARCH + 1, dtype=torch.float32)
    c = eb.matrices[0].shape[0]
    with torch.no_grad():
        p = eb.likelihood(v.reshape(1, 1, 1, -1).repeat(1, c, 1, 1))[0, :, 0].double().numpy()
    counts, offsets = [], []
    for ch in range(c):
        pc = p[ch] / p[ch].sum()
        cdf = np.cumsum(pc)
        lo = int(np.searchsorted(cdf, 1e-7))
        hi = int(np.searchsorted(cdf, 1 - 1e-7))
        hi = max(hi, lo + 1)
        counts.append(np.round(pc[lo : hi + 1] * TABLE_PRECISION).astype(np.int64) + 1)
        offsets.append(lo - Z_SEARCH)
    return pack_tables("z", counts, offsets)


def pack_tables(prefix: str, counts: list[np.ndarray], offsets: list[int]) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_counts": np.concatenate(counts).astype(np.uint32),
        f"{prefix}_lengths": np.array([len(c) for c in counts], dtype=np.int64),
        f"{prefix}_offsets": np.array(offsets, dtype=np.int64),
    }


def load_image(path: Path, multiple: int = 64) -> torch.Tensor:
    a = np.asarray(Image.open(path).convert("RGB"))
    h, w = a.shape[0] // multiple * multiple, a.shape[1] // multiple * multiple
    return torch.from_numpy(a[:h, :w].copy()).permute(2, 0, 1)[None].float() / 255


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(Path.home() / ".cache/pillow-dcv/ckpt.pt"))
    ap.add_argument("--weights", help="an exported weights.pt instead of a checkpoint")
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--out", default=str(ROOT / "pillow_dcv" / "models"))
    ap.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA")
    ap.add_argument("--slow-ema", action="store_true", help="use the slow second average ([optim] ema_slow)")
    ap.add_argument("--calibration", default=str(CALIBRATION_DIR))
    ap.add_argument("--model-tables", action="store_true",
                    help="keep the model's own tables (Gaussian y, one z per channel) instead of fitted ones")
    args = ap.parse_args()
    torch.set_num_threads(2)

    if args.weights:
        state = torch.load(args.weights, map_location="cpu")
        cfg, sd, step, hours = state["config"], state["state_dict"], state.get("step", 0), state.get("hours", 0.0)
    else:
        ckpt = torch.load(args.checkpoint, map_location="cpu")
        cfg, step, hours = ckpt["config"], ckpt["step"], ckpt["hours"]
        sd = ckpt["model" if args.raw else "ema_slow" if args.slow_ema else "ema"]
    model = DCVModel(**cfg["model"])
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.eval()
    out = Path(args.out) / args.model_id
    out.mkdir(parents=True, exist_ok=True)
    weights = ROOT / "training" / "weights" / f"{args.model_id}.pt"
    weights.parent.mkdir(exist_ok=True)
    half = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"config": cfg, "step": step, "hours": hours, "state_dict": half}, weights)

    bake_gdn(model)
    m = cfg["model"]["m"]
    x = torch.rand(1, 3, 128, 192)
    gain = torch.ones(1, m, 1, 1)
    export_onnx(Analysis(model), (x, gain), ["x", "gain"], ["y", "z"], out / "analysis.onnx")
    export_onnx(
        Synthesis(model), (torch.rand(1, m, 8, 12), gain), ["y_hat", "inv_gain"], ["x_hat"], out / "synthesis.onnx"
    )
    lower_synthesis(out / "synthesis.onnx")
    for name in ("analysis.onnx", "synthesis.onnx"):
        store_weights_fp16(out / name)

    calib_paths = sorted(Path(args.calibration).glob("*"))[:4]
    latents = calibration_latents(model, calib_paths)
    calib_y, calib_z = [y for _, y, _ in latents], [z for _, _, z in latents]
    params = quantise_hyper_synthesis(model, calib_z)
    params.update(gaussian_tables())
    params.update(factorized_tables(model))
    if model.context_channels:
        params.update(best_context(model, params, list(zip(calib_y, calib_z))))
    params["gain"] = model.gain.detach().numpy().astype(np.float32)
    params["inv_gain"] = model.inv_gain.detach().numpy().astype(np.float32)
    if model.reconstruction is not None:  # (|q| 1, 2, >= 3) x scale level, float32: the synthesis is float
        params["recon_offsets"] = model.reconstruction.table.detach().numpy().astype(np.float32)
    np.savez_compressed(out / "prior.npz", **params)
    write_runtime_graphs()
    meta = {"model_id": args.model_id, "step": step, "hours": round(hours, 2), "config": cfg["model"]}
    (out / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    if not args.model_tables:
        params.update(fitted_tables(out, cfg))
        np.savez_compressed(out / "prior.npz", **params)
    check(model, out, calib_paths[:2], list(zip(calib_y, calib_z)))
    print(f"exported {args.model_id} (step {step}) to {out}")


def fitted_tables(folder: Path, cfg: dict) -> dict[str, np.ndarray]:
    """The exported model's y tables, and one row of z tables per quality, fitted to its own symbols
    on 48 training photos (training/tables.py): -0.72 % bits for dcv-ms2-s16 on the held-out photos
    (LOG session 17)."""
    from tables import fit_photos, fit_tables

    from pillow_dcv.models import Model

    train_dir = (ROOT / cfg["data"]["train_dir"]).resolve()
    photos = fit_photos(train_dir, cfg["run"].get("holdout_images", 0))
    print(f"fitting the y and z tables to the symbols of {len(photos)} training photos")
    return fit_tables(Model(folder), photos)


def calibration_latents(model: DCVModel, paths: list[Path]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(quality index, y, rounded z) for every photo at every quality: the calibration data."""
    out = []
    with torch.no_grad():
        for p in paths:
            img = load_image(p)
            for q in range(len(model.gain)):
                g, _ = model.gains(torch.tensor([q]))
                y = model.analyse(img) * g
                out.append((q, y, torch.round(model.h_a(y))))
    return out


def best_context(
    model: DCVModel, params: dict[str, np.ndarray], calibration: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, np.ndarray]:
    """The integer context with the input precision (CONTEXT_INPUT_BITS) that costs the fewest bits."""
    from pillow_dcv.prior import IntegerHyperSynthesis

    best, best_cost = None, math.inf
    for bits in CONTEXT_INPUT_BITS:
        context = quantise_context(model, calibration, int(params["hs_out_frac_bits"]), bits)
        if model.channel_context:
            context |= quantise_channel_context(model, calibration, int(params["hs_out_frac_bits"]), bits)
        cost = integer_prior_cost(model, IntegerHyperSynthesis({**params, **context}), calibration)
        print(f"context input {bits} bits: {cost * 100:+.2f} % estimated bits against the float model")
        if cost < best_cost:
            best, best_cost = context, cost
    return best


def integer_prior_cost(
    model: DCVModel, prior, calibration: list[tuple[torch.Tensor, torch.Tensor]], verbose: bool = False
) -> float:
    """Estimated bits of y with the integer prior's tables over those of the float model, minus 1."""
    thresholds = np.sqrt(SCALE_TABLE[:-1] * SCALE_TABLE[1:])
    bits_float, bits_integer = 0.0, 0.0
    for y, z in calibration[::3]:
        with torch.no_grad():
            _, scale, mu = model.entropy_parameters(y, model.h_s(z))
        acc = prior.hyper(z[0].numpy())
        y64 = y[0].double().numpy()
        y_sym = np.zeros(y64.shape, dtype=np.int64)
        for part, update in prior.stages(y64.shape):  # as the codec does it
            if update is not None:
                acc = update(acc, y_sym)
            mu_int, index = prior.tables(acc)
            mask = part.mask(y64.shape)
            y_sym[mask] = np.rint(y64 - mu_int)[mask]
        if verbose:
            ref_index = np.searchsorted(thresholds, scale[0].numpy(), side="right")
            print(
                f"integer prior: mu max abs error {np.abs(mu_int - mu[0].numpy()).max():.2e}, "
                f"scale index agrees on {np.mean(index == ref_index) * 100:.2f}%"
            )
        bits_float += estimated_bits(y64 - mu[0].double().numpy(), scale[0].double().numpy())
        bits_integer += estimated_bits(y64 - mu_int, SCALE_TABLE[index])
    return bits_integer / bits_float - 1


def check(model: DCVModel, out: Path, paths: list[Path], calibration: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """ONNX vs PyTorch on real images; integer prior (and context) vs the float ones."""
    import onnxruntime as ort

    from pillow_dcv.prior import IntegerHyperSynthesis

    ana = ort.InferenceSession(str(out / "analysis.onnx"), providers=["CPUExecutionProvider"])
    syn = ort.InferenceSession(str(out / "synthesis.onnx"), providers=["CPUExecutionProvider"])
    q = torch.tensor([3])
    g, ig = model.gains(q)
    for p in paths:
        x = load_image(p)
        with torch.no_grad():
            y_ref, z_ref = model.analyse(x) * g, None
            z_ref = model.h_a(y_ref)
            x_ref = model.synthesise(torch.round(y_ref) * ig)
        y, z = ana.run(None, {"x": x.numpy(), "gain": g.detach().numpy()})
        (xh,) = syn.run(None, {"y_hat": torch.round(y_ref).numpy(), "inv_gain": ig.detach().numpy()})
        err = (np.abs(y - y_ref.numpy()).max(), np.abs(z - z_ref.numpy()).max(), np.abs(xh - x_ref.numpy()).max())
        print(f"onnx vs torch max abs error on {p.name}: y {err[0]:.2e} z {err[1]:.2e} x_hat {err[2]:.2e}")
        assert max(err[0], err[1]) < 0.05 and err[2] < 0.01, err  # fp16-stored weights
    prior = IntegerHyperSynthesis(dict(np.load(out / "prior.npz")))
    cost = integer_prior_cost(model, prior, calibration, verbose=True)
    print(f"integer prior: {cost * 100:+.2f} % estimated bits against the float model")


def estimated_bits(residual: np.ndarray, scale: np.ndarray) -> float:
    from model import gaussian_likelihood

    v = torch.from_numpy(np.rint(residual))
    return float(-torch.log2(gaussian_likelihood(v, torch.from_numpy(scale)).clamp_min(1e-9)).sum())


if __name__ == "__main__":
    main()
