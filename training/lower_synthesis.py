"""Rewrite a synthesis graph's stride-2 transposed convolutions as four phase convolutions.

onnxruntime runs ConvTranspose as one GEMM into a (cout * k * k, H * W) column buffer and a col2im that
scatters it into the output; for a 5x5 kernel that buffer is 25 values per input pixel and output
channel, written and read once. Output pixel 2u + r of a stride-2 transposed convolution only reads the
kernel taps of parity r, so each of the four output phases (ry, rx) is an ordinary convolution of the
input with exactly its taps (3x3, 3x2, 2x3, 2x2 for k = 5): the same multiply-adds, no column buffer, and
onnxruntime's direct convolution kernels. The phases are then interleaved into the output (`interleave`).

Per layer at Kodak size (2 threads, `training/LOG.md` session 25) this pays for k = 5 (13.6 -> 10.1 and
24.6 -> 16.0 ms). The 4x4 layer to 1/2 resolution (64 -> 32 until dcv-ms2-s27, 64 -> 16 since s28)
runs as fast either way (s28's shape: 34.3 against 34.8 ms per band, session 28), but without its column
buffer (30 MB for half a Kodak picture at 32 channels) a process's first decode faults ~11k fewer pages
in (session 26). The last layer, 32 -> 3, is 2.6x slower as phases (as one stacked 3x3 convolution,
+4 ms per band: session 28): with a few output channels onnxruntime's blocked (NCHWc) convolution
kernels idle, so layers with fewer than `min_outputs` output channels are kept.
The interleave is not onnxruntime's DepthToSpace, a generic 6-D transpose whose innermost axis (2)
moves ~1 GB/s here (~15-17 % of the synthesis), but a transpose of whole rows and one of (2, W) pairs:
the same values, ~10 % less synthesis time (training/LOG.md session 27).
Pure onnx + numpy: it rewrites a graph, the weights are the same numbers.

    python training/lower_synthesis.py IN.onnx OUT.onnx [--kernels 4 5] [--min-outputs 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def phase_taps(k: int, pad: int, r: int) -> list[tuple[int, int]]:
    """(input offset d, kernel tap t) pairs of output phase r, d ascending: output 2u + r of a stride-2
    transposed convolution (padding `pad`) sums input u + d times tap t."""
    return sorted(((r + pad - t) // 2, t) for t in range(k) if (r + pad - t) % 2 == 0)


def phase_weights(w: np.ndarray, pad: int) -> list[tuple[np.ndarray, list[int]]]:
    """ConvTranspose weights (Cin, Cout, k, k) -> for each phase (ry, rx) in DepthToSpace's DCR order,
    the Conv weights (Cout, Cin, a, b) and the Conv pads [top, left, bottom, right] that keep H x W."""
    k = w.shape[-1]
    out = []
    for ry in (0, 1):
        for rx in (0, 1):
            rows, cols = phase_taps(k, pad, ry), phase_taps(k, pad, rx)
            taps = w[:, :, [t for _, t in rows]][:, :, :, [t for _, t in cols]]
            pads = [-rows[0][0], -cols[0][0], rows[-1][0], cols[-1][0]]
            if min(pads) < 0:
                raise ValueError("a phase that does not read its own input pixel")
            out.append((np.ascontiguousarray(taps.transpose(1, 0, 2, 3)), pads))
    return out


def interleave(phases: list[str], output: str, channels: int) -> tuple[list, list]:
    """Nodes and int64 initializers that interleave the four phases (1, C, H, W) of a stride-2 layer, in
    DepthToSpace's DCR order (ry, rx), into `output` (1, C, 2H, 2W): what Concat + DepthToSpace compute.

    The concatenated phases (ry, rx, c, y, x) are transposed twice: whole rows of W values to
    (c, y, ry, rx, x), which onnxruntime does at memory speed, then each (rx, x) pair of rows to
    (x, rx), the only step that moves single values. Stacking the phases' rows in the Concat instead
    (one copy less) was as fast once warm but slower in a first decode (LOG session 27)."""
    from onnx import helper, numpy_helper

    def constant(name: str, values: list[int]):
        return numpy_helper.from_array(np.array(values, dtype=np.int64), f"{output}_constant_{name}")

    shapes = [constant("by_phase", [1, 4, -1, 0]), constant("as_pairs", [1, -1, 2, 0]),
              constant("two", [2, 2]), constant("batch_channels", [1, channels])]
    name = (output + "_{}").format
    nodes = [
        helper.make_node("Concat", phases, [name("phases")], axis=1),
        helper.make_node("Reshape", [name("phases"), shapes[0].name], [name("by_phase")]),  # (1, 4, C * H, W)
        helper.make_node("Transpose", [name("by_phase")], [name("rows")], perm=[0, 2, 1, 3]),  # (1, C * H, 4, W)
        helper.make_node("Reshape", [name("rows"), shapes[1].name], [name("pairs")]),  # (1, 2 * C * H, 2, W)
        helper.make_node("Transpose", [name("pairs")], [name("interleaved")], perm=[0, 1, 3, 2]),
        helper.make_node("Shape", [phases[0]], [name("phase_size")], start=2, end=4),
        helper.make_node("Mul", [name("phase_size"), shapes[2].name], [name("size")]),
        helper.make_node("Concat", [shapes[3].name, name("size")], [name("shape")], axis=0),
        helper.make_node("Reshape", [name("interleaved"), name("shape")], [output]),
    ]
    return nodes, shapes


def lower_transposed_convolutions(model, kernels: tuple[int, ...] = (4, 5), min_outputs: int = 16):
    """The onnx ModelProto with every stride-2 ConvTranspose of a kernel size in `kernels` and with at
    least `min_outputs` output channels replaced by four Convs and their interleave. Weights may
    be initializers or Casts of initializers (the fp16-stored weights of `export.store_weights_fp16`);
    the phases' weights keep that form."""
    from onnx import checker, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    casts = {n.output[0]: n for n in graph.node if n.op_type == "Cast" and n.input[0] in inits}
    nodes, dropped = [], set()
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k = list(attrs.get("kernel_shape", [0]))
        if node.op_type != "ConvTranspose" or k[0] not in kernels or k[0] != k[-1]:
            nodes.append(node)
            continue
        if list(attrs.get("strides", [1])) != [2, 2] or attrs.get("group", 1) != 1 or "output_shape" in attrs:
            raise ValueError(f"{node.name}: only stride-2, ungrouped, padded transposed convolutions")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if list(attrs.get("dilations", [1, 1])) != [1, 1] or auto_pad not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{node.name}: dilated or auto-padded transposed convolution")
        pads = list(attrs["pads"])
        expected_padding = [pads[0] * 2 - k[0] + 2] * 2  # what makes the output exactly twice the input
        if len(set(pads)) != 1 or list(attrs.get("output_padding", [0, 0])) != expected_padding:
            raise ValueError(f"{node.name}: output not exactly twice the input")
        source = node.input[1]
        cast = casts.get(source)
        stored = inits[cast.input[0] if cast is not None else source]
        w = numpy_helper.to_array(stored)
        if w.shape[1] < min_outputs:
            nodes.append(node)
            continue
        dropped.update({stored.name, source})
        outputs = []
        for n, (weights, conv_pads) in enumerate(phase_weights(w, pads[0])):
            name = f"{node.output[0]}_phase{n}"
            graph.initializer.append(numpy_helper.from_array(weights, f"{name}_w_stored"))
            if cast is not None:
                nodes.append(helper.make_node("Cast", [f"{name}_w_stored"], [f"{name}_w"], to=cast.attribute[0].i))
            else:
                graph.initializer[-1].name = f"{name}_w"
            inputs = [node.input[0], f"{name}_w"] + list(node.input[2:3])
            nodes.append(helper.make_node("Conv", inputs, [name], kernel_shape=list(weights.shape[2:]), pads=conv_pads))
            outputs.append(name)
        interleave_nodes, shapes = interleave(outputs, node.output[0], w.shape[1])
        nodes.extend(interleave_nodes)
        graph.initializer.extend(shapes)
    read = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if not (n.op_type == "Cast" and n.output[0] in dropped and n.output[0] not in read)]
    read = {i for n in nodes for i in n.input}  # without the casts of the replaced weights
    kept = [i for i in graph.initializer if i.name not in dropped or i.name in read]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    checker.check_model(model)
    return model


def main() -> None:
    import onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--kernels", type=int, nargs="+", default=[4, 5])
    parser.add_argument("--min-outputs", type=int, default=16)
    args = parser.parse_args()
    model = lower_transposed_convolutions(onnx.load(str(args.source)), tuple(args.kernels), args.min_outputs)
    onnx.save(model, str(args.target))


if __name__ == "__main__":
    main()
