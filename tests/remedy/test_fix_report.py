"""The ``fix`` section of ``qaudit fix --json``: the FixResult's numbers, written, read back and
re-rendered the same, and a trail entry measured again independently (ORT's quantize_static, numpy SQNR)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from qaudit.cli.main import main
from qaudit.remedy import search as S
from qaudit.report import load_report
from qaudit.runs import MultiReport, runs_to_json

from . import planted_fix as planted


def _run(*argv):
    return main([str(a) for a in argv])


def _sqnr(o: dict) -> float | None:
    """A JSON output row's SQNR: null with a zero QMSE is +inf."""
    return math.inf if o["sqnr_db"] is None and o["qmse"] == 0.0 else o["sqnr_db"]


def _change(c) -> dict:
    return {"kind": c.kind, "node": c.node, "tensor": c.tensor, "detail": c.detail}


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """``qaudit fix`` on the planted float-only model (huge's Gemm must stay in float), every output
    written; the FixResult and the before/after MultiReport the CLI rendered, captured on the way."""
    tmp = tmp_path_factory.mktemp("fixjson")
    model = planted.float_only_model()
    path = tmp / "float_only.onnx"
    onnx.save(model, path)
    calib = planted.write_data(model, tmp / "calib", 64, 1)
    ev = planted.write_data(model, tmp / "eval", 48, 2)
    out = tmp / "out"
    out.mkdir()
    captured: dict = {}
    mp = pytest.MonkeyPatch()
    real_fix = S.fix

    def spy_fix(*a, **kw):
        captured["result"] = real_fix(*a, **kw)
        return captured["result"]

    import qaudit.renderers

    real_render = qaudit.renderers.render

    def spy_render(subject, fmt, **kw):
        if isinstance(subject, MultiReport):
            captured["multi"] = subject
        return real_render(subject, fmt, **kw)

    mp.setattr(S, "fix", spy_fix)
    mp.setattr(qaudit.renderers, "render", spy_render)
    try:
        rc = _run(
            "fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--recipe", out / "recipe.toml",
            "--ort-args", out / "ort.json", "--prepared-model", out / "prepared.onnx", "--output-model",
            out / "fixed.onnx", "--json", out / "fix.json", "--html", out / "fix.html", "--no-progress",
        )  # fmt: skip
    finally:
        mp.undo()
    assert rc == 0
    return {
        "path": path,
        "eval": ev,
        "out": out,
        "result": captured["result"],
        "multi": captured["multi"],
        "doc": json.loads((out / "fix.json").read_text()),
    }


def test_the_fix_section_holds_the_fix_results_numbers(fixed):
    result, doc = fixed["result"], fixed["doc"]
    s, fix = result.search, doc["fix"]
    assert doc["format"] == {"name": "qaudit-report", "version": 4}  # the multi-run document, new keys only
    assert [r["name"] for r in doc["runs"]] == ["before", "after"]
    # the planted remedy, as the search found it
    assert fix["changes"] == [
        {**_change(c), "tier": "float", "description": "node huge in float", "rank": fix["changes"][0]["rank"],
         "cause": None}
        for c in s.changes
    ]  # fmt: skip
    assert [_change(c) for c in s.changes] == [{"kind": "float_node", "node": "huge", "tensor": None, "detail": ""}]
    assert fix["cost"] == {"float_nodes": 1, "tensors_16bit": 0, "per_channel": 0, "ranges": 0}
    assert fix["met"] is s.met is True
    assert fix["target"] == {"min_output_sqnr": {"default": 25.0, "overrides": {}}}
    assert fix["alternative_method"] == result.alternative == "minmax"
    # every candidate, in rank order, with its evidence
    assert len(fix["candidates"]) == len(s.candidates) > 1
    for i, (d, c) in enumerate(zip(fix["candidates"], s.candidates, strict=True), 1):
        assert d["rank"] == i
        assert {k: d[k] for k in ("kind", "node", "tensor", "detail")} == _change(c.change)
        assert d["reason"] == c.why
        assert d["score"] == (c.score if math.isfinite(c.score) else None)
        assert d["chosen"] == (c.change in s.changes)
    rank = fix["changes"][0]["rank"]
    assert s.candidates[rank - 1].change == s.changes[0]
    # the trail: every measurement in order, its changes, output metrics, verdict and shortfall
    assert fix["measurements"] == s.n_measured == len(fix["trail"]) == len(s.trail)
    for i, (d, m) in enumerate(zip(fix["trail"], s.trail, strict=True)):
        assert d["index"] == i
        assert d["changes"] == [_change(c) for c in m.changes]
        assert [o["name"] for o in d["outputs"]] == [o.name for o in m.outputs]
        assert [_sqnr(o) for o in d["outputs"]] == [o.sqnr_db for o in m.outputs]
        assert [o["max_abs_error"] for o in d["outputs"]] == [o.max_abs_error for o in m.outputs]
        assert d["passed"] is m.passed
        assert d["shortfall"] == (m.shortfall if math.isfinite(m.shortfall) else None)
        assert d["seconds"] == m.seconds
        assert [(c["subject"], c["status"]) for c in d["checks"]] == [(c.subject, c.status) for c in m.gates.checks]
    assert fix["trail"][0]["changes"] == [] and fix["trail"][0]["reference"] is None
    # baseline and final: the search's first and chosen measurements
    for key, m in (("baseline", s.baseline), ("final", s.measured)):
        assert [_sqnr(o) for o in fix[key]["outputs"]] == [o.sqnr_db for o in m.outputs]
        assert fix[key]["passed"] is m.passed
        assert fix["trail"][fix[key]["index"]]["changes"] == [_change(c) for c in m.changes]
    assert _sqnr(fix["final"]["outputs"][0]) == math.inf  # y1: huge in float, nothing quantized on its path
    # the measured sensitivity of the chosen change: the pruning's set without it fails
    (huge,) = [c for c in fix["candidates"] if c["chosen"]]
    sens = huge["sensitivity"]
    without, ref = fix["trail"][sens["trail"]], fix["trail"][sens["reference"]]
    assert sens["removed_with"] == 0 and sens["passed_without"] is False is without["passed"]
    assert ref["passed"] and ref["changes"] == [_change(c) for c in s.changes]  # the final set
    assert fix["minimal"] is s.minimal is True and fix["forced"] == []
    assert {json.dumps(c, sort_keys=True) for c in ref["changes"]} - {
        json.dumps(c, sort_keys=True) for c in without["changes"]
    } == {json.dumps(_change(s.changes[0]), sort_keys=True)}
    # budget, pruning, time, refused changes, files (names only: the paths are the test's)
    assert fix["budget"] == S.DEFAULT_BUDGET and fix["pruned"] is s.pruned is True
    # the caps: the default cost cap, 5 audits before (at least a minute); this search ended on its own
    assert fix["max_cost"] == S.DEFAULT_MAX_COST == s.max_cost and fix["stopped_by"] is s.stopped_by is None
    assert fix["cost_limit_seconds"] == s.cost_limit == max(5 * result.seconds["before"], S.MIN_COST_SECONDS)
    assert fix["seconds"] == result.seconds
    assert fix["refused"] == [] and fix["limits"] == []
    from pathlib import Path

    names = {k: Path(v).name for k, v in fix["files"].items()}
    assert names == {
        "output_model": "fixed.onnx",
        "recipe": "recipe.toml",
        "ort_args": "ort.json",
        "prepared_model": "prepared.onnx",
    }
    # the verifying audit's gates: the after run's
    ver = fix["verification"]
    assert ver == {"run": "after", "passed": True, "checks": 2, "failed": 0, "failures": []}
    assert doc["runs"][1]["gates"]["passed"] is result.after.gates.passed is True


def _measure_by_hand(fixed, entry: dict) -> dict:
    """``entry``'s change set (nodes in float) quantized by bare quantize_static on the prepared model
    from the ORT arguments' calibration cache, run on the evaluation data, SQNR per output in numpy
    against the fp32 model: ``{output: (sqnr_db, max_abs_error)}``."""
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_static

    from qaudit.remedy.recipe import decode_ort_arguments

    out, tmp = fixed["out"], fixed["out"].parent
    doc = json.loads((out / "ort.json").read_text())
    kinds = {c["kind"] for c in entry["changes"]}
    assert kinds <= {"float_node"}, "this oracle rebuilds nodes in float only"
    cache = tmp / "cache.json"
    cache.write_text(json.dumps(doc["calibration_cache"]))
    kw = decode_ort_arguments(doc)
    chosen = {c.node for c in fixed["result"].search.changes if c.kind == "float_node"}
    also = [n for n in kw["nodes_to_exclude"] if n not in chosen]  # qaudit's own exclusions, if any
    kw["nodes_to_exclude"] = also + [c["node"] for c in entry["changes"]]
    q = tmp / f"by_hand_{entry['index']}.onnx"
    quantize_static(str(out / "prepared.onnx"), str(q), None, calibration_cache_path=str(cache), **kw)
    feeds = dict(np.load(fixed["eval"] / "data.npz"))
    ref = ort.InferenceSession(str(fixed["path"])).run(None, feeds)
    got = ort.InferenceSession(str(q)).run(None, feeds)
    names = [o.name for o in onnx.load(fixed["path"]).graph.output]
    res = {}
    for name, x, y in zip(names, ref, got, strict=True):
        x, e = x.astype(np.float64), x.astype(np.float64) - y.astype(np.float64)
        den = float(np.sum(e * e))
        res[name] = (math.inf if den == 0 else 10 * math.log10(float(np.sum(x * x)) / den), float(np.abs(e).max()))
    return res


def test_the_trails_metrics_equal_an_independent_measurement(fixed):
    fix = fixed["doc"]["fix"]
    for entry in (fix["trail"][0], fix["trail"][fix["final"]["index"]]):  # no change, and huge in float
        by_hand = _measure_by_hand(fixed, entry)
        for o in entry["outputs"]:
            sqnr, err = by_hand[o["name"]]
            if math.isinf(sqnr):
                assert _sqnr(o) == math.inf and o["max_abs_error"] == 0.0
            else:
                assert _sqnr(o) == pytest.approx(sqnr, abs=1e-4)
                assert o["max_abs_error"] == pytest.approx(err, rel=1e-5)
    assert by_hand["y1"][0] == math.inf and fix["trail"][0]["outputs"][0]["sqnr_db"] < 0  # the planted problem


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "html", "json"])
def test_a_fix_report_read_back_renders_the_same_text(fixed, fmt):
    from qaudit.renderers import render

    again = load_report(fixed["out"] / "fix.json")
    assert isinstance(again, MultiReport) and again.fix is not None
    assert render(again, fmt) == render(fixed["multi"], fmt)
    if fmt == "json":
        assert render(again, "json") == (fixed["out"] / "fix.json").read_text()


def test_the_fix_section_is_rendered_in_every_format(fixed):
    from qaudit.renderers import render

    multi = fixed["multi"]
    term = render(multi, "terminal", width=200)
    md = render(multi, "markdown")
    html = render(multi, "html")
    n = fixed["doc"]["fix"]["measurements"]
    for text in (term, md, html):
        assert "Fix: the changes" in text and "node huge in float" in text
        assert "Fix: model outputs, before → after" in text and "-3.0 → ∞" in text
        assert "Fix: every change set measured, in order" in text and "no change (baseline)" in text
        assert (
            f"{n} measurements of at most {S.DEFAULT_BUDGET}, within {S.DEFAULT_MAX_COST:g}x the audit before "
            f"({fixed['doc']['fix']['cost_limit_seconds']:.1f} s); pruning complete: removing any one change fails"
            in text
        )
        assert "fix: target met: 1 node(s) in float, 0 tensor(s) at 16 bits, 0 free change(s)" in text
    assert "--recipe " in term and "recipe.toml" in term
    assert '<h2 id="fix">Fix</h2>' in html and '<a href="#fix">Fix</a>' in html
    assert md.startswith("## qaudit ✅ fix: target met")


def test_qaudit_report_re_renders_and_re_gates_a_fix_report(fixed, tmp_path, capsys):
    src = fixed["out"] / "fix.json"
    # the saved verdict: the after run passes (the before run fails), so exit 0 as qaudit fix did
    assert _run("report", src, "--markdown", tmp_path / "fix.md") == 0
    assert "### Fix" in (tmp_path / "fix.md").read_text()
    capsys.readouterr()
    # re-gated: y2 is 35.9 dB after the fix, so a 37 dB target is not met: exit 1, the verification says why
    assert _run("report", src, "--min-output-sqnr", "37", "--json", tmp_path / "again.json") == 1
    text = capsys.readouterr().out
    assert "fix: target NOT met" in text and "limited by: min_output_sqnr y2: sqnr_db 35.92 < 37" in text
    ver = json.loads((tmp_path / "again.json").read_text())["fix"]["verification"]
    assert ver["passed"] is False and [c["subject"] for c in ver["failures"]] == ["y2"]
    assert _run("report", src, "--min-output-sqnr", "30") == 0


def test_a_multi_run_report_without_the_fix_key_still_renders(fixed, tmp_path, capsys):
    from qaudit.renderers import render

    doc = dict(fixed["doc"])
    del doc["fix"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    again = load_report(old)
    assert again.fix is None
    for fmt in ("terminal", "markdown", "html"):
        text = render(again, fmt)
        assert "Fix: the changes" not in text and "after" in text
    assert "fix" not in json.loads(runs_to_json(again))
    # without the fix section the document is an ordinary multi-run report: every run must pass
    assert _run("report", old) == 1
    assert "gates: FAIL (runs failing: before; passing: after)" in capsys.readouterr().out


def test_a_malformed_fix_section_is_exit_2_naming_the_field(fixed, tmp_path, capsys):
    doc = json.loads(json.dumps(fixed["doc"]))
    doc["fix"]["trail"][1]["passed"] = "yes"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert _run("report", bad) == 2
    assert "fix.trail[1].passed has the wrong type" in capsys.readouterr().err


def test_refused_changes_and_a_pruning_the_budget_stopped_are_in_the_section(fixed):
    """A search result with ``refused`` (change, ORT's message) pairs and ``pruned`` False (the budget
    stopped the pruning): both in the section and in every rendering."""
    import dataclasses
    from types import SimpleNamespace

    from qaudit.gate import GateConfig
    from qaudit.remedy.fixreport import section
    from qaudit.remedy.sensitivity import Change
    from qaudit.renderers import render

    r = fixed["result"]
    names = ("changes", "measured", "baseline", "met", "candidates", "trail", "limits", "n_measured")
    refused = Change("tensor_16bit", "huge", "z", "uint16")
    search = SimpleNamespace(
        **{k: getattr(r.search, k) for k in names}, pruned=False, refused=[(refused, "Only an existing tensor")],
        stopped_by="max_measurements", max_cost=None,
    )  # fmt: skip
    sec = section(dataclasses.replace(r, search=search), GateConfig({"min_output_sqnr": 25.0}), budget=7)
    assert sec["refused"] == [
        {"kind": "tensor_16bit", "node": "huge", "tensor": "z", "detail": "uint16",
         "description": "tensor z at uint16", "message": "Only an existing tensor"}
    ]  # fmt: skip
    assert sec["pruned"] is False and sec["budget"] == 7
    assert sec["stopped_by"] == "max_measurements" and sec["max_cost"] is None
    multi = dataclasses.replace(fixed["multi"], fix=sec)
    n, t = sec["measurements"], sec["seconds"]["search"]
    for fmt in ("terminal", "markdown", "html"):
        text = render(multi, fmt, width=400) if fmt == "terminal" else render(multi, fmt)
        assert (
            f"{n} measurements of at most 7; the budget (--max-measurements 7: {n} sets measured in {t:.1f} s) "
            "stopped the pruning: the set passes but may not be minimal (a larger --max-measurements prunes it further)"
            in text
        )
        assert "1 change(s) refused by ONNX Runtime, e.g. tensor z at uint16: Only an existing tensor" in text
    assert load_report_text(runs_to_json(multi)).fix == sec
    # the cost cap stopped it instead: what lifts that cap is --minimal, not a larger count
    capped = dataclasses.replace(
        r, search=SimpleNamespace(**{**vars(search), "stopped_by": "max_cost", "max_cost": 5.0})
    )
    sec = section(capped, GateConfig({"min_output_sqnr": 25.0}), budget=7)
    text = render(dataclasses.replace(fixed["multi"], fix=sec), "terminal", width=400)
    assert (
        f"the cost cap (--max-cost 5: {n} sets measured in {t:.1f} s) stopped the pruning: the set passes but may "
        "not be minimal (--minimal prunes it until 1-minimal)" in text
    )


def test_a_fix_report_written_before_the_caps_reads_and_renders(fixed, tmp_path, capsys):
    """A report without ``max_cost``, ``cost_limit_seconds`` and ``stopped_by`` (written before the cost cap):
    read back with them absent, and a pruning that stopped is the budget's, as it was then."""
    doc = json.loads(json.dumps(fixed["doc"]))
    for key in ("max_cost", "cost_limit_seconds", "stopped_by"):
        del doc["fix"][key]
    doc["fix"]["pruned"] = doc["fix"]["minimal"] = False
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    assert "stopped_by" not in load_report(old).fix
    assert _run("report", old) == 0
    n = doc["fix"]["measurements"]
    assert f"{n} measurements of at most 32; the budget (--max-measurements 32: {n} sets measured in " in (
        capsys.readouterr().out
    )
    doc["fix"]["stopped_by"] = "time"
    old.write_text(json.dumps(doc))
    assert _run("report", old) == 2
    assert "fix.stopped_by must be null or one of max_measurements, max_cost" in capsys.readouterr().err


def load_report_text(text: str):
    from qaudit.runs import read

    return read(json.loads(text), strict=True)


def test_a_fix_that_misses_its_target_says_what_limits_it(tmp_path, capsys):
    model = planted.float_only_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    calib = planted.write_data(model, tmp_path / "calib", 64, 1)
    ev = planted.write_data(model, tmp_path / "eval", 48, 2)
    rc = _run("fix", path, "--calib", calib, "--eval", ev, "--min-output-sqnr", "25", "--max-layers", "1",
              "--json", tmp_path / "fix.json", "--no-progress")  # fmt: skip
    assert rc == 1
    text = capsys.readouterr().out
    fix = json.loads((tmp_path / "fix.json").read_text())["fix"]
    assert fix["met"] is False and fix["limits"] and fix["limits"][0].startswith("min_output_sqnr on y1")
    ver = fix["verification"]
    assert ver["passed"] is False and [c["subject"] for c in ver["failures"]] == ["y1"]
    assert "fix: target NOT met" in text and "limited by: min_output_sqnr y1: sqnr_db " in text
    assert _run("report", tmp_path / "fix.json", "--quiet") == 1
