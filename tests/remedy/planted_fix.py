"""Synthetic models with one planted quantization problem each (for the fix search's tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def outlier_channel_model(seed: int = 0) -> onnx.ModelProto:
    """x [N,4,8,8] >= 0 -> conv1 (+Relu) -> conv2 -> y.

    conv1's output channel 0 has weights near -50 on a non-negative input: its output is
    always negative and the Relu zeroes it, but per-tensor weights share that channel's range,
    which leaves the other channels (weights ~ N(0, 0.5)) a handful of levels. Per-channel
    weights for conv1 (or conv1's weight at 16 bits) is the planted fix.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 4, 3, 3)).astype(np.float32)
    w1[0] = rng.uniform(-50, -40, (4, 3, 3))
    w2 = rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier_channel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def float_only_model(seed: int = 0) -> onnx.ModelProto:
    """a [N,16] -> huge (Gemm, weights ~ N(0, 3000)) -> Sin -> y1;  b [N,16] -> small (Gemm) -> y2.

    Sin (not quantized) reads huge's output: any quantization of huge's input, weight or output,
    even at 16 bits, moves its argument by radians. Only huge in float passes; small is fine as it is.
    """
    rng = np.random.default_rng(seed)
    wh = (rng.normal(0, 1, (16, 16)) * 3000).astype(np.float32)
    ws = rng.normal(0, 0.5, (16, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["a", "wh"], ["z"], name="huge"),
        helper.make_node("Sin", ["z"], ["y1"], name="sin"),
        helper.make_node("Gemm", ["b", "ws"], ["y2"], name="small"),
    ]
    graph = helper.make_graph(
        nodes,
        "float_only",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 16]),
        ],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 8]),
        ],
        [numpy_helper.from_array(wh, "wh"), numpy_helper.from_array(ws, "ws")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def write_data(model: onnx.ModelProto, folder: Path, n: int, seed: int) -> Path:
    """``n`` samples for every input of ``model`` in ``folder`` (one .npz), non-negative for ``x``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i in model.graph.input:
        shape = [n] + [d.dim_value for d in i.type.tensor_type.shape.dim[1:]]
        arrays[i.name] = (rng.uniform(0, 1, shape) if i.name == "x" else rng.normal(0, 1, shape)).astype(np.float32)
    np.savez(folder / "data.npz", **arrays)
    return folder


def softmax_opset12_model(seed: int = 0) -> onnx.ModelProto:
    """x [N,4,8] -> mm (MatMul) -> sm (Softmax, opset 12's default axis 1 on a rank-3 tensor) -> mm2 -> y.

    16-bit Q/DQ needs opset 21, and ONNX's Softmax 12 -> 13 adapter renames the Softmax's output
    ``s`` to ``s_intermediate`` (a Reshape restores ``s``): ORT's quantizer, upgrading the graph itself,
    then sets the range of a tensor its calibration cache lacks (docs/ort-quirks.md).
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (8, 8)).astype(np.float32)
    w2 = rng.normal(0, 1, (8, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Softmax", ["m"], ["s"], name="sm"),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "softmax12",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def wide_input_model(seed: int = 0) -> onnx.ModelProto:
    """a [N,16] -> gemm (weights ~ N(0, 0.5)) -> y.

    The graph input's own 8-bit quantization is a good share of the output's error: a target above
    what 8 bits give the input needs the input at 16 bits (or the Gemm in float, which costs more).
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "w"], ["y"], name="gemm")],
        "wide_input",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model
