"""BN folding equals the unfolded model (onnx's ReferenceEvaluator as the oracle)."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from qaudit.pipeline.graph import output_channel_matrix
from qaudit.pipeline.load import load_model
from qaudit.pipeline.transform import constants_to_initializers, fold_batchnorm

from ..models import input_for, layer_bn_model, shared_output_model

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "digits"
KINDS = [
    "conv",
    "conv_nobias",
    "conv_grouped",
    "conv_depthwise",
    "convT",
    "convT_grouped",
    "gemm_transB",
    "gemm_noTransB_nobias",
    "gemm_alpha_beta",
]


def _with_y(model, rank):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(
        onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [f"d{i}" for i in range(rank)])
    )
    return m


def _run(model, x):
    """onnx's ReferenceEvaluator, an oracle independent of ONNX Runtime. It cannot
    run grouped ConvTranspose (onnx 1.23.2 reshapes the weight with group=1), so
    that model runs on ORT with every graph optimization off."""
    if any(
        n.op_type == "ConvTranspose" and any(a.name == "group" and a.i > 1 for a in n.attribute)
        for n in model.graph.node
    ):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run(["y", "out"], {"x": x})
    return ReferenceEvaluator(model).run(["y", "out"], {"x": x})


@pytest.mark.parametrize("kind", KINDS)
def test_folded_model_equals_original(kind):
    model = layer_bn_model(kind)
    res = fold_batchnorm(model)
    assert list(res.folded) == ["layer"]
    assert not [n for n in res.model.graph.node if n.op_type == "BatchNormalization"]
    onnx.checker.check_model(res.model)
    x = input_for(model)
    # compare the pre-Relu tensor too: Relu would hide sign errors
    rank = 2 if kind.startswith("gemm") else 4
    want_y, want = _run(_with_y(model, rank), x)
    got_y, got = _run(_with_y(res.model, rank), x)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "conv_nobias", "convT_grouped", "gemm_transB", "gemm_noTransB_nobias"])
def test_fold_record_keeps_weights_before_and_after(kind):
    model = layer_bn_model(kind)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rec = fold_batchnorm(model).folded["layer"]
    np.testing.assert_array_equal(rec.weight_before, inits["layer.w"])
    s = inits["bn.gamma"].astype(np.float64) / np.sqrt(inits["bn.var"].astype(np.float64) + 1e-3)
    node = model.graph.node[0]
    # by hand: every output channel's weights scaled by s_c
    rows_before = output_channel_matrix(node, inits["layer.w"]).astype(np.float64)
    rows_after = output_channel_matrix(node, rec.weight_after)
    np.testing.assert_allclose(rows_after, rows_before * s[:, None], rtol=1e-6)
    b = inits.get("layer.b", np.zeros_like(s))
    np.testing.assert_allclose(rec.bias_after, s * (b - inits["bn.mean"]) + inits["bn.beta"], rtol=1e-5, atol=1e-6)
    # the user's model object is untouched
    assert [n.op_type for n in model.graph.node] == [node.op_type, "BatchNormalization", "Relu"]


def test_fold_skips_bn_when_layer_output_is_shared():
    res = fold_batchnorm(shared_output_model())
    assert res.folded == {}
    assert len(res.skipped) == 1 and "other consumers" in res.skipped[0].reason


def test_convtranspose_output_channels():
    """ConvTranspose weight [C_in, C_out/g, k, k]: output channel g*(C_out/g)+j reads w[block g, j]."""
    node = onnx.helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2)
    w = np.arange(4 * 3 * 1 * 1).reshape(4, 3, 1, 1)
    rows = output_channel_matrix(node, w)
    assert rows.shape == (6, 2)
    np.testing.assert_array_equal(rows[0], [w[0, 0, 0, 0], w[1, 0, 0, 0]])
    np.testing.assert_array_equal(rows[4], [w[2, 1, 0, 0], w[3, 1, 0, 0]])


def test_sample_folds_every_bn_and_matches_original():
    lm = load_model(SAMPLE / "model.onnx")
    res = fold_batchnorm(lm.model)
    assert sorted(r.op_type for r in res.folded.values()) == ["Conv"] * 4 + ["Gemm"]
    x = np.load(SAMPLE / "eval" / "batch_000.npy")
    (want,) = ReferenceEvaluator(lm.model).run(None, {"input": x})
    (got,) = ReferenceEvaluator(res.model).run(None, {"input": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_constants_become_initializers():
    model = layer_bn_model("conv")
    # move the weight into a Constant node, as PaddlePaddle exports do
    w = next(t for t in model.graph.initializer if t.name == "layer.w")
    model.graph.initializer.remove(w)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["layer.w"], value=w))
    assert constants_to_initializers(model) == 1
    assert "layer.w" in {t.name for t in model.graph.initializer}
    assert list(fold_batchnorm(model).folded) == ["layer"]


def _broken_fold(scale_first_channel: float):
    """``fold_batchnorm`` whose first folded layer's output channel 0 is off by ``scale``."""
    import qaudit.pipeline.audit

    real = qaudit.pipeline.audit.fold_batchnorm

    def fold(model, keep=()):
        res = real(model, keep)
        layer = next(iter(res.folded))
        node = next(n for n in res.model.graph.node if n.name == layer)
        init = next(i for i in res.model.graph.initializer if i.name == node.input[1])
        w = numpy_helper.to_array(init).copy()
        w[0] *= scale_first_channel
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        return res

    return fold


def test_folding_check_stops_a_wrong_fold(monkeypatch, tmp_path):
    """The calibration pass compares the folded model with the original: a fold
    that changes the outputs stops the audit with FoldingError."""
    import qaudit
    from qaudit.errors import FoldingError

    monkeypatch.setattr("qaudit.pipeline.audit.fold_batchnorm", _broken_fold(1.5))
    with pytest.raises(FoldingError, match="BatchNormalization folding changed output 'logits'"):
        qaudit.audit(qaudit.AuditConfig(model=SAMPLE / "model.onnx", calib=SAMPLE / "calib", isolated=False))


def test_folding_check_covers_the_first_samples(monkeypatch):
    """Checked on the first FOLD_CHECK_SAMPLES calibration samples (whole batches),
    not beyond; the report says how many. A wrong fold is caught within them."""
    import qaudit
    from qaudit.errors import FoldingError

    monkeypatch.setattr("qaudit.pipeline.audit.FOLD_CHECK_SAMPLES", 20)
    cfg = qaudit.AuditConfig(model=SAMPLE / "model.onnx", calib=SAMPLE / "calib", isolated=False, batch_size=8)
    report = qaudit.audit(cfg)
    assert report.data["n_calib"] > 24
    assert report.folding["check_samples"] == 24  # three batches of 8 reach 20
    chk = report.folding["check"]["logits"]
    assert (
        0 < chk["max_abs"] and chk["max_abs_diff"] <= report.folding["atol"] + report.folding["rtol"] * chk["max_abs"]
    )
    monkeypatch.setattr("qaudit.pipeline.audit.fold_batchnorm", _broken_fold(1.5))
    with pytest.raises(FoldingError):
        qaudit.audit(cfg)


# ------------------------------------------------- BN parameters that cannot fold


def _with_bn_param(model, name, index, value):
    for t in model.graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t).copy()
            a[index] = value
            t.CopyFrom(numpy_helper.from_array(a, name))
    return model


@pytest.mark.parametrize(
    ("param", "value", "reason"),
    [
        ("bn.var", -1.0, "var + epsilon <= 0 (channel 2: var -1, epsilon 0.001)"),
        ("bn.var", -1e-3, "var + epsilon <= 0 (channel 2: var -0.001, epsilon 0.001)"),  # exactly 0
        ("bn.var", np.inf, "BatchNormalization var 'bn.var' holds NaN or Inf"),
        ("bn.gamma", np.nan, "BatchNormalization scale 'bn.gamma' holds NaN or Inf"),
        ("bn.mean", -np.inf, "BatchNormalization mean 'bn.mean' holds NaN or Inf"),
    ],
)
def test_bn_whose_scale_is_not_a_number_is_not_folded(param, value, reason):
    """gamma / sqrt(var + eps) with var + eps <= 0 (or any NaN/Inf parameter) is not a
    number: the BN stays in the graph with the reason, and numpy warns about nothing."""
    import warnings

    model = _with_bn_param(layer_bn_model("conv"), param, 2, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (sqrt of a negative number) fails the test
        res = fold_batchnorm(model)
    assert res.folded == {}
    (skip,) = res.skipped
    assert skip.bn_node == "bn" and skip.reason.startswith(reason)
    assert [n.op_type for n in res.model.graph.node] == ["Conv", "BatchNormalization", "Relu"]


def test_negative_variance_reason_reaches_the_report(tmp_path):
    import warnings

    import qaudit

    model = _with_bn_param(layer_bn_model("conv"), "bn.var", 2, -1.0)
    onnx.save(model, tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = qaudit.audit(tmp_path / "m.onnx", calib=input_for(model, 8))
    assert report.folding["folded"] == []
    (skip,) = report.folding["skipped"]
    assert skip["bn"] == "bn" and "var + epsilon <= 0" in skip["reason"]


# ------------------------------------------------------ shared initializers


def test_shared_bias_gets_one_copy_per_layer():
    from qaudit.pipeline.transform import normalize

    from ..models import shared_bias_model

    model = shared_bias_model()
    x = np.random.default_rng(2).normal(size=(2, 1, 8, 8)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    n_constants, changes = normalize(model)
    assert n_constants == 0
    assert [(c.kind, c.target) for c in changes] == [("unshare_initializer", "b")]
    assert "conv1, conv2" in changes[0].detail
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert convs["conv1"].input[2] == "b" and convs["conv2"].input[2] == "b.conv2"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits["b"], inits["b.conv2"])
    assert inits["w1"] is not None and "w1.conv2" not in inits  # unshared weights stay as they are
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], want)


def test_unshared_copy_names_avoid_every_existing_name():
    """Two Convs share weight and bias; an activation already has the copy's first-choice name::

    x -> Conv(c1: w, b) -> b.c2 --\
    x -> Conv(c2: w, b) -> t ------> Add -> y
    """
    from onnx import TensorProto, helper

    from qaudit.pipeline.transform import unshare_initializers

    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=2).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["b.c2"], name="c1"),
        helper.make_node("Conv", ["x", "w", "b"], ["t"], name="c2", pads=[0, 0, 0, 0]),
        helper.make_node("Add", ["b.c2", "t"], ["y"], name="add"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(1, 1, 5, 5)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    changes = unshare_initializers(model)
    assert sorted(c.target for c in changes) == ["b", "w"]
    assert list(model.graph.node[1].input) == ["x", "w.c2", "b.c2_1"]
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], want)
