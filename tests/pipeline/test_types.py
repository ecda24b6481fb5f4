"""Every quantization type (docs/metrics.md, "Encodings per type"): dequantization and
encodings by hand, and each type's audit against numpy and ORT's qdq_loss_debug.

Activations: uint8, int8, uint16, int16; weights also uint4, int4 (QDQ only). 16-bit
Q/DQ is in the ONNX domain from opset 21 (qaudit upgrades the sample's opset 17);
4-bit weights below opset 21 are written by ORT in the com.microsoft domain.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

import qaudit
from qaudit.errors import ConfigError
from qaudit.options import INTEGER_RANGES
from qaudit.pipeline.audit import prepare
from qaudit.pipeline.graph import with_outputs
from qaudit.pipeline.load import load_model
from qaudit.pipeline.match import Encoding, quantized_weight
from qaudit.pipeline.metrics import dequantize

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "digits"
ELEM = {
    "uint8": TensorProto.UINT8,
    "int8": TensorProto.INT8,
    "uint16": TensorProto.UINT16,
    "int16": TensorProto.INT16,
    "uint4": TensorProto.UINT4,
    "int4": TensorProto.INT4,
}
#: the integer ranges, written out (not read from qaudit)
RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}
RANGES.update({"uint4": (0, 15), "int4": (-8, 7)})


def _np_type(name):
    return helper.tensor_dtype_to_np_dtype(ELEM[name])


def _batches(folder):
    return [{"input": np.load(p)} for p in sorted((SAMPLE / folder).glob("*.npy"))]


@pytest.mark.parametrize("dtype", list(RANGES))
def test_dequantize_and_limits_by_hand(dtype):
    """``scale * (q - zp)`` over the type's whole range, in int64 and float64 by hand; the
    encoding's representable range from the type's integer range."""
    lo, hi = RANGES[dtype]
    assert INTEGER_RANGES[dtype] == (lo, hi)
    rng = np.random.default_rng(0)
    codes = np.concatenate([[lo, hi, 0], rng.integers(lo, hi + 1, 997)])
    zp = int(rng.integers(lo, hi + 1))
    scale = np.float32(0.0123)
    q = codes.astype(_np_type(dtype))
    z = np.array(zp).astype(_np_type(dtype))
    want = float(scale) * (codes.astype(np.int64) - zp).astype(np.float64)
    got = dequantize(q, scale, z)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    enc = Encoding(np.array(scale), z, None, dtype)
    assert enc.limits() == pytest.approx((float(scale) * (lo - zp), float(scale) * (hi - zp)), rel=1e-12)
    assert enc.onnx_type == ELEM[dtype]


@pytest.mark.parametrize("dtype", ["uint4", "int4"])
def test_packed_4bit_weights_unpacked_by_hand(dtype):
    """A 4-bit weight as ONNX stores it, packed two per byte (low nibble first), built
    by hand; qaudit's dequantized weight equals the nibbles unpacked by hand."""
    lo, hi = RANGES[dtype]
    rng = np.random.default_rng(1)
    codes = rng.integers(lo, hi + 1, (3, 5))  # 15 values: the last byte holds one nibble
    nib = (codes.reshape(-1) & 0xF).astype(np.uint8)
    padded = np.concatenate([nib, np.zeros(1, np.uint8)])
    packed = (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8)
    assert packed.size == 8
    w = helper.make_tensor("w_q", ELEM[dtype], codes.shape, packed.tobytes(), raw=True)
    zp_v = int(lo + 3)
    zp = helper.make_tensor("w_zp", ELEM[dtype], (), [zp_v])
    s = numpy_helper.from_array(np.array(0.25, np.float32), "w_s")
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq"),
        helper.make_node("Gemm", ["x", "w"], ["y"], name="layer", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w, zp, s],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    w_hat, enc = quantized_weight(m, "layer", "Gemm", 1, nodes[1])
    assert enc.dtype == dtype and enc.per_tensor
    np.testing.assert_array_equal(w_hat, 0.25 * (codes - zp_v).astype(np.float32))
    # and ORT computes with the same weight
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((1, 5), np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ w_hat.T, rtol=1e-6)


def test_sixteen_and_four_bit_types_are_qdq_only():
    for key in ("activation_type", "weight_type"):
        for t in ("uint16", "int16") + (("uint4", "int4") if key == "weight_type" else ()):
            with pytest.raises(ConfigError, match=f"{key} {t} exists only in the QDQ format"):
                qaudit.QuantConfig(format="qoperator", **{key: t})
            qaudit.QuantConfig(format="qdq", **{key: t})
    with pytest.raises(ConfigError, match="activation_type must be one of uint8, int8, uint16, int16, not 'int4'"):
        qaudit.QuantConfig(activation_type="int4")


#: (activations, weights): every type at least once, 16-bit (opset 21) and 4-bit (com.microsoft) paths
COMBOS = [("uint16", "uint16"), ("int16", "int16"), ("uint8", "uint4"), ("int8", "int4"), ("uint16", "int4")]


@pytest.fixture(scope="module", params=COMBOS, ids=lambda c: f"{c[0]}-{c[1]}")
def typed_audit(request, tmp_path_factory):
    act, wt = request.param
    tmp = tmp_path_factory.mktemp(f"{act}-{wt}")
    quant = qaudit.QuantConfig(activation_type=act, weight_type=wt)
    qpath = tmp / "quantized.onnx"
    cfg = qaudit.AuditConfig(
        model=SAMPLE / "model.onnx", calib=SAMPLE / "calib", eval=SAMPLE / "eval", output_model=qpath, quant=quant
    )
    report = qaudit.audit(cfg)
    folded = tmp / "folded.onnx"
    onnx.save(prepare(load_model(SAMPLE / "model.onnx"), quant=quant).fold.model, folded)  # what was quantized
    return act, wt, report, qpath, folded, tmp


def test_written_model_holds_the_types(typed_audit):
    """The quantized model's zero points have the requested types; 16-bit upgraded the opset
    (a graph change), 4-bit weights at opset 17 use ORT's com.microsoft Q/DQ (a note)."""
    act, wt, report, qpath, _, _ = typed_audit
    q = onnx.load(qpath)
    inits = {t.name: t for t in q.graph.initializer}
    weights = {n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    acts = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert acts and {inits[n.input[2]].data_type for n in acts} == {ELEM[act]}
    w_types = {inits[w].data_type for w in weights if w.endswith("weight_quantized") or "weight_bnfolded" in w}
    assert w_types == {ELEM[wt]}
    s = report.settings
    assert (s["activation_type"], s["weight_type"]) == (act, wt)
    if "16" in act + wt:
        assert "quantized_opset" not in s and "qdq_domain" not in s  # qaudit upgraded: ORT changed nothing
        assert {n.domain for n in acts} == {""} and q.opset_import[0].version == 21
        (change,) = s["graph_changes"]
        assert change["kind"] == "opset_upgrade" and "from 17 to 21" in change["detail"]
    else:
        assert "quantized_opset" not in s and s["qdq_domain"] == "com.microsoft"
        assert {n.domain for n in acts} == {"com.microsoft"}
        assert any("com.microsoft domain" in n for n in report.notes)
    rows = [r for r in report.layers if r.tensor]
    assert len(rows) == 9 and {r.dtype for r in rows} == {act}
    # ...except where ORT's int32 bias (scale s_x * s_w) saturates: uint16 x uint16 on fc1 (docs/ort-quirks.md)
    saturated = [n for n in report.notes if "int32 bias(es) saturated" in n]
    assert bool(saturated) == ((act, wt) == ("uint16", "uint16"))
    if saturated:
        assert "/fc1/Gemm" in saturated[0]
        fc1 = next(r for r in report.layers if r.name == "/fc1/Gemm")
        assert fc1.sqnr_isolated_db < 20 and fc1.w_sqnr_db > 80
    assert {r.w_encoding for r in report.layers if r.has_weights} == {f"{wt} per-tensor"}


def test_activation_metrics_by_hand(typed_audit, tmp_path):
    """Every row's SQNR, QMSE and clip fraction recomputed in numpy from the exposed tensors of
    the fp32 and the written quantized model over the whole evaluation set, the integers
    dequantized by hand with the type's range; q_min/q_max from the type's integer range."""
    act, wt, report, qpath, folded, _ = typed_audit
    lo, hi = RANGES[act]
    rows = [r for r in report.layers if r.tensor]
    fm = with_outputs(onnx.load(folded), [(r.tensor, TensorProto.FLOAT) for r in rows])
    qm = with_outputs(onnx.load(qpath), [(r.quant_tensor, ELEM[act]) for r in rows])
    onnx.save(fm, tmp_path / "f.onnx")
    onnx.save(qm, tmp_path / "q.onnx")
    fs, qs = ort.InferenceSession(str(tmp_path / "f.onnx")), ort.InferenceSession(str(tmp_path / "q.onnx"))
    xs, codes = {r.name: [] for r in rows}, {r.name: [] for r in rows}
    for feeds in _batches("eval"):
        a = fs.run([r.tensor for r in rows], feeds)
        b = qs.run([r.quant_tensor for r in rows], feeds)
        for r, x, q in zip(rows, a, b):
            assert q.dtype == _np_type(act)
            xs[r.name].append(x.astype(np.float64))
            codes[r.name].append(q.astype(np.int64))
    for r in rows:
        x, q = np.concatenate(xs[r.name]), np.concatenate(codes[r.name])
        assert lo <= q.min() and q.max() <= hi
        # in float32, as DequantizeLinear computes it: at 70 dB a float64 x_hat differs by 1e-4 dB
        x_hat = (q - r.zero_point).astype(np.float32) * np.float32(r.scale)
        e2 = float(np.sum((x - x_hat) ** 2))
        assert r.sqnr_db == pytest.approx(10 * np.log10(np.sum(x**2) / e2), abs=1e-5), r.name
        assert r.qmse == pytest.approx(e2 / x.size, rel=1e-4)
        q_min, q_max = r.scale * (lo - r.zero_point), r.scale * (hi - r.zero_point)
        assert (r.q_min, r.q_max) == pytest.approx((q_min, q_max), rel=1e-9)
        assert r.clip_fraction == np.mean((x < q_min) | (x > q_max))
    if "16" in act and "16" in wt:  # 65536 levels: the rounding error all but vanishes...
        assert rows[0].sqnr_db > 70 and rows[1].sqnr_db > 55


def test_weight_sqnr_by_hand(typed_audit):
    """Weight SQNR against the weights the written model holds, dequantized by hand in int64."""
    _, wt, report, qpath, folded, _ = typed_audit
    q = onnx.load(qpath)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(folded).graph.initializer}
    rows = {r.name: r for r in report.layers if r.has_weights}
    assert len(rows) == 6
    lo, hi = RANGES[wt]
    for node in q.graph.node:
        if node.name not in rows:
            continue
        dq = next(n for n in q.graph.node if n.output[0] == node.input[1])
        wq, s, zp = (inits[n] for n in dq.input)
        codes = wq.astype(np.int64)
        assert lo <= codes.min() and codes.max() <= hi
        # in float32, as DequantizeLinear computes it (at 94 dB float64 differs by 1e-3 dB)
        w_hat = (codes - int(zp.astype(np.int64))).astype(np.float32) * np.float32(s)
        w = fp32[dq.output[0].replace("_DequantizeLinear_Output", "")].astype(np.float64)
        want = 10 * np.log10(np.sum(w**2) / np.sum((w - w_hat) ** 2))
        assert rows[node.name].w_sqnr_db == pytest.approx(want, abs=1e-6)
        assert rows[node.name].w_qmse == pytest.approx(np.mean((w - w_hat) ** 2), rel=1e-4)


class _Reader:
    def __init__(self):
        self.items = iter(_batches("eval"))

    def get_next(self):
        return next(self.items, None)

    def __iter__(self):
        return self.items


def test_against_ort_qdq_loss_debug(typed_audit, tmp_path):
    """ORT's debugger (float simulation of the QDQ graph) agrees with qaudit within 0.01 dB
    where it works: 16-bit Q/DQ at opset 21. With ORT's com.microsoft Q/DQ (4-bit weights
    below opset 21) its matching is empty (docs/ort-quirks.md): qaudit still measures every tensor."""
    act, wt, report, qpath, folded, _ = typed_audit
    modify_model_output_intermediate_tensors(str(folded), str(tmp_path / "fa.onnx"))
    modify_model_output_intermediate_tensors(str(qpath), str(tmp_path / "qa.onnx"))
    fa = collect_activations(str(tmp_path / "fa.onnx"), _Reader())
    qa = collect_activations(str(tmp_path / "qa.onnx"), _Reader())
    ort_err = compute_activation_error(create_activation_matching(qa, fa))
    ours = {r.tensor: r.sqnr_db for r in report.layers if r.tensor}
    if report.settings.get("qdq_domain") == "com.microsoft":
        assert ort_err == {} and len(ours) == 9
        return
    assert set(ort_err) == set(ours) and len(ours) == 9
    for name in ours:
        assert ours[name] == pytest.approx(ort_err[name]["xmodel_err"], abs=0.01), name


def test_instrumenting_keeps_outputs_bit_identical(typed_audit, tmp_path):
    """Exposing the 16-bit (or 8-bit) QuantizeLinear outputs leaves the model's output bit-identical
    (ORT 1.32 fuses no 16-bit QDQ on CPU; 8-bit with 4-bit weights neither: docs/ort-quirks.md)."""
    act, _, report, qpath, _, _ = typed_audit
    qmodel = onnx.load(qpath)
    extra = [(r.quant_tensor, ELEM[act]) for r in report.layers if r.tensor]
    onnx.save(with_outputs(qmodel, extra), tmp_path / "instrumented.onnx")
    plain = ort.InferenceSession(str(qpath))
    instrumented = ort.InferenceSession(str(tmp_path / "instrumented.onnx"))
    for feeds in _batches("eval"):
        np.testing.assert_array_equal(plain.run(["logits"], feeds)[0], instrumented.run(["logits"], feeds)[0])


def test_quantizer_changes_report_what_ort_changed():
    """A raised opset, contrib Q/DQ and a saturated int32 bias each give a note (and the
    first two a settings key); an unchanged graph gives nothing."""
    from qaudit.pipeline.quantize import quantizer_changes

    def model(opset, domain="", bias=(1, 2)):
        b = numpy_helper.from_array(np.array(bias, np.int32), "b_q")
        s = numpy_helper.from_array(np.array(1e-9, np.float32), "b_s")
        nodes = [
            helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="dq", domain=domain),
            helper.make_node("Add", ["x", "b"], ["y"], name="layer"),
        ]
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "y")]
        g = helper.make_graph(nodes, "g", vi[:1], vi[1:], [b, s])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])

    assert quantizer_changes(model(17), model(17)) == {"notes": []}
    raised = quantizer_changes(model(13), model(21))
    assert raised["quantized_opset"] == 21 and "raised the opset from 13 to 21" in raised["notes"][0]
    contrib = quantizer_changes(model(17), model(17, "com.microsoft"))
    assert contrib["qdq_domain"] == "com.microsoft" and "ONNX Runtime only" in contrib["notes"][0]
    (note,) = quantizer_changes(model(21), model(21, bias=(5, 2**31 - 1)))["notes"]
    assert "1 int32 bias(es) saturated" in note and "layer" in note


def test_renderers_name_the_types(typed_audit):
    """Terminal, Markdown and HTML say which types were audited; the HTML histogram of a
    16-bit activation says its grid is too fine to draw instead of drawing 65536 levels;
    the JSON keeps each row's type."""
    from qaudit.renderers import render
    from qaudit.report import from_json, to_json

    act, wt, report, *_ = typed_audit
    for fmt in ("terminal", "markdown", "html"):
        out = render(report, fmt)
        assert f"activations {act}" in out and f"weights {wt}" in out, fmt
    html = render(report, "html")
    assert ("65536 " + act + " levels" in html) == ("16" in act)
    assert ("too fine to draw" in html) == ("16" in act)
    back = from_json(to_json(report))
    assert [r.dtype for r in back.layers] == [r.dtype for r in report.layers]
    assert [r.w_encoding for r in back.layers] == [r.w_encoding for r in report.layers]


@pytest.mark.parametrize("wt", ["int4", "int16"])
def test_per_channel_weights_by_hand(wt, tmp_path):
    """Per-channel 4-bit (ORT's com.microsoft DequantizeLinear with an axis, opset 17) and
    16-bit (opset 21) weights: each output channel dequantized by hand with its own scale."""
    quant = qaudit.QuantConfig(activation_type="uint16" if wt == "int16" else "uint8", weight_type=wt, per_channel=True)
    qpath = tmp_path / "q.onnx"
    report = qaudit.audit(
        qaudit.AuditConfig(
            model=SAMPLE / "model.onnx", calib=SAMPLE / "calib", eval=SAMPLE / "eval", output_model=qpath, quant=quant
        )
    )
    q = onnx.load(qpath)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    fp32 = {
        t.name: numpy_helper.to_array(t)
        for t in prepare(load_model(SAMPLE / "model.onnx"), quant=quant).fold.model.graph.initializer
    }
    row = next(r for r in report.layers if r.name == "/dw/conv/Conv")
    assert row.w_encoding == f"{wt} per-channel"
    wq = inits["/dw/conv/Conv.weight_bnfolded_quantized"].astype(np.int64)
    s = inits["/dw/conv/Conv.weight_bnfolded_scale"]
    zp = inits["/dw/conv/Conv.weight_bnfolded_zero_point"].astype(np.int64)
    assert s.shape == (32,) and not zp.any()  # symmetric signed weights
    lo, hi = RANGES[wt]
    assert lo <= wq.min() and wq.max() <= hi
    w_hat = wq.astype(np.float32) * s[:, None, None, None]
    w = fp32["/dw/conv/Conv.weight_bnfolded"].astype(np.float64)
    want = 10 * np.log10(np.sum(w**2) / np.sum((w - w_hat) ** 2))
    assert row.w_sqnr_db == pytest.approx(want, abs=1e-6)
