"""The pure gate evaluation (qaudit.gate) at its edges, on reports built in code.

No model runs here: every report is a handful of hand-made rows, so each test
states exactly which number is compared with which threshold.
"""

from __future__ import annotations

import json
import math

import pytest

from qaudit.errors import ConfigError
from qaudit.gate import GATES, GateConfig, Threshold, change, compare, evaluate
from qaudit.renderers.checks import sentence as describe
from qaudit.report import FORMAT_VERSION, LayerRow, OutputRow, Report, from_json, to_dict, to_json

INF, NAN = math.inf, math.nan


def layer(name, sqnr=40.0, qmse=1e-4, clip=0.0, w_sqnr=None, quantized=True, index=0, **kw):
    """A layer row; ``quantized=False`` makes a row without a quantized activation."""
    act = dict(tensor=f"{name}_out", quant_tensor=f"{name}_q", sqnr_db=sqnr, qmse=qmse, clip_fraction=clip)
    if not quantized:
        act = dict(tensor=None, quant_tensor=None)
    weights = (
        dict(w_range=1.0, w_sqnr_db=w_sqnr, w_qmse=1e-6) if w_sqnr is not None or kw.pop("weighted", False) else {}
    )
    return LayerRow(index=index, name=name, op_type=kw.pop("op_type", "Conv"), **act, **weights, **kw)


def output(name="logits", **kw):
    base = dict(
        qmse=1e-3,
        sqnr_db=35.0,
        qce=0.05,
        qkl=0.001,
        top1_agreement=0.99,
        acc_fp32=0.98,
        acc_int8=0.975,
        acc_drop_pct=0.5102,
    )
    base.update(kw)
    return OutputRow(name=name, **base)


def report(layers=(), outputs=(), settings=None, data=None, sha="aaa") -> Report:
    layers = tuple(r if r.index else LayerRow(**{**r.__dict__, "index": i}) for i, r in enumerate(layers))
    return Report(
        meta={"qaudit": "0.1.0", "created": "2026-01-01T00:00:00Z", "seconds": 1.0},
        model={"path": "m.onnx", "sha256": sha},
        settings=settings or {"percentile": 99.999, "format": "qdq"},
        data=data or {"n_calib": 128, "n_eval": 400, "eval_is_calib": False, "labels": "l.npy"},
        folding={},
        layers=tuple(layers),
        outputs=tuple(outputs),
        unmatched=(),
    )


def only(result, gate=None):
    checks = [c for c in result.checks if gate is None or c.gate == gate]
    assert len(checks) == 1, checks
    return checks[0]


# ------------------------------------------------------------ comparisons


@pytest.mark.parametrize(
    "measured, comparison, threshold, expected",
    [
        (25.0, ">=", 25.0, True),  # equal to the threshold passes
        (25.0, "<=", 25.0, True),
        (math.nextafter(25.0, 0), ">=", 25.0, False),  # one ulp below fails
        (math.nextafter(25.0, 99), "<=", 25.0, False),
        (INF, ">=", 1e300, True),  # no error at all passes any minimum
        (INF, "<=", 1e300, False),
        (-INF, ">=", -1e300, False),
        (NAN, ">=", 0.0, None),  # undefined: missing, not a silent pass or fail
        (None, "<=", 0.0, None),
    ],
)
def test_compare_edges(measured, comparison, threshold, expected):
    assert compare(measured, comparison, threshold) is expected


def test_change_in_the_bad_direction():
    assert change(-1, current=30.0, baseline=32.5) == 2.5  # an SQNR drop
    assert change(-1, current=33.0, baseline=32.5) == -0.5  # an improvement is negative
    assert change(+1, current=0.07, baseline=0.05) == pytest.approx(0.02)  # a QCE increase
    assert change(-1, INF, INF) == 0.0  # both exact: no change, not NaN
    assert change(-1, 40.0, INF) == INF  # was exact, now has error
    assert change(-1, INF, 40.0) == -INF


# ------------------------------------------------------- threshold gates


def test_equal_to_threshold_passes_and_below_fails():
    r = report([layer("a", sqnr=25.0), layer("b", sqnr=24.999)])
    res = evaluate(r, GateConfig({"min_layer_sqnr": 25}))
    assert [(c.subject, c.status, c.measured, c.threshold, c.comparison) for c in res.checks] == [
        ("a", "pass", 25.0, 25.0, ">="),
        ("b", "fail", 24.999, 25.0, ">="),
    ]
    assert not res.passed
    assert res.failing("layer") == ["b"]


def test_infinite_sqnr_passes_any_minimum_and_says_so():
    res = evaluate(report([layer("exact", sqnr=INF, qmse=0.0)]), GateConfig({"min_layer_sqnr": 1e6}))
    c = only(res)
    assert c.status == "pass" and c.measured == INF and "+inf" in c.reason


def test_minus_inf_sqnr_fails():
    c = only(evaluate(report([layer("dead", sqnr=-INF, qmse=1.0)]), GateConfig({"min_layer_sqnr": -100})))
    assert c.status == "fail"


def test_nan_sqnr_is_missing_and_fails_unless_skip_missing():
    r = report([layer("zeros", sqnr=NAN, qmse=0.0)])
    c = only(evaluate(r, GateConfig({"min_layer_sqnr": 20})))
    assert c.status == "fail" and c.measured is None
    assert "sqnr_db is missing" in c.reason and "NaN" in c.reason
    c = only(evaluate(r, GateConfig({"min_layer_sqnr": 20}, skip_missing=True)))
    assert c.status == "skip" and c.passed


def test_missing_output_metric_fails_with_the_reason():
    """QCE of a class output without a class axis at run time is null: a configured QCE gate fails and says why."""
    missing = dict(qce=None, qkl=None, top1_agreement=None, acc_fp32=None, acc_int8=None, acc_drop_pct=None)
    r = report(outputs=[output("scores", kind="class", **missing)])
    res = evaluate(r, GateConfig({"max_qce": 0.1, "max_acc_drop_pct": 1.0}))
    qce, acc = res.checks
    assert (qce.status, qce.subject, qce.measured) == ("fail", "scores", None)
    assert "class axis" in qce.reason
    assert acc.status == "fail" and "--labels" in acc.reason
    res = evaluate(r, GateConfig({"max_qce": 0.1, "max_acc_drop_pct": 1.0}, skip_missing=True))
    assert res.passed and [c.status for c in res.checks] == ["skip", "skip"]


REGRESSION = dict(kind="regression", qce=None, qkl=None, top1_agreement=None, acc_fp32=None, acc_int8=None)


@pytest.mark.parametrize(
    "gate", ["max_qce", "max_qkl", "min_top1_agreement", "min_acc_int8", "max_acc_drop_pct", "max_qce_increase"]
)
def test_class_metric_gate_without_a_class_output_is_a_config_error(gate):
    """Only regression outputs: a gate on a class metric could check nothing (it used to pass or fail on QCE = ln K)."""
    r = report(outputs=[output("boxes", **REGRESSION, acc_drop_pct=None), output("emb", **REGRESSION)])
    with pytest.raises(ConfigError) as e:
        evaluate(r, GateConfig({gate: 0.5}), baseline=r)
    msg = str(e.value)
    assert "\n" not in msg and f"gate {gate}" in msg and "boxes (regression), emb (regression)" in msg
    assert "--class-outputs" in msg


def test_class_metric_gates_check_class_outputs_only():
    r = report(outputs=[output("boxes", **REGRESSION, acc_drop_pct=None), output("prob", kind="class")])
    res = evaluate(r, GateConfig({"max_qce": 0.1, "min_top1_agreement": 0.9, "max_output_rel_error": 0.5}))
    assert [(c.gate, c.subject) for c in res.checks] == [
        ("max_output_rel_error", "boxes"),
        ("max_output_rel_error", "prob"),
        ("max_qce", "prob"),
        ("min_top1_agreement", "prob"),
    ]


def test_class_metric_glob_on_a_regression_output_checks_nothing():
    r = report(outputs=[output("boxes", **REGRESSION, acc_drop_pct=None), output("prob", kind="class")])
    c = only(evaluate(r, GateConfig({"max_qce": Threshold(None, {"box*": 0.1})})))
    assert c.status == "fail" and c.reason == "nothing checked: no class output matches 'box*'"


def test_regression_output_gates():
    r = report(outputs=[output("boxes", **REGRESSION, max_abs_error=0.75, rel_error=0.02)])
    res = evaluate(r, GateConfig({"max_output_abs_error": 0.5, "max_output_rel_error": 0.05}))
    got = {c.gate: (c.status, c.measured) for c in res.checks}
    assert got == {"max_output_abs_error": ("fail", 0.75), "max_output_rel_error": ("pass", 0.02)}


def test_a_model_whose_accuracy_rose_passes_the_drop_gates():
    """acc_drop_pct is signed: -25 % (quantized scores better) passes even a 0 % maximum."""
    better = output("logits", kind="class", acc_fp32=0.8, acc_int8=1.0, acc_drop_pct=-25.0)
    res = evaluate(report(outputs=[better]), GateConfig({"max_acc_drop_pct": 0.0}))
    assert only(res).status == "pass" and only(res).measured == -25.0
    # against a baseline that improved more: still no drop, so no increase of the drop
    base = report(outputs=[output("logits", kind="class", acc_drop_pct=-40.0)])
    cfg = GateConfig({"max_acc_drop_increase": 0.0, "max_output_sqnr_drop": None, "max_layer_sqnr_drop": None})
    c = only(evaluate(report(outputs=[better]), cfg, base))
    assert (c.status, c.measured, c.value, c.baseline) == ("pass", 0.0, -25.0, -40.0)
    # a real drop is measured from zero when the baseline improved
    worse = output("logits", kind="class", acc_drop_pct=1.5)
    c = only(evaluate(report(outputs=[worse]), GateConfig({**cfg.thresholds, "max_acc_drop_increase": 1.0}), base))
    assert (c.status, c.measured) == ("fail", 1.5)


def test_accuracy_gates_check_the_labelled_output():
    unlabelled = dict(acc_fp32=None, acc_int8=None, acc_drop_pct=None)
    r = report(outputs=[output("logits"), output("aux", **unlabelled)])
    res = evaluate(r, GateConfig({"max_acc_drop_pct": 1.0, "min_acc_int8": 0.9, "max_qce": 1.0}))
    assert [(c.gate, c.subject, c.status) for c in res.checks] == [
        ("max_qce", "logits", "pass"),
        ("max_qce", "aux", "pass"),
        ("min_acc_int8", "logits", "pass"),
        ("max_acc_drop_pct", "logits", "pass"),
    ]
    # no labels at all: every output is checked and fails, saying what is missing
    r = report(outputs=[output("logits", **unlabelled), output("aux", **unlabelled)])
    res = evaluate(r, GateConfig({"max_acc_drop_pct": 1.0}))
    assert [(c.subject, c.status) for c in res.checks] == [("logits", "fail"), ("aux", "fail")]
    assert all("--labels" in c.reason for c in res.checks)


def test_layer_gates_apply_only_where_the_metric_exists():
    r = report(
        [
            layer("input", op_type="Input"),
            layer("/conv", w_sqnr=45.0),
            layer("/excluded", quantized=False, weighted=True),  # left in float: no activation twin
            layer("/pool", op_type="MaxPool"),
        ]
    )
    res = evaluate(r, GateConfig({"min_layer_sqnr": 30, "min_weight_sqnr": 40}))
    by_gate = {}
    for c in res.checks:
        by_gate.setdefault(c.gate, []).append(c.subject)
    assert by_gate["min_layer_sqnr"] == ["input", "/conv", "/pool"]
    # weight gates: weighted rows; /excluded has weights but no quantized weight -> missing -> fails
    assert by_gate["min_weight_sqnr"] == ["/conv", "/excluded"]
    w = [c for c in res.checks if c.subject == "/excluded"][0]
    assert w.status == "fail" and "no quantized weight" in w.reason


def test_a_gate_that_checks_nothing_fails():
    r = report([layer("/conv", quantized=False, weighted=True)])
    c = only(evaluate(r, GateConfig({"min_layer_sqnr": 30})))
    assert c.status == "fail" and c.subject == "" and "nothing checked" in c.reason
    # a typo in the only glob of a gate cannot pass silently either
    c = only(evaluate(report([layer("/fc2/Gemm")]), GateConfig({"min_layer_sqnr": Threshold(None, {"/fc3/*": 20})})))
    assert c.status == "fail" and "/fc3/*" in c.reason
    c = only(evaluate(r, GateConfig({"min_layer_sqnr": 30}, skip_missing=True)))
    assert c.status == "skip"


def test_no_gate_configured():
    cfg = GateConfig()
    assert not cfg.configured()
    assert cfg.configured(with_baseline=True)  # the regression gates have defaults
    res = evaluate(report([layer("a")], [output()]), cfg)
    assert res.checks == () and res.passed


# ------------------------------------------------------------- globs


def test_most_specific_glob_wins():
    t = Threshold(25.0, {"/fc*": 22.0, "/fc2/*": 20.0, "/fc2/Gemm": 18.0, "*Gemm": 30.0, "/fc2/Gem?": 19.0})
    assert t.resolve("/conv/Conv") == (25.0, None)
    assert t.resolve("/fc1/Gemm") == (30.0, "*Gemm")  # 5 characters beat '/fc*' (4)
    # the exact name beats every glob, also '/fc2/Gem?' of the same length
    assert t.resolve("/fc2/Gemm") == (18.0, "/fc2/Gemm")
    assert t.resolve("/fc2/MatMul") == (20.0, "/fc2/*")
    # equal length: fewer wildcards wins ...
    t2 = Threshold(None, {"/fc2/*": 1.0, "/f?2/G": 2.0, "/fc2/G": 3.0})
    assert t2.resolve("/fc2/G") == (3.0, "/fc2/G")
    t3 = Threshold(None, {"/f??/*": 1.0, "/fc?/*": 2.0})
    assert t3.resolve("/fc2/x") == (2.0, "/fc?/*")
    # ... then the glob that sorts first
    t4 = Threshold(None, {"/fc?/Gemm": 1.0, "/fc2/G*mm": 2.0, "/fc2/Ge*m": 3.0})
    assert _specificity_order(t4, "/fc2/Gemm") == ["/fc2/G*mm", "/fc2/Ge*m", "/fc?/Gemm"]
    assert t4.resolve("/fc2/Gemm") == (2.0, "/fc2/G*mm")


def _specificity_order(t, name):
    from qaudit.gate import _specificity

    return sorted((p for p, _ in t.overrides), key=lambda p: _specificity(p, name))


def test_longest_glob_wins_and_ties_are_deterministic():
    t = Threshold(25.0, {"*": 10.0, "/fc*": 22.0, "/fc2/*": 20.0})
    assert t.resolve("/fc2/Gemm") == (20.0, "/fc2/*")
    assert t.resolve("/fc1/Gemm") == (22.0, "/fc*")
    assert t.resolve("input") == (10.0, "*")
    # same length, same wildcard count: the one that sorts first, whatever the insertion order
    a = Threshold(None, {"/b*": 1.0, "/a*": 2.0})
    b = Threshold(None, {"/a*": 2.0, "/b*": 1.0})
    assert a == b
    c = Threshold(None, {"*/x": 1.0, "/*x": 2.0})
    assert c.resolve("/x") == Threshold(None, {"/*x": 2.0, "*/x": 1.0}).resolve("/x")


def test_globs_match_slashes_and_are_case_sensitive():
    t = Threshold(25.0, {"/block*": 20.0})
    assert t.resolve("/block1/conv/Conv") == (20.0, "/block*")  # '*' crosses '/'
    assert t.resolve("/Block1/conv/Conv") == (25.0, None)


def test_override_off_exempts_and_is_reported_as_skipped():
    r = report([layer("input", clip=0.09), layer("/conv", clip=0.0)])
    res = evaluate(r, GateConfig({"max_clip_fraction": Threshold(0.01, {"input": None})}))
    assert res.passed
    skip, ok = res.checks
    assert (skip.subject, skip.status, skip.pattern, skip.threshold) == ("input", "skip", "input", None)
    assert (ok.subject, ok.status, ok.pattern) == ("/conv", "pass", None)


def test_default_off_gates_only_the_matching_layers():
    r = report([layer("/conv", sqnr=10.0), layer("/fc2/Gemm", sqnr=21.0)])
    res = evaluate(r, GateConfig({"min_layer_sqnr": Threshold(None, {"/fc2/*": 20.0})}))
    c = only(res)
    assert (c.subject, c.status, c.threshold, c.pattern) == ("/fc2/Gemm", "pass", 20.0, "/fc2/*")


def test_pattern_matching_nothing_is_noted():
    r = report([layer("/conv")])
    res = evaluate(r, GateConfig({"min_layer_sqnr": Threshold(20.0, {"/fc3/*": 10.0})}))
    assert res.passed
    assert res.notes == ("min_layer_sqnr: '/fc3/*' matches no layer of this report",)


def test_per_output_overrides():
    r = report(outputs=[output("logits", qce=0.15), output("aux", qce=0.15)])
    res = evaluate(r, GateConfig({"max_qce": Threshold(0.1, {"aux": 0.2})}))
    assert [(c.subject, c.status, c.threshold) for c in res.checks] == [("logits", "fail", 0.1), ("aux", "pass", 0.2)]
    assert res.failing("output") == ["logits"]


# ------------------------------------------------------------- baseline


def test_regression_gates_run_only_with_a_baseline():
    r = report([layer("a", sqnr=20.0)])
    assert evaluate(r, GateConfig()).checks == ()
    res = evaluate(r, GateConfig(), baseline=report([layer("a", sqnr=30.0)]), baseline_source="prev.json")
    c = only(res, "max_layer_sqnr_drop")
    assert (c.status, c.measured, c.threshold, c.value, c.baseline) == ("fail", 10.0, 1.0, 20.0, 30.0)
    assert res.baseline["path"] == "prev.json" and res.baseline["model_sha256"] == "aaa"


def test_layer_sqnr_drop_at_the_tolerance_passes():
    base = report([layer("a", sqnr=31.5), layer("b", sqnr=31.5), layer("c", sqnr=31.5)])
    cur = report([layer("a", sqnr=30.5), layer("b", sqnr=30.0), layer("c", sqnr=35.0)])
    res = evaluate(cur, GateConfig({"max_layer_sqnr_drop": 1.0, "max_output_sqnr_drop": None}), base)
    assert [(c.subject, c.status, c.measured) for c in res.checks] == [
        ("a", "pass", 1.0),
        ("b", "fail", 1.5),
        ("c", "pass", -3.5),
    ]


def test_baseline_pairs_layers_by_name_and_lists_added_and_removed():
    base = report([layer("input"), layer("/old/Conv"), layer("/fc/Gemm", sqnr=35.0)], [output("logits"), output("aux")])
    cur = report([layer("input"), layer("/new/Conv"), layer("/fc/Gemm", sqnr=30.0)], [output("logits")])
    res = evaluate(cur, GateConfig({"max_output_sqnr_drop": None}), base)
    assert res.added_layers == ("/new/Conv",)
    assert res.removed_layers == ("/old/Conv",)
    assert res.removed_outputs == ("aux",) and res.added_outputs == ()
    assert [(c.subject, c.status) for c in res.checks] == [("input", "pass"), ("/fc/Gemm", "fail")]


def test_baseline_infinities_and_missing_values():
    base = report(
        [
            layer("exact", sqnr=INF, qmse=0.0),
            layer("was_exact", sqnr=INF, qmse=0.0),
            layer("nobase", sqnr=NAN),
            layer("nocur", sqnr=40.0),
        ]
    )
    cur = report(
        [
            layer("exact", sqnr=INF, qmse=0.0),
            layer("was_exact", sqnr=60.0),
            layer("nobase", sqnr=40.0),
            layer("nocur", sqnr=NAN),
        ]
    )
    res = evaluate(cur, GateConfig({"max_output_sqnr_drop": None}), base)
    got = {c.subject: (c.status, c.measured) for c in res.checks}
    assert got["exact"] == ("pass", 0.0)
    assert got["was_exact"] == ("fail", INF)
    assert got["nobase"][0] == "skip"  # nothing to compare with is not a regression
    assert got["nocur"] == ("fail", None)  # the metric vanished: missing -> fails
    assert "in the baseline" in [c for c in res.checks if c.subject == "nobase"][0].reason


def test_output_regressions():
    base = report(outputs=[output(qce=0.05, top1_agreement=0.99, acc_drop_pct=0.5)])
    cur = report(outputs=[output(qce=0.08, top1_agreement=0.97, acc_drop_pct=0.5)])
    cfg = GateConfig(
        {
            "max_qce_increase": 0.02,
            "max_top1_agreement_drop": 0.01,
            "max_acc_drop_increase": 0.0,
            "max_output_sqnr_drop": None,
            "max_layer_sqnr_drop": None,
        }
    )
    res = evaluate(cur, cfg, base)
    got = {c.gate: (c.status, c.measured) for c in res.checks}
    assert got["max_qce_increase"][0] == "fail" and got["max_qce_increase"][1] == pytest.approx(0.03)
    assert got["max_top1_agreement_drop"][0] == "fail" and got["max_top1_agreement_drop"][1] == pytest.approx(0.02)
    assert got["max_acc_drop_increase"] == ("pass", 0.0)


def test_baseline_with_different_settings_is_noted():
    base = report([layer("a")], settings={"percentile": 99.999, "format": "qdq"})
    cur = report(
        [layer("a")],
        settings={"percentile": 99.0, "format": "qdq"},
        data={"n_calib": 128, "n_eval": 100, "eval_is_calib": False, "labels": "l.npy"},
    )
    res = evaluate(cur, GateConfig(), base)
    assert any("percentile 99.999 -> 99.0" in n for n in res.notes)
    assert any("n_eval" in n for n in res.notes)


# ------------------------------------------------------------ config


@pytest.mark.parametrize(
    "gate, value, words",
    [
        ("min_layer_sqnr", NAN, "finite"),
        ("min_layer_sqnr", INF, "finite"),
        ("max_qce", -0.1, ">= 0"),
        ("min_top1_agreement", 1.5, "<= 1"),
        ("max_clip_fraction", True, "number"),
        ("max_layer_qmse", "0.1", "number"),
    ],
)
def test_invalid_thresholds_are_config_errors(gate, value, words):
    with pytest.raises(ConfigError, match=gate) as e:
        GateConfig({gate: value})
    assert words in str(e.value)


def test_unknown_gate_and_empty_glob_are_config_errors():
    with pytest.raises(ConfigError, match="min_layer_sqrn"):
        GateConfig({"min_layer_sqrn": 25})
    with pytest.raises(ConfigError, match="glob"):
        Threshold(25.0, {"": 20.0})
    with pytest.raises(ConfigError, match="'/fc2/\\*'"):
        GateConfig({"min_layer_sqnr": Threshold(25.0, {"/fc2/*": NAN})})


def test_every_gate_names_a_real_metric():
    layer_fields, output_fields = set(LayerRow.__dataclass_fields__), set(OutputRow.__dataclass_fields__)
    output_fields.add("runtime_agreement_db")  # RuntimeOutput.agreement_db, one subject per pair of runtimes
    for g in GATES:
        assert g.metric in (layer_fields if g.scope == "layer" else output_fields), g.name
        assert g.comparison == (">=" if g.name.startswith("min_") else "<="), g.name
        assert (g.kind == "regression") == (g.direction != 0) == g.name.endswith(("_drop", "_increase")), g.name


# ------------------------------------------------------ result and JSON


def test_checks_are_ordered_by_gate_then_report_order():
    r = report([layer("z"), layer("a")], [output()])
    cfg = GateConfig({"max_qce": 1.0, "min_layer_sqnr": 0.0, "max_layer_qmse": 1.0})
    res = evaluate(r, cfg)
    assert [(c.gate, c.subject) for c in res.checks] == [
        ("min_layer_sqnr", "z"),
        ("min_layer_sqnr", "a"),
        ("max_layer_qmse", "z"),
        ("max_layer_qmse", "a"),
        ("max_qce", "logits"),
    ]
    assert evaluate(r, cfg) == res  # pure: same input, same result


def test_gates_round_trip_through_json():
    base = report([layer("a", sqnr=30.0)], [output()])
    r = report([layer("a", sqnr=INF, qmse=0.0), layer("b", sqnr=20.0)], [output(kind="class", qce=None)])
    res = evaluate(r, GateConfig({"min_layer_sqnr": Threshold(25.0, {"b": None}), "max_qce": 0.1}), base, "b.json")
    d = to_dict(Report(**{**r.__dict__, "gates": res}))
    assert d["format"]["version"] == FORMAT_VERSION == 5
    g = d["gates"]
    assert g["passed"] is False and g["counts"] == {"checks": 5, "failed": 1, "skipped": 1}
    assert g["thresholds"]["min_layer_sqnr"] == {"default": 25.0, "overrides": {"b": None}}
    assert g["thresholds"]["max_layer_sqnr_drop"] == {"default": 1.0, "overrides": {}}
    assert g["added_layers"] == ["b"]
    inf_check = g["checks"][0]
    assert inf_check["measured"] is None and inf_check["status"] == "pass" and "+inf" in inf_check["reason"]
    text = to_json(Report(**{**r.__dict__, "gates": res}))
    json.loads(text)  # strict JSON
    back = from_json(text)
    assert back.gates.passed is False
    assert [c.status for c in back.gates.checks] == [c.status for c in res.checks]
    assert back.gates.added_layers == ("b",)
    assert back.gates.baseline["path"] == "b.json"
    # an infinite measured value is written null (its reason says +inf) and read back as +inf
    assert back.gates.checks[0].measured == INF and back.gates.checks[0] == res.checks[0]
    assert describe(back.gates.checks[0]) == describe(res.checks[0]) == "min_layer_sqnr a: sqnr_db ∞ >= 25"


def test_version_1_reports_are_read_as_baselines():
    d = to_dict(report([layer("a")], [output()]))
    d["format"]["version"] = 1
    del d["gates"]
    old = from_json(json.dumps(d))
    assert old.format_version == 1 and old.gates is None
    res = evaluate(report([layer("a")], [output()]), GateConfig(), old)
    assert res.passed and res.baseline["format_version"] == 1
    d["format"]["version"] = 99
    with pytest.raises(ValueError, match="99"):
        from_json(json.dumps(d))


def test_describe_states_value_threshold_and_glob():
    res = evaluate(
        report([layer("/fc2/Gemm", sqnr=18.25)]), GateConfig({"min_layer_sqnr": Threshold(25.0, {"/fc2/*": 20.0})})
    )
    assert describe(res.checks[0]) == "min_layer_sqnr /fc2/Gemm: sqnr_db 18.25 < 20 (glob '/fc2/*')"
    base = report([layer("/fc2/Gemm", sqnr=30.0)])
    res = evaluate(report([layer("/fc2/Gemm", sqnr=27.5)]), GateConfig({"max_output_sqnr_drop": None}), base)
    assert describe(res.checks[0]) == "max_layer_sqnr_drop /fc2/Gemm: sqnr_db change 2.5 > 1 (baseline 30, now 27.5)"
