"""qaudit against independent oracles: ONNX Runtime's own qdq_loss_debug and
quantize_static, and weights dequantized by hand."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

import qaudit
from qaudit.pipeline.audit import prepare
from qaudit.pipeline.capture import instrumented_quantized
from qaudit.pipeline.graph import with_outputs
from qaudit.pipeline.load import load_model
from qaudit.pipeline.match import match
from qaudit.pipeline.metrics import sqnr_of
from qaudit.pipeline.quantize import quiet_ort
from qaudit.pipeline.session import make_session

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "digits"


def _batches(folder):
    return [{"input": np.load(p)} for p in sorted((SAMPLE / folder).glob("*.npy"))]


class _Reader:
    def __init__(self, folder):
        self.items = _batches(folder)
        self.pos, self.end = 0, len(self.items)

    def get_next(self):
        if self.pos >= self.end:
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def set_range(self, start_index, end_index):
        self.pos, self.end = start_index, end_index


def _folded(tmp_path):
    lm = load_model(SAMPLE / "model.onnx")
    path = tmp_path / "folded.onnx"
    onnx.save(prepare(lm).fold.model, path)  # the graph the audit calibrates
    return path


def _audit(tmp_path, batch_size=None, **quant):
    qpath = tmp_path / "quantized.onnx"
    cfg = qaudit.AuditConfig(
        model=SAMPLE / "model.onnx",
        calib=SAMPLE / "calib",
        eval=SAMPLE / "eval",
        output_model=qpath,
        batch_size=batch_size,
        quant=qaudit.QuantConfig(**quant),
    )
    return qaudit.audit(cfg), qpath


@pytest.fixture(scope="module")
def int8_weights(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    report, qpath = _audit(tmp, weight_type="int8")
    return report, qpath, _folded(tmp)


def test_activation_sqnr_matches_ort_qdq_loss_debug(int8_weights, tmp_path):
    """ORT's xmodel_err runs the QDQ graph unoptimized (float simulation); qaudit
    runs the fused integer kernels. Both must agree within 0.01 dB."""
    report, qpath, folded = int8_weights
    modify_model_output_intermediate_tensors(str(folded), str(tmp_path / "fa.onnx"))
    modify_model_output_intermediate_tensors(str(qpath), str(tmp_path / "qa.onnx"))
    fa = collect_activations(str(tmp_path / "fa.onnx"), _Reader("eval"))
    qa = collect_activations(str(tmp_path / "qa.onnx"), _Reader("eval"))
    ort_err = compute_activation_error(create_activation_matching(qa, fa))
    ours = {r.tensor: r.sqnr_db for r in report.layers if r.tensor}
    common = set(ours) & set(ort_err)
    assert len(common) == 9  # input, 5 fused conv/gemm outputs, MaxPool, Flatten, logits
    assert set(ort_err) <= set(ours), "ORT matched a tensor qaudit did not"
    for name in common:
        assert ours[name] == pytest.approx(ort_err[name]["xmodel_err"], abs=0.01), name


def test_weight_sqnr_uint8_by_hand(tmp_path):
    """uint8 weights dequantized by hand in int32 (ORT's weight matching wraps in uint8)."""
    report, qpath = _audit(tmp_path)
    q = onnx.load(qpath)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    folded = {t.name: numpy_helper.to_array(t) for t in onnx.load(_folded(tmp_path)).graph.initializer}
    rows = {r.name: r for r in report.layers if r.has_weights}
    assert len(rows) == 6
    for node in q.graph.node:
        if node.name not in rows:
            continue
        dq = next(n for n in q.graph.node if n.output[0] == node.input[1])
        wq, s, zp = (inits[n] for n in dq.input)
        assert wq.dtype == np.uint8
        w_hat = (wq.astype(np.int32) - int(zp)).astype(np.float64) * float(s)
        w = folded[dq.output[0].replace("_DequantizeLinear_Output", "")]
        want = 10 * np.log10(np.sum(w.astype(np.float64) ** 2) / np.sum((w - w_hat) ** 2))
        assert rows[node.name].w_sqnr_db == pytest.approx(want, abs=1e-4)  # float32 vs float64 dequantization
        assert rows[node.name].w_sqnr_db > 30  # the wrap-around bug would give < 0 dB


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_instrumenting_does_not_change_quantized_outputs(tmp_path, fmt):
    report, qpath = _audit(tmp_path, format=fmt)
    qmodel = onnx.load(qpath)
    m = match(prepare(load_model(SAMPLE / "model.onnx")).fold.model, qmodel)
    assert len(m.twins) >= 8
    onnx.save(instrumented_quantized(qmodel, m.twins)[0], tmp_path / "instrumented.onnx")  # what capture runs
    plain = make_session(qpath)
    instrumented = make_session(tmp_path / "instrumented.onnx")
    assert len(instrumented.get_outputs()) == 1 + len(m.twins)
    for feeds in _batches("eval"):
        a = plain.run(["logits"], feeds)[0]
        b = instrumented.run(["logits"], feeds)[0]
        np.testing.assert_array_equal(a, b)


def test_quantized_model_equals_ort_quantize_static(tmp_path):
    """qaudit's batch-by-batch calibration gives exactly the encodings of
    quantize_static(Percentile, CalibStridedMinMax=one batch)."""
    _, qpath = _audit(tmp_path, batch_size=32)  # the reader below yields the sample's 32-sample files
    with quiet_ort():
        quantize_static(
            str(_folded(tmp_path)),
            str(tmp_path / "ort.onnx"),
            _Reader("calib"),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibStridedMinMax": 1},
        )
    ours = {t.name: numpy_helper.to_array(t) for t in onnx.load(qpath).graph.initializer}
    theirs = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "ort.onnx").graph.initializer}
    assert ours.keys() == theirs.keys()
    scales = [k for k in ours if k.endswith("_scale") or k.endswith("_zero_point")]
    assert len(scales) > 20
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_layer_sqnr_recomputed_from_raw_tensors(int8_weights, tmp_path):
    """Accumulated SQNR of one layer from all eval activations at once (no streaming)."""
    report, qpath, folded = int8_weights
    row = next(r for r in report.layers if r.name == "/dw/conv/Conv")
    fm = with_outputs(onnx.load(folded), [(row.tensor, onnx.TensorProto.FLOAT)])
    qm = with_outputs(onnx.load(qpath), [(row.quant_tensor, onnx.TensorProto.UINT8)])
    onnx.save(fm, tmp_path / "f.onnx")
    onnx.save(qm, tmp_path / "q.onnx")
    fs, qs = ort.InferenceSession(str(tmp_path / "f.onnx")), ort.InferenceSession(str(tmp_path / "q.onnx"))
    xs, qs_ = [], []
    for feeds in _batches("eval"):
        xs.append(fs.run([row.tensor], feeds)[0])
        qs_.append(qs.run([row.quant_tensor], feeds)[0])
    x, q = np.concatenate(xs), np.concatenate(qs_)
    x_hat = (q.astype(np.int32) - row.zero_point) * row.scale
    assert row.sqnr_db == pytest.approx(sqnr_of(x, x_hat), abs=1e-6)
    assert row.clip_fraction == pytest.approx(np.mean((x < row.q_min) | (x > row.q_max)))
    lo, hi = np.percentile(x, [1, 99])
    bin_width = 2 * 2 * float(np.abs(x).max()) / 2048  # T < 2 max|x|
    assert row.a_lo == pytest.approx(lo, abs=bin_width)
    assert row.a_hi == pytest.approx(hi, abs=bin_width)


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_per_channel_weight_sqnr_by_hand(tmp_path, fmt):
    """Per-channel int8 weights: each output channel dequantized with its own scale."""
    report, qpath = _audit(tmp_path, format=fmt, weight_type="int8", per_channel=True)
    q = onnx.load(qpath)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    folded = {t.name: numpy_helper.to_array(t) for t in onnx.load(_folded(tmp_path)).graph.initializer}
    row = next(r for r in report.layers if r.name == "/dw/conv/Conv")
    assert row.w_encoding == "int8 per-channel"
    wq = inits["/dw/conv/Conv.weight_bnfolded_quantized"]
    s = inits["/dw/conv/Conv.weight_bnfolded_scale"]
    assert s.shape == (32,)
    w_hat = wq.astype(np.float64) * s.astype(np.float64)[:, None, None, None]  # symmetric int8: zp = 0
    w = folded["/dw/conv/Conv.weight_bnfolded"].astype(np.float64)
    want = 10 * np.log10(np.sum(w**2) / np.sum((w - w_hat) ** 2))
    assert row.w_sqnr_db == pytest.approx(want, abs=1e-4)
    (tmp_path / "pt").mkdir()
    per_tensor = next(
        r for r in _audit(tmp_path / "pt", format=fmt, weight_type="int8")[0].layers if r.name == row.name
    )
    assert row.w_sqnr_db > per_tensor.w_sqnr_db + 3  # depthwise weights gain a lot from per-channel scales


def test_isolated_error_by_hand(int8_weights, tmp_path):
    """Isolated error of MaxPool computed in numpy: maxpool(dequant(quant(fp32 input))),
    and the first conv after the input, whose accumulated error is its isolated one."""
    report, qpath, folded = int8_weights
    rows = {r.name: r for r in report.layers}
    first = rows["/block1/conv/Conv"]
    assert first.sqnr_isolated_db == pytest.approx(first.sqnr_db, abs=1e-9)
    pool = rows["/pool/MaxPool"]
    src = rows["/block2/conv/Conv"]  # MaxPool reads its (Relu) output and shares its encoding
    assert (pool.scale, pool.zero_point) == (src.scale, src.zero_point)
    fm = with_outputs(onnx.load(folded), [(src.tensor, onnx.TensorProto.FLOAT), (pool.tensor, onnx.TensorProto.FLOAT)])
    onnx.save(fm, tmp_path / "f.onnx")
    fs = ort.InferenceSession(str(tmp_path / "f.onnx"))
    sx2 = se2 = 0.0
    for feeds in _batches("eval"):
        a, y = fs.run([src.tensor, pool.tensor], feeds)
        q = np.clip(np.round(a / pool.scale) + pool.zero_point, 0, 255)  # round half to even, like ORT
        a_hat = ((q - pool.zero_point) * pool.scale).astype(np.float32)
        n, c, h, w = a_hat.shape
        y_hat = a_hat.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        sx2 += float(np.sum(y.astype(np.float64) ** 2))
        se2 += float(np.sum((y.astype(np.float64) - y_hat) ** 2))
    assert pool.sqnr_isolated_db == pytest.approx(10 * np.log10(sx2 / se2), abs=1e-3)
    assert pool.sqnr_isolated_db > pool.sqnr_db  # upstream error accumulates into the pool's input
    assert pool.error_amplification == pytest.approx(pool.qmse / pool.qmse_isolated)


def test_auto_batch_size():
    from qaudit.pipeline.parallel import ACTIVATION_BUDGET, auto_batch_size, buffer_bytes_per_sample

    # every buffer counts: two batches alive, each the fp32 twins (F), the quantized
    # session's 8-bit codes (F/4) and the isolated session's (F/4): 3F per sample
    mib = 1 << 20
    assert ACTIVATION_BUDGET == 384 * mib
    assert buffer_bytes_per_sample(10 * mib) == 30 * mib
    assert buffer_bytes_per_sample(10 * mib, isolated=False) == 25 * mib
    assert auto_batch_size(10 * mib, None) == 12  # 384 // 30
    assert auto_batch_size(10 * mib, None, isolated=False) == 15  # 384 // 25
    assert auto_batch_size(106_500_000, None) == 1  # the 1-D conv net of benchmarks/bench_scale.py
    assert auto_batch_size(177_000_000, None) == 1  # PP-OCRv4 det at 320x320: 177 MB per sample
    assert auto_batch_size(1000, None) == 64 and auto_batch_size(10 * ACTIVATION_BUDGET, None) == 1
    assert auto_batch_size(1000, 8) == 8  # a fixed batch dim wins


def test_report_records_the_automatic_batch(int8_weights):
    report, _, _ = int8_weights
    s = report.settings
    assert s["batch_size_auto"] is True and s["batch_size"] == 64  # digits: ~14 kB of activations per sample
    assert 0.005 < s["activation_mb_per_sample"] < 0.1


@pytest.mark.parametrize("workers", [1, 3])
def test_calibration_ranges_equal_ort_calibrator(tmp_path, workers):
    """Ranges and histograms exactly those of ORT's PercentileCalibrater fed the
    same batches, however many threads share out the histogramming; the observer
    sees every batch with the model's output."""
    from onnxruntime.quantization import create_calibrator

    from qaudit.pipeline.quantize import calibrate, quantizable_op_types

    folded = _folded(tmp_path)
    batches = _batches("calib")
    seen = []
    ours = calibrate(
        folded,
        batches,
        qaudit.QuantConfig(),
        tmp_path,
        workers=workers,
        observe=lambda feeds, outs: seen.append(outs["logits"].shape[0]),
    )
    with quiet_ort():
        cal = create_calibrator(
            folded,
            quantizable_op_types(),
            augmented_model_path=str(tmp_path / "aug.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"symmetric": True, "num_bins": 2048, "percentile": 99.999},
        )
        for b in batches:
            r = _Reader("calib")
            r.items = [b]
            r.end = 1
            cal.collect_data(r)
        theirs = cal.compute_data()
    assert sum(seen) == sum(len(b["input"]) for b in batches) and len(seen) == len(batches)
    assert set(ours) == set(theirs) and len(set(theirs)) >= 14
    for t in theirs:
        assert ours[t].range_value == theirs[t].range_value, t
        np.testing.assert_array_equal(ours[t].hist, theirs[t].hist, err_msg=t)


def test_lean_collector_equals_ort_collector_and_survives_empty_tensors():
    """qaudit's HistogramCollector (no copies) against ORT's, batch by batch, on a
    tensor whose range grows (ORT extends its edges) and one that shrinks; an
    empty tensor, which ORT's collector fails on at the second batch
    (docs/ort-quirks.md #22), keeps its first histogram."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from qaudit.pipeline.quantize import _lean_collector_class

    kw = dict(
        method="percentile", symmetric=True, num_bins=2048, num_quantized_bins=2048, percentile=99.999, scenario="same"
    )
    ours, theirs = _lean_collector_class()(**kw), HistogramCollector(**kw)
    rng = np.random.default_rng(0)
    with quiet_ort():
        for k in range(5):
            batch = {
                "grows": (rng.standard_normal((2, 3, 7, 7)) * (1 + k)).astype(np.float32),
                "shrinks": (rng.standard_normal((2, 5)) / (1 + k)).astype(np.float32),
            }
            ours.collect({n: [v] for n, v in batch.items()})
            theirs.collect({n: [v] for n, v in batch.items()})
        for name in ("grows", "shrinks"):
            a, b = ours.histogram_dict[name], theirs.histogram_dict[name]
            assert len(a[0]) > 2048 if name == "grows" else len(a[0]) == 2048  # the extension path ran
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
        assert ours.compute_collection_result().keys() == theirs.compute_collection_result().keys()
        empty = {"e": [np.zeros((0,), np.float32)]}
        ours.collect(empty)
        first = tuple(np.copy(x) for x in ours.histogram_dict["e"])
        ours.collect(empty)  # ORT: ValueError, zero-size array to reduction operation fmax
        for x, y in zip(first, ours.histogram_dict["e"]):
            np.testing.assert_array_equal(x, y)
        with pytest.raises(ValueError, match="zero-size"):
            theirs.collect(empty)
            theirs.collect(empty)
