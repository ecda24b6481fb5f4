"""The lockstep runner (order, bounded overlap, errors) and the instrumented quantized graph."""

import collections
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qaudit
from qaudit.errors import DataError
from qaudit.pipeline.audit import prepare
from qaudit.pipeline.capture import instrumented_quantized, isolated_model, ort_converts_int8_qdq
from qaudit.pipeline.graph import with_outputs
from qaudit.pipeline.load import load_model
from qaudit.pipeline.match import match
from qaudit.pipeline.metrics import dequantize, sqnr_of
from qaudit.pipeline.parallel import lockstep
from qaudit.pipeline.session import make_session, save_model
from tests.models import OPSET


def _batches(n):
    return ({"x": np.full((2, 3), i, np.float32)} for i in range(n))


@pytest.mark.parametrize("overlap", [True, False])
def test_batches_are_measured_in_order_with_at_most_two_alive(overlap):
    alive, peak, seen = [0], [0], []
    lock = threading.Lock()

    def run(feeds):
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
        return (feeds["x"] * 2,)

    def measure(feeds, outs):
        seen.append(int(outs[0][0, 0]))
        with lock:
            alive[0] -= 1

    assert lockstep(run, _batches(6), measure, overlap=overlap) == 12
    assert seen == [0, 2, 4, 6, 8, 10]
    assert peak[0] <= (2 if overlap else 1)


def test_a_measuring_error_propagates():
    def measure(feeds, outs):
        if feeds["x"][0, 0] == 2:
            raise DataError("bad labels")

    with pytest.raises(DataError, match="bad labels"):
        lockstep(lambda f: (f,), _batches(5), measure)


# ------------------------------------------------ the instrumented graph is the deployed one


def _attention_model(cin=2):
    """A CRNN-like conv + attention block (PP-OCRv4 rec in small)::

        x -> Conv(c) -> Reshape -> t [N,16,64] -> MatMul(t, tT) -> Softmax -> MatMul(., t) -> o
                                   t -> Transpose -> tT                                t -^
        o -> Add(o, t) -> y

    With int8 activations on x86, exposing the Softmax's or a MatMul's QuantizeLinear
    output stopped ORT converting that Q/DQ pair to uint8, and the QLinearMatMul of two
    activations fell back to float: outputs differed from a plain session's.
    """
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (16, cin, 3, 3)).astype(np.float32), "c.w"),
        numpy_helper.from_array(rng.normal(0, 0.2, 16).astype(np.float32), "c.b"),
        numpy_helper.from_array(np.array([0, 16, 64], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c.w", "c.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["t"], name="reshape"),
        helper.make_node("Transpose", ["t"], ["tT"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "tT"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "t"], ["o"], name="mix"),
        helper.make_node("Add", ["o", "t"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 64])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _attention_files(tmp_path, cin=2):
    """The attention model saved, its calibration and evaluation data, and where to save it quantized."""
    model_path = tmp_path / "model.onnx"
    onnx.save(_attention_model(cin), model_path)
    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (16, cin, 8, 8)).astype(np.float32)
    evaluation = rng.normal(0, 1, (8, cin, 8, 8)).astype(np.float32)
    return model_path, calib, evaluation, tmp_path / "quantized.onnx"


def _deployed(q, twin):
    """A twin's values as the deployed graph holds them: int8 for an int8 encoding (uint8 v = q + 128)."""
    return (q.astype(np.int16) - 128).astype(np.int8) if twin.encoding.dtype == "int8" and q.dtype == np.uint8 else q


_TYPES = [("uint8", "uint8"), ("uint8", "int8"), ("int8", "int8")]


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("act,weight", _TYPES, ids=[f"a{a}-w{w}" for a, w in _TYPES])
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_instrumented_outputs_are_bit_identical_to_a_plain_session(tmp_path, fmt, act, weight, per_channel):
    """Every format x activation type x weight type: the graph qaudit measures gives the
    deployed outputs bit for bit, its twins hold the deployed integers (the int8 ones shifted
    back), and the report's output metrics are those of a plain session."""
    model_path, calib, evaluation, qpath = _attention_files(tmp_path)
    report = qaudit.audit(
        model_path,
        calib,
        evaluation,
        output_model=qpath,
        format=fmt,
        activation_type=act,
        weight_type=weight,
        per_channel=per_channel,
        isolated=False,
    )
    qmodel = onnx.load(qpath)
    fp32 = prepare(load_model(model_path)).fold.model
    twins = match(fp32, qmodel).twins
    assert len(twins) >= 6  # x, c/t, tT, s, p, o, y (how many ORT quantizes depends on the format)
    inst, shifted = instrumented_quantized(qmodel, twins)
    if act == "int8" and fmt == "qdq" and ort_converts_int8_qdq():
        assert shifted, "ORT converts int8 Q/DQ pairs on this machine: some twins must be shifted"
    onnx.save(inst, tmp_path / "instrumented.onnx")
    plain = make_session(qpath)
    instrumented = make_session(tmp_path / "instrumented.onnx")
    a = plain.run(None, {"x": evaluation})
    b = dict(zip([o.name for o in instrumented.get_outputs()], instrumented.run(None, {"x": evaluation})))
    np.testing.assert_array_equal(a[0], b["y"])
    # every row's SQNR is that of the deployed integers: shifted twins map back to int8 (v - 128)
    f = make_session(save_model(with_outputs(fp32, [(n, TensorProto.FLOAT) for n in twins]), tmp_path / "f.onnx"))
    fp = dict(zip([o.name for o in f.get_outputs()], f.run(None, {"x": evaluation})))
    rows = {r.tensor: r for r in report.layers if r.tensor}
    assert set(rows) == set(twins)
    for name, tw in twins.items():
        q = _deployed(b[tw.quant_name], tw)
        assert (b[tw.quant_name].dtype == np.uint8) == (tw.quant_name in shifted or tw.encoding.dtype == "uint8")
        axis = tw.encoding.axis if not tw.encoding.per_tensor else None
        want = sqnr_of(fp[name], dequantize(q, tw.encoding.scale, tw.encoding.zero_point, axis=axis))
        assert rows[name].sqnr_db == pytest.approx(want, rel=1e-6), name
    # the report's output SQNR is the plain session's
    y32 = make_session(model_path).run(None, {"x": evaluation})[0]
    assert report.outputs[0].sqnr_db == pytest.approx(sqnr_of(y32, a[0]), rel=1e-6)  # the bug: ~1e-3


def test_exposing_int8_twins_without_the_conversion_changes_outputs(tmp_path):
    """The ORT behaviour the conversion works around (x86): exposing the int8 Q outputs
    as they are gives outputs that differ from a plain session's."""
    if not ort_converts_int8_qdq():
        pytest.skip("this onnxruntime allows int8 QDQ (no S8 -> U8 conversion)")
    model_path, calib, x, qpath = _attention_files(tmp_path)
    qaudit.audit(model_path, calib, output_model=qpath, activation_type="int8", weight_type="int8", isolated=False)
    qmodel = onnx.load(qpath)
    twins = match(prepare(load_model(model_path)).fold.model, qmodel).twins
    onnx.save(with_outputs(qmodel, [(t.quant_name, TensorProto.INT8) for t in twins.values()]), tmp_path / "raw.onnx")
    a = make_session(qpath).run(["y"], {"x": x})[0]
    b = make_session(tmp_path / "raw.onnx").run(["y"], {"x": x})[0]
    assert not np.array_equal(a, b)


def test_outputs_come_from_a_plain_session_when_the_instrumented_graph_differs(tmp_path, monkeypatch):
    """If exposing the twins ever changes ORT's fusions again (here: the int8 conversion switched
    off), the capture notices on the first batch, measures the model outputs from a plain session
    and says so in the report."""
    if not ort_converts_int8_qdq():
        pytest.skip("this onnxruntime allows int8 QDQ (no S8 -> U8 conversion)")
    from qaudit.pipeline import capture as capture_module

    def unconverted(qmodel, elem, convert=True):
        return with_outputs(qmodel, [(name, TensorProto.INT8) for name in elem]), set()

    model_path, calib, evaluation, qpath = _attention_files(tmp_path)
    opts = dict(output_model=qpath, activation_type="int8", weight_type="int8", isolated=False, batch_size=4)
    assert not any("plain session" in n for n in qaudit.audit(model_path, calib, evaluation, **opts).notes)
    monkeypatch.setattr(capture_module, "expose", unconverted)
    report = qaudit.audit(model_path, calib, evaluation, **opts)
    assert any("gave outputs y different from a plain session's" in n for n in report.notes), report.notes
    plain = make_session(qpath).run(None, {"x": evaluation})[0]
    y32 = make_session(model_path).run(None, {"x": evaluation})[0]
    assert report.outputs[0].sqnr_db == pytest.approx(sqnr_of(y32, plain), rel=1e-6)


def _kernels(model: onnx.ModelProto, path) -> collections.Counter:
    """The compute ops ONNX Runtime runs for ``model`` after its default optimizations (Q/DQ,
    layout Transposes and reorders aside): which layers got fused integer kernels."""
    import onnxruntime as ort

    onnx.save(model, path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(path) + ".optimized.onnx"
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    skip = {"QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput"}
    return collections.Counter(
        n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node if n.op_type not in skip
    )


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("act,weight", _TYPES, ids=[f"a{a}-w{w}" for a, w in _TYPES])
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_instrumented_and_isolated_graphs_run_the_deployed_kernels(tmp_path, fmt, act, weight, per_channel):
    """After ORT's optimizations, the instrumented and the isolated-error graphs run the same
    kernels as a plain session: QLinearConv, QLinearMatMul, QLinearSoftmax where it does (with int8
    activations and the hooked pairs left in int8, the isolated QDQ graph ran all of them in float)."""
    model_path, calib, evaluation, qpath = _attention_files(tmp_path)
    opts = dict(activation_type=act, weight_type=weight, per_channel=per_channel, isolated=False)
    qaudit.audit(model_path, calib, output_model=qpath, format=fmt, **opts)
    qmodel = onnx.load(qpath)
    twins = match(prepare(load_model(model_path)).fold.model, qmodel).twins
    inst, shifted = instrumented_quantized(qmodel, twins)
    plain = _kernels(qmodel, tmp_path / "plain.onnx")
    assert plain["QLinearConv"] == 1 and plain["QLinearMatMul"] >= 1
    assert _kernels(inst, tmp_path / "instrumented.onnx") == plain
    assert _kernels(isolated_model(qmodel, twins, shifted)[0], tmp_path / "isolated.onnx") == plain
