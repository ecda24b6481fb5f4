"""--runtimes (issue 20): the quantized model in several runtimes, measured against fp32 and each other.

Every number is checked against an independent computation: the runtimes' outputs captured here
by hand with onnxruntime and openvino directly, measured with numpy.
"""

from __future__ import annotations

import glob
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qaudit
from qaudit.errors import ConfigError
from qaudit.gate import GateConfig, Threshold, evaluate
from qaudit.pipeline.audit import prepare
from qaudit.pipeline.graph import with_outputs
from qaudit.pipeline.load import load_model
from qaudit.pipeline.match import match
from qaudit.pipeline.metrics import dequantize, sqnr_of
from qaudit.pipeline.runtimes import GPU_PROVIDERS, Loaded, OrtRuntime, parse
from qaudit.report import from_json, to_json
from tests.conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_MODEL

EVAL = np.concatenate([np.load(f) for f in sorted(glob.glob(str(SAMPLE_EVAL / "*.npy")))])[:96]
CALIB = np.concatenate([np.load(f) for f in sorted(glob.glob(str(SAMPLE_CALIB / "*.npy")))])[:64]


def _plain(path, optimize=True):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _openvino(path, extra=()):
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    model = core.read_model(str(path))
    for name in extra:
        model.add_outputs(name)
    compiled = core.compile_model(model, "CPU")
    res = compiled({"input": EVAL})
    return {n: np.asarray(res[o]) for o in compiled.outputs for n in o.get_names()}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The digits sample quantized by qaudit (QDQ, uint8), and its twins."""
    tmp = tmp_path_factory.mktemp("rt")
    qpath = tmp / "q.onnx"
    qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, output_model=qpath, isolated=False)
    twins = match(prepare(load_model(SAMPLE_MODEL)).fold.model, onnx.load(qpath)).twins
    return qpath, twins


@pytest.fixture(scope="module")
def three(quantized):
    """The sample audited in ort, ort-sim and openvino."""
    pytest.importorskip("openvino")
    return qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, isolated=False, runtimes=("ort", "ort-sim", "openvino"))


RUNTIME_NAMES = ["ort", "ort-sim", pytest.param("openvino", marks=pytest.mark.extra)]


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_instrumented_outputs_are_bit_identical_in_each_runtime(quantized, name):
    """The model with every twin exposed computes the plain model's outputs bit for bit, in each runtime."""
    if name == "openvino":
        pytest.importorskip("openvino")
    qpath, twins = quantized
    (rt,) = parse([name])
    elems = {tw.quant_name: tw.encoding.onnx_type for tw in twins.values()}
    plain, inst = rt.load(qpath, {}).run({"input": EVAL}), rt.load(qpath, elems)
    got = inst.run({"input": EVAL})
    assert not inst.unexposed
    assert set(elems) <= set(got)
    assert np.array_equal(plain["logits"], got["logits"])


@pytest.mark.extra
def test_runtime_metrics_match_the_runtimes_run_by_hand(quantized, three):
    qpath, twins = quantized
    y32 = _plain(SAMPLE_MODEL).run(None, {"input": EVAL})[0]
    by_hand = {
        "ort": _plain(qpath).run(None, {"input": EVAL})[0],
        "ort-sim": _plain(qpath, optimize=False).run(None, {"input": EVAL})[0],
        "openvino": _openvino(qpath)["logits"],
    }
    rt = three.runtimes
    assert rt.names == ["ort", "ort-sim", "openvino"]
    (out,) = rt.outputs
    for name, y in by_hand.items():
        assert out.metrics[name]["sqnr_db"] == pytest.approx(sqnr_of(y32, y), rel=1e-6), name
        assert out.metrics[name]["max_abs_error"] == pytest.approx(float(np.max(np.abs(y32 - y))), rel=1e-6)
    assert out.metrics["ort"]["sqnr_db"] == three.outputs[0].sqnr_db  # the first runtime is the main table
    for a, b in [("ort", "ort-sim"), ("ort", "openvino"), ("ort-sim", "openvino")]:
        want = sqnr_of(by_hand[a], by_hand[b])
        assert out.agreement_db[f"{a} vs {b}"] == pytest.approx(want, rel=1e-6)
        assert out.max_abs_diff[f"{a} vs {b}"] == pytest.approx(float(np.max(np.abs(by_hand[a] - by_hand[b]))))
    # one layer's twin, exposed by hand in ort-sim and openvino and dequantized with numpy
    row = next(r for r in three.layers if r.name == "/fc1/Gemm")
    tw = twins[row.tensor]
    sim_model = qpath.with_name("sim_by_hand.onnx")
    onnx.save(with_outputs(onnx.load(qpath), [(tw.quant_name, onnx.TensorProto.UINT8)]), sim_model)
    q_sim = _plain(sim_model, optimize=False).run([tw.quant_name], {"input": EVAL})[0]
    q_ov = _openvino(qpath, [tw.quant_name])[tw.quant_name]
    d_sim = (q_sim.astype(np.float32) - row.zero_point) * np.float32(row.scale)
    d_ov = (q_ov.astype(np.float32) - row.zero_point) * np.float32(row.scale)
    layer = next(lr for lr in rt.layers if lr.name == "/fc1/Gemm")
    assert layer.agreement_db["ort-sim vs openvino"] == pytest.approx(sqnr_of(d_sim, d_ov), rel=1e-6)
    assert layer.max_abs_diff["ort-sim vs openvino"] == pytest.approx(float(np.max(np.abs(d_sim - d_ov))))
    assert layer.sqnr_db["ort"] == row.sqnr_db
    np.testing.assert_array_equal(d_sim, dequantize(q_sim, row.scale, row.zero_point))


@pytest.mark.extra
def test_the_first_divergent_layer_is_the_first_below_the_tolerance(three):
    rt = three.runtimes
    for d in rt.divergences:
        first, other = d.pair.split(" vs ")
        order = [lr.name for lr in rt.layers]
        before = order[: order.index(d.layer)]
        assert all(lr.agreement_db[d.pair] >= rt.tolerance_db for lr in rt.layers if lr.name in before)
        assert d.agreement_db < rt.tolerance_db
    # a tolerance above every agreement: the first row with an agreement below it diverges
    from qaudit.pipeline.measure import DIVERGENCE_DB

    assert rt.tolerance_db == DIVERGENCE_DB


@pytest.mark.extra
def test_the_runtimes_section_round_trips_and_regates(three):
    back = from_json(to_json(three))
    assert back.runtimes == three.runtimes
    assert math.isinf(back.runtimes.layers[0].agreement_db["ort vs ort-sim"])  # the input: bit-identical
    (out,) = three.runtimes.outputs
    worst = min(out.agreement_db.values())
    gates = GateConfig({"min_runtime_agreement_db": Threshold(worst + 0.01)})
    result = evaluate(back, gates)
    failed = [c.subject for c in result.failures]
    assert failed == [f"logits ({p})" for p, v in out.agreement_db.items() if v < worst + 0.01]
    assert evaluate(back, GateConfig({"min_runtime_agreement_db": Threshold(worst)})).passed
    # GLOB=VALUE names the output, as for the other output gates
    off = GateConfig({"min_runtime_agreement_db": Threshold(worst + 1, {"logits": None})})
    assert evaluate(back, off).passed


def test_the_agreement_gate_without_runtimes_checks_nothing_and_fails():
    report = qaudit.audit(SAMPLE_MODEL, CALIB, EVAL[:16], isolated=False)
    assert report.runtimes is None and '"runtimes":' not in to_json(report)
    (check,) = evaluate(report, GateConfig({"min_runtime_agreement_db": 40.0})).checks
    assert check.status == "fail" and "no pair of runtimes" in check.reason


@pytest.mark.extra
def test_a_runtime_that_cannot_load_the_model_is_marked_and_the_audit_goes_on(tmp_path):
    """QOperator's com.microsoft ops (QGemm) are not in OpenVINO's ONNX frontend: every row and output
    of that runtime is not measurable, with the reason, and the main table is ORT's."""
    pytest.importorskip("openvino")
    report = qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, isolated=False, format="qoperator", runtimes="ort,openvino")
    info = report.runtimes.runtimes[1]
    assert not info.measurable and "QGemm" in info.reason
    assert all(lr.not_measurable.get("openvino") for lr in report.runtimes.layers)
    assert all(lr.sqnr_db["openvino"] is None for lr in report.runtimes.layers)
    assert report.runtimes.outputs[0].metrics["openvino"]["sqnr_db"] is None
    assert report.runtimes.outputs[0].agreement_db == {}
    single = qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, isolated=False, format="qoperator")
    assert [r.sqnr_db for r in report.layers] == [r.sqnr_db for r in single.layers]


class _Noisy:
    """A runtime whose exposed tensors change what it computes: its outputs move when asked for them."""

    name, can_expose_intermediates, reason = "noisy", True, ""

    def __init__(self):
        self.ort = OrtRuntime("noisy")

    def load(self, path, outputs, what="", advice=""):
        inner = self.ort.load(path, outputs)
        if not outputs:
            return inner

        def run(feeds):
            got = inner.run(feeds)
            got["logits"] = got["logits"] + np.float32(0.5)
            return got

        return Loaded(run, inner.shifted)

    def describe(self):
        return {**self.ort.describe(), "name": self.name}


def test_a_runtime_whose_instrumented_graph_differs_is_measured_at_its_outputs_only():
    """The check is made per runtime: the layers are not measurable there (with the reason) and its
    outputs come from the plain model, so they equal ORT's bit for bit here."""
    report = qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, isolated=False, runtimes=("ort", _Noisy()))
    info = report.runtimes.runtimes[1]
    assert info.measurable and "changes what noisy computes" in info.layers_reason
    assert all("noisy" in lr.not_measurable for lr in report.runtimes.layers)
    (out,) = report.runtimes.outputs
    assert out.max_abs_diff["ort vs noisy"] == 0.0
    assert out.metrics["noisy"]["sqnr_db"] == report.outputs[0].sqnr_db


def test_the_provider_seam_under_other_session_options():
    """ort:CPUExecutionProvider with one intra-op thread, and with the optimizations off, through
    the same seam as any provider: one thread computes what two do bit for bit; the float
    simulation is ort-sim's."""
    runtimes = (
        "ort",
        OrtRuntime("ort:CPUExecutionProvider/1-thread", ("CPUExecutionProvider",), threads=1),
        OrtRuntime("ort:CPUExecutionProvider/unoptimized", ("CPUExecutionProvider",), optimize=False, threads=2),
    )
    report = qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, isolated=False, runtimes=runtimes)
    rt = report.runtimes
    one, unopt = rt.names[1], rt.names[2]
    assert all(lr.max_abs_diff[f"ort vs {one}"] == 0.0 for lr in rt.layers)
    sim = qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, isolated=False, runtimes=("ort", "ort-sim"))
    assert rt.outputs[0].agreement_db[f"ort vs {unopt}"] == sim.runtimes.outputs[0].agreement_db["ort vs ort-sim"]
    assert [i.optimized for i in rt.runtimes] == [True, True, False]


@pytest.mark.skipif(
    not any(p in ort.get_available_providers() for p in GPU_PROVIDERS),
    reason=f"no GPU execution provider installed (onnxruntime has {', '.join(ort.get_available_providers())})",
)
def test_a_gpu_provider_runs_the_same_capture():
    provider = next(p for p in GPU_PROVIDERS if p in ort.get_available_providers())
    report = qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, isolated=False, runtimes=("ort", f"ort:{provider}"))
    info = report.runtimes.runtimes[1]
    assert info.device.startswith(provider) and info.measurable
    (out,) = report.runtimes.outputs
    assert out.metrics[f"ort:{provider}"]["sqnr_db"] is not None


def test_a_provider_that_is_not_installed_is_one_line_saying_how_to_get_it():
    missing = next(
        p for p in ("QNNExecutionProvider", "DmlExecutionProvider") if p not in ort.get_available_providers()
    )
    with pytest.raises(ConfigError, match=rf"{missing} is not installed \(onnxruntime .*\): pip install onnxruntime-"):
        parse([f"ort:{missing}"])
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        parse(["tensorrt"])
    with pytest.raises(ConfigError, match="lists ort twice"):
        parse(["ort", "ort"])


def test_openvino_missing_is_one_line_with_the_pip_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'qaudit\[openvino\]' \(openvino==2026\.4\.1\)"):
        parse(["ort", "openvino"])


def test_the_cli_refuses_an_unknown_runtime_with_exit_2(run_cli):
    res = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--runtimes", "ort,bogus")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "unknown runtime 'bogus'" in res.stderr


def test_runtime_tables_in_a_config_file_list_the_runtimes_and_hold_their_gates(tmp_path):
    from qaudit.cli.settings import resolve

    (tmp_path / "qaudit.toml").write_text(
        "[runtimes.ort]\n[runtimes.openvino]\nmin_output_sqnr = 30\n"
        '[runtimes.openvino.layers."/fc*"]\nmin_layer_sqnr = 20\n'
    )
    s = resolve("audit", {}, environ={}, cwd=tmp_path)
    assert s["runtimes"] == ("ort", "openvino")
    assert set(s.gates.runtimes) == {"ort", "openvino"}
    sub = s.gates.runtimes["openvino"]
    assert sub.threshold("min_output_sqnr").default == 30.0
    assert sub.threshold("min_layer_sqnr").resolve("/fc1/Gemm") == (20.0, "/fc*")
    assert not s.gates.runtimes["ort"].configured()
    assert resolve("audit", {"runtimes": ["ort-sim"]}, environ={}, cwd=tmp_path)["runtimes"] == ("ort-sim",)
    assert resolve("report", {}, environ={}, cwd=tmp_path).gates.runtimes["openvino"].configured()
    (tmp_path / "qaudit.toml").write_text("[runtimes.openvino]\nmax_layer_sqnr_drop = 1\n")
    with pytest.raises(ConfigError, match=r"\[runtimes.openvino\] sets max_layer_sqnr_drop, a regression gate"):
        resolve("audit", {}, environ={}, cwd=tmp_path)
    (tmp_path / "qaudit.toml").write_text("[runtimes.openvino]\nmin_layer_sqnr_x = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'min_layer_sqnr_x' in \[runtimes.\"openvino\"\]"):
        resolve("audit", {}, environ={}, cwd=tmp_path)


@pytest.mark.extra
def test_a_runtime_gate_checks_that_runtimes_numbers(three):
    from qaudit.gate import runtime_view

    view = runtime_view(three, "openvino")
    lr = {lr.name: lr for lr in three.runtimes.layers}
    assert [r.sqnr_db for r in view.layers if r.name in lr] == [
        lr[r.name].sqnr_db["openvino"] for r in view.layers if r.name in lr
    ]
    ov = three.runtimes.outputs[0].metrics["openvino"]["sqnr_db"]
    assert view.outputs[0].sqnr_db == ov != three.outputs[0].sqnr_db
    cfg = GateConfig(runtimes={"openvino": {"min_output_sqnr": Threshold(ov + 0.001)}})
    (check,) = evaluate(three, cfg).checks
    assert check.status == "fail" and check.subject == "logits [openvino]" and check.measured == ov
    assert evaluate(three, GateConfig(runtimes={"openvino": {"min_output_sqnr": ov}})).passed
    (missing,) = evaluate(three, GateConfig(runtimes={"openvino-gpu": {"min_output_sqnr": 1.0}})).checks
    assert missing.status == "fail" and "did not run openvino-gpu" in missing.reason


@pytest.mark.extra
def test_terminal_and_html_show_every_runtime(three):
    from qaudit.renderers import render

    text = render(three, "terminal")
    assert "Per-layer SQNR in each runtime" in text and "agree ort vs openvino" in text
    assert "openvino: openvino 2026.4.1 on CPU" in text
    for d in three.runtimes.divergences:
        assert f"{d.pair}: first diverges at {d.layer}" in text
    html = render(three, "html")
    assert 'id="runtimes"' in html and 'id="rt-sqnr-0"' in html and 'id="rt-agree-0"' in html
    sqnr_plot = html[html.index('id="rt-sqnr-0"') : html.index('id="rt-agree-0"')]
    assert sqnr_plot.count('<g class="series">') == 3  # one line per runtime
    assert 'id="runtimes"' not in render(qaudit.audit(SAMPLE_MODEL, CALIB, EVAL[:16], isolated=False), "html")


@pytest.mark.extra
def test_openvino_first_feeds_the_main_table_with_its_own_isolated_error(three):
    """--runtimes openvino,ort: the main table is OpenVINO's (its numbers equal the openvino column of
    the ort-first audit), and the isolated-error graph runs in OpenVINO too (its new inputs carry a rank)."""
    ov_first = qaudit.audit(SAMPLE_MODEL, CALIB, EVAL, runtimes="openvino,ort")
    column = {lr.name: lr.sqnr_db["openvino"] for lr in three.runtimes.layers}
    for row in ov_first.layers:
        if row.name in column:
            assert row.sqnr_db == pytest.approx(column[row.name], rel=1e-9), row.name
            assert row.sqnr_isolated_db is not None and math.isfinite(row.sqnr_isolated_db)
    assert ov_first.outputs[0].sqnr_db == pytest.approx(three.runtimes.outputs[0].metrics["openvino"]["sqnr_db"])
    assert ov_first.runtimes.names == ["openvino", "ort"]
