"""Several calibration methods in one audit (issue 18 item 1): one calibration pass, one run per
method, each run equal to the single-method audit with that method, every run gated, ``{run}`` outputs."""

from __future__ import annotations

import collections
import hashlib
import json
import xml.etree.ElementTree as ET

import pytest

import qaudit
from qaudit.errors import ConfigError
from qaudit.pipeline import audit as audit_module
from qaudit.pipeline import capture as capture_module
from qaudit.pipeline import session as session_module
from qaudit.report import to_dict
from qaudit.runs import MultiReport

from .conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL

METHODS = ["percentile", "entropy", "minmax"]


def _body(report) -> dict:
    """A report's JSON without what differs from one audit to the next: the clock."""
    d = to_dict(report)
    d.pop("meta")
    return d


@pytest.fixture(scope="module")
def counted():
    """The three-method audit of the sample, with every calibration pass and calibrator batch counted,
    and every session run of the capture (by the model the session runs)."""
    calls, batches, session_runs = [], [], collections.Counter()
    real = audit_module.calibrate_many
    real_run = capture_module.run_named

    def counting_run(session, feeds):
        session_runs[session.qaudit_what] += 1
        return real_run(session, feeds)

    def counting(model_path, it, cfgs, *args, **kw):
        calls.append([c.calibrate_method for c in cfgs])

        def each():
            for b in it:
                batches.append(next(iter(b.values())).shape[0])
                yield b

        return real(model_path, each(), cfgs, *args, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(audit_module, "calibrate_many", counting)
    mp.setattr(capture_module, "run_named", counting_run)
    mp.setattr(session_module, "run_named", counting_run)  # the runtimes' sessions (qaudit.pipeline.runtimes)
    try:
        report = qaudit.audit(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, calibrate_method=METHODS)
    finally:
        mp.undo()
    return report, calls, batches, session_runs


def test_one_calibration_pass_serves_every_run(counted):
    report, calls, batches, _ = counted
    assert isinstance(report, MultiReport) and report.names == tuple(METHODS)
    assert calls == [METHODS]  # one pass, every method's collectors on it
    assert sum(batches) == report.run("entropy").data["n_calib"] == 128  # each calibration sample seen once


def test_the_fp32_graph_runs_once_per_evaluation_batch_for_every_run(counted):
    report, *_, session_runs = counted
    n_eval, batch = report.run("percentile").data["n_eval"], report.run("percentile").settings["batch_size"]
    n_batches = -(-n_eval // batch)
    # the cost of three runs on the evaluation data: one fp32 pass, three quantized and three isolated passes
    # (three audits one after the other ran the fp32 graph 3 * n_batches times)
    print(f"\n{n_batches} evaluation batches, 3 runs: session runs {dict(session_runs)}")
    session_runs.pop("the BN-folded model", None)  # the fold check (it counts too: session.run_named)
    assert session_runs == {
        f"model {SAMPLE_MODEL}": n_batches,
        "the quantized model": 3 * n_batches + 3 * 2,  # + each run's first-batch check: plain and instrumented
        "the isolated-error graph": 3 * n_batches,
    }
    assert n_batches > 1  # the lockstep alternates the runs within a batch, over several batches


@pytest.mark.parametrize("method", METHODS)
def test_each_run_equals_the_single_method_audit(counted, method):
    single = qaudit.audit(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, calibrate_method=method)
    run = counted[0].run(method)
    assert run.settings["calibrate_method"] == method
    assert json.dumps(_body(run), sort_keys=True) == json.dumps(_body(single), sort_keys=True)


def test_the_runs_differ(counted):
    report = counted[0]
    sqnr = {n: [r.sqnr_db for r in report.run(n).layers] for n in METHODS}
    assert sqnr["percentile"] != sqnr["entropy"] != sqnr["minmax"]


def test_options_go_to_the_methods_that_take_them():
    cfg = qaudit.options.audit_config(
        SAMPLE_MODEL, SAMPLE_CALIB, calibrate_method="percentile, entropy,minmax", num_bins=512, percentile=99.9
    )
    assert [(q.calibrate_method, q.calibration()) for q in cfg.runs] == [
        ("percentile", {"percentile": 99.9, "calib_symmetric": True, "num_bins": 512}),
        ("entropy", {"num_bins": 512, "num_quantized_bins": 128}),
        ("minmax", {"calib_symmetric": False, "moving_average": False, "averaging_constant": 0.01}),
    ]
    assert cfg.quant == cfg.runs[0]
    assert qaudit.options.audit_config(SAMPLE_MODEL, SAMPLE_CALIB, calibrate_method=["entropy"]).runs == ()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"calibrate_method": "entropy,minmax", "percentile": 99.9}, "percentile applies to none of the methods"),
        ({"calibrate_method": ["entropy", "entropy"]}, "lists entropy twice"),
        ({"calibrate_method": "entropy,kl"}, "must be one of percentile, minmax, entropy, distribution, not 'kl'"),
        ({"calibrate_method": "entropy,", "num_bins": 512}, "needs a method name in each item"),
    ],
)
def test_bad_method_lists_are_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        qaudit.options.audit_config(SAMPLE_MODEL, SAMPLE_CALIB, **kw)


def test_quantized_takes_no_method_list(tmp_path):
    with pytest.raises(ConfigError, match="--quantized audits one given model"):
        qaudit.options.audit_config(
            SAMPLE_MODEL, None, SAMPLE_EVAL, quantized=tmp_path / "q.onnx", calibrate_method="entropy,minmax"
        )


def _cli(run_cli, tmp_path, *argv):
    return run_cli(
        str(SAMPLE_MODEL),
        "--calib",
        str(SAMPLE_CALIB),
        "--eval",
        str(SAMPLE_EVAL),
        "--labels",
        str(SAMPLE_LABELS),
        "--calibrate-method",
        ",".join(METHODS),
        *argv,
    )


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exit_1_when_only_one_run_fails_and_one_model_per_run(run_cli, tmp_path, counted):
    # the sample's worst layers: percentile 31.03 dB, entropy 31.14 dB, minmax 30.90 dB
    worst = {n: counted[0].run(n).worst_layers(1)[0].sqnr_db for n in METHODS}
    assert worst["minmax"] < 31.0 < min(worst["percentile"], worst["entropy"])
    p = _cli(
        run_cli,
        tmp_path,
        "--min-layer-sqnr",
        "31",
        "--json",
        str(tmp_path / "r.json"),
        "--junit",
        str(tmp_path / "r.xml"),
        "--output-model",
        str(tmp_path / "q-{run}.onnx"),
    )
    assert p.returncode == 1, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "gates: FAIL (runs failing: minmax; passing: percentile, entropy)"
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["format"]["version"] == 4 and doc["gates"] == {"passed": False, "failed_runs": ["minmax"]}
    assert [r["gates"]["passed"] for r in doc["runs"]] == [True, True, False]
    root = ET.parse(tmp_path / "r.xml").getroot()
    assert [s.get("name") for s in root] == [f"qaudit.{m}.min_layer_sqnr" for m in METHODS]
    assert root.get("failures") == "2"
    # one model per run, each the model a single-method audit writes
    for m in METHODS:
        single = tmp_path / f"single-{m}.onnx"
        qaudit.audit(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, calibrate_method=m, output_model=single)
        assert _sha(tmp_path / f"q-{m}.onnx") == _sha(single)
    assert not list(tmp_path.glob("*.tmp"))


def test_output_model_without_run_placeholder_is_the_first_runs(run_cli, tmp_path):
    p = _cli(run_cli, tmp_path, "--output-model", str(tmp_path / "q.onnx"), "--quiet")
    assert p.returncode == 0, p.stderr
    single = tmp_path / "single.onnx"
    qaudit.audit(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, calibrate_method="percentile", output_model=single)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["q.onnx", "single.onnx"]
    assert _sha(tmp_path / "q.onnx") == _sha(single)


def test_report_re_gates_a_saved_multi_run_report_and_baselines_match_by_name(run_cli, tmp_path):
    p = _cli(run_cli, tmp_path, "--json", str(tmp_path / "r.json"), "--quiet")
    assert p.returncode == 0, p.stderr
    p = run_cli("report", str(tmp_path / "r.json"), "--min-layer-sqnr", "31", "--quiet")
    assert p.returncode == 1 and p.stdout.strip().splitlines()[-1].startswith("gates: FAIL (runs failing: minmax;")
    p = run_cli("report", str(tmp_path / "r.json"), "--min-layer-sqnr", "30", "--quiet")
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == (
        "gates: PASS (every run: percentile, entropy, minmax)"
    )
    # against itself: every run compared with its namesake, no change
    p = run_cli(
        "report", str(tmp_path / "r.json"), "--baseline", str(tmp_path / "r.json"), "--max-output-sqnr-drop", "0"
    )
    assert p.returncode == 0, p.stdout + p.stderr
    # a run the baseline lacks: one line, exit 2, before any work
    p = run_cli(
        str(SAMPLE_MODEL),
        "--calib",
        str(SAMPLE_CALIB),
        "--calibrate-method",
        "entropy,distribution",
        "--baseline",
        str(tmp_path / "r.json"),
        "--json",
        str(tmp_path / "x.json"),
    )
    assert p.returncode == 2 and "the baseline report has no run 'distribution'" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
    # a single-method audit against a multi-run baseline
    p = run_cli(str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), "--baseline", str(tmp_path / "r.json"))
    assert p.returncode == 2 and "the baseline report has 3 runs" in p.stderr
    # qaudit compare takes single reports: one line, exit 2
    p = run_cli("compare", str(tmp_path / "r.json"), str(tmp_path / "r.json"))
    assert p.returncode == 2 and "holds several runs (percentile, entropy, minmax)" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_run_placeholder_with_one_method_names_its_file(run_cli, tmp_path):
    p = run_cli(
        str(SAMPLE_MODEL),
        "--calib",
        str(SAMPLE_CALIB),
        "--calibrate-method",
        "minmax",
        "--quiet",
        "--output-model",
        str(tmp_path / "q-{run}.onnx"),
    )
    assert p.returncode == 0, p.stderr
    assert [f.name for f in tmp_path.iterdir()] == ["q-minmax.onnx"]
    qaudit.audit(SAMPLE_MODEL, SAMPLE_CALIB, output_model=tmp_path / "api-{run}.onnx")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["api-percentile.onnx", "q-minmax.onnx"]


def test_runs_of_a_model_with_external_data_read_its_weights_beside_the_folded_model(counted, monkeypatch):
    """A big model's folded graph is saved with its weights in ``folded.onnx.data``; every run's capture
    and rows must read them from there, not from the run's own folder (MiniLM, ddddocr's captcha)."""
    monkeypatch.setattr(session_module, "EXTERNAL_DATA_BYTES", 0)  # every model saved with external data
    report = qaudit.audit(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, calibrate_method=METHODS)
    for method in METHODS:
        assert json.dumps(_body(report.run(method)), sort_keys=True) == json.dumps(
            _body(counted[0].run(method)), sort_keys=True
        )
