"""Synthetic models, each with one planted quantization problem (graphs drawn in the docstrings)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
C = 16


def _model(nodes, inits, name) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _w(rng, *shape, std=0.3):
    return rng.normal(0, std, shape).astype(np.float32)


def _head(rng, inp):
    """inp [N, C, 8, 8] -> GlobalAveragePool -> Flatten -> Gemm(head) -> y [N, 4]"""
    nodes = [
        helper.make_node("GlobalAveragePool", [inp], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "head.w", "head.b"], ["y"], name="head", transB=1),
    ]
    inits = [numpy_helper.from_array(_w(rng, 4, C), "head.w"), numpy_helper.from_array(_w(rng, 4), "head.b")]
    return nodes, inits


def _convs(rng, bias1=None, bn=None, depthwise1=False, skip=False):
    """x -> Conv(conv1) [-> BatchNormalization(bn1)] -> Relu(relu1) -> a -> Conv(conv2) -> Relu(relu2) -> b -> head

    ``skip``: conv1's output is also added to ``b`` (``s = Add(b, c1) -> head``), so it has two readers
    and ORT's quantizer keeps ``relu1`` as a node of its own (it removes a Relu only into a one-reader input)."""
    w1 = _w(rng, C, 1 if depthwise1 else C, 3, 3, std=0.5 if depthwise1 else 0.3)
    b1 = np.zeros(C, np.float32) if bias1 is None else bias1
    inits = [
        numpy_helper.from_array(w1, "conv1.w"),
        numpy_helper.from_array(b1, "conv1.b"),
        numpy_helper.from_array(_w(rng, C, C, 3, 3, std=0.2), "conv2.w"),
        numpy_helper.from_array(_w(rng, C, std=0.1), "conv2.b"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1], group=C if depthwise1 else 1
        )
    ]
    if bn is not None:
        gamma, beta, mean, var = bn
        inits += [
            numpy_helper.from_array(gamma, "bn1.gamma"),
            numpy_helper.from_array(beta, "bn1.beta"),
            numpy_helper.from_array(mean, "bn1.mean"),
            numpy_helper.from_array(var, "bn1.var"),
        ]
        nodes.append(
            helper.make_node(
                "BatchNormalization", ["c1", "bn1.gamma", "bn1.beta", "bn1.mean", "bn1.var"], ["n1"], name="bn1"
            )
        )
    nodes += [
        helper.make_node("Relu", ["n1" if bn is not None else "c1"], ["a"], name="relu1"),
        helper.make_node("Conv", ["a", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["b"], name="relu2"),
    ]
    if skip:
        nodes.append(helper.make_node("Add", ["b", "c1"], ["s"], name="skip"))
    head_nodes, head_inits = _head(rng, "s" if skip else "b")
    return nodes + head_nodes, inits + head_inits


def healthy(seed: int = 0) -> onnx.ModelProto:
    """The shared graph of every planted model, with no problem planted."""
    rng = np.random.default_rng(seed)
    return _model(*_convs(rng), "healthy")


def outlier_channel(seed: int = 0, offset: float = 150.0) -> onnx.ModelProto:
    """conv1's output channel 0 sits ``offset`` above the others (a bias): one channel sets the range of ``a``."""
    rng = np.random.default_rng(seed)
    bias = np.zeros(C, np.float32)
    bias[0] = offset
    return _model(*_convs(rng, bias1=bias), "outlier_channel")


def bn_inflated_depthwise(seed: int = 0, gain: float = 60.0) -> onnx.ModelProto:
    """conv1 is depthwise; the BatchNormalization after it scales channel 0 by ``gain`` and
    every other by about 1, so the folded weight's channel 0 is ``gain`` times the others'.
    Input channel 0 is ``1 / gain`` of the others (see :func:`inputs`), so the activation is not."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(C, np.float32)
    var = np.ones(C, np.float32)
    var[0] = 1.0 / gain**2
    return _model(
        *_convs(rng, depthwise1=True, bn=(gamma, np.zeros(C, np.float32), np.zeros(C, np.float32), var)), "bn"
    )


def one_sided(seed: int = 0) -> onnx.ModelProto:
    """The healthy graph with conv1's output also added to conv2's (``skip``): ``relu1`` stays a node,
    so its output ``a`` (all values >= 0) can be quantized on a symmetric grid by an override."""
    rng = np.random.default_rng(seed)
    return _model(*_convs(rng, skip=True), "one_sided")


def inputs(n: int = 64, seed: int = 1, small_channel: float | None = None) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 1, (n, C, 8, 8)).astype(np.float32)
    if small_channel is not None:
        x[:, 0] *= np.float32(small_channel)
    return x
