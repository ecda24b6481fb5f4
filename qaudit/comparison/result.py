"""The result of comparing exports: :class:`Comparison`, its rows, and its versioned JSON.

Like :class:`~qaudit.report.Report`, a :class:`Comparison` is the only hand-off
from comparing to rendering; this module imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from qaudit.report import Report, _clean

COMPARE_FORMAT = {"name": "qaudit-comparison", "version": 1}

#: per-layer metrics compared: (field, kind, default tolerance). kind "rel": differs when
#: |b - a| > tol * max(|a|, |b|); "abs": when |b - a| > tol (dB for SQNR).
LAYER_METRICS: tuple[tuple[str, str, float], ...] = (
    ("w_range", "rel", 0.01),
    ("fold_w_range", "rel", 0.01),
    ("w_precision", "abs", 0.02),
    ("fold_w_precision", "abs", 0.02),
    ("w_sqnr_db", "abs", 1.0),
    ("a_range", "rel", 0.05),
    ("a_precision", "abs", 0.05),
    ("scale", "rel", 0.05),
    ("sqnr_db", "abs", 1.0),
    ("sqnr_isolated_db", "abs", 1.0),
    ("qmse", "rel", 0.25),
)
OUTPUT_METRICS: tuple[tuple[str, str, float], ...] = (
    ("qmse", "rel", 0.25),
    ("sqnr_db", "abs", 1.0),
    ("max_abs_error", "rel", 0.25),
    ("rel_error", "rel", 0.25),
    ("qce", "abs", 0.01),
    ("qkl", "abs", 0.01),
    ("top1_agreement", "abs", 0.01),
    ("acc_fp32", "abs", 0.005),
    ("acc_int8", "abs", 0.005),
    ("acc_drop_pct", "abs", 0.5),
)
KINDS = {name: kind for name, kind, _ in LAYER_METRICS + OUTPUT_METRICS}
DEFAULT_TOLERANCES = {**{n: t for n, _, t in OUTPUT_METRICS}, **{n: t for n, _, t in LAYER_METRICS}}
#: output metrics share names with layer metrics (qmse, sqnr_db): one tolerance serves both


@dataclass(frozen=True)
class ModelInfo:
    label: str
    source: str  # "model" (audited here) | "report" (saved JSON)
    path: str
    opset: int | None
    producer: str | None
    inputs: tuple[str, ...]
    layout: str | None  # "NCHW" | "NHWC" | None (not an image input)
    weighted_layers: int
    bn_folded_by_qaudit: int
    data_transposed: bool = False


@dataclass(frozen=True)
class MetricDiff:
    """One metric across models: ``values[k]``, ``deltas[k] = values[k] - values[0]``,
    ``differs[k]`` when beyond the tolerance (``differs[0]`` is always False)."""

    metric: str
    values: tuple[float | None, ...]
    deltas: tuple[float | None, ...]
    differs: tuple[bool, ...]


@dataclass(frozen=True)
class LayerCompare:
    """One aligned row: a weighted layer of each model (None where a model has none)."""

    layers: tuple[str | None, ...]
    indices: tuple[int | None, ...]
    signature: str
    confidence: tuple[float | None, ...]  # of the pairing with model 0 (None for model 0 / unaligned)
    method: tuple[str | None, ...]
    activation: tuple[float | None, ...]  # cosine similarity of the fp32 activation with model 0's
    metrics: tuple[MetricDiff, ...]
    explanations: tuple[str, ...] = ()

    @property
    def aligned(self) -> bool:
        return sum(x is not None for x in self.layers) > 1

    @property
    def differs(self) -> bool:
        return any(any(m.differs) for m in self.metrics)

    def metric(self, name: str) -> MetricDiff | None:
        return next((m for m in self.metrics if m.metric == name), None)


@dataclass(frozen=True)
class OutputCompare:
    names: tuple[str | None, ...]
    metrics: tuple[MetricDiff, ...]

    @property
    def differs(self) -> bool:
        return any(any(m.differs) for m in self.metrics)


@dataclass(frozen=True)
class Comparison:
    models: tuple[ModelInfo, ...]
    layers: tuple[LayerCompare, ...]
    outputs: tuple[OutputCompare, ...]
    explanations: tuple[str, ...]
    notes: tuple[str, ...]
    tolerances: dict
    #: the compared reports (for HTML overlays); not part of the JSON form
    reports: tuple[Report, ...] = field(default=(), compare=False, repr=False)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(m.label for m in self.models)

    def unaligned(self, k: int) -> tuple[str, ...]:
        """Weighted layers of model ``k`` paired with no layer of model 0 (for k = 0: with no other model)."""
        return tuple(r.layers[k] for r in self.layers if r.layers[k] is not None and not r.aligned)

    def pairs(self, k: int) -> list[tuple[str, str, float | None]]:
        """``(model 0 layer, model k layer, confidence)`` of every aligned pair."""
        return [(r.layers[0], r.layers[k], r.confidence[k]) for r in self.layers if r.layers[0] and r.layers[k]]


# ------------------------------------------------------------------ JSON


def to_dict(c: Comparison) -> dict:
    """The JSON form. Non-finite numbers are ``null`` (an SQNR of +inf: no error)."""
    d = {
        "format": dict(COMPARE_FORMAT),
        "models": [asdict(m) for m in c.models],
        "explanations": list(c.explanations),
        "notes": list(c.notes),
        "tolerances": dict(c.tolerances),
        "layers": [],
        "outputs": [],
    }
    for r in c.layers:
        d["layers"].append(
            {
                "layers": list(r.layers),
                "indices": list(r.indices),
                "signature": r.signature,
                "aligned": r.aligned,
                "confidence": list(r.confidence),
                "method": list(r.method),
                "activation_cosine": list(r.activation),
                "differs": r.differs,
                "metrics": {
                    m.metric: {"values": list(m.values), "deltas": list(m.deltas), "differs": list(m.differs)}
                    for m in r.metrics
                },
                "explanations": list(r.explanations),
            }
        )
    for o in c.outputs:
        d["outputs"].append(
            {
                "names": list(o.names),
                "differs": o.differs,
                "metrics": {
                    m.metric: {"values": list(m.values), "deltas": list(m.deltas), "differs": list(m.differs)}
                    for m in o.metrics
                },
            }
        )
    d["unaligned"] = {m.label: list(c.unaligned(k)) for k, m in enumerate(c.models)}
    return _clean(d)


def to_json(c: Comparison, indent: int = 2) -> str:
    return json.dumps(to_dict(c), indent=indent, allow_nan=False) + "\n"


__all__ = [
    "COMPARE_FORMAT",
    "DEFAULT_TOLERANCES",
    "Comparison",
    "LayerCompare",
    "MetricDiff",
    "ModelInfo",
    "OutputCompare",
    "to_dict",
    "to_json",
]
