"""Auditing a model quantized elsewhere (``--quantized``, issue 18 item 4).

* An ORT-quantized model audited with ``quantized=`` gives exactly the audit in which
  qaudit quantized with the same settings (rows, encodings, SQNRs, outputs, unmatched).
* A QDQ model written by hand with onnx.helper (:func:`hand_qdq`, another producer:
  its own tensor and node names, Q/DQ tensors named ``::q``/``::dq``, weights stored
  as int8 or as float + QuantizeLinear, BatchNorm folded or kept) is paired by graph
  structure, and every SQNR equals a numpy computation on onnx's ReferenceEvaluator.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import qaudit
from qaudit.errors import ConfigError, ModelError
from qaudit.options import QuantConfig

from ..conftest import SAMPLE_EVAL, SAMPLE_MODEL

N = 64  # evaluation samples per audit (the sample's first batch holds 100)


def _eval(tmp_path):
    x = np.load(SAMPLE_EVAL / "batch_000.npy")[:N]
    path = tmp_path / "eval.npy"
    np.save(path, x)
    return path, x


ROW_FIELDS = (
    "name",
    "op_type",
    "tensor",
    "quant_tensor",
    "fused",
    "bn_folded",
    "dtype",
    "scale",
    "zero_point",
    "q_min",
    "q_max",
    "clip_fraction",
    "sqnr_db",
    "sqnr_isolated_db",
    "qmse",
    "w_sqnr_db",
    "w_qmse",
    "w_encoding",
    "fold_w_range",
)


def _extra(options):
    """ORT extra options on top of qaudit's own (QuantConfig.ort_extra_options)."""
    base = QuantConfig.ort_extra_options
    return lambda self: {**base(self), **options}


SETTINGS = {
    "qdq-default": ({}, {}),
    "qoperator": ({"format": "qoperator"}, {}),
    "per-channel-int8": ({"per_channel": True, "activation_type": "int8", "weight_type": "int8"}, {}),
    "reduce-range": ({"reduce_range": True, "weight_type": "int8"}, {}),
    "symmetric-dedicated-nobias": (
        {"activation_type": "int8", "weight_type": "int8", "per_channel": True},
        {"ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True, "QuantizeBias": False},
    ),
    "qoperator-symmetric": ({"format": "qoperator", "weight_type": "int8"}, {"ActivationSymmetric": True}),
    # the recipe of issue 18 item 4's other producer: symmetric everything, a Q/DQ pair per consumer,
    # every Relu kept with its own Q/DQ (ORT removes none)
    "symmetric-dedicated-keep-relu": (
        {"activation_type": "int8", "weight_type": "int8", "per_channel": True},
        {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "DedicatedQDQPair": True,
            "QDQKeepRemovableActivations": True,
        },
    ),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_an_ort_quantized_model_audits_as_if_qaudit_quantized_it(case, tmp_path, monkeypatch):
    options, extra = SETTINGS[case]
    ev, _ = _eval(tmp_path)
    q = tmp_path / "q.onnx"
    with monkeypatch.context() as m:
        m.setattr(QuantConfig, "ort_extra_options", _extra(extra))
        own = qaudit.audit(SAMPLE_MODEL, ev, ev, output_model=q, **options)
    given = qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=q)
    assert [tuple(getattr(r, f) for f in ROW_FIELDS) for r in given.layers] == [
        tuple(getattr(r, f) for f in ROW_FIELDS) for r in own.layers
    ]
    assert [r.histogram for r in given.layers] == [r.histogram for r in own.layers]
    assert given.outputs == own.outputs
    assert given.unmatched == own.unmatched
    assert given.folding["folded"] == own.folding["folded"]
    assert given.folding["check_samples"] == N  # the fold check ran on the evaluation data
    s, o = given.settings, own.settings
    assert (s["format"], s["activation_type"], s["weight_type"], s["per_channel"]) == (
        o["format"],
        o["activation_type"],
        o["weight_type"],
        o["per_channel"],
    )
    assert s["source"] == "user" and s["calibrate_method"] is None and s["percentile"] is None
    if extra.get("ActivationSymmetric"):
        assert s["activation_symmetric"] is True
    if extra.get("QDQKeepRemovableActivations"):  # each kept Relu is its own row, its Conv's output too
        assert sum(n.op_type == "Relu" for n in onnx.load(q).graph.node) == 5
        assert sum(r.op_type == "Relu" and r.sqnr_db is not None for r in given.layers) == 5
    if extra.get("WeightSymmetric") or options.get("weight_type") == "int8":
        assert s["weight_symmetric"] is True  # ORT's int8 weights are symmetric by default
    from tests.conftest import sha256_file

    assert given.model["quantized"]["path"] == str(q)
    assert given.model["quantized"]["sha256"] == sha256_file(q)
    assert given.data["n_calib"] == 0 and given.data["calib"] is None
    assert "qaudit did not calibrate or quantize it" in given.notes[0]


def _reader(x, name="x"):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    return Reader()


def test_bn_kept_by_ort_is_not_folded_for_the_weight_metrics(tmp_path):
    """quantize_static on an unfolded model keeps the BatchNormalization in float: qaudit
    compares the conv's dequantized weights with the *unfolded* fp32 weights::

        x -> Conv(layer) -> t -> BatchNormalization(bn) -> y -> Relu -> out
    """
    from onnxruntime.quantization import QuantFormat, quantize_static

    from ..models import layer_bn_model

    model = layer_bn_model("conv")
    fp32, q = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, fp32)
    x = np.random.default_rng(0).normal(size=(16, 4, 7, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    quantize_static(str(fp32), str(q), _reader(x), quant_format=QuantFormat.QDQ)
    qm = onnx.load(q)
    ops = {n.op_type for n in qm.graph.node}
    assert "BatchNormalization" in ops and "Relu" not in ops  # ORT removed the Relu after the BN (quirk 38)
    r = qaudit.audit(fp32, eval=tmp_path / "x.npy", quantized=q)
    assert r.folding["folded"] == [] and r.folding["skipped"][0]["bn"] == "bn"
    assert "not folded there" in r.folding["skipped"][0]["reason"]
    row = next(x for x in r.layers if x.name == "layer")
    assert row.bn_folded is None
    bn_row = next(x for x in r.layers if x.name == "bn")
    assert bn_row.tensor == "out" and [u.tensor for u in r.unmatched] == ["y"]
    # by hand: the graph's int8 weights dequantized against the unfolded fp32 weights
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    dq = next(
        n for n in qm.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).ndim == 4
    )
    w_hat = inits[dq.input[1]] * (inits[dq.input[0]].astype(np.float32) - inits[dq.input[2]].astype(np.float32))
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "layer.w"))
    assert row.w_sqnr_db == pytest.approx(10 * np.log10(np.sum(w**2) / np.sum((w - w_hat) ** 2)), rel=1e-6)


# ------------------------------------------------------------ another producer


def _fold_by_hand(model):
    """BatchNormalization after Conv/Gemm folded into the layer with numpy (thesis Eq. 3.2)."""
    m = copy.deepcopy(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    drop = []
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        layer = prod[bn.input[0]]
        gamma, beta, mean, var = (numpy_helper.to_array(inits[i]) for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        s = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[layer.input[1]])
        b = numpy_helper.to_array(inits[layer.input[2]]) if len(layer.input) > 2 else np.zeros(len(s), np.float32)
        w = w * s.reshape(-1, *([1] * (w.ndim - 1)))  # Conv [O, I, kh, kw] and Gemm transB [O, I]
        b = s * (b - mean) + beta
        inits[layer.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), layer.input[1]))
        bias = f"{layer.name}.folded_bias"
        g.initializer.append(numpy_helper.from_array(b.astype(np.float32), bias))
        if len(layer.input) > 2:
            layer.input[2] = bias
        else:
            layer.input.append(bias)
        layer.output[0] = bn.output[0]
        drop.append(bn)
    for bn in drop:
        g.node.remove(bn)
    return m


def _act_encoding(lo, hi):
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = np.float32((hi - lo) / 255.0 or 1.0)
    zp = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zp


def hand_qdq(fp32: onnx.ModelProto, calib: np.ndarray, fold_bn: bool, int_weights: bool):
    """A QDQ model written by hand, as a graph-surgery script would: every tensor and node renamed
    (``v0``, ``v1``, ...; ``node0``, ...), every activation quantized to uint8 (min/max of
    ``calib``) through ``QuantizeLinear -> ::q -> DequantizeLinear -> ::dq``, the Conv/Gemm weights
    per-channel symmetric int8 (stored as int8, or as float followed by QuantizeLinear), biases
    float, the model output float. Returns the model and ``{fp32 tensor: (int tensor, scale, zp)}``.
    """
    m = _fold_by_hand(fp32) if fold_bn else copy.deepcopy(fp32)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    x_name = g.input[0].name
    outs = [o for n in g.node for o in n.output]
    probe = copy.deepcopy(m)
    probe.graph.output.extend([helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    ref = ReferenceEvaluator(probe)
    values = dict(zip([o.name for o in probe.graph.output], ref.run(None, {x_name: calib})))
    values[x_name] = calib
    final = {o.name for o in g.output}
    new = {x_name: x_name, **{o: o if o in final else f"v{i}" for i, o in enumerate(outs)}}
    nodes, new_inits, twins = [], [], {}
    for t in [x_name] + [o for o in outs if o not in final]:
        s, z = _act_encoding(values[t].min(), values[t].max())
        name = new[t]
        new_inits += [
            numpy_helper.from_array(np.array(s), f"{name}::s"),
            numpy_helper.from_array(np.array(z), f"{name}::z"),
        ]
    for i, node in enumerate(g.node):
        ins = []
        for j, a in enumerate(node.input):
            if a in inits:
                w = inits[a]
                if j == 1 and node.op_type in ("Conv", "Gemm"):
                    s = (np.abs(w).reshape(len(w), -1).max(1) / 127.0).astype(np.float32)
                    q = np.clip(np.rint(w / s.reshape(-1, *([1] * (w.ndim - 1)))), -127, 127).astype(np.int8)
                    new_inits += [
                        numpy_helper.from_array(s, f"w{i}::s"),
                        numpy_helper.from_array(np.zeros(len(s), np.int8), f"w{i}::z"),
                    ]
                    src = f"w{i}::int8" if int_weights else f"w{i}::float"
                    new_inits.append(numpy_helper.from_array(q if int_weights else w, src))
                    if not int_weights:
                        nodes.append(
                            helper.make_node("QuantizeLinear", [src, f"w{i}::s", f"w{i}::z"], [f"w{i}::q"], axis=0)
                        )
                        src = f"w{i}::q"
                    nodes.append(
                        helper.make_node("DequantizeLinear", [src, f"w{i}::s", f"w{i}::z"], [f"w{i}::dq"], axis=0)
                    )
                    ins.append(f"w{i}::dq")
                else:
                    new_inits.append(numpy_helper.from_array(w, f"c{i}_{j}"))
                    ins.append(f"c{i}_{j}")
            else:
                ins.append(f"{new[a]}::dq")
        nodes.append(helper.make_node(node.op_type, ins, [new[o] for o in node.output], name=f"node{i}"))
        nodes[-1].attribute.extend(node.attribute)
        for o in node.output:
            if o not in final:
                n = new[o]
                nodes.append(helper.make_node("QuantizeLinear", [n, f"{n}::s", f"{n}::z"], [f"{n}::q"]))
                nodes.append(helper.make_node("DequantizeLinear", [f"{n}::q", f"{n}::s", f"{n}::z"], [f"{n}::dq"]))
    n = new[x_name]
    nodes[:0] = [
        helper.make_node("QuantizeLinear", [n, f"{n}::s", f"{n}::z"], [f"{n}::q"]),
        helper.make_node("DequantizeLinear", [f"{n}::q", f"{n}::s", f"{n}::z"], [f"{n}::dq"]),
    ]
    scales = {t.name: numpy_helper.to_array(t) for t in new_inits}
    for t in [x_name] + [o for o in outs if o not in final]:
        twins[t] = (f"{new[t]}::q", scales[f"{new[t]}::s"], scales[f"{new[t]}::z"])
    graph = helper.make_graph(nodes, "hand_qdq", list(g.input), list(g.output), new_inits)
    # opset 19: the oldest for which onnx.reference implements DequantizeLinear (onnx 1.x)
    q = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], producer_name="hand-qdq")
    onnx.checker.check_model(q)
    return q, twins


@pytest.mark.parametrize("fold_bn", [True, False], ids=["bn-folded", "bn-kept"])
@pytest.mark.parametrize("int_weights", [True, False], ids=["int8-weights", "float-weights+Q"])
def test_a_hand_written_qdq_model_is_paired_by_structure(fold_bn, int_weights, tmp_path):
    fp32 = onnx.load(SAMPLE_MODEL)
    ev, x = _eval(tmp_path)
    calib = np.load(SAMPLE_EVAL / "batch_001.npy")
    qm, twins = hand_qdq(fp32, calib, fold_bn, int_weights)
    q = tmp_path / "q.onnx"
    onnx.save(qm, q)
    r = qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=q)
    # the producer's names are not ORT's: the rows still carry the fp32 graph's names
    assert [row.name for row in r.layers if row.op_type in ("Conv", "Gemm")] == [
        n.name for n in fp32.graph.node if n.op_type in ("Conv", "Gemm")
    ]
    s = r.settings
    assert (s["format"], s["activation_type"], s["weight_type"], s["per_channel"]) == ("qdq", "uint8", "int8", True)
    assert s["weight_symmetric"] is True and s["calibrate_method"] is None
    assert r.model["quantized"]["producer"] == "hand-qdq"
    assert (len(r.folding["folded"]), len(r.folding["skipped"])) == ((5, 0) if fold_bn else (0, 5))

    # independent: onnx's ReferenceEvaluator on both models, SQNR by hand
    fp32_all = copy.deepcopy(fp32)
    fp32_all.graph.output.extend(
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for n in fp32.graph.node for o in n.output]
    )
    a = dict(zip([o.name for o in fp32_all.graph.output], ReferenceEvaluator(fp32_all).run(None, {"input": x})))
    a["input"] = x
    q_all = copy.deepcopy(qm)
    q_all.graph.output.extend([helper.make_tensor_value_info(t, TensorProto.UINT8, None) for t, _, _ in twins.values()])
    b = dict(zip([o.name for o in q_all.graph.output], ReferenceEvaluator(q_all).run(None, {"input": x})))
    rows = {row.tensor: row for row in r.layers if row.tensor}
    assert set(rows) == set(twins)  # every tensor the producer quantized, under its fp32 name
    for t, (qt, scale, zp) in twins.items():
        e = a[t].astype(np.float64) - scale * (b[qt].astype(np.float64) - float(zp))
        expected = 10 * np.log10(np.sum(a[t].astype(np.float64) ** 2) / np.sum(e**2))
        assert rows[t].sqnr_db == pytest.approx(expected, abs=0.05), t
        assert (rows[t].scale, rows[t].zero_point) == (pytest.approx(float(scale)), int(zp))
    # weights: the int8 the graph holds against the fp32 weights it was made from (folded or not)
    ref = _fold_by_hand(fp32) if fold_bn else fp32
    w_ref = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    for node in ref.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w = w_ref[node.input[1]].astype(np.float64)
        s = np.abs(w).reshape(len(w), -1).max(1) / 127.0
        s = s.astype(np.float32).astype(np.float64).reshape(-1, *([1] * (w.ndim - 1)))
        w_hat = np.clip(np.rint(w_ref[node.input[1]] / s.astype(np.float32)), -127, 127) * s
        expected = 10 * np.log10(np.sum(w**2) / np.sum((w - w_hat) ** 2))
        row = next(row for row in r.layers if row.name == node.name)
        assert row.w_sqnr_db == pytest.approx(expected, abs=1e-3), node.name
        assert row.w_encoding == "int8 per-channel"
    assert r.outputs[0].name == "logits" and r.outputs[0].sqnr_db > 10


# ------------------------------------------------------------------ bad pairs


def _ort_quantized(tmp_path):
    ev, _ = _eval(tmp_path)
    q = tmp_path / "q.onnx"
    qaudit.audit(SAMPLE_MODEL, ev, ev, output_model=q, isolated=False)
    return ev, q


def test_bad_pairs_are_one_line_errors(tmp_path):
    from ..models import layer_bn_model

    ev, q = _ort_quantized(tmp_path)
    other = tmp_path / "other.onnx"
    onnx.save(layer_bn_model("conv"), other)
    with pytest.raises(ModelError, match=r"^quantized model file not found: .*missing\.onnx \(--quantized\)$"):
        qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match=r"holds no quantized op .* it is an fp32 model; pass the model quantized"):
        qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=other)
    with pytest.raises(
        ModelError, match=r"does not correspond to .*model\.onnx: its inputs are x, the fp32 model's input"
    ):
        x = np.random.default_rng(0).normal(size=(4, 4, 7, 7)).astype(np.float32)
        oq = tmp_path / "other_q.onnx"
        np.save(tmp_path / "x.npy", x)
        qaudit.audit(other, tmp_path / "x.npy", tmp_path / "x.npy", output_model=oq)
        qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=oq)
    with pytest.raises(ModelError, match=r"is MODEL.onnx itself"):
        qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=SAMPLE_MODEL)
    with pytest.raises(ConfigError, match=r"needs evaluation data: give --eval DIR \(--calib is not used"):
        qaudit.audit(SAMPLE_MODEL, ev, quantized=q)
    with pytest.raises(ConfigError, match=r"drop --output-model"):
        qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=q, output_model=tmp_path / "out.onnx")


def test_same_inputs_and_outputs_but_another_network_is_refused(tmp_path):
    """Same input and output names and shapes, other layers: the weight shapes differ."""
    ev, q = _ort_quantized(tmp_path)
    fp32 = onnx.load(SAMPLE_MODEL)
    g = fp32.graph
    conv = next(n for n in g.node if n.name == "/block1/conv/Conv")
    k = next(t for t in g.initializer if t.name == conv.input[1])
    kw = numpy_helper.to_array(k)
    k.CopyFrom(numpy_helper.from_array(np.pad(kw, ((0, 0), (0, 0), (1, 1), (1, 1))), k.name))  # 5x5, same output
    for a in conv.attribute:
        if a.name == "kernel_shape":
            a.ints[:] = [5, 5]
        if a.name == "pads":
            a.ints[:] = [2, 2, 2, 2]
    edited = tmp_path / "edited.onnx"
    onnx.save(fp32, edited)
    with pytest.raises(
        ModelError,
        match=r"layer '/block1/conv/Conv' has weights \[\d+,1,3,3\] there and \[\d+,1,5,5\] in the fp32 model; pass",
    ):
        qaudit.audit(edited, eval=ev, quantized=q)


def test_a_dynamically_quantized_model_is_refused(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    ev, _ = _eval(tmp_path)
    q = tmp_path / "dyn.onnx"
    quantize_dynamic(str(SAMPLE_MODEL), str(q))
    with pytest.raises(ModelError) as e:
        qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=q)
    msg = str(e.value)
    assert "is dynamically quantized (" in msg and "DynamicQuantizeLinear" in msg
    assert "computed at run time from each batch" in msg and "\n" not in msg


def test_unused_options_are_noted(tmp_path):
    ev, q = _ort_quantized(tmp_path)
    r = qaudit.audit(SAMPLE_MODEL, ev, ev, quantized=q, per_channel=True, percentile=99.9)
    assert (
        "not used with --quantized (the quantized model is audited as it is): --calib, --per-channel, --percentile"
        in r.notes
    )
    assert r.settings["per_channel"] is False  # read from the graph, not the option


def test_ort_recommended_preprocessing_then_quantize_static(tmp_path):
    """``quant_pre_process`` (ORT's optimizer folds Conv+BN, gives the Convs a bias, and keeps Gemm+BN:
    quirk 10) then ``quantize_static``: the Convs pair although their inputs differ from the fp32
    model's, the Gemm's BatchNormalization stays unfolded, and every weight SQNR equals numpy's on the
    weights ORT quantized."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ev, _ = _eval(tmp_path)
    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(SAMPLE_MODEL), str(pre))
    x = np.load(SAMPLE_EVAL / "batch_001.npy")[:16]
    rows = {}
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        q = tmp_path / f"q_{fmt.name}.onnx"
        quantize_static(str(pre), str(q), _reader(x, "input"), quant_format=fmt, per_channel=True)
        r = qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=q)
        assert [f["bn"] for f in r.folding["skipped"]] == ["/fc1_bn/BatchNormalization"]
        assert len(r.folding["folded"]) == 4
        rows[fmt.name] = {row.name: row for row in r.layers}
        if fmt == QuantFormat.QDQ:
            qm = onnx.load(q)
            qi = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
            wi = {t.name: numpy_helper.to_array(t) for t in onnx.load(pre).graph.initializer}
            for node in onnx.load(pre).graph.node:
                if node.op_type not in ("Conv", "Gemm"):
                    continue
                w, name = wi[node.input[1]].astype(np.float64), node.input[1]
                shape = (-1,) + (1,) * (w.ndim - 1)
                w_hat = qi[f"{name}_scale"].reshape(shape) * (
                    qi[f"{name}_quantized"].astype(np.float64) - qi[f"{name}_zero_point"].reshape(shape)
                )
                expected = 10 * np.log10(np.sum(w**2) / np.sum((w - w_hat) ** 2))
                assert rows["QDQ"][node.name].w_sqnr_db == pytest.approx(expected, abs=1e-3), node.name
    assert {k: v.w_sqnr_db for k, v in rows["QOperator"].items() if v.w_sqnr_db} == {
        k: v.w_sqnr_db for k, v in rows["QDQ"].items() if v.w_sqnr_db
    }


def test_a_quantized_model_converted_to_a_higher_opset_pairs(tmp_path):
    """qaudit's per-channel QDQ converts an opset-11 model to 13 (quirk 27), and onnx.version_converter
    turns the opset-11 Softmax over a 4-D tensor into Flatten -> Softmax -> Reshape: with --quantized
    the fp32 graph is converted the same way, so every row pairs as in the audit that quantized it::

        x [N, 1, 8, 8] -> Conv(conv) -> Relu -> Conv(head) -> Softmax(axis=1) -> y
    """
    from ..models import _conv_w, _model_of

    rng = np.random.default_rng(3)
    inits = [
        _conv_w(rng, 8, 1, "conv.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "conv.b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (5, 8, 1, 1)).astype(np.float32), "head.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "head.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "head.w", "head.b"], ["logits"], name="head"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    fp32 = tmp_path / "m.onnx"
    onnx.save(_model_of(nodes, "softmax11", ["N", 5, 8, 8], inits, opset=11), fp32)
    np.save(tmp_path / "x.npy", rng.normal(size=(32, 1, 8, 8)).astype(np.float32))
    ev, q = tmp_path / "x.npy", tmp_path / "q.onnx"
    own = qaudit.audit(fp32, ev, ev, output_model=q, per_channel=True, weight_type="int8")
    assert "Flatten" in {n.op_type for n in onnx.load(q).graph.node}
    given = qaudit.audit(fp32, eval=ev, quantized=q)
    assert [tuple(getattr(r, f) for f in ROW_FIELDS) for r in given.layers] == [
        tuple(getattr(r, f) for f in ROW_FIELDS) for r in own.layers
    ]
    assert given.outputs == own.outputs and given.unmatched == own.unmatched
    assert "opset upgraded from 11 to 13 with onnx.version_converter: pairing its nodes" in " ".join(given.notes)


# ------------------------------------------------------------ NNCF, a third producer


@pytest.mark.extra  # nncf (test extra)
def test_an_nncf_quantized_model_pairs_and_its_numbers_equal_numpy(tmp_path):
    """NNCF's ONNX backend (``nncf.quantize`` on the ModelProto): its own names (``q_output_*``,
    ``scale_*``), int8 weights stored as initializers read by DequantizeLinear only, BatchNorm
    kept, MaxPool's output left float, biases changed by its fast bias correction. Every
    activation it quantized is a row under its fp32 name with NNCF's encoding, and every SQNR
    equals numpy on a plain ORT session (no graph optimization) of each model."""
    nncf = pytest.importorskip("nncf")
    import onnxruntime as ort

    fp32 = onnx.load(SAMPLE_MODEL)
    ev, x = _eval(tmp_path)
    calib = np.load(SAMPLE_EVAL / "batch_001.npy")[:N]
    data = nncf.Dataset([{"input": calib[i : i + 1]} for i in range(len(calib))])
    qm = nncf.quantize(fp32, data, subset_size=len(calib))
    q = tmp_path / "q.onnx"
    onnx.save(qm, q)
    r = qaudit.audit(SAMPLE_MODEL, eval=ev, quantized=q)
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    act_q = [n for n in qm.graph.node if n.op_type == "QuantizeLinear"]  # NNCF quantizes no weight at run time
    assert act_q and all(n.input[0] not in inits for n in act_q)
    rows = {row.tensor: row for row in r.layers if row.tensor}
    assert set(rows) == {n.input[0] for n in act_q}  # every tensor NNCF quantized is paired
    assert all(u.reason for u in r.unmatched)  # what stays float says why
    s = r.settings
    assert (s["format"], s["activation_type"], s["weight_type"], s["per_channel"]) == ("qdq", "uint8", "int8", True)

    def run_all(model, names, elem):
        m = copy.deepcopy(model)
        m.graph.output.extend([helper.make_tensor_value_info(t, elem, None) for t in names])
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in m.graph.output], sess.run(None, {"input": x})))

    def sqnr(ref, got):
        ref, got = ref.astype(np.float64), got.astype(np.float64)
        return 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))

    a = run_all(fp32, [t for t in rows if t != "input"], TensorProto.FLOAT)
    a["input"] = x
    b = run_all(qm, [n.output[0] for n in act_q], TensorProto.UINT8)
    per_channel = []
    for n in act_q:
        t, scale, zp = n.input[0], inits[n.input[1]], inits[n.input[2]].astype(np.float64)
        if scale.size == 1:
            assert (rows[t].scale, rows[t].zero_point) == (pytest.approx(float(scale)), int(zp)), t
        else:  # NNCF quantizes the input of a depthwise Conv per channel (axis 1): no single scale (docs/metrics.md)
            per_channel.append(t)
            axis = next(a.i for a in n.attribute if a.name == "axis")
            shape = [1] * b[n.output[0]].ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
            assert (rows[t].scale, rows[t].zero_point, rows[t].clip_fraction) == (None, None, None)
        assert rows[t].sqnr_db == pytest.approx(sqnr(a[t], scale * (b[n.output[0]] - zp)), abs=0.05), t
    assert per_channel == ["/block2/relu/Relu_output_0"]  # the MaxPool before the depthwise Conv reads it
    # weights: the int8 initializers dequantized against the fp32 weights (NNCF kept the BNs: unfolded)
    w_fp32 = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    for node in fp32.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = next(
            d
            for d in qm.graph.node
            if d.op_type == "DequantizeLinear" and d.input[0] in inits and node.input[1] in d.input[0]
        )
        wq, ws, wz = (inits[i] for i in dq.input)
        shape = (-1, *([1] * (wq.ndim - 1)))
        w_hat = ws.reshape(shape).astype(np.float64) * (wq.astype(np.float64) - wz.reshape(shape))
        row = next(row for row in r.layers if row.name == node.name)
        assert row.w_encoding == "int8 per-channel"
        assert row.w_sqnr_db == pytest.approx(sqnr(w_fp32[node.input[1]], w_hat), abs=1e-3), node.name
    out = r.outputs[0]
    assert out.name == "logits"
    assert out.sqnr_db == pytest.approx(sqnr(a["logits"], b["logits"]), abs=0.05)
