"""Quantization stage: tensors that hold NaN/Inf only in some samples stay in float.

The activation probe runs one sample. A tensor that is finite there but not in
a later calibration batch (a padded sequence's -inf attention mask; here
``Log`` of a ReLU output that is 0 for some samples) must not fail ORT's
histogram ("autodetected range of [..., inf] is not finite"): calibration finds
it, and its nodes stay in float with the reason, as for the probe's finds.

    x [N,1,4,4] -> Conv(w>0, b) -> Relu -> Log -> Conv(w2) -> y
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qaudit


def _log_model(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(np.abs(rng.normal(size=(4, 1, 3, 3))).astype(np.float32) + 0.1, "w")
    b = numpy_helper.from_array(np.full(4, 0.5, np.float32), "b")
    w2 = numpy_helper.from_array(rng.normal(size=(2, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Log", ["r1"], ["l1"], name="log1"),
        helper.make_node("Conv", ["l1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(
        nodes,
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [w, b, w2],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "log.onnx"
    onnx.save(m, path)
    return path


def test_a_tensor_non_finite_after_the_probed_sample_stays_in_float(tmp_path):
    model = _log_model(tmp_path)
    x = np.abs(np.random.default_rng(1).normal(size=(16, 1, 4, 4))).astype(np.float32)
    x[9] = -100.0  # conv1 < 0 everywhere: relu1 = 0, log1 = -inf, in batch 3 of 4
    report = qaudit.audit(model, calib={"x": x}, batch_size=4)
    excluded = {e["node"]: e["reason"] for e in report.settings["auto_excluded"]}
    assert set(excluded) == {"log1", "conv2"}  # the nodes that write and read the tensor
    assert all("'l1' holds non-finite values" in r for r in excluded.values())
    # the finite range of l1 over the batch that showed the -inf: log(relu1) of the finite values
    assert "finite range [" in excluded["log1"]
    rows = {r.name: r for r in report.layers}
    assert rows["conv1"].quant_tensor is not None  # the rest is quantized and measured
    assert "conv2" not in rows or rows["conv2"].quant_tensor is None
    unmatched = {u.tensor: u for u in report.unmatched}
    assert unmatched["l1"].kind == "excluded" and "non-finite" in unmatched["l1"].reason


def test_the_probe_still_finds_a_non_finite_first_sample(tmp_path):
    model = _log_model(tmp_path)
    x = np.abs(np.random.default_rng(1).normal(size=(8, 1, 4, 4))).astype(np.float32)
    x[0] = -100.0  # the probed sample
    report = qaudit.audit(model, calib=x, batch_size=4)
    assert {e["node"] for e in report.settings["auto_excluded"]} == {"log1", "conv2"}


# ----------------------------------------- graphs ORT's quantizer would break


def _user_error(path, x, **options) -> str:
    """The message of the :class:`~qaudit.errors.ModelError` that auditing ``path`` raises."""
    from qaudit.errors import ModelError

    try:
        qaudit.audit(path, calib=x, **options)
    except ModelError as e:
        return str(e)
    raise AssertionError(f"no error auditing {path}")


def _ort_runs(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_a_bias_shared_by_two_convs_quantizes(tmp_path):
    """ORT 1.32's QDQ quantizer copies the shared bias 'b' as 'b0', the name of conv1's
    output: its model cannot load. qaudit gives each Conv its own bias first."""
    from ..models import shared_bias_model

    onnx.save(shared_bias_model(), tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(size=(16, 1, 8, 8)).astype(np.float32)
    report = qaudit.audit(tmp_path / "m.onnx", calib=x, output_model=tmp_path / "q.onnx")
    rows = {r.name: r for r in report.layers}
    assert rows["conv1"].quant_tensor is not None and rows["conv2"].quant_tensor is not None
    assert np.isfinite(report.outputs[0].sqnr_db)
    changes = report.settings["graph_changes"]
    assert [(c["kind"], c["target"]) for c in changes] == [("unshare_initializer", "b")]
    assert any("1 initializer(s) read by several layers" in n for n in report.notes)
    assert _ort_runs(tmp_path / "q.onnx", x[:2]).shape == (2, 4, 8, 8)
    assert shared_bias_model().SerializeToString() == onnx.load(tmp_path / "m.onnx").SerializeToString()


def test_when_ort_cannot_load_its_quantizer_output_the_message_says_so(tmp_path, monkeypatch):
    """Without the unsharing, ORT's quantizer writes a model ORT cannot load; the message
    names the quantizer as the culprit (the fp32 model ran) and what to try."""
    from qaudit.pipeline import transform

    from ..models import shared_bias_model

    monkeypatch.setattr(transform, "unshare_initializers", lambda model: [])
    onnx.save(shared_bias_model(), tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(size=(8, 1, 8, 8)).astype(np.float32)
    msg = _user_error(tmp_path / "m.onnx", x)
    assert msg.startswith("ONNX Runtime cannot run the quantized model: ")
    assert "fault of ONNX Runtime's quantizer" in msg and "--exclude" in msg and "--format" in msg
    assert "CPU provider" not in msg


def test_per_channel_qdq_on_opset_12_upgrades_the_opset(tmp_path):
    """DequantizeLinear has no axis before opset 13: per-channel QDQ weights need it."""
    from ..models import shared_bias_model

    onnx.save(shared_bias_model(opset=12), tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(size=(16, 1, 8, 8)).astype(np.float32)
    report = qaudit.audit(tmp_path / "m.onnx", calib=x, per_channel=True, output_model=tmp_path / "q.onnx")
    (upgrade,) = [c for c in report.settings["graph_changes"] if c["kind"] == "opset_upgrade"]
    assert "opset upgraded from 12 to 13" in upgrade["detail"] and upgrade["detail"] in report.notes
    assert report.model["opset"] == 12  # the user's model, as read
    q = onnx.load(tmp_path / "q.onnx")
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 13
    axes = [a.i for n in q.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes  # per-channel weights
    assert {r.name: r for r in report.layers}["conv1"].w_encoding.endswith("per-channel")
    np.testing.assert_allclose(_ort_runs(tmp_path / "q.onnx", x[:2]), _ort_runs(tmp_path / "m.onnx", x[:2]), atol=0.5)


def test_per_channel_qoperator_on_opset_12_needs_no_upgrade(tmp_path):
    from ..models import shared_bias_model

    onnx.save(shared_bias_model(opset=12), tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(size=(8, 1, 8, 8)).astype(np.float32)
    report = qaudit.audit(tmp_path / "m.onnx", calib=x, per_channel=True, format="qoperator")
    assert [c["kind"] for c in report.settings["graph_changes"]] == ["unshare_initializer"]


def test_a_failed_opset_conversion_is_one_user_error(tmp_path, monkeypatch):
    import onnx.version_converter

    from ..models import shared_bias_model

    def fail(model, target):
        raise RuntimeError("No Adapter For Conv\nsecond line")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    onnx.save(shared_bias_model(opset=12), tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(size=(8, 1, 8, 8)).astype(np.float32)
    msg = _user_error(tmp_path / "m.onnx", x, per_channel=True)
    assert "--per-channel with the QDQ format" in msg and "from opset 12: No Adapter For Conv second line" in msg
    assert "re-export the model with opset >= 13" in msg and "\n" not in msg


def test_a_model_with_nothing_to_calibrate_is_audited(tmp_path):
    """A Loop without layers (it stays float) and nothing quantizable in the main graph:
    ORT's calibrator has no histogram and fails ("Histogram has not been collected",
    onnxruntime 1.32); qaudit reports that nothing was quantized."""
    from ..models import loop_model

    model = loop_model()
    body = model.graph.node[0].attribute[0].g
    body.node[1].op_type, body.node[1].input[:] = "Neg", ["h_in"]  # no layer in the body
    del body.node[1].attribute[:]
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(size=(8, 1, 8, 8)).astype(np.float32)
    report = qaudit.audit(tmp_path / "m.onnx", calib=x)
    assert report.layers == () and "graph_changes" not in report.settings
    assert "ONNX Runtime quantized no activation of this model: there is nothing to compare per layer" in report.notes
    assert "1 If/Loop/Scan node(s) without layers run in float (loop): ONNX Runtime quantizes only the main graph" in (
        report.notes
    )
    (out,) = report.outputs
    assert out.qmse == 0.0  # the Loop ran in float: Neg(Neg(x)) = x either way


def test_a_prepared_graph_ort_cannot_load_blames_qaudit(tmp_path, monkeypatch):
    """The user's model runs; when the graph qaudit made from it does not, the message says whose fault it is."""
    from qaudit.pipeline import audit as audit_module

    from ..models import shared_bias_model

    real = audit_module.fold_batchnorm

    def broken(model, keep=()):
        res = real(model, keep)
        res.model.graph.node[1].op_type = "NoSuchOp"  # a bug in qaudit's preparation
        return res

    monkeypatch.setattr(audit_module, "fold_batchnorm", broken)
    onnx.save(shared_bias_model(), tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(size=(4, 1, 8, 8)).astype(np.float32)
    msg = _user_error(tmp_path / "m.onnx", x)
    assert msg.startswith("ONNX Runtime cannot run the BN-folded model: ") and "NoSuchOp" in msg
    assert msg.endswith(
        "the graph qaudit prepared from it (Ifs inlined, BatchNorm folded) is at fault: please report this model to qaudit"
    )


def test_a_first_batch_too_narrow_for_the_percentile_histogram_is_one_line_naming_the_tensor(tmp_path):
    """ORT quirk 70: a tensor whose first batch spans fewer float32 steps than the bins (magika: [1.0000063,
    1.0000488]) cannot be binned; ORT's own HistogramCollector fails on the same values, and qaudit says
    which tensor and what to do instead of numpy's words alone; MinMax calibrates it."""
    import pytest
    from onnxruntime.quantization.calibrate import HistogramCollector

    from qaudit.errors import QuantizationError

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["near_one"], name="add"),
         helper.make_node("Mul", ["near_one", "two"], ["y"], name="mul")],
        "narrow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(np.ones((1, 5), np.float32), "one"),
         numpy_helper.from_array(np.full((1, 5), 2.0, np.float32), "two")],
    )  # fmt: skip
    model = tmp_path / "narrow.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)]), model)
    calib = tmp_path / "calib"
    calib.mkdir()
    x = np.array([[6.3e-6, 1.61e-5, 2.68e-5, 3.41e-5, 4.88e-5]], np.float32)
    for i in range(3):
        np.save(calib / f"{i}.npy", x)
    near_one = x + np.float32(1)
    with pytest.raises(ValueError, match="Too many bins"):  # ORT's own collector, on the tensor's first batch
        HistogramCollector("percentile", True, 2048, 2048, 99.999, None).collect({"near_one": [near_one]})
    with pytest.raises(QuantizationError) as err:
        qaudit.audit(model, calib)
    message = str(err.value)
    assert "\n" not in message
    assert "cannot bin tensor 'near_one'" in message and f"[{near_one.min():.9g}, {near_one.max():.9g}]" in message
    assert "--calibrate-method minmax or entropy" in message and "ort-quirks.md #70" in message
    report = qaudit.audit(model, calib, calibrate_method="minmax")
    row = next(r for r in report.layers if r.name == "near_one" or getattr(r, "tensor", None) == "near_one")
    assert row.a_min == pytest.approx(float(near_one.min())) and row.a_max == pytest.approx(float(near_one.max()))
