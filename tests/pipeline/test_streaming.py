"""Streaming equals whole-array: the speed-ups of the measuring stage change how
values are batched, shared out over threads and counted, never the result.

Each test compares the fast path with an independent computation: the scalar
percentile code, numpy on the concatenated data, or one meter over everything.
"""

from __future__ import annotations

import numpy as np
import pytest

from qaudit.pipeline.kernels import _count_extremes
from qaudit.pipeline.match import Encoding, Matching, Twin
from qaudit.pipeline.measure import ActivationMeter
from qaudit.pipeline.metrics import ClipCounter, RangeHistogram, dequantize
from qaudit.pipeline.parallel import lockstep, shares


def _hist(batches, axis=1):
    h = RangeHistogram()
    for b in batches:
        h.update(b, axis)
    return h


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_channel_ranges_equal_the_scalar_quantiles(seed):
    rng = np.random.default_rng(seed)
    C = int(rng.integers(1, 40))
    x = rng.standard_t(3, size=(8, C, 5, 6)).astype(np.float32)
    if seed % 2:
        x = np.maximum(x, 0)  # point masses at 0 (the atoms path)
    if seed % 3 == 0:
        x = np.minimum(x, 1.5)  # and at the max
    x[:, 0] = 0.0  # one constant channel
    h = _hist(np.split(x, 4))
    for p in (0.0, 1.0, 5.0, 50.0):
        want = []
        for c, hc in enumerate(h.ch_hist):
            args = (h.ch_min[c], h.ch_max[c], h.ch_at_min[c], h.ch_at_max[c])
            want.append(h._quantile(hc, 1 - p / 100, *args) - h._quantile(hc, p / 100, *args))
        np.testing.assert_array_equal(h.channel_ranges(p), np.array(want))


def test_extreme_counts_by_hand():
    m = np.array([[[0, 0, 1, 2], [3, 1, 4, 5], [7, 7, 7, 7]]], np.float32)  # [1, 3, 4]
    np.testing.assert_array_equal(_count_extremes(m, m.min(axis=(0, 2))), [2, 1, 4])
    np.testing.assert_array_equal(_count_extremes(m, m.max(axis=(0, 2))), [1, 1, 4])
    # every channel's extreme once: the flat count settles it
    u = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    np.testing.assert_array_equal(_count_extremes(u, u.min(axis=(0, 2))), [1, 1, 1])
    # a NaN channel matches nothing, and must not make the others look unique
    n = np.array([[[np.nan, 1, 2], [0, 0, 5], [1, 2, 3]]], np.float32)
    np.testing.assert_array_equal(_count_extremes(n, n.min(axis=(0, 2))), [0, 2, 1])


def test_clip_counter_equals_numpy():
    rng = np.random.default_rng(7)
    c = ClipCounter(-1.0, 2.0)
    parts = [rng.normal(0.5, s, size=(50,)).astype(np.float32) for s in (0.1, 1.0, 3.0, 0.2)]
    for p in parts:
        c.update(p)
    x = np.concatenate(parts)
    assert c.outside == np.count_nonzero((x < -1.0) | (x > 2.0)) and c.outside > 0
    assert c.count == x.size


def _matching(shapes: dict[str, tuple]) -> Matching:
    enc = Encoding(np.array(0.05, np.float32), np.array(128, np.uint8), None, "uint8")
    return Matching({n: Twin(n, n + "_q", enc, "p_" + n) for n in shapes}, [], {})


def _data(shapes, n_batches, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_batches):
        fp32 = {}
        for name, shape in shapes.items():
            x = np.clip(rng.standard_t(4, size=shape) * 2, -30, 30).astype(np.float32)
            if k == 0:
                x.flat[0] = 40.0  # the first batch holds the largest |x|: the grid never grows
            fp32[name] = np.maximum(x, 0) if name.startswith("relu") else x
        quant = {n + "_q": np.clip(np.round(v / 0.05) + 128, 0, 255).astype(np.uint8) for n, v in fp32.items()}
        out.append((fp32, quant))
    return out


SHAPES = {
    "big": (2, 8, 64, 64),  # histogrammed at once
    "relu_small": (2, 384, 3, 3),  # held back: 6,912 values per batch against 786,432 counters
    "vec": (2, 10),  # rank 2: channel axis last
    "scalarish": (5,),  # rank 1: no channel axis
}


def test_meter_held_back_batches_equal_one_histogram_of_everything():
    data = _data(SHAPES, 7)
    meter = ActivationMeter(_matching(SHAPES))
    # the isolated graph's twins: other integers than the accumulated graph's
    iso = [{k: np.clip(q.astype(int) + 1, 0, 255).astype(np.uint8) for k, q in quant.items()} for _, quant in data]
    for (fp32, quant), q_iso in zip(data, iso):
        meter.update(fp32, quant, isolated=q_iso)
    assert meter._pending  # small tensors are waiting ...
    meter.flush()
    assert not meter._pending  # ... until flushed
    for name in SHAPES:
        x = np.concatenate([fp32[name] for fp32, _ in data])
        axis = {4: 1, 2: 1, 1: None}[x.ndim]
        whole = _hist([x], axis)
        h = meter.hist[name]
        assert h.count == x.size and h.T == whole.T
        np.testing.assert_array_equal(h.hist, whole.hist)
        np.testing.assert_array_equal(h.ch_hist, whole.ch_hist)
        assert h.clipped_range(1.0) == whole.clipped_range(1.0)
        np.testing.assert_array_equal(h.channel_ranges(1.0), whole.channel_ranges(1.0))
        # and against numpy: the errors of every batch summed
        x_hat = np.concatenate([dequantize(q[name + "_q"], 0.05, 128) for _, q in data])
        e = x.astype(np.float64) - x_hat
        assert meter.err[name].sum_e2 == pytest.approx(np.sum(e * e), rel=1e-6)
        assert meter.err[name].sum_x2 == pytest.approx(np.sum(x.astype(np.float64) ** 2), rel=1e-6)
        e_iso = x.astype(np.float64) - np.concatenate([dequantize(q[name + "_q"], 0.05, 128) for q in iso])
        assert meter.iso[name].sum_e2 == pytest.approx(np.sum(e_iso * e_iso), rel=1e-6)
        assert meter.iso[name].sum_x2 == meter.err[name].sum_x2 and meter.iso[name].count == x.size
        assert meter.clip[name].outside == np.count_nonzero((x < -6.4) | (x > 6.35))


def test_meters_on_threads_equal_one_meter():
    """Shares of the twins measured on separate threads (lockstep with several
    measure functions), then combined, give exactly one meter's numbers; the
    isolated error reuses the accumulated pass's sum(x^2) correctly."""
    data = _data(SHAPES, 9, seed=1)
    matching = _matching(SHAPES)
    one = ActivationMeter(matching)
    for fp32, quant in data:
        one.update(fp32, quant, isolated=quant)
    one.flush()

    sizes = {n: int(np.prod(s)) * 4 for n, s in SHAPES.items()}
    parts = shares(sizes, 2)
    assert sorted(sum(parts, [])) == sorted(SHAPES) and len(parts) == 2
    meters = [ActivationMeter(matching, p) for p in parts]
    order = [[] for _ in meters]

    def measurer(i):
        def measure(feeds, outs):
            fp32, quant = outs
            meters[i].update(fp32, quant, isolated=quant)
            order[i].append(int(feeds["k"][0]))

        return measure

    batches = ({"k": np.array([k])} for k in range(len(data)))
    lockstep(lambda feeds: data[int(feeds["k"][0])], batches, [measurer(0), measurer(1)])
    assert order == [list(range(9))] * 2  # each share saw every batch, in order
    both = ActivationMeter.combine(meters)
    for name in SHAPES:
        np.testing.assert_array_equal(both.hist[name].hist, one.hist[name].hist)
        assert both.hist[name].clipped_range(1.0) == one.hist[name].clipped_range(1.0)
        assert vars(both.err[name]) == vars(one.err[name])
        assert vars(both.iso[name]) == vars(one.iso[name])
        assert both.iso[name].sum_x2 == both.err[name].sum_x2


def test_shares_balance_sizes():
    sizes = {"a": 100, "b": 60, "c": 50, "d": 10, "e": 5}
    parts = shares(sizes, 2)
    loads = sorted(sum(sizes[n] for n in p) for p in parts)
    assert loads == [110, 115]
    assert shares(sizes, 1) == [["a", "b", "c", "d", "e"]]
    assert shares({"a": 1}, 4) == [["a"]]
