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
from dataclasses import asdict, dataclass, field, fields, replace
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
#:   - ``settings.calibrate_method`` may be ``minmax``, ``entropy`` or ``distribution``; its options
#:     ``num_quantized_bins``, ``moving_average``, ``averaging_constant`` join ``percentile``,
#:     ``calib_symmetric``, ``num_bins``, each ``null`` when the method does not take it.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


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
    out = {
        "format": {"name": "qaudit-report", "version": FORMAT_VERSION},
        **{
            k: d[k] for k in ("meta", "model", "settings", "data", "folding", "layers", "outputs", "unmatched", "notes")
        },
    }
    out = _clean(out)
    out["gates"] = gates_to_dict(report.gates)
    return out


#: an indented array of integers (histogram counts); a raw newline occurs only between tokens, never in a JSON string
_INT_ARRAY = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")


def to_json(report: Report, indent: int = 2) -> str:
    text = json.dumps(to_dict(report), indent=indent, allow_nan=False)
    # one line per array of integers, not one line per integer: histograms stay compact
    text = _INT_ARRAY.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return text + "\n"


def _revive(cls, d: dict):
    names = {f.name for f in fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    if "fused" in kw:
        kw["fused"] = tuple(kw["fused"])
    for key in ("w_shape", "kernel"):
        if kw.get(key) is not None:
            kw[key] = tuple(kw[key])
    if isinstance(kw.get("histogram"), dict):
        h = kw["histogram"]
        kw["histogram"] = Histogram(lo=h["lo"], hi=h["hi"], counts=tuple(h["counts"]))
    if "sqnr_db" in kw and kw["sqnr_db"] is None and kw.get("qmse") == 0.0:
        kw["sqnr_db"] = math.inf
    if "sqnr_isolated_db" in kw and kw["sqnr_isolated_db"] is None and kw.get("qmse_isolated") == 0.0:
        kw["sqnr_isolated_db"] = math.inf
    if "w_sqnr_db" in kw and kw["w_sqnr_db"] is None and kw.get("w_qmse") == 0.0:
        kw["w_sqnr_db"] = math.inf
    return cls(**kw)


def _output_row(d: dict, version: int) -> OutputRow:
    """An output row; one of a version 1/2 report gets its kind and its signed drop (see FORMAT_VERSION)."""
    row = _revive(OutputRow, d)
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
    names = {f.name for f in fields(GateResult)}
    kw = {k: v for k, v in d.items() if k in names and k != "checks"}
    for k in ("added_layers", "removed_layers", "added_outputs", "removed_outputs", "notes"):
        if k in kw:
            kw[k] = tuple(kw[k])
    check_names = {f.name for f in fields(GateCheck)}
    checks = tuple(GateCheck(**{k: v for k, v in c.items() if k in check_names}) for c in d.get("checks", ()))
    return GateResult(checks=checks, **kw)


def from_dict(d: dict) -> Report:
    if not isinstance(d, dict) or not isinstance(d.get("format"), dict):
        raise ValueError("not a qaudit report (expected an object with a 'format' object)")
    fmt = d["format"]
    if fmt.get("name") != "qaudit-report":
        raise ValueError("not a qaudit report (missing format.name == 'qaudit-report')")
    if fmt.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"unsupported qaudit report format version {fmt.get('version')}; "
            f"this qaudit reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return Report(
        meta=d["meta"],
        model=d["model"],
        settings=d["settings"],
        data=d["data"],
        folding=d["folding"],
        layers=tuple(_revive(LayerRow, r) for r in d["layers"]),
        outputs=tuple(_output_row(r, fmt["version"]) for r in d["outputs"]),
        unmatched=tuple(_revive(UnmatchedTensor, r) for r in d["unmatched"]),
        notes=tuple(d.get("notes", ())),
        format_version=fmt["version"],
        gates=gates_from_dict(d.get("gates")),
    )


def from_json(text: str) -> Report:
    return from_dict(json.loads(text))


def load_report(path, what: str = "report") -> Report:
    """A saved JSON report (``--json``). A missing file or one that is not a qaudit
    report is a user error (:class:`~qaudit.errors.ConfigError`) naming ``what``."""
    from qaudit.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path} (give a JSON file written by --json)")
    try:
        return from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} is not a readable qaudit JSON report: {e}") from None
