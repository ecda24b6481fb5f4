"""Per-tensor overrides (qaudit.pipeline.overrides): ORT's TensorQuantOverrides from qaudit's
table, the mixed-precision graph ORT's fixer makes consistent, and every metric of an
overridden row against numpy by hand and against quantize_static with the same overrides."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

import qaudit
from qaudit.errors import ConfigError
from qaudit.pipeline.audit import prepare
from qaudit.pipeline.graph import with_outputs
from qaudit.pipeline.load import load_model
from qaudit.pipeline.overrides import check_table, resolve
from qaudit.pipeline.quantize import quiet_ort

from .test_oracle import _batches, _Reader  # the sample's files, and ORT's calibration reader of them

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "digits"
#: the output of the second conv layer (its ReLU fused by ORT), a tensor of the folded graph
T16 = "/block2/relu/Relu_output_0"
ELEM = {"uint8": TensorProto.UINT8, "uint16": TensorProto.UINT16}


def _audit(tmp, overrides, **quant):
    qpath = tmp / "quantized.onnx"
    report = qaudit.audit(
        SAMPLE / "model.onnx",
        SAMPLE / "calib",
        SAMPLE / "eval",
        output_model=qpath,
        batch_size=32,  # the sample's files: qaudit's calibration batches are ORT's
        overrides=overrides,
        **quant,
    )
    cfg = qaudit.QuantConfig(overrides=overrides, **quant)
    folded = tmp / "folded.onnx"
    onnx.save(prepare(load_model(SAMPLE / "model.onnx"), quant=cfg).fold.model, folded)
    return report, qpath, folded, cfg


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    return (*_audit(tmp, {"tensors": {T16: {"type": "uint16"}}}), tmp)


def _by_hand(row, qpath, folded, tmp, dtype):
    """(x, integer codes) of the row's tensor over the evaluation set, from the written model."""
    fm = with_outputs(onnx.load(folded), [(row.tensor, TensorProto.FLOAT)])
    qm = with_outputs(onnx.load(qpath), [(row.quant_tensor, ELEM[dtype])])
    onnx.save(fm, tmp / "f.onnx")
    onnx.save(qm, tmp / "q.onnx")
    fs, qs = ort.InferenceSession(str(tmp / "f.onnx")), ort.InferenceSession(str(tmp / "q.onnx"))
    xs, qs_ = [], []
    for feeds in _batches("eval"):
        xs.append(fs.run([row.tensor], feeds)[0].astype(np.float64))
        qs_.append(qs.run([row.quant_tensor], feeds)[0].astype(np.int64))
    return np.concatenate(xs), np.concatenate(qs_)


def test_uint16_override_by_hand(mixed):
    """The overridden row has a 16-bit encoding whose q_min/q_max, SQNR and clip fraction match
    numpy by hand; the rows two layers away stay 8-bit; the row and the settings are marked."""
    report, qpath, folded, _, tmp = mixed
    rows = {r.tensor: r for r in report.layers if r.tensor}
    row = rows[T16]
    assert row.dtype == "uint16" and row.override == {T16: {"type": "uint16"}}
    assert report.settings["overrides"] == {"tensors": {T16: {"type": "uint16"}}}
    # ORT keeps a ReLU whose output is overridden (docs/ort-quirks.md): the row is the ReLU's own, and
    # the conv's row measures the pre-activation tensor, quantized with the ReLU's range [0, max]
    assert [r.name for r in report.layers if r.override] == ["/block2/relu/Relu"]
    conv = next(r for r in report.layers if r.name == "/block2/conv/Conv")
    assert conv.tensor == "/block2/bn/BatchNormalization_output_0" and conv.zero_point == 0
    assert conv.dtype == "uint8" and conv.clip_fraction > 0.4
    for far in ("/pw/relu/Relu_output_0", "/fc1_relu/Relu_output_0", "logits", "input"):
        assert rows[far].dtype == "uint8", far
    x, q = _by_hand(row, qpath, folded, tmp, "uint16")
    assert 0 <= q.min() and q.max() <= 65535
    assert (row.q_min, row.q_max) == pytest.approx((row.scale * -row.zero_point, row.scale * (65535 - row.zero_point)))
    x_hat = (q - row.zero_point).astype(np.float32) * np.float32(row.scale)
    assert row.sqnr_db == pytest.approx(10 * np.log10(np.sum(x**2) / np.sum((x - x_hat) ** 2)), abs=1e-5)
    assert row.clip_fraction == np.mean((x < row.q_min) | (x > row.q_max))
    # the ReLU's input stays 8-bit (ORT's fixer converts it to uint16 for the ReLU): the accumulated error is
    # the 8-bit one (35.8 dB unoverridden); the layer's own error, fed fp32 inputs, is smaller
    assert row.sqnr_db < 40 and row.sqnr_isolated_db > 40


def test_mixed_graph_has_converted_edges(mixed):
    """ORT's fixer converts at the boundaries: every Q/DQ pair has one type, and a uint16 tensor
    feeding an 8-bit consumer goes through a `_convert` Q/DQ pair to uint8."""
    _, qpath, _, _, _ = mixed
    q = onnx.load(qpath)
    inits = {t.name: t for t in q.graph.initializer}
    qs = {n.output[0]: n for n in q.graph.node if n.op_type == "QuantizeLinear"}
    for n in q.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in qs:
            assert inits[n.input[2]].data_type == inits[qs[n.input[0]].input[2]].data_type
    converts = [n for n in qs.values() if "_convert" in n.name]
    assert converts and {inits[n.input[2]].data_type for n in converts} <= {TensorProto.UINT8, TensorProto.UINT16}
    ort.InferenceSession(str(qpath))  # no type clash: ORT loads it


def test_converted_edges_are_measured_as_rows_of_their_own(mixed):
    """Where ORT's fixer converts a tensor (quantized at one type for its producer, re-quantized
    at the other for a consumer), the converted encoding, the one that consumer reads, is its own
    row after the tensor's: encoding, SQNR, clip fraction and isolated SQNR against numpy."""
    report, qpath, folded, _, tmp = mixed
    q = onnx.load(qpath)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    converts = {n.output[0]: n for n in q.graph.node if n.op_type == "QuantizeLinear" and "_convert" in n.name}
    rows = [r for r in report.layers if r.quant_tensor in converts]
    # the uint16 MaxPool output converted to uint8 for the depthwise conv, the 8-bit pre-activation
    # converted to uint16 for the overridden ReLU
    assert [(r.name, r.dtype) for r in rows] == [
        ("/block2/conv/Conv (converted to uint16)", "uint16"),
        ("/pool/MaxPool (converted to uint8)", "uint8"),
    ]
    names = [r.name for r in report.layers]
    for row in rows:
        main = report.layers[names.index(row.name.rsplit(" (", 1)[0])]
        assert row.index == main.index + 1 and row.tensor == main.tensor and main.dtype != row.dtype
        node = converts[row.quant_tensor]
        scale, zp = inits[node.input[1]], inits[node.input[2]]
        assert (row.scale, row.zero_point) == (pytest.approx(float(scale)), int(zp))
        x, codes = _by_hand(row, qpath, folded, tmp, row.dtype)
        x_hat = (codes - row.zero_point).astype(np.float32) * np.float32(row.scale)
        assert row.sqnr_db == pytest.approx(10 * np.log10(np.sum(x**2) / np.sum((x - x_hat) ** 2)), abs=1e-5)
        assert row.clip_fraction == np.mean((x < row.q_min) | (x > row.q_max))
        # isolated: x quantized with the tensor's own encoding, dequantized, re-quantized with the converted one
        lo, hi = {"uint8": (0, 255), "uint16": (0, 65535)}[main.dtype]
        first = np.clip(np.rint(x.astype(np.float32) / np.float32(main.scale)) + main.zero_point, lo, hi)
        y = ((first - main.zero_point) * np.float32(main.scale)).astype(np.float32)
        lo, hi = {"uint8": (0, 255), "uint16": (0, 65535)}[row.dtype]
        second = np.clip(np.rint(y / np.float32(row.scale)) + row.zero_point, lo, hi)
        y = (second - row.zero_point) * np.float32(row.scale)
        expected = 10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2))
        assert row.sqnr_isolated_db == pytest.approx(expected, abs=1e-3), row.name
    pool, conv = rows[1], report.layers[names.index("/pool/MaxPool")]
    assert pool.sqnr_isolated_db < conv.sqnr_isolated_db - 10  # the 8-bit edge the depthwise conv reads


def test_written_model_equals_quantize_static(mixed):
    """The model written equals quantize_static on the same graph with the same TensorQuantOverrides."""
    _, qpath, folded, cfg, tmp = mixed
    tqo, _ = resolve(cfg.overrides, onnx.load(folded), cfg)
    with quiet_ort():
        quantize_static(
            str(folded),
            str(tmp / "ort.onnx"),
            _Reader("calib"),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibStridedMinMax": 1, "TensorQuantOverrides": tqo},
        )
    ours = {t.name: numpy_helper.to_array(t) for t in onnx.load(qpath).graph.initializer}
    theirs = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp / "ort.onnx").graph.initializer}
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_explicit_range_gives_ort_encoding(tmp_path):
    """rmin/rmax fix the encoding: uint8 scale (rmax - rmin) / 255, zero point round(-rmin / scale)
    (ORT's compute_scale_zp, in float32); scale/zero_point are taken as given."""
    t2 = "/dw/relu/Relu_output_0"
    ov = {"tensors": {T16: {"rmin": -1.0, "rmax": 3.0}, t2: {"scale": 0.05, "zero_point": 3}}}
    report, *_ = _audit(tmp_path, ov)
    rows = {r.tensor: r for r in report.layers if r.tensor}
    scale = np.float32(4.0) / np.float32(255)
    assert rows[T16].scale == pytest.approx(float(scale), rel=1e-7)
    assert rows[T16].zero_point == int(np.round(np.float32(1.0) / scale))  # 64
    assert (rows[t2].scale, rows[t2].zero_point) == (pytest.approx(0.05, rel=1e-7), 3)


def test_per_channel_override_on_one_weight(tmp_path):
    """per_channel on one weight: that layer's weight is per-channel (one scale per output
    channel), the others per-tensor."""
    w = "/dw/conv/Conv.weight_bnfolded"
    report, qpath, *_ = _audit(tmp_path, {"tensors": {w: {"per_channel": True}}})
    enc = {r.name: r.w_encoding for r in report.layers if r.has_weights}
    assert enc["/dw/conv/Conv"] == "uint8 per-channel"
    assert {v for k, v in enc.items() if k != "/dw/conv/Conv"} == {"uint8 per-tensor"}
    row = next(r for r in report.layers if r.name == "/dw/conv/Conv")
    assert row.override == {w: {"per_channel": True}}
    q = {t.name: numpy_helper.to_array(t) for t in onnx.load(qpath).graph.initializer}
    assert q["/dw/conv/Conv.weight_bnfolded_scale"].shape == (q["/dw/conv/Conv.weight_bnfolded_quantized"].shape[0],)


def test_node_glob_expands_to_outputs():
    model = prepare(load_model(SAMPLE / "model.onnx")).fold.model
    cfg = qaudit.QuantConfig(overrides={"nodes": {"/fc*_relu/*": {"symmetric": True}}})
    tqo, applied = resolve(cfg.overrides, model, cfg)
    assert applied == {"/fc1_relu/Relu_output_0": {"symmetric": True}}
    assert tqo == {"/fc1_relu/Relu_output_0": [{"symmetric": True}]}


@pytest.mark.parametrize(
    "table, message",
    [
        ({"tensor": {}}, "unknown key 'tensor' in overrides (did you mean 'tensors'?)"),
        ({"tensors": {"x": {"typ": "uint16"}}}, "unknown key 'typ' (did you mean 'type'?)"),
        ({"tensors": {"x": {"type": "uint12"}}}, "type must be a quantized type"),
        ({"tensors": {"x": {"scale": 0.1}}}, "scale and zero_point go together"),
        ({"tensors": {"x": {"scale": 0.1, "zero_point": 0, "rmin": 0.0}}}, "cannot be combined"),
        ({"tensors": {"x": {"rmin": 2.0, "rmax": 1.0}}}, "rmin 2 is above rmax 1"),
        ({"tensors": {"x": {"axis": 0}}}, "add per_channel = true"),
    ],
)
def test_bad_tables(table, message):
    with pytest.raises(ConfigError, match=None) as e:
        check_table(table)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_glob_matching_nothing_suggests():
    model = prepare(load_model(SAMPLE / "model.onnx")).fold.model
    cfg = qaudit.QuantConfig(overrides={"tensors": {"/block2/relu/Relu_output_1": {"type": "uint16"}}})
    with pytest.raises(ConfigError) as e:
        resolve(cfg.overrides, model, cfg)
    assert "matches no tensor name of the model (did you mean '/block2/relu/Relu_output_0'?)" in str(e.value)
    cfg = qaudit.QuantConfig(overrides={"tensors": {"/fc1/Gemm": {"type": "uint16"}}})
    with pytest.raises(ConfigError, match=r"matches a node: move it to overrides\.nodes"):
        resolve(cfg.overrides, model, cfg)
    cfg = qaudit.QuantConfig(overrides={"tensors": {"input": {"type": "uint4"}}})
    with pytest.raises(ConfigError, match="is an activation; type uint4 is a weight type only"):
        resolve(cfg.overrides, model, cfg)
    with pytest.raises(ConfigError, match="exists only in the QDQ format"):
        cfg = qaudit.QuantConfig(format="qoperator", overrides={"tensors": {"input": {"type": "uint16"}}})
        resolve(cfg.overrides, model, cfg)
