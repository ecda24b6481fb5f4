"""Memory: big models are kept in files, not copied; big arrays are reduced in blocks.

The bounds themselves are measured by ``benchmarks/bench_scale.py`` (peak RSS of
a fresh process); these tests check that the leaner paths give the same
numbers as the plain ones.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qaudit
from qaudit.pipeline import audit as audit_module
from qaudit.pipeline import session
from qaudit.pipeline.graph import GraphIndex
from qaudit.pipeline.metrics import qmse_of, range_stats, sqnr_of
from qaudit.report import to_dict
from tests.models import input_for


def _conv_bn_gemm_model() -> onnx.ModelProto:
    """Conv 8 -> 16 (4.6 KB weight) + BatchNormalization + Relu, then Gemm 64 -> 10 (2.6 KB)."""
    rng = np.random.default_rng(0)

    def init(name, arr):
        return numpy_helper.from_array(np.asarray(arr, np.float32), name)

    inits = [
        init("w", rng.normal(0, 0.3, (16, 8, 3, 3))),
        init("b", rng.normal(0, 0.1, 16)),
        init("s", rng.uniform(0.5, 1.5, 16)),
        init("beta", rng.normal(0, 0.1, 16)),
        init("mean", rng.normal(0, 0.1, 16)),
        init("var", rng.uniform(0.5, 1.5, 16)),
        init("wf", rng.normal(0, 0.2, (64, 10))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "beta", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wf"], ["y"], name="fc"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _numbers(report) -> dict:
    d = to_dict(report)
    return {"layers": d["layers"], "outputs": d["outputs"], "unmatched": d["unmatched"]}


def test_audit_with_weights_in_external_files_equals_inline(tmp_path, monkeypatch):
    """Every model the audit writes goes through external data when it is big: same report."""
    model = _conv_bn_gemm_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = input_for(model, n=24)
    inline = qaudit.audit(path, calib=x, batch_size=8)

    lightened = []
    real_load_light = audit_module.load_light

    def load_light(p):
        m = real_load_light(p)
        lightened.append(session.inline_bytes(m))
        return m

    monkeypatch.setattr(session, "EXTERNAL_DATA_BYTES", 0)  # every model is "big"
    monkeypatch.setattr(audit_module, "load_light", load_light)
    external = qaudit.audit(path, calib=x, batch_size=8)
    # the folded and normalized models keep only tensors below onnx's 1 KiB threshold in memory
    assert len(lightened) == 2 and all(b < 1024 * 4 for b in lightened)
    assert _numbers(external) == _numbers(inline)
    assert any(r["w_sqnr_db"] is not None for r in _numbers(external)["layers"])  # weights were read back


def test_square_sums_in_blocks_equal_float64(monkeypatch):
    from qaudit.pipeline import metrics

    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (37, 11)).astype(np.float32)
    x_hat = (x + rng.normal(0, 0.01, x.shape)).astype(np.float32)
    x64, e64 = x.astype(np.float64), x.astype(np.float64) - x_hat.astype(np.float64)
    want_sqnr = 10 * np.log10(np.sum(x64 * x64) / np.sum(e64 * e64))
    want_qmse = np.mean(e64 * e64)
    assert sqnr_of(x, x_hat) == want_sqnr and qmse_of(x, x_hat) == want_qmse  # one block: numpy's own sums
    monkeypatch.setattr(metrics, "SUM_BLOCK", 7)  # 59 blocks, the last one short
    assert sqnr_of(x, x_hat) == pytest.approx(want_sqnr, rel=1e-12)
    assert qmse_of(x, x_hat) == pytest.approx(want_qmse, rel=1e-12)


def test_range_stats_of_float32_equal_float64():
    rng = np.random.default_rng(4)
    w = rng.normal(0, 1, (6, 50)).astype(np.float32)
    w64 = w.astype(np.float64)
    ch = w64.max(axis=1) - w64.min(axis=1)
    rng64 = w64.max() - w64.min()
    assert range_stats(w) == {
        "min": w64.min(),
        "max": w64.max(),
        "range": rng64,
        "precision": float(np.mean(ch / rng64)),
    }


def test_graph_index_first_node_in_graph_order():
    nodes = [
        helper.make_node("Relu", ["a"], ["b"], name="conv_quant"),
        helper.make_node("Relu", ["b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["d"], name="conv"),
    ]
    g = helper.make_graph(nodes, "g", [], [])
    idx = GraphIndex(g)
    assert idx.first_node("conv", "conv_quant").output[0] == "b"
    assert idx.first_node("conv").output[0] == "c"
    assert idx.first_node("other") is None
