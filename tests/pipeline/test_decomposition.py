"""The isolated error's decomposition (docs/metrics.md): clipping + rounding = the isolated error, and grid use.

Identity: for an encoding with representable range ``[q_min, q_max]`` the
elements split into those inside and those outside it, so
``sum(e^2) = sum_outside(e^2) + sum_inside(e^2)`` exactly; outside, the code is
the end of the grid, which represents ``q_min``/``q_max`` exactly, so the clipping
part is ``sum((x - clamp(x, q_min, q_max))^2)``; inside, every ``|e| <= scale / 2``.
Each case quantizes by hand in numpy and checks qaudit's numbers against that.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

import qaudit
from qaudit.options import INTEGER_RANGES
from qaudit.pipeline import kernels
from qaudit.pipeline.metrics import ErrorDecomposition

from ..remedy import planted
from .test_kernels import mode  # noqa: F401  (the fixture: each test with the C loops and with numpy)

TYPES = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16}


def _encoding(dtype: str, rmin: float, rmax: float, symmetric: bool):
    """ORT's formula (quant_utils.compute_scale_zp): scale and zero point of the range, float32 scale."""
    qmin, qmax = INTEGER_RANGES[dtype]
    if symmetric:
        r = max(abs(rmin), abs(rmax))
        rmin, rmax = -r, r
        scale = np.float32(2 * r / (qmax - qmin))
        zp = (qmin + qmax + 1) // 2 if qmin == 0 else 0
    else:
        scale = np.float32((rmax - rmin) / (qmax - qmin))
        zp = int(round(qmin - rmin / float(scale)))
    return scale, zp


def _by_hand(x, dtype, scale, zp):
    qmin, qmax = INTEGER_RANGES[dtype]
    q = np.clip(np.round(x / scale) + zp, qmin, qmax).astype(TYPES[dtype])
    lo, hi = float(scale) * (qmin - zp), float(scale) * (qmax - zp)
    x_hat = (q.astype(np.float32) - np.float32(zp)) * scale
    e = (x - x_hat).astype(np.float64).ravel()
    outside = ((x < np.float32(lo)) | (x > np.float32(hi))).ravel()
    return q, (lo, hi), e, outside


CASES = [
    ("uint8", False, "normal"),
    ("int8", False, "normal"),
    ("uint16", False, "normal"),
    ("int16", False, "normal"),
    ("uint8", True, "normal"),
    ("int8", True, "normal"),
    ("int16", True, "normal"),
    ("uint8", True, "relu"),
    ("int8", True, "relu"),
    ("uint16", True, "relu"),
]


@pytest.mark.usefixtures("mode")
@pytest.mark.parametrize(("dtype", "symmetric", "data"), CASES)
def test_clipping_plus_rounding_is_the_isolated_error(dtype, symmetric, data):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 8, 16, 16)) * 2).astype(np.float32)
    if data == "relu":
        x = np.maximum(x, 0)
    scale, zp = _encoding(dtype, -3.0 if data == "normal" else 0.0, 3.0, symmetric)  # |x| reaches ~9: clips
    q, limits, e, outside = _by_hand(x, dtype, scale, zp)
    qmin = INTEGER_RANGES[dtype][0]
    acc = ErrorDecomposition(*INTEGER_RANGES[dtype])
    accurate = q.copy()  # the accumulated twin: anything; the decomposition is of the isolated one
    _, _, sum_e2, n_out, sum_clip = kernels.error_sums(
        x, accurate, scale, zp, q_isolated=q, limits=limits, codes=acc.codes, code_min=qmin
    )
    acc.add(sum_e2, sum_clip, x.size)
    assert n_out == np.count_nonzero(outside) > 0
    total, clip = math.fsum(e * e), math.fsum(e[outside] ** 2)
    rounding = math.fsum(e[~outside] ** 2)
    assert sum_e2 == pytest.approx(total, rel=1e-6)
    assert sum_clip == pytest.approx(clip, rel=1e-6)
    assert clip + rounding == pytest.approx(total, rel=1e-12)  # the identity
    clamped = np.clip(x.astype(np.float64), *limits)
    assert clip == pytest.approx(math.fsum(((x - clamped) ** 2).ravel()[outside]), rel=1e-5)  # grid ends exact
    assert np.abs(e[~outside]).max() <= float(scale) / 2 * (1 + 1e-5)
    assert acc.clip_error_share == pytest.approx(clip / total, rel=1e-6)
    n_codes = 2 ** (8 if "8" in dtype else 16)
    assert acc.codes.size == n_codes
    assert acc.codes_used == np.unique(q).size
    assert acc.grid_use == np.unique(q).size / n_codes
    if data == "relu" and symmetric:  # a one-sided tensor on a symmetric grid: at most half the codes (+ zero)
        assert acc.grid_use <= 0.5 + 1 / n_codes


@pytest.mark.usefixtures("mode")
def test_decomposition_merges_exactly():
    """Shards of batches measured apart and merged give one pass's counts exactly, its sums to rounding."""
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((2, 8, 8, 8)) * (1 + i)).astype(np.float32) for i in range(6)]
    scale, zp = _encoding("uint8", -2.0, 2.0, False)
    limits = _by_hand(batches[0], "uint8", scale, zp)[1]

    def measure(bs):
        acc = ErrorDecomposition(0, 255)
        for x in bs:
            q = _by_hand(x, "uint8", scale, zp)[0]
            _, _, s, _, c = kernels.error_sums(x, q, scale, zp, q_isolated=q, limits=limits, codes=acc.codes)
            acc.add(s, c, x.size)
        return acc

    whole, a, b = measure(batches), measure(batches[::2]), measure(batches[1::2])
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.codes, whole.codes)
    assert merged.count == whole.count and merged.codes_used == whole.codes_used
    assert merged.sum_e2 == pytest.approx(whole.sum_e2, rel=1e-12)
    assert merged.sum_e2_clip == pytest.approx(whole.sum_e2_clip, rel=1e-12)
    assert ErrorDecomposition(0, 255).grid_use is None and ErrorDecomposition(0, 255).clip_error_share is None


def test_the_audits_decomposition_of_an_input_by_hand(tmp_path):
    """The graph input's isolated twin is QuantizeLinear(x): qaudit's row equals numpy's
    quantization of the evaluation data with the encoding the row reports."""
    path = tmp_path / "m.onnx"
    onnx.save(planted.healthy(), path)
    x = planted.inputs()
    report = qaudit.audit(path, {"x": x}, overrides={"tensors": {"x": {"rmin": -1.0, "rmax": 1.5}}})
    row = next(r for r in report.layers if r.name == "x")
    q, limits, e, outside = _by_hand(x, "uint8", np.float32(row.scale), row.zero_point)
    assert (row.q_min, row.q_max) == pytest.approx(limits)
    assert row.clip_error_share == pytest.approx(math.fsum(e[outside] ** 2) / math.fsum(e * e), rel=1e-5)
    assert row.clip_error_share > 0.9  # |x| reaches 4: clipping dominates
    assert row.codes_used == np.unique(q).size and row.grid_use == np.unique(q).size / 256
    # a report read back keeps them
    again = qaudit.report.from_json(qaudit.report.to_json(report))
    assert (again.layers[0].clip_error_share, again.layers[0].grid_use) == (row.clip_error_share, row.grid_use)
