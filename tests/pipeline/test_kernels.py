"""The compiled per-value loops (qaudit/pipeline/_kernels.c) against their numpy references.

qaudit computes every statistic either with its C kernels or with numpy
(``QAUDIT_KERNELS``); ``qaudit.pipeline.kernels`` holds both, operation by
operation (``kernels.OPERATIONS``), and every operation has cases here.
Histograms, bins and counts must be identical; sums of squares are accumulated
in double by C and must match an independent float64 computation to ~1e-12
(numpy's float32 pairwise sums, to ~1e-7). Each C loop must take the inputs
the pipeline gives it and leave the others to numpy; bad input to the C code
must raise, never write out of bounds. The rest of the package calls the
operations only through ``kernels.<op>``, never the C module or one
implementation, and never branches on which one runs.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import inspect
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import qaudit
from qaudit.errors import ConfigError
from qaudit.pipeline import kernels
from qaudit.pipeline.measure import ActivationMeter
from qaudit.pipeline.metrics import RangeHistogram, dequantize

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_MODEL
from .test_streaming import SHAPES, _data, _matching

needs_c = pytest.mark.skipif(kernels.compiled is None, reason="qaudit's C kernels are not built (no compiler)")
#: every loop of _kernels.c, each called by one or more operations
C_FUNCTIONS = {"abs_histogram", "bin_values", "error_sums", "minmax"}


@pytest.fixture(params=["c", "numpy"])
def mode(request, monkeypatch):
    if request.param == "c" and kernels.compiled is None:
        pytest.skip("qaudit's C kernels are not built")
    monkeypatch.setenv(kernels.ENV, request.param)
    return request.param


class _Spy:
    """Stands in for the C module and counts the calls of each of its functions."""

    def __init__(self, module):
        self._module = module
        self.calls = collections.Counter()

    def __getattr__(self, name):
        fn = getattr(self._module, name)

        def call(*args):
            self.calls[name] += 1
            return fn(*args)

        return call


@pytest.fixture
def c_calls(monkeypatch):
    """How many times each C function has run (the C module behind a counting spy)."""
    spy = _Spy(kernels._c)
    monkeypatch.setattr(kernels, "_c", spy)
    return spy.calls


# ------------------------------------------------------------- selection


def test_kernels_are_built_where_ci_runs():
    """CI installs with a compiler: the C path must be the one the suite tests."""
    if kernels.compiled is None and not os.environ.get("CI"):
        pytest.skip("not built here (no C compiler at install time); numpy is used")
    assert kernels._c is not None and kernels.compiled is not None
    assert kernels.name() == "c"


def test_kernel_choice_from_the_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert kernels.selected() is kernels.numpy_reference and kernels.name() == "numpy"
    monkeypatch.setenv(kernels.ENV, " Auto ")
    assert kernels.selected() is (kernels.compiled or kernels.numpy_reference)
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ConfigError, match="QAUDIT_KERNELS must be c, numpy or auto"):
        kernels.name()
    with pytest.raises(ConfigError, match="QAUDIT_KERNELS must be c, numpy or auto"):
        kernels.channel_minmax(np.zeros((1, 1, 1), np.float32))  # every operation asks
    monkeypatch.setattr(kernels, "compiled", None)
    monkeypatch.setenv(kernels.ENV, "c")
    with pytest.raises(ConfigError, match="not built"):
        kernels.name()
    monkeypatch.setenv(kernels.ENV, "auto")
    assert kernels.name() == "numpy"  # falls back when not built
    monkeypatch.delenv(kernels.ENV)
    assert kernels.selected() is kernels.numpy_reference


def test_a_bad_choice_fails_before_the_audit_reads_anything(monkeypatch, tmp_path):
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ConfigError, match="QAUDIT_KERNELS"):  # not "model file not found"
        qaudit.audit(qaudit.AuditConfig(model=tmp_path / "missing.onnx", calib=tmp_path))


def test_each_operation_has_an_entry_point_and_two_implementations():
    assert kernels.OPERATIONS == (
        "channel_minmax",
        "nan_minmax",
        "abs_histogram",
        "uniform_histogram",
        "bin_values",
        "error_sums",
    )
    for op in kernels.OPERATIONS:
        entry = getattr(kernels, op)
        assert callable(entry) and entry.__doc__, op
        assert getattr(kernels.numpy_reference, op) is getattr(kernels, f"_np_{op}")
        if kernels.compiled is not None:
            assert getattr(kernels.compiled, op) is getattr(kernels, f"_c_{op}")
        # one signature for the entry point and both implementations
        params = list(inspect.signature(entry).parameters)
        for impl in (kernels.numpy_reference, kernels.compiled):
            if impl is not None:
                assert list(inspect.signature(getattr(impl, op)).parameters) == params, (impl.name, op)
    assert kernels.numpy_reference.name == "numpy"
    assert kernels.compiled is None or kernels.compiled.name == "c"


@pytest.mark.parametrize("op", kernels.OPERATIONS)
def test_each_operation_runs_the_selected_implementation(op, monkeypatch):
    """``kernels.<op>`` hands its arguments, unchanged, to the implementation
    QAUDIT_KERNELS selects (both are stand-ins here)."""

    def stand_in(impl):
        return kernels.Kernels(impl, **{o: (lambda *args, o=o: (impl, o, args)) for o in kernels.OPERATIONS})

    monkeypatch.setattr(kernels, "compiled", stand_in("c"))
    monkeypatch.setattr(kernels, "numpy_reference", stand_in("numpy"))
    args = tuple(object() for _ in inspect.signature(getattr(kernels, op)).parameters)
    for choice, impl in (("c", "c"), ("numpy", "numpy"), ("auto", "c")):
        monkeypatch.setenv(kernels.ENV, choice)
        assert getattr(kernels, op)(*args) == (impl, op, args), choice


def _kernel_uses(source: str):
    """(line, what) for each use of the kernels in a module's source: attributes
    of ``kernels``, names imported from it, imports of the C module, and
    conditions that look at ``kernels``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "kernels":
            yield node.lineno, f"kernels.{node.attr}"
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if node.module == "qaudit.pipeline.kernels":
                    yield node.lineno, f"kernels.{alias.name}"
                if "_kernels" in (node.module or "").split(".") or alias.name == "_kernels":
                    yield node.lineno, "an import of _kernels"
        elif isinstance(node, ast.Import) and any("_kernels" in a.name.split(".") for a in node.names):
            yield node.lineno, "an import of _kernels"
        if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
            for sub in ast.walk(node.test):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "kernels":
                    yield node.lineno, f"a condition on kernels.{sub.attr}"


def test_call_sites_do_not_branch_on_the_implementation():
    """Outside kernels.py the package calls ``kernels.<op>`` (and ``kernels.name()``
    for the report) and nothing else: not the C module, not one implementation,
    and no condition on which one runs."""
    allowed = {f"kernels.{op}" for op in kernels.OPERATIONS} | {"kernels.name"}
    package = Path(qaudit.__file__).resolve().parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path != Path(kernels.__file__).resolve():
            for line, what in _kernel_uses(path.read_text()):
                if what not in allowed:
                    found.append(f"{path.relative_to(package.parent)}:{line}: {what}")
    assert not found, "\n".join(found)
    # and it sees what it must refuse
    branching = (
        "from qaudit.pipeline import _kernels\n"
        "if kernels.compiled is not None:\n"
        "    kernels._c.minmax(x)\n"
        "y = kernels.minmax(x) if kernels.name() == 'c' else kernels.numpy_reference.channel_minmax(x)\n"
    )
    assert {what for _, what in _kernel_uses(branching)} - allowed == {
        "an import of _kernels",
        "a condition on kernels.compiled",
        "kernels.compiled",
        "kernels._c",
        "kernels.minmax",
        "a condition on kernels.name",
        "kernels.numpy_reference",
    }


@needs_c
def test_every_c_function_is_called_by_an_operation():
    """A function added to _kernels.c is called from kernels.py, so it has an
    operation, a numpy reference and cases here."""
    assert {n for n in dir(kernels._c) if not n.startswith("_")} == C_FUNCTIONS
    source = Path(kernels.__file__).read_text()
    for fn in C_FUNCTIONS:
        assert f"_c.{fn}(" in source, fn


# ------------------------------------------------------------- the C loops themselves, and calibration


def _ort_edges(first: np.ndarray, amax: float) -> np.ndarray:
    """Edges as ORT's HistogramCollector builds them: np.histogram's on the first
    batch's |x|, extended by its bin width up to a later batch's max|x|."""
    edges = np.histogram(np.abs(first), bins=2048)[1].astype(np.float32)
    width = edges[1] - edges[0]
    if amax > edges[-1]:
        edges = np.hstack((edges, np.arange(edges[-1] + width, np.float32(amax) + width, width)))
    return edges.astype(np.float32)  # as the collector keeps them (arange made float64)


def _abs_cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_003).astype(np.float32)
    e = _ort_edges(rng.standard_normal(5000).astype(np.float32), float(np.abs(x).max()))
    yield "normal", x, e
    yield "relu", np.maximum(x, 0), e  # half the values below edges[0] (dropped)
    on_edges = np.concatenate([e, -e, np.nextafter(e, np.float32(0)), np.nextafter(e, np.float32(np.inf))])
    yield "exactly on every edge and next to it", on_edges.astype(np.float32), e
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, e[0], e[-1], -e[-1], 1e30, 1e-30], np.float32)
    yield "NaN, inf, signed zeros, extremes", np.tile(specials, 3), e
    u = np.sort(rng.uniform(0, 3, 300)).astype(np.float32)
    yield "non-uniform edges", (rng.standard_normal(50_000) * 2).astype(np.float32), u
    # the uniform guess is off there, so the corrections walk to the edges
    yield "on non-uniform edges", np.concatenate([u, np.nextafter(u, np.float32(0))]), u
    d = np.sort(np.repeat(rng.uniform(0, 2, 40), 3)).astype(np.float32)
    yield "repeated edges", rng.uniform(-2.5, 2.5, 20_000).astype(np.float32), d
    c = np.float32(1.2345)
    tiny = np.histogram(np.full(10, c), bins=2048)[1].astype(np.float32)  # constant first batch: edges 1 ulp apart
    yield "edges a few ulps apart", (c + rng.normal(0, 1e-6, 20_000)).astype(np.float32), tiny
    yield "one bin", rng.uniform(-1, 1, 1000).astype(np.float32), np.array([0.25, 0.75], np.float32)
    yield "empty", np.zeros(0, np.float32), e


@needs_c
@pytest.mark.parametrize("case", list(_abs_cases()), ids=lambda c: c[0])
def test_abs_histogram_equals_numpy_histogram_of_abs(case):
    _, x, edges = case
    with np.errstate(invalid="ignore"):
        want = np.histogram(np.abs(x), bins=edges)[0]
    got = np.full(len(edges) - 1, 7, dtype=np.int64)  # it adds to what is there
    kernels._c.abs_histogram(x, edges, got)
    np.testing.assert_array_equal(got - 7, want)


@needs_c
def test_abs_histogram_rejects_bad_input():
    k = kernels._c
    x, e, h = np.ones(10, np.float32), np.array([0, 1, 2], np.float32), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="non-decreasing"):
        k.abs_histogram(x, e[::-1].copy(), h)
    with pytest.raises(ValueError, match="len\\(counts\\)"):
        k.abs_histogram(x, e, np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="data"):
        k.abs_histogram(x.astype(np.float64), e, h)
    with pytest.raises(ValueError, match="contiguous"):
        k.abs_histogram(x[::2], e, h)
    with pytest.raises((TypeError, ValueError)):
        k.abs_histogram(x, e, h.astype(np.int32))


def _both_collectors(kw: dict, seed: int, grows: bool, zeros_first: bool = False):
    """qaudit's lean collector and ORT's HistogramCollector fed the same four batches (``grows``:
    each batch's values wider than the last; ``zeros_first``: a tensor whose first batch is zeros)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from qaudit.pipeline.quantize import _lean_collector_class, quiet_ort

    ours, theirs = _lean_collector_class()(**kw), HistogramCollector(**kw)
    rng = np.random.default_rng(seed)
    with quiet_ort():
        for k in range(4):
            x = rng.standard_t(3, size=(2, 4, 9, 9)).astype(np.float32) * (1 + k if grows else 1)
            batch = {"t": x, "relu": np.maximum(x, 0), "const": np.full((3, 3), 0.5, np.float32)}
            if zeros_first:
                batch["zeros_first"] = x if k else np.zeros_like(x)  # old threshold 0, then a range
            ours.collect({n: [v] for n, v in batch.items()})
            theirs.collect({n: [v] for n, v in batch.items()})
    return ours, theirs


@pytest.mark.parametrize("grows", [False, True])
def test_lean_collector_equals_ort_collector_either_way(mode, grows, c_calls):
    """The calibration histograms handed to the quantizer are ORT's, with C or numpy."""
    kw = dict(
        method="percentile", symmetric=True, num_bins=2048, num_quantized_bins=2048, percentile=99.999, scenario="same"
    )
    ours, theirs = _both_collectors(kw, 3, grows)
    for name in ("t", "relu", "const"):
        if grows and name == "t":
            assert len(ours.histogram_dict[name][0]) > 2048  # the explicit-edges path ran
        for a, b in zip(ours.histogram_dict[name], theirs.histogram_dict[name]):
            np.testing.assert_array_equal(a, b, err_msg=f"{mode} {name}")
    assert set(c_calls) == ({"minmax", "abs_histogram"} if mode == "c" else set())


@pytest.mark.parametrize("method", ["entropy", "distribution"])
@pytest.mark.parametrize("grows", [False, True])
def test_lean_signed_histograms_equal_ort_collector_either_way(mode, method, grows, c_calls):
    """Entropy's and Distribution's histograms of the signed values (collect_value and its
    merge_histogram, the range widening as batches grow) are ORT's, with C or numpy."""
    kw = dict(method=method, symmetric=False, num_bins=2048, num_quantized_bins=128, percentile=99.999, scenario="same")
    ours, theirs = _both_collectors(kw, 4, grows, zeros_first=True)
    for name in ("t", "relu", "const", "zeros_first"):
        if grows and name == "t":
            assert len(ours.histogram_dict[name][0]) > 2048  # merge_histogram widened the range
        for a, b in zip(ours.histogram_dict[name], theirs.histogram_dict[name]):
            np.testing.assert_array_equal(a, b, err_msg=f"{mode} {name}")
            assert np.asarray(a).dtype == np.asarray(b).dtype, (mode, name)
    assert set(c_calls) == ({"minmax", "abs_histogram"} if mode == "c" else set())


# ------------------------------------------------------------- measurement


def _range_batches(seed: int):
    rng = np.random.default_rng(seed)
    C = int(rng.integers(1, 24))
    # short rows (counted straight into the channel histogram) and rows of 1517
    # values (interleaved copies, added at the end of the row; 1517 is neither a
    # multiple of the C loop's 4 copies nor of its 1024-value blocks)
    hw = (7, 5) if seed < 3 else (37, 41)
    batches = []
    for k in range(5):
        x = (rng.standard_t(3, size=(2, C, *hw)) * (1 + 3 * (k == 3))).astype(np.float32)
        if seed % 2:
            x = np.maximum(x, 0)  # runs of zeros: atoms at the minimum
        if k == 1:
            x.flat[0] = 8.0  # a power of two: |x| == T exactly (clamped into the last bin)
            x.flat[1] = -8.0  # and -T (the first bin)
        batches.append(x)
    return batches


@needs_c
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rank", [4, 2, 1])
def test_range_histogram_c_equals_numpy(seed, rank, monkeypatch, c_calls):
    """Every field, batch by batch, while the grid doubles; channel axis 1, last, or none."""
    batches = _range_batches(seed)
    if rank == 2:
        batches = [b.reshape(-1, b.shape[1]) for b in batches]
    elif rank == 1:
        batches = [b.reshape(-1) for b in batches]
    axis = {4: 1, 2: 1, 1: None}[rank]
    hists = {}
    for m in ("c", "numpy"):
        monkeypatch.setenv(kernels.ENV, m)
        h = RangeHistogram()
        hists[m] = h
        for b in batches:
            h.update(b, axis)
        if m == "c":  # every batch in one C pass for its extremes and one for its bins
            assert c_calls == {"minmax": len(batches), "bin_values": len(batches)}
    assert sum(c_calls.values()) == 2 * len(batches)  # none with numpy
    c, n = hists["c"], hists["numpy"]
    assert c.T == n.T and c.T >= 8.0
    for field in ("hist", "ch_hist", "ch_min", "ch_max", "ch_at_min", "ch_at_max"):
        np.testing.assert_array_equal(getattr(c, field), getattr(n, field), err_msg=field)
    assert (c.min, c.max, c.count) == (n.min, n.max, n.count)
    assert c.clipped_range(1.0) == n.clipped_range(1.0)


@needs_c
def test_bin_values_refuses_values_outside_the_grid():
    """NaN or |x| > T would index out of the counters: the C loop raises instead."""
    k = kernels._c
    hist, ch = np.zeros(2048, np.int64), np.zeros((2, 256), np.int64)
    am, aM = np.zeros(2, np.int64), np.zeros(2, np.int64)
    lo, hi = np.zeros(2, np.float32), np.ones(2, np.float32)
    for bad in (np.nan, 2.5, -2.5):
        x = np.zeros((1, 2, 10), np.float32)
        x[0, 1, 3] = bad
        with pytest.raises(ValueError, match="NaN or outside"):
            k.bin_values(x, 1, 10, 2.0, hist, ch, lo, hi, am, aM)
        with pytest.raises(ValueError, match="NaN or outside"):  # and through the operation
            kernels.compiled.bin_values(x, 2.0, hist, ch, *kernels.numpy_reference.channel_minmax(x))
    with pytest.raises(ValueError, match="inconsistent"):
        k.bin_values(np.zeros((1, 2, 10), np.float32), 1, 11, 2.0, hist, ch, lo, hi, am, aM)
    with pytest.raises(ValueError, match="inconsistent"):  # channel bins must divide the fine bins
        k.bin_values(np.zeros((1, 2, 10), np.float32), 1, 10, 2.0, hist, np.zeros((2, 300), np.int64), lo, hi, am, aM)


def _minmax_cases():
    rng = np.random.default_rng(11)
    # rows shorter than, equal to and longer than the loop's 16 lanes, with a tail
    for pre, C, post in ((1, 1, 1), (3, 5, 1), (2, 3, 16), (1, 4, 37), (2, 7, 1517)):
        x = (rng.standard_normal((pre, C, post)) * 5).astype(np.float32)
        yield f"normal-{pre}x{C}x{post}", x
    x = np.maximum(rng.standard_normal((2, 3, 40)), 0).astype(np.float32)
    x[1, 2, :] = -0.0
    yield "relu-and-negative-zero", x
    x = rng.standard_normal((2, 4, 33)).astype(np.float32)
    x[0, 1, 32] = np.inf  # in the tail
    x[1, 2, 3] = -np.inf
    x[:, 3, :] = np.inf  # a channel of +inf only
    yield "infinities", x
    x = rng.standard_normal((2, 4, 33)).astype(np.float32)
    x[1, 0, 5] = np.nan  # in the second row of channel 0, after its first row
    x[0, 2, 32] = np.nan  # in the tail
    x[:, 3, :] = np.nan  # all NaN
    yield "nan", x
    x = rng.standard_normal((5, 3, 1)).astype(np.float32)  # rows of one value: the loop without lanes
    x[2, 1, 0] = np.nan
    x[:, 2, 0] = np.nan
    yield "nan-short-rows", x


@needs_c
@pytest.mark.parametrize("case", list(_minmax_cases()), ids=lambda c: c[0])
def test_minmax_equals_numpy(case):
    """One pass for each channel's min and max: ``x.min(axis=(0, 2))`` (NaN
    propagates) and, flattened, ``np.nanmin``/``np.nanmax`` (NaN ignored)."""
    _, x = case
    pre, C, post = x.shape
    lo, hi = np.full(C, 7.0, np.float32), np.full(C, 7.0, np.float32)  # overwritten, not merged
    n_nan = kernels._c.minmax(x, pre, post, lo, hi, False)
    assert n_nan == np.count_nonzero(np.isnan(x))
    np.testing.assert_array_equal(lo, x.min(axis=(0, 2)))
    np.testing.assert_array_equal(hi, x.max(axis=(0, 2)))
    for ch in range(C):  # np.nanmin of each channel alone, and of the whole tensor
        flat = np.ascontiguousarray(x[:, ch, :]).ravel()
        ext = np.empty(2, np.float32)
        kernels._c.minmax(flat, 1, flat.size, ext[:1], ext[1:], True)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice
            np.testing.assert_array_equal(ext, [np.nanmin(flat), np.nanmax(flat)])
    flat = x.ravel()
    ext = np.empty(2, np.float32)
    kernels._c.minmax(flat, 1, flat.size, ext[:1], ext[1:], True)
    np.testing.assert_array_equal(ext, [np.nanmin(flat), np.nanmax(flat)])


@needs_c
def test_minmax_rejects_bad_input():
    k = kernels._c
    x = np.zeros((2, 3, 4), np.float32)
    lo, hi = np.empty(3, np.float32), np.empty(3, np.float32)
    with pytest.raises(ValueError, match="inconsistent"):
        k.minmax(x, 2, 5, lo, hi, False)
    with pytest.raises(ValueError, match="inconsistent"):
        k.minmax(x, 2, 4, lo, np.empty(2, np.float32), False)
    with pytest.raises(TypeError, match="x"):
        k.minmax(x.astype(np.float64), 2, 4, lo, hi, False)
    with pytest.raises(TypeError, match="cmin"):
        k.minmax(x, 2, 4, lo.astype(np.float64), hi, False)
    with pytest.raises((TypeError, ValueError)):
        k.minmax(np.zeros((2, 3, 8), np.float32)[:, :, ::2], 2, 4, lo, hi, False)  # not contiguous
    with pytest.raises((TypeError, ValueError, BufferError)):
        k.minmax(x, 2, 4, np.frombuffer(bytes(12), np.float32), hi, False)  # read-only output


@needs_c
@pytest.mark.parametrize("qtype", [np.uint8, np.int8])
def test_error_sums_by_hand_in_float64(qtype):
    """The C loop to ~1e-12 of float64 sums, the numpy reference (float32 pairwise
    sums) to 1e-6; the codes flags identical; the operation gives None for what it was not asked."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(12_345) * 3).astype(np.float32)
    scale, zp = np.float32(0.0437), (128 if qtype == np.uint8 else -3)
    info = np.iinfo(qtype)
    q = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(qtype)
    q_iso = np.clip(q.astype(int) + rng.integers(-2, 3, x.size), info.min, info.max).astype(qtype)
    codes = np.zeros(256, np.uint8)
    sx2, se2, se2_iso, outside, se2_clip = kernels._c.error_sums(x, q, float(scale), float(zp), q_iso, -2.5, 4.0, codes)
    x64 = x.astype(np.float64)
    for qq, got in ((q, se2), (q_iso, se2_iso)):
        x_hat = dequantize(qq, scale, zp)  # float32, as the pipeline computes it
        e = (x - x_hat).astype(np.float64)
        assert got == pytest.approx(math.fsum(e * e), rel=1e-12)
    out = (x < np.float32(-2.5)) | (x > np.float32(4.0))
    e_iso = (x - dequantize(q_iso, scale, zp)).astype(np.float64)
    assert se2_clip == pytest.approx(math.fsum(e_iso[out] ** 2), rel=1e-12) and 0 < se2_clip < se2_iso
    expected = np.zeros(256, np.uint8)
    expected[np.unique(q_iso.astype(int) - info.min)] = 1
    np.testing.assert_array_equal(codes, expected)
    narrow = np.clip(np.round(x * 0.3 / scale) + zp, info.min, info.max).astype(qtype)  # not every code
    some = np.zeros(256, np.uint8)
    kernels._c.error_sums(x, q, float(scale), float(zp), narrow, None, None, some)
    expected[:] = 0
    expected[np.unique(narrow.astype(int) - info.min)] = 1
    assert 0 < some.sum() < 200
    np.testing.assert_array_equal(some, expected)
    assert sx2 == pytest.approx(math.fsum(x64 * x64), rel=1e-12)
    assert outside == np.count_nonzero(out) > 0
    ref_codes = np.zeros(256, np.uint8)
    ref = kernels.numpy_reference.error_sums(x, q, scale, zp, None, q_iso, (-2.5, 4.0), ref_codes, info.min)
    assert ref[:3] == pytest.approx((sx2, se2, se2_iso), rel=1e-6) and ref[3] == outside
    assert ref[4] == pytest.approx(se2_clip, rel=1e-6)
    np.testing.assert_array_equal(ref_codes, codes)
    # no isolated twin, no clip limits
    assert kernels._c.error_sums(x, q, float(scale), float(zp), None, None, None)[2:] == (0.0, -1, 0.0)
    for impl in (kernels.compiled, kernels.numpy_reference):
        assert impl.error_sums(x, q, scale, zp)[2:] == (None, None, None), impl.name
        assert impl.error_sums(x, q, scale, zp, q_isolated=q_iso)[4] is None, impl.name  # no limits: no split
    with pytest.raises(ValueError, match="same length"):
        kernels._c.error_sums(x, q[:-1], float(scale), float(zp), None, None, None)
    with pytest.raises(ValueError, match="same length"):
        kernels._c.error_sums(
            x, q, float(scale), float(zp), q_iso.astype(np.uint8 if qtype == np.int8 else np.int8), None, None
        )
    with pytest.raises(ValueError, match="256 flags"):
        kernels._c.error_sums(x, q, float(scale), float(zp), q_iso, None, None, np.zeros(255, np.uint8))
    with pytest.raises((TypeError, ValueError, BufferError)):  # read-only flags
        kernels._c.error_sums(x, q, float(scale), float(zp), q_iso, None, None, np.frombuffer(bytes(256), np.uint8))


@needs_c
def test_meter_c_equals_numpy(monkeypatch, c_calls):
    """The whole ActivationMeter (held-back small tensors, isolated twins, clip counts)."""
    data = _data(SHAPES, 6, seed=2)
    iso = [{k: np.clip(q.astype(int) - 1, 0, 255).astype(np.uint8) for k, q in quant.items()} for _, quant in data]
    meters = {}
    for m in ("c", "numpy"):
        monkeypatch.setenv(kernels.ENV, m)
        meter = ActivationMeter(_matching(SHAPES))
        for (fp32, quant), q_iso in zip(data, iso):
            meter.update(fp32, quant, isolated=q_iso)
        meter.flush()
        meters[m] = meter
        assert set(c_calls) == ({"minmax", "bin_values", "error_sums"} if m == "c" else set())
        c_calls.clear()
    c, n = meters["c"], meters["numpy"]
    for name in SHAPES:
        np.testing.assert_array_equal(c.hist[name].hist, n.hist[name].hist)
        np.testing.assert_array_equal(c.hist[name].ch_hist, n.hist[name].ch_hist)
        for acc in ("err", "iso"):
            a, b = getattr(c, acc)[name], getattr(n, acc)[name]
            assert a.count == b.count
            assert a.sum_x2 == pytest.approx(b.sum_x2, rel=1e-6)
            assert a.sum_e2 == pytest.approx(b.sum_e2, rel=1e-6)
        assert vars(c.clip[name]) == vars(n.clip[name])
        a, b = c.decomp[name], n.decomp[name]
        np.testing.assert_array_equal(a.codes, b.codes)
        assert a.count == b.count and a.codes_used == b.codes_used > 0
        assert a.sum_e2 == pytest.approx(b.sum_e2, rel=1e-6)
        assert a.sum_e2_clip == pytest.approx(b.sum_e2_clip, rel=1e-6, abs=1e-12)


@needs_c
def test_audit_of_the_sample_c_equals_numpy(monkeypatch, c_calls):
    """The same report either way: every range, precision and count equal, SQNR and
    QMSE to 1e-6 relative; the report says which loops ran, and they did: every C
    loop with C, none with numpy."""
    reports = {}
    for m in ("c", "numpy"):
        monkeypatch.setenv(kernels.ENV, m)
        reports[m] = qaudit.audit(qaudit.AuditConfig(model=SAMPLE_MODEL, calib=SAMPLE_CALIB, eval=SAMPLE_EVAL))
        assert set(c_calls) == (C_FUNCTIONS if m == "c" else set()), m
        c_calls.clear()
    c, n = reports["c"], reports["numpy"]
    assert c.meta["kernels"] == "c" and n.meta["kernels"] == "numpy"
    assert len(c.layers) == len(n.layers) > 5
    approx = {"sqnr_db", "qmse", "sqnr_isolated_db", "qmse_isolated", "error_amplification", "clip_error_share"}
    assert any(r.clip_error_share for r in c.layers) and all(r.grid_use for r in c.layers if r.has_activation)
    for a, b in zip(c.layers, n.layers):
        da, db = dataclasses.asdict(a), dataclasses.asdict(b)
        for k in da:
            if k in approx and isinstance(da[k], float):
                assert da[k] == pytest.approx(db[k], rel=1e-6, nan_ok=True), (a.name, k)
            else:
                assert da[k] == db[k], (a.name, k)


# ------------------------------------------------------------- every operation: C against its numpy reference
# Each case: (name, the operation's arguments, whether the C loop takes them).


def _channel_minmax_cases():
    for name, x in _minmax_cases():
        yield name, (x,), True
    x = np.random.default_rng(1).standard_normal((2, 3, 40)).astype(np.float32)
    yield "float64: numpy", (x.astype(np.float64),), False
    yield "float16: numpy", (x.astype(np.float16),), False
    yield "not contiguous: numpy", (x[:, :, ::2],), False
    yield "2-D: numpy", (x[0],), False
    yield "empty: numpy raises", (np.zeros((2, 3, 0), np.float32),), False


def _nan_minmax_cases():
    for name, x in _minmax_cases():
        yield name, (x.ravel(),), True
        yield f"{name}, last channel alone", (np.ascontiguousarray(x[:, -1, :]).ravel(),), True  # all NaN in "nan"
    x = np.random.default_rng(2).standard_normal((2, 3, 40)).astype(np.float32)
    yield "any shape", (x,), True
    yield "float16: numpy", (x.astype(np.float16).ravel(),), False
    yield "float64: numpy", (x.astype(np.float64).ravel(),), False
    yield "not contiguous: numpy", (x[:, :, ::2],), False
    yield "empty: numpy raises", (np.zeros(0, np.float32),), False


def _abs_histogram_cases():
    for name, x, edges in _abs_cases():
        yield name, (x, edges), True
    _, x, edges = next(_abs_cases())
    yield "float64 edges (a batch that widened them): numpy", (x, edges.astype(np.float64)), False
    yield "float16 values: numpy", (x.astype(np.float16), edges), False
    yield "not contiguous: numpy", (x[::2], edges), False


def _uniform_histogram_cases():
    rng = np.random.default_rng(17)
    x = rng.standard_t(3, 50_000).astype(np.float32)
    t = np.float32(np.abs(x).max())
    yield "normal, range +-max|x|", (x, 2048, (-t, t)), True
    yield "values outside the range (dropped)", (x, 128, (np.float32(-1), np.float32(1))), True
    e = np.histogram_bin_edges(x[:0], 2048, range=(-t, t))
    on_edges = np.concatenate([e, np.nextafter(e, np.float32(0)), np.nextafter(e, np.float32(np.inf))])
    yield "exactly on every edge and next to it", (on_edges.astype(np.float32), 2048, (-t, t)), True
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -t, t, 1e30, 1e-30], np.float32)
    yield "NaN, inf, signed zeros, extremes", (np.tile(specials, 3), 2048, (-t, t)), True
    zero = np.float32(0)
    yield "zero range (numpy widens it by 0.5)", (np.zeros(100, np.float32), 2048, (-zero, zero)), True
    yield "a widened range, an odd number of bins", (x, 2049 + 2 * 37, (-t * 1.5, t * 1.5)), True
    yield "empty", (np.zeros(0, np.float32), 2048, (-t, t)), True
    yield "python-float range (float32 edges, NEP 50)", (x, 2048, (-float(t), float(t))), True
    yield "float64 range (float64 edges): numpy", (x, 2048, (-np.float64(t), np.float64(t))), False
    yield "float64 values: numpy", (x.astype(np.float64), 2048, (-t, t)), False
    yield "not contiguous: numpy", (x[::2], 2048, (-t, t)), False


def _bin_case(m, bins=2048, channel_bins=256, T=None, seed=0):
    """bin_values' arguments for ``m`` ([pre, C, post]) on counters that already hold counts."""
    rng = np.random.default_rng(seed)
    if T is None:  # as RangeHistogram chooses it
        amax = float(np.abs(m).max())
        T = 2.0 ** math.ceil(math.log2(amax)) if amax > 0 else 0.0
        T *= 2 if T and T < amax else 1
    hist = rng.integers(0, 9, bins).astype(np.int64)  # it adds to what is there
    ch_hist = rng.integers(0, 9, (m.shape[1], channel_bins)).astype(np.int64)
    return m, T, hist, ch_hist, m.min(axis=(0, 2)), m.max(axis=(0, 2))


def _bin_values_cases():
    rng = np.random.default_rng(13)

    def t(*shape):
        return (rng.standard_t(3, size=shape) * 2).astype(np.float32)

    yield "one channel", _bin_case(t(1, 1, 5000)), True
    yield "joint counts (fewer counters than values)", _bin_case(t(2, 3, 4000)), True
    yield "many channels, short rows", _bin_case(t(2, 64, 9)), True
    yield "rows of 1517 (interleaved copies)", _bin_case(t(2, 5, 1517)), True
    yield "relu: atoms at the minimum", _bin_case(np.maximum(t(2, 6, 300), 0)), True
    edge = t(2, 4, 100)
    edge[0, 0, :3] = 8.0  # |x| == T: the last bin
    edge[1, 3, 5] = -8.0  # and the first
    yield "values at -T and T", _bin_case(np.clip(edge, -8, 8), T=8.0), True
    yield "channel bins = fine bins", _bin_case(t(3, 2, 500), bins=256, channel_bins=256), True
    yield "all zeros (T == 0): numpy", _bin_case(np.zeros((2, 3, 50), np.float32)), False
    yield "float64: numpy", _bin_case(t(2, 3, 50).astype(np.float64)), False
    yield "more fine bins than the C loop's 2**20: numpy", _bin_case(t(1, 2, 100), bins=1 << 21), False


def _error_sums_cases():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 6, 9, 9)) * 3).astype(np.float32)
    for qtype, zp in ((np.uint8, 128), (np.int8, -3)):
        info, scale = np.iinfo(qtype), np.array(0.0437, np.float32)
        q = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(qtype)
        q_iso = np.clip(q.astype(int) + rng.integers(-2, 3, x.shape), info.min, info.max).astype(qtype)
        zp = np.array(zp, qtype)
        name = qtype.__name__
        yield f"{name}, isolated twin and limits", (x, q, scale, zp, None, q_iso, (-2.5, 4.0)), True
        yield f"{name} alone", (x, q, scale, zp, None, None, None), True
        codes = np.zeros(256, np.uint8)
        codes[7] = 1  # set before: flags are only ever added
        yield f"{name}, codes used", (x, q, scale, zp, None, q_iso, (-2.5, 4.0), codes, info.min), True
        yield (
            f"{name}, codes of another offset: numpy",
            (x, q, scale, zp, None, q_iso, None, codes, 0 - (qtype == np.uint8)),
            False,
        )
        yield f"{name}, not contiguous", (x[:, ::2], q[:, ::2], scale, zp, None, q_iso[:, ::2], (-1.0, 1.0)), True
        yield f"{name}, twin of another shape", (x, q.reshape(-1, 9), scale, zp, None, None, None), True
        yield f"{name}, float16: numpy", (x.astype(np.float16), q, scale, zp, None, q_iso, (-2.5, 4.0)), False
        other = q_iso.view(np.int8 if qtype == np.uint8 else np.uint8)
        yield f"{name}, isolated twin of another type: numpy", (x, q, scale, zp, None, other, None), False
    scales = np.linspace(0.01, 0.05, 6).astype(np.float32)
    zps = np.arange(120, 126).astype(np.uint8)
    q = np.clip(np.round(x / scales[:, None, None]) + zps[:, None, None], 0, 255).astype(np.uint8)
    yield "per-channel encoding: numpy", (x, q, scales, zps, 1, q, None), False
    q16 = np.clip(np.round(x / np.float32(1e-4)), -32768, 32767).astype(np.int16)
    codes16 = np.zeros(65536, np.uint8)
    yield "int16 codes: numpy", (x, q16, np.float32(1e-4), np.int16(0), None, q16, (-3.2, 3.2), codes16, -32768), False
    empty = (np.zeros(0, np.float32), np.zeros(0, np.uint8), np.float32(0.1), np.uint8(3), None, None, (-1.0, 1.0))
    yield "empty", empty, True


#: The cases of each operation; an operation without them fails below.
CASES = {
    "channel_minmax": _channel_minmax_cases,
    "nan_minmax": _nan_minmax_cases,
    "abs_histogram": _abs_histogram_cases,
    "uniform_histogram": _uniform_histogram_cases,
    "bin_values": _bin_values_cases,
    "error_sums": _error_sums_cases,
}
#: Relative tolerance where C ran: its sums of squares are in double, numpy's in float32.
RELATIVE = {"error_sums": 1e-6}


def _operation_cases():
    for op in kernels.OPERATIONS:  # the one list kernels.py exposes
        if op not in CASES:
            yield pytest.param(op, None, id=f"{op}-no-cases")
            continue
        for name, args, c_takes in CASES[op]():
            yield pytest.param(op, (args, c_takes), id=f"{op}-{name}")


def _fresh(args):
    """Copies of the arguments (contiguous ones: a copy of a view would change its layout)."""
    return tuple(a.copy() if isinstance(a, np.ndarray) and a.flags.c_contiguous else a for a in args)


def _assert_same(got, want, rel, where="result"):
    """Equal values of equal types (arrays: dtype and shape too); python floats
    to ``rel`` relative."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, rel, f"{where}[{i}]")
    elif isinstance(want, (np.ndarray, np.generic)):
        assert type(got) is type(want) and got.dtype == want.dtype and got.shape == want.shape, where
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, float) and rel:
        assert type(got) is float and got == pytest.approx(want, rel=rel), where
    else:
        assert type(got) is type(want) and (got == want or (got != got and want != want)), where


def test_every_operation_has_cases():
    assert set(CASES) == set(kernels.OPERATIONS)


@pytest.mark.parametrize(("op", "case"), list(_operation_cases()))
def test_compiled_equals_numpy_reference(op, case, request):
    """``kernels.compiled.<op>`` gives what ``kernels.numpy_reference.<op>`` gives
    (raises what it raises), writes the same into its arguments, and runs its C
    loop exactly where the case says the loop takes the input."""
    assert case is not None, f"kernels.{op} has no cases: add them to CASES"
    if kernels.compiled is None:
        pytest.skip("qaudit's C kernels are not built")
    c_calls = request.getfixturevalue("c_calls")
    args, c_takes = case
    ref_args, c_args = _fresh(args), _fresh(args)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        try:
            want = getattr(kernels.numpy_reference, op)(*ref_args)
        except Exception as e:
            with pytest.raises(type(e)):
                getattr(kernels.compiled, op)(*c_args)
            assert not c_calls
            return
        got = getattr(kernels.compiled, op)(*c_args)
    assert sum(c_calls.values()) == (1 if c_takes else 0), dict(c_calls)
    _assert_same(got, want, RELATIVE.get(op, 0.0) if c_takes else 0.0)
    _assert_same(c_args, ref_args, 0.0, "arguments after the call")
