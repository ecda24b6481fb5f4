"""The audit report: frozen dataclasses, and their versioned JSON form.

This module is the only hand-off between measuring and rendering. It imports
neither onnx nor onnxruntime, so a saved report can be re-rendered or compared
without running a model.

JSON conventions (docs/json-format.md):

* every number is a plain float or ``null``; SQNR is in dB;
* strict JSON has no Infinity: an SQNR of ``+inf`` (no error at all) is written
  as ``null`` and the row's ``qmse`` is ``0.0``; ``-inf``/NaN also become
  ``null``. :func:`from_json` reads ``null`` SQNR with zero QMSE back as ``inf``.
  In the ``gates`` section a non-finite ``measured`` is ``null`` too; the
  check's ``status`` and ``reason`` say what it was.

:func:`from_dict` reads every format version listed below, so the report of a
previous release can serve as a baseline.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

#: Version of the JSON layout. Changelog:
#: 1 - first format: meta, model, settings, data, folding, layers, outputs, unmatched, notes.
#: 2 - adds ``gates``: ``null`` when no gate was evaluated, otherwise the verdict,
#:     the thresholds applied, every check, and layers/outputs added or removed
#:     relative to the baseline. Everything else is unchanged, so version 1
#:     reports are still read (with ``gates`` = ``null``).
#: Optional additions within a version (readers ignore unknown keys and
#: default missing ones to null):
#:     - ``layers[].histogram``: ``{"lo", "hi", "counts"}``, the fp32 values of the
#:       row's activation in ``len(counts)`` (at most 128) equal bins on ``[lo, hi]``.
#:     - ``layers[].sqnr_isolated_db``, ``qmse_isolated``, ``error_amplification``:
#:       the layer's own error when fed fp32 inputs, and ``qmse / qmse_isolated``.
#:     - ``layers[].w_shape``, ``kernel``, ``groups``, ``c_in``, ``c_out``: the weighted
#:       layer's signature (weight shape as stored, spatial kernel, groups, input and
#:       output channels), so ``qaudit compare`` can align layers from JSON alone.
#: 3 - ``outputs[].kind`` (``"class"`` or ``"regression"``), ``outputs[].max_abs_error`` and
#:     ``rel_error``; the class metrics (``qce``, ``qkl``, ``top1_agreement``, accuracies)
#:     only on class outputs, ``null`` elsewhere; ``acc_drop_pct`` signed (negative when
#:     the quantized model scores better); ``data.label_output``, the output the labels
#:     scored. Versions 1 and 2 are read with ``acc_drop_pct`` recomputed (signed) from
#:     ``acc_fp32``/``acc_int8``, and ``kind`` inferred as they decided it: ``"class"``
#:     where ``qce`` is a number, else ``"regression"``.
#:   - ``data.batch_axes``: ``{"axes": {input: axis or null}, "rule", "fixed"}``, each
#:     input's batch axis (null: fed as it is) and how it was chosen.
#:   - ``settings.graph_changes``: ``[{"kind", "target", "detail"}]``, what qaudit changed in the
#:     graph before quantizing it (an If inlined, the opset upgraded, an initializer unshared).
#:   - ``settings.quantized_opset`` (ORT's quantizer raised the opset) and ``settings.qdq_domain``
#:     (``"com.microsoft"``: ORT's contrib Q/DQ), only when ORT did so; ``layers[].dtype`` and
#:     ``w_encoding`` also name ``uint16``, ``int16`` (and weights ``uint4``, ``int4``).
#:   - ``model.quantized``: ``{"path", "sha256", "opset", "producer", "quantized_ops"}``, the model
#:     audited with ``--quantized`` (absent when qaudit quantized it); ``settings`` is then read from
#:     its graph (``source: "user"``, ``null`` for the calibration settings a model does not record).
#:   - ``settings.calibrate_method`` may be ``minmax``, ``entropy`` or ``distribution``; its options
#:     ``num_quantized_bins``, ``moving_average``, ``averaging_constant`` join ``percentile``,
#:     ``calib_symmetric``, ``num_bins``, each ``null`` when the method does not take it.
#:   - ``layers[].override``: ``{tensor: settings}``, the per-tensor overrides that set the row's
#:     activation or weight (absent/null otherwise); ``settings.overrides``, the table as given.
#: 5 - ``runtimes`` (only when the audit ran several, ``--runtimes``): ``{"runtimes": [{"name",
#:     "engine", "version", "device", "optimized", "reason", "layers_reason"}], "tolerance_db",
#:     "layers": [{"name", "tensor", "op_type", "encoding", "sqnr_db": {runtime: v}, "qmse",
#:     "agreement_db": {"A vs B": v}, "max_abs_diff", "not_measurable": {runtime: reason}}],
#:     "outputs": [{"name", "metrics": {runtime: {output row fields}}, "agreement_db", "max_abs_diff"}],
#:     "divergences": [{"pair", "layer", "op_type", "encoding", "agreement_db"}]}``. An agreement
#:     of ``null`` with ``max_abs_diff`` 0 is read back as ``inf`` (bit-identical).
#: 4 - the multi-run document (several calibration methods in one audit, :mod:`qaudit.runs`):
#:     ``{"format", "runs": [{"name", <a version 3 report's sections>}], "gates"}``. A single-run
#:     audit still writes version 3; :func:`load_report` reads both.
#: 5 - a single report as version 3, with new keys (readers of version 3 ignore them): ``data.sources``,
#:     ``data.preprocess``, ``data.class_names`` for image and WAV folders and loader scripts
#:     (docs/data.md), absent for the other data; ``layers[].clip_error_share``, ``grid_use``,
#:     ``codes_used`` (the isolated error's clipping/rounding split and the codes it uses) and
#:     ``causes`` (:func:`qaudit.remedy.causes.diagnose`: why layers lose precision and what to
#:     try). Versions 1-3 are still read (their ``causes`` are diagnosed on reading).
#:     Also ``trials`` (absent without ``--trials``): the calibration trials' subsets and the mean,
#:     std (ddof=1), min and max of every layer's and output's metrics (:mod:`qaudit.trials`).
#:     With several ``--runtimes``, ``runtimes``: every runtime's layer and output metrics.
#:     ``meta.ray`` (absent without ``--ray-address``): how a Ray run sharded the capture.
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 5)


@dataclass(frozen=True)
class Histogram:
    """fp32 values of one tensor over the evaluation data: ``len(counts)`` equal bins on ``[lo, hi]``.

    Built from the 2048-bin streaming histogram the percentiles come from
    (:meth:`qaudit.pipeline.metrics.RangeHistogram.compact`); ``lo == hi`` when every value is 0.
    """

    lo: float
    hi: float
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def bin_width(self) -> float:
        return (self.hi - self.lo) / len(self.counts) if self.counts else 0.0


@dataclass(frozen=True)
class LayerRow:
    """One row of the per-layer table: a weighted layer and/or a quantized activation."""

    index: int
    name: str  # node name in the exported model
    op_type: str
    tensor: str | None  # fp32 tensor whose quantization is measured
    quant_tensor: str | None  # its integer twin in the quantized graph
    fused: tuple[str, ...] = ()  # activations the quantizer folded into this layer
    bn_folded: str | None = None  # BatchNormalization folded into this layer
    # weights (Conv/ConvTranspose/Gemm/MatMul): plain and BN-folded
    w_min: float | None = None
    w_max: float | None = None
    w_range: float | None = None
    w_precision: float | None = None
    fold_w_min: float | None = None
    fold_w_max: float | None = None
    fold_w_range: float | None = None
    fold_w_precision: float | None = None
    w_sqnr_db: float | None = None
    w_qmse: float | None = None
    w_encoding: str | None = None  # e.g. "uint8 per-tensor"
    # activation: clipped range over the evaluation data, encoding used, error
    a_lo: float | None = None
    a_hi: float | None = None
    a_range: float | None = None
    a_precision: float | None = None
    a_min: float | None = None
    a_max: float | None = None
    dtype: str | None = None
    scale: float | None = None
    zero_point: int | None = None
    q_min: float | None = None
    q_max: float | None = None
    clip_fraction: float | None = None
    sqnr_db: float | None = None  # accumulated error (end-to-end quantized graph)
    qmse: float | None = None
    sqnr_isolated_db: float | None = None  # the layer's own error: fed fp32 inputs (format 1 addition)
    qmse_isolated: float | None = None
    error_amplification: float | None = None  # qmse / qmse_isolated
    histogram: Histogram | None = None  # fp32 values of the activation (format 1 addition)
    # signature of a weighted layer, for aligning layers across exports (format 2 addition)
    w_shape: tuple[int, ...] | None = None  # the weight tensor's shape as stored
    kernel: tuple[int, ...] | None = None  # spatial kernel (Conv/ConvTranspose), () for Gemm/MatMul
    groups: int | None = None
    c_in: int | None = None  # input channels / features
    c_out: int | None = None  # output channels / features
    #: the per-tensor overrides that set this row's activation or weight, ``{tensor: settings}`` (format 3 addition)
    override: dict[str, typing.Any] | None = None
    #: the isolated error's decomposition (format 5 addition, per-tensor encodings with an isolated twin):
    #: the share of ``sum(e^2)`` from values outside ``[q_min, q_max]``, and the share and number of the
    #: type's integer codes the isolated twin takes
    clip_error_share: float | None = None
    grid_use: float | None = None
    codes_used: int | None = None

    @property
    def has_weights(self) -> bool:
        return self.w_range is not None

    @property
    def has_activation(self) -> bool:
        return self.quant_tensor is not None


#: what a model output holds (docs/metrics.md): class scores, or anything else
OUTPUT_KINDS = ("class", "regression")


def acc_drop_pct(acc_fp32: float | None, acc_int8: float | None) -> float | None:
    """``(acc_fp32 - acc_int8) / acc_fp32 * 100``, signed: negative when the quantized
    model scores better; ``None`` when an accuracy is missing or ``acc_fp32`` is 0."""
    if acc_fp32 is None or acc_int8 is None or not acc_fp32 > 0:
        return None
    return (acc_fp32 - acc_int8) / acc_fp32 * 100.0


@dataclass(frozen=True)
class OutputRow:
    """One model output. Every output has the error metrics; the class metrics (``qce``
    to ``acc_drop_pct``) only a ``kind == "class"`` output (format 3)."""

    name: str
    kind: str | None = None  # "class" | "regression" (:data:`OUTPUT_KINDS`)
    qmse: float | None = None
    sqnr_db: float | None = None
    max_abs_error: float | None = None  # max |e| (format 3)
    rel_error: float | None = None  # sqrt(sum e^2 / sum x^2) (format 3)
    qce: float | None = None
    qkl: float | None = None
    top1_agreement: float | None = None
    acc_fp32: float | None = None
    acc_int8: float | None = None
    acc_drop_pct: float | None = None

    @property
    def is_class(self) -> bool:
        """Whether the output holds class scores; a row without ``kind`` (built in code) when it has a QCE."""
        return self.kind == "class" if self.kind is not None else self.qce is not None


#: the output metrics that exist only on class outputs (``null`` on regression outputs)
CLASS_METRICS = ("qce", "qkl", "top1_agreement", "acc_fp32", "acc_int8", "acc_drop_pct")


@dataclass(frozen=True)
class UnmatchedTensor:
    """An fp32 tensor without a quantized twin, and why (one of :data:`UNMATCHED_KINDS`)."""

    tensor: str
    producer: str
    op_type: str
    kind: str
    reason: str


#: Why an fp32 tensor has no twin: an activation fused into its layer's encoding,
#: a node left in float by --exclude, an op ORT does not quantize, a producer
#: that vanished from the quantized graph, or no QuantizeLinear inserted.
UNMATCHED_KINDS = ("fused", "excluded", "float-op", "removed", "not-quantized")


@dataclass(frozen=True)
class RuntimeInfo:
    """One runtime the quantized model ran in (``--runtimes``, format 5): what it is, and what could
    not be measured there (``reason``: nothing at all; ``layers_reason``: no layer, the outputs are)."""

    name: str  # as given: "ort", "ort-sim", "openvino", "ort:CUDAExecutionProvider"
    engine: str  # "onnxruntime" | "openvino"
    version: str
    device: str  # ORT: the provider list; OpenVINO: the device
    optimized: bool
    reason: str | None = None
    layers_reason: str | None = None

    @property
    def measurable(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class RuntimeLayer:
    """A layer row's activation in every runtime (keyed by runtime name), and every pair's agreement
    (keyed ``"A vs B"``: the SQNR of B's dequantized tensor against A's, A listed first)."""

    name: str
    tensor: str | None
    op_type: str
    encoding: str | None = None
    sqnr_db: dict[str, float | None] = field(default_factory=dict)
    qmse: dict[str, float | None] = field(default_factory=dict)
    agreement_db: dict[str, float | None] = field(default_factory=dict)
    max_abs_diff: dict[str, float | None] = field(default_factory=dict)
    #: runtime -> why this row is not measurable there
    not_measurable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeOutput:
    """A model output in every runtime: ``metrics[runtime]`` holds :class:`OutputRow`'s fields
    (against fp32), ``agreement_db``/``max_abs_diff`` every pair's (``"A vs B"``)."""

    name: str
    metrics: dict[str, dict] = field(default_factory=dict)
    agreement_db: dict[str, float | None] = field(default_factory=dict)
    max_abs_diff: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Divergence:
    """The first layer (table order) where a runtime's activation agrees with the first runtime's
    below the tolerance."""

    pair: str
    layer: str
    op_type: str
    encoding: str | None
    agreement_db: float | None


@dataclass(frozen=True)
class Runtimes:
    """The ``runtimes`` section (format 5): present when the audit ran more than one runtime."""

    runtimes: tuple[RuntimeInfo, ...]
    tolerance_db: float
    layers: tuple[RuntimeLayer, ...] = ()
    outputs: tuple[RuntimeOutput, ...] = ()
    divergences: tuple[Divergence, ...] = ()

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runtimes]

    @property
    def pairs(self) -> list[str]:
        n = self.names
        return [f"{a} vs {b}" for i, a in enumerate(n) for b in n[i + 1 :]]


CHECK_STATUSES = ("pass", "fail", "skip")


@dataclass(frozen=True)
class GateCheck:
    """One gate applied to one layer or model output (see :mod:`qaudit.gate`).

    ``measured`` is the number compared with ``threshold``: the metric itself
    for a threshold gate, its change since the baseline for a regression gate
    (then ``value`` and ``baseline`` hold the two metric values). ``pattern``
    is the glob whose override set the threshold (``None``: the gate's
    default). ``status`` is ``skip`` when the metric is missing and
    ``skip_missing`` is set, when the baseline has no value to compare with,
    or when an override turned the gate off for this subject.
    """

    gate: str
    scope: str  # "layer" | "output"
    subject: str  # layer or output name; "" when the gate found nothing to check
    metric: str  # the report field, e.g. "sqnr_db"
    comparison: str  # ">=" | "<="
    threshold: float | None  # None only when an override turned the gate off
    measured: float | None
    status: str  # "pass" | "fail" | "skip"
    pattern: str | None = None
    value: float | None = None
    baseline: float | None = None
    reason: str = ""

    def __post_init__(self):
        if self.status not in CHECK_STATUSES:
            raise ValueError(f"check status must be one of {CHECK_STATUSES}, not {self.status!r}")

    @property
    def passed(self) -> bool:
        """A skipped check does not fail the build."""
        return self.status != "fail"


@dataclass(frozen=True)
class GateResult:
    """The verdict of every configured gate on one report."""

    checks: tuple[GateCheck, ...]
    #: the gate configuration applied: ``{gate: {"default": v, "overrides": {glob: v}}}``
    thresholds: dict = field(default_factory=dict)
    skip_missing: bool = False
    #: the baseline report compared with: path, model sha256, qaudit version, created
    baseline: dict | None = None
    added_layers: tuple[str, ...] = ()
    removed_layers: tuple[str, ...] = ()
    added_outputs: tuple[str, ...] = ()
    removed_outputs: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def skipped(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if c.status == "skip")

    def failing(self, scope: str) -> list[str]:
        """Names of the layers (``scope="layer"``) or outputs that fail a gate, first failure first."""
        return list(dict.fromkeys(c.subject for c in self.failures if c.scope == scope and c.subject))


@dataclass(frozen=True)
class Report:
    meta: dict
    model: dict
    settings: dict
    data: dict
    folding: dict
    layers: tuple[LayerRow, ...]
    outputs: tuple[OutputRow, ...]
    unmatched: tuple[UnmatchedTensor, ...]
    notes: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION
    #: the gates evaluated on this report, or None (see :func:`qaudit.gate.evaluate`)
    gates: GateResult | None = None
    #: the calibration trials' section (:func:`qaudit.trials.summarize`), or None (format 5)
    trials: dict | None = None
    #: every runtime's measurements (``--runtimes`` with more than one; format 5), else None
    runtimes: Runtimes | None = None

    def worst_layers(self, n: int = 3) -> list[LayerRow]:
        """Layers with the lowest finite activation SQNR, worst first."""
        rows = [r for r in self.layers if r.sqnr_db is not None and math.isfinite(r.sqnr_db)]
        return sorted(rows, key=lambda r: r.sqnr_db)[:n]


# ------------------------------------------------------------------ JSON


def _clean(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy scalar
        return _clean(v.item())
    return v


def gates_to_dict(result: GateResult | None) -> dict | None:
    """The ``gates`` section: the verdict and counts first, for ``jq .gates.passed``."""
    if result is None:
        return None
    d = asdict(result)
    checks = d.pop("checks")
    for c in checks:
        c["passed"] = c["status"] != "fail"
    return _clean(
        {
            "passed": result.passed,
            "counts": {"checks": len(result.checks), "failed": len(result.failures), "skipped": len(result.skipped)},
            **d,
            "checks": checks,
        }
    )


def to_dict(report: Report) -> dict:
    d = asdict(report)
    for row in d["layers"]:  # present only on overridden rows, so reports without overrides are unchanged
        if row.get("override") is None:
            row.pop("override", None)
    out = {
        "format": {"name": "qaudit-report", "version": FORMAT_VERSION},
        **{
            k: d[k] for k in ("meta", "model", "settings", "data", "folding", "layers", "outputs", "unmatched", "notes")
        },
    }
    from qaudit.remedy.causes import diagnose, to_list  # (it imports this module)

    out["causes"] = to_list(diagnose(report))
    if report.runtimes is not None:  # only with several runtimes: single-runtime reports unchanged
        out["runtimes"] = d["runtimes"]
    out = _clean(out)
    out["gates"] = gates_to_dict(report.gates)
    if report.trials is not None:
        out["trials"] = _clean(report.trials)
    return out


#: an indented array of integers (histogram counts); a raw newline occurs only between tokens, never in a JSON string
_INT_ARRAY = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")


def to_json(report: Report, indent: int = 2) -> str:
    text = json.dumps(to_dict(report), indent=indent, allow_nan=False)
    # one line per array of integers, not one line per integer: histograms stay compact
    text = _INT_ARRAY.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return text + "\n"


# --------------------------------------------------- reading a report back


class ReportFormatError(ValueError):
    """A JSON document that is not a well-formed qaudit report; the message names the field."""


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "an object"}.get(
        tp, "an object" if tp is Histogram else getattr(tp, "__name__", str(tp))
    )


def _expect(value, tp, where: str):
    """``value`` (read from JSON) checked against the annotation ``tp``; a :class:`ReportFormatError` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        concrete = [a for a in args if a is not type(None)]
        if value is None and len(concrete) < len(args):
            return None
        if len(concrete) == 1:  # ``X | None`` holding a value: X's own message, the most precise
            return _expect(value, concrete[0], where)
        errors = []
        for alt in args:
            try:
                return _expect(value, alt, where)
            except ReportFormatError as e:
                errors.append(e)
        wanted = " or ".join(_type_name(a) if typing.get_origin(a) is None else "an array" for a in args)
        raise ReportFormatError(f"{where} must be {wanted}, not {_json_type(value)}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ReportFormatError(f"{where} must be an object, not {_json_type(value)}")
        return {k: _expect(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else value
    if origin is tuple:
        if not isinstance(value, list):
            raise ReportFormatError(f"{where} must be an array, not {_json_type(value)}")
        item = args[0] if args else typing.Any
        return tuple(_expect(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is typing.Any:
        return value
    if tp is type(None):
        if value is not None:
            raise ReportFormatError(f"{where} must be null, not {_json_type(value)}")
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportFormatError(f"{where} must be a number, not {_json_type(value)}")
        return float(value) if isinstance(value, int) else value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReportFormatError(f"{where} must be an integer, not {_json_type(value)}")
        return value
    if tp in (str, bool, dict):
        if not isinstance(value, tp):
            raise ReportFormatError(f"{where} must be {_type_name(tp)}, not {_json_type(value)}")
        return _shallow(value, where) if tp is dict else value
    if tp is Histogram:
        d = _object(value, where)
        return Histogram(
            lo=_expect(_field(d, "lo", where), float, f"{where}.lo"),
            hi=_expect(_field(d, "hi", where), float, f"{where}.hi"),
            counts=_expect(_field(d, "counts", where), tuple[int, ...], f"{where}.counts"),
        )
    return value  # a type this reader has no check for (a later addition): taken as it is


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ReportFormatError(f"{where} must be an object, not {_json_type(value)}")
    return value


#: how deeply a free-form section (meta, settings, ...) may nest; qaudit writes at most 3 levels
MAX_DEPTH = 32


def _shallow(value, where: str):
    """``value`` if it nests at most :data:`MAX_DEPTH` levels (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ReportFormatError(f"{where} nests deeper than {MAX_DEPTH} levels")
        if isinstance(v, dict):
            stack += [(x, depth + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, depth + 1) for x in v]
    return value


def _field(d: dict, key: str, where: str):
    if key not in d:
        raise ReportFormatError(f"{where} has no '{key}'")
    return d[key]


def _typed_fields(cls, d, where: str, skip: tuple[str, ...] = ()) -> dict:
    """The keyword arguments of ``cls`` from the JSON object ``d``, every value type-checked;
    unknown keys are ignored and missing ones take the field's default (required ones must be there)."""
    d = _object(d, where)
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name in d:
            kw[f.name] = _expect(d[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ReportFormatError(f"{where} has no '{f.name}'")
    return kw


def _revive(cls, d: dict, where: str = "row"):
    kw = _typed_fields(cls, d, where)
    return _revived(cls, kw)


def _revived(cls, kw: dict):
    names = {f.name for f in fields(cls)}
    kw = {k: v for k, v in kw.items() if k in names}
    if "sqnr_db" in kw and kw["sqnr_db"] is None and kw.get("qmse") == 0.0:
        kw["sqnr_db"] = math.inf
    if "sqnr_isolated_db" in kw and kw["sqnr_isolated_db"] is None and kw.get("qmse_isolated") == 0.0:
        kw["sqnr_isolated_db"] = math.inf
    if "w_sqnr_db" in kw and kw["w_sqnr_db"] is None and kw.get("w_qmse") == 0.0:
        kw["w_sqnr_db"] = math.inf
    return cls(**kw)


def _output_row(row: OutputRow, version: int) -> OutputRow:
    """An output row as this version means it: one of a version 1/2 report gets its kind and its
    signed drop (see FORMAT_VERSION)."""
    if version >= 3:
        return row
    return replace(
        row,
        kind="class" if row.qce is not None else "regression",
        acc_drop_pct=acc_drop_pct(row.acc_fp32, row.acc_int8),
    )


def gates_from_dict(d: dict | None) -> GateResult | None:
    if d is None:
        return None
    d = _object(d, "gates")
    kw = _typed_fields(GateResult, d, "gates", skip=("checks",))
    for gate, t in kw.get("thresholds", {}).items():
        where = f"gates.thresholds.{gate}"
        _expect(_field(_object(t, where), "default", where), float | None, f"{where}.default")
        _expect(_field(t, "overrides", where), dict[str, float | None], f"{where}.overrides")
    raw = d.get("checks", [])
    if not isinstance(raw, list):
        raise ReportFormatError(f"gates.checks must be an array, not {_json_type(raw)}")
    checks = []
    for i, c in enumerate(raw):
        ckw = _typed_fields(GateCheck, c, f"gates.checks[{i}]")
        if ckw["status"] not in CHECK_STATUSES:
            raise ReportFormatError(f"gates.checks[{i}].status must be one of {', '.join(CHECK_STATUSES)}")
        if ckw.get("measured") is None and ckw.get("reason") in (
            f"{ckw['metric']} is +inf",
            f"{ckw['metric']} is -inf",
        ):
            ckw["measured"] = math.inf if ckw["reason"].endswith("+inf") else -math.inf  # written null (strict JSON)
        checks.append(GateCheck(**ckw))
    return GateResult(checks=tuple(checks), **kw)


#: the free-form sections of a report: each must be a JSON object
_SECTIONS = ("meta", "model", "settings", "data", "folding")
#: the fields of those sections that the renderers read, with their JSON types: (required, optional)
_SECTION_FIELDS = {
    "model": ({"path": str, "sha256": str, "opset": int}, {}),
    "settings": (
        {
            "format": str,
            "activation_type": str,
            "weight_type": str,
            "per_channel": bool,
            "percentile": float | None,
            "calib_symmetric": bool | None,
        },
        {
            "calibrate_method": str | None,
            "num_bins": int | None,
            "num_quantized_bins": int | None,
            "moving_average": bool | None,
            "averaging_constant": float | None,
        },
    ),
    "data": (
        {"n_calib": int, "n_eval": int, "eval_is_calib": bool},
        # image and WAV folders, loader scripts (format 5); the terminal's data line reads them
        {"sources": dict[str, typing.Any] | None, "preprocess": dict[str, typing.Any] | None},
    ),
    "meta": ({}, {"seconds": float | None, "phase_seconds": dict[str, float]}),
    "folding": ({}, {"folded": tuple[typing.Any, ...], "check_samples": int | None, "skipped": tuple[dict, ...]}),
}


def _section(d: dict, key: str, strict: bool) -> dict:
    section = _shallow(_object(_field(d, key, "the report"), key), key)
    required, optional = _SECTION_FIELDS.get(key, ({}, {}))
    for name, tp in required.items():
        if strict or name in section:
            _expect(_field(section, name, key), tp, f"{key}.{name}")
    for name, tp in optional.items():
        if name in section:
            _expect(section[name], tp, f"{key}.{name}")
    for i, sk in enumerate(section.get("skipped", []) if key == "folding" else []):
        for name in ("bn", "reason"):
            _expect(_field(sk, name, f"folding.skipped[{i}]"), str, f"folding.skipped[{i}].{name}")
    return section


def from_dict(d: dict, strict: bool = False) -> Report:
    """A :class:`Report` from its JSON form; a :class:`ReportFormatError` (a ``ValueError``) naming
    the first field that is missing or of the wrong type. ``strict``: the fields of the free-form
    sections that the renderers read must be there too (as in every report qaudit writes)."""
    if not isinstance(d, dict) or not isinstance(d.get("format"), dict):
        raise ReportFormatError("not a qaudit report (expected an object with a 'format' object)")
    fmt = d["format"]
    if fmt.get("name") != "qaudit-report":
        raise ReportFormatError("not a qaudit report (missing format.name == 'qaudit-report')")
    version = fmt.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ReportFormatError(
            f"unsupported qaudit report format version {version!r}; "
            f"this qaudit reads versions {', '.join(map(str, READABLE_VERSIONS))} and 4 (several runs)"
        )
    sections = {k: _section(d, k, strict) for k in _SECTIONS}

    def rows(key, cls):
        raw = _field(d, key, "the report")
        if not isinstance(raw, list):
            raise ReportFormatError(f"{key} must be an array, not {_json_type(raw)}")
        return tuple(_revive(cls, r, f"{key}[{i}]") for i, r in enumerate(raw))

    return Report(
        **sections,
        layers=rows("layers", LayerRow),
        outputs=tuple(_output_row(r, version) for r in rows("outputs", OutputRow)),
        unmatched=rows("unmatched", UnmatchedTensor),
        notes=_expect(d.get("notes", []), tuple[str, ...], "notes"),
        format_version=version,
        gates=gates_from_dict(d.get("gates")),
        trials=_trials(d.get("trials")),
        runtimes=runtimes_from_dict(d.get("runtimes")),
    )


def _agreement(agree: dict, diff: dict) -> dict:
    """``null`` agreement with a zero ``max_abs_diff``: bit-identical, ``inf``."""
    return {k: (math.inf if v is None and diff.get(k) == 0.0 else v) for k, v in agree.items()}


def runtimes_from_dict(d: dict | None) -> Runtimes | None:
    if d is None:
        return None
    d = _object(d, "runtimes")

    def items(key, cls):
        raw = d.get(key, [])
        if not isinstance(raw, list):
            raise ReportFormatError(f"runtimes.{key} must be an array, not {_json_type(raw)}")
        return [_typed_fields(cls, r, f"runtimes.{key}[{i}]") for i, r in enumerate(raw)]

    layers = []
    for kw in items("layers", RuntimeLayer):
        diff = kw.get("max_abs_diff", {})
        kw["agreement_db"] = _agreement(kw.get("agreement_db", {}), diff)
        err = kw.get("qmse", {})
        kw["sqnr_db"] = {
            k: (math.inf if v is None and err.get(k) == 0.0 else v) for k, v in kw.get("sqnr_db", {}).items()
        }
        layers.append(RuntimeLayer(**kw))
    outputs = []
    for kw in items("outputs", RuntimeOutput):
        kw["agreement_db"] = _agreement(kw.get("agreement_db", {}), kw.get("max_abs_diff", {}))
        kw["metrics"] = {
            k: {**m, "sqnr_db": math.inf if m.get("sqnr_db") is None and m.get("qmse") == 0.0 else m.get("sqnr_db")}
            for k, m in kw.get("metrics", {}).items()
        }
        outputs.append(RuntimeOutput(**kw))
    return Runtimes(
        runtimes=tuple(RuntimeInfo(**kw) for kw in items("runtimes", RuntimeInfo)),
        tolerance_db=_expect(_field(d, "tolerance_db", "runtimes"), float, "runtimes.tolerance_db"),
        layers=tuple(layers),
        outputs=tuple(outputs),
        divergences=tuple(Divergence(**kw) for kw in items("divergences", Divergence)),
    )


def _trials(section) -> dict | None:
    from qaudit.trials import check

    try:
        return check(_shallow(section, "trials"))
    except ValueError as e:
        raise ReportFormatError(str(e)) from None


def from_json(text: str, strict: bool = False) -> Report:
    return from_dict(json.loads(text), strict)


def load_report(path, what: str = "report"):
    """A saved JSON report (``--json``): a :class:`Report`, or a :class:`qaudit.runs.MultiReport`
    for a multi-run one (format 4). A missing file or one that is not a qaudit
    report is a user error (:class:`~qaudit.errors.ConfigError`) naming ``what``."""
    from qaudit.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path} (give a JSON file written by --json)")
    try:
        from qaudit.runs import read  # a version 4 document: several runs (a MultiReport)

        return read(json.loads(path.read_text(encoding="utf-8")), strict=True)
    except RecursionError:
        raise ConfigError(f"{what} {path} is not a readable qaudit JSON report: it is nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} is not a readable qaudit JSON report: {e}") from None
