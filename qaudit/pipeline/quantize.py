"""Stage 3: calibration and static quantization with ONNX Runtime.

qaudit does not reimplement calibration: it runs ORT's calibration graph one
batch at a time, feeds ORT's own collectors (Percentile, Entropy, Distribution:
``HistogramCollector``; MinMax: ``MinMaxCalibrater``'s arithmetic, see
:class:`MinMaxCollector`), computes the ranges with ORT's code and hands them to
``quantize_static`` through its calibration cache. One pass can serve several
methods (:func:`calibrate_many`). Why (onnxruntime 1.32):

* ``HistogramCalibrater.collect_data`` keeps *every* intermediate output of
  every batch it is given before histogramming them; fed the whole data set at
  once (``quantize_static`` without ``CalibStridedMinMax``) that is all
  activations of all samples in memory. ``CalibStridedMinMax=k`` makes
  ``quantize_static`` call ``collect_data`` on chunks of k samples and merge
  histograms; qaudit does the same with one batch per call, so calibration
  memory is one batch's activations plus the histograms, and a progress bar can
  follow it. Merged histograms can differ from a one-shot histogram by up to
  one bin (ORT widens the grid when a later chunk exceeds it).
* The calibrator's ``collect``/``compute_percentile`` ``print`` to stdout and
  ``quantize_static`` logs "consider pre-processing" warnings on the root
  logger; both are silenced here (they would corrupt ``--json -``).
* ``create_calibrator`` makes Percentile *symmetric* by default, unlike
  MinMax; :class:`~qaudit.options.QuantConfig` records it explicitly.
* ``collect_data`` runs the session and histograms on the calling thread, so
  inference and numpy never overlap; :func:`calibrate` runs the session itself
  and gives ORT's collector each batch's outputs on worker threads (same
  histograms, tested against ORT's calibrator; docs/ort-quirks.md #21).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from qaudit.errors import QauditError, QuantizationError
from qaudit.options import QuantConfig
from qaudit.pipeline import kernels
from qaudit.pipeline.data import samples


@contextlib.contextmanager
def quiet_ort():
    """Silence ORT quantization's prints and root-logger warnings."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(old)


def quantizable_op_types(fmt: str | None = None) -> list[str]:
    """Op types ORT's quantizer handles: for ``fmt`` "qdq" or "qoperator", or both (calibration)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if fmt == "qdq":
        return sorted(QDQRegistry)
    if fmt == "qoperator":
        return sorted(QLinearOpsRegistry)
    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def probe_activations(
    model_path: Path, feeds: dict[str, np.ndarray]
) -> tuple[dict[str, tuple[float, float]], int, dict[str, int]]:
    """Run ``feeds`` with every float tensor exposed.

    Returns the tensors holding NaN/Inf (e.g. a transformer's -inf attention
    mask: ORT's histogram calibrators fail on them with "autodetected range of
    [..., inf] is not finite", onnxruntime 1.32, so qaudit leaves them in float)
    and the bytes of float activations per sample (sizes the automatic batch),
    in total and per tensor.
    """
    import onnx

    from qaudit.pipeline.graph import with_outputs
    from qaudit.pipeline.session import PREPARED_AT_FAULT, make_session, run_named

    # a big model's weights stay in their file (session.save_model): the probe refers to it
    model = onnx.load(str(model_path), load_external_data=False)
    vt = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.output)}
    floats = [
        (o, vt[o])
        for n in model.graph.node
        for o in n.output
        if vt.get(o) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    ]
    probe = Path(model_path).with_name("activation_probe.onnx")
    onnx.save(with_outputs(model, floats), str(probe))
    out = run_named(make_session(probe, what="the BN-folded model", advice=PREPARED_AT_FAULT), feeds)
    probe.unlink()
    n = max(1, samples(feeds))
    bad, nbytes, sizes = {}, 0, {}
    for name, v in out.items():
        if v.dtype.kind != "f":
            continue
        nbytes += v.nbytes
        sizes[name] = v.nbytes // n
        if v.size and not np.isfinite(v).all():
            finite = v[np.isfinite(v)]
            bad[name] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return bad, nbytes // n, sizes


def _calibrator(model_path: Path, workdir: Path, skip: set[str]):
    """ORT's calibration graph and session, as ``HistogramCalibrater`` builds them
    (onnxruntime 1.32): every tensor ORT calibrates is an output, except those in
    ``skip``. One run of it feeds every method's collector (:func:`calibrate_many`);
    MinMax reduces the same tensors that ORT's ``MinMaxCalibrater`` augments with
    ReduceMin/ReduceMax (``select_tensors_to_calibrate`` is the same)."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    class _Calibrater(HistogramCalibrater):
        def select_tensors_to_calibrate(self, model):
            tensors, value_infos = super().select_tensors_to_calibrate(model)
            return tensors - skip, value_infos

        def create_inference_session(self):
            # ORT's own options (all graph optimizations off), but no memory arena:
            # the arena keeps the largest batch's buffers for the whole session.
            import onnxruntime

            from qaudit.pipeline.session import no_spinning, quiet_logs

            so = onnxruntime.SessionOptions()
            so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.enable_cpu_mem_arena = False
            quiet_logs(so)
            no_spinning(so)
            self.infer_session = onnxruntime.InferenceSession(
                self.augmented_model_path, sess_options=so, providers=self.execution_providers
            )

    calibrator = _Calibrater(
        Path(model_path),
        quantizable_op_types(),
        str(Path(workdir) / "calibration_augmented.onnx"),
        # a model with external data (a big one, session.save_model): the augmented copy refers to
        # the same kind of file instead of holding its weights inline
        use_external_data_format=has_external_data(model_path),
    )
    calibrator.augment_graph()
    calibrator.create_inference_session()
    # the model ORT loaded (with every weight) is only read by augment_graph: the session
    # has its own copy, and compute_data reads the collector (onnxruntime 1.32)
    calibrator.model = None
    return calibrator


def has_external_data(model_path: Path) -> bool:
    """Whether the model file keeps some initializer in an external file (read without loading it)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(model_path), load_external_data=False)
    return any(uses_external_data(t) for t in model.graph.initializer)


def calibrate(model_path: Path, batches: Iterable[dict[str, np.ndarray]], cfg: QuantConfig, workdir: Path, *args, **kw):
    """The ranges of ``cfg.calibrate_method``: :func:`calibrate_many` with one method."""
    return calibrate_many(model_path, batches, [cfg], workdir, *args, **kw)[0]


def calibrate_many(
    model_path: Path,
    batches: Iterable[dict[str, np.ndarray]],
    cfgs: Sequence[QuantConfig],
    workdir: Path,
    on_batch: Callable[[int], None] | None = None,
    skip: set[str] = frozenset(),
    observe: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None,
    workers: int | None = None,
    nonfinite: dict[str, tuple[float, float]] | None = None,
    on_stage: Callable[[str, int], None] | None = None,
) -> list:
    """The ranges of every tensor ORT will quantize, for each calibration of ``cfgs``,
    from one pass over ``batches`` (one session run per batch).

    Returns one ORT ``TensorsData`` per item of ``cfgs``, in order, each exactly
    what ORT's calibrator of that method computes when its ``collect_data`` is
    called once per batch (``quantize_static`` with ``CalibStridedMinMax`` set to
    one batch; ``tests/pipeline/test_oracle.py``). Methods whose collectors
    gather the same statistics share one (:func:`collector_key`): Percentile
    (asymmetric), Entropy and Distribution with the same number of bins share
    one histogram, which each method then reads its own way. Collectors hold no
    batch: the histogram or the running min/max (:class:`MinMaxCollector`), so
    memory does not grow with the number of batches.

    Tensors in ``skip`` get no range. A tensor that turns out to hold NaN/Inf in
    a later batch than the probed one (a padded sequence's -inf attention mask)
    gets no range either, instead of failing ORT's histogram: it is added to
    ``nonfinite`` as ``{tensor: (finite min, finite max)}`` so that its nodes stay
    in float (for every method: one audit excludes one set of nodes).

    The calibrator's session runs batch k+1 while the collectors take batch k on
    ``workers`` threads (default: one per usable core), each collecting its
    share of the tensors. A tensor's statistics only ever see its own values,
    one batch at a time and in order, so they are those of ORT's ``collect_data``.
    ``observe(feeds, outputs)`` sees every batch with all the calibrated tensors
    and the model's outputs on a worker too, e.g. to check BN folding on the
    same pass. At most two batches of activations are alive at once.

    ``on_stage(description, total)`` is called before Entropy's threshold search when some
    histogram grew past :data:`GROWN_BINS` (the search is quadratic in the bins, ORT quirk 65),
    and ``on_batch(1)`` after each such tensor's search; each returned ``TensorsData`` then has
    a ``notes`` attribute saying so (the report's notes).
    """
    from concurrent.futures import ThreadPoolExecutor

    from qaudit.pipeline.parallel import TRIM_EVERY, release_free_memory, shares, usable_cores

    if not cfgs:
        raise ValueError("calibrate_many needs at least one QuantConfig")
    workers = workers or min(2, usable_cores())
    collectors: dict[tuple, object] = {}
    for cfg in cfgs:
        collectors.setdefault(collector_key(cfg), make_collector(cfg))
    active = list(collectors.values())

    def collect(batch):
        for c in active:
            c.collect(batch)

    try:
        with (
            quiet_ort(),
            ThreadPoolExecutor(max_workers=workers + bool(observe), thread_name_prefix="qaudit-calibrate") as pool,
        ):
            calibrator = _calibrator(model_path, workdir, set(skip))
            session = calibrator.infer_session
            names = [o.name for o in session.get_outputs()]
            input_names = {i.name for i in session.get_inputs()}
            shares_of: list[list[str]] | None = None
            seen = batch_no = 0
            pending: list = []
            done_n = 0
            for feeds in batches:
                outputs = dict(zip(names, session.run(None, feeds)))
                for k in input_names.intersection(outputs):  # as ORT does: onnxruntime issue 21922
                    outputs[k] = outputs[k].copy()
                for f in pending:
                    f.result()  # re-raises a worker's error
                if pending and on_batch:
                    on_batch(done_n)
                batch_no += 1
                if batch_no % TRIM_EVERY == 0:
                    release_free_memory()  # see there
                if shares_of is None:
                    sizes = {k: outputs[k].nbytes for k in names if k in calibrator.tensors_to_calibrate}
                    shares_of = shares(sizes, workers)
                # ORT's collect_data hands the collector a list of arrays per tensor (one batch here)
                pending = [pool.submit(collect, {k: [outputs[k]] for k in share}) for share in shares_of]
                if observe:
                    pending.append(pool.submit(observe, feeds, outputs))
                done_n = samples(feeds)
                seen += done_n
            for f in pending:
                f.result()
            if pending and on_batch:
                on_batch(done_n)
            if not seen:
                raise QuantizationError("no calibration samples were read")
            found = {}
            for c in active:
                found.update(c.nonfinite)
            if nonfinite is not None:
                nonfinite.update(found)
            return [
                compute_ranges(
                    collectors[collector_key(cfg)], cfg, drop=set(found), on_stage=on_stage, on_tensor=on_batch
                )
                for cfg in cfgs
            ]
    except QauditError:
        raise
    except Exception as e:
        raise QuantizationError(f"ONNX Runtime calibration failed: {type(e).__name__}: {_first_line(e)}") from e


def collector_key(cfg: QuantConfig) -> tuple:
    """Calibrations with equal keys gather the same statistics (onnxruntime 1.32's
    ``HistogramCollector.collect``): Percentile symmetric histograms |x|; Percentile
    asymmetric, Entropy and Distribution histogram the signed values
    (``collect_value``); each with its number of bins. MinMax keeps a running
    min/max per setting."""
    c = cfg.calibration()
    if cfg.calibrate_method == "minmax":
        return ("minmax", c["calib_symmetric"], c["moving_average"], c["averaging_constant"])
    absolute = cfg.calibrate_method == "percentile" and c["calib_symmetric"]
    return ("abs" if absolute else "value", int(c["num_bins"]))


def make_collector(cfg: QuantConfig):
    """A collector for ``cfg``'s calibration, fed ``{tensor: [one batch's array]}`` per batch."""
    c = cfg.calibration()
    if cfg.calibrate_method == "minmax":
        return MinMaxCollector(c["calib_symmetric"], c["moving_average"], c["averaging_constant"])
    return _histogram_collector(cfg, {})


def _histogram_collector(cfg: QuantConfig, histogram_dict: dict):
    """ORT's ``HistogramCollector`` as ``HistogramCalibrater.collect_data`` creates it on
    its first call (onnxruntime 1.32, calibrate.py), for ``cfg``'s method and options,
    holding ``histogram_dict``; see :func:`_lean_collector_class`."""
    c = cfg.calibration()
    collector = _lean_collector_class()(
        method=cfg.calibrate_method,
        symmetric=bool(c.get("calib_symmetric", False)),
        num_bins=int(c["num_bins"]),
        # the calibrators' own defaults where the method has no such option (onnxruntime 1.32)
        num_quantized_bins=int(c.get("num_quantized_bins", 128 if cfg.calibrate_method == "entropy" else 2048)),
        percentile=float(c.get("percentile", 99.999)),
        scenario="same",
    )
    collector.histogram_dict = histogram_dict
    return collector


#: Entropy histograms of more bins than this are said in a note and get a progress stage of their
#: own: ORT's KL search is quadratic in the bins (about 5 s at 20,001 bins here, ORT quirk 65)
GROWN_BINS = 10_000


def compute_ranges(collector, cfg: QuantConfig, drop: set[str] = frozenset(), on_stage=None, on_tensor=None):
    """``cfg``'s ranges from a collector of :func:`make_collector` (or one of the same
    :func:`collector_key`): what ORT's ``compute_data`` returns; tensors in ``drop`` get none.
    Entropy over histograms grown past :data:`GROWN_BINS`: ``on_stage``/``on_tensor`` as in
    :func:`calibrate_many`, and the result's ``notes`` name the largest (:func:`grown_note`)."""
    from onnxruntime.quantization.calibrate import TensorsData

    method = cfg.ort_calibrate_method()
    if isinstance(collector, MinMaxCollector):
        return TensorsData(method, {k: v for k, v in collector.ranges.items() if k not in drop})
    hists = {k: v for k, v in collector.histogram_dict.items() if k not in drop}
    if not hists:
        # Nothing to calibrate (no quantizable op in the main graph, or all non-finite):
        # ORT's compute_data fails with "Histogram has not been collected" (onnxruntime 1.32).
        return TensorsData(method, {})
    grown = {}
    if cfg.calibrate_method == "entropy":
        grown = {k: len(v[0]) for k, v in hists.items() if len(v[0]) > GROWN_BINS}
    computer = _histogram_collector(cfg, hists)
    if grown:
        biggest = max(grown, key=grown.get)
        if on_stage is not None:
            on_stage(
                f"Entropy's threshold search over {len(grown)} grown histogram(s), the largest "
                f"'{biggest}' at {grown[biggest]:,} bins (quadratic in the bins)",
                len(grown),
            )
        computer.timed = []
        computer.on_tensor = on_tensor
    # HistogramCalibrater.compute_data, with cfg's method and options on these histograms
    data = TensorsData(method, computer.compute_collection_result())
    if grown:
        data.notes = (grown_note(grown, computer.timed, int(cfg.calibration()["num_bins"])),)
    return data


def grown_note(grown: dict[str, int], seconds: list[float], num_bins: int) -> str:
    """The report's note on Entropy histograms ORT grew past :data:`GROWN_BINS` (ORT quirk 65)."""
    biggest = max(grown, key=grown.get)
    n = grown[biggest]
    others = f" ({len(grown) - 1} other tensor(s) past {GROWN_BINS:,} bins)" if len(grown) > 1 else ""
    return (
        f"Entropy calibration: the histogram of tensor '{biggest}' grew from {num_bins:,} to {n:,} bins"
        f"{others}: ORT keeps the first batch's bin width, and this tensor's first batch spanned about "
        f"1/{n / num_bins:,.0f} of its range; ORT's threshold search is quadratic in the bins and took "
        f"{sum(seconds):.0f} s over these tensors. Put a batch that spans the range first, calibrate "
        f"with larger batches, or use another method (docs/configuration.md#calibration)"
    )


class MinMaxCollector:
    """ORT's ``MinMaxCalibrater`` arithmetic (onnxruntime 1.32) on a running state.

    ORT's calibrator keeps every batch's ReduceMin/ReduceMax outputs until
    ``compute_data`` and then, per ``collect_data`` call, takes ``np.nanmin`` /
    ``np.nanmax`` of them (``np.nanmean`` with ``moving_average``), symmetrizes
    them (``symmetric``), and merges the result into the previous calls' range
    (``merge_range``: min/max, or ``old + c * (new - old)`` with
    ``moving_average``). With one batch per call, which is what qaudit computes
    (as for the histogram methods), ``nanmin`` of one batch is that batch's min,
    so the state is one ``(lowest, highest)`` pair per tensor, updated with the
    same numpy operations on the same dtypes and shapes as ORT's: the ranges are
    identical (``tests/pipeline/test_oracle.py``) and do not grow with N.
    A batch's min and max are the exact ``np.nanmin``/``np.nanmax`` of its values,
    which is what ORT's ReduceMin/ReduceMax give on finite values.
    """

    def __init__(self, symmetric: bool, moving_average: bool, averaging_constant: float):
        self.symmetric = bool(symmetric)
        self.moving_average = bool(moving_average)
        self.averaging_constant = averaging_constant
        #: {tensor: TensorData(lowest, highest)}, ORT's ``calibrate_tensors_range``
        self.ranges: dict = {}
        #: tensors found holding +-Inf (or only NaN) in some batch: {tensor: (finite min, finite max)};
        #: they get no range (ORT's would be infinite)
        self.nonfinite: dict = {}

    def collect(self, name_to_arr) -> None:
        from onnxruntime.quantization.calibrate import TensorData

        for tensor, data_arr in name_to_arr.items():
            if tensor in self.nonfinite:
                continue
            arr = data_arr[0] if isinstance(data_arr, list) and len(data_arr) == 1 else np.asarray(data_arr)
            flat = arr.ravel()
            if flat.size == 0:  # ReduceMin of nothing: no value to merge
                continue
            lo, hi = kernels.nan_minmax(flat)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                finite = flat[np.isfinite(flat)]
                self.nonfinite[tensor] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
                self.ranges.pop(tensor, None)
                continue
            # ReduceMin/ReduceMax (keepdims) + Reshape([-1]): one-element arrays of the tensor's type
            new_min, new_max = np.array([lo], dtype=flat.dtype), np.array([hi], dtype=flat.dtype)
            if self.symmetric:  # compute_data
                m = np.nanmax([np.abs(new_min), np.abs(new_max)], axis=0)
                new_min, new_max = -m, m
            old = self.ranges.get(tensor)
            if old is not None:  # merge_range
                old_min, old_max = old.range_value
                if self.moving_average:
                    new_min = old_min + self.averaging_constant * (new_min - old_min)
                    new_max = old_max + self.averaging_constant * (new_max - old_max)
                else:
                    new_min, new_max = min(old_min, new_min), max(old_max, new_max)
            self.ranges[tensor] = TensorData(lowest=new_min, highest=new_max)

    def state_nbytes(self) -> int:
        """Bytes of the collected state (tests: it does not grow with the number of batches)."""
        return sum(td.lowest.nbytes + td.highest.nbytes for td in self.ranges.values())


@functools.cache
def _lean_collector_class():
    """ORT's ``HistogramCollector`` whose ``collect_absolute_value`` (symmetric
    Percentile, the default) and ``collect_value`` (asymmetric Percentile, Entropy,
    Distribution) do ORT's arithmetic on the same values without ORT's overhead
    (onnxruntime 1.32): no ``np.asarray`` of the one-array list and ``flatten``
    (two copies of every activation; ``ravel`` is a view), and for |x| the batch's
    ``max|x|`` from its min and max instead of another pass. Any other input
    (several arrays per tensor) goes to ORT's own method. The histograms are
    identical to ORT's (``tests/pipeline/test_oracle.py``, ``tests/test_realmodels.py``).
    Like ORT's, it holds one histogram per tensor and no batch.
    """
    from onnxruntime.quantization.calibrate import HistogramCollector

    class LeanHistogramCollector(HistogramCollector):
        #: tensors found holding NaN/Inf in some batch: {tensor: (finite min, finite max)};
        #: they get no histogram (ORT's would fail: "autodetected range ... is not finite")
        nonfinite: dict

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.nonfinite = {}

        def state_nbytes(self) -> int:
            """Bytes of the histograms (tests: they do not grow with the number of batches)."""
            return sum(sum(np.asarray(x).nbytes for x in h) for h in self.histogram_dict.values())

        def collect_value(self, name_to_arr):
            for tensor, data_arr in name_to_arr.items():
                if tensor in self.nonfinite:
                    continue
                arr = data_arr[0] if isinstance(data_arr, list) and len(data_arr) == 1 else data_arr
                if not isinstance(arr, np.ndarray):
                    super().collect_value({tensor: data_arr})
                    continue
                flat = arr.ravel()  # the values of ORT's np.asarray(data_arr).flatten(), in its order
                extremes = self._extremes(tensor, flat)
                if extremes is None:
                    continue
                min_value, max_value = extremes
                threshold = np.array(max(abs(min_value), abs(max_value)), dtype=flat.dtype)
                if tensor in self.histogram_dict:
                    old = self.histogram_dict[tensor]
                    self.histogram_dict[tensor] = self.merge_histogram(old, flat, min_value, max_value, threshold)
                else:
                    hist, hist_edges = kernels.uniform_histogram(flat, self.num_bins, (-threshold, threshold))
                    self.histogram_dict[tensor] = (hist, hist_edges, min_value, max_value, threshold)

        def merge_histogram(self, old_histogram, data_arr, new_min, new_max, new_threshold):
            """ORT's ``HistogramCollector.merge_histogram`` (onnxruntime 1.32), line for line, with
            ``np.histogram(data, bins, range=...)`` done by :func:`kernels.uniform_histogram`."""
            (old_hist, old_hist_edges, old_min, old_max, old_threshold) = old_histogram
            if new_threshold <= old_threshold:
                new_hist, _ = kernels.uniform_histogram(data_arr, len(old_hist), (-old_threshold, old_threshold))
                return new_hist + old_hist, old_hist_edges, min(old_min, new_min), max(old_max, new_max), old_threshold
            if old_threshold == 0:
                hist, hist_edges = kernels.uniform_histogram(data_arr, len(old_hist), (-new_threshold, new_threshold))
                hist += old_hist
            else:
                old_num_bins = len(old_hist)
                old_stride = 2 * old_threshold / old_num_bins
                half_increased_bins = int((new_threshold - old_threshold) // old_stride + 1)
                new_num_bins = old_num_bins + 2 * half_increased_bins
                new_threshold = half_increased_bins * old_stride + old_threshold
                hist, hist_edges = kernels.uniform_histogram(data_arr, new_num_bins, (-new_threshold, new_threshold))
                hist[half_increased_bins : new_num_bins - half_increased_bins] += old_hist
            return hist, hist_edges, min(old_min, new_min), max(old_max, new_max), new_threshold

        #: the seconds of each search over a histogram of more than GROWN_BINS bins (None: not timed;
        #: compute_ranges sets a list), and a callable advanced by 1 after each of them
        timed: list | None = None
        on_tensor = None

        def get_entropy_threshold(self, histogram, num_quantized_bins):
            """:meth:`_kl_threshold`, timed for a histogram of more than :data:`GROWN_BINS` bins."""
            import time

            t0 = time.perf_counter()
            optimal = self._kl_threshold(histogram, num_quantized_bins)
            if self.timed is not None and histogram[0].size > GROWN_BINS:
                self.timed.append(time.perf_counter() - t0)
                if self.on_tensor is not None:
                    self.on_tensor(1)
            return optimal

        def _kl_threshold(self, histogram, num_quantized_bins):
            """ORT's ``HistogramCollector.get_entropy_threshold`` (onnxruntime 1.32): the same
            KL search, the same ``p`` and ``q`` for every candidate threshold and ORT's own
            ``smooth_distribution`` and ``entropy`` on them, so the threshold is ORT's, bit for bit
            (``tests/pipeline/test_calibrators.py``). ORT sums the outliers, merges the bins and
            counts the non-zero bins with Python's builtin ``sum`` over numpy scalars, candidate
            by candidate; here they are exact int64 prefix sums and reshapes (11x faster at 20,001
            bins). Still quadratic in the bins, as ORT's search is: a histogram ORT widened by whole
            bins of the first batch's width can hold hundreds of thousands (ORT quirk 65)."""
            from onnxruntime.quantization.calibrate import entropy
            from onnxruntime.quantization.quant_utils import smooth_distribution

            hist, hist_edges = histogram[0], histogram[1]
            num_bins = hist.size
            zero_bin_index = num_bins // 2
            half = num_quantized_bins // 2
            dtype = hist_edges.dtype
            kl_divergence = np.zeros(zero_bin_index - half + 1)
            prefix = np.concatenate([np.zeros(1, dtype=hist.dtype), np.cumsum(hist)])
            total = prefix[-1]
            qn = num_quantized_bins
            for i in range(half, zero_bin_index + 1):
                start, end = zero_bin_index - i, min(zero_bin_index + i + 1, num_bins)
                p = hist[start:end].copy()
                p[0] += prefix[start]  # ORT: sum(hist[:start_index])
                p[-1] += total - prefix[end]  # ORT: sum(hist[end_index:])
                merged = p.size // qn
                body = start + qn * merged
                quantized_bins = hist[start:body].reshape(qn, merged).sum(axis=1)
                quantized_bins[-1] += prefix[end] - prefix[body]
                norm = (p[: qn * merged] != 0).reshape(qn, merged).sum(axis=1)
                q = np.zeros(p.size, dtype=np.int64)
                # ORT assigns quantized_bins[k] / norm (a float) to an int64 slice: truncated; 0 where norm is 0
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.where(norm != 0, quantized_bins / np.where(norm != 0, norm, 1), 0)
                q[: qn * merged] = np.repeat(values.astype(np.int64), merged)
                p, q = smooth_distribution(p), smooth_distribution(q)
                if p is None or q is None:
                    kl_divergence[i - half] = np.array(np.inf, dtype=dtype)
                else:
                    kl_divergence[i - half] = np.array(entropy(p, q), dtype=dtype)
            i = int(np.argmin(kl_divergence)) + half
            optimal = (hist_edges[zero_bin_index - i], hist_edges[min(zero_bin_index + i + 1, num_bins)])
            min_value, max_value = histogram[2], histogram[3]
            if optimal[0] < min_value:
                optimal = (min_value, optimal[1])
            if optimal[1] > max_value:
                optimal = (optimal[0], max_value)
            return optimal

        def _extremes(self, tensor, flat):
            """ORT's ``min_value, max_value`` of a batch (np.nanmin and np.nanmax, zeros when
            empty), or None when they are not finite (+-inf, or all NaN): the tensor is dropped."""
            if flat.size == 0:
                return np.array(0, dtype=flat.dtype), np.array(0, dtype=flat.dtype)
            min_value, max_value = kernels.nan_minmax(flat)
            if not (np.isfinite(min_value) and np.isfinite(max_value)):
                self._drop_nonfinite(tensor, flat)
                return None
            return min_value, max_value

        def _drop_nonfinite(self, tensor, flat) -> None:
            finite = flat[np.isfinite(flat)]
            self.nonfinite[tensor] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            self.histogram_dict.pop(tensor, None)

        def collect_absolute_value(self, name_to_arr):
            for tensor, data_arr in name_to_arr.items():
                if tensor in self.nonfinite:
                    continue
                arr = data_arr[0] if isinstance(data_arr, list) and len(data_arr) == 1 else data_arr
                if not isinstance(arr, np.ndarray) or arr.dtype == np.float64:
                    super().collect_absolute_value({tensor: data_arr})  # ORT's checks and messages
                    continue
                flat = arr.ravel()
                extremes = self._extremes(tensor, flat)
                if extremes is None:
                    continue
                min_value, max_value = extremes
                if tensor not in self.histogram_dict:
                    data = np.absolute(flat)
                    # np.histogram(data, bins=self.num_bins): its autodetected range is data's min and
                    # max (numpy's _get_outer_edges), which fails on NaN among finite values
                    lo, hi = (data.min(), data.max()) if data.size else (0.0, 1.0)
                    if not (np.isfinite(lo) and np.isfinite(hi)):
                        self._drop_nonfinite(tensor, flat)
                        continue
                    try:
                        hist, hist_edges = kernels.uniform_histogram(data, self.num_bins, (lo, hi))
                    except ValueError as e:  # numpy: no num_bins distinct float32 edges in [lo, hi]
                        raise QuantizationError(
                            f"ONNX Runtime's Percentile calibration cannot bin tensor '{tensor}': its first batch's "
                            f"absolute values span [{lo:.9g}, {hi:.9g}], fewer float32 steps than {self.num_bins} "
                            f"bins (numpy: {e}; docs/ort-quirks.md #70); use --calibrate-method minmax or entropy, "
                            "or calibration data whose first batch varies more"
                        ) from e
                    self.histogram_dict[tensor] = (hist, hist_edges.astype(data.dtype), min_value, max_value)
                    continue
                if flat.size == 0:  # no values: nothing to add (ORT fails here, docs/ort-quirks.md #22)
                    continue
                old_hist, old_hist_edges, old_min, old_max = self.histogram_dict[tensor]
                # = np.nanmax(|x|); NaN when every value is NaN, like ORT's
                temp_amax = np.fmax(np.absolute(min_value), np.absolute(max_value))
                if temp_amax > old_hist_edges[-1]:
                    width = old_hist_edges[1] - old_hist_edges[0]
                    new_bin_edges = np.arange(old_hist_edges[-1] + width, temp_amax + width, width)
                    old_hist_edges = np.hstack((old_hist_edges, new_bin_edges))
                # np.histogram(np.absolute(flat), bins=old_hist_edges); in a batch that
                # widened the edges ORT's np.arange made them float64 (onnxruntime 1.32),
                # and numpy compares on those: kernels.abs_histogram does too
                hist = kernels.abs_histogram(flat, old_hist_edges)
                hist_edges = old_hist_edges.astype(flat.dtype, copy=False)
                hist[: len(old_hist)] += old_hist
                self.histogram_dict[tensor] = (hist, hist_edges, min(old_min, min_value), max(old_max, max_value))

    return LeanHistogramCollector


def quantize(
    model_path: Path,
    ranges,
    cfg: QuantConfig,
    out_path: Path,
    workdir: Path,
    also_exclude: Iterable[str] = (),
    tensor_overrides: dict | None = None,
) -> Path:
    """Write the statically quantized model for ``model_path`` with the given ranges.

    ``also_exclude``: node names qaudit itself leaves in float (beside ``cfg.exclude``).
    ``tensor_overrides``: ORT's ``TensorQuantOverrides`` (qaudit.pipeline.overrides.resolve).
    """
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = Path(workdir) / "calibration_ranges.json"
    save_tensors_data(ranges, cache)
    try:
        with quiet_ort():
            quantize_static(
                str(model_path),
                str(out_path),
                calibration_data_reader=None,
                calibration_cache_path=str(cache),
                **static_arguments(cfg, also_exclude, tensor_overrides),
            )
    except Exception as e:
        raise QuantizationError(
            f"ONNX Runtime could not quantize the model: {type(e).__name__}: {_first_line(e)}; "
            "try --exclude for the failing node or --format qdq"
        ) from e
    return Path(out_path)


def static_arguments(cfg: QuantConfig, also_exclude: Iterable[str] = (), tensor_overrides: dict | None = None) -> dict:
    """The keyword arguments :func:`quantize` gives ``quantize_static`` besides the model paths
    and the calibration cache (``qaudit fix --ort-args`` writes them for a user's own call)."""
    act, wt = cfg.ort_quant_types()
    return {
        "quant_format": cfg.ort_format(),
        "activation_type": act,
        "weight_type": wt,
        "per_channel": cfg.per_channel,
        "reduce_range": cfg.reduce_range,
        "nodes_to_exclude": list(cfg.exclude) + [n for n in also_exclude if n not in cfg.exclude],
        "calibrate_method": cfg.ort_calibrate_method(),  # must be the cache's
        "extra_options": {
            **cfg.ort_extra_options(),
            **({"TensorQuantOverrides": tensor_overrides} if tensor_overrides else {}),
        },
    }


def _first_line(e: Exception) -> str:
    from qaudit.pipeline.session import ort_message

    return ort_message(e)


def quantizer_changes(fp32_model, qmodel) -> dict:
    """What ONNX Runtime's quantizer changed beyond inserting Q/DQ (onnxruntime 1.32):
    ``{"notes": [...]}``, plus ``"quantized_opset"`` when ORT raised the opset and
    ``"qdq_domain": "com.microsoft"`` when it wrote contrib Q/DQ ops (the report's settings).

    ``quantize_static`` raises the opset itself for some types (``quant_utils.update_opset_version``;
    qaudit upgrades first for 16-bit types, :func:`qaudit.pipeline.audit.opset_needed`), and below
    opset 21 writes 4-bit Q/DQ in the ``com.microsoft`` domain (``qdq_quantizer``, ``UseQDQContribOps``):
    such a model runs on ONNX Runtime only, and ORT's ``qdq_loss_debug`` matches none of its
    activations (docs/ort-quirks.md). Each is a note of the report.
    """

    def opset(m):
        return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)

    before, after = opset(fp32_model), opset(qmodel)
    qdq = [n for n in qmodel.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    domains = sorted({n.domain or "ai.onnx" for n in qdq})
    notes = []
    if after != before:
        notes.append(
            f"ONNX Runtime's quantizer raised the opset from {before} to {after} (onnx.version_converter) "
            "for the quantization types"
        )
    if "com.microsoft" in domains:
        notes.append(
            f"ONNX Runtime wrote QuantizeLinear/DequantizeLinear in the com.microsoft domain (opset {after} has no "
            "4-bit Q/DQ; ONNX has them from opset 21): the quantized model runs on ONNX Runtime only"
        )
    saturated = _saturated_biases(qmodel)
    if saturated:
        notes.append(
            f"{len(saturated)} int32 bias(es) saturated at the int32 limits ({', '.join(saturated[:3])}"
            f"{', ...' if len(saturated) > 3 else ''}): ONNX Runtime quantizes a bias with scale "
            "input scale x weight scale, which 16-bit types make so small that |bias| / scale exceeds 2^31, "
            "and clips it; those layers' errors include the clipped bias (with int8 or int16 weights ORT "
            "widens the weight scale instead)"
        )
    out: dict = {"notes": notes}  # the settings keys only when ORT changed something (a baseline stays the same)
    if after != before:
        out["quantized_opset"] = after
    if "com.microsoft" in domains:
        out["qdq_domain"] = "com.microsoft"
    return out


def _saturated_biases(qmodel) -> list[str]:
    """Layers whose int32 bias (a DequantizeLinear of an int32 initializer) holds
    -2^31 or 2^31 - 1: ORT clipped it (onnxruntime 1.32, docs/ort-quirks.md)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in qmodel.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    readers = {i: n.name for n in qmodel.graph.node for i in n.input}
    out = []
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            b = numpy_helper.to_array(inits[node.input[0]])
            lim = np.iinfo(np.int32)
            if b.size and (b.max() == lim.max or b.min() == lim.min):
                out.append(readers.get(node.output[0], node.name))
    return out


def nonfinite_exclusions(model, bad: dict) -> dict[str, str]:
    """Nodes that read or write a tensor holding NaN/Inf stay in float, with the reason.

    ``bad`` is :func:`probe_activations`' ``{tensor: (finite min, finite max)}``.
    """
    out = {}
    for node in model.graph.node:
        hit = [t for t in list(node.input) + list(node.output) if t in bad]
        if hit:
            lo, hi = bad[hit[0]]
            out[node.name] = (
                f"left in float by qaudit: tensor '{hit[0]}' holds non-finite values "
                f"(finite range [{lo:g}, {hi:g}]) that cannot be calibrated"
            )
    return out
