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
