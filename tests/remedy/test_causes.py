"""Causes with evidence (qaudit.remedy.causes) on models with one planted problem each.

Every planted model (tests/remedy/planted.py) is the same small CNN::

    x -> conv1 [-> bn1] -> relu1 -> a -> conv2 -> relu2 -> b -> pool -> flatten -> head -> y

audited with MinMax calibration on the evaluation data itself, so nothing clips
but what a test plants. Each test asserts the whole list of causes: exactly one,
naming the planted layer, its kind and its first remedy.
"""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest

import qaudit
from qaudit.remedy import causes
from qaudit.remedy.causes import Cause, Evidence, Remedy, diagnose
from qaudit.renderers import render
from qaudit.report import from_json, to_json

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_MODEL
from . import planted

PLANTED = {
    "healthy": (planted.healthy, {}, {}),
    "outlier": (planted.outlier_channel, {}, {}),
    "bn": (planted.bn_inflated_depthwise, {"small_channel": 1 / 60}, {}),
    "one_sided": (planted.one_sided, {}, {"overrides": {"tensors": {"a": {"symmetric": True}}}}),
    "clipping": (planted.healthy, {}, {"overrides": {"tensors": {"b": {"rmin": 0.0, "rmax": 0.05}}}}),
}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    cache = {}

    def get(name):
        if name not in cache:
            build, data, options = PLANTED[name]
            path = tmp / f"{name}.onnx"
            onnx.save(build(), path)
            x = planted.inputs(**data)
            cache[name] = qaudit.audit(path, {"x": x}, calibrate_method="minmax", **options)
        return cache[name]

    return get


def _summary(found: tuple[Cause, ...]):
    return [(c.kind, c.layer, c.remedy.kind, c.remedy.node, c.remedy.tensor) for c in found]


def test_a_healthy_model_has_no_cause(audited):
    assert diagnose(audited("healthy")) == ()


def test_an_outlier_channel_names_its_layer(audited):
    report = audited("outlier")
    found = diagnose(report)
    assert _summary(found) == [("outlier_range", "conv1", "tensor_16bit", "conv1", "a")]
    c = found[0]
    row = next(r for r in report.layers if r.name == "conv1")
    ratio = next(e for e in c.evidence if e.metric == "bulk_ratio")
    assert ratio.value == pytest.approx((row.q_max - row.q_min) / causes.bulk_range(row))
    assert ratio.value >= causes.OUTLIER_RANGE_RATIO == ratio.threshold and ratio.comparison == ">="
    assert c.remedy.detail == {"type": "uint16"}
    assert [r.kind for r in c.remedies] == ["tensor_16bit", "float_node"]  # a tighter range would clip the channel


def test_a_bn_that_inflates_a_depthwise_conv_names_it(audited):
    report = audited("bn")
    found = diagnose(report)
    assert _summary(found) == [("bn_folding", "conv1", "per_channel", "conv1", None)]
    row = next(r for r in report.layers if r.name == "conv1")
    assert row.bn_folded == "bn1" and row.groups == planted.C  # depthwise
    ev = {e.metric: e for e in found[0].evidence}
    assert ev["fold_precision_ratio"].value == pytest.approx(row.fold_w_precision / row.w_precision)
    assert ev["fold_precision_ratio"].value <= causes.BN_INFLATION
    assert ev["fold_w_precision"].value == row.fold_w_precision <= causes.LOW_WEIGHT_PRECISION
    # a gain of 60 on one channel: its weight SQNR still looks fine, the layer's output does not
    assert row.w_sqnr_db > causes.WEIGHT_SQNR_DB and ev["sqnr_isolated_db"].value == row.sqnr_isolated_db


def test_one_sided_data_on_a_symmetric_grid_names_its_tensor(audited):
    report = audited("one_sided")
    found = diagnose(report)
    assert _summary(found) == [("one_sided", "relu1", "asymmetric", "relu1", "a")]
    row = next(r for r in report.layers if r.name == "relu1")
    assert row.a_min >= 0 and row.zero_point == 128 and row.grid_use <= 129 / 256
    assert found[0].remedy.detail == {"symmetric": False}
    assert {e.metric: e.value for e in found[0].evidence} == {
        "unused_side": pytest.approx(-row.q_min / (row.q_max - row.q_min)),
        "grid_use": row.grid_use,
    }


def test_a_narrow_range_names_the_clipping_layer(audited):
    report = audited("clipping")
    found = diagnose(report)
    # the layers after it carry its error (error_amplification in the thousands): no cause of their own
    assert _summary(found) == [("clipping", "conv2", "range", "conv2", "b")]
    row = next(r for r in report.layers if r.name == "conv2")
    assert row.clip_error_share > 0.99 and row.q_max == pytest.approx(0.05, rel=0.01)
    assert found[0].remedy.detail == {"rmin": row.a_min, "rmax": row.a_max}


def test_the_digits_sample_has_no_cause():
    """The bundled sample is healthy (every layer above 30 dB): no noise."""
    report = qaudit.audit(SAMPLE_MODEL, SAMPLE_CALIB, SAMPLE_EVAL)
    assert diagnose(report) == ()
    assert min(r.sqnr_isolated_db for r in report.layers if r.sqnr_isolated_db is not None) > causes.FLAG_SQNR_DB


def test_causes_in_every_renderer_and_from_saved_json(audited, tmp_path):
    report = audited("bn")
    (cause,) = diagnose(report)
    d = json.loads(to_json(report))
    assert d["causes"] == [json.loads(json.dumps(dataclasses.asdict(cause)))]
    assert d["causes"][0]["remedies"][0] == {"kind": "per_channel", "node": "conv1", "tensor": None, "detail": {}}
    again = from_json(to_json(report))
    assert diagnose(again) == (cause,)  # re-diagnosed from the saved numbers: the same
    term = render(again, "terminal")
    assert "What to try" in term and "1. conv1: folding BatchNorm bn1 cut its weight channel precision" in term
    assert "per-channel weights for conv1" in term and "fold_precision_ratio" in term
    md = render(again, "markdown")
    assert "### What to try" in md and "1. conv1: folding BatchNorm bn1" in md
    html = render(again, "html")
    assert '<h2 id="causes">What to try</h2>' in html and 'href="#causes"' in html
    for healthy in (render(audited("healthy"), f) for f in ("terminal", "markdown", "html")):
        assert "What to try" not in healthy
    path = tmp_path / "r.json"
    path.write_text(to_json(report), encoding="utf-8")
    from qaudit.cli.main import main

    assert main(["report", str(path)]) == 0


# ------------------------------------------------------------------ the rules at their thresholds


def _row(**kw):
    from qaudit.report import Histogram, LayerRow

    base = dict(index=0, name="L", op_type="Conv", tensor="t", quant_tensor="t_q", dtype="uint8")
    if "histogram" in kw and isinstance(kw["histogram"], tuple):
        kw["histogram"] = Histogram(*kw["histogram"])
    return LayerRow(**{**base, **kw})


def _report(*rows):
    from qaudit.report import Report

    return Report({}, {}, {}, {}, {}, tuple(dataclasses.replace(r, index=i) for i, r in enumerate(rows)), (), ())


def test_clipping_needs_a_low_isolated_sqnr_and_a_clipping_share():
    row = _row(sqnr_isolated_db=29.9, clip_error_share=0.5, a_min=-1.0, a_max=3.0, q_min=0.0, q_max=1.0)
    assert [c.kind for c in diagnose(_report(row))] == ["clipping"]
    assert diagnose(_report(dataclasses.replace(row, sqnr_isolated_db=30.0))) == ()
    assert diagnose(_report(dataclasses.replace(row, clip_error_share=0.49))) == ()


def test_outliers_at_the_ratio_threshold():
    """100 values in 10 one-wide bins on [0, 10]: 95 in the first, 5 in the last. By hand: p10 = 10/95,
    p90 = 90/95, so the bulk (0.84) is widened to one bin: 1.0, and the ratio is q_max - q_min."""
    hist = (0.0, 10.0, (95, 0, 0, 0, 0, 0, 0, 0, 0, 5))
    row = _row(q_min=0.0, q_max=10.0, clip_error_share=0.0, histogram=hist, a_lo=0.0, a_hi=10.0, a_range=10.0)
    assert causes.bulk_range(row) == 1.0
    assert diagnose(_report(row)) == ()  # a ratio of 10 in a layer that does not lose precision: nothing
    wide = dataclasses.replace(row, q_max=20.0)  # 20: the bulk keeps 12 of 256 codes, whatever the SQNR
    assert [c.kind for c in diagnose(_report(wide))] == ["outlier_range"]
    assert diagnose(_report(dataclasses.replace(wide, op_type="Softmax"))) == ()  # its tail is the signal
    row = dataclasses.replace(row, sqnr_isolated_db=25.0)
    (c,) = diagnose(_report(row))
    assert c.kind == "outlier_range" and c.evidence[0] == Evidence("bulk_ratio", 10.0, 10.0, ">=")
    assert [r.kind for r in c.remedies] == ["tensor_16bit", "float_node"]  # 5% of the values: not rare
    assert diagnose(_report(dataclasses.replace(row, q_max=9.99))) == ()
    assert diagnose(_report(dataclasses.replace(row, clip_error_share=0.51))) == ()  # clipping dominates
    assert diagnose(_report(dataclasses.replace(row, histogram=None))) == ()  # no histogram: nothing to say
    rare = dataclasses.replace(row, a_lo=0.0, a_hi=1.0, a_range=1.0)  # the 1%..99% range is tight: rare outliers
    (c,) = diagnose(_report(rare))
    assert c.remedies[0] == Remedy("range", "L", "t", {"rmin": 0.0, "rmax": 1.0})


def test_upstream_names_the_source_only_when_it_has_no_cause_of_its_own():
    src = _row(name="src", tensor="s", sqnr_isolated_db=12.0, sqnr_db=12.0)
    down = _row(name="down", sqnr_db=11.0, sqnr_isolated_db=40.0, error_amplification=1000.0)
    (c,) = diagnose(_report(src, down))
    assert (c.kind, c.layer, c.remedy) == ("upstream", "down", Remedy("upstream", "src", "s", {"from": "down"}))
    assert c.evidence[-1] == Evidence("error_amplification", 1000.0, causes.AMPLIFICATION, ">=")
    # the source explained by its own cause: the downstream layer adds nothing
    clipped = dataclasses.replace(src, clip_error_share=0.9, a_min=-1.0, a_max=9.0, q_min=0.0, q_max=1.0)
    assert [x.kind for x in diagnose(_report(clipped, down))] == ["clipping"]


def test_the_structure_is_documented():
    import typing

    doc = causes.__doc__
    for name in ("Cause", "Evidence", "Remedy", *causes.CAUSE_KINDS, *causes.REMEDY_KINDS):
        assert f'``"{name}"``' in doc or f":class:`{name}`" in doc, name
    assert typing.get_args(typing.get_type_hints(Remedy)["kind"]) == causes.REMEDY_KINDS


def test_what_to_try_shows_a_layers_worst_cause_only():
    """A layer with weight and range causes (PP-OCR rec's p2o.Conv.28): two causes, one line, weights first."""
    hist = (0.0, 10.0, (95, 0, 0, 0, 0, 0, 0, 0, 0, 5))
    both = _row(
        q_min=0.0,
        q_max=10.0,
        clip_error_share=0.0,
        histogram=hist,
        a_lo=0.0,
        a_hi=10.0,
        a_range=10.0,
        sqnr_isolated_db=9.3,
        w_range=1.0,
        w_precision=0.05,
        fold_w_precision=0.05,
        w_sqnr_db=15.6,
        w_encoding="uint8 per-tensor",
    )
    assert [c.kind for c in diagnose(_report(both))] == ["weight_channel_precision", "outlier_range"]
    shown, more = causes.lines(_report(both))
    assert [c.kind for c, _ in shown] == ["weight_channel_precision"] and more == 0
    assert shown[0][1] == (
        "L: its weight channels use 5% of the per-tensor range on average. Try per-channel weights for L (--per-channel)."
    )
