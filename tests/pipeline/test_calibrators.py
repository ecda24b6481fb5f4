"""Every ORT calibrator (issue 18 item 1): qaudit's ranges against ORT's own
calibrator fed the same batches, the quantized model against quantize_static with
that method, one pass serving several methods, and collectors that do not grow."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, create_calibrator, quantize_static

import qaudit
from qaudit.errors import ConfigError
from qaudit.pipeline.quantize import (
    calibrate,
    calibrate_many,
    make_collector,
    quantizable_op_types,
    quiet_ort,
)
from tests.pipeline.test_oracle import SAMPLE, _audit, _batches, _folded, _Reader

#: (QuantConfig keywords, ORT create_calibrator extra_options): ORT's defaults and non-defaults
CASES = {
    "percentile": ({}, {"symmetric": True, "num_bins": 2048, "percentile": 99.999}),
    "percentile-asym": (
        {"calibrate_method": "percentile", "calib_symmetric": False, "percentile": 99.9, "num_bins": 1024},
        {"symmetric": False, "num_bins": 1024, "percentile": 99.9},
    ),
    "minmax": ({"calibrate_method": "minmax"}, {}),
    "minmax-sym": ({"calibrate_method": "minmax", "calib_symmetric": True}, {"symmetric": True}),
    "minmax-avg": (
        {"calibrate_method": "minmax", "moving_average": True, "averaging_constant": 0.25},
        {"moving_average": True, "averaging_constant": 0.25},
    ),
    "percentile-asym-2048": ({"calib_symmetric": False, "percentile": 99.9}, {"symmetric": False, "percentile": 99.9}),
    "entropy": ({"calibrate_method": "entropy"}, {}),
    "entropy-bins": (
        {"calibrate_method": "entropy", "num_bins": 512, "num_quantized_bins": 64},
        {"num_bins": 512, "num_quantized_bins": 64},
    ),
    "distribution": ({"calibrate_method": "distribution"}, {}),
}


def _ort_ranges(folded, batches, cfg, tmp_path, extra):
    """ORT's calibrator of cfg's method, collect_data once per batch (CalibStridedMinMax)."""
    with quiet_ort():
        cal = create_calibrator(
            folded,
            quantizable_op_types(),
            augmented_model_path=str(tmp_path / "aug.onnx"),
            calibrate_method=cfg.ort_calibrate_method(),
            extra_options=extra,
        )
        for b in batches:
            r = _Reader("calib")
            r.items, r.end = [b], 1
            cal.collect_data(r)
        return cal.compute_data()


def _assert_same(ours, theirs):
    assert ours.calibration_method == theirs.calibration_method
    assert set(ours) == set(theirs) and len(set(theirs)) >= 14
    for t in theirs:
        a, b = ours[t], theirs[t]
        assert a._attrs == b._attrs, t
        for k in b._attrs:
            x, y = np.asarray(getattr(a, k)), np.asarray(getattr(b, k))
            assert x.dtype == y.dtype and x.shape == y.shape, (t, k)
            np.testing.assert_array_equal(x, y, err_msg=f"{t}.{k}")


def _uneven_batches():
    """The sample's calibration data in batches of 7, 25, 32 ... (ranges grow and shrink)."""
    x = np.concatenate([b["input"] for b in _batches("calib")])
    cuts = [0, 7, 32, 64, 100, 128][: len(x)]
    return [{"input": x[a:b]} for a, b in zip(cuts, cuts[1:]) if b <= len(x)]


@pytest.mark.parametrize("case", list(CASES))
def test_ranges_equal_ort_calibrator(tmp_path, case):
    kw, extra = CASES[case]
    cfg = qaudit.QuantConfig(**kw)
    folded = _folded(tmp_path)
    batches = _uneven_batches()
    assert len(batches) == 5
    ours = calibrate(folded, batches, cfg, tmp_path, workers=2)
    _assert_same(ours, _ort_ranges(folded, batches, cfg, tmp_path, extra))


def test_one_pass_serves_every_method(tmp_path):
    """calibrate_many: one session run per batch, each method's ranges those of its own calibration."""
    cfgs = [qaudit.QuantConfig(**kw) for kw, _ in CASES.values()]
    folded = _folded(tmp_path)
    runs = []

    def batches():
        for b in _uneven_batches():
            runs.append(1)
            yield b

    many = calibrate_many(folded, batches(), cfgs, tmp_path)
    assert len(runs) == 5 and len(many) == len(cfgs)
    for cfg, got in zip(cfgs, many):
        _assert_same(got, calibrate(folded, _uneven_batches(), cfg, tmp_path))


@pytest.mark.parametrize("case", ["minmax-avg", "minmax-sym", "entropy", "distribution", "percentile-asym-2048"])
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_quantized_model_equals_quantize_static(tmp_path, case, fmt):
    """The audited model is quantize_static's with the same method, one batch per
    collect_data (CalibStridedMinMax = the batch); quantize_static cannot set
    num_bins, so the cases here use ORT's bins."""
    kw, _ = CASES[case]
    _, qpath = _audit(tmp_path, batch_size=32, format=fmt, **kw)
    cfg = qaudit.QuantConfig(**kw)
    with quiet_ort():
        quantize_static(
            str(_folded(tmp_path)),
            str(tmp_path / "ort.onnx"),
            _Reader("calib"),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
            calibrate_method=cfg.ort_calibrate_method(),
            extra_options={"CalibStridedMinMax": 1, **cfg.ort_extra_options()},
        )
    ours = {t.name: numpy_helper.to_array(t) for t in onnx.load(qpath).graph.initializer}
    theirs = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "ort.onnx").graph.initializer}
    assert ours.keys() == theirs.keys()
    assert len([k for k in ours if k.endswith("_scale")]) > 10
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_methods_give_different_ranges(tmp_path):
    """The methods are not one method under several names: on a ReLU output Entropy
    (512 bins) clips below Percentile, which clips below MinMax; Distribution's
    range is its histogram's edges, symmetric (docs/ort-quirks.md)."""
    folded = _folded(tmp_path)
    names = ["percentile", "minmax", "entropy-bins", "distribution"]
    cfgs = [qaudit.QuantConfig(**CASES[n][0]) for n in names]
    ranges = dict(zip(names, calibrate_many(folded, _uneven_batches(), cfgs, tmp_path)))
    t = "/block2/relu/Relu_output_0"
    lo, hi = ({n: float(np.ravel(r[t].range_value[i])[0]) for n, r in ranges.items()} for i in (0, 1))
    assert hi["entropy-bins"] < hi["percentile"] < hi["minmax"] <= hi["distribution"]
    assert lo["minmax"] == lo["percentile"] == lo["entropy-bins"] == 0 and lo["distribution"] == -hi["distribution"]


@pytest.mark.parametrize("case", ["percentile", "percentile-asym", "minmax", "minmax-avg", "entropy", "distribution"])
def test_collector_state_does_not_grow_with_batches(case):
    """The collector holds its statistics, not the batches: the same state size after
    8 and 32 batches of one distribution (the first batch holds the extremes).
    ORT's MinMaxCalibrater keeps one entry per batch until compute_data."""
    cfg = qaudit.QuantConfig(**CASES[case][0])
    rng = np.random.default_rng(0)
    sizes = []
    for n in (8, 32):
        c = make_collector(cfg)
        with quiet_ort():
            for k in range(n):
                x = rng.uniform(-1, 1, (4, 8, 16, 16)).astype(np.float32)
                if k == 0:
                    x.flat[:2] = (-1.0, 1.0)
                c.collect({"a": [x], "b": [np.maximum(x, 0)]})
        sizes.append(c.state_nbytes())
    assert sizes[0] == sizes[1] > 0


def test_ort_minmax_keeps_every_batch(tmp_path):
    """Why qaudit does not use MinMaxCalibrater.collect_data on the whole reader:
    its intermediate outputs grow with the number of batches."""
    folded = _folded(tmp_path)
    with quiet_ort():
        cal = create_calibrator(folded, quantizable_op_types(), augmented_model_path=str(tmp_path / "aug.onnx"))
        for b in _uneven_batches():
            cal.intermediate_outputs.append(cal.infer_session.run(None, b))
    assert len(cal.intermediate_outputs) == 5


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"calibrate_method": "minmax", "percentile": 99.9}, "percentile does not apply to minmax calibration"),
        ({"calibrate_method": "minmax", "num_bins": 512}, "num_bins does not apply to minmax"),
        ({"calibrate_method": "entropy", "calib_symmetric": True}, "calib_symmetric does not apply to entropy"),
        ({"calibrate_method": "distribution", "calib_symmetric": False}, "does not apply to distribution"),
        ({"num_quantized_bins": 64}, "num_quantized_bins does not apply to percentile"),
        ({"moving_average": True}, "moving_average does not apply to percentile"),
        ({"calibrate_method": "minmax", "averaging_constant": 0.1}, "only applies with moving_average"),
        ({"calibrate_method": "minmax", "moving_average": True, "averaging_constant": 1.5}, r"\[0, 1\]"),
        ({"calibrate_method": "distribution", "num_bins": 256}, "at least 512 for distribution"),
        ({"calibrate_method": "entropy", "num_bins": 64, "num_quantized_bins": 128}, "num_quantized_bins must be"),
        ({"calibrate_method": "kl"}, "calibrate_method must be one of percentile, minmax, entropy, distribution"),
        ({"calibrate_method": "percentile,entropy"}, "a QuantConfig takes one calibrate_method"),
    ],
)
def test_option_that_does_not_apply_is_an_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        qaudit.QuantConfig(**kw)


def test_settings_record_the_method_and_its_options():
    s = qaudit.QuantConfig(calibrate_method="entropy", num_quantized_bins=64).as_dict()
    assert s["calibrate_method"] == "entropy"
    assert (s["num_bins"], s["num_quantized_bins"]) == (128, 64)  # ORT's default bins for Entropy
    assert s["percentile"] is None and s["calib_symmetric"] is None and s["moving_average"] is None
    s = qaudit.QuantConfig(calibrate_method="minmax").as_dict()
    assert (s["calib_symmetric"], s["moving_average"], s["averaging_constant"]) == (False, False, 0.01)
    s = qaudit.QuantConfig().as_dict()
    assert (s["calibrate_method"], s["percentile"], s["calib_symmetric"], s["num_bins"]) == (
        "percentile",
        99.999,
        True,
        2048,
    )


def test_audit_api_with_minmax(tmp_path):
    report = qaudit.audit(SAMPLE / "model.onnx", SAMPLE / "calib", SAMPLE / "eval", calibrate_method="minmax")
    assert report.settings["calibrate_method"] == "minmax"
    assert all(r.sqnr_db > 10 for r in report.layers if r.sqnr_db is not None)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the empty tensor's 0/0, in ORT's code
@pytest.mark.parametrize("method", ["entropy", "distribution", "percentile"])
def test_signed_histogram_equals_ort_collector(method):
    """qaudit's collect_value (no copies) against ORT's, batch by batch: a tensor whose
    range grows (ORT widens the histogram by whole bins), one that shrinks, one with
    NaN among finite values (both skip the NaN) and an empty one."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from qaudit.pipeline.quantize import _lean_collector_class

    kw = dict(method=method, symmetric=False, num_bins=512, num_quantized_bins=64, percentile=99.9, scenario="same")
    ours, theirs = _lean_collector_class()(**kw), HistogramCollector(**kw)
    rng = np.random.default_rng(1)
    with quiet_ort():
        for k in range(6):
            nan = rng.standard_normal((3, 40)).astype(np.float32)
            nan[0, k] = np.nan
            batch = {
                "grows": (rng.standard_normal((2, 3, 7, 7)) * (1 + k)).astype(np.float32),
                "shrinks": (rng.standard_normal((2, 5)) / (1 + k)).astype(np.float32),
                "nan": nan,
                "empty": np.zeros((0, 3), np.float32),
            }
            ours.collect({n: [v] for n, v in batch.items()})
            theirs.collect({n: [v] for n, v in batch.items()})
        assert len(ours.histogram_dict["grows"][0]) > 512  # the widening path ran
        for name, b in theirs.histogram_dict.items():
            for x, y in zip(ours.histogram_dict[name], b):
                np.testing.assert_array_equal(x, y, err_msg=name)
        a, b = ours.compute_collection_result(), theirs.compute_collection_result()
    for name in b:
        x, y = (a[name].range_value, b[name].range_value) if method == "distribution" else (a[name], b[name])
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v, err_msg=name)
    assert not ours.nonfinite


@pytest.mark.parametrize("case", ["minmax", "entropy", "percentile-asym"])
def test_a_tensor_turning_infinite_gets_no_range(case):
    """+-inf in a later batch (a padded attention mask): the tensor is set aside with its
    finite range, for every method, instead of an infinite range or ORT's failure."""
    from qaudit.pipeline.quantize import compute_ranges

    cfg = qaudit.QuantConfig(**CASES[case][0])
    c = make_collector(cfg)
    x = np.linspace(-2, 3, 60, dtype=np.float32).reshape(3, 20)
    with quiet_ort():
        c.collect({"ok": [x], "mask": [x]})
        bad = x.copy()
        bad[0, 0] = -np.inf
        c.collect({"ok": [x], "mask": [bad]})
        ranges = compute_ranges(c, cfg, drop=set(c.nonfinite))
    assert c.nonfinite == {"mask": (float(x.ravel()[1]), 3.0)}
    assert set(ranges) == {"ok"}


def _histograms():
    """Histograms as ORT's collector builds them: one batch, or grown by merge_histogram from a first
    batch 40x narrower than the rest (whole bins of the first batch's width: ORT quirk 64), with
    empty bins, one-sided data and odd bin counts."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(7)
    for k, bins in enumerate((128, 129, 301, 1000, 2048)):
        for case in ("normal", "relu", "holes", "grown"):
            if case == "grown" and bins > 129:
                continue  # ORT's own search over 40x the bins: minutes
            c = HistogramCollector("entropy", False, bins, 128, 99.9, "same")
            x = rng.standard_normal(4000).astype(np.float32) * (0.3 + k)
            if case == "relu":
                x = np.maximum(x, 0)
            batches = [x[:100] / 40, x[100:]] if case == "grown" else [x]
            for b in batches:
                c.collect_value({"t": [b]})
            h = c.histogram_dict["t"]
            if case == "holes":
                hist = h[0].copy()
                hist[rng.integers(0, hist.size, hist.size // 3)] = 0
                h = (hist, *h[1:])
            yield f"{bins}-{case}", h


@pytest.mark.parametrize("name,histogram", list(_histograms()))
def test_entropy_threshold_is_orts_bit_for_bit(name, histogram):
    """qaudit's KL search (prefix sums instead of ORT's builtin sums) returns ORT's threshold exactly,
    dtype included, on one-batch and grown histograms."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from qaudit.pipeline.quantize import _lean_collector_class

    ort = HistogramCollector("entropy", False, 128, 128, 99.9, "same")
    lean = _lean_collector_class()("entropy", False, 128, 128, 99.9, "same")
    for qbins in (128, 64):
        if histogram[0].size // 2 < qbins // 2:
            continue
        want = ort.get_entropy_threshold(histogram, qbins)
        got = lean.get_entropy_threshold(histogram, qbins)
        assert [type(v) for v in got] == [type(v) for v in want], name
        assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype, name
        assert (got[0], got[1]) == (want[0], want[1]), f"{name} ({qbins} quantized bins)"


def test_grown_entropy_histogram_holds_whole_first_batch_bins():
    """ORT quirk 64: the bin width stays the first batch's, so a first batch 40x narrower than the
    data widens a 128-bin histogram to about 128 * 40 bins."""
    grown = dict(_histograms())["128-grown"]
    assert grown[0].size > 128 * 30 and grown[0].sum() == 4000


def _narrow_first_batches():
    """The sample's calibration data with its first batch scaled down 20x: every histogram ORT
    widens afterwards grows (the input to 20 times its bins; ORT quirk 65)."""
    batches = _uneven_batches()
    return [{"input": batches[0]["input"] / 20}, *batches[1:]]


def test_grown_entropy_histograms_get_a_stage_and_a_note(tmp_path, monkeypatch):
    """Entropy over histograms ORT grew past GROWN_BINS: a progress stage of their own advanced once
    per grown tensor, and a note naming the largest with ORT's own bin count; the ranges stay ORT's."""
    import qaudit.pipeline.quantize as quantize

    monkeypatch.setattr(quantize, "GROWN_BINS", 250)
    folded = _folded(tmp_path)
    cfg = qaudit.QuantConfig(calibrate_method="entropy")
    stages, ticks = [], []
    ours = calibrate_many(
        folded, _narrow_first_batches(), [cfg], tmp_path, on_stage=lambda d, n: stages.append((d, n)),
        on_batch=ticks.append,
    )[0]  # fmt: skip
    _assert_same(ours, _ort_ranges(folded, _narrow_first_batches(), cfg, tmp_path, {}))
    # ORT's own histograms of the same batches: the bin counts the note and the stage must give
    with quiet_ort():
        cal = create_calibrator(
            folded, quantizable_op_types(), augmented_model_path=str(tmp_path / "aug2.onnx"),
            calibrate_method=cfg.ort_calibrate_method(),
        )  # fmt: skip
        for b in _narrow_first_batches():
            r = _Reader("calib")
            r.items, r.end = [b], 1
            cal.collect_data(r)
    bins = {k: len(v[0]) for k, v in cal.collector.histogram_dict.items()}
    grown = {k: n for k, n in bins.items() if n > 250}
    assert len(grown) >= 3 and grown["input"] == 128 * 20, bins  # the input itself grows 20x
    biggest = max(grown, key=grown.get)
    assert stages == [(
        f"Entropy's threshold search over {len(grown)} grown histogram(s), the largest "
        f"'{biggest}' at {grown[biggest]:,} bins (quadratic in the bins)", len(grown),
    )]  # fmt: skip
    calibration_ticks = len(_narrow_first_batches())
    assert len(ticks) == calibration_ticks + len(grown) and ticks[calibration_ticks:] == [1] * len(grown)
    (note,) = ours.notes
    assert f"the histogram of tensor '{biggest}' grew from 128 to {grown[biggest]:,} bins" in note, note
    assert f"({len(grown) - 1} other tensor(s) past 250 bins)" in note and "first batch spanned" in note, note
    # no grown histogram, no stage and no note
    stages.clear()
    plain = calibrate_many(folded, _uneven_batches(), [cfg], tmp_path, on_stage=lambda d, n: stages.append(d))[0]
    assert stages == [] and not getattr(plain, "notes", ())


def test_grown_histogram_note_reaches_the_report(tmp_path, monkeypatch):
    """The note is in the audit's report (every run's notes), with the tensor ORT grew most."""
    import qaudit.pipeline.quantize as quantize

    monkeypatch.setattr(quantize, "GROWN_BINS", 128)  # the sample's batches grow some histograms a little
    report, _ = _audit(tmp_path, batch_size=7, calibrate_method="entropy")
    notes = [n for n in report.notes if n.startswith("Entropy calibration: the histogram of tensor")]
    assert len(notes) == 1 and "grew from 128 to" in notes[0], report.notes
