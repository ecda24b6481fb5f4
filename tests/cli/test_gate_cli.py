"""The release gate end to end: exit codes, JUnit, Markdown, JSON ``gates``, baselines.

Audits of the sample run once per fixture (module scope) and are shared;
re-gating a saved report (``qaudit report``) runs no model and is cheap, so
most edge cases use it. JUnit files are parsed with xml.etree, never matched
as strings.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qaudit.renderers import numbers

from ..conftest import SAMPLE, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL, sha256_file

pytestmark = pytest.mark.slow

CONFIG = SAMPLE / "qaudit.toml"
BASELINE = SAMPLE / "baseline.json"
SAMPLE_ARGS = (SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--eval", SAMPLE_EVAL, "--labels", SAMPLE_LABELS)


@dataclass(frozen=True)
class Run:
    proc: object
    dir: Path

    @property
    def report(self) -> dict:
        return json.loads((self.dir / "report.json").read_text(encoding="utf-8"))

    @property
    def junit(self) -> ET.Element:
        return ET.parse(self.dir / "junit.xml").getroot()

    @property
    def markdown(self) -> str:
        return (self.dir / "summary.md").read_text(encoding="utf-8")


def outputs(d: Path) -> list:
    return ["--json", d / "report.json", "--junit", d / "junit.xml", "--markdown", d / "summary.md"]


def gated_run(run_cli, d: Path, *args) -> Run:
    return Run(run_cli(*args, *outputs(d)), d)


def cases(root: ET.Element) -> dict[tuple[str, str], ET.Element]:
    """{(classname, name): testcase} of a JUnit document."""
    return {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}


def failing_cases(root: ET.Element) -> dict[tuple[str, str], ET.Element]:
    return {k: c.find("failure") for k, c in cases(root).items() if c.find("failure") is not None}


def body(failure: ET.Element) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in failure.text.strip().splitlines())


def assert_junit_consistent(root: ET.Element) -> None:
    """What JUnit consumers rely on: counts that add up, named cases, failures with message and type."""
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert suites
    for key in ("tests", "failures", "errors", "skipped"):
        assert int(root.get(key)) == sum(int(s.get(key)) for s in suites), key
    for s in suites:
        tcs = s.findall("testcase")
        assert int(s.get("tests")) == len(tcs)
        assert int(s.get("failures")) == sum(tc.find("failure") is not None for tc in tcs)
        assert int(s.get("skipped")) == sum(tc.find("skipped") is not None for tc in tcs)
        assert s.get("name").startswith("qaudit")
        for tc in tcs:
            assert tc.get("classname") == s.get("name") and tc.get("name")
            f = tc.find("failure")
            if f is not None:
                assert f.get("type") and f.get("message") and f.text


# --------------------------------------------------------- passing audit


@pytest.fixture(scope="module")
def passing(run_cli, tmp_path_factory) -> Run:
    """The sample's own config file and committed baseline: every gate passes."""
    return gated_run(run_cli, tmp_path_factory.mktemp("passing"), "--config", CONFIG)


def test_passing_audit_exits_zero(passing):
    assert passing.proc.returncode == 0, passing.proc.stderr
    assert passing.proc.stderr == ""
    last = passing.proc.stdout.rstrip().splitlines()[-1]
    assert last.startswith("PASS: ") and "gate check(s) passed" in last


def test_passing_json_gates_section(passing):
    g = passing.report["gates"]
    assert g["passed"] is True and g["counts"]["failed"] == 0
    assert Path(g["baseline"]["path"]) == BASELINE  # 'baseline.json', relative to the config file
    assert g["baseline"]["model_sha256"] == sha256_file(SAMPLE_MODEL)
    assert g["added_layers"] == [] and g["removed_layers"] == []
    # the thresholds applied are recorded: file default, glob override, 'off' exemption
    t = g["thresholds"]
    assert t["min_layer_sqnr"] == {"default": 28.0, "overrides": {"/fc*": 32.0}}
    assert t["max_clip_fraction"]["overrides"] == {"input": None}
    # same model, same data, same settings as the baseline: no layer moved at all
    # (by ~1e-7 dB where the baseline's per-value loops were not these: numpy's
    # float32 sums against C's double ones, qaudit/pipeline/kernels.py)
    drops = [c for c in g["checks"] if c["gate"] == "max_layer_sqnr_drop"]
    assert len(drops) == 9
    baseline_kernels = json.loads(BASELINE.read_text())["meta"]["kernels"]
    if passing.report["meta"]["kernels"] == baseline_kernels:
        assert {c["measured"] for c in drops} == {0.0}
    else:
        assert max(abs(c["measured"]) for c in drops) < 1e-5
    # every quantized layer was checked, with the threshold its glob gives it
    sqnr = {c["subject"]: c for c in g["checks"] if c["gate"] == "min_layer_sqnr"}
    assert list(sqnr) == [r["name"] for r in passing.report["layers"]]
    assert sqnr["/fc1/Gemm"]["threshold"] == 32.0 and sqnr["/fc1/Gemm"]["pattern"] == "/fc*"
    assert sqnr["/dw/conv/Conv"]["threshold"] == 28.0 and sqnr["/dw/conv/Conv"]["pattern"] is None
    for c in sqnr.values():
        layer = next(r for r in passing.report["layers"] if r["name"] == c["subject"])
        assert c["measured"] == layer["sqnr_db"]


def test_passing_junit(passing):
    root = passing.junit
    assert_junit_consistent(root)
    assert int(root.get("failures")) == 0 and int(root.get("errors")) == 0
    assert int(root.get("tests")) == passing.report["gates"]["counts"]["checks"]
    names = [s.get("name") for s in root.findall("testsuite")]
    assert names[0] == "qaudit.min_layer_sqnr"
    assert "qaudit.max_layer_sqnr_drop" in names and "qaudit.max_output_sqnr_drop" in names
    tc = cases(root)
    assert ("qaudit.min_layer_sqnr", "layer /pw/conv/Conv") in tc
    assert ("qaudit.max_qce", "output logits") in tc
    skipped = tc[("qaudit.max_clip_fraction", "layer input")].find("skipped")
    assert skipped is not None and "input" in skipped.get("message")
    props = {p.get("name"): p.get("value") for p in root.find("testsuite").iter("property")}
    assert props["model_sha256"] == sha256_file(SAMPLE_MODEL)
    assert props["threshold"] == "28.0" and props["threshold[/fc*]"] == "32.0"


def test_passing_markdown(passing):
    md = passing.markdown
    assert md.startswith("## qaudit: ✅ PASS")
    assert "### Failing gates" not in md
    assert "### Worst layers" in md and "`/pw/conv/Conv`" in md
    assert "### Baseline" in md and "Layers added: none" in md
    assert "<details><summary>All" in md


def test_quiet_prints_only_the_verdict(run_cli, passing, tmp_path):
    saved = passing.dir / "report.json"
    p = run_cli("report", saved, "--quiet", "--min-layer-sqnr", "20")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("PASS: ") and len(p.stdout.splitlines()) == 1
    assert p.stderr == ""


# --------------------------------------------------------- failing audit


@pytest.fixture(scope="module")
def failing(run_cli, tmp_path_factory) -> Run:
    """The config file plus a stricter default on the command line: --min-layer-sqnr 35."""
    d = tmp_path_factory.mktemp("failing")
    return gated_run(run_cli, d, "--config", CONFIG, "--min-layer-sqnr", "35", "--quiet")


def test_failing_audit_exits_one_and_prints_only_the_verdict(failing):
    p = failing.proc
    assert p.returncode == 1, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAIL: ")
    assert "min_layer_sqnr /dw/conv/Conv" in lines[0]  # the first failing layer, in graph order


def expected_failures(report: dict, default: float, fc: float) -> list[str]:
    """Layers below their threshold, computed here from the JSON's layer rows."""
    return [
        r["name"]
        for r in report["layers"]
        if r["sqnr_db"] is not None and r["sqnr_db"] < (fc if r["name"].startswith("/fc") else default)
    ]


def test_failing_layers_are_named_in_json_junit_and_markdown(failing):
    report = failing.report
    want = expected_failures(report, 35.0, 32.0)
    assert set(want) >= {"/dw/conv/Conv", "/pw/conv/Conv", "/flatten/Flatten"}  # sanity: the sample's weak layers
    g = report["gates"]
    assert g["passed"] is False
    assert [c["subject"] for c in g["checks"] if c["status"] == "fail"] == want
    # the command line replaced the file's default (35) but kept its glob override (32 for /fc*)
    assert g["thresholds"]["min_layer_sqnr"] == {"default": 35.0, "overrides": {"/fc*": 32.0}}

    root = failing.junit
    assert_junit_consistent(root)
    fails = failing_cases(root)
    assert [name for (_, name) in fails] == [f"layer {n}" for n in want]
    assert int(root.get("failures")) == len(want)
    rows = {r["name"]: r for r in report["layers"]}
    for (classname, name), f in fails.items():
        layer = name.removeprefix("layer ")
        assert classname == "qaudit.min_layer_sqnr" and f.get("type") == "min_layer_sqnr"
        b = body(f)
        # the failure carries the measured value and the threshold, exactly
        assert float(b["measured"]) == rows[layer]["sqnr_db"]
        assert float(b["threshold"]) == 35.0 and b["comparison"] == "measured >= threshold"
        assert b["metric"] == "sqnr_db" and b["glob"] == "(default)"
        # the message is the one gate-check sentence, its numbers by the shared rule
        measured = numbers.gate(rows[layer]["sqnr_db"], 35.0)
        assert f.get("message") == f"min_layer_sqnr {layer}: sqnr_db {measured} < 35"

    md = failing.markdown
    assert md.startswith(f"## qaudit: ❌ FAIL — {len(want)} of ")
    failing_table = md.split("### Failing gates", 1)[1].split("###", 1)[0]
    for n in want:
        assert f"`{n}`" in failing_table
    worst = md.split("### Worst layers (failing first)", 1)[1].split("###", 1)[0]
    listed = [line.split("|")[2].strip().strip("`") for line in worst.strip().splitlines()[2:]]
    assert listed[: len(want)] == want


def test_failing_terminal_table_marks_the_failing_layers(run_cli, failing):
    p = run_cli("report", failing.dir / "report.json")
    assert p.returncode == 1  # no gate setting given: the saved verdict stands, and the exit code says so
    table = p.stdout.split("Model outputs", 1)[0]
    marked = {line.split("│")[2].strip() for line in table.splitlines() if "✗" in line}
    assert {m.split(" ")[0] for m in marked} == set(expected_failures(failing.report, 35.0, 32.0))
    assert "Failing gates" in p.stdout and p.stdout.rstrip().splitlines()[-1].startswith("FAIL: ")


# ------------------------------------------------------- re-gating JSON


@pytest.fixture(scope="module")
def saved(sample_run) -> Path:
    """The shared sample audit (no gates)."""
    return sample_run.json_path


def test_regate_equal_to_threshold_passes_one_ulp_above_fails(run_cli, saved, sample_report_json, tmp_path):
    worst = min(r["sqnr_db"] for r in sample_report_json["layers"])
    p = run_cli("report", saved, "--quiet", "--min-layer-sqnr", repr(worst), "--junit", tmp_path / "eq.xml")
    assert p.returncode == 0, p.stdout + p.stderr
    assert int(ET.parse(tmp_path / "eq.xml").getroot().get("failures")) == 0
    above = math.nextafter(worst, math.inf)
    p = run_cli("report", saved, "--quiet", "--min-layer-sqnr", repr(above), "--junit", tmp_path / "up.xml")
    assert p.returncode == 1, p.stdout + p.stderr
    fails = failing_cases(ET.parse(tmp_path / "up.xml").getroot())
    worst_names = [r["name"] for r in sample_report_json["layers"] if r["sqnr_db"] == worst]
    assert [n for (_, n) in fails] == [f"layer {n}" for n in worst_names]


def test_regate_runs_no_model_and_writes_json_to_stdout(run_cli, saved):
    p = run_cli("report", saved, "--max-qce", "0.01", "--json", "-")
    assert p.returncode == 1
    d = json.loads(p.stdout)
    assert d["format"]["version"] == 5 and d["gates"]["passed"] is False
    (check,) = d["gates"]["checks"]
    assert (check["gate"], check["subject"], check["status"], check["threshold"]) == ("max_qce", "logits", "fail", 0.01)
    assert "FAIL: " in p.stderr and "Model outputs" in p.stderr


def test_junit_to_stdout(run_cli, saved):
    p = run_cli("report", saved, "--min-output-sqnr", "30", "--junit", "-")
    assert p.returncode == 0
    root = ET.fromstring(p.stdout)
    assert_junit_consistent(root)
    assert [n for (_, n) in cases(root)] == ["output logits"]
    assert "PASS: " in p.stderr


def test_missing_metric_fails_unless_skip_missing(run_cli, saved, sample_report_json, tmp_path):
    no_labels = json.loads(json.dumps(sample_report_json))
    for o in no_labels["outputs"]:
        o.update(acc_fp32=None, acc_int8=None, acc_drop_pct=None)
    f = tmp_path / "nolabels.json"
    f.write_text(json.dumps(no_labels), encoding="utf-8")
    p = run_cli("report", f, "--quiet", "--max-acc-drop-pct", "1", "--junit", tmp_path / "m.xml")
    assert p.returncode == 1
    assert "--labels" in p.stdout
    fail = failing_cases(ET.parse(tmp_path / "m.xml").getroot())[("qaudit.max_acc_drop_pct", "output logits")]
    assert body(fail)["measured"] == numbers.MISSING and "missing" in body(fail)["reason"]
    p = run_cli("report", f, "--quiet", "--max-acc-drop-pct", "1", "--skip-missing", "--junit", tmp_path / "s.xml")
    assert p.returncode == 0
    root = ET.parse(tmp_path / "s.xml").getroot()
    assert root.get("skipped") == "1" and root.get("failures") == "0"


def test_environment_sets_gates(saved, sample_report_json, cli_env):
    import subprocess
    import sys

    from ..conftest import REPO

    def run(*args, **env):
        return subprocess.run(
            [sys.executable, "-m", "qaudit", "report", str(saved), "--json", "-", *args],
            cwd=REPO,
            env={**cli_env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = run(QAUDIT_MIN_LAYER_SQNR="40,/fc*=30")
    assert p.returncode == 1, p.stderr
    failed = [c["subject"] for c in json.loads(p.stdout)["gates"]["checks"] if c["status"] == "fail"]
    assert failed == expected_failures(sample_report_json, 40.0, 30.0)
    assert "/fc1/Gemm" not in failed  # 36.1 dB: below the default, above its glob's 30
    p = run("--min-layer-sqnr", "50", QAUDIT_MIN_LAYER_SQNR="20")
    assert p.returncode == 1, "the command line must beat the environment"
    assert json.loads(p.stdout)["gates"]["thresholds"]["min_layer_sqnr"]["default"] == 50.0


# ------------------------------------------------------------- baseline


def drops(current: dict, baseline: dict, tol: float) -> list[str]:
    """Layers whose SQNR dropped by more than ``tol`` dB, computed here from two JSON reports."""
    base = {r["name"]: r["sqnr_db"] for r in baseline["layers"]}
    return [
        r["name"]
        for r in current["layers"]
        if r["name"] in base
        and base[r["name"]] is not None
        and r["sqnr_db"] is not None
        and base[r["name"]] - r["sqnr_db"] > tol
    ]


@pytest.fixture(scope="module")
def lower_percentile(run_cli, tmp_path_factory, saved) -> Run:
    """A degraded release: percentile calibration at 99.9 instead of 99.999, gated against the sample audit."""
    d = tmp_path_factory.mktemp("lower_percentile")
    return gated_run(run_cli, d, *SAMPLE_ARGS, "--percentile", "99.9", "--baseline", saved, "--quiet")


def test_lower_percentile_fails_the_baseline_gate(lower_percentile, sample_report_json):
    p = lower_percentile.proc
    assert p.returncode == 1, p.stderr
    report = lower_percentile.report
    want = drops(report, sample_report_json, 1.0)
    assert want, "a 99.9 percentile must cost more than 1 dB somewhere"
    fails = failing_cases(lower_percentile.junit)
    assert [n for (c, n) in fails if c == "qaudit.max_layer_sqnr_drop"] == [f"layer {n}" for n in want]
    base = {r["name"]: r["sqnr_db"] for r in sample_report_json["layers"]}
    now = {r["name"]: r["sqnr_db"] for r in report["layers"]}
    for (c, n), f in fails.items():
        if c != "qaudit.max_layer_sqnr_drop":
            continue
        layer = n.removeprefix("layer ")
        b = body(f)
        assert float(b["baseline"]) == base[layer] and float(b["value"]) == now[layer]
        assert float(b["measured"]) == pytest.approx(base[layer] - now[layer], abs=1e-12)
        assert float(b["threshold"]) == 1.0
    g = report["gates"]
    assert any("percentile 99.999 -> 99.9" in n for n in g["notes"])
    md = lower_percentile.markdown
    assert "### Baseline" in md and "max_layer_sqnr_drop" in md


def fc1_outlier_model(path: Path) -> Path:
    """The sample model with one weight of /fc1/Gemm 40x larger than the rest: a per-tensor
    encoding then wastes most of its levels, and the quantization error starts at /fc1/Gemm."""
    m = onnx.load(str(SAMPLE_MODEL))
    node = next(n for n in m.graph.node if n.name == "/fc1/Gemm")
    init = next(t for t in m.graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = 40 * np.abs(w).max()
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, str(path))
    return path


def test_degraded_layer_is_named_first(run_cli, tmp_path, saved, sample_report_json):
    model = fc1_outlier_model(tmp_path / "degraded.onnx")
    d = tmp_path / "out"
    d.mkdir()
    run = gated_run(run_cli, d, model, *SAMPLE_ARGS[1:], "--baseline", saved, "--quiet")
    assert run.proc.returncode == 1, run.proc.stderr
    checks = [c for c in run.report["gates"]["checks"] if c["gate"] == "max_layer_sqnr_drop"]
    failed = [c["subject"] for c in checks if c["status"] == "fail"]
    assert failed == ["/fc1/Gemm", "/fc2/Gemm"]  # the degraded layer and the one after it
    # every layer before it is bit-for-bit what the baseline measured
    for c in checks[: [c["subject"] for c in checks].index("/fc1/Gemm")]:
        assert c["measured"] == 0.0 and c["status"] == "pass", c
    assert "max_layer_sqnr_drop /fc1/Gemm" in run.proc.stdout
    fails = failing_cases(run.junit)
    assert ("qaudit.max_layer_sqnr_drop", "layer /fc1/Gemm") in fails
    assert ("qaudit.max_output_sqnr_drop", "output logits") in fails
    props = {p.get("name"): p.get("value") for p in run.junit.find("testsuite").iter("property")}
    assert props["baseline_model_sha256"] == sha256_file(SAMPLE_MODEL) != props["model_sha256"]


def test_added_and_removed_layers_are_listed(run_cli, saved, sample_report_json, tmp_path):
    old = json.loads(json.dumps(sample_report_json))
    old["layers"][5]["name"] = "/pw_old/conv/Conv"  # the previous release called it differently
    base = tmp_path / "old.json"
    base.write_text(json.dumps(old), encoding="utf-8")
    d = tmp_path / "out"
    d.mkdir()
    run = gated_run(run_cli, d, "report", saved, "--baseline", base, "--quiet")
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    g = run.report["gates"]
    assert g["added_layers"] == ["/pw/conv/Conv"] and g["removed_layers"] == ["/pw_old/conv/Conv"]
    assert "/pw/conv/Conv" not in [c["subject"] for c in g["checks"]]  # nothing to pair it with
    props = {p.get("name"): p.get("value") for p in run.junit.find("testsuite").iter("property")}
    assert props["added_layers"] == "/pw/conv/Conv" and props["removed_layers"] == "/pw_old/conv/Conv"
    assert "Layers added: `/pw/conv/Conv`" in run.markdown
    assert "Layers removed: `/pw_old/conv/Conv`" in run.markdown


def test_version_1_report_is_a_valid_baseline(run_cli, saved, sample_report_json, tmp_path):
    old = json.loads(json.dumps(sample_report_json))
    old["format"]["version"] = 1
    del old["gates"]
    base = tmp_path / "v1.json"
    base.write_text(json.dumps(old), encoding="utf-8")
    p = run_cli("report", saved, "--baseline", base, "--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("PASS: ")


# ------------------------------------------------ errors are never a verdict


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def assert_one_line_error(p, *words):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qaudit: error: "), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda d: ["--config", _w(d / "q.toml", "[gates]\nmin_layer_sqrn = 25\n")],
            ["min_layer_sqrn", "q.toml", "min_layer_sqnr"],
        ),
        (lambda d: ["--config", _w(d / "q.toml", "[gates]\nmin_layer_sqnr = nan\n")], ["min_layer_sqnr", "finite"]),
        (lambda d: ["--config", d / "none.toml"], ["config file not found"]),
        (lambda d: ["--min-layer-sqnr", "fast"], ["--min-layer-sqnr", "'fast'"]),
        (lambda d: ["--max-clip-fraction", "/fc2/*=2"], ["max_clip_fraction", "<= 1"]),
        (lambda d: ["--baseline", d / "missing.json"], ["baseline report not found", "missing.json"]),
        (lambda d: ["--baseline", _w(d / "b.json", "{}")], ["baseline report", "b.json", "not a readable"]),
        (lambda d: ["--junit", "-", "--markdown", "-"], ["--junit and --markdown both write to stdout"]),
        (lambda d: ["--baseline", BASELINE, "--junit", BASELINE], ["is the baseline", "never overwrites"]),
    ],
)
def test_config_and_input_errors_exit_two_and_write_nothing(run_cli, saved, tmp_path, make, words):
    d = tmp_path / "in"
    d.mkdir()
    extra = make(d)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out), sha256_file(BASELINE)
    p = run_cli("report", saved, *extra, "--json", out / "r.json")
    assert_one_line_error(p, *words)
    assert (snapshot(out), sha256_file(BASELINE)) == before


def _w(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_audit_config_error_exits_two_before_running(run_cli, tmp_path):
    bad = _w(tmp_path / "qaudit.toml", 'model = "model.onnx"\ncalib = "calib"\nbatch_size = "big"\n')
    p = run_cli("--config", bad, "--junit", tmp_path / "j.xml")
    assert_one_line_error(p, "batch_size", "qaudit.toml", "integer")
    assert not (tmp_path / "j.xml").exists()


def test_unknown_environment_variable_is_a_config_error(saved, cli_env):
    import subprocess
    import sys

    from ..conftest import REPO

    env = {**cli_env, "QAUDIT_MIN_LAYER_SQRN": "25"}
    p = subprocess.run(
        [sys.executable, "-m", "qaudit", "report", str(saved)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(p, "QAUDIT_MIN_LAYER_SQRN", "QAUDIT_MIN_LAYER_SQNR")


@pytest.mark.parametrize(
    "where",
    [
        "qaudit.gate.evaluate",
        "qaudit.report.to_json",
        "qaudit.renderers.jsonreport.JsonRenderer.render",
        "qaudit.renderers.junit.JUnitRenderer.render",
        "qaudit.renderers.markdown.MarkdownRenderer.render",
        "qaudit.renderers.html.HtmlRenderer.render",
    ],
)
def test_a_crash_exits_three_never_one(monkeypatch, capsys, saved, tmp_path, where):
    """A bug while gating or rendering is an internal error (3), not a failed gate (1), and writes nothing
    (every output is rendered before any is written, the HTML last)."""
    from qaudit.cli import main

    def boom(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(where, boom)
    for key in [k for k in __import__("os").environ if k.startswith("QAUDIT_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    outputs = {"--junit": "j.xml", "--json": "r.json", "--markdown": "s.md", "--html": "r.html"}
    rc = main(
        [
            "report",
            str(saved),
            "--min-layer-sqnr",
            "99",
            *(x for flag, name in outputs.items() for x in (flag, str(tmp_path / name))),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "internal error" in err and "simulated bug" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary file


def test_regating_imports_no_onnxruntime(saved, cli_env, tmp_path):
    """Gating, JUnit and Markdown work on a saved report where ONNX Runtime is not even installed."""
    import subprocess
    import sys

    from ..conftest import REPO

    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None  # any import of it now fails\n"
        "from qaudit.cli import main\n"
        "rc = main(['report', sys.argv[1], '--quiet', '--min-layer-sqnr', '32', '--baseline', sys.argv[1],\n"
        "           '--junit', sys.argv[2] + '/j.xml', '--markdown', sys.argv[2] + '/s.md'])\n"
        "sys.exit(rc)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(saved), str(tmp_path)],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, p.stderr  # the gate fails (31.0 dB layers); nothing crashed
    assert p.stdout.startswith("FAIL: ")
    assert (tmp_path / "j.xml").is_file() and (tmp_path / "s.md").is_file()


def test_no_gates_still_writes_valid_junit_and_markdown(run_cli, saved, tmp_path):
    p = run_cli("report", saved, "--quiet", "--junit", tmp_path / "j.xml", "--markdown", tmp_path / "s.md")
    assert p.returncode == 0 and p.stdout == "" and p.stderr == ""  # --quiet with no gate: nothing to say
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert_junit_consistent(root)
    assert root.get("tests") == "0"
    assert {p.get("name"): p.get("value") for p in root.iter("property")}["gates"] == "none configured"
    assert (tmp_path / "s.md").read_text(encoding="utf-8").startswith("## qaudit: no gates configured")


def test_class_metric_gate_on_a_regression_only_report_is_exit_2(run_cli, sample_report_json, tmp_path):
    """--max-qce on a model whose outputs are all regression outputs checks nothing: a configuration error."""
    regression = json.loads(json.dumps(sample_report_json))
    for o in regression["outputs"]:
        o.update(kind="regression", qce=None, qkl=None, top1_agreement=None)
        o.update(acc_fp32=None, acc_int8=None, acc_drop_pct=None)
    f = tmp_path / "regression.json"
    f.write_text(json.dumps(regression), encoding="utf-8")
    junit = tmp_path / "out.xml"
    p = run_cli("report", f, "--max-qce", "0.1", "--junit", junit)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("qaudit: error: gate max_qce (--max-qce) checks qce")
    assert "logits (regression)" in p.stderr and not junit.exists()
    # a gate on a metric every output has is fine
    p = run_cli("report", f, "--quiet", "--max-output-rel-error", "0.5", "--junit", junit)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [n for (_, n) in cases(ET.parse(junit).getroot())] == ["output logits"]
