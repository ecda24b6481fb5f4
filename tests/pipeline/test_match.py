"""Every output of a multi-output node gets its row or its reason, and the audit checks that
nothing the quantized graph quantizes is missing from the report (issue 16, item 1)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qaudit
from qaudit.cli.main import main
from qaudit.pipeline import audit as audit_module
from qaudit.pipeline.match import Matching
from tests.models import OPSET

_RNG = np.random.default_rng(11)


def _w(shape, name):
    return numpy_helper.from_array(_RNG.normal(0, 0.4, shape).astype(np.float32), name)


def _conv(name, x, y, cin, cout, inits):
    inits.append(_w((cout, cin, 3, 3), f"{name}.w"))
    return helper.make_node("Conv", [x, f"{name}.w"], [y], name=name, pads=[1, 1, 1, 1])


def _model(nodes, inits, x_shape, outputs, extra_outputs=()):
    graph = helper.make_graph(
        nodes,
        "multi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        + [helper.make_tensor_value_info(o, TensorProto.INT64, None) for o in extra_outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return onnx.shape_inference.infer_shapes(model)


def split_model(n_out):
    """x -> Conv(c0) -> c -> Split -> s0..s{n-1}; each s_i -> Conv(c{i+1}) -> k_i; k_0 + s_{n-1} + k_1 + ... -> a"""
    inits, outs = [], [f"s{i}" for i in range(n_out)]
    nodes = [_conv("c0", "x", "c", 2, 2 * n_out, inits), helper.make_node("Split", ["c"], outs, name="split", axis=1)]
    nodes += [_conv(f"c{i + 1}", o, f"k{i}", 2, 2, inits) for i, o in enumerate(outs)]
    nodes.append(helper.make_node("Add", ["k0", outs[-1]], ["a0"], name="add0"))
    for i in range(1, n_out):
        nodes.append(helper.make_node("Add", [f"a{i - 1}", f"k{i}"], [f"a{i}"], name=f"add{i}"))
    return _model(nodes, inits, ["N", 2, 6, 6], [f"a{n_out - 1}"]), {"split": outs}


def topk_model():
    """x -> Conv -> c -> Flatten -> f -> TopK(k=8) -> (v, idx); v -> MatMul -> y; idx is an output"""
    inits = [_w((8, 4), "fc.w"), numpy_helper.from_array(np.array([8], np.int64), "k")]
    nodes = [
        _conv("c0", "x", "c", 2, 4, inits),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("TopK", ["f", "k"], ["v", "idx"], name="topk"),
        helper.make_node("MatMul", ["v", "fc.w"], ["y"], name="fc"),
    ]
    return _model(nodes, inits, ["N", 2, 4, 4], ["y"], ["idx"]), {"topk": ["v"]}


def recurrent_model(op):
    """x [T, N, 6] -> LSTM/GRU(hidden 5) -> Y, Y_h (, Y_c); each -> MatMul(fc_*) -> out_*"""
    gates = 4 if op == "LSTM" else 3
    inits = [_w((1, gates * 5, 6), "rnn.W"), _w((1, gates * 5, 5), "rnn.R")]
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    nodes = [helper.make_node(op, ["x", "rnn.W", "rnn.R"], outs, name="rnn", hidden_size=5)]
    for o in outs:
        inits.append(_w((5, 3), f"fc_{o}.w"))
        nodes.append(helper.make_node("MatMul", [o, f"fc_{o}.w"], [f"out_{o}"], name=f"fc_{o}"))
    return _model(nodes, inits, [4, "N", 6], [f"out_{o}" for o in outs]), {"rnn": outs}


def maxpool_model():
    """x -> Conv -> c -> MaxPool -> (p, idx); p -> Conv -> y; idx is an output"""
    inits = []
    nodes = [
        _conv("c0", "x", "c", 2, 4, inits),
        helper.make_node("MaxPool", ["c"], ["p", "idx"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        _conv("c1", "p", "y", 4, 3, inits),
    ]
    return _model(nodes, inits, ["N", 2, 6, 6], ["y"], ["idx"]), {"pool": ["p"]}


def renamed(model, multi, names):
    """``model`` with tensors renamed: user names that look like the quantizer's suffixes."""
    for node in model.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for vi in list(model.graph.value_info) + list(model.graph.output):
        vi.name = names.get(vi.name, vi.name)
    return model, {k: [names.get(o, o) for o in v] for k, v in multi.items()}


MODELS = {
    "split2": lambda: split_model(2),
    # tensors named like quantizer output: "c_quantized" (a QDQ input is never stripped), "s0quantized"
    "split2-names": lambda: renamed(*split_model(2), {"c": "c_quantized", "s0": "s0quantized", "k1": "k1_quantized"}),
    "split3": lambda: split_model(3),
    "topk": topk_model,
    "lstm": lambda: recurrent_model("LSTM"),
    "gru": lambda: recurrent_model("GRU"),
    "maxpool": maxpool_model,
}


def _count_quantized(qmodel):
    """Independently of qaudit: the float tensors the quantized graph quantizes, by its node names."""
    inits = {t.name for t in qmodel.graph.initializer}
    names = set()
    for n in qmodel.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            names.add(n.input[0].removesuffix("_QuantizeLinear_Input"))
        elif n.op_type.startswith("QLinear") or n.op_type == "QGemm":
            names.add(n.output[0].removesuffix("_quantized"))
    return names


def _shape(model):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else 6 for d in dims]


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_output_of_a_multi_output_node_has_its_row_or_reason(tmp_path, name, fmt):
    model, multi = MODELS[name]()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(0).normal(0, 1, _shape(model)).astype(np.float32)
    qpath = tmp_path / "q.onnx"
    report = qaudit.audit(path, x, output_model=qpath, format=fmt, isolated=False)
    rows = [r.tensor for r in report.layers if r.tensor]
    unmatched = {u.tensor: u for u in report.unmatched}
    assert len(rows) == len(set(rows)) and not set(rows) & set(unmatched)
    for node, outs in multi.items():
        for o in outs:  # every float output: a row that measures it, or an entry with its reason
            assert (o in rows) != (o in unmatched), (node, o)
            if o in unmatched:
                assert unmatched[o].kind and unmatched[o].reason
            else:
                row = next(r for r in report.layers if r.tensor == o)
                assert row.sqnr_db is not None and row.quant_tensor
    quantized = _count_quantized(onnx.load(qpath))
    assert quantized, "the test model must be quantized"
    assert quantized <= set(rows) | set(unmatched)
    # what the quantized graph holds in integers is measured (a Relu fused into a QLinearConv aside)
    assert all(q in rows or unmatched[q].kind == "fused" for q in quantized), sorted(quantized - set(rows))
    assert len(quantized) == len(quantized & set(rows)) + len(quantized & set(unmatched))


def test_a_dropped_tensor_is_an_internal_error(tmp_path, monkeypatch, capsys):
    """The invariant fires when the matcher loses one: exit 3 naming the tensor."""
    model, _ = split_model(2)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(0, 1, (4, 2, 6, 6)).astype(np.float32))
    real = audit_module.match

    def dropping(*args, **kwargs):
        m = real(*args, **kwargs)
        twins = {k: v for k, v in m.twins.items() if k != "s1"}
        return Matching(twins, m.unmatched, m.fused_into, m.quantized)

    monkeypatch.setattr(audit_module, "match", dropping)
    assert main([str(path), "--calib", str(tmp_path / "calib.npy")]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "no row and no unmatched entry: s1" in err


def _relu_after_unsqueeze():
    """x [N, 4, 8] -> Mul (signed values) -> Unsqueeze -> Relu -> Conv: Silero's decoder in small."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.normal(size=(1, 4, 8)).astype(np.float32), "k"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
        numpy_helper.from_array(rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["m"], name="mul"),
        helper.make_node("Unsqueeze", ["m", "axes"], ["u"], name="unsqueeze"),
        helper.make_node("Relu", ["u"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w"], ["y"], name="conv"),
    ]
    g = helper.make_graph(
        nodes,
        "relu_unsqueeze",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 1, 8])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_a_relu_the_quantizer_drops_without_applying_it_is_noted(tmp_path, fmt):
    """QOperator removes the Relu after an Unsqueeze that keeps the Mul's signed encoding
    (docs/ort-quirks.md #46): the integers the Conv reads hold negative values, which the
    report says; QDQ quantizes the Unsqueeze output with the Relu's range (no note)."""
    import onnxruntime as ort

    onnx.save(_relu_after_unsqueeze(), tmp_path / "m.onnx")
    x = np.random.default_rng(8).normal(size=(16, 4, 8)).astype(np.float32)
    r = qaudit.audit(tmp_path / "m.onnx", calib=x, batch_size=4, format=fmt, output_model=tmp_path / "q.onnx")
    notes = [n for n in r.notes if "does not apply this Relu" in n]
    q = onnx.load(str(tmp_path / "q.onnx"))
    # independently: the integers the Conv reads, and the zero point it is given
    conv = next(
        n
        for n in q.graph.node
        if n.op_type in ("QLinearConv", "DequantizeLinear") and n.input[0].startswith(("u", "r"))
    )
    zp = next(numpy_helper.to_array(t) for t in q.graph.initializer if t.name == conv.input[2])
    q.graph.output.append(helper.make_tensor_value_info(conv.input[0], TensorProto.UINT8, None))
    ints = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [conv.input[0]], {"x": x}
    )[0]
    below = float(np.mean(ints < zp))
    if fmt == "qoperator":
        assert below > 0.2 and len(notes) == 1 and "'relu'" in notes[0], (below, r.notes)
    else:
        assert below == 0 and not notes, (below, r.notes)
