"""Which output is what (docs/metrics.md, "Model outputs"): class outputs get the class
metrics and the labels, regression outputs the error metrics, decided from the graph
or named with --label-output / --class-outputs; the accuracy drop is signed.

The models are two-headed like a face detector's::

    x [N, 8] -> Gemm(w1) -> Relu -> h -> Gemm(wb) -> boxes [N, 4]           (regression)
                                    h -> Gemm(wc) -> logits -> Softmax -> face [N, 2]  (class)

``boxes`` comes first, so the labels must not fall on it because it is the first
``[N, K]`` output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qaudit
from qaudit.errors import ConfigError
from qaudit.pipeline.metrics import OutputAccumulator
from qaudit.report import from_dict

OPSET = 17
N = 64


def two_head_model(head: str = "Softmax", second_head: str | None = None) -> onnx.ModelProto:
    """The module docstring's model; ``head`` is the op after the class Gemm ("Softmax",
    "LogSoftmax", "Sigmoid" or "" for raw logits). ``second_head``: a third output,
    ``aux`` [N, 3], computed by that op (or raw when "")."""
    rng = np.random.default_rng(11)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.6, (8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.6, (16, 4)).astype(np.float32), "wb"),
        numpy_helper.from_array(rng.normal(0, 0.8, (16, 2)).astype(np.float32), "wc"),
        numpy_helper.from_array(rng.normal(0, 0.8, (16, 3)).astype(np.float32), "wa"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Relu", ["h0"], ["h"], name="relu"),
        helper.make_node("Gemm", ["h", "wb"], ["boxes"], name="box_head"),
    ]
    if head:
        nodes.append(helper.make_node("Gemm", ["h", "wc"], ["logits"], name="cls_head"))
        nodes.append(helper.make_node(head, ["logits"], ["face"], name="cls_act"))
    else:
        nodes.append(helper.make_node("Gemm", ["h", "wc"], ["face"], name="cls_head"))
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("face", TensorProto.FLOAT, ["N", 2]),
    ]
    if second_head is not None:
        if second_head:
            nodes.append(helper.make_node("Gemm", ["h", "wa"], ["aux0"], name="aux_head"))
            nodes.append(helper.make_node(second_head, ["aux0"], ["aux"], name="aux_act"))
        else:
            nodes.append(helper.make_node("Gemm", ["h", "wa"], ["aux"], name="aux_head"))
        outputs.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 3]))
    graph = helper.make_graph(
        nodes, "two_heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def saved(model: onnx.ModelProto, d: Path, name: str = "model.onnx") -> Path:
    path = d / name
    onnx.save(model, str(path))
    return path


def fp32_outputs(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """The fp32 model's outputs by onnx's reference evaluator (independent of ONNX Runtime)."""
    from onnx.reference import ReferenceEvaluator

    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(names, {"x": x})))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The model file, its inputs, and labels equal to the fp32 face class of each sample."""
    d = tmp_path_factory.mktemp("two_heads")
    model = two_head_model()
    path = saved(model, d)
    x = np.random.default_rng(12).normal(0, 1, (N, 8)).astype(np.float32)
    calib = d / "calib"
    calib.mkdir()
    np.save(calib / "batch.npy", x)
    labels = fp32_outputs(model, x)["face"].argmax(axis=1).astype(np.int64)
    np.save(d / "labels.npy", labels)
    assert 0 < labels.sum() < N  # both classes occur
    return path, x, labels, d


def test_labels_score_the_softmax_output_not_the_first_nk_output(data):
    path, x, labels, _ = data
    r = qaudit.audit(path, calib=x, labels=labels, batch_size=16)
    boxes, face = r.outputs
    assert face.acc_fp32 == 1.0  # the labels are the fp32 model's own face classes
    assert boxes.acc_fp32 is None  # (before: scored on the boxes, the first [N, K] output)
    assert (boxes.kind, face.kind) == ("regression", "class")
    assert r.data["label_output"] == "face"
    ref = fp32_outputs(two_head_model(), x)
    # the quantized model's accuracy from its top-1 agreement with fp32 (labels = fp32 argmax)
    assert face.acc_int8 == pytest.approx(face.top1_agreement)
    assert face.acc_drop_pct == pytest.approx((1.0 - face.acc_int8) * 100)
    # no class metric on the box regression: null, never a number that means nothing
    assert boxes.qce is None and boxes.qkl is None and boxes.top1_agreement is None
    assert boxes.acc_fp32 is None and boxes.acc_int8 is None and boxes.acc_drop_pct is None
    assert boxes.max_abs_error > 0 and boxes.rel_error == pytest.approx(10 ** (-boxes.sqnr_db / 20), rel=1e-9)
    assert face.qce is not None and np.allclose(ref["face"].sum(axis=1), 1.0)


def test_label_output_names_the_scored_output(data, tmp_path):
    """Raw logits heads: two [N, K] outputs and no Softmax: nothing is a class output unless named."""
    _, x, _, _ = data
    model = two_head_model(head="")
    path = saved(model, tmp_path)
    labels = fp32_outputs(model, x)["face"].argmax(axis=1).astype(np.int64)
    with pytest.raises(ConfigError, match="--label-output NAME") as e:
        qaudit.audit(path, calib=x, labels=labels)
    assert "boxes [?,4] regression, face [?,2] regression" in str(e.value)
    r = qaudit.audit(path, calib=x, labels=labels, label_output="face")
    boxes, face = r.outputs
    assert (boxes.kind, face.kind, r.data["label_output"]) == ("regression", "class", "face")
    assert face.acc_fp32 == 1.0 and boxes.acc_fp32 is None and boxes.qce is None
    # without labels the same model has no class output at all
    r = qaudit.audit(path, calib=x)
    assert [o.kind for o in r.outputs] == ["regression", "regression"] and r.data["label_output"] is None


def test_cli_label_and_class_outputs(data, tmp_path, run_cli):
    path, _, _, d = data
    out = tmp_path / "r.json"
    common = [path, "--calib", d / "calib", "--labels", d / "labels.npy", "--no-isolated", "--json", out]
    proc = run_cli(*common, "--label-output", "face", "--class-outputs", "boxes,face")
    assert proc.returncode == 0, proc.stderr
    r = qaudit.load_report(out)
    assert [o.kind for o in r.outputs] == ["class", "class"] and r.data["label_output"] == "face"
    assert r.outputs[1].acc_fp32 == 1.0 and r.outputs[0].acc_fp32 is None and r.outputs[0].qce is not None
    assert "labels score output face" in proc.stdout
    # a name that is not an output: one line, exit 2, with the closest name
    proc = run_cli(*common, "--label-output", "fase")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--label-output 'fase' is not an output of the model (did you mean 'face'?)" in proc.stderr
    proc = run_cli(*common, "--class-outputs", "face", "--class-outputs", "boxs")
    assert proc.returncode == 2 and "(did you mean 'boxes'?)" in proc.stderr


def test_several_class_outputs_need_label_output(data, tmp_path):
    _, x, labels, _ = data
    path = saved(two_head_model(second_head="Softmax"), tmp_path)
    with pytest.raises(ConfigError, match="several hold class scores.*--label-output NAME"):
        qaudit.audit(path, calib=x, labels=labels)
    r = qaudit.audit(path, calib=x, labels=labels, label_output="face")
    assert [o.kind for o in r.outputs] == ["regression", "class", "class"]
    assert r.outputs[1].acc_fp32 == 1.0 and r.outputs[2].acc_fp32 is None and r.outputs[2].qce is not None


def output_kinds(model, **kw):
    from qaudit.pipeline.measure import output_kinds

    return output_kinds(model, **kw)


def _kinds(model, **kw):
    return output_kinds(model, **kw).kinds


def test_default_kinds_from_the_graph():
    assert _kinds(two_head_model("Softmax")) == {"boxes": "regression", "face": "class"}
    assert _kinds(two_head_model("LogSoftmax")) == {"boxes": "regression", "face": "class"}
    # a Softmax seen through Reshape/Flatten/Identity is still class scores
    m = two_head_model("Softmax")
    m.graph.node[-1].output[0] = "p"
    shape = numpy_helper.from_array(np.array([-1, 2], np.int64), "shape")
    m.graph.initializer.append(shape)
    m.graph.node.extend(
        [
            helper.make_node("Identity", ["p"], ["p1"], name="id"),
            helper.make_node("Flatten", ["p1"], ["p2"], name="flat"),
            helper.make_node("Reshape", ["p2", "shape"], ["face"], name="reshape"),
        ]
    )
    assert _kinds(m) == {"boxes": "regression", "face": "class"}
    assert output_kinds(m).probabilities == {"face"}
    # a softmax over an inner axis (a segmentation map's [N, C, H, W] over C) is not scored as classes
    seg = two_head_model("Softmax")
    seg.graph.node[-1].attribute.append(helper.make_attribute("axis", 1))
    seg.graph.value_info.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, 5, 5]))
    assert _kinds(seg)["face"] == "regression"
    seg.graph.node[-1].attribute[0].i = 3
    assert _kinds(seg)["face"] == "class"
    # no Softmax: exactly one [N, K] output is class; two are not
    assert _kinds(two_head_model("", second_head=None)) == {"boxes": "regression", "face": "regression"}
    single = two_head_model("")
    del single.graph.output[0]
    assert _kinds(single) == {"face": "class"}
    # named: exactly those, or none at all (an embedding that is the only [N, K] output)
    assert _kinds(two_head_model("Softmax"), class_outputs=("boxes",)) == {"boxes": "class", "face": "regression"}
    assert _kinds(single, class_outputs=("none",)) == {"face": "regression"}


def test_sigmoid_multilabel_output_is_regression_unless_named(data, tmp_path):
    """A sigmoid multi-label head [N, K] is not a distribution over K classes: QCE would mean nothing."""
    _, x, _, _ = data
    model = two_head_model("Sigmoid")
    del model.graph.output[0]  # face [N, 2] from Sigmoid is the only [N, K] output
    assert _kinds(model) == {"face": "regression"}
    r = qaudit.audit(saved(model, tmp_path), calib=x)
    (face,) = r.outputs
    assert face.kind == "regression" and face.qce is None and face.top1_agreement is None
    assert face.qmse > 0 and face.max_abs_error > 0 and face.rel_error > 0
    assert _kinds(model, class_outputs=("face",)) == {"face": "class"}


def test_regression_metrics_by_hand():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (10, 4)).astype(np.float32)
    y = (x + rng.normal(0, 0.05, x.shape)).astype(np.float32)
    y[7, 2] = x[7, 2] + 0.75  # the largest error
    acc = OutputAccumulator("boxes", kind="regression")
    acc.update(x[:6], y[:6])
    acc.update(x[6:], y[6:])
    r = acc.result()
    e = x.astype(np.float64) - y.astype(np.float64)
    assert r["kind"] == "regression"
    assert r["qmse"] == pytest.approx(np.mean(e**2), rel=1e-6)
    assert r["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(e**2)), rel=1e-6)
    assert r["max_abs_error"] == pytest.approx(np.max(np.abs(e)), rel=1e-6)
    assert r["max_abs_error"] == pytest.approx(0.75, rel=1e-5)
    assert r["rel_error"] == pytest.approx(np.sqrt(np.sum(e**2) / np.sum(x.astype(np.float64) ** 2)), rel=1e-6)
    for k in ("qce", "qkl", "top1_agreement", "acc_fp32", "acc_int8", "acc_drop_pct"):
        assert r[k] is None, k
    # no error: 0 relative error; error without signal: infinite
    exact = OutputAccumulator("z", kind="regression")
    exact.update(x, x)
    assert exact.result()["rel_error"] == 0.0 and exact.result()["max_abs_error"] == 0.0
    silent = OutputAccumulator("z", kind="regression")
    silent.update(np.zeros(4, np.float32), np.ones(4, np.float32))
    assert silent.result()["rel_error"] == math.inf


def test_accuracy_drop_is_signed_when_the_quantized_model_scores_better():
    """acc fp32 2/4, int8 3/4: the drop is -50 %, not +50 %."""
    x = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 0.9], [0.0, 3.0]])
    y = np.array([[2.0, 1.0], [0.0, 1.0], [0.8, 1.0], [0.0, 3.0]])  # sample 3 flips to the label
    labels = np.array([0, 0, 1, 1])
    acc = OutputAccumulator("logits")
    acc.update(x, y, labels)
    r = acc.result()
    assert (r["acc_fp32"], r["acc_int8"]) == (0.5, 0.75)
    assert r["acc_drop_pct"] == pytest.approx((0.5 - 0.75) / 0.5 * 100) == pytest.approx(-50.0)


def test_label_output_with_no_class_axis_is_refused(data):
    _, x, labels, _ = data
    m = two_head_model("Softmax")
    m.graph.output[1].type.tensor_type.shape.dim.add().dim_value = 1  # declared [N, 2, 1]
    with pytest.raises(ConfigError, match=r"has shape \[\?,2,1\]: labels .* score an output of shape \[N, K\]"):
        output_kinds(m, label_output="face", labelled=True)


def test_sample_reports_a_negative_drop(sample_run):
    """The bundled sample's quantized model scores better than fp32 (98.50 % vs 98.25 %)."""
    (o,) = sample_run.report["outputs"]
    assert o["kind"] == "class" and o["acc_int8"] > o["acc_fp32"]
    assert o["acc_drop_pct"] == pytest.approx((o["acc_fp32"] - o["acc_int8"]) / o["acc_fp32"] * 100)
    assert o["acc_drop_pct"] < 0
    assert sample_run.report["format"]["version"] == 5 and sample_run.report["data"]["label_output"] == "logits"


def test_reading_a_version_2_report_recomputes_the_drop_and_infers_kinds():
    """The sample's committed baseline is a version 2 report: its drop was |0.9825 - 0.985| / 0.9825."""
    baseline = Path(__file__).resolve().parents[2] / "samples" / "digits" / "baseline.json"
    d = json.loads(baseline.read_text(encoding="utf-8"))
    assert d["format"]["version"] == 2
    stored = d["outputs"][0]
    assert stored["acc_int8"] > stored["acc_fp32"] and stored["acc_drop_pct"] > 0
    d["outputs"].append({"name": "features", "qmse": 1e-6, "sqnr_db": 50.0, "qce": None})
    r = from_dict(d)
    logits, features = r.outputs
    assert (logits.kind, features.kind) == ("class", "regression") and r.format_version == 2
    assert logits.acc_drop_pct == pytest.approx((stored["acc_fp32"] - stored["acc_int8"]) / stored["acc_fp32"] * 100)
    assert logits.acc_drop_pct == pytest.approx(-stored["acc_drop_pct"])
    assert features.max_abs_error is None and features.rel_error is None and features.acc_drop_pct is None
    # and a version 3 report is read as written
    assert from_dict({**d, "format": {**d["format"], "version": 3}}).outputs[0].acc_drop_pct == stored["acc_drop_pct"]


def test_class_metric_gate_on_a_model_without_class_outputs_is_exit_2_before_any_work(data, tmp_path, run_cli):
    """Raw box and logit heads, none named: --max-qce could check nothing; nothing is written."""
    _, x, _, d = data
    path = saved(two_head_model(head=""), tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    args = [path, "--calib", d / "calib", "--no-isolated", "--json", out / "r.json", "--output-model", out / "q.onnx"]
    p = run_cli(*args, "--max-qce", "0.1")
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and "gate max_qce (--max-qce) checks qce" in p.stderr
    assert "boxes (regression), face (regression)" in p.stderr and list(out.iterdir()) == []
    p = run_cli(*args, "--max-qce", "5", "--class-outputs", "face")
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(f.name for f in out.iterdir()) == ["q.onnx", "r.json"]
