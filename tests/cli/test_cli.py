"""End-to-end tests of the qaudit CLI on the bundled digits sample (subprocess runs).

Most tests read the one shared audit of the sample (``sample_run`` /
``sample_report_json`` in conftest.py); the others each need a different
command line and run the CLI once themselves.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ..conftest import REPO, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL, sha256_file

pytestmark = pytest.mark.slow

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: the sample graph: 4 Conv (+BN+Relu) and 2 Gemm, the first one with BN+Relu
EXPECTED_WEIGHTED = ["Conv", "Conv", "Conv", "Conv", "Gemm", "Gemm"]


# ----------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def fp32_model() -> onnx.ModelProto:
    return onnx.load(str(SAMPLE_MODEL))


@pytest.fixture(scope="module")
def eval_data():
    files = sorted(SAMPLE_EVAL.glob("*.npy"))
    assert len(files) == 4
    x = np.concatenate([np.load(f) for f in files])
    y = np.load(SAMPLE_LABELS)
    assert x.shape == (400, 1, 8, 8) and y.shape == (400,)
    return x, y


def ort_logits(model_path, x) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def expected_layer_names(model: onnx.ModelProto) -> list[str]:
    """Graph order: the input, then every node except the BN and Relu nodes folded/fused into a layer."""
    return ["input"] + [n.name for n in model.graph.node if n.op_type not in ("BatchNormalization", "Relu")]


def channel_precision(w: np.ndarray, axis: int) -> float:
    """docs/metrics.md: mean_c(range_c / w_range) over the output-channel axis."""
    w = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
    return float(np.mean((w.max(axis=1) - w.min(axis=1)) / (w.max() - w.min())))


def weight_info(model: onnx.ModelProto):
    """{layer name: (plain weight, BN-folded weight, output-channel axis, BN node name or None)}."""
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    info = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        w = inits[n.input[1]]
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        axis = 0 if n.op_type == "Conv" or trans_b else 1
        info[n.name] = [w, w, axis, None]
    for bn in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        layer = producer[bn.input[0]]
        gamma, _beta, _mean, var = (inits[i] for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        s = gamma / np.sqrt(var + eps)
        w, _, axis, _ = info[layer.name]
        shape = [1] * w.ndim
        shape[axis] = -1
        info[layer.name] = [w, w * s.reshape(shape), axis, bn.name]
    return info


def rows_by_name(report: dict) -> dict:
    return {r["name"]: r for r in report["layers"]}


# ------------------------------------------------------- the shared audit


def test_sample_audit_exits_zero_quietly(sample_run):
    assert sample_run.proc.returncode == 0
    assert "Traceback" not in sample_run.proc.stderr
    # stderr is not a terminal: no progress bars, no ORT chatter
    assert sample_run.proc.stderr == ""


def test_sample_audit_leaves_model_unchanged(sample_run):
    assert sample_run.model_sha_before == sample_run.model_sha_after


def test_json_format_and_meta(sample_report_json):
    import onnxruntime

    d = sample_report_json
    assert d["format"] == {"name": "qaudit-report", "version": 3}
    assert set(d) >= {
        "format",
        "meta",
        "model",
        "settings",
        "data",
        "folding",
        "layers",
        "outputs",
        "unmatched",
        "notes",
        "gates",
    }
    assert d["gates"] is None  # no gate configured
    assert d["meta"]["onnxruntime"] == onnxruntime.__version__
    assert d["meta"]["onnx"] == onnx.__version__
    assert d["meta"]["seconds"] > 0
    # the stages in order, each timed once; together within the audit's own time
    phases = d["meta"]["phase_seconds"]
    assert list(phases) == ["load", "fold", "probe", "calibrate", "quantize", "match", "capture", "measure"]
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= d["meta"]["seconds"] + 1e-3


def test_model_identity(sample_report_json):
    m = sample_report_json["model"]
    assert m["sha256"] == sha256_file(SAMPLE_MODEL)
    assert m["opset"] == 17
    assert m["inputs"] == ["input: float32[?,1,8,8]"]
    assert m["outputs"] == ["logits"]


def test_settings_recorded(sample_report_json):
    s = sample_report_json["settings"]
    assert s["format"] == "qdq"
    assert s["activation_type"] == "uint8"
    assert s["weight_type"] == "uint8"
    assert s["percentile"] == 99.999
    assert s["calibrate_method"] == "percentile"
    assert s["per_channel"] is False
    assert s["exclude"] == []
    assert s["clip_percentile"] == 1.0
    assert s["error"] == "accumulated and isolated"


def test_data_counts(sample_report_json):
    d = sample_report_json["data"]
    assert d["n_calib"] == 128
    assert d["n_eval"] == 400
    assert d["eval_is_calib"] is False
    assert d["eval"] is not None and d["labels"] is not None
    assert sample_report_json["notes"] == []


def test_batchnorm_folding(sample_report_json, fp32_model):
    f = sample_report_json["folding"]
    bns = [n.name for n in fp32_model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == 5
    assert len(f["folded"]) == 5
    assert sorted(x["bn"] for x in f["folded"]) == sorted(bns)
    assert f["skipped"] == []
    expected = {bn: layer for layer, (_, _, _, bn) in weight_info(fp32_model).items() if bn}
    assert {x["bn"]: x["layer"] for x in f["folded"]} == expected
    chk = f["check"]["logits"]
    assert 0 <= chk["max_abs_diff"] <= f["atol"] + f["rtol"] * chk["max_abs"]
    # the first FOLD_CHECK_SAMPLES calibration samples, in whole batches
    n, bs = sample_report_json["data"]["n_calib"], sample_report_json["settings"]["batch_size"]
    assert min(n, 64) <= f["check_samples"] <= min(n, 64 + bs - 1)


def test_one_row_per_layer_in_graph_order(sample_report_json, fp32_model):
    layers = sample_report_json["layers"]
    assert [r["name"] for r in layers] == expected_layer_names(fp32_model)
    assert [r["index"] for r in layers] == list(range(len(layers)))
    assert [r["op_type"] for r in layers if r["op_type"] in WEIGHTED_OPS] == EXPECTED_WEIGHTED


def test_weighted_layers_have_weight_and_fold_fields(sample_report_json, fp32_model):
    info = weight_info(fp32_model)
    rows = rows_by_name(sample_report_json)
    assert sorted(info) == sorted(n for n, r in rows.items() if r["op_type"] in WEIGHTED_OPS)
    for name, (w, wf, axis, bn) in info.items():
        r = rows[name]
        assert r["bn_folded"] == bn, name
        # plain weights, as stored in the model
        assert r["w_min"] == pytest.approx(w.min(), rel=1e-6), name
        assert r["w_max"] == pytest.approx(w.max(), rel=1e-6), name
        assert r["w_range"] == pytest.approx(r["w_max"] - r["w_min"], rel=1e-6), name
        assert r["w_precision"] == pytest.approx(channel_precision(w, axis), rel=1e-5), name
        # BN-folded weights (thesis Eq. 3.2), computed here independently
        assert r["fold_w_min"] == pytest.approx(wf.min(), rel=1e-5), name
        assert r["fold_w_max"] == pytest.approx(wf.max(), rel=1e-5), name
        assert r["fold_w_range"] == pytest.approx(r["fold_w_max"] - r["fold_w_min"], rel=1e-6), name
        assert r["fold_w_precision"] == pytest.approx(channel_precision(wf, axis), rel=1e-5), name
        assert 0 < r["w_precision"] <= 1 and 0 < r["fold_w_precision"] <= 1
        if bn is None:  # no BN: folded numbers equal the plain ones
            for k in ("w_min", "w_max", "w_range", "w_precision"):
                assert r["fold_" + k] == r[k], (name, k)
        # weight quantization error of the weights the quantized graph holds
        assert r["w_sqnr_db"] is not None and 20 < r["w_sqnr_db"] < 100, name
        assert r["w_qmse"] is not None and r["w_qmse"] > 0, name
        assert r["w_encoding"] == "uint8 per-tensor", name


def test_unweighted_layers_have_no_weight_fields(sample_report_json):
    keys = [k for k in sample_report_json["layers"][0] if k.startswith(("w_", "fold_w_"))]
    assert len(keys) >= 10
    unweighted = [r for r in sample_report_json["layers"] if r["op_type"] not in WEIGHTED_OPS]
    assert [r["op_type"] for r in unweighted] == ["Input", "MaxPool", "Flatten"]
    for r in unweighted:
        assert all(r[k] is None for k in keys), r["name"]


def test_activation_rows(sample_report_json):
    rows = [r for r in sample_report_json["layers"] if r["quant_tensor"] is not None]
    assert len(rows) == len(sample_report_json["layers"]) == 9  # every row is measured here
    for r in rows:
        name = r["name"]
        assert isinstance(r["sqnr_db"], float) and math.isfinite(r["sqnr_db"]), name
        assert 10 < r["sqnr_db"] < 100, name
        assert r["qmse"] >= 0, name
        assert r["dtype"] == "uint8", name
        assert r["scale"] > 0 and 0 <= r["zero_point"] <= 255, name
        # docs/metrics.md: q_min/q_max derived from the encoding used
        assert r["q_min"] == pytest.approx(r["scale"] * (0 - r["zero_point"]), rel=1e-6, abs=1e-12), name
        assert r["q_max"] == pytest.approx(r["scale"] * (255 - r["zero_point"]), rel=1e-6), name
        assert 0 <= r["clip_fraction"] <= 1, name
        assert r["a_min"] <= r["a_lo"] <= r["a_hi"] <= r["a_max"], name
        assert r["a_range"] == pytest.approx(r["a_hi"] - r["a_lo"], rel=1e-9), name
    # layers with a fused Relu: non-negative activations, measured after the Relu
    fused = [r for r in rows if r["fused"]]
    assert len(fused) == 5
    for r in fused:
        assert r["a_min"] >= 0 and r["a_lo"] >= 0, r["name"]
        assert all(f.endswith("Relu") for f in r["fused"])
        assert r["tensor"] == f"{r['fused'][-1]}_output_0"


def test_model_outputs(sample_report_json, eval_data):
    outs = sample_report_json["outputs"]
    assert [o["name"] for o in outs] == ["logits"]
    o = outs[0]
    assert o["qce"] is not None and math.isfinite(o["qce"]) and o["qce"] >= 0
    assert o["qkl"] is not None and o["qkl"] >= -1e-9
    assert o["qkl"] <= o["qce"] + 1e-12  # qkl = qce - H(p), H(p) >= 0
    assert 0 <= o["top1_agreement"] <= 1
    assert o["top1_agreement"] * 400 == pytest.approx(round(o["top1_agreement"] * 400), abs=1e-6)
    assert o["qmse"] > 0 and math.isfinite(o["sqnr_db"])
    # accuracy of the original model, computed here
    x, y = eval_data
    acc32 = float((ort_logits(SAMPLE_MODEL, x).argmax(axis=1) == y).mean())
    assert acc32 > 0.9  # sanity: the sample model is a working classifier
    assert o["acc_fp32"] == pytest.approx(acc32, abs=1e-12)
    a8 = o["acc_int8"]
    assert 0 <= a8 <= 1
    assert o["acc_drop_pct"] == pytest.approx((o["acc_fp32"] - a8) / o["acc_fp32"] * 100, rel=1e-9)  # signed


def test_unmatched_have_reasons(sample_report_json):
    un = sample_report_json["unmatched"]
    assert len(un) == 5  # the BN outputs, fused away with their Relu
    for u in un:
        assert isinstance(u["reason"], str) and u["reason"].strip(), u
        assert u["tensor"] and u["producer"] and u["op_type"]


def test_terminal_output(sample_run):
    out = sample_run.proc.stdout
    for r in sample_run.report["layers"]:
        assert r["name"] in out, r["name"]
    assert "Model outputs" in out
    assert "logits" in out
    assert "note:" not in out  # held-out eval data: no calibration-data warning
    # the folding check covered the first 64 of the 128 calibration samples, and says so
    assert "folded fp32 outputs match the original on 64 of 128 calibration samples" in out


# ----------------------------------------------------- separate CLI runs


@pytest.fixture(scope="module")
def json_stdout_run(run_cli):
    """No --eval, JSON to stdout: the human table must go to stderr."""
    return run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--json", "-")


def test_json_dash_puts_json_on_stdout(json_stdout_run, sample_report_json):
    p = json_stdout_run
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)  # the whole of stdout is one JSON document
    assert d["format"]["name"] == "qaudit-report"
    assert [r["name"] for r in d["layers"]] == [r["name"] for r in sample_report_json["layers"]]
    assert "Model outputs" in p.stderr
    assert "Model outputs" not in p.stdout
    for r in d["layers"]:
        assert r["name"] in p.stderr


def test_no_eval_measures_on_calibration_data(json_stdout_run):
    d = json.loads(json_stdout_run.stdout)
    assert d["data"]["eval_is_calib"] is True
    assert d["data"]["eval"] is None
    assert d["data"]["n_eval"] == d["data"]["n_calib"] == 128
    assert len(d["notes"]) == 1
    assert "calibration data" in d["notes"][0]
    o = d["outputs"][0]
    assert o["acc_fp32"] is None and o["acc_int8"] is None and o["acc_drop_pct"] is None
    assert "note:" in json_stdout_run.stderr and "calibration data" in json_stdout_run.stderr


def test_output_model(run_cli, tmp_path, eval_data):
    out_model = tmp_path / "quantized.onnx"
    out_json = tmp_path / "report.json"
    before = sha256_file(SAMPLE_MODEL)
    p = run_cli(
        SAMPLE_MODEL,
        "--calib",
        SAMPLE_CALIB,
        "--eval",
        SAMPLE_EVAL,
        "--labels",
        SAMPLE_LABELS,
        "--output-model",
        out_model,
        "--json",
        out_json,
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""  # --quiet
    assert sha256_file(SAMPLE_MODEL) == before
    # exactly the two requested files, no temporary leftovers (hidden files included)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["quantized.onnx", "report.json"]
    q = onnx.load(str(out_model))
    onnx.checker.check_model(q)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 1
    assert "BatchNormalization" not in ops
    # the written model is the one that was audited: it reproduces the reported output numbers
    d = json.loads(out_json.read_text(encoding="utf-8"))
    x, y = eval_data
    a, b = ort_logits(SAMPLE_MODEL, x), ort_logits(out_model, x)
    o = d["outputs"][0]
    assert o["acc_int8"] == pytest.approx(float((b.argmax(1) == y).mean()), abs=1.5 / 400)
    assert o["top1_agreement"] == pytest.approx(float((a.argmax(1) == b.argmax(1)).mean()), abs=1.5 / 400)
    assert o["qmse"] == pytest.approx(float(((a.astype(np.float64) - b) ** 2).mean()), rel=0.05)


def test_report_rerenders_saved_json(run_cli, sample_run, tmp_path):
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(sample_run.report), encoding="utf-8")
    p = run_cli("report", saved)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    for r in sample_run.report["layers"]:
        assert r["name"] in p.stdout
    assert "Model outputs" in p.stdout
    # same renderer, same numbers: identical to the audit's own terminal output
    assert p.stdout == sample_run.proc.stdout


def test_report_runs_no_model(tmp_path, sample_run, cli_env):
    """`qaudit report` must not need the model or ONNX Runtime."""
    d = dict(sample_run.report)
    d["model"] = {**d["model"], "path": str(tmp_path / "gone" / "model.onnx")}
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(d), encoding="utf-8")
    code = (
        "import sys\n"
        "from qaudit.cli import main\n"
        "rc = main(['report', sys.argv[1]])\n"
        "print('ORT-IMPORTED' if 'onnxruntime' in sys.modules else 'NO-ORT')\n"
        "sys.exit(rc)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(saved)], cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.rstrip().endswith("NO-ORT")
    assert "gone" in p.stdout  # it rendered the (missing) model path from the JSON


def test_format_qoperator(run_cli, tmp_path, sample_report_json):
    """Real behaviour: QOperator works on the sample and is recorded in the report."""
    out = tmp_path / "qop.json"
    p = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--format", "qoperator", "--json", out, "--quiet")
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text(encoding="utf-8"))
    assert d["settings"]["format"] == "qoperator"
    assert [r["name"] for r in d["layers"]] == [r["name"] for r in sample_report_json["layers"]]
    for r in d["layers"]:
        assert r["sqnr_db"] is not None and math.isfinite(r["sqnr_db"]), r["name"]
    o = d["outputs"][0]
    assert o["qkl"] >= -1e-9 and 0.9 <= o["top1_agreement"] <= 1


def test_layer_histograms(sample_report_json):
    """Format 1 addition: each measured row carries the fp32 histogram of its activation."""
    n_eval = sample_report_json["data"]["n_eval"]
    for r in sample_report_json["layers"]:
        h = r["histogram"]
        assert set(h) == {"lo", "hi", "counts"}, r["name"]
        assert 1 <= len(h["counts"]) <= 128 and all(isinstance(c, int) and c >= 0 for c in h["counts"])
        assert h["lo"] <= r["a_min"] <= r["a_lo"] <= r["a_hi"] <= r["a_max"] <= h["hi"], r["name"]
    first = sample_report_json["layers"][0]
    assert first["op_type"] == "Input" and sum(first["histogram"]["counts"]) == n_eval * 1 * 8 * 8


def test_json_keeps_histograms_on_one_line(sample_run):
    text = sample_run.json_path.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if '"counts": [' in ln]
    assert len(lines) == len(sample_run.report["layers"])
    assert all(ln.rstrip().endswith("]") for ln in lines)
    assert len(text.splitlines()) < 1000


def test_report_without_histograms_still_loads(sample_report_json):
    """A version-1 report written before histograms existed reads back with histogram None."""
    from qaudit.report import from_dict

    old = json.loads(json.dumps(sample_report_json))
    for r in old["layers"]:
        del r["histogram"]
    rep = from_dict(old)
    assert all(r.histogram is None for r in rep.layers)
    new = from_dict(sample_report_json)
    h = new.layers[0].histogram
    assert h.total == sum(sample_report_json["layers"][0]["histogram"]["counts"])
    assert h.bin_width == pytest.approx((h.hi - h.lo) / len(h.counts))


def test_batch_axis_feeds_a_state_on_axis_1(run_cli, tmp_path):
    """silero_vad.onnx's unnamed dims: without --batch-axis each file is one run; with it the
    files are batched on the axes given, and the report records them."""
    from ..models import recurrent_model

    model = tmp_path / "rec.onnx"
    onnx.save(recurrent_model(batch=None), model)
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(6):
        np.savez(
            calib / f"{i}.npz",
            input=rng.normal(size=(1, 6)).astype(np.float32),
            state=rng.normal(size=(2, 1, 5)).astype(np.float32),
            sr=np.array(16000, np.int64),
        )
    runs = {}
    for name, extra in (("inferred", []), ("given", ["--batch-axis", "input=0", "--batch-axis", "state=1,sr=none"])):
        p = run_cli(model, "--calib", calib, "--json", "-", "--batch-size", "4", *extra)
        assert p.returncode == 0, p.stderr
        runs[name] = json.loads(p.stdout)
    inferred, given = runs["inferred"], runs["given"]
    assert inferred["data"]["batch_axes"]["axes"] == {"input": None, "state": None, "sr": None}
    assert inferred["settings"]["batch_size"] == 1 and inferred["data"]["n_calib"] == 6
    assert given["data"]["batch_axes"] == {
        "axes": {"input": 0, "state": 1, "sr": None},
        "rule": "given (--batch-axis)",
        "fixed": None,
    }
    assert given["settings"]["batch_size"] == 4 and given["data"]["n_calib"] == 6
    assert any("state: axis 1" in n for n in given["notes"])
    assert any("--batch-size 4 not used: the model fixes the batch at 1" in n for n in inferred["notes"])
