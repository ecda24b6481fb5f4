"""Stage 5: the metrics of docs/metrics.md as small numpy functions and streaming accumulators.

Every accumulator is mergeable (``merge``) and holds only sums, counts,
min/max and fixed-size histograms, so memory does not grow with the number of
samples. Formulas are in the docstrings; names match the JSON report.
"""

from __future__ import annotations

import math

import numpy as np

from qaudit.errors import DataError
from qaudit.pipeline import kernels
from qaudit.report import OUTPUT_KINDS, acc_drop_pct

# ---------------------------------------------------------------- weights


def range_stats(channel_matrix: np.ndarray) -> dict:
    """``w_min, w_max, w_range, w_precision`` of a weight given as ``[C_out, -1]``.

    ``w_precision = mean_c(range_c / w_range)`` (thesis Eq. 3.1); ``None`` when
    ``w_range == 0``.
    """
    # min and max are exact in the weight's own float type: no float64 copy of the weight
    m = np.asarray(channel_matrix)
    m = m if m.dtype in (np.float32, np.float64) else m.astype(np.float64)
    lo, hi = float(m.min()), float(m.max())
    rng = hi - lo
    ch = m.max(axis=1).astype(np.float64) - m.min(axis=1).astype(np.float64)
    prec = float(np.mean(ch / rng)) if rng > 0 else None
    return {"min": lo, "max": hi, "range": rng, "precision": prec}


def sqnr_db(sum_x2: float, sum_e2: float) -> float:
    """``10 log10(sum x^2 / sum e^2)``; ``+inf`` when ``sum e^2 == 0``
    (and ``nan`` when both are 0: no signal, no noise)."""
    if sum_e2 == 0.0:
        return math.inf if sum_x2 > 0 else math.nan
    if sum_x2 == 0.0:
        return -math.inf
    return 10.0 * math.log10(sum_x2 / sum_e2)


#: values per float64 block in :func:`_square_sums`: a big weight is not copied whole to float64
SUM_BLOCK = 1 << 22


def _square_sums(x: np.ndarray, x_hat: np.ndarray) -> tuple[float, float, int]:
    """``(sum x^2, sum (x - x_hat)^2, size)`` in float64, over blocks of :data:`SUM_BLOCK` values
    (one block, i.e. numpy's own sums, for arrays up to that size)."""
    x, x_hat = np.asarray(x).reshape(-1), np.asarray(x_hat).reshape(-1)
    sx2 = se2 = 0.0
    for i in range(0, max(x.size, 1), SUM_BLOCK):
        a = x[i : i + SUM_BLOCK].astype(np.float64)
        e = a - x_hat[i : i + SUM_BLOCK].astype(np.float64)
        sx2 += float(np.sum(a * a))
        se2 += float(np.sum(e * e))
    return sx2, se2, x.size


def sqnr_of(x: np.ndarray, x_hat: np.ndarray) -> float:
    sx2, se2, _ = _square_sums(x, x_hat)
    return sqnr_db(sx2, se2)


def qmse_of(x: np.ndarray, x_hat: np.ndarray) -> float:
    """``mean((x - x_hat)^2)``."""
    _, se2, n = _square_sums(x, x_hat)
    return se2 / n if n else float("nan")


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """``scale * (q - zero_point)`` computed in float32, never in the storage type.

    (onnxruntime 1.32's ``qdq_loss_debug._run_dequantize_linear`` subtracts the
    zero point in uint8 arithmetic, which wraps around for uint8 weights.)
    """
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point).astype(np.float32)  # integers below 2**24: exact in float32
    q = np.asarray(q)
    if scale.size > 1 or zp.size > 1:
        shape = [1] * q.ndim
        shape[axis if axis is not None else 1] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    else:
        scale, zp = scale.reshape(()), zp.reshape(())
    out = q.astype(np.float32)
    out -= zp
    out *= scale
    return out


# ---------------------------------------------------------------- streaming


def square_sum(v: np.ndarray) -> float:
    """``sum(v^2)`` of a 1-D float32 array, as a Python float.

    numpy's pairwise float32 sum: relative error ~1e-8 (measured 7e-9 on 460k
    values; ``np.einsum`` is faster but accumulates per SIMD lane: 2e-6 on the
    same data). Not np.dot: OpenBLAS splits a dot product across as many
    threads as the machine has cores, so its last bits depend on the machine
    and a gate could flap (docs/ort-quirks.md #13). Batches are summed in float64.
    """
    return float(np.sum(v * v))


class ErrorAccumulator:
    """Running ``sum x^2``, ``sum e^2``, element count: gives SQNR and QMSE."""

    def __init__(self):
        self.sum_x2 = 0.0
        self.sum_e2 = 0.0
        self.count = 0

    def update(self, x: np.ndarray, x_hat: np.ndarray, sum_x2: float | None = None) -> None:
        """Add a batch; ``sum_x2``: ``sum(x^2)`` when the caller already has it (the
        same ``x`` measured against two ``x_hat``)."""
        x = np.ascontiguousarray(x, dtype=np.float32).ravel()
        e = x - np.asarray(x_hat, dtype=np.float32).ravel()
        self.sum_x2 += square_sum(x) if sum_x2 is None else sum_x2
        self.sum_e2 += square_sum(e)
        self.count += x.size

    def add(self, sum_x2: float, sum_e2: float, count: int) -> None:
        """Add sums computed elsewhere (``kernels.error_sums``)."""
        self.sum_x2 += sum_x2
        self.sum_e2 += sum_e2
        self.count += count

    def merge(self, other: ErrorAccumulator) -> ErrorAccumulator:
        self.sum_x2 += other.sum_x2
        self.sum_e2 += other.sum_e2
        self.count += other.count
        return self

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.sum_x2, self.sum_e2)

    @property
    def qmse(self) -> float:
        return self.sum_e2 / self.count if self.count else math.nan


def channel_axis(rank: int) -> int | None:
    """Channel axis of an activation (docs/metrics.md): 1 for NCHW-like (rank >= 4),
    the last axis for 2-D/3-D tensors, none below."""
    if rank >= 4:
        return 1
    if rank in (2, 3):
        return rank - 1
    return None


class RangeHistogram:
    """Streaming clipped range of a tensor and of each of its channels.

    Values are binned on one symmetric grid ``[-T, T]``: ``bins`` bins for the
    whole tensor and ``channel_bins`` for each channel. ``T`` starts at the
    power of two above the first batch's ``max|x|`` and doubles when a later
    batch exceeds it; doubling merges bins pairwise, which is exact, so the
    result does not depend on how the data is batched beyond the final ``T``.

    Percentiles interpolate linearly inside the bin where the CDF crosses and
    are clamped to the exact min/max. Bin error: a tensor percentile is within
    ``2T/bins`` of the exact one, a channel percentile within
    ``2T/channel_bins`` (``T < 2 max|x|``).
    """

    def __init__(self, bins: int = 2048, channel_bins: int = 256):
        if bins % 4 or channel_bins % 4 or bins % channel_bins or (bins // channel_bins) & (bins // channel_bins - 1):
            raise ValueError("bin counts must be multiples of 4, bins a power-of-two multiple of channel_bins")
        self.bins = bins
        self.channel_bins = channel_bins
        self.T = 0.0
        self.hist = np.zeros(bins, dtype=np.int64)
        self.ch_hist: np.ndarray | None = None  # [C, channel_bins]
        self.ch_min: np.ndarray | None = None
        self.ch_max: np.ndarray | None = None
        self.ch_at_min: np.ndarray | None = None  # how many values equal the channel min
        self.ch_at_max: np.ndarray | None = None
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    @staticmethod
    def _grow(h: np.ndarray, at_T: np.ndarray | int = 0) -> np.ndarray:
        """``h`` on the grid ``[-T, T]`` as on ``[-2T, 2T]``: bins merged pairwise, which is exact
        (a value's fine bin is ``floor(x * bins / 2T) + bins / 2``, ``kernels.bin_values``), except
        for the values equal to ``T``, clamped into the last bin: ``at_T`` (per row of ``h``) of
        them move to the bin holding ``T`` on the new grid. So the histogram of a tensor does not
        depend on how its values were batched, nor on how shards of them are merged."""
        n = h.shape[-1]
        merged = h[..., 0::2] + h[..., 1::2]
        out = np.zeros_like(h)
        out[..., n // 4 : n // 4 + n // 2] = merged
        out[..., 3 * n // 4 - 1] -= at_T
        out[..., 3 * n // 4] += at_T
        return out

    def _grow_once(self, hist, ch_hist, T, ch_max, ch_at_max):
        """``hist`` and ``ch_hist`` of a histogram on ``[-T, T]`` (its channel maxima and their counts)
        grown to ``[-2T, 2T]``."""
        at_T = np.where(ch_max == T, ch_at_max, 0) if ch_max is not None else np.zeros(1, dtype=np.int64)
        hist = self._grow(hist, int(at_T.sum()))
        ch_hist = self._grow(ch_hist, at_T) if ch_hist is not None else None
        return hist, ch_hist

    def _ensure_T(self, amax: float) -> None:
        if self.T == 0.0:
            self.T = 2.0 ** math.ceil(math.log2(amax)) if amax > 0 else 0.0
            if self.T and self.T < amax:  # float rounding at exact powers
                self.T *= 2
            return
        while amax > self.T:  # ch_max, ch_at_max: the batches binned so far (this one is binned after)
            self.hist, self.ch_hist = self._grow_once(self.hist, self.ch_hist, self.T, self.ch_max, self.ch_at_max)
            self.T *= 2

    def update(self, x: np.ndarray, axis: int | None) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        # [pre, C, post] view: no copy, channel axis in the middle
        if axis is None:
            m = x.reshape(1, 1, -1)
        else:
            m = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), x.shape[axis], -1)
        C = m.shape[1]
        if self.ch_hist is None:
            self.ch_hist = np.zeros((C, self.channel_bins), dtype=np.int64)
            self.ch_min = np.full(C, np.inf)
            self.ch_max = np.full(C, -np.inf)
            self.ch_at_min = np.zeros(C, dtype=np.int64)
            self.ch_at_max = np.zeros(C, dtype=np.int64)
        elif self.ch_hist.shape[0] != C:
            raise ValueError(f"channel count changed from {self.ch_hist.shape[0]} to {C}")
        if m.size == 0:
            return
        cmin32, cmax32 = kernels.channel_minmax(m)  # NaN propagates, as in numpy's min
        cmin, cmax = cmin32.astype(np.float64), cmax32.astype(np.float64)
        self.min = min(self.min, float(cmin.min()))
        self.max = max(self.max, float(cmax.max()))
        self.count += m.size
        amax = max(abs(self.min), abs(self.max))
        self._ensure_T(amax)  # before binning: the grid must hold this batch
        # bins, channel bins and the counts at each channel's extremes
        n_min, n_max = kernels.bin_values(m, self.T, self.hist, self.ch_hist, cmin32, cmax32)
        self.ch_at_min = _merge_atoms(self.ch_min, self.ch_at_min, cmin, n_min, np.less)
        self.ch_at_max = _merge_atoms(self.ch_max, self.ch_at_max, cmax, n_max, np.greater)
        self.ch_min = np.minimum(self.ch_min, cmin)
        self.ch_max = np.maximum(self.ch_max, cmax)

    def merge(self, other: RangeHistogram) -> RangeHistogram:
        if other.count == 0:
            return self
        if self.count == 0:
            self.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in other.__dict__.items()})
            return self
        a, b = (self, other) if self.T >= other.T else (other, self)
        bh, bch = b.hist.copy(), b.ch_hist.copy()
        t = b.T
        while t < a.T:
            if t == 0.0:  # every value of b is 0, in the middle bin on any grid
                break
            bh, bch = self._grow_once(bh, bch, t, b.ch_max, b.ch_at_max)
            t *= 2
        self.T = a.T
        self.hist = a.hist + bh
        self.ch_hist = a.ch_hist + bch
        self.ch_at_min = _merge_atoms(self.ch_min, self.ch_at_min, other.ch_min, other.ch_at_min, np.less)
        self.ch_at_max = _merge_atoms(self.ch_max, self.ch_at_max, other.ch_max, other.ch_at_max, np.greater)
        self.ch_min = np.minimum(self.ch_min, other.ch_min)
        self.ch_max = np.maximum(self.ch_max, other.ch_max)
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        return self

    def _quantile(self, h: np.ndarray, q: float, lo: float, hi: float, at_lo: int = 0, at_hi: int = 0) -> float:
        total = h.sum()
        if total == 0:
            return math.nan
        if self.T == 0.0:
            return 0.0
        # Exact answers where the quantile falls on a point mass at the min or
        # max (e.g. the zeros of a ReLU output), which binning would blur.
        if q * total <= at_lo:
            return lo
        if (1.0 - q) * total < at_hi:
            return hi
        n = h.shape[-1]
        width = 2 * self.T / n
        cdf = np.cumsum(h)
        target = q * total
        i = int(np.searchsorted(cdf, target, side="left"))
        i = min(i, n - 1)
        before = cdf[i - 1] if i > 0 else 0
        frac = (target - before) / h[i] if h[i] else 0.0
        v = -self.T + (i + frac) * width
        return float(min(max(v, lo), hi))

    def _atoms(self) -> tuple[int, int]:
        at_lo = int(self.ch_at_min[self.ch_min == self.min].sum())
        at_hi = int(self.ch_at_max[self.ch_max == self.max].sum())
        return at_lo, at_hi

    def clipped_range(self, p: float) -> tuple[float, float]:
        """(lo, hi) at the ``p`` and ``100 - p`` percentiles of all values."""
        at_lo, at_hi = self._atoms()
        return (
            self._quantile(self.hist, p / 100.0, self.min, self.max, at_lo, at_hi),
            self._quantile(self.hist, 1.0 - p / 100.0, self.min, self.max, at_lo, at_hi),
        )

    def channel_ranges(self, p: float) -> np.ndarray:
        """Per-channel clipped range ``hi_c - lo_c`` (``_quantile`` on every channel at once)."""
        lo = self._channel_quantiles(p / 100.0)
        hi = self._channel_quantiles(1.0 - p / 100.0)
        return hi - lo

    def _channel_quantiles(self, q: float) -> np.ndarray:
        """:meth:`_quantile` of each channel histogram, vectorized; the same float64 operations, so the same values."""
        h = self.ch_hist
        C, n = h.shape
        total = h.sum(axis=1)
        out = np.full(C, math.nan)
        if self.T == 0.0:
            out[total > 0] = 0.0
            return out
        target = q * total
        cdf = np.cumsum(h, axis=1)
        i = np.minimum((cdf < target[:, None]).sum(axis=1), n - 1)  # searchsorted(cdf, target, "left")
        rows = np.arange(C)
        before = np.where(i > 0, cdf[rows, np.maximum(i - 1, 0)], 0)
        hi_count = h[rows, i]
        frac = np.divide(target - before, hi_count, out=np.zeros(C), where=hi_count != 0)
        v = -self.T + (i + frac) * (2 * self.T / n)
        v = np.minimum(np.maximum(v, self.ch_min), self.ch_max)
        v = np.where(q * total <= self.ch_at_min, self.ch_min, v)
        v = np.where((q * total > self.ch_at_min) & ((1.0 - q) * total < self.ch_at_max), self.ch_max, v)
        return np.where(total > 0, v, math.nan)

    @property
    def bin_width(self) -> float:
        return 2 * self.T / self.bins

    def compact(self, max_bins: int = 128) -> tuple[float, float, list[int]] | None:
        """The tensor histogram over ``[min, max]`` in at most ``max_bins`` equal bins: ``(lo, hi, counts)``.

        The fine bins that hold the data are merged in groups of ``g`` consecutive
        bins, so ``lo`` and ``hi`` are edges of the fixed grid and every value is
        counted exactly once (``sum(counts) == count``); a compact bin is
        ``g * bin_width`` wide. ``None`` before any value; ``(0.0, 0.0, [count])``
        when every value is 0.
        """
        if self.count == 0:
            return None
        if self.T == 0.0:
            return 0.0, 0.0, [int(self.hist.sum())]

        def fine_bin(v: float) -> int:  # the same binning as update()
            return min(max(int((v + self.T) / (2 * self.T) * self.bins), 0), self.bins - 1)

        i0, i1 = fine_bin(self.min), fine_bin(self.max)
        n = i1 - i0 + 1
        g = -(-n // max_bins)
        k = -(-n // g)
        span = np.zeros(k * g, dtype=np.int64)
        part = self.hist[i0 : i0 + k * g]
        span[: part.size] = part
        w = self.bin_width
        return -self.T + i0 * w, -self.T + (i0 + k * g) * w, span.reshape(k, g).sum(axis=1).tolist()


def _merge_atoms(old_ext, old_n, new_ext, new_n, better):
    """Count of values at the running extreme after seeing a new extreme ``new_ext`` x ``new_n``."""
    return np.where(better(new_ext, old_ext), new_n, np.where(new_ext == old_ext, old_n + new_n, old_n))


class ClipCounter:
    """Share of fp32 values outside the encoding's representable ``[q_min, q_max]``."""

    def __init__(self, q_min: float, q_max: float):
        self.q_min, self.q_max = q_min, q_max
        self.outside = 0
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size:  # min and max are 4x cheaper than the comparisons they usually save
            if x.min() < self.q_min:
                self.outside += int(np.count_nonzero(x < self.q_min))
            if x.max() > self.q_max:
                self.outside += int(np.count_nonzero(x > self.q_max))
        self.count += x.size

    def add(self, outside: int, count: int) -> None:
        """Add counts computed elsewhere (``kernels.error_sums``)."""
        self.outside += outside
        self.count += count

    def merge(self, other: ClipCounter) -> ClipCounter:
        self.outside += other.outside
        self.count += other.count
        return self

    @property
    def fraction(self) -> float:
        return self.outside / self.count if self.count else math.nan


class ErrorDecomposition:
    """The isolated error of a per-tensor encoding split by where the fp32 value lies, and the codes it uses.

    ``sum_e2`` is the isolated ``sum(e^2)`` (the layer fed fp32 inputs);
    ``sum_e2_clip`` its part from values outside ``[q_min, q_max]`` (clipping), so
    ``sum_e2 - sum_e2_clip`` is the rounding error inside the grid (an exact
    partition of the elements: the two parts always sum to ``sum_e2``).
    ``codes`` holds one flag per integer code of the type (``code - code_min``):
    set when the isolated twin took that code on some element. Counts and flags
    are exact; :meth:`merge` adds the sums and ORs the flags.
    """

    def __init__(self, code_min: int, code_max: int):
        self.code_min = code_min
        self.codes = np.zeros(code_max - code_min + 1, dtype=np.uint8)
        self.sum_e2 = 0.0
        self.sum_e2_clip = 0.0
        self.count = 0

    def add(self, sum_e2: float, sum_e2_clip: float, count: int) -> None:
        """Add sums computed elsewhere (``kernels.error_sums``, which also sets :attr:`codes`)."""
        self.sum_e2 += sum_e2
        self.sum_e2_clip += sum_e2_clip
        self.count += count

    def merge(self, other: ErrorDecomposition) -> ErrorDecomposition:
        self.sum_e2 += other.sum_e2
        self.sum_e2_clip += other.sum_e2_clip
        self.count += other.count
        self.codes = np.bitwise_or(self.codes, other.codes)  # a new array: a shard's may be read-only (Ray)
        return self

    @property
    def clip_error_share(self) -> float | None:
        """``sum_e2_clip / sum_e2``; ``None`` without error (nothing to share out)."""
        return self.sum_e2_clip / self.sum_e2 if self.sum_e2 > 0 else None

    @property
    def codes_used(self) -> int:
        return int(np.count_nonzero(self.codes))

    @property
    def grid_use(self) -> float | None:
        """Share of the type's integer codes the isolated twin took (``None`` before any value)."""
        return self.codes_used / self.codes.size if self.count else None


# ---------------------------------------------------------------- outputs


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    ez = np.exp(z)
    return ez / ez.sum(axis=axis, keepdims=True)


#: Floor for probabilities inside log() in QCE/QKL, so a class the quantized
#: model gives probability 0 costs -log(1e-12) = 27.6 nats instead of inf.
PROB_FLOOR = 1e-12


def cross_entropy(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-sample ``-sum_k p_k log q_k`` over the last axis."""
    return -np.sum(p * np.log(np.clip(q, PROB_FLOOR, 1.0)), axis=-1)


class OutputAccumulator:
    """The metrics of one model output, by its ``kind`` (:data:`OUTPUT_KINDS`).

    Every output gets ``qmse``, ``sqnr_db``, ``max_abs_error = max|e|`` and
    ``rel_error = sqrt(sum e^2 / sum x^2)``. Only a ``"class"`` output gets the
    class metrics: QCE, QKL, top-1 agreement and, when it is the labelled output,
    the accuracies; they are ``None`` on a ``"regression"`` output. A class output
    ``[N, K]`` (``K >= 2``) is scored per sample, ``[N, ..., K]`` per position (a
    CTC recognizer's per-position softmax), over the last axis. ``probabilities``
    says it already is a distribution (produced by Softmax, or rows that are
    non-negative and sum to 1), so it is not softmaxed again.
    """

    def __init__(self, name: str, probabilities: bool = False, kind: str = "class"):
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"output kind must be one of {OUTPUT_KINDS}, not {kind!r}")
        self.name = name
        self.kind = kind
        self.probabilities = probabilities
        self.err = ErrorAccumulator()
        self.max_abs = 0.0
        self.classification: bool | None = None
        self.n = 0
        self.ce_sum = 0.0
        self.h_sum = 0.0
        self.agree = 0
        self.correct_fp32 = 0
        self.correct_q = 0
        self.labelled = 0

    def update(self, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None = None) -> None:
        x32 = np.ascontiguousarray(x, dtype=np.float32).ravel()
        e = x32 - np.asarray(y, dtype=np.float32).ravel()
        self.err.add(square_sum(x32), square_sum(e), x32.size)
        if e.size:
            m = float(np.max(np.abs(e)))  # NaN propagates: the error is undefined
            if math.isnan(m) or m > self.max_abs:
                self.max_abs = m
        is_cls = self.kind == "class" and x.ndim >= 2 and x.shape[-1] >= 2
        self.classification = is_cls if self.classification is None else (self.classification and is_cls)
        if not self.classification:
            return
        if x.ndim > 2:
            x, y, labels = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), None
        if self.probabilities:
            p = np.asarray(x, dtype=np.float64)
            q = np.asarray(y, dtype=np.float64)
        else:
            p, q = softmax(x), softmax(y)
        self.ce_sum += float(np.sum(cross_entropy(p, q)))
        self.h_sum += float(np.sum(cross_entropy(p, p)))
        ax, ay = np.argmax(x, axis=1), np.argmax(y, axis=1)
        self.agree += int(np.sum(ax == ay))
        self.n += x.shape[0]
        if labels is not None:
            if len(labels) != len(ax):  # else numpy broadcasts one label over every row
                raise DataError(
                    f"output '{self.name}' has {len(ax)} rows for {len(labels)} labelled samples in a batch: its rows "
                    "are not the samples the inputs' batch axes count; give the inputs' batch axes with --batch-axis"
                )
            self.correct_fp32 += int(np.sum(ax == labels))
            self.correct_q += int(np.sum(ay == labels))
            self.labelled += len(labels)

    def merge(self, other: OutputAccumulator) -> OutputAccumulator:
        """Add ``other``'s samples (the same output, measured on other batches): counts and maxima
        exactly, sums up to float64 rounding of their order."""
        if (other.kind, other.probabilities) != (self.kind, self.probabilities):
            raise ValueError(f"output '{self.name}': cannot merge accumulators measuring it differently")
        self.err.merge(other.err)
        if not math.isnan(self.max_abs) and (math.isnan(other.max_abs) or other.max_abs > self.max_abs):
            self.max_abs = other.max_abs  # NaN stays NaN, as in update()
        if self.classification is None or other.classification is None:
            self.classification = other.classification if self.classification is None else self.classification
        else:
            self.classification = self.classification and other.classification
        for name in ("n", "ce_sum", "h_sum", "agree", "correct_fp32", "correct_q", "labelled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    @property
    def rel_error(self) -> float:
        """``sqrt(sum e^2 / sum x^2)``: 0 without error, ``inf`` for an error without signal."""
        if self.err.sum_e2 == 0.0:
            return 0.0 if self.err.count else math.nan
        return math.sqrt(self.err.sum_e2 / self.err.sum_x2) if self.err.sum_x2 > 0 else math.inf

    def result(self) -> dict:
        cls = bool(self.classification) and self.n > 0
        out = {
            "kind": self.kind,
            "qmse": self.err.qmse,
            "sqnr_db": self.err.sqnr_db,
            "max_abs_error": self.max_abs if self.err.count else math.nan,
            "rel_error": self.rel_error,
            "qce": self.ce_sum / self.n if cls else None,
            "qkl": (self.ce_sum - self.h_sum) / self.n if cls else None,
            "top1_agreement": self.agree / self.n if cls else None,
            "acc_fp32": None,
            "acc_int8": None,
            "acc_drop_pct": None,
        }
        if cls and self.labelled:
            a32 = self.correct_fp32 / self.labelled
            a8 = self.correct_q / self.labelled
            out.update(acc_fp32=a32, acc_int8=a8, acc_drop_pct=acc_drop_pct(a32, a8))
        return out


def looks_like_probabilities(x: np.ndarray, atol: float = 1e-3) -> bool:
    """Non-negative values summing to 1 over the last axis (rank >= 2)."""
    x = np.asarray(x)
    return bool(x.ndim >= 2 and x.size and (x >= 0).all() and np.allclose(x.sum(axis=-1), 1.0, atol=atol))
