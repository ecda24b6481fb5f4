"""Why a layer loses precision, with the numbers that show it, and what to try.

:func:`diagnose` reads a :class:`~qaudit.report.Report` (nothing else: no
model, no onnx, no onnxruntime), so ``qaudit report R.json`` diagnoses a saved
report exactly as the audit did. It follows the seed study's framework
(docs/metrics.md: ranges, channel precision, BatchNorm folding) and the error
decomposition of each quantized tensor (``clip_error_share``, ``grid_use``).

The structure, stable for the consumers of causes (``qaudit fix``, the JSON
``causes`` section):

* :class:`Cause` ``(kind, layer, node, tensor, evidence, remedies, severity, summary)``:
  ``kind`` one of :data:`CAUSE_KINDS`; ``layer`` the report row's name;
  ``node`` the fp32 node (``None`` for a graph input), ``tensor`` the fp32
  activation concerned (``None`` for a weight cause); ``evidence`` the numbers
  that triggered it; ``remedies`` what to try, best first (:attr:`Cause.remedy`
  is the first); ``severity`` the ranking key (larger is worse, roughly the dB
  at stake); ``summary`` one sentence in plain words.
* :class:`Evidence` ``(metric, value, threshold, comparison)``: ``value
  comparison threshold`` held (``comparison`` is ``">="`` or ``"<="``);
  ``metric`` a report field or a ratio of them named in :data:`EVIDENCE_METRICS`.
* :class:`Remedy` ``(kind, node, tensor, detail)``: ``kind`` one of
  :data:`REMEDY_KINDS`: ``"float_node"`` (leave ``node`` in float),
  ``"tensor_16bit"`` (quantize ``tensor`` to 16 bits: ``detail["type"]``),
  ``"per_channel"`` (per-channel weights for ``node``), ``"range"`` (calibrate
  ``tensor`` to ``detail["rmin"]``, ``detail["rmax"]``), ``"asymmetric"``
  (``tensor`` on an asymmetric grid: ``detail["symmetric"] = False``),
  ``"upstream"`` (the error comes from ``node``/``tensor`` upstream: fix that
  one; ``detail["from"]`` names the layer the error was seen on).

The kinds and their rules (thresholds are the named constants below; every
number is a report field, or one of :data:`EVIDENCE_METRICS`):

* ``"outlier_range"``: the encoding spans at least :data:`OUTLIER_RANGE_RATIO`
  times the range of 80% of the values (``bulk_ratio``: p10 to p90 from the
  row's histogram) in a layer that loses precision on its own
  (``sqnr_isolated_db < FLAG_SQNR_DB``), or at least :data:`OUTLIER_ALONE_RATIO`
  times whatever its SQNR (an outlier channel dominates the tensor's power, so
  its SQNR hides what the other channels lose; not for the ops of
  :data:`SIGNAL_IN_THE_TAIL`, whose far values are the signal), and rounding
  dominates the isolated error (``clip_error_share <= ROUNDING_DOMINATED``). When the far values are rare
  (the encoding spans :data:`RARE_RATIO` times the 1%..99% range ``a_range``) the
  first remedy is that tighter range (``"range"``), then 16 bits; otherwise (a
  channel or a mode, over 1% of the values, which a tighter range would clip)
  the tensor at 16 bits (``"tensor_16bit"``), then the node in float (``"float_node"``).
* ``"bn_folding"``: per-tensor weights whose folded channel precision is below
  :data:`LOW_WEIGHT_PRECISION` and at most :data:`BN_INFLATION` times the
  unfolded one (a folded BatchNorm to blame), and the layer loses precision
  (``w_sqnr_db < WEIGHT_SQNR_DB``, or ``sqnr_isolated_db < FLAG_SQNR_DB``: one big
  channel keeps the weight's SQNR high while the small ones get few levels).
  Remedy: per-channel weights (``"per_channel"``).
* ``"weight_channel_precision"``: the same without a BatchNorm to blame.
* ``"clipping"``: the layer loses precision on its own
  (``sqnr_isolated_db < FLAG_SQNR_DB``) and clipping makes at least
  :data:`CLIP_DOMINATED` of that error. Remedy: the observed range ``[a_min, a_max]``.
* ``"one_sided"``: the data has one sign, at least :data:`ONE_SIDED_UNUSED` of
  the grid lies on the other side of zero (``unused_side``) and the isolated
  twin uses at most :data:`ONE_SIDED_GRID_USE` of the codes. Remedy: an
  asymmetric grid (``"asymmetric"``).
* ``"upstream"``: the accumulated error is low (``sqnr_db < FLAG_SQNR_DB``), the
  layer's own is not (``sqnr_isolated_db >= FLAG_SQNR_DB``) and it is at least
  :data:`AMPLIFICATION` times the isolated one; the remedy (``"upstream"``)
  names the layer before it (in graph order) with the lowest isolated SQNR,
  which must itself be below :data:`FLAG_SQNR_DB`. One cause per such source,
  on the layer where the amplification is largest.

A layer gets an upstream cause only when neither it nor the source has a cause
of its own (the source's cause already says what to do). Healthy layers get
none: on the bundled digits sample there is no cause at all.

Severity, the ranking: how far the layer's SQNR is below :data:`FLAG_SQNR_DB`,
the isolated one for a layer's own cause, the accumulated one for ``upstream``
(negative above it); ties in the order of :data:`CAUSE_KINDS`, then graph order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from qaudit.report import LayerRow, Report

#: isolated SQNR below which a layer loses precision on its own (dB); for ``clipping`` and ``upstream``
FLAG_SQNR_DB = 30.0
#: (q_max - q_min) / bulk range from which the range is set by outliers (3.3 bits of the grid wasted),
#: in a layer that loses precision on its own (sqnr_isolated_db < FLAG_SQNR_DB)
OUTLIER_RANGE_RATIO = 10.0
#: the ratio from which the range is set by outliers whatever the SQNR (the bulk keeps 12 of 256 codes):
#: a tensor's SQNR hides an outlier channel, whose power dominates it; not for Softmax outputs
OUTLIER_ALONE_RATIO = 20.0
#: ops whose far values are the signal (the top class of a Softmax): outliers only when the SQNR is low too
SIGNAL_IN_THE_TAIL = frozenset({"Softmax", "LogSoftmax"})
#: the bulk range is between this quantile of the values and its complement (p10 to p90)
BULK_QUANTILE = 0.1
#: (q_max - q_min) / a_range from which the outliers are rare (outside the 1%..99% range): a range can clip them
RARE_RATIO = 2.0
#: clip_error_share at or below which the isolated error is rounding-dominated
ROUNDING_DOMINATED = 0.5
#: clip_error_share at or above which the isolated error is clipping-dominated
CLIP_DOMINATED = 0.5
#: folded per-tensor weight channel precision below which most channels get few levels
LOW_WEIGHT_PRECISION = 0.3
#: folded / unfolded weight channel precision at or below which BatchNorm folding is to blame
BN_INFLATION = 0.5
#: weight SQNR below which a weight cause is worth reporting (dB)
WEIGHT_SQNR_DB = 35.0
#: grid_use at or below which one-sided data wastes half of a symmetric grid (129 of 256 codes: 0.504)
ONE_SIDED_GRID_USE = 0.51
#: the share of the grid on the side without data from which the grid counts as symmetric
ONE_SIDED_UNUSED = 0.4
#: accumulated / isolated QMSE from which a layer's error is mostly carried from upstream
AMPLIFICATION = 4.0

#: the kinds, in the order that breaks ties of severity (a layer's weight cause before its range cause)
CAUSE_KINDS = ("bn_folding", "weight_channel_precision", "clipping", "outlier_range", "one_sided", "upstream")
REMEDY_KINDS = ("float_node", "tensor_16bit", "per_channel", "range", "asymmetric", "upstream")
#: the evidence metrics that are not report fields: their definitions
EVIDENCE_METRICS = {
    "bulk_ratio": "(q_max - q_min) / (p90 - p10): the encoding's range over the range of 80% of the values"
    " (percentiles from the row's histogram, the bulk at least one bin wide)",
    "unused_side": "the share of [q_min, q_max] on the side of zero where the data has no values",
    "fold_precision_ratio": "fold_w_precision / w_precision: what BatchNorm folding did to channel precision",
}

#: the 16-bit type that replaces each 8-bit one (same signedness)
_WIDER = {"uint8": "uint16", "int8": "int16", "uint4": "uint16", "int4": "int16"}


@dataclass(frozen=True)
class Remedy:
    kind: Literal["float_node", "tensor_16bit", "per_channel", "range", "asymmetric", "upstream"]
    node: str | None
    tensor: str | None
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    metric: str
    value: float
    threshold: float
    comparison: str  # ">=" | "<="


@dataclass(frozen=True)
class Cause:
    kind: str
    layer: str
    node: str | None
    tensor: str | None
    evidence: tuple[Evidence, ...]
    remedies: tuple[Remedy, ...]
    severity: float
    summary: str

    @property
    def remedy(self) -> Remedy:
        return self.remedies[0]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _node(row: LayerRow) -> str | None:
    return None if row.op_type == "Input" else row.name


def _sixteen(row: LayerRow) -> Remedy:
    return Remedy("tensor_16bit", _node(row), row.tensor, {"type": _WIDER.get(row.dtype or "", "int16")})


def bulk_range(row: LayerRow) -> float | None:
    """``p90 - p10`` of the row's fp32 values, from its histogram (linear inside a bin), at least one
    bin wide: the range that holds the bulk of the data (``None`` without a histogram)."""
    h = row.histogram
    if h is None or not h.counts or h.total == 0 or h.hi <= h.lo:
        return None
    w = h.bin_width

    def quantile(q: float) -> float:
        target, seen = q * h.total, 0
        for i, c in enumerate(h.counts):
            if c and seen + c >= target:
                return h.lo + (i + (target - seen) / c) * w
            seen += c
        return h.hi

    return max(quantile(1 - BULK_QUANTILE) - quantile(BULK_QUANTILE), w)


def _flagged(row: LayerRow) -> bool:
    """The layer loses precision on its own: ``sqnr_isolated_db < FLAG_SQNR_DB``."""
    return _finite(row.sqnr_isolated_db) and row.sqnr_isolated_db < FLAG_SQNR_DB


def _lost(row: LayerRow) -> float:
    """The severity of a layer's own cause: how far its isolated SQNR is below :data:`FLAG_SQNR_DB`
    (negative above it; 0 without an isolated SQNR)."""
    return FLAG_SQNR_DB - row.sqnr_isolated_db if _finite(row.sqnr_isolated_db) else 0.0


def _outlier(row: LayerRow) -> Cause | None:
    if not (_finite(row.q_min) and _finite(row.q_max)) or row.clip_error_share is None:
        return None
    if row.clip_error_share > ROUNDING_DOMINATED:
        return None
    bulk = bulk_range(row)
    if bulk is None:
        return None
    q_range = row.q_max - row.q_min
    ratio = q_range / bulk
    if ratio < OUTLIER_RANGE_RATIO:
        return None
    if not _flagged(row) and (ratio < OUTLIER_ALONE_RATIO or row.op_type in SIGNAL_IN_THE_TAIL):
        return None
    evidence = (
        Evidence("bulk_ratio", ratio, OUTLIER_RANGE_RATIO, ">="),
        Evidence("clip_error_share", row.clip_error_share, ROUNDING_DOMINATED, "<="),
    )
    sixteen = _sixteen(row)
    rare = _finite(row.a_range) and row.a_range > 0 and q_range / row.a_range >= RARE_RATIO
    if rare:  # fewer than 1% of the values are outside [a_lo, a_hi]: a range that clips them
        remedies = (Remedy("range", _node(row), row.tensor, {"rmin": row.a_lo, "rmax": row.a_hi}), sixteen)
        what = f"rare outliers set its range: the encoding spans {ratio:.0f}x the range of 80% of the values"
    else:  # more than 1%: a channel or a mode of the data that a tighter range would clip
        remedies = (sixteen, Remedy("float_node", _node(row), None, {})) if _node(row) else (sixteen,)
        what = (
            f"a few far values (a channel or a mode, over 1% of them) set its range: "
            f"the encoding spans {ratio:.0f}x the range of 80% of the values"
        )
    return Cause("outlier_range", row.name, _node(row), row.tensor, evidence, remedies, _lost(row), what)


def _weights(row: LayerRow) -> Cause | None:
    if not row.has_weights or "per-channel" in (row.w_encoding or "per-tensor"):
        return None
    if not (_finite(row.fold_w_precision) and _finite(row.w_sqnr_db)):
        return None
    if row.fold_w_precision >= LOW_WEIGHT_PRECISION:
        return None
    evidence = [Evidence("fold_w_precision", row.fold_w_precision, LOW_WEIGHT_PRECISION, "<=")]
    if row.w_sqnr_db < WEIGHT_SQNR_DB:
        evidence.append(Evidence("w_sqnr_db", row.w_sqnr_db, WEIGHT_SQNR_DB, "<="))
    elif _finite(row.sqnr_isolated_db) and row.sqnr_isolated_db < FLAG_SQNR_DB:
        # a big channel keeps the weight's SQNR high while the small ones get few levels: the output shows it
        evidence.append(Evidence("sqnr_isolated_db", row.sqnr_isolated_db, FLAG_SQNR_DB, "<="))
    else:
        return None
    kind = "weight_channel_precision"
    what = f"its weight channels use {row.fold_w_precision:.0%} of the per-tensor range on average"
    if row.bn_folded and _finite(row.w_precision) and row.w_precision > 0:
        ratio = row.fold_w_precision / row.w_precision
        if ratio <= BN_INFLATION:
            kind = "bn_folding"
            evidence.insert(0, Evidence("fold_precision_ratio", ratio, BN_INFLATION, "<="))
            what = (
                f"folding BatchNorm {row.bn_folded} cut its weight channel precision from "
                f"{row.w_precision:.2f} to {row.fold_w_precision:.2f}"
            )
    remedies = (Remedy("per_channel", row.name, None, {}),)
    return Cause(kind, row.name, row.name, None, tuple(evidence), remedies, _lost(row), what)


def _clipping(row: LayerRow) -> Cause | None:
    iso = row.sqnr_isolated_db
    if not (_finite(iso) and iso < FLAG_SQNR_DB and row.clip_error_share is not None):
        return None
    if row.clip_error_share < CLIP_DOMINATED or not (_finite(row.a_min) and _finite(row.a_max)):
        return None
    evidence = (
        Evidence("sqnr_isolated_db", iso, FLAG_SQNR_DB, "<="),
        Evidence("clip_error_share", row.clip_error_share, CLIP_DOMINATED, ">="),
    )
    wider = Remedy("range", _node(row), row.tensor, {"rmin": row.a_min, "rmax": row.a_max})
    what = (
        f"its range clips: values outside [{row.q_min:.3g}, {row.q_max:.3g}] make "
        f"{row.clip_error_share:.0%} of its own error"
    )
    return Cause("clipping", row.name, _node(row), row.tensor, evidence, (wider,), _lost(row), what)


def _one_sided(row: LayerRow) -> Cause | None:
    if row.grid_use is None or not all(_finite(v) for v in (row.a_min, row.a_max, row.q_min, row.q_max)):
        return None
    if not (row.q_min < 0 < row.q_max) or not (row.a_min >= 0 or row.a_max <= 0):
        return None
    unused = (-row.q_min if row.a_min >= 0 else row.q_max) / (row.q_max - row.q_min)
    if unused < ONE_SIDED_UNUSED or row.grid_use > ONE_SIDED_GRID_USE:
        return None
    sign = "non-negative" if row.a_min >= 0 else "non-positive"
    evidence = (
        Evidence("unused_side", unused, ONE_SIDED_UNUSED, ">="),
        Evidence("grid_use", row.grid_use, ONE_SIDED_GRID_USE, "<="),
    )
    remedies = (Remedy("asymmetric", _node(row), row.tensor, {"symmetric": False}),)
    what = f"its values are all {sign} but {unused:.0%} of its grid is on the other side: it uses {row.grid_use:.0%} of the codes"
    return Cause("one_sided", row.name, _node(row), row.tensor, evidence, remedies, _lost(row), what)


_OWN = (_outlier, _weights, _clipping, _one_sided)


def diagnose(report: Report) -> tuple[Cause, ...]:
    """Every cause the report's numbers show, worst first (ties: report order)."""
    causes: list[Cause] = []
    own: set[str] = set()
    for row in report.layers:
        for rule in _OWN:
            c = rule(row)
            if c is not None:
                causes.append(c)
                own.add(row.name)
    upstream: dict[str, Cause] = {}
    for i, row in enumerate(report.layers):
        c = _upstream(report.layers[:i], row, own) if row.name not in own else None
        if c is not None and (c.remedy.node not in upstream or c.severity > upstream[c.remedy.node].severity):  # worst
            upstream[c.remedy.node] = c
    causes += upstream.values()
    order = {r.name: i for i, r in enumerate(report.layers)}
    rank = {k: i for i, k in enumerate(CAUSE_KINDS)}
    return tuple(sorted(causes, key=lambda c: (-c.severity, rank[c.kind], order.get(c.layer, 0))))


def _upstream(before, row: LayerRow, own: set[str]) -> Cause | None:
    acc, iso, amp = row.sqnr_db, row.sqnr_isolated_db, row.error_amplification
    if not (_finite(acc) and _finite(iso) and _finite(amp)):
        return None
    if acc >= FLAG_SQNR_DB or iso < FLAG_SQNR_DB or amp < AMPLIFICATION:
        return None
    sources = [r for r in before if _finite(r.sqnr_isolated_db)]
    if not sources:
        return None
    src = min(sources, key=lambda r: r.sqnr_isolated_db)
    if src.sqnr_isolated_db >= FLAG_SQNR_DB or src.name in own:
        return None  # the error builds up over many layers, or the source's own cause already says what to do
    evidence = (
        Evidence("sqnr_db", acc, FLAG_SQNR_DB, "<="),
        Evidence("sqnr_isolated_db", iso, FLAG_SQNR_DB, ">="),
        Evidence("error_amplification", amp, AMPLIFICATION, ">="),
    )
    remedy = Remedy("upstream", _node(src), src.tensor, {"from": row.name})
    what = (
        f"its own error is small ({iso:.1f} dB isolated) but {amp:.0f}x that arrives from upstream; "
        f"start with {src.name} ({src.sqnr_isolated_db:.1f} dB isolated)"
    )
    return Cause("upstream", row.name, _node(row), row.tensor, evidence, (remedy,), FLAG_SQNR_DB - acc, what)


#: how many causes the "what to try" sections show
SHOWN = 5

_ADVICE = {
    "float_node": "leave {node} in float",
    "tensor_16bit": "quantize {tensor} to {type}",
    "per_channel": "per-channel weights for {node} (--per-channel)",
    "range": "calibrate {tensor} to [{rmin:.4g}, {rmax:.4g}]",
    "asymmetric": "an asymmetric grid for {tensor}",
    "upstream": "fix {node} upstream first",
}


def advice(remedy: Remedy) -> str:
    """The remedy in plain words (what follows "try")."""
    return _ADVICE[remedy.kind].format(
        **{**remedy.detail, "node": remedy.node or remedy.tensor, "tensor": remedy.tensor or remedy.node}
    )


def evidence_text(cause: Cause) -> str:
    """The evidence as ``metric value (threshold comparison)``, e.g. ``range_ratio 24 (>= 10)``."""
    return ", ".join(f"{e.metric} {_num(e.value)} ({e.comparison} {_num(e.threshold)})" for e in cause.evidence)


def _num(v: float) -> str:
    return f"{v:.3g}"


#: the heading of the "what to try" sections
HEADING = "What to try"
#: the sentence under it
INTRO = "why layers lose precision, from the report's numbers, worst first; each names what to try"


def lines(report: Report, n: int = SHOWN) -> tuple[list[tuple[Cause, str]], int]:
    """The "what to try" lines: the worst cause of each of the ``n`` worst layers, each as
    ``(cause, "layer: why. Try what.")``, and how many more layers have a cause."""
    causes, seen = [], set()
    for c in diagnose(report):  # a layer's worst cause only: its others are in the JSON
        if c.layer not in seen:
            seen.add(c.layer)
            causes.append(c)
    shown = [(c, f"{c.layer}: {c.summary}. Try {' or '.join(advice(r) for r in c.remedies)}.") for c in causes[:n]]
    return shown, max(0, len(causes) - n)


def to_list(causes) -> list[dict]:
    """The JSON ``causes`` section."""
    from dataclasses import asdict

    return [asdict(c) for c in causes]
