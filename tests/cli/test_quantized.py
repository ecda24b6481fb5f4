"""``qaudit FP32.onnx --quantized Q.onnx --eval DIR`` on the command line (issue 18 item 4)."""

from __future__ import annotations

import json

import pytest

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL, sha256_file
from .test_bad_input import assert_user_error, snapshot


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The sample quantized by qaudit (ORT's quantize_static), and that audit's JSON report."""
    import qaudit
    from qaudit.renderers import render

    d = tmp_path_factory.mktemp("quantized")
    report = qaudit.audit(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, output_model=d / "q.onnx")
    return d / "q.onnx", json.loads(render(report, "json"))


def test_audit_of_a_quantized_model_needs_no_calib(quantized, run_cli, tmp_path):
    q, own = quantized
    before = sha256_file(q)
    out = tmp_path / "r.json"
    proc = run_cli(SAMPLE_MODEL, "--quantized", q, "--eval", SAMPLE_EVAL, "--labels", SAMPLE_LABELS, "--json", out)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert f"quantized elsewhere: {q} sha256 {before[:12]}; read from its graph: QDQ, activations uint8" in text
    assert "calibration unknown; measured on 400 evaluation samples" in text
    r = json.loads(out.read_text())
    assert r["model"]["quantized"]["sha256"] == before == sha256_file(q)
    assert r["settings"]["calibrate_method"] is None and r["settings"]["source"] == "user"
    assert r["data"]["calib"] is None and r["data"]["n_calib"] == 0
    for key in ("sqnr_db", "scale", "zero_point", "w_sqnr_db", "sqnr_isolated_db"):
        assert [row[key] for row in r["layers"]] == [row[key] for row in own["layers"]], key
    assert r["outputs"] == own["outputs"]


def test_a_saved_report_re_renders(quantized, run_cli, tmp_path):
    q, _ = quantized
    out = tmp_path / "r.json"
    assert run_cli(SAMPLE_MODEL, "--quantized", q, "--eval", SAMPLE_EVAL, "--json", out, "--quiet").returncode == 0
    proc = run_cli("report", out, "--markdown", tmp_path / "r.md")
    assert proc.returncode == 0, proc.stderr
    assert f"quantized elsewhere: {q} sha256" in " ".join(proc.stdout.split())
    assert "quantized elsewhere (`" in (tmp_path / "r.md").read_text()


def test_an_unused_calib_is_noted(quantized, run_cli):
    q, _ = quantized
    proc = run_cli(SAMPLE_MODEL, "--quantized", q, "--eval", SAMPLE_EVAL, "--calib", SAMPLE_CALIB, "--per-channel")
    assert proc.returncode == 0, proc.stderr
    assert "not used with --quantized (the quantized model is audited as it is): --calib, --per-channel" in " ".join(
        proc.stdout.split()
    )


def _fp32_copy(d):
    p = d / "fp32.onnx"
    p.write_bytes(SAMPLE_MODEL.read_bytes())
    return p


BAD = {
    "missing": (lambda d, q: (SAMPLE_MODEL, d / "nope.onnx"), ["quantized model file not found", "nope.onnx"]),
    "fp32-as-quantized": (
        lambda d, q: (SAMPLE_MODEL, _fp32_copy(d)),
        ["fp32.onnx holds no quantized op", "it is an fp32 model"],
    ),
    "other-model": (
        lambda d, q: (SAMPLE_MODEL, _other(d)),
        ["does not correspond to", "its inputs are x, the fp32 model's input"],
    ),
    "swapped": (lambda d, q: (q, SAMPLE_MODEL), ["q.onnx is already quantized", "--quantized"]),
}


def _other(d):
    """Another network, quantized: x -> QuantizeLinear -> DequantizeLinear -> Relu -> out."""
    import onnx
    from onnx import TensorProto, helper

    p = d / "other.onnx"
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s"], ["x_dq"], name="dq"),
        helper.make_node("Relu", ["x_dq"], ["out"], name="relu"),
    ]
    g = helper.make_graph(
        nodes,
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    return p


@pytest.mark.parametrize("case", list(BAD))
def test_bad_pairs_exit_2_in_one_line(case, quantized, run_cli, tmp_path):
    q, _ = quantized
    make, needles = BAD[case]
    fp32, given = make(tmp_path, q)
    before = snapshot(tmp_path)
    proc = run_cli(fp32, "--quantized", given, "--eval", SAMPLE_EVAL, "--json", tmp_path / "r.json")
    assert_user_error(proc, *needles)
    assert snapshot(tmp_path) == before


def test_quantized_needs_eval(quantized, run_cli):
    q, _ = quantized
    proc = run_cli(SAMPLE_MODEL, "--quantized", q, "--calib", SAMPLE_CALIB)
    assert_user_error(proc, "needs evaluation data: give --eval DIR", "--calib is not used")
