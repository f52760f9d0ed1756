"""The export's rewrite of stride-2 transposed convolutions into four phase convolutions (onnx + numpy)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from lower_synthesis import interleave, lower_transposed_convolutions  # noqa: E402


def transposed_convolution_graph(w: np.ndarray, b: np.ndarray, pad: int, output_padding: int, fp16: bool):
    """x (1, Cin, H, W) -> ConvTranspose (stride 2) -> y, its weights stored as float32 or as fp16
    behind a Cast (as the export stores them)."""
    nodes, stored = [], numpy_helper.from_array(w.astype(np.float16 if fp16 else np.float32), "w_stored")
    if fp16:
        nodes.append(helper.make_node("Cast", ["w_stored"], ["w"], to=TensorProto.FLOAT))
    else:
        stored.name = "w"
    nodes.append(
        helper.make_node(
            "ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=list(w.shape[2:]), strides=[2, 2],
            pads=[pad] * 4, output_padding=[output_padding] * 2,
        )
    )
    channels_in, channels_out = w.shape[:2]
    graph = helper.make_graph(
        nodes, "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels_in, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels_out, None, None])],
        [stored, numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize(("k", "pad", "output_padding"), [(5, 2, 1), (4, 1, 0), (3, 1, 1)])
def test_phase_convolutions_equal_the_transposed_convolution(k: int, pad: int, output_padding: int, fp16: bool) -> None:
    """Each output phase of the rewrite is the transposed convolution's, at every pixel including the
    borders (an odd-sized input), within float32 rounding; no ConvTranspose is left."""
    rng = np.random.default_rng(k)
    w = rng.normal(size=(6, 5, k, k)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(1, 6, 7, 9)).astype(np.float32)
    reference = transposed_convolution_graph(w, b, pad, output_padding, fp16)
    graph = transposed_convolution_graph(w, b, pad, output_padding, fp16)
    lowered = lower_transposed_convolutions(graph, (k,), min_outputs=5)
    ops = [n.op_type for n in lowered.graph.node]
    assert ops.count("Conv") == 4 and "ConvTranspose" not in ops and "DepthToSpace" not in ops
    expected, got = run(reference, x), run(lowered, x)
    assert got.shape == expected.shape == (1, 5, 14, 18)
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
    # the replaced weights are gone: the file keeps one copy of them
    stored = {f"y_phase{n}_w" + ("_stored" if fp16 else "") for n in range(4)}
    weights = {i.name for i in lowered.graph.initializer if i.data_type != TensorProto.INT64}  # not the shapes
    assert weights == stored | {"b"}


@pytest.mark.parametrize(("height", "width"), [(7, 9), (1, 1), (4, 6)])
def test_the_interleave_is_depth_to_space(height: int, width: int) -> None:
    """The phases' interleave gives DepthToSpace's values to the bit, in its (ry, rx) order."""
    channels = 5
    phases = [f"p{n}" for n in range(4)]
    inputs = [helper.make_tensor_value_info(p, TensorProto.FLOAT, [1, channels, None, None]) for p in phases]
    output = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, None, None])]
    nodes, shapes = interleave(phases, "y", channels)
    ours = helper.make_graph(nodes, "interleave", inputs, output, shapes)
    reference = helper.make_graph(
        [helper.make_node("Concat", phases, ["stacked"], axis=1),
         helper.make_node("DepthToSpace", ["stacked"], ["y"], blocksize=2, mode="DCR")],
        "depth_to_space", inputs, output,
    )
    rng = np.random.default_rng(height)
    feed = {p: rng.normal(size=(1, channels, height, width)).astype(np.float32) for p in phases}
    got, expected = (
        ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, feed)[0]
        for g in (ours, reference)
    )
    assert got.shape == (1, channels, 2 * height, 2 * width)
    np.testing.assert_array_equal(got, expected)


def test_other_kernel_sizes_are_left_as_they_are() -> None:
    w, b = np.ones((2, 3, 4, 4), np.float32), np.zeros(3, np.float32)
    model = lower_transposed_convolutions(transposed_convolution_graph(w, b, 1, 0, fp16=False), (5,), min_outputs=1)
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]


def test_layers_with_few_output_channels_are_left_as_they_are() -> None:
    """The synthesis' last layer (3 output channels) stays a ConvTranspose; 16 channels are lowered."""
    for outputs, lowered in ((3, False), (15, False), (16, True)):
        w, b = np.ones((2, outputs, 4, 4), np.float32), np.zeros(outputs, np.float32)
        model = lower_transposed_convolutions(transposed_convolution_graph(w, b, 1, 0, fp16=True))
        assert ("ConvTranspose" not in [n.op_type for n in model.graph.node]) == lowered


def test_a_transposed_convolution_of_another_output_size_is_refused() -> None:
    w, b = np.ones((2, 3, 5, 5), np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="twice"):
        lower_transposed_convolutions(transposed_convolution_graph(w, b, 2, 0, fp16=False), (5,))


def test_the_shipped_synthesis_keeps_only_its_last_transposed_convolution() -> None:
    """The bundled model was exported through the rewrite (training/export.py): every stride-2 layer
    but the last (3 outputs) runs as phase convolutions, interleaved without DepthToSpace."""
    from pillow_dcv.models import get_model

    graph = onnx.load(str(get_model().folder / "synthesis.onnx")).graph
    assert [n.output[0] for n in graph.node if n.op_type == "ConvTranspose"] == ["x_hat"]
    assert sum(n.op_type == "Conv" and n.output[0].endswith(("_phase0", "_phase3")) for n in graph.node) == 6
    ops = [n.op_type for n in graph.node]
    assert "DepthToSpace" not in ops and ops.count("Transpose") == 6  # the phases' interleave (interleave())
