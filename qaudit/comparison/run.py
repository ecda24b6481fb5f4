"""Compare the quantization of several exports of one network: ``compare(CompareConfig) -> Comparison``.

(The result types and their JSON are in :mod:`qaudit.comparison.result`.)

Each input is an ONNX model (audited with :func:`qaudit.pipeline.audit.audit`, every
model with the same data and settings) or a saved JSON report. The weighted
layers of every model are aligned with the first model's
(:func:`qaudit.comparison.align.align`: graph order and signature, confirmed by the
cosine similarity of the fp32 activations on the first calibration batch when
both inputs are models), and each aligned row gets the metrics of every model,
their differences from the first model, flags for differences beyond a
tolerance, and the known causes qaudit can detect (BN folded before export,
opset, input layout, fused activations, calibration).

A model whose single 4-D input is the NHWC (or NCHW) transpose of the data's
layout (a TensorFlow export fed NCHW data) is audited on a transposed copy of
the data, written to a temporary directory, and the comparison says so.

:class:`Comparison` and its JSON form (:func:`to_dict`, :func:`to_json`) are,
like :class:`~qaudit.report.Report`, the only hand-off to rendering; this
module imports onnxruntime only when it audits a model, so comparing saved
JSON reports runs no session.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import numpy as np

from qaudit.comparison.align import Alignment, LayerSig, align, resolve_layer, signatures
from qaudit.comparison.result import (
    DEFAULT_TOLERANCES,
    KINDS,
    LAYER_METRICS,
    OUTPUT_METRICS,
    Comparison,
    LayerCompare,
    MetricDiff,
    ModelInfo,
    OutputCompare,
)
from qaudit.errors import ConfigError, DataError
from qaudit.options import AuditConfig
from qaudit.report import LayerRow, OutputRow, Report, load_report

#: samples of the first calibration batch used for the activation similarity
ACTIVATION_SAMPLES = 16
#: relative tolerance for "these weights are the same" in explanations
SAME_WEIGHTS_RTOL = 0.01


@dataclass(frozen=True)
class CompareConfig:
    """What to compare and how. ``audit`` is the template for every model input
    (its ``model`` is replaced); it is required when an input is a model."""

    inputs: tuple[Path, ...]
    audit: AuditConfig | None = None
    labels: tuple[str, ...] | None = None
    #: pinned rows: one layer reference per input (node name, ``#N`` row index, or None: unaligned)
    pins: tuple[tuple[str | int | None, ...], ...] = ()
    activations: bool = True
    tolerances: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(Path(p) for p in self.inputs))
        if len(self.inputs) < 2:
            raise ConfigError("compare needs at least two models or reports")
        if self.labels is not None and len(self.labels) != len(self.inputs):
            raise ConfigError(f"{len(self.labels)} labels for {len(self.inputs)} inputs")
        for k, v in self.tolerances.items():
            if k not in DEFAULT_TOLERANCES:
                raise ConfigError(f"unknown tolerance metric {k!r} (one of {', '.join(DEFAULT_TOLERANCES)})")
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"tolerance for {k} must be a finite number >= 0, not {v!r}")
        for pin in self.pins:
            if len(pin) != len(self.inputs):
                raise ConfigError(f"--map entry {list(pin)} names {len(pin)} layers for {len(self.inputs)} inputs")
        if self.audit is not None and self.audit.runs:
            methods = ",".join(q.calibrate_method for q in self.audit.runs)
            raise ConfigError(
                f"qaudit compare audits every export with one calibration method, not {methods}: give one "
                "--calibrate-method (to compare methods on one model: qaudit MODEL.onnx --calibrate-method "
                f"{methods})"
            )
        if self.audit is not None and self.audit.quantized is not None:
            raise ConfigError(
                f"quantized ({self.audit.quantized}) does not apply to qaudit compare: each export is quantized "
                "by qaudit with the same settings; remove 'quantized' from the config file, or compare saved "
                "reports (qaudit FP32.onnx --quantized Q.onnx --json r.json)"
            )


# ------------------------------------------------------------------ numbers


def _num(v) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _differs(kind: str, tol: float, a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return False
    if math.isinf(a) or math.isinf(b):
        return a != b
    if kind == "rel":
        return abs(b - a) > tol * max(abs(a), abs(b))
    return abs(b - a) > tol


def _metric(name: str, values: Sequence, tolerances: Mapping[str, float]) -> MetricDiff:
    vals = tuple(_num(v) for v in values)
    ref = vals[0]
    deltas = tuple(None if ref is None or v is None or math.isinf(ref) or math.isinf(v) else v - ref for v in vals)
    tol = tolerances.get(name, DEFAULT_TOLERANCES[name])
    differs = tuple(k > 0 and _differs(KINDS[name], tol, ref, v) for k, v in enumerate(vals))
    return MetricDiff(name, vals, deltas, differs)


def _close(a, b, rtol=SAME_WEIGHTS_RTOL) -> bool:
    a, b = _num(a), _num(b)
    return a is not None and b is not None and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


# ------------------------------------------------------------------ layout


_DIMS = re.compile(r"\[([^\]]*)\]\s*$")


def input_dims(desc: str) -> tuple[int | None, ...] | None:
    """``"input: float32[?,1,8,8]"`` -> ``(None, 1, 8, 8)``."""
    m = _DIMS.search(desc)
    if not m:
        return None
    return tuple(None if d.strip() in ("?", "") else int(d) for d in m.group(1).split(",") if d.strip() != "")


def guess_layout(inputs: Sequence[str]) -> str | None:
    """NCHW or NHWC for a model whose first input is 4-D with a small channel count (1-4) on one side."""
    if not inputs:
        return None
    dims = input_dims(inputs[0])
    if not dims or len(dims) != 4:
        return None
    small = lambda d: d is not None and d <= 4  # noqa: E731
    if small(dims[1]) and not small(dims[3]):
        return "NCHW"
    if small(dims[3]) and not small(dims[1]):
        return "NHWC"
    return None


# ------------------------------------------------------------------ auditing models


def _is_report(path: Path) -> bool:
    return path.suffix.lower() == ".json"


_TO_NCHW, _TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


def _adapt(data: Path, inputs, what: str, work: Path) -> tuple[Path, bool]:
    """``data`` itself if it fits the model's inputs; else, for one 4-D input that is
    the layout transpose of the data, a transposed copy in ``work``."""
    from qaudit.pipeline.data import Dataset
    from qaudit.pipeline.load import InputSpec

    try:
        Dataset(data, inputs, what).scan()
        return data, False
    except DataError as e:
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise
        first_error = e
    spec = inputs[0]
    for to_data, to_model in ((_TO_NCHW, _TO_NHWC), (_TO_NHWC, _TO_NCHW)):
        permuted = InputSpec(spec.name, spec.dtype, tuple(spec.shape[i] for i in to_data))
        try:
            ds = Dataset(data, [permuted], what)
            ds.scan()
        except DataError:
            continue
        out = work / what
        out.mkdir(parents=True)
        for i, feeds in enumerate(ds.batches(256)):
            np.save(out / f"batch_{i:05d}.npy", np.ascontiguousarray(feeds[spec.name].transpose(to_model)))
        return out, True
    raise first_error


@dataclass
class _Audited:
    report: Report
    model: Path | None = None  # the ONNX file, when audited here
    calib: Path | None = None  # the data it was fed (maybe transposed)
    transposed: bool = False


def _audit_model(path: Path, cfg: AuditConfig, work: Path, progress) -> _Audited:
    from qaudit.pipeline.audit import audit
    from qaudit.pipeline.data import source
    from qaudit.pipeline.load import load_model

    if not path.is_file():
        raise ConfigError(f"model not found: {path}")
    inputs = load_model(path).inputs
    calib, t1 = _adapt(cfg.calib, inputs, "calibration", work)
    evaluation, t2 = (cfg.eval, False) if cfg.eval is None else _adapt(cfg.eval, inputs, "evaluation", work)
    run = cfg.replace(model=path, calib=calib, eval=evaluation, output_model=None)
    try:
        report = audit(run, progress)
    except ConfigError as e:  # a setting that fits another export but not this one (an override glob, a batch axis)
        if str(path) in str(e):
            raise
        raise ConfigError(f"{path}: {e}") from None
    if t1 or t2:
        # name the user's data, not the temporary copy
        data = {
            **report.data,
            "calib": source(cfg.calib, "calibration").description,
            "eval": source(cfg.eval, "evaluation").description if cfg.eval is not None else None,
            "transposed": "fed transposed (the model's input layout differs from the data's)",
        }
        report = replace(report, data=data)
    return _Audited(report, path, calib, t1 or t2)


# ------------------------------------------------------------------ activations


def _fp32_activations(
    path: Path, calib: Path, rows: Sequence[LayerRow], work: Path, tag: str, batch_axis=None
) -> dict[str, np.ndarray]:
    """fp32 values of each weighted row's measured tensor (the BN-folded graph, as audited)
    on the first :data:`ACTIVATION_SAMPLES` calibration samples, by row name; ``batch_axis``:
    the audit's (``--batch-axis``)."""
    import onnx

    from qaudit.pipeline.audit import prepare
    from qaudit.pipeline.data import Dataset, batch_layout
    from qaudit.pipeline.graph import producers, with_outputs
    from qaudit.pipeline.load import load_model
    from qaudit.pipeline.session import make_session, run_named, save_model

    lm = load_model(path)
    layout = batch_layout(lm.inputs, batch_axis)
    # the graph the audit measured (an If inlined as the audit did, on the same data)
    folded = prepare(lm, feeds=lambda: Dataset(calib, lm.inputs, layout=layout).batches(1)).fold.model
    by_name = {n.name: n for n in folded.graph.node}
    tensors = {}
    for r in rows:
        node = by_name.get(r.name)
        t = r.tensor or (node.output[0] if node is not None and node.output else None)
        if t:
            tensors[r.name] = t
    if not tensors:
        return {}
    prod = producers(folded.graph)
    outs = [(t, onnx.TensorProto.FLOAT) for t in dict.fromkeys(tensors.values()) if t in prod]
    session = make_session(save_model(with_outputs(folded, outs), work / f"activations-{tag}.onnx"), what=str(path))
    feeds = next(iter(Dataset(calib, lm.inputs, layout=layout).batches(ACTIVATION_SAMPLES, ACTIVATION_SAMPLES)))
    got = run_named(session, feeds)
    return {name: np.asarray(got[t], np.float64) for name, t in tensors.items() if t in got}


def _views(x: np.ndarray) -> list[np.ndarray]:
    v = [x]
    if x.ndim == 4:
        v += [x.transpose(_TO_NCHW), x.transpose(_TO_NHWC)]
    return v


def cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cosine similarity of two activations, trying NCHW<->NHWC transposes of ``b``;
    ``None`` when no view of ``b`` has ``a``'s shape."""
    best = None
    na = float(np.linalg.norm(a))
    for v in _views(b):
        if v.shape != a.shape:
            continue
        nb = float(np.linalg.norm(v))
        c = 1.0 if na == nb == 0 else (0.0 if na == 0 or nb == 0 else float(np.sum(a * v)) / (na * nb))
        best = c if best is None else max(best, c)
    return best


def activation_similarity(sa: Sequence[LayerSig], sb: Sequence[LayerSig], acts_a: dict, acts_b: dict) -> dict:
    out = {}
    for i, x in enumerate(sa):
        a = acts_a.get(x.name)
        if a is None:
            continue
        for j, y in enumerate(sb):
            b = acts_b.get(y.name)
            if b is None or x.op_class != y.op_class:
                continue
            c = cosine(a, b)
            if c is not None:
                out[i, j] = round(c, 6)
    return out


# ------------------------------------------------------------------ explanations


def _explain_layer(labels, rows: Sequence[LayerRow | None], metrics: Sequence[MetricDiff]) -> list[str]:
    out = []
    a = rows[0]
    diff = {m.metric: m for m in metrics}
    for k in range(1, len(rows)):
        b = rows[k]
        if a is None or b is None:
            continue
        A, B = labels[0], labels[k]
        for x, y, X, Y in ((a, b, A, B), (b, a, B, A)):
            if x.bn_folded and not y.bn_folded:
                if _close(y.w_range, x.fold_w_range) and _close(y.w_precision, x.fold_w_precision):
                    out.append(
                        f"{Y} was exported with BatchNorm already folded: its weights equal {X}'s BN-folded "
                        f"weights (qaudit folded {x.bn_folded} in {X})"
                    )
                elif _close(y.w_range, x.w_range) and _close(y.w_precision, x.w_precision):
                    out.append(
                        f"{Y} keeps this layer's BatchNorm unfolded but not as a BatchNormalization node "
                        f"(e.g. Mul+Add after it): qaudit cannot fold it, so {Y} quantizes the plain weights "
                        f"and the BN's scale becomes a separately quantized step"
                    )
                else:
                    out.append(f"qaudit folded a BatchNorm ({x.bn_folded}) into this layer in {X} only")
        if (
            "w_range" in diff
            and diff["w_range"].differs[k]
            and "fold_w_range" in diff
            and not diff["fold_w_range"].differs[k]
            and not (a.bn_folded and b.bn_folded)
        ):
            out.append(f"plain weights of {A} and {B} differ only by BN folding: the quantized (folded) weights agree")
        if bool(a.fused) != bool(b.fused):
            x, X, Y = (a, A, B) if a.fused else (b, B, A)
            out.append(
                f"{'+'.join(f.split('/')[-1] for f in x.fused)} fused into the layer in {X} only: "
                f"the rows measure different tensors ({Y} has the activation as a separate row)"
            )
        if a.w_encoding and b.w_encoding and a.w_encoding != b.w_encoding:
            out.append(f"weight encoding differs: {A} {a.w_encoding}, {B} {b.w_encoding}")
        folded_same = (
            "fold_w_range" in diff
            and not diff["fold_w_range"].differs[k]
            and diff["fold_w_range"].values[k] is not None
        )
        act = diff.get("a_range")
        if folded_same and act is not None and act.differs[k]:
            out.append(
                f"same folded weights but different activation range in {B}: the layer's input differs "
                "(upstream layers, preprocessing or data)"
            )
        sc = diff.get("scale")
        if act is not None and not act.differs[k] and sc is not None and sc.differs[k]:
            out.append(f"same activation range but ORT calibrated a different scale in {B} (calibration range differs)")
        s, iso = diff.get("sqnr_db"), diff.get("sqnr_isolated_db")
        if s is not None and s.differs[k] and iso is not None and iso.values[k] is not None and not iso.differs[k]:
            out.append(
                f"SQNR differs in {B} but the layer's own (isolated) error agrees: the difference comes from upstream"
            )
    return list(dict.fromkeys(out))


def _explain_models(models: Sequence[ModelInfo], reports: Sequence[Report]) -> list[str]:
    out = []
    A = models[0]
    for k in range(1, len(models)):
        B = models[k]
        if A.opset is not None and B.opset is not None and A.opset != B.opset:
            out.append(f"different opsets: {A.label} {A.opset}, {B.label} {B.opset}")
        if A.producer != B.producer:
            out.append(f"different producers: {A.label} '{A.producer}', {B.label} '{B.producer}'")
        if A.layout and B.layout and A.layout != B.layout:
            out.append(
                f"different input layouts: {A.label} {A.layout} {A.inputs[0].split(': ')[-1]}, "
                f"{B.label} {B.layout} {B.inputs[0].split(': ')[-1]} (the graph transposes)"
            )
        if A.bn_folded_by_qaudit != B.bn_folded_by_qaudit:
            out.append(
                f"BatchNorm nodes folded by qaudit: {A.label} {A.bn_folded_by_qaudit}, {B.label} {B.bn_folded_by_qaudit} "
                "(the other export folded BN itself, or has none)"
            )
        sa, sb = reports[0].settings, reports[k].settings
        keys = [x for x in sorted(set(sa) | set(sb)) if x != "auto_excluded" and sa.get(x) != sb.get(x)]
        if keys:
            out.append(
                f"settings differ between {A.label} and {B.label}: "
                + ", ".join(f"{x} {sa.get(x)!r} vs {sb.get(x)!r}" for x in keys)
            )
        da, db = reports[0].data, reports[k].data
        dkeys = [x for x in ("n_calib", "n_eval", "eval_is_calib") if da.get(x) != db.get(x)]
        if dkeys:
            out.append(
                f"data differ between {A.label} and {B.label}: "
                + ", ".join(f"{x} {da.get(x)!r} vs {db.get(x)!r}" for x in dkeys)
            )
    return out


# ------------------------------------------------------------------ building


def _label(path: Path, taken: set) -> str:
    base = PurePath(path).name
    label, n = base, 2
    while label in taken:
        label, n = f"{base} ({n})", n + 1
    taken.add(label)
    return label


def build(
    reports: Sequence[Report],
    labels: Sequence[str],
    alignments: Sequence[Alignment],
    sigs: Sequence[Sequence[LayerSig]],
    tolerances: Mapping[str, float] | None = None,
    sources: Sequence[str] | None = None,
    transposed: Sequence[bool] | None = None,
    notes: Sequence[str] = (),
) -> Comparison:
    """The :class:`Comparison` of ``reports`` given each model's alignment with model 0
    (``alignments[k - 1]`` aligns model 0 with model k)."""
    n = len(reports)
    tol = {**DEFAULT_TOLERANCES, **dict(tolerances or {})}
    rows_by_index = [{r.index: r for r in rep.layers} for rep in reports]

    # one row per weighted layer of model 0, then the unaligned layers of the others after
    # the model-0 row whose partner precedes them
    cells: list[list] = [[(0, p)] for p in range(len(sigs[0]))]
    extra: dict[int, list] = {}  # model-0 position (-1 = before all) -> [(k, pos)]
    for k, al in enumerate(alignments, start=1):
        by_a = al.partner_of_a()
        by_b = {p.b: p for p in al.pairs}
        for pos0, pair in by_a.items():
            cells[pos0].append((k, pair.b, pair))
        for j in al.unaligned_b:
            prev = max((by_b[x].a for x in by_b if x < j), default=-1)
            extra.setdefault(prev, []).append((k, j))
    ordered: list[list] = [[(k, j)] for k, j in extra.get(-1, [])]
    for pos0, c in enumerate(cells):
        ordered.append(c)
        ordered.extend([(k, j)] for k, j in extra.get(pos0, []))

    layers = []
    for c in ordered:
        names: list = [None] * n
        idx: list = [None] * n
        conf: list = [None] * n
        method: list = [None] * n
        act: list = [None] * n
        rows: list = [None] * n
        for entry in c:
            k, pos = entry[0], entry[1]
            s = sigs[k][pos]
            names[k], idx[k] = s.name, s.index
            rows[k] = rows_by_index[k][s.index]
            if len(entry) == 3:
                p = entry[2]
                conf[k], method[k], act[k] = p.confidence, p.method, p.activation
        first = next(k for k in range(n) if names[k] is not None)
        metrics = tuple(
            _metric(m, [getattr(r, m) if r is not None else None for r in rows], tol) for m, _, _ in LAYER_METRICS
        )
        layers.append(
            LayerCompare(
                layers=tuple(names),
                indices=tuple(idx),
                signature=sigs[first][c[0][1]].describe(),
                confidence=tuple(conf),
                method=tuple(method),
                activation=tuple(act),
                metrics=metrics,
                explanations=tuple(_explain_layer(labels, rows, metrics)),
            )
        )

    outputs = []
    n_out = max(len(r.outputs) for r in reports)
    for o in range(n_out):
        outs: list[OutputRow | None] = [r.outputs[o] if o < len(r.outputs) else None for r in reports]
        metrics = tuple(
            _metric(m, [getattr(x, m) if x is not None else None for x in outs], tol) for m, _, _ in OUTPUT_METRICS
        )
        outputs.append(OutputCompare(tuple(x.name if x else None for x in outs), metrics))

    sources = list(sources or ["report"] * n)
    transposed = list(transposed or [False] * n)
    models = tuple(
        ModelInfo(
            label=labels[k],
            source=sources[k],
            path=str(rep.model.get("path")),
            opset=rep.model.get("opset"),
            producer=rep.model.get("producer"),
            inputs=tuple(rep.model.get("inputs", ())),
            layout=guess_layout(rep.model.get("inputs", ())),
            weighted_layers=len(sigs[k]),
            bn_folded_by_qaudit=len(rep.folding.get("folded", [])),
            data_transposed=transposed[k],
        )
        for k, rep in enumerate(reports)
    )
    all_notes = list(notes)
    if any(r.c_out is None for rep in reports for r in rep.layers if r.has_weights):
        all_notes.append(
            "a report has no layer signatures (written before qaudit recorded them): its layers align by op type "
            "and order only; re-run its audit for a confident alignment"
        )
    if len({len(r.outputs) for r in reports}) > 1:
        all_notes.append("the models have different numbers of outputs: outputs are paired by position")
    for k in range(n):
        if transposed[k]:
            all_notes.append(
                f"{labels[k]} takes its input in another layout than the data: qaudit fed it the data transposed"
            )
    return Comparison(
        models=models,
        layers=tuple(layers),
        outputs=tuple(outputs),
        explanations=tuple(_explain_models(models, reports)),
        notes=tuple(all_notes),
        tolerances={m: tol[m] for m in DEFAULT_TOLERANCES},
        reports=tuple(reports),
    )


def compare_reports(
    reports: Sequence[Report],
    labels: Sequence[str] | None = None,
    pins: Sequence[Sequence[str | int | None]] = (),
    tolerances: Mapping[str, float] | None = None,
    activations: Sequence[dict[str, np.ndarray] | None] | None = None,
) -> Comparison:
    """Align and compare reports already in memory (no model is run).

    ``activations[k]``: optional fp32 activations of model k's weighted rows, by row name.
    """
    if len(reports) < 2:
        raise ConfigError("compare needs at least two reports")
    labels = list(labels or [PurePath(str(r.model.get("path", f"model {i}"))).name for i, r in enumerate(reports)])
    if len(set(labels)) < len(labels):
        taken: set = set()
        labels = [_label(Path(x), taken) for x in labels]
    sigs = [signatures(r) for r in reports]
    for k, s in enumerate(sigs):
        if not s:
            raise ConfigError(f"{labels[k]} has no weighted layer (Conv, ConvTranspose, Gemm, MatMul) to align")
    acts = list(activations or [None] * len(reports))
    alignments = []
    for k in range(1, len(reports)):
        k_pins = []
        for pin in pins:
            i = resolve_layer(sigs[0], pin[0], f"--map ({labels[0]})") if pin[0] is not None else None
            j = resolve_layer(sigs[k], pin[k], f"--map ({labels[k]})") if pin[k] is not None else None
            if i is not None or j is not None:
                k_pins.append((i, j))
        act = activation_similarity(sigs[0], sigs[k], acts[0], acts[k]) if acts[0] and acts[k] else None
        alignments.append(align(sigs[0], sigs[k], act, k_pins))
    return build(reports, labels, alignments, sigs, tolerances)


class _Labelled:
    """The caller's progress, with each stage named after the model being audited."""

    def __init__(self, progress, label: str):
        self.progress, self.label = progress, label

    def stage(self, description: str, total: int | None) -> None:
        self.progress.stage(f"{self.label}: {description}", total)

    def advance(self, n: int) -> None:
        self.progress.advance(n)


def compare(cfg: CompareConfig, progress=None) -> Comparison:
    """Audit (or load) every input and compare them; see the module docstring.

    ``progress`` (owned by the caller) follows every audit: each gets its own
    stages, named after its model's label."""
    taken: set = set()
    labels = list(cfg.labels) if cfg.labels else [_label(p, taken) for p in cfg.inputs]
    with tempfile.TemporaryDirectory(prefix="qaudit-compare-") as tmp:
        work = Path(tmp)
        audited: list[_Audited] = []
        for k, path in enumerate(cfg.inputs):
            if _is_report(path):
                saved = load_report(path)
                if not isinstance(saved, Report):  # a multi-run report (qaudit.runs): its runs are side by side already
                    raise ConfigError(
                        f"{path} holds several runs ({', '.join(saved.names)}): qaudit compare takes single reports; "
                        "see its runs side by side with qaudit report (--html overlays them)"
                    )
                audited.append(_Audited(saved))
            else:
                if cfg.audit is None:
                    raise ConfigError(
                        f"{path} is a model: give --calib data to audit it (or compare saved JSON reports)"
                    )
                labelled = _Labelled(progress, labels[k]) if progress is not None else None
                audited.append(_audit_model(path, cfg.audit, work / f"data-{k}", labelled))
        reports = [a.report for a in audited]
        acts: list = [None] * len(audited)
        notes = []
        if cfg.activations:
            models = [k for k, a in enumerate(audited) if a.model is not None]
            if 0 in models and len(models) > 1:
                for k in models:
                    rows = [r for r in audited[k].report.layers if r.has_weights]
                    acts[k] = _fp32_activations(
                        audited[k].model, audited[k].calib, rows, work, str(k), cfg.audit.batch_axis
                    )
            elif len(models) < len(audited):
                notes.append(
                    "activation similarity needs the first input and another to be models: aligned by signature only"
                )
        comparison = compare_reports(reports, labels, cfg.pins, cfg.tolerances, acts)
        comparison = replace(
            comparison,
            models=tuple(
                replace(m, source="model" if a.model is not None else "report", data_transposed=a.transposed)
                for m, a in zip(comparison.models, audited)
            ),
            notes=comparison.notes
            + tuple(notes)
            + tuple(
                f"{labels[k]} takes its input in another layout than the data: qaudit fed it the data transposed"
                for k, a in enumerate(audited)
                if a.transposed
            ),
        )
    return comparison


# ------------------------------------------------------------------ map files


def read_map(path: Path, n_inputs: int) -> tuple[tuple[str | int | None, ...], ...]:
    """Pinned rows from a JSON file: ``{"pairs": [[layer of input 1, layer of input 2, ...], ...]}``
    (or the bare list). A layer is a node name, ``"#N"`` (row N of the report) or ``null``
    (that input has no partner: the others' layer stays unaligned)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--map file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"--map {path} is not JSON: {e}") from None
    entries = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f'--map {path}: expected {{"pairs": [["layer in input 1", "layer in input 2"], ...]}}')
    out = []
    for e in entries:
        if not isinstance(e, list) or len(e) != n_inputs or not all(x is None or isinstance(x, (str, int)) for x in e):
            raise ConfigError(f"--map {path}: entry {e!r} must list {n_inputs} layer names (or null), one per input")
        if sum(x is not None for x in e) == 0:
            raise ConfigError(f"--map {path}: entry {e!r} names no layer")
        out.append(tuple(e))
    return tuple(out)


__all__ = [
    "CompareConfig",
    "activation_similarity",
    "compare",
    "compare_reports",
    "cosine",
    "guess_layout",
    "read_map",
]
