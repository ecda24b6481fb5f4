"""Control flow: a top-level If with a constant condition is replaced by its taken branch
(the inlined graph computes what the If computed: onnx's ReferenceEvaluator as the oracle),
and control flow that would leave layers unquantized is refused.

The models (tests/models.py ``if_model``, ``loop_model``)::

    x -> ReduceMean -> Greater(thr) -> cond;  If(cond) then: Conv(w1, b1) -> Relu   else: Conv(w2) -> Relu
      -> y -> Sigmoid -> out
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import qaudit
from qaudit.errors import ModelError
from qaudit.pipeline.controlflow import condition_model, resolve_control_flow

from ..models import if_model, loop_model


def _x(n=6, seed=3, shift=0.0):
    return (np.random.default_rng(seed).normal(size=(n, 1, 8, 8)) + shift).astype(np.float32)


def _feeds(x):
    return lambda: ({"x": x[i : i + 1]} for i in range(len(x)))


def _copy(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


@pytest.mark.parametrize(
    ("threshold", "branch", "conv"), [(-1e9, "then_branch", "then_conv"), (1e9, "else_branch", "else_conv")]
)
def test_constant_condition_inlines_the_taken_branch(threshold, branch, conv):
    model, x = if_model(threshold), _x()
    want = ReferenceEvaluator(model).run(["out"], {"x": x})[0]
    inlined = _copy(model)
    changes = resolve_control_flow(inlined, _feeds(x))
    assert [(c.kind, c.target) for c in changes] == [("inline_if", "switch")]
    assert f"replaced by its {branch} (2 nodes)" in changes[0].detail
    assert f"'cond' was {'true' if threshold < 0 else 'false'} on all 6 calibration and evaluation samples" in (
        changes[0].detail
    )
    ops = [(n.op_type, n.name) for n in inlined.graph.node]
    # the branch's nodes replace the If; the condition's computation is gone with it
    assert ops == [("Conv", conv), ("Relu", conv.replace("conv", "relu")), ("Sigmoid", "sigmoid")]
    assert inlined.graph.node[1].output[0] == "y"  # the branch output took the If's output name
    assert {t.name for t in inlined.graph.initializer} == ({"w1", "b1"} if threshold < 0 else {"w2"})
    onnx.checker.check_model(inlined, full_check=True)
    np.testing.assert_array_equal(ReferenceEvaluator(inlined).run(["out"], {"x": x})[0], want)


def test_nested_if_is_inlined_on_the_next_pass():
    model, x = if_model(-1e9, nested=True), _x()
    want = ReferenceEvaluator(model).run(["out"], {"x": x})[0]
    changes = resolve_control_flow(model, _feeds(x))
    assert [c.target for c in changes] == ["switch", "inner_if"]
    assert not any(n.op_type == "If" for n in model.graph.node)
    assert [n.name for n in model.graph.node] == ["then_conv", "then_relu", "sigmoid"]
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(["out"], {"x": x})[0], want)


def test_condition_model_computes_only_the_condition():
    m = condition_model(if_model(), ["cond"])
    assert [n.op_type for n in m.graph.node] == ["ReduceMean", "Greater", "Identity"]
    assert {t.name for t in m.graph.initializer} == {"thr"}  # no weights
    got = ReferenceEvaluator(m).run(None, {"x": _x(1)})[0]
    assert got.dtype == np.bool_ and bool(got) is True


def test_branch_output_read_from_the_main_graph_and_colliding_names():
    """The taken branch returns a main-graph tensor and defines a name the main graph uses."""
    then = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["z"], name="sigmoid"),  # 'z' and 'sigmoid' exist outside
            helper.make_node("Conv", ["x", "w"], ["c2"], name="inner_conv"),  # a layer inside
        ],
        "then",
        [],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],  # passes x through
    )
    els = helper.make_graph([], "else", [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("If", ["go"], ["y"], name="switch", then_branch=then, else_branch=els),
        helper.make_node("Sigmoid", ["y"], ["z"], name="sigmoid"),
        helper.make_node("Add", ["z", "c"], ["out"], name="add"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [w, numpy_helper.from_array(np.array(True), "go")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = _x(2)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    changes = resolve_control_flow(model, None)  # a constant condition needs no data
    assert "its condition 'go' is a constant true" in changes[0].detail
    names = [n.name for n in model.graph.node]
    assert names == ["conv", "switch/sigmoid", "inner_conv", "switch/y", "sigmoid", "add"]
    assert model.graph.node[1].output[0] == "z_1"  # renamed: 'z' is the main graph's
    assert list(model.graph.node[3].input) == ["x"] and list(model.graph.node[3].output) == ["y"]
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], want)


def test_varying_condition_is_refused_naming_the_node():
    x = np.concatenate([_x(3, shift=2.0), _x(2, seed=4, shift=-2.0)])
    with pytest.raises(ModelError, match=r"If node 'switch' holds layers in its branches \(2 Conv\)") as e:
        resolve_control_flow(if_model(0.0), _feeds(x))
    assert "true on 3, false on 2 of 5 samples" in str(e.value)


def test_loop_holding_a_layer_is_refused():
    with pytest.raises(ModelError, match=r"Loop node 'loop' holds layers in its body \(1 Conv\)"):
        resolve_control_flow(loop_model(), _feeds(_x()))


def test_control_flow_without_layers_is_left_alone():
    model = if_model()
    for g in (model.graph.node[2].attribute[0].g, model.graph.node[2].attribute[1].g):
        g.node[0].op_type, g.node[0].input[:] = "Neg", ["x"]  # no layer in either branch
        del g.node[0].attribute[:]
    before = model.SerializeToString()
    assert resolve_control_flow(model, None) == []
    assert model.SerializeToString() == before


def _flat_then_model():
    """What the If computes when its condition is true, written without the If."""
    m = if_model(-1e9)
    then = next(a.g for a in m.graph.node[2].attribute if a.name == "then_branch")
    nodes = list(then.node) + [m.graph.node[3]]
    nodes[1].output[0] = "y"
    inits = [t for t in m.graph.initializer if t.name == "w1"] + list(then.initializer)
    g = helper.make_graph(nodes, "flat", list(m.graph.input), list(m.graph.output), inits)
    return helper.make_model(g, opset_imports=list(m.opset_import))


def test_audit_of_an_inlined_if_equals_the_audit_of_the_flat_model(tmp_path):
    """The report of the If model measures the branch's layers exactly as a model without the If."""
    onnx.save(if_model(-1e9), tmp_path / "if.onnx")
    onnx.save(_flat_then_model(), tmp_path / "flat.onnx")
    x = _x(16)
    got = qaudit.audit(tmp_path / "if.onnx", calib=x, batch_size=4)
    want = qaudit.audit(tmp_path / "flat.onnx", calib=x, batch_size=4)
    assert [r.name for r in got.layers] == ["x", "then_conv", "sigmoid"]
    assert got.layers == want.layers and got.outputs == want.outputs and got.unmatched == want.unmatched
    (change,) = got.settings["graph_changes"]
    assert change["kind"] == "inline_if" and change["target"] == "switch"
    assert change["detail"] in got.notes
    assert got.layers[1].sqnr_db is not None and np.isfinite(got.layers[1].sqnr_db)


def _batch_size_if_model():
    """``if_model`` whose condition is ``x.shape[0] == 1``: true for every single sample,
    false for a batch::

    x -> Shape -> Gather(0) -> Equal(1) -> cond -> If(then: Conv(w1, b1), else: Conv(w2)) -> ...
    """
    m = if_model()
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Equal", ["n", "one"], ["cond"], name="equal"),
    ] + list(m.graph.node[2:])
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(
        [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one")]
    )
    onnx.checker.check_model(m, full_check=True)
    return m


def test_a_condition_on_the_batch_size_is_caught_by_the_output_check(tmp_path):
    """Evaluated one sample at a time the condition is always true; on the audit's batches
    the user's model takes the else-branch: the prepared graph's outputs differ from the
    user's model on the first calibration batches, and the audit stops saying why."""
    from qaudit.errors import FoldingError

    onnx.save(_batch_size_if_model(), tmp_path / "m.onnx")
    x = _x(8)
    with pytest.raises(FoldingError) as e:
        qaudit.audit(tmp_path / "m.onnx", calib=x, batch_size=4)
    msg = str(e.value)
    assert msg.startswith("inlining If 'switch' changed output 'out' by ")
    assert "evaluated one sample at a time and the audit runs batches of 4: try --batch-size 1" in msg
    report = qaudit.audit(tmp_path / "m.onnx", calib=x, batch_size=1)  # as the condition was evaluated
    assert report.folding["check_samples"] == 8 and report.folding["check"]["out"]["max_abs_diff"] == 0.0
    assert report.settings["graph_changes"][0]["target"] == "switch"


def _relu_read_by_an_if():
    """x -> Conv -> Relu -> r; an If (no layers, so kept) whose branches read r from the
    outer scope: y = -r (then) or r (else); the condition max(x) > -1e9 is always true."""
    w = numpy_helper.from_array(np.random.default_rng(5).normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    lo = numpy_helper.from_array(np.array(-1e9, np.float32), "lo")
    then = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["yt"])],
        "then",
        [],
        [helper.make_tensor_value_info("yt", TensorProto.FLOAT, ["N", 4, 8, 8])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["ye"])],
        "else",
        [],
        [helper.make_tensor_value_info("ye", TensorProto.FLOAT, ["N", 4, 8, 8])],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMax", ["x"], ["m"], name="max", keepdims=0),
        helper.make_node("Greater", ["m", "lo"], ["cond"], name="greater"),
        helper.make_node("If", ["cond"], ["y"], name="switch", then_branch=then, else_branch=other),
    ]
    g = helper.make_graph(
        nodes,
        "relu_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w, lo],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_a_subgraph_reads_the_quantized_tensor_with_its_relu(tmp_path, fmt):
    """ORT's quantizer rewires only main-graph consumers: without qaudit's Identity, the QDQ
    If read the Conv's output before its QuantizeLinear, without the removed Relu (silero_vad.onnx)."""
    import onnxruntime as ort

    onnx.save(_relu_read_by_an_if(), tmp_path / "m.onnx")
    x = _x(16)
    r = qaudit.audit(tmp_path / "m.onnx", calib=x, batch_size=4, format=fmt, output_model=tmp_path / "q.onnx")
    (change,) = r.settings["graph_changes"]
    assert change["kind"] == "route_outer_reads" and change["target"] == "switch"
    (y,) = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.max() <= 0, "the If read a tensor without its Relu"
    assert (y < 0).mean() > 0.2
