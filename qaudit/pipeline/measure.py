"""Stage 5: turn streamed tensors and the graphs' weights into report rows.

:class:`ActivationMeter` and :class:`OutputMeter` consume one batch at a time
(:func:`output_kinds` decides from the graph what each model output holds);
:func:`weight_row_fields` needs no data. :func:`layer_rows` decides which
fp32 nodes become rows: every weighted layer, plus every node whose output has
a quantized twin; an activation the quantizer fused into a layer (Relu/Clip
after Conv) is reported on that layer's row.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from qaudit.errors import ConfigError, DataError
from qaudit.options import INTEGER_RANGES
from qaudit.pipeline import kernels
from qaudit.pipeline.graph import GraphIndex, attr, consumers, initializers, producers, to_array, weighted_layers
from qaudit.pipeline.match import REMOVABLE_ACTIVATIONS, Matching, quantized_weight
from qaudit.pipeline.metrics import (
    ClipCounter,
    ErrorAccumulator,
    ErrorDecomposition,
    OutputAccumulator,
    RangeHistogram,
    channel_axis,
    dequantize,
    looks_like_probabilities,
    qmse_of,
    range_stats,
    sqnr_of,
)
from qaudit.pipeline.transform import FoldRecord
from qaudit.report import Histogram, LayerRow, OutputRow

#: bins of the per-layer fp32 histogram kept in the report (128 ints per row)
HISTOGRAM_BINS = 128


#: Small tensors are held back and histogrammed together with the next batches'
#: (:class:`RangeHistogram` gives the same result however the data is batched, up
#: to float32 rounding at a bin edge when its grid grows): an update costs about
#: ``C * bins`` counters beside the values (``C * channel_bins`` on its cheaper
#: path), 20x the values of a [1, 384, 10, 10] tensor. A tensor waits until it
#: has ``max(C * bins, 64 Ki)`` values or fills its share of PENDING_BYTES
#: (split evenly over the model's twins, at least 256 KiB each). The rule depends
#: on the tensor and the model only, not on timing or on how the tensors are
#: shared out over threads, so the metrics are the same on every machine.
#: PP-OCRv4 det (onnxruntime 1.32, numpy 2.4): 8.7 -> 4.6 ns per value.
PENDING_BYTES = 64 << 20
MIN_PENDING_BYTES = 256 << 10


class ActivationMeter:
    """Streaming statistics of every matched tensor pair.

    Call :meth:`flush` after the last batch, before reading :attr:`hist`.
    """

    def __init__(self, matching: Matching, names: Iterable[str] | None = None):
        """``names``: the twins (fp32 names, and the keys of converted edges) this meter
        measures; all by default (:attr:`~qaudit.pipeline.match.Matching.measured`).
        Meters of disjoint shares can run on separate threads and be joined
        with :meth:`combine`. A converted edge reads the same fp32 tensor as its twin: only
        its error is accumulated, the fp32 tensor's histogram is its twin's."""
        self.matching = matching
        measured = matching.measured
        self.names = list(measured) if names is None else list(names)
        self.hist = {n: RangeHistogram() for n in self.names if n in matching.twins}
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_values: dict[str, int] = {}
        self._pending_cap = max(PENDING_BYTES // max(1, len(matching.twins)), MIN_PENDING_BYTES)
        self.err = {n: ErrorAccumulator() for n in self.names}
        self.iso = {n: ErrorAccumulator() for n in self.names}
        self.clip = {}
        #: the isolated error's clipping/rounding split and code use (per-tensor encodings)
        self.decomp: dict[str, ErrorDecomposition] = {}
        self.axis: dict[str, int | None] = {}
        for n in self.names:
            enc = measured[n].encoding
            if enc.per_tensor:
                self.clip[n] = ClipCounter(*enc.limits())
                self.decomp[n] = ErrorDecomposition(*INTEGER_RANGES[enc.dtype])

    @classmethod
    def combine(cls, meters: Sequence[ActivationMeter]) -> ActivationMeter:
        """One meter holding the (flushed) statistics of meters over disjoint twins."""
        out = cls(meters[0].matching, names=())
        for m in meters:
            m.flush()
            out.names += m.names
            for attr_name in ("hist", "err", "iso", "clip", "decomp", "axis"):
                getattr(out, attr_name).update(getattr(m, attr_name))
        return out

    def merge(self, other: ActivationMeter) -> ActivationMeter:
        """Add ``other``'s statistics of the same twins, measured on other batches (a shard of the
        evaluation data): histograms, counts and extremes exactly as if one meter had seen both
        (:meth:`RangeHistogram.merge`), sums of squares up to float64 rounding of their order."""
        if set(other.names) != set(self.names):
            raise ValueError("cannot merge meters of different twins")
        self.flush()
        other.flush()
        for n in self.names:
            self.hist[n].merge(other.hist[n])
            self.err[n].merge(other.err[n])
            self.iso[n].merge(other.iso[n])
            if n in self.clip:
                self.clip[n].merge(other.clip[n])
            if n in self.decomp and n in other.decomp:
                self.decomp[n].merge(other.decomp[n])
            if n in other.axis:
                self.axis.setdefault(n, other.axis[n])
        return self

    def update(
        self, fp32: dict[str, np.ndarray], quant: dict[str, np.ndarray], isolated: dict[str, np.ndarray] | None = None
    ) -> None:
        """One batch: the fp32 tensors, the quantized graph's integer twins and,
        optionally, the twins of the isolated-error graph (each layer fed fp32
        inputs, see :func:`qaudit.pipeline.capture.isolated_model`)."""
        measured = self.matching.measured
        for name in self.names:
            tw = measured[name]
            x = fp32[tw.fp32_name]
            enc = tw.encoding
            if name in self.hist:  # not a converted edge (its fp32 tensor's histogram is its twin's)
                self._histogram(name, x, self.axis.setdefault(name, channel_axis(x.ndim)))
            q_iso = isolated[tw.quant_name] if isolated is not None else None
            clip = self.clip.get(name)
            decomp = self.decomp.get(name) if q_iso is not None else None
            sum_x2, sum_e2, sum_e2_iso, outside, sum_e2_clip = kernels.error_sums(
                x,
                quant[tw.quant_name],
                enc.scale,
                enc.zero_point,
                axis=enc.axis if not enc.per_tensor else None,
                q_isolated=q_iso,
                limits=(clip.q_min, clip.q_max) if clip is not None else None,
                codes=decomp.codes if decomp is not None else None,
                code_min=decomp.code_min if decomp is not None else 0,
            )
            self.err[name].add(sum_x2, sum_e2, x.size)
            if q_iso is not None:  # the same x: the same sum(x^2)
                self.iso[name].add(sum_x2, sum_e2_iso, x.size)
            if clip is not None:
                clip.add(outside, x.size)
            if decomp is not None:
                decomp.add(sum_e2_iso, sum_e2_clip, x.size)

    def _histogram(self, name: str, x: np.ndarray, axis: int | None) -> None:
        hist = self.hist[name]
        if axis is None:
            x = x.reshape(-1)
        pending = self._pending.get(name)
        if pending and pending[0].shape[1:] != x.shape[1:]:  # cannot be stacked with what waits
            self._flush(name)
            pending = None
        channels = x.shape[axis] if axis is not None else 1
        enough = min(self._pending_cap // x.itemsize, max(channels * hist.bins, 1 << 16))
        if not pending and x.size >= enough:
            hist.update(x, axis)
            return
        self._pending.setdefault(name, []).append(x)  # ORT's output array: not modified, only referenced
        self._pending_values[name] = self._pending_values.get(name, 0) + x.size
        if self._pending_values[name] >= enough:
            self._flush(name)

    def _flush(self, name: str) -> None:
        parts = self._pending.pop(name, None)
        self._pending_values.pop(name, None)
        if not parts:
            return
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        self.hist[name].update(x, self.axis[name])

    def flush(self) -> None:
        """Histogram every tensor still pending."""
        for name in list(self._pending):
            self._flush(name)


#: ops between a Softmax/LogSoftmax and a graph output that keep its values class scores over the same axis
CLASS_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"})
CLASS_PRODUCERS = frozenset({"Softmax", "LogSoftmax"})
#: ``--class-outputs none``: no output holds class scores (unless an output has that name)
NO_CLASS_OUTPUTS = "none"


@dataclass(frozen=True)
class OutputKinds:
    """What each graph output holds (``"class"`` or ``"regression"``), in graph order, which
    ones already are probabilities, and the output the labels score (docs/metrics.md)."""

    kinds: dict[str, str]
    probabilities: frozenset[str] = frozenset()
    label_output: str | None = None


def _producer(name: str, prod: dict) -> onnx.NodeProto | None:
    """The node that computes ``name``, looking through :data:`CLASS_PASS_THROUGH` ops (``None``: a graph input)."""
    seen = set()
    while name in prod and name not in seen:
        seen.add(name)
        node = prod[name]
        if node.op_type not in CLASS_PASS_THROUGH or not node.input:
            return node
        name = node.input[0]
    return None


def _scores_over_last_axis(node: onnx.NodeProto, shapes: dict, opset: int) -> bool:
    """Whether a Softmax/LogSoftmax normalizes over its input's last axis (the class axis qaudit
    scores): not a segmentation map's ``[N, C, H, W]`` softmax over C. Before opset 13 the
    default axis is 1, over the input flattened from it: the last axis of a rank-2 input."""
    axis = attr(node, "axis", -1 if opset >= 13 else 1)
    shape = shapes.get(node.input[0])
    if shape is None:
        return axis == -1 or axis == 1  # rank unknown: [N, K] is the usual case
    return axis in (-1, len(shape) - 1)


def _declared_shape(vi) -> tuple | None:
    """The static shape of a value (``None`` per unknown dim), or ``None`` when even the rank is unknown."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def _check_names(names, outputs: list[str], flag: str) -> None:
    for n in names:
        if n not in outputs:
            hint = difflib.get_close_matches(n, outputs, n=1)
            raise ConfigError(
                f"{flag} {n!r} is not an output of the model"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; its outputs are: {', '.join(outputs)}"
            )


def output_kinds(
    model: onnx.ModelProto, class_outputs=(), label_output: str | None = None, labelled: bool = False
) -> OutputKinds:
    """Decide which outputs hold class scores, and which one ``labels`` score (docs/metrics.md).

    ``class_outputs`` (``--class-outputs``) and ``label_output`` (``--label-output``, a
    class output too) name them; by default an output computed by Softmax or LogSoftmax over
    its last axis (through Reshape, Flatten, Identity, ...) is a class output, and when there is none,
    the one output of shape ``[N, K]`` with ``K > 1`` not computed by a Sigmoid, if exactly
    one has it. Everything else is a regression output (a sigmoid multi-label head too,
    unless named). ``class_outputs=("none",)``: no output holds class scores. With
    ``labelled``, the labels score ``label_output``, else the one class output of rank 2;
    none or several is a :class:`ConfigError` asking for ``--label-output``, as is a name
    that is not an output.
    """
    g = model.graph
    names = [o.name for o in g.output]
    no_class = tuple(class_outputs) == (NO_CLASS_OUTPUTS,) and NO_CLASS_OUTPUTS not in names
    class_outputs = () if no_class else tuple(class_outputs)
    _check_names(class_outputs, names, "--class-outputs")
    if label_output is not None:
        _check_names([label_output], names, "--label-output")
    prod = producers(g)
    declared = {vi.name: _declared_shape(vi) for vi in list(g.input) + list(g.value_info)}
    shapes = {o.name: _declared_shape(o) or declared.get(o.name) for o in g.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    source = {}
    for n in names:
        node = _producer(n, prod)
        op = node.op_type if node is not None else None
        if op in CLASS_PRODUCERS and not _scores_over_last_axis(node, {**declared, **shapes}, opset):
            op = f"{op} over an inner axis"
        source[n] = op
    if class_outputs or no_class:
        cls = set(class_outputs)
    else:
        cls = {n for n in names if source[n] in CLASS_PRODUCERS}
        if not cls:  # a Sigmoid's [N, K] is K independent scores (multi-label), not a distribution
            scores = [
                n
                for n in names
                if source[n] != "Sigmoid" and shapes[n] is not None and len(shapes[n]) == 2 and shapes[n][1] != 1
            ]
            cls = set(scores) if len(scores) == 1 else set()
    if label_output is not None:
        cls.add(label_output)
    kinds = {n: "class" if n in cls else "regression" for n in names}
    probabilities = frozenset(n for n in cls if source[n] == "Softmax")
    label = label_output
    if labelled and label is None:
        candidates = [n for n in names if kinds[n] == "class" and (shapes[n] is None or len(shapes[n]) == 2)]
        if len(candidates) != 1:
            described = ", ".join(f"{n} [{_dims(shapes[n])}] {kinds[n]}" for n in names)
            why = "several hold class scores" if candidates else "none holds class scores [N, K]"
            raise ConfigError(
                f"--labels: which output do they score? Of the model's outputs ({described}), {why}; "
                "name it with --label-output NAME"
            )
        label = candidates[0]
    if labelled and shapes[label] is not None and len(shapes[label]) != 2:
        raise ConfigError(
            f"--label-output {label!r} has shape [{_dims(shapes[label])}]: labels (one class per sample) "
            "score an output of shape [N, K]"
        )
    return OutputKinds(kinds, probabilities, label if labelled else None)


def _dims(shape) -> str:
    return "?" if shape is None else ",".join("?" if d is None else str(d) for d in shape)


class OutputMeter:
    """Model-output metrics by :class:`OutputKinds`; an output not produced by Softmax is
    taken for probabilities when its first batch looks like them."""

    def __init__(self, kinds: OutputKinds):
        self.kinds = kinds
        self.names = list(kinds.kinds)
        self.acc: dict[str, OutputAccumulator] = {}
        self.label_output = kinds.label_output

    def prime(self, fp32: dict) -> None:
        """Decide what each output holds from ``fp32`` (the first batch's outputs) without measuring
        it: a meter of a later shard of the data decides as the meter of the first one does."""
        for name in self.names:
            if name not in self.acc:
                kind = self.kinds.kinds[name]
                x = fp32[name]
                probs = name in self.kinds.probabilities or (kind == "class" and looks_like_probabilities(x))
                self.acc[name] = OutputAccumulator(name, probabilities=probs, kind=kind)

    def merge(self, other: OutputMeter) -> OutputMeter:
        """Add ``other``'s samples (another shard of the evaluation data, after this one's)."""
        for name, acc in other.acc.items():
            if name in self.acc:
                self.acc[name].merge(acc)
            else:
                self.acc[name] = acc
        return self

    def update(self, fp32: dict, quant: dict, labels: np.ndarray | None) -> None:
        self.prime(fp32)
        for name in self.names:
            x, y = fp32[name], quant[name]
            lab = labels if name == self.label_output else None
            if lab is not None and (x.ndim != 2 or x.shape[1] < 2):
                raise DataError(
                    f"labels score output '{name}', of shape {list(x.shape)}: one class per sample needs "
                    "an output [N, K] with K >= 2; name another with --label-output"
                )
            if lab is not None and len(lab) and (lab.min() < 0 or lab.max() >= x.shape[1]):
                raise DataError(
                    f"labels must be class indices in [0, {x.shape[1] - 1}] for output '{name}' "
                    f"(found {int(lab.min())}..{int(lab.max())})"
                )
            self.acc[name].update(x, y, lab)

    def rows(self) -> tuple[OutputRow, ...]:
        return tuple(OutputRow(name=n, **self.acc[n].result()) for n in self.names if n in self.acc)


def weight_row_fields(
    layer,
    fold: FoldRecord | None,
    fp32_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    fp32_inits: dict | None = None,
    q_index: GraphIndex | None = None,
    base_dir=None,
) -> dict:
    """Plain and folded weight range/precision, and the weight quantization error.

    ``fp32_inits`` and ``q_index``: the two graphs' look-ups, built once by a caller measuring many layers.
    ``base_dir``: the folder of ``fp32_model``'s external data, if it has some.
    Each weight is read and rearranged once (a 315 MB weight: three copies fewer).
    """
    inits = fp32_inits if fp32_inits is not None else initializers(fp32_model.graph)
    w_fold = to_array(inits[layer.weight_name], base_dir)
    rows = layer.channel_matrix(w_fold)
    folded = range_stats(rows)
    plain = range_stats(layer.channel_matrix(fold.weight_before)) if fold is not None else folded
    out = {f"w_{k}": v for k, v in plain.items()}
    out.update(layer_signature(layer, w_fold, rows.shape))
    del rows
    out.update({f"fold_w_{k}": v for k, v in folded.items()})
    q = quantized_weight(qmodel, layer.name, layer.op_type, layer.weight_index, layer.node, q_index)
    if q is not None:
        w_hat, enc = q
        out["w_sqnr_db"] = sqnr_of(w_fold, w_hat.reshape(w_fold.shape))
        out["w_qmse"] = qmse_of(w_fold, w_hat.reshape(w_fold.shape))
        out["w_encoding"] = f"{enc.dtype} {'per-tensor' if enc.per_tensor else 'per-channel'}"
    return out


def layer_signature(layer, w: np.ndarray, rows_shape: tuple | None = None) -> dict:
    """Weight shape, spatial kernel, groups and channel counts: what aligns layers across exports.

    ``rows_shape``: the shape of ``layer.channel_matrix(w)``, when the caller has it."""
    rows_shape = rows_shape or layer.channel_matrix(w).shape
    c_out = int(rows_shape[0])
    groups = int(attr(layer.node, "group", 1)) if layer.op_type in ("Conv", "ConvTranspose") else 1
    kernel = tuple(int(k) for k in w.shape[2:]) if layer.op_type in ("Conv", "ConvTranspose") else ()
    k = int(np.prod(kernel)) if kernel else 1
    c_in = int(rows_shape[1] // k) * (groups if layer.op_type == "Conv" else 1)
    if layer.op_type == "ConvTranspose":
        c_in = int(w.shape[0])
    return {"w_shape": tuple(int(d) for d in w.shape), "kernel": kernel, "groups": groups, "c_in": c_in, "c_out": c_out}


def activation_row_fields(name: str, meter: ActivationMeter, clip_percentile: float) -> dict:
    tw = meter.matching.measured[name]
    h = meter.hist[tw.fp32_name]  # a converted edge: its twin's fp32 tensor
    err = meter.err[name]
    lo, hi = h.clipped_range(clip_percentile)
    a_range = hi - lo
    prec = None
    if meter.axis.get(tw.fp32_name) is not None and a_range > 0:
        prec = float(np.mean(h.channel_ranges(clip_percentile) / a_range))
    enc = tw.encoding
    compact = h.compact(HISTOGRAM_BINS)
    out = {
        "a_lo": lo,
        "a_hi": hi,
        "a_range": a_range,
        "a_precision": prec,
        "a_min": h.min,
        "a_max": h.max,
        "dtype": enc.dtype,
        "sqnr_db": err.sqnr_db,
        "qmse": err.qmse,
        "histogram": Histogram(compact[0], compact[1], tuple(compact[2])) if compact else None,
    }
    iso = meter.iso[name]
    if iso.count:
        out["sqnr_isolated_db"] = iso.sqnr_db
        out["qmse_isolated"] = iso.qmse
        out["error_amplification"] = err.qmse / iso.qmse if iso.qmse > 0 else None
    if enc.per_tensor:
        q_min, q_max = enc.limits()
        out.update(
            scale=float(enc.scale.reshape(-1)[0]),
            zero_point=int(enc.zero_point.reshape(-1)[0]),
            q_min=q_min,
            q_max=q_max,
            clip_fraction=meter.clip[name].fraction,
        )
        decomp = meter.decomp.get(name)
        if decomp is not None and decomp.count:
            out.update(
                clip_error_share=decomp.clip_error_share,
                grid_use=decomp.grid_use,
                codes_used=decomp.codes_used,
            )
    return out


#: the name of a converted edge's row: its tensor's row name, then this (ORT's mixed-precision
#: fixer quantizes the tensor again, at another type, for the consumers that read that type)
CONVERTED_ROW = "(converted to {dtype})"


def layer_rows(
    fp32_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    matching: Matching,
    folds: dict[str, FoldRecord],
    meter: ActivationMeter,
    clip_percentile: float,
    base_dir=None,
) -> tuple[LayerRow, ...]:
    """The report's rows; ``base_dir``: the folder of ``fp32_model``'s external data, if it has some."""
    meter.flush()
    g = fp32_model.graph
    cons = consumers(g)
    prod = producers(g)
    weighted = {wl.name: wl for wl in weighted_layers(g)}
    twins = matching.twins
    used: set[str] = set()
    converted: dict[str, list[str]] = {}
    for key, cv in matching.converted.items():
        converted.setdefault(cv.fp32_name, []).append(key)
    rows: list[LayerRow] = []
    row_names: set[str] = set()
    fp32_inits, q_index = initializers(g), GraphIndex(qmodel.graph)

    def add(name, op, tensor, layer=None):
        fields = {}
        if layer is not None:
            fields.update(
                weight_row_fields(layer, folds.get(layer.name), fp32_model, qmodel, fp32_inits, q_index, base_dir)
            )
        tw = twins.get(tensor) if tensor else None
        if tw is not None:
            fields.update(activation_row_fields(tensor, meter, clip_percentile))
            used.add(tensor)
        fold = folds.get(name)
        rows.append(
            LayerRow(
                index=len(rows),
                name=name,
                op_type=op,
                tensor=tensor if tw is not None else None,
                quant_tensor=tw.quant_name if tw is not None else None,
                fused=tw.fused if tw is not None else (),
                bn_folded=fold.bn_node if fold else None,
                **fields,
            )
        )
        row_names.add(name)
        for key in converted.get(tensor, ()) if tw is not None else ():  # what the other consumers read
            cv = matching.converted[key]
            rows.append(
                LayerRow(
                    index=len(rows),
                    name=f"{name} {CONVERTED_ROW.format(dtype=cv.encoding.dtype)}",
                    op_type=op,
                    tensor=tensor,
                    quant_tensor=cv.quant_name,
                    fused=cv.fused,
                    **activation_row_fields(key, meter, clip_percentile),
                )
            )

    inits = {t.name for t in g.initializer}
    for inp in g.input:
        if inp.name not in inits and inp.name in twins:
            add(inp.name, "Input", inp.name)
    for node in g.node:
        out = node.output[0] if node.output else ""
        layer = weighted.get(node.name)
        tensor = out if out in twins else None
        if tensor is None and out:
            users = cons.get(out, [])
            if len(users) == 1 and users[0].op_type in REMOVABLE_ACTIVATIONS and users[0].name in matching.fused_into:
                tensor = matching.fused_into[users[0].name]
        if tensor in used:
            tensor = None
        if node.op_type in REMOVABLE_ACTIVATIONS and node.name in matching.fused_into:
            p = prod.get(node.input[0])
            if p is not None and (p.name in weighted or p.name in row_names):
                continue  # reported on the producer's row
        if layer is not None or tensor is not None:
            add(node.name, node.op_type, tensor, layer)
        for extra in node.output[1:]:  # Split, TopK, LSTM Y_h/Y_c, ...: every quantized output its row
            if extra in twins and extra not in used:
                add(f"{node.name}:{extra}", node.op_type, extra)
    return tuple(rows)


#: the agreement (dB) below which a layer counts as diverging between two runtimes (docs/runtimes.md)
DIVERGENCE_DB = 40.0


class _Agreement:
    """Two runtimes' values of one tensor: SQNR of the second against the first, and max |a - b|."""

    def __init__(self):
        self.err = ErrorAccumulator()
        self.max_abs = 0.0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        self.err.update(a, b)
        if a.size:
            m = float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
            self.max_abs = m if math.isnan(m) or m > self.max_abs else self.max_abs


class RuntimeMeter:
    """Every twin and output in each further runtime (``--runtimes``): against fp32, and every pair of
    runtimes against each other. ``names[0]`` is the first runtime (measured by the main meters);
    ``opened[i]`` (:class:`~qaudit.pipeline.capture.OpenRuntime`) is ``names[i + 1]``."""

    def __init__(self, matching: Matching, kinds: OutputKinds, names: Sequence[str], opened: Sequence):
        self.matching, self.kinds, self.names, self.opened = matching, kinds, list(names), list(opened)
        self.err = {(r, n): ErrorAccumulator() for r in self.names[1:] for n in matching.twins}
        self.agree: dict[tuple[str, str], _Agreement] = {}
        self.out_meters = {r: OutputMeter(kinds) for r in self.names[1:]}
        self.out_agree: dict[tuple[str, str], _Agreement] = {}
        self.seen = 0

    def _pairs(self, values: dict[str, np.ndarray]):
        present = [r for r in self.names if r in values]
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                yield f"{a} vs {b}", values[a], values[b]

    def update(self, fp32: dict, first: dict, others: Sequence[dict | None], labels, n: int) -> None:
        lab = labels[self.seen : self.seen + n] if labels is not None else None
        self.seen += n
        got = dict(zip(self.names[1:], others))
        for name, tw in self.matching.twins.items():
            enc, q = tw.encoding, tw.quant_name
            axis = enc.axis if not enc.per_tensor else None
            x = fp32[name]
            deq = {self.names[0]: dequantize(first[q], enc.scale, enc.zero_point, axis)}
            for r, outs in got.items():
                if outs is None or q not in outs:
                    continue
                sum_x2, sum_e2, _, _, _ = kernels.error_sums(x, outs[q], enc.scale, enc.zero_point, axis=axis)
                self.err[(r, name)].add(sum_x2, sum_e2, x.size)
                deq[r] = dequantize(outs[q], enc.scale, enc.zero_point, axis)
            for pair, a, b in self._pairs(deq):
                self.agree.setdefault((pair, name), _Agreement()).update(a, b)
        for r, outs in got.items():
            if outs is not None:
                self.out_meters[r].update(fp32, outs, lab)
        for out in self.kinds.kinds:
            values = {self.names[0]: first[out], **{r: o[out] for r, o in got.items() if o is not None}}
            for pair, a, b in self._pairs(values):
                self.out_agree.setdefault((pair, out), _Agreement()).update(a, b)

    def result(
        self, rows: Sequence[LayerRow], outputs: Sequence[OutputRow], infos, tolerance_db: float = DIVERGENCE_DB
    ):
        """The report's :class:`~qaudit.report.Runtimes`: ``rows``/``outputs`` are the first runtime's
        (the main table), ``infos`` every runtime's :class:`~qaudit.report.RuntimeInfo`."""
        from dataclasses import asdict

        from qaudit.report import Divergence, RuntimeLayer, RuntimeOutput, Runtimes

        first = self.names[0]
        why = {o.runtime.name: o for o in self.opened}
        by_tensor = {tw.fp32_name: tw for tw in self.matching.twins.values()}
        layers = []
        for row in rows:
            tw = by_tensor.get(row.tensor) if row.quant_tensor else None
            if tw is None:
                continue
            sqnr, qmse, missing = {first: row.sqnr_db}, {first: row.qmse}, {}
            for r in self.names[1:]:
                o = why[r]
                reason = o.unexposed.get(tw.quant_name)
                if o.reason or o.layers_reason:  # said once, in the runtime's entry
                    reason = f"{r} cannot {'run the model' if o.reason else 'expose its layers'} (see its reason)"
                if reason:
                    missing[r], sqnr[r], qmse[r] = reason, None, None
                else:
                    acc = self.err[(r, row.tensor)]
                    sqnr[r], qmse[r] = acc.sqnr_db, acc.qmse
            agree = {p: a for (p, n), a in self.agree.items() if n == row.tensor}
            layers.append(
                RuntimeLayer(
                    row.name,
                    row.tensor,
                    row.op_type,
                    _encoding(row),
                    sqnr,
                    qmse,
                    {p: a.err.sqnr_db for p, a in agree.items()},
                    {p: a.max_abs for p, a in agree.items()},
                    missing,
                )
            )
        outs = []
        for row in outputs:
            metrics = {first: {k: v for k, v in asdict(row).items() if k != "name"}}
            for r in self.names[1:]:
                m = {k: v for k, v in asdict(row).items() if k not in ("name", "kind")}
                have = {o.name: o for o in self.out_meters[r].rows()}
                if row.name in have:
                    metrics[r] = {k: v for k, v in asdict(have[row.name]).items() if k != "name"}
                else:
                    metrics[r] = {"kind": row.kind, **dict.fromkeys(m)}
            agree = {p: a for (p, n), a in self.out_agree.items() if n == row.name}
            outs.append(
                RuntimeOutput(
                    row.name,
                    metrics,
                    {p: a.err.sqnr_db for p, a in agree.items()},
                    {p: a.max_abs for p, a in agree.items()},
                )
            )
        divergences = []
        for r in self.names[1:]:
            pair = f"{first} vs {r}"
            for lr in layers:
                v = lr.agreement_db.get(pair)
                if v is not None and not v >= tolerance_db:
                    divergences.append(Divergence(pair, lr.name, lr.op_type, lr.encoding, v))
                    break
        return Runtimes(tuple(infos), tolerance_db, tuple(layers), tuple(outs), tuple(divergences))


def _encoding(row: LayerRow) -> str | None:
    if row.dtype is None:
        return None
    if row.scale is None:
        return f"{row.dtype} per-channel"
    return f"{row.dtype} scale {row.scale:.4g} zero point {row.zero_point}"
