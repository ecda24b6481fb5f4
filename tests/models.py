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


def _model_of(nodes, name, y_shape, inits, y="y", full_check=True, opset=OPSET) -> onnx.ModelProto:
    """A checked model of ``nodes`` from input ``x`` [N,1,8,8] to output ``y``."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=full_check)
    return model


def _conv_w(rng, cout, cin, name):
    return numpy_helper.from_array(rng.normal(0, 0.5, (cout, cin, 3, 3)).astype(np.float32), name)


def shared_bias_model(opset: int = OPSET, seed: int = 7) -> onnx.ModelProto:
    """Two Convs reading one bias ``b``, and an activation named ``b0``: the name ONNX
    Runtime 1.32's QDQ quantizer gives its own copy of ``b``::

        x [N,1,8,8] -> Conv(conv1: w1, b) -> b0 -> Sigmoid -> s -> Conv(conv2: w2, b) -> y
    """
    rng = np.random.default_rng(seed)
    inits = [_conv_w(rng, 4, 1, "w1"), _conv_w(rng, 4, 4, "w2")]
    inits.append(numpy_helper.from_array(rng.normal(0, 0.5, 4).astype(np.float32), "b"))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b"], ["b0"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["b0"], ["s"], name="sigmoid"),
        helper.make_node("Conv", ["s", "w2", "b"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    return _model_of(nodes, "shared_bias", ["N", 4, 8, 8], inits, opset=opset)


def if_model(threshold: float = -1e9, nested: bool = False, seed: int = 8) -> onnx.ModelProto:
    """The whole network inside an If on a condition computed from the input (true
    for every input when ``threshold`` is very negative, varying around 0)::

        x [N,1,8,8] -> ReduceMean -> m -> Greater(m, thr) -> cond
        If(cond) then: Conv(then_conv: w1 from the main graph, b1 in the branch) -> t1 -> Relu -> t_out
                 else: Conv(else_conv: w2 in the branch) -> t1 -> Relu -> e_out    (t1 in both branches)
        -> y -> Sigmoid -> out

    ``nested``: the then-branch's Conv sits inside another If on the same condition.
    """
    rng = np.random.default_rng(seed)
    w1, w2 = _conv_w(rng, 4, 1, "w1"), _conv_w(rng, 4, 1, "w2")
    b1 = numpy_helper.from_array(rng.normal(0, 0.5, 4).astype(np.float32), "b1")
    out = helper.make_tensor_value_info

    def conv_branch(name, w, b, out_name, inits):
        nodes = [
            helper.make_node("Conv", ["x", w] + ([b] if b else []), ["t1"], name=f"{name}_conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["t1"], [out_name], name=f"{name}_relu"),
        ]
        return helper.make_graph(nodes, name, [], [out(out_name, TensorProto.FLOAT, None)], inits)

    then = conv_branch("then", "w1", "b1", "t_out", [b1])
    if nested:
        inner = helper.make_node(
            "If",
            ["cond"],
            ["t_out"],
            name="inner_if",
            then_branch=then,
            else_branch=conv_branch("inner_else", "w2", None, "ie_out", []),
        )
        then = helper.make_graph([inner], "then", [], [out("t_out", TensorProto.FLOAT, None)])
    els = conv_branch("else", "w2", None, "e_out", [w2])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
        helper.make_node("Greater", ["m", "thr"], ["cond"], name="greater"),
        helper.make_node("If", ["cond"], ["y"], name="switch", then_branch=then, else_branch=els),
        helper.make_node("Sigmoid", ["y"], ["out"], name="sigmoid"),
    ]
    thr = numpy_helper.from_array(np.array(threshold, np.float32), "thr")
    inits = [w1, thr] + ([w2] if nested else [])
    return _model_of(nodes, "if_model", ["N", 4, 8, 8], inits, y="out")


def loop_model(seed: int = 9) -> onnx.ModelProto:
    """A Loop whose body holds a Conv (applied twice)::

    x [N,1,8,8] -> Loop(trip count 2, carried h = x; body: Conv(w, pads 1) -> h) -> y
    """
    rng = np.random.default_rng(seed)
    out = helper.make_tensor_value_info
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            helper.make_node("Conv", ["h_in", "w"], ["h_out"], name="body_conv", pads=[1, 1, 1, 1]),
        ],
        "body",
        [out("i", TensorProto.INT64, []), out("cond_in", TensorProto.BOOL, []), out("h_in", TensorProto.FLOAT, None)],
        [out("cond_out", TensorProto.BOOL, []), out("h_out", TensorProto.FLOAT, None)],
    )
    inits = [
        _conv_w(rng, 1, 1, "w"),
        numpy_helper.from_array(np.array(2, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "go"),
    ]
    nodes = [helper.make_node("Loop", ["trips", "go", "x"], ["y"], name="loop", body=body)]
    return _model_of(nodes, "loop_model", ["N", 1, 8, 8], inits, full_check=False)
