"""Every metric of docs/metrics.md against a computation by hand."""

import math

import numpy as np
import pytest

from qaudit.pipeline.metrics import (
    ClipCounter,
    ErrorAccumulator,
    OutputAccumulator,
    RangeHistogram,
    channel_axis,
    dequantize,
    looks_like_probabilities,
    qmse_of,
    range_stats,
    sqnr_db,
    sqnr_of,
)


def test_weight_range_and_precision_by_hand():
    # channel ranges 1 and 4, layer range 4 - 0 = 4: precision (1/4 + 4/4) / 2
    st = range_stats(np.array([[1.0, 2.0], [0.0, 4.0]]))
    assert st == {"min": 0.0, "max": 4.0, "range": 4.0, "precision": 0.625}


def test_weight_precision_undefined_for_constant_weights():
    assert range_stats(np.full((3, 4), 0.5))["precision"] is None


def test_sqnr_and_qmse_by_hand():
    x, xh = np.array([1.0, 2.0, -2.0]), np.array([1.0, 1.0, -2.5])
    # sum x^2 = 9, sum e^2 = 1 + 0.25
    assert sqnr_of(x, xh) == pytest.approx(10 * math.log10(9 / 1.25))
    assert qmse_of(x, xh) == pytest.approx(1.25 / 3)
    assert sqnr_of(x, x) == math.inf
    assert math.isnan(sqnr_db(0.0, 0.0))


def test_dequantize_uint8_does_not_wrap():
    # (10 - 200) in uint8 arithmetic would wrap to 66
    q = np.array([10, 200, 255], dtype=np.uint8)
    np.testing.assert_allclose(dequantize(q, 0.5, np.uint8(200)), [-95.0, 0.0, 27.5])


def test_dequantize_per_channel_axis():
    q = np.array([[0, 10], [0, 10]], dtype=np.int8)
    out = dequantize(q, np.array([1.0, 2.0]), np.array([0, 5], dtype=np.int8), axis=0)
    np.testing.assert_allclose(out, [[0, 10], [-10, 10]])


def test_error_accumulator_streams_like_whole_array():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3, 4))
    xh = x + rng.normal(scale=0.1, size=x.shape)
    acc = ErrorAccumulator()
    for i in range(0, 10, 3):
        acc.update(x[i : i + 3], xh[i : i + 3])
    # float32 per-batch dot products: far below the 0.01 dB that matters
    assert acc.sqnr_db == pytest.approx(sqnr_of(x, xh), abs=1e-5)
    assert acc.qmse == pytest.approx(qmse_of(x, xh), rel=1e-5)
    other = ErrorAccumulator()
    other.update(x[:5], xh[:5])
    rest = ErrorAccumulator()
    rest.update(x[5:], xh[5:])
    assert other.merge(rest).sqnr_db == pytest.approx(acc.sqnr_db, abs=1e-5)


def test_channel_axis_convention():
    assert [channel_axis(r) for r in (1, 2, 3, 4, 5)] == [None, 1, 2, 1, 1]


def _hist_of(batches, axis):
    h = RangeHistogram()
    for b in batches:
        h.update(b, axis)
    return h


def test_clipped_range_within_one_bin_of_numpy_percentile():
    rng = np.random.default_rng(1)
    x = rng.standard_t(4, size=(64, 8, 5, 5)).astype(np.float32)
    h = _hist_of(np.split(x, 8), axis=1)
    lo, hi = h.clipped_range(1.0)
    want_lo, want_hi = np.percentile(x, [1, 99])
    assert abs(lo - want_lo) <= h.bin_width and abs(hi - want_hi) <= h.bin_width
    # per-channel ranges against numpy, within one coarse bin per end
    ch = np.moveaxis(x, 1, 0).reshape(8, -1)
    want_ch = np.percentile(ch, 99, axis=1) - np.percentile(ch, 1, axis=1)
    coarse = 2 * h.T / h.channel_bins
    np.testing.assert_allclose(h.channel_ranges(1.0), want_ch, atol=2 * coarse)


def test_histogram_is_independent_of_batching():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(30, 6)) * np.linspace(0.1, 5, 30)[:, None]).astype(np.float32)  # growing range
    a = _hist_of([x], axis=1)
    b = _hist_of(np.split(x, 10), axis=1)
    c = _hist_of(np.split(x, 3)[:1], axis=1).merge(_hist_of(np.split(x, 3)[1:], axis=1))
    for h in (b, c):
        assert h.T == a.T
        np.testing.assert_array_equal(h.hist, a.hist)
        np.testing.assert_array_equal(h.ch_hist, a.ch_hist)
        assert h.clipped_range(1.0) == a.clipped_range(1.0)


def test_point_mass_at_zero_gives_exact_zero():
    # a ReLU output: 70% zeros, so the 1st percentile is exactly 0
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(-0.5, 1, size=(100, 4)), 0).astype(np.float32)
    lo, hi = _hist_of([x], axis=1).clipped_range(1.0)
    assert lo == 0.0
    assert hi == pytest.approx(np.percentile(x, 99), abs=_hist_of([x], 1).bin_width)


def test_clip_fraction_by_hand():
    c = ClipCounter(-1.0, 2.0)
    c.update(np.array([-1.5, -1.0, 0.0, 2.0, 2.01]))
    c.update(np.array([3.0, 0.5, 0.5]))
    assert c.fraction == pytest.approx(3 / 8)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_output_metrics_by_hand():
    x = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.2, 0.0]])
    y = np.array([[1.8, 1.1, 0.1], [0.5, 2.0, 1.9], [1.3, 1.0, 0.0]])
    labels = np.array([0, 1, 1])
    acc = OutputAccumulator("out")
    acc.update(x[:2], y[:2], labels[:2])
    acc.update(x[2:], y[2:], labels[2:])
    r = acc.result()
    p, q = _softmax(x), _softmax(y)
    qce = np.mean(-np.sum(p * np.log(q), axis=1))
    h = np.mean(-np.sum(p * np.log(p), axis=1))
    assert r["qce"] == pytest.approx(qce)
    assert r["qkl"] == pytest.approx(qce - h)
    assert r["top1_agreement"] == pytest.approx(2 / 3)  # sample 3 flips from class 1 to 0
    assert r["acc_fp32"] == pytest.approx(1.0) and r["acc_int8"] == pytest.approx(2 / 3)
    assert r["acc_drop_pct"] == pytest.approx(abs(1.0 - 2 / 3) / 1.0 * 100)
    assert r["qmse"] == pytest.approx(np.mean((x - y) ** 2))


def test_probability_outputs_are_not_softmaxed_again():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    q = np.array([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]])
    assert looks_like_probabilities(p)
    acc = OutputAccumulator("prob", probabilities=True)
    acc.update(p, q)
    assert acc.result()["qce"] == pytest.approx(np.mean(-np.sum(p * np.log(q), axis=1)))


def test_non_classification_outputs_have_no_qce():
    acc = OutputAccumulator("feat", kind="regression")
    acc.update(np.ones((2, 3, 4)), np.ones((2, 3, 4)))
    r = acc.result()
    assert r["qce"] is None and r["top1_agreement"] is None and r["qmse"] == 0.0


@pytest.mark.parametrize("C", [1, 3, 3000])
def test_histogram_paths_agree_with_numpy(C):
    """The three binning paths (one channel, joint fine bins, separate coarse bins)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, C, 50 if C < 3000 else 2)).astype(np.float32)
    h = _hist_of([x[:2], x[2:]], axis=1)
    ref = RangeHistogram()
    T = h.T
    fine = np.clip(np.floor((x.astype(np.float64) + T) * 2048 / (2 * T)).astype(int), 0, 2047)
    # float32 binning may move a value sitting on an edge by one bin (within the bin error)
    moved = max(2, int(2e-3 * x.size))
    assert np.abs(h.hist - np.bincount(fine.ravel(), minlength=2048)).sum() <= moved
    coarse = np.moveaxis(fine // 8, 1, 0).reshape(C, -1)
    want = np.stack([np.bincount(c, minlength=256) for c in coarse])
    assert np.abs(h.ch_hist - want).sum() <= moved
    assert h.count == x.size and ref.count == 0


def test_compact_histogram_counts_every_value_on_grid_edges():
    rng = np.random.default_rng(5)
    x = np.concatenate([np.zeros(300), rng.normal(1.0, 0.7, size=(2000,))]).astype(np.float32).reshape(46, 50)
    h = _hist_of(np.split(x, 2), axis=1)
    lo, hi, counts = h.compact(128)
    assert len(counts) <= 128 and sum(counts) == x.size
    assert lo <= x.min() and hi >= x.max()
    width = (hi - lo) / len(counts)
    g = round(width / h.bin_width)
    assert width == pytest.approx(g * h.bin_width, rel=1e-12)
    assert (lo + h.T) / h.bin_width == pytest.approx(round((lo + h.T) / h.bin_width), abs=1e-9)  # a grid edge
    # the same counts as numpy on the same edges
    want, _ = np.histogram(x.astype(np.float64), bins=len(counts), range=(lo, hi))
    np.testing.assert_array_equal(counts, want)
    assert h.compact(4096)[2] == h.hist[h.hist.nonzero()[0][0] : h.hist.nonzero()[0][-1] + 1].tolist()


def test_compact_histogram_edge_cases():
    assert RangeHistogram().compact() is None
    zeros = _hist_of([np.zeros((4, 3), np.float32)], axis=1)
    assert zeros.compact() == (0.0, 0.0, [12])


def test_sequence_probabilities_are_scored_per_position():
    rng = np.random.default_rng(6)
    p = _softmax(rng.normal(size=(6, 5))).reshape(2, 3, 5)  # [N=2, T=3, K=5]
    q = _softmax(rng.normal(size=(6, 5))).reshape(2, 3, 5)
    acc = OutputAccumulator("ctc", probabilities=True)
    acc.update(p, q)
    r = acc.result()
    pf, qf = p.reshape(6, 5), q.reshape(6, 5)
    assert r["qce"] == pytest.approx(np.mean(-np.sum(pf * np.log(qf), axis=1)))
    assert r["top1_agreement"] == pytest.approx(np.mean(pf.argmax(1) == qf.argmax(1)))
    feat = OutputAccumulator("feat", kind="regression")  # 3-D values that are not class scores
    feat.update(rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5)))
    assert feat.result()["qce"] is None
    logits = OutputAccumulator("logits")  # 3-D logits named as class scores: softmaxed, per position
    a, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    logits.update(a, b)
    pa, pb = _softmax(a.reshape(6, 5)), _softmax(b.reshape(6, 5))
    assert logits.result()["qce"] == pytest.approx(np.mean(-np.sum(pa * np.log(pb), axis=1)))


def _edge_values(rng, T: float, n: int, shape) -> np.ndarray:
    """float32 values on the edges of the fine grid on [-T, T] and 1-2 ulps either side, tiny
    negatives (which float32 ``x + T`` rounds up to the middle bin) and T itself."""
    k = rng.integers(-1024, 1024, size=n)
    edges = (k * (2 * T / 2048)).astype(np.float32)
    steps = rng.integers(-2, 3, size=n).astype(np.float32)
    toward = np.where(steps > 0, np.float32(np.inf), np.float32(-np.inf))
    x = np.where(steps == 0, edges, np.nextafter(edges, toward))
    x = np.where(np.abs(steps) == 2, np.nextafter(x, toward), x)
    x[: n // 8] = -rng.uniform(1e-9, 1e-6, size=n // 8).astype(np.float32) * T
    x[n // 8 : n // 8 + 5] = T
    return rng.permutation(x).astype(np.float32).reshape(shape)


@pytest.mark.parametrize("kernel", ["c", "numpy"])
def test_histogram_on_bin_edges_is_exactly_independent_of_batching_and_sharding(kernel, monkeypatch):
    """Values on the bin edges (and exactly at T) binned on a grid that later grows land where a
    one-shot binning puts them: a shard's histogram merged into another's, or batches binned as the
    range widens, give the one-shot counts exactly (a sharded audit's histograms equal a local one's)."""
    from qaudit.pipeline import kernels

    if kernel == "c" and kernels.compiled is None:
        pytest.skip("qaudit's C kernels are not built")
    monkeypatch.setenv(kernels.ENV, kernel)
    rng = np.random.default_rng(7)
    # ranges growing batch by batch (T = 1, 2, 4, 8), 3 channels, values on the fine edges of each
    parts = [_edge_values(rng, T, 3 * 4096, (4, 3, 1024)) for T in (1.0, 2.0, 4.0, 8.0, 1.0)]
    x = np.concatenate(parts)
    one = _hist_of([x], axis=1)
    # the exact bins of each value on the final grid, in float64 (no rounding: a power-of-two scale)
    fine = np.minimum(np.floor(x.astype(np.float64) * 2048 / (2 * one.T)).astype(np.int64) + 1024, 2047)
    np.testing.assert_array_equal(one.hist, np.bincount(fine.ravel(), minlength=2048))
    per_channel = np.moveaxis(fine // 8, 1, 0).reshape(3, -1)
    np.testing.assert_array_equal(one.ch_hist, np.stack([np.bincount(c, minlength=256) for c in per_channel]))
    batched = _hist_of(parts, axis=1)
    shards = [_hist_of(parts[i : i + 2], axis=1) for i in range(0, len(parts), 2)]
    merged = RangeHistogram()
    for s in shards[::-1]:  # any order
        merged.merge(s)
    for h in (batched, merged):
        assert h.T == one.T and h.count == one.count and (h.min, h.max) == (one.min, one.max)
        np.testing.assert_array_equal(h.hist, one.hist)
        np.testing.assert_array_equal(h.ch_hist, one.ch_hist)
        np.testing.assert_array_equal(h.ch_at_max, one.ch_at_max)
        np.testing.assert_array_equal(h.ch_at_min, one.ch_at_min)


def test_merging_an_all_zero_histogram_into_a_wider_one():
    zeros = _hist_of([np.zeros((2, 3, 4), np.float32)], axis=1)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 11
    want = _hist_of([np.zeros((2, 3, 4), np.float32), x], axis=1)
    got = _hist_of([x], axis=1).merge(zeros)
    np.testing.assert_array_equal(got.hist, want.hist)
    np.testing.assert_array_equal(got.ch_hist, want.ch_hist)


def test_output_accumulators_merge_as_one_over_every_batch():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(40, 5))
    y = x + rng.normal(scale=0.1, size=x.shape)
    labels = rng.integers(0, 5, size=40)
    batches = [(a, a + 5) for a in range(0, 40, 5)]
    one = OutputAccumulator("out")
    for a, b in batches:  # the same batches, seen by one accumulator or by three shards of them
        one.update(x[a:b], y[a:b], labels[a:b])
    parts = [OutputAccumulator("out") for _ in range(3)]
    for acc, shard in zip(parts, (batches[:1], batches[1:6], batches[6:])):
        for a, b in shard:
            acc.update(x[a:b], y[a:b], labels[a:b])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    got, want = merged.result(), one.result()
    for k in ("top1_agreement", "acc_fp32", "acc_int8", "acc_drop_pct", "max_abs_error", "kind"):
        assert got[k] == want[k], k
    for k in ("qce", "qkl", "qmse", "sqnr_db", "rel_error"):
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    with pytest.raises(ValueError, match="differently"):
        OutputAccumulator("out", probabilities=True).merge(one)


def test_clip_counters_merge():
    a, b = ClipCounter(-1.0, 1.0), ClipCounter(-1.0, 1.0)
    a.update(np.array([-2.0, 0.0, 3.0]))
    b.update(np.array([0.5, 1.5]))
    assert a.merge(b).fraction == 3 / 5
