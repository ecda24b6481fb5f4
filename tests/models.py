"""Small ONNX models built in code for tests (graphs drawn in the docstrings)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _bn_params(rng, c, prefix):
    return [
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), f"{prefix}.gamma"),
        numpy_helper.from_array(rng.normal(0, 0.5, c).astype(np.float32), f"{prefix}.beta"),
        numpy_helper.from_array(rng.normal(0, 0.5, c).astype(np.float32), f"{prefix}.mean"),
        numpy_helper.from_array(rng.uniform(0.1, 3.0, c).astype(np.float32), f"{prefix}.var"),
    ]


def _bn_node(x, y, prefix, eps=1e-3):
    return helper.make_node(
        "BatchNormalization",
        [x, f"{prefix}.gamma", f"{prefix}.beta", f"{prefix}.mean", f"{prefix}.var"],
        [y],
        name=f"{prefix}",
        epsilon=eps,
    )


def layer_bn_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    """One weighted layer followed by BatchNormalization and Relu::

        x -> [layer] -> t -> BatchNormalization(bn) -> y -> Relu -> out

    kinds: conv, conv_nobias, conv_grouped, conv_depthwise, convT, convT_grouped,
    gemm_transB, gemm_noTransB_nobias, gemm_alpha_beta.
    """
    rng = np.random.default_rng(seed)
    inits, attrs = [], {}
    if kind.startswith("conv") and not kind.startswith("convT"):
        cin, cout = 4, 6
        groups = {"conv_grouped": 2, "conv_depthwise": 4}.get(kind, 1)
        if kind == "conv_depthwise":
            cout = 4
        x_shape = ["N", cin, 7, 7]
        w = rng.normal(0, 0.5, (cout, cin // groups, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "layer.w"))
        inputs = ["x", "layer.w"]
        if kind != "conv_nobias":
            inits.append(numpy_helper.from_array(rng.normal(0, 0.3, cout).astype(np.float32), "layer.b"))
            inputs.append("layer.b")
        node = helper.make_node("Conv", inputs, ["t"], name="layer", pads=[1, 1, 1, 1], group=groups)
        c_out = cout
    elif kind.startswith("convT"):
        cin, cout_g, groups = 4, 3, (2 if kind == "convT_grouped" else 1)
        x_shape = ["N", cin, 5, 5]
        w = rng.normal(0, 0.5, (cin, cout_g, 3, 3)).astype(np.float32)
        c_out = cout_g * groups
        inits += [
            numpy_helper.from_array(w, "layer.w"),
            numpy_helper.from_array(rng.normal(0, 0.3, c_out).astype(np.float32), "layer.b"),
        ]
        node = helper.make_node(
            "ConvTranspose", ["x", "layer.w", "layer.b"], ["t"], name="layer", group=groups, strides=[2, 2]
        )
    elif kind.startswith("gemm"):
        k, n = 8, 5
        x_shape = ["N", k]
        trans_b = kind != "gemm_noTransB_nobias"
        w = rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "layer.w"))
        inputs = ["x", "layer.w"]
        if kind != "gemm_noTransB_nobias":
            inits.append(numpy_helper.from_array(rng.normal(0, 0.3, n).astype(np.float32), "layer.b"))
            inputs.append("layer.b")
        if kind == "gemm_alpha_beta":
            attrs = {"alpha": 0.7, "beta": 1.9}
        node = helper.make_node("Gemm", inputs, ["t"], name="layer", transB=int(trans_b), **attrs)
        c_out = n
    else:
        raise ValueError(kind)
    inits += _bn_params(rng, c_out, "bn")
    nodes = [node, _bn_node("t", "y", "bn"), helper.make_node("Relu", ["y"], ["out"], name="relu")]
    graph = helper.make_graph(
        nodes,
        f"{kind}_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [f"d{i}" for i in range(len(x_shape))])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def input_for(model: onnx.ModelProto, n: int = 3, seed: int = 1) -> np.ndarray:
    dims = [d.dim_value if d.HasField("dim_value") else n for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).normal(0, 1, dims).astype(np.float32)


def shared_output_model() -> onnx.ModelProto:
    """A BN that must not be folded: the Conv output has a second consumer::

    x -> Conv(layer) -> t -> BatchNormalization(bn) -> y -> Add -> out
                        t ----------------------------------^
    """
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), "layer.w")]
    inits += _bn_params(rng, 4, "bn")
    nodes = [
        helper.make_node("Conv", ["x", "layer.w"], ["t"], name="layer"),
        _bn_node("t", "y", "bn"),
        helper.make_node("Add", ["y", "t"], ["out"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 5, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def contrib_op_model() -> onnx.ModelProto:
    """An ONNX Runtime contrib op that onnx's shape inference cannot type::

    x -> MatMul(w1) -> h -> com.microsoft.Gelu -> g -> MatMul(w2) -> y
    """
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (16, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Gelu", ["h"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "contrib",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    )


def recurrent_model(
    batch="batch", sr: bool = True, f: int = 6, h: int = 5, k: int = 3, seed: int = 0
) -> onnx.ModelProto:
    """A recurrent step with its state batched on axis 1 and a scalar sample rate (Silero VAD's inputs)::

        input [B, F] -> MatMul(W1) -> Mul(sr / 16000) -> Add(state [2, B, H]) -> Tanh -> stateN [2, B, H]
        stateN -> ReduceMean(axis 0) -> MatMul(W2) -> output [B, K]

    ``batch``: the dim B (a dim name, an int, or None for an unnamed dynamic dim);
    ``sr=False`` drops the scalar input (the Mul by 1).
    """
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (f, h)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (h, k)).astype(np.float32), "W2")
    rate = numpy_helper.from_array(np.array(16000.0, np.float32), "rate")
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["h"], name="mm1")]
    inits = [w1, w2, rate]
    if sr:
        nodes += [
            helper.make_node("Cast", ["sr"], ["srf"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Div", ["srf", "rate"], ["g"], name="div"),
            helper.make_node("Mul", ["h", "g"], ["hs"], name="scale"),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["h"], ["hs"], name="scale"))
    nodes += [
        helper.make_node("Add", ["state", "hs"], ["s"], name="add"),
        helper.make_node("Tanh", ["s"], ["stateN"], name="tanh"),
        helper.make_node("ReduceMean", ["stateN"], ["m"], name="mean", axes=[0], keepdims=0),
        helper.make_node("MatMul", ["m", "W2"], ["output"], name="mm2"),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, f]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, h]),
    ]
    if sr:
        inputs.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, k]),
        helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, batch, h]),
    ]
    graph = helper.make_graph(nodes, "recurrent", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def sequence_model(f: int = 4, k: int = 3, seed: int = 0) -> onnx.ModelProto:
    """A fixed batch of 1 and a symbolic sequence dim shared by two inputs::

    x [1, seq, F] * Unsqueeze(mask [1, seq], -1) -> MatMul(W) -> y [1, seq, K]
    """
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (f, k)).astype(np.float32), "W")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [
        helper.make_node("Unsqueeze", ["mask", "axes"], ["m"], name="unsqueeze"),
        helper.make_node("Mul", ["x", "m"], ["xm"], name="masked"),
        helper.make_node("MatMul", ["xm", "W"], ["y"], name="mm"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", f]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", k])]
    graph = helper.make_graph(nodes, "sequence", inputs, outputs, [w, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model
