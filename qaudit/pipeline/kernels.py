"""The per-value loops of calibration and measurement: compiled, or numpy.

Each operation has two implementations with one signature, side by side
below: its numpy reference (``_np_<op>``) and its C loop (``_c_<op>``, in
``_kernels.c``). ``_c_<op>`` checks, in that one place, whether the C loop can
take the input (dtype, contiguity, shape, range) and hands anything else to
the numpy reference. :data:`numpy_reference` and :data:`compiled` gather them
(``compiled`` is ``None`` when the extension is not built); the module-level
function of each name runs the implementation :func:`selected` picks. The
pipeline calls only those functions, so no call site knows or branches on
which one runs (the seam of coverage.py's CTracer and PyTracer).

* ``channel_minmax(m)``: each channel's min and max of ``[pre, C, post]`` (NaN propagates)
* ``nan_minmax(values)``: ``np.nanmin`` and ``np.nanmax``
* ``abs_histogram(values, edges)``: ``np.histogram(|values|, bins=edges)[0]``
* ``uniform_histogram(values, bins, range_)``: ``np.histogram(values, bins, range=range_)``
  (ORT's signed histograms: Entropy, Distribution)
* ``bin_values(m, T, hist, ch_hist, cmin, cmax)``: a range histogram's bins, and
  each channel's count at its extremes
* ``error_sums(x, q, scale, zero_point, ...)``: ``sum x^2``, ``sum e^2`` (also of
  an isolated twin), the clip count, the isolated error of the clipped values and
  the codes the isolated twin uses

``_kernels.c`` is built by ``pip install`` when a C compiler is there
(``setup.py``: an optional extension). It does in one pass, without holding
the GIL, what numpy does in 5 to 8 passes (temporaries for ``|x|``, bin
indices, errors, squares) while holding it in ``np.bincount``. The statistics
are the same either way: histograms and counts identical, sums of squares
equal to ~1e-7 relative (double in C, numpy's float32 pairwise sums);
``tests/pipeline/test_kernels.py`` holds the two side by side, for every
operation in :data:`OPERATIONS`.

Selection, ``QAUDIT_KERNELS``: unset or ``auto`` uses the C loops when they
are built, ``numpy`` uses numpy although they are, ``c`` fails (ConfigError)
when they are not (CI, benchmarks). The variable is read each time an
operation runs (a dictionary look-up beside a loop over a whole tensor), not
at import: importing qaudit never fails on it, and one process can run both
implementations in turn (the tests do). The audit calls :func:`name` before
any work, so a bad value fails there, and records it in the report
(``meta.kernels``); changing the variable while an audit runs is not supported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from qaudit.errors import ConfigError

try:
    from qaudit.pipeline import _kernels as _c
except ImportError:  # not built: no compiler at install time
    _c = None

ENV = "QAUDIT_KERNELS"


def _is_c_array(a: np.ndarray, *dtypes) -> bool:
    """``a`` is a C-contiguous array of one of ``dtypes``: what the C loops read and write."""
    return isinstance(a, np.ndarray) and a.dtype in dtypes and a.flags.c_contiguous


# ------------------------------------------------------------- channel_minmax


def _np_channel_minmax(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return m.min(axis=(0, 2)), m.max(axis=(0, 2))


def _c_channel_minmax(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # (empty: numpy raises, C would give +inf/-inf)
    if not (_is_c_array(m, np.float32) and m.ndim == 3 and m.size > 0):
        return _np_channel_minmax(m)
    cmin, cmax = np.empty(m.shape[1], dtype=np.float32), np.empty(m.shape[1], dtype=np.float32)
    _c.minmax(m, m.shape[0], m.shape[2], cmin, cmax, False)
    return cmin, cmax


# ------------------------------------------------------------- nan_minmax


def _np_nan_minmax(values: np.ndarray) -> tuple[np.generic, np.generic]:
    return np.nanmin(values), np.nanmax(values)


def _c_nan_minmax(values: np.ndarray) -> tuple[np.generic, np.generic]:
    if not (_is_c_array(values, np.float32) and values.size > 0):
        return _np_nan_minmax(values)
    extremes = np.empty(2, dtype=np.float32)
    _c.minmax(values, 1, values.size, extremes[:1], extremes[1:], True)
    return extremes[0], extremes[1]


# ------------------------------------------------------------- abs_histogram


def _np_abs_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # numpy sorts every 64Ki-value block to histogram on explicit edges (docs/ort-quirks.md #23)
    return np.histogram(np.absolute(values), bins=edges)[0]


def _c_abs_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # float32 edges only: numpy compares float32 values on float64 edges in float64
    if not (_is_c_array(values, np.float32) and _is_c_array(edges, np.float32) and edges.ndim == 1 and edges.size >= 2):
        return _np_abs_histogram(values, edges)
    counts = np.zeros(edges.size - 1, dtype=np.int64)
    _c.abs_histogram(values, edges, counts)
    return counts


# ------------------------------------------------------------- uniform_histogram


def _np_uniform_histogram(values: np.ndarray, bins: int, range_: tuple) -> tuple[np.ndarray, np.ndarray]:
    return np.histogram(values, bins, range=range_)


def _c_uniform_histogram(values: np.ndarray, bins: int, range_: tuple) -> tuple[np.ndarray, np.ndarray]:
    # numpy's own edges (np.histogram_bin_edges on no values: the dtype of the range and the values);
    # numpy bins on them with a uniform guess corrected by one step, the C loop by as many as it
    # takes: the same bins (tests/pipeline/test_kernels.py). float32 edges only, as abs_histogram
    if not _is_c_array(values, np.float32):
        return _np_uniform_histogram(values, bins, range_)
    edges = np.histogram_bin_edges(values[:0], bins, range=range_)
    if not (edges.dtype == np.float32 and edges.size >= 2):
        return _np_uniform_histogram(values, bins, range_)
    counts = np.zeros(edges.size - 1, dtype=np.int64)
    _c.abs_histogram(values, edges, counts, False)
    return counts, edges


# ------------------------------------------------------------- bin_values

#: Above this many (channel x fine bin) counters per batch, channel histograms
#: are binned separately on the coarse grid instead of folded from the fine one.
_JOINT_LIMIT = 1 << 22


def _np_bin_values(m, T, hist, ch_hist, cmin, cmax) -> tuple[np.ndarray, np.ndarray]:
    n_min, n_max = _count_extremes(m, cmin), _count_extremes(m, cmax)
    C = m.shape[1]
    bins, channel_bins = hist.shape[0], ch_hist.shape[1]
    if T == 0.0:  # all zeros so far: everything in the middle bin
        hist[bins // 2] += m.size
        ch_hist[:, channel_bins // 2] += m.size // C
        return n_min, n_max
    # fine bin = floor(x * bins / 2T) + bins / 2: exact, the scale being a power of two
    # (T is), so a value's bin on a grid 2T is its bin on T merged pairwise, and the
    # histogram does not depend on how the data was batched (RangeHistogram._grow).
    # Only x == T reaches ``bins`` and is clamped into the last bin.
    scale = np.float32(bins / (2 * T))
    t = m * scale
    np.floor(t, out=t)
    if scale < 1:  # a tiny negative value may underflow to -0 (floor -1, not 0)
        t[(t == 0) & (m < 0)] = -1
    t += np.float32(bins // 2)
    np.minimum(t, np.float32(bins - 1), out=t)
    fine = t.astype(np.int32)
    del t
    shift = int(math.log2(bins // channel_bins))
    if C == 1:
        h = np.bincount(fine.ravel(), minlength=bins)
        hist += h
        ch_hist[0] += h.reshape(channel_bins, -1).sum(axis=1)
    elif C * bins <= min(m.size, _JOINT_LIMIT):
        # joint (channel, fine bin) counts, folded into both histograms; only
        # when there are fewer counters than values (the cost is C * bins)
        fine += (np.arange(C, dtype=np.int32) * bins)[None, :, None]
        h = np.bincount(fine.ravel(), minlength=C * bins).reshape(C, bins)
        hist += h.sum(axis=0)
        ch_hist += h.reshape(C, channel_bins, -1).sum(axis=2)
    else:
        hist += np.bincount(fine.ravel(), minlength=bins)
        fine >>= shift
        fine += (np.arange(C, dtype=np.int32) * channel_bins)[None, :, None]
        ch_hist += np.bincount(fine.ravel(), minlength=C * channel_bins).reshape(C, channel_bins)
    return n_min, n_max


def _count_extremes(m: np.ndarray, ext: np.ndarray) -> np.ndarray:
    """How many values of each channel of ``m`` ([pre, C, post]) equal that channel's ``ext``.

    Every channel holds its own extreme at least once, so when the whole tensor
    has exactly C matches each channel has one: a flat count (fast) settles the
    common case, and the per-channel count (4x slower) runs only for tensors with
    repeated extremes (a ReLU's zeros, a clip's bounds) or NaN.
    """
    eq = m == ext[None, :, None]
    if np.count_nonzero(eq) == m.shape[1] and not np.isnan(ext).any():  # (a NaN channel matches nothing)
        return np.ones(m.shape[1], dtype=np.int64)
    return np.count_nonzero(eq, axis=(0, 2))


def _c_bin_values(m, T, hist, ch_hist, cmin, cmax) -> tuple[np.ndarray, np.ndarray]:
    # 0 < T < inf (T == 0: the middle bin), at most 2**20 fine bins. The values'
    # side of the contract (finite, |x| <= T) the loop checks itself: it raises
    # where numpy would count garbage or fail on negative bins.
    if not (
        _is_c_array(m, np.float32)
        and m.ndim == 3
        and _is_c_array(hist, np.int64)
        and _is_c_array(ch_hist, np.int64)
        and _is_c_array(cmin, np.float32)
        and _is_c_array(cmax, np.float32)
        and hist.size <= 1 << 20
        and 0.0 < T < math.inf
    ):
        return _np_bin_values(m, T, hist, ch_hist, cmin, cmax)
    n_min, n_max = np.empty(m.shape[1], dtype=np.int64), np.empty(m.shape[1], dtype=np.int64)
    _c.bin_values(m, m.shape[0], m.shape[2], T, hist, ch_hist, cmin, cmax, n_min, n_max)
    return n_min, n_max


# ------------------------------------------------------------- error_sums


def _np_error_sums(x, q, scale, zero_point, axis=None, q_isolated=None, limits=None, codes=None, code_min=0):
    # metrics' own formulas (metrics imports this module, hence here)
    from qaudit.pipeline.metrics import ClipCounter, dequantize, square_sum

    flat = np.ascontiguousarray(x, dtype=np.float32).ravel()

    def errors(codes):
        x_hat = dequantize(codes, scale, zero_point, axis).reshape(x.shape)
        return flat - x_hat.ravel()

    outside = outside_mask = None
    if limits is not None:
        clip = ClipCounter(*limits)
        clip.update(x)
        outside = clip.outside
        outside_mask = (flat < np.float32(limits[0])) | (flat > np.float32(limits[1]))
    sum_e2_isolated = sum_e2_clipped = None
    if q_isolated is not None:
        e_iso = errors(q_isolated)
        sum_e2_isolated = square_sum(e_iso)
        if outside_mask is not None:
            sum_e2_clipped = square_sum(e_iso[outside_mask])
        if codes is not None:
            idx = np.asarray(q_isolated).reshape(-1).astype(np.int64) - code_min
            codes[np.bincount(idx, minlength=codes.size) > 0] = 1
    return square_sum(flat), square_sum(errors(q)), sum_e2_isolated, outside, sum_e2_clipped


def _c_error_sums(x, q, scale, zero_point, axis=None, q_isolated=None, limits=None, codes=None, code_min=0):
    # a per-tensor encoding; float32 values against uint8/int8 twins (of any
    # layout: they are made contiguous) holding as many values
    def twin(codes):
        return isinstance(codes, np.ndarray) and codes.dtype in (np.uint8, np.int8) and codes.size == x.size

    if not (
        isinstance(x, np.ndarray)
        and x.dtype == np.float32
        and twin(q)
        and (q_isolated is None or (twin(q_isolated) and q_isolated.dtype == q.dtype))
        and np.size(scale) == 1
        and np.size(zero_point) == 1
        and (
            codes is None or (_is_c_array(codes, np.uint8) and codes.size == 256 and code_min == np.iinfo(q.dtype).min)
        )
    ):
        return _np_error_sums(x, q, scale, zero_point, axis, q_isolated, limits, codes, code_min)
    flat = [np.ascontiguousarray(a).reshape(-1) if a is not None else None for a in (x, q, q_isolated)]
    s = float(np.asarray(scale, dtype=np.float32).reshape(()))
    zp = float(np.asarray(zero_point).reshape(()))
    q_min, q_max = limits if limits is not None else (None, None)
    sum_x2, sum_e2, sum_e2_isolated, outside, clipped = _c.error_sums(
        flat[0], flat[1], s, zp, flat[2], q_min, q_max, codes
    )
    both = q_isolated is not None and limits is not None
    return (
        sum_x2,
        sum_e2,
        sum_e2_isolated if q_isolated is not None else None,
        outside if limits is not None else None,
        clipped if both else None,
    )


# ------------------------------------------------------------- the two implementations


@dataclass(frozen=True)
class Kernels:
    """One implementation of every per-value operation (the signatures are the
    module-level functions')."""

    name: str  # "c" or "numpy", as the report records it
    channel_minmax: Callable
    nan_minmax: Callable
    abs_histogram: Callable
    uniform_histogram: Callable
    bin_values: Callable
    error_sums: Callable


#: The operations, in the order above: the list the tests go through.
OPERATIONS: tuple[str, ...] = tuple(f.name for f in fields(Kernels) if f.name != "name")

numpy_reference = Kernels(
    name="numpy",
    channel_minmax=_np_channel_minmax,
    nan_minmax=_np_nan_minmax,
    abs_histogram=_np_abs_histogram,
    uniform_histogram=_np_uniform_histogram,
    bin_values=_np_bin_values,
    error_sums=_np_error_sums,
)
#: The C loops, each handing what it cannot take to its numpy reference; ``None`` when not built.
compiled = (
    Kernels(
        name="c",
        channel_minmax=_c_channel_minmax,
        nan_minmax=_c_nan_minmax,
        abs_histogram=_c_abs_histogram,
        uniform_histogram=_c_uniform_histogram,
        bin_values=_c_bin_values,
        error_sums=_c_error_sums,
    )
    if _c is not None
    else None
)


def selected() -> Kernels:
    """The implementation ``QAUDIT_KERNELS`` selects: :data:`compiled` or :data:`numpy_reference`."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice in ("", "auto"):
        return compiled if compiled is not None else numpy_reference
    if choice == "numpy":
        return numpy_reference
    if choice == "c":
        if compiled is None:
            raise ConfigError(
                f"{ENV}=c but qaudit's C kernels are not built: reinstall qaudit where a C compiler is available "
                f"(pip install --force-reinstall --no-deps .), or unset {ENV}"
            )
        return compiled
    raise ConfigError(f"{ENV} must be c, numpy or auto, not {os.environ[ENV]!r}")


def name() -> str:
    """``"c"`` or ``"numpy"``: which loops this run uses (recorded in the report)."""
    return selected().name


# ------------------------------------------------------------- the operations


def channel_minmax(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's min and max of ``m`` ([pre, C, post], not empty), as
    ``m.min(axis=(0, 2))`` and ``m.max(axis=(0, 2))``: a channel holding NaN gets NaN."""
    return selected().channel_minmax(m)


def nan_minmax(values: np.ndarray) -> tuple[np.generic, np.generic]:
    """``np.nanmin(values), np.nanmax(values)`` (not empty; all NaN gives NaN)."""
    return selected().nan_minmax(values)


def abs_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(np.absolute(values), bins=edges)[0]``: int64 counts,
    ``len(edges) - 1`` of them; NaN and values outside the edges are not counted."""
    return selected().abs_histogram(values, edges)


def uniform_histogram(values: np.ndarray, bins: int, range_: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram(values, bins, range=range_)``: int64 counts and numpy's edges; NaN and
    values outside the range are not counted."""
    return selected().uniform_histogram(values, bins, range_)


def bin_values(
    m: np.ndarray, T: float, hist: np.ndarray, ch_hist: np.ndarray, cmin: np.ndarray, cmax: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Add ``m`` ([pre, C, post], float32, ``max|m| <= T``) to a range histogram on ``[-T, T]``.

    Each value's fine bin ``min(floor(x * (bins / 2T)) + bins / 2, bins - 1)`` (exact:
    the scale is a power of two) is counted in ``hist`` ([bins]), its coarse bin (the fine bin
    ``// (bins / channel_bins)``) in its channel's row of ``ch_hist`` ([C,
    channel_bins]); with ``T == 0`` every value is in the middle bin. Returns
    how many values of each channel equal ``cmin`` and ``cmax`` (that
    channel's min and max).
    """
    return selected().bin_values(m, T, hist, ch_hist, cmin, cmax)


def error_sums(
    x: np.ndarray,
    q: np.ndarray,
    scale,
    zero_point,
    axis: int | None = None,
    q_isolated: np.ndarray | None = None,
    limits: tuple[float, float] | None = None,
    codes: np.ndarray | None = None,
    code_min: int = 0,
) -> tuple[float, float, float | None, int | None, float | None]:
    """``(sum x^2, sum e^2, sum e_isolated^2, outside, sum e_isolated^2 outside)`` of ``x`` and its twin ``q``.

    ``e = x - dequantize(q, scale, zero_point, axis)`` in float32 (``axis``: the
    channel axis of a per-channel encoding); ``q_isolated`` (or None: its sum is
    None) is a second twin measured against the same ``x``; ``outside``: how many
    values of ``x`` lie below ``limits[0]`` or above ``limits[1]`` (None without
    limits), as :class:`~qaudit.pipeline.metrics.ClipCounter` counts them; the last
    value: the part of ``sum e_isolated^2`` from those values (None without both).
    ``codes`` (or None): a uint8 array of one flag per integer code of the type,
    ``codes[c - code_min]`` set to 1 for every code ``c`` that ``q_isolated`` holds.
    """
    return selected().error_sums(x, q, scale, zero_point, axis, q_isolated, limits, codes, code_min)
