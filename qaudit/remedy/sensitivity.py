"""Measured sensitivity: what one change to the quantization does to the model outputs.

A *change* leaves one node in float, puts one tensor at 16 bits, quantizes one
layer's weight per channel, or gives one tensor the range another calibration
method computed (minmax instead of percentile, or the reverse). A *change set*
is a tuple of changes. Nothing here is guessed: :func:`verify` quantizes the
graph the audit measured, from the ranges the audit calibrated (ranges do not
change when nodes are excluded or types changed, so nothing is calibrated
again), runs the deployed quantized model on the evaluation batches and scores
its outputs against the fp32 outputs computed once (:func:`workspace`), with the
output gates of the target.

:func:`candidates` ranks the changes worth measuring from the one-pass layer
rows of a report (isolated SQNR, clip fraction, weight SQNR and channel
precision): the search measures only those, so its cost is a small multiple of
one audit, not one audit per layer. The causes of a report (``hints``, e.g.
:func:`qaudit.remedy.causes.diagnose`'s remedies) are measured first.

The unit of work, :func:`measure_one`, is a plain function of picklable
arguments returning a picklable :class:`Measured`; :func:`verify` maps it over
change sets with any executor that has ``map`` (the default runs them here, one
after the other; a process pool or a Ray-backed executor works the same).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qaudit.options import SIXTEEN_BIT_OPSET

#: the kinds of change, cheapest first in the search's cost order is not this order (see qaudit.remedy.search)
KINDS = ("float_node", "tensor_16bit", "per_channel", "range")


@dataclass(frozen=True, order=True)
class Change:
    """One change: ``kind`` (:data:`KINDS`), the ``node`` (layer) it is for, the ``tensor`` it
    sets (None for ``float_node``) and ``detail`` (the 16-bit type, or the range's method)."""

    kind: str
    node: str
    tensor: str | None = None
    detail: str = ""

    def describe(self) -> str:
        if self.kind == "float_node":
            return f"node {self.node} in float"
        if self.kind == "tensor_16bit":
            return f"tensor {self.tensor} at {self.detail}"
        if self.kind == "per_channel":
            return f"weight {self.tensor} of {self.node} per channel"
        return f"tensor {self.tensor} with the {self.detail} range"


@dataclass(frozen=True)
class Candidate:
    """A change worth measuring, its rank ``score`` (larger first) and the evidence for it."""

    change: Change
    score: float
    why: str


def _noise(db) -> float:
    """Relative noise power ``10^(-SQNR/10)`` (0 for no error, 0 when unknown)."""
    if db is None or (isinstance(db, float) and math.isnan(db)):
        return 0.0
    return 0.0 if db == math.inf else 10.0 ** (-db / 10.0)


def _sixteen(type_: str) -> str:
    return "int16" if type_.startswith("int") else "uint16"


def candidates(
    report,
    prepared,
    hints: Iterable = (),
    alternative: str | None = None,
    layers: int | None = None,
) -> list[Candidate]:
    """The changes worth measuring, best first, from ``report``'s layer rows.

    ``prepared``: the graph the audit quantized (the folded model); only its nodes,
    tensors and weights are proposed. ``alternative``: the other calibration method whose
    ranges a ``range`` change takes (None: no range changes). ``hints``: objects with
    ``kind``, ``node``, ``tensor`` and ``detail`` (the causes' remedies): their changes
    come first, in their order; kinds this search does not measure (``upstream``) are skipped,
    ``asymmetric`` becomes the alternative range, a ``per_channel`` hint without a tensor is the node's weight.

    Ranking: a layer's activation candidates (16 bits, its node in float, and the alternative
    range when values were clipped) by the noise its own quantization adds (isolated SQNR,
    else accumulated); a weight's candidates (per channel when weights are per-tensor, 16 bits)
    by its weight noise divided by the square of its folded channel precision (a channel whose
    values span a tenth of the layer's range sees a hundred times the noise relative to its own
    signal). The ``layers`` noisiest activations and weights are proposed (None: all). Only tensors
    the prepared graph types are proposed, and per-channel weights in QDQ only from opset 13.
    """
    settings = report.settings
    act_type = str(settings.get("activation_type") or "uint8")
    weight_type = str(settings.get("weight_type") or "uint8")
    nodes = {n.name: n for n in prepared.graph.node}
    inits = {i.name for i in prepared.graph.initializer}
    out: dict[Change, Candidate] = {}

    g = prepared.graph
    # a tensor ORT can override: typed in the prepared graph (its fixer refuses others, "Only an existing
    # tensor can be modified"), or a weight
    typed = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)} | inits
    opset = next((o.version for o in prepared.opset_import if o.domain in ("", "ai.onnx")), 0)
    # per-channel QDQ needs DequantizeLinear's axis (opset 13): below it ORT writes a model it cannot load
    per_channel_ok = not settings.get("per_channel") and (settings.get("format") != "qdq" or opset >= 13)
    seen: set = set()

    # the graph inputs ORT quantizes (their rows' op type is "Input"): a 16-bit input or another range
    inputs = {i.name for i in g.input if i.name not in inits}
    # ORT's QOperator format has no 16-bit type (qaudit refuses the override): never proposed there
    sixteen_ok = settings.get("format") != "qoperator"

    def add(change: Change, score: float, why: str) -> None:
        key = (change.kind, change.node if change.kind == "float_node" else change.tensor)
        if change.tensor is not None and change.tensor not in typed:
            return
        if change.kind == "per_channel" and not per_channel_ok:
            return
        if change.kind == "tensor_16bit" and not sixteen_ok:
            return
        known = change.node in nodes or (change.node in inputs and change.kind in ("tensor_16bit", "range"))
        if known and key not in seen:  # one change per tensor (per node in float)
            seen.add(key)
            out[change] = Candidate(change, score, why)

    for h in hints:
        kind, node, tensor = getattr(h, "kind", ""), getattr(h, "node", None), getattr(h, "tensor", None)
        why = f"cause: {getattr(h, 'detail', '') or kind}"
        if kind == "float_node" and node:
            add(Change("float_node", node), math.inf, why)
        elif kind == "tensor_16bit" and node and tensor:
            add(
                Change("tensor_16bit", node, tensor, _sixteen(weight_type if tensor in inits else act_type)),
                math.inf,
                why,
            )
        elif kind == "per_channel" and node in nodes:
            if tensor is None and len(nodes[node].input) > 1:  # a cause names the layer: its weight
                tensor = nodes[node].input[1]
            if tensor in inits:
                add(Change("per_channel", node, tensor), math.inf, why)
        elif kind in ("range", "asymmetric") and node and tensor and alternative:
            add(Change("range", node, tensor, alternative), math.inf, why)

    acts = [r for r in report.layers if r.has_activation and r.tensor and r.name in nodes]
    quantized = {r.tensor for r in acts}
    acts.sort(key=lambda r: -_noise(r.sqnr_isolated_db if r.sqnr_isolated_db is not None else r.sqnr_db))
    for r in acts[:layers] if layers else acts:
        iso = r.sqnr_isolated_db is not None
        db = r.sqnr_isolated_db if iso else r.sqnr_db
        noise = _noise(db)
        if noise <= 0:
            continue
        what = f"{'isolated' if iso else 'accumulated'} SQNR {db:.1f} dB"
        add(Change("tensor_16bit", r.name, r.tensor, _sixteen(act_type)), noise, what)
        # the layer's own error includes its inputs' quantization: their tensors at 16 bits too
        for t in nodes[r.name].input:
            if t and t not in inits and t in quantized:
                add(Change("tensor_16bit", r.name, t, _sixteen(act_type)), noise, f"{what} (its input)")
        add(Change("float_node", r.name), noise, what)
        clipped = r.clip_fraction or 0.0
        if alternative and clipped > 0:
            add(
                Change("range", r.name, r.tensor, alternative), noise, f"{what}, {clipped * 100:.2g}% of values clipped"
            )
    for r in report.layers:  # a graph input's row: its own quantization error (nothing upstream)
        if r.op_type != "Input" or r.tensor not in inputs:
            continue
        noise = _noise(r.sqnr_isolated_db if r.sqnr_isolated_db is not None else r.sqnr_db)
        if noise <= 0:
            continue
        what = f"graph input, SQNR {r.sqnr_db:.1f} dB"
        add(Change("tensor_16bit", r.tensor, r.tensor, _sixteen(act_type)), noise, what)
        if alternative and (r.clip_fraction or 0.0) > 0:
            add(
                Change("range", r.tensor, r.tensor, alternative), noise, f"{what}, {r.clip_fraction * 100:.2g}% clipped"
            )
    weights = []
    for r in report.layers:
        node = nodes.get(r.name)
        if node is None or r.w_sqnr_db is None or len(node.input) < 2 or node.input[1] not in inits:
            continue
        # the noise a channel sees relative to its own signal grows as 1 / channel precision^2
        # (its values span precision x the layer's range, on the layer's grid)
        prec = r.fold_w_precision if r.fold_w_precision else 1.0
        weights.append((_noise(r.w_sqnr_db) / max(prec, 1e-3) ** 2, r, node.input[1]))
    weights.sort(key=lambda x: -x[0])
    if per_channel_ok:
        for noise, r, w in weights[:layers] if layers else weights:
            if noise <= 0:
                continue
            prec = f", channel precision {r.fold_w_precision:.2f}" if r.fold_w_precision is not None else ""
            add(Change("per_channel", r.name, w), noise, f"weight SQNR {r.w_sqnr_db:.1f} dB{prec}")
    if "16" not in weight_type:  # a weight at 16 bits: per-tensor or per-channel alike
        for noise, r, w in weights[:layers] if layers else weights:
            if noise > 0:
                add(
                    Change("tensor_16bit", r.name, w, _sixteen(weight_type)), noise, f"weight SQNR {r.w_sqnr_db:.1f} dB"
                )
    return sorted(out.values(), key=lambda c: -c.score)


def layer_remedies(
    report, prepared, failures, forced: Sequence[Change] = (), alternative: str | None = None, hints: Iterable = ()
):
    """The next remedy for each failing layer gate check of ``failures`` (a verifying audit's, on
    ``report``), given the changes already ``forced``: the layer gates are checked by an audit, not by
    a measurement of the outputs, so the fix adds these to every set it measures and audits again.

    A ladder per check, its first rung not yet forced: the remedies of the layer's causes in
    ``hints`` (:func:`qaudit.remedy.search.cause_hints` of ``report``), one rung each; then for
    ``min_layer_sqnr``/``max_layer_qmse`` the layer's tensor and its quantized inputs at 16 bits; ``max_clip_fraction``
    the tensor with the ``alternative`` range; ``min_weight_sqnr`` the weight per channel, then at
    16 bits; last, the node in float. A graph input's row (no node) stops at its
    16-bit or range rung. Returns the new changes (none: nothing left to try)."""
    from qaudit.gate import _keyed

    settings = report.settings
    act_type = str(settings.get("activation_type") or "uint8")
    weight_type = str(settings.get("weight_type") or "uint8")
    g = prepared.graph
    nodes = {n.name: n for n in g.node}
    inits = {i.name for i in g.initializer}
    typed = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)} | inits
    opset = next((o.version for o in prepared.opset_import if o.domain in ("", "ai.onnx")), 0)
    per_channel_ok = not settings.get("per_channel") and (settings.get("format") != "qdq" or opset >= 13)
    rows = _keyed(report.layers)
    quantized = {r.tensor for r in report.layers if r.has_activation and r.tensor}
    have = set(forced)
    out: list[Change] = []
    caused: dict[str, list[Change]] = {}
    for c in candidates(report, prepared, hints, alternative) if hints else ():
        if c.score == math.inf:  # a cause's remedy
            caused.setdefault(c.change.node, []).append(c.change)
    for check in failures:
        if check.scope != "layer" or check.subject not in rows:
            continue
        row = rows[check.subject]
        name = row.name.split(" (converted to ")[0]
        node = nodes.get(name)
        ladder: list[list[Change]] = [[c] for c in caused.get(name, [])]
        tensor = row.tensor if row.tensor in typed else None
        if check.gate in ("min_layer_sqnr", "max_layer_qmse") and tensor:
            rung = [Change("tensor_16bit", name, tensor, _sixteen(act_type))]
            if node is not None:
                rung += [
                    Change("tensor_16bit", name, t, _sixteen(act_type))
                    for t in node.input
                    if t and t not in inits and t in quantized and t in typed
                ]
            ladder.append(rung)
        elif check.gate == "max_clip_fraction" and tensor and alternative:
            ladder.append([Change("range", name, tensor, alternative)])
        elif check.gate == "min_weight_sqnr" and node is not None and len(node.input) > 1 and node.input[1] in inits:
            w = node.input[1]
            if per_channel_ok:
                ladder.append([Change("per_channel", name, w)])
            ladder.append([Change("tensor_16bit", name, w, _sixteen(weight_type))])
        if node is not None:
            ladder.append([Change("float_node", name)])
        for rung in ladder:
            new = [c for c in rung if c not in have and c not in out]
            if new:
                out += new
                break
    return out


# ------------------------------------------------------------------ the workspace and the measurement


@dataclass(frozen=True)
class Workspace:
    """What a measurement needs, as files (picklable: a worker process or a Ray task opens them).

    ``folded``: the graph the audit quantized; ``ranges``: method -> ORT calibration cache;
    ``batches``/``fp32``: one .npz per evaluation batch of feeds and of fp32 outputs.
    """

    work: Path
    folded: Path
    quant: object  # QuantConfig
    method: str
    ranges: dict
    also_exclude: tuple[str, ...]
    batches: tuple[Path, ...]
    fp32: tuple[Path, ...]
    labels: Path | None
    outputs: object  # OutputKinds
    gates: object  # GateConfig: the target's output gates
    output_names: tuple[str, ...] = ()
    #: the graph prepared for 16-bit types (opset 21, as the audit of such a recipe prepares it) and its
    #: ranges (method -> cache), when ``folded``'s opset is lower: a set needing it is quantized from it
    #: (ORT would upgrade ``folded`` itself and refuse the result, docs/ort-quirks.md); None: not needed
    upgraded: Path | None = None
    upgraded_ranges: dict | None = None
    opset: int = 0  # ``folded``'s

    def graph_for(self, quant) -> tuple[Path, dict]:
        """The prepared graph and ranges a set quantized as ``quant`` (a QuantConfig) is measured on:
        the one the audit of that quantization prepares."""
        from qaudit.pipeline.audit import opset_needed

        if self.upgraded is not None and opset_needed(quant)[0] > self.opset:
            return self.upgraded, self.upgraded_ranges
        return self.folded, self.ranges


@dataclass(frozen=True)
class Measured:
    """The measured effect of one change set: its output rows, the output gates' verdict,
    ``shortfall`` (sum over the checks of how far each misses its threshold, relative to it;
    0 when every output gate passes) and the seconds it took."""

    changes: tuple[Change, ...]
    outputs: tuple
    gates: object  # GateResult
    shortfall: float
    seconds: float
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and self.gates is not None and self.gates.passed


def output_gates(config):
    """``config`` (a GateConfig) with only its output threshold gates: what a measurement can check."""
    from qaudit.gate import GATES, GateConfig, Threshold

    keep = {g.name: config.threshold(g.name) for g in GATES if g.scope == "output" and g.kind == "threshold"}
    off = {g.name: Threshold(None) for g in GATES if g.name not in keep}
    return GateConfig({**off, **keep}, skip_missing=config.skip_missing)


def shortfall(result) -> float:
    """How far ``result``'s failing checks miss their thresholds, each relative to its threshold (0: all pass)."""
    total = 0.0
    for c in result.checks:
        if c.status != "fail":
            continue
        if c.measured is None or c.threshold is None or not math.isfinite(c.measured):
            total += 1.0  # missing or infinite: a whole threshold short
            continue
        miss = c.threshold - c.measured if c.comparison == ">=" else c.measured - c.threshold
        total += max(0.0, miss) / max(abs(c.threshold), 1e-12)
    return total


def workspace(
    record: dict, cfg, gates, work: Path, alternative: str | None, progress=None, sixteen: bool = True
) -> Workspace:
    """The files of a :class:`Workspace` in ``work``, from an audit's ``record``
    (:func:`qaudit.pipeline.audit.audit`): its prepared graph and ranges, and the evaluation
    batches with their fp32 outputs, computed here once. ``sixteen``: sets may hold 16-bit
    tensors; below opset 21 (QDQ) the graph prepared for them is made and calibrated here too."""
    import onnx
    from onnxruntime.quantization.calibrate import save_tensors_data

    from qaudit.pipeline.data import open_inputs, samples, save_feeds
    from qaudit.pipeline.session import make_session, run_named

    work.mkdir(parents=True, exist_ok=True)
    folded = work / "prepared.onnx"
    onnx.save(record["folded"], str(folded))
    ranges = {cfg.quant.calibrate_method: work / f"ranges-{cfg.quant.calibrate_method}.json"}
    save_tensors_data(record["ranges"], ranges[cfg.quant.calibrate_method])
    if alternative is not None:
        ranges[alternative] = work / f"ranges-{alternative}.json"
        save_tensors_data(record["extra_ranges"][0], ranges[alternative])
    src = open_inputs(cfg)
    session = make_session(folded, what=f"model {cfg.model}")
    names = [o.name for o in session.get_outputs()]
    batches, fp32 = [], []
    if progress is not None:
        progress.stage("fix: fp32 outputs", src.n_eval)
    for i, feeds in enumerate(src.evaluation.batches(record["batch_size"], cfg.max_samples)):
        b, f = work / f"eval-{i}.npz", work / f"fp32-{i}.npz"
        save_feeds(feeds, b)  # any input name (np.savez(b, **feeds) fails on one named 'file')
        out = run_named(session, feeds)
        np.savez(f, **{f"o{k}": out[n] for k, n in enumerate(names)})
        batches.append(b)
        fp32.append(f)
        if progress is not None:
            progress.advance(samples(feeds))
    labels = None
    if src.labels is not None:
        labels = work / "labels.npy"
        np.save(labels, src.labels)
    opset = next((o.version for o in record["folded"].opset_import if o.domain in ("", "ai.onnx")), 0)
    upgraded = upgraded_ranges = None
    if sixteen and cfg.quant.format == "qdq" and opset < SIXTEEN_BIT_OPSET:
        upgraded, upgraded_ranges = _prepare_sixteen(cfg, record, work, alternative, progress)
    return Workspace(
        work,
        folded,
        cfg.quant,
        cfg.quant.calibrate_method,
        ranges,
        tuple(record["also_exclude"]),
        tuple(batches),
        tuple(fp32),
        labels,
        record["outputs"],
        output_gates(gates),
        tuple(names),
        upgraded,
        upgraded_ranges,
        opset,
    )


def _prepare_sixteen(cfg, record: dict, work: Path, alternative: str | None, progress=None) -> tuple[Path, dict]:
    """The graph the audit of a recipe with a 16-bit tensor quantizes (the model prepared at opset 21 by
    :func:`qaudit.pipeline.audit.prepare`), and its ranges for ``cfg``'s method and ``alternative``,
    calibrated as that audit calibrates (one pass, the same batch size): a 16-bit set measured on it
    is the verifying audit's quantization."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    from qaudit.options import QuantConfig
    from qaudit.pipeline.audit import prepare
    from qaudit.pipeline.controlflow import every_sample
    from qaudit.pipeline.data import open_inputs
    from qaudit.pipeline.parallel import auto_batch_size
    from qaudit.pipeline.quantize import calibrate_many, probe_activations
    from qaudit.pipeline.runtimes import parse as parse_runtimes
    from qaudit.pipeline.session import save_model

    src = open_inputs(cfg)
    sixteen = replace(cfg.quant, overrides={"tensors": {"*": {"type": _sixteen(cfg.quant.activation_type)}}})
    prep = prepare(src.model, cfg.quant.exclude, sixteen, every_sample(src, cfg.max_samples))
    path = save_model(prep.fold.model, work / "prepared-16bit.onnx")
    del prep
    bad = dict(record.get("nonfinite", {}))
    _, bytes_per_sample, _ = probe_activations(path, src.first_batch())
    fixed = src.calib.fixed_batch()
    runtimes = len(parse_runtimes(cfg.runtimes))
    batch_size = fixed or cfg.batch_size or auto_batch_size(bytes_per_sample, fixed, cfg.isolated, runtimes)
    quants = (cfg.quant,) + ((QuantConfig(calibrate_method=alternative),) if alternative else ())
    if progress is not None:
        progress.stage("fix: calibrating the 16-bit graph (opset 21)", src.n_calib)
    advance = progress.advance if progress is not None else None
    with tempfile.TemporaryDirectory(prefix="calib-", dir=work) as calib:
        got = calibrate_many(
            path, src.calib.batches(batch_size, cfg.max_samples), quants, Path(calib), advance, set(bad), nonfinite=bad
        )
    ranges = {}
    for q, r in zip(quants, got, strict=True):
        ranges[q.calibrate_method] = work / f"ranges-16bit-{q.calibrate_method}.json"
        save_tensors_data(r, ranges[q.calibrate_method])
    return path, ranges


def overrides_table(changes: Sequence[Change], ranges_of) -> dict:
    """The qaudit overrides table (docs/configuration.md) of ``changes``; ``ranges_of(method)``
    gives an ORT ``TensorsData`` for a ``range`` change's method."""
    tensors: dict[str, dict] = {}
    for c in changes:
        if c.kind == "tensor_16bit":
            tensors.setdefault(c.tensor, {})["type"] = c.detail
        elif c.kind == "per_channel":
            tensors.setdefault(c.tensor, {})["per_channel"] = True
        elif c.kind == "range":
            lo, hi = (
                float(np.asarray(v, dtype=np.float32).reshape(-1)[0]) for v in ranges_of(c.detail)[c.tensor].range_value
            )
            tensors.setdefault(c.tensor, {}).update(rmin=lo, rmax=hi)
    return {"tensors": dict(sorted(tensors.items()))} if tensors else {}


def quant_of(base, changes: Sequence[Change], ranges_of):
    """``base`` (a QuantConfig) with ``changes``: nodes excluded, overrides added."""
    floats = tuple(c.node for c in changes if c.kind == "float_node")
    exclude = tuple(base.exclude) + tuple(n for n in sorted(floats) if n not in base.exclude)
    table = overrides_table(changes, ranges_of)
    merged = dict(base.overrides or {})
    for scope, globs in table.items():
        merged[scope] = {**merged.get(scope, {}), **globs}
    return replace(base, exclude=exclude, overrides=merged or None)


def _ranges_loader(ws: Workspace, changes: Sequence[Change] = ()):
    """``ranges_of(method)``: the ranges of the graph ``changes`` are measured on (:meth:`Workspace.graph_for`)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    _, files = ws.graph_for(quant_of(ws.quant, [c for c in changes if c.kind != "range"], None))
    cache: dict = {}

    def ranges_of(method):
        if method not in cache:
            cache[method] = load_tensors_data(files[method])
        return cache[method]

    return ranges_of


def measure_one(ws: Workspace, changes: tuple[Change, ...]) -> Measured:
    """Quantize ``ws.folded`` (or the graph prepared for 16 bits, :meth:`Workspace.graph_for`) with ``changes``
    from the cached ranges, run the deployed model
    on the evaluation batches and score its outputs with ``ws.gates`` (the unit of work)."""
    import onnx

    from qaudit.errors import QauditError
    from qaudit.pipeline.data import load_feeds, samples
    from qaudit.pipeline.measure import OutputMeter
    from qaudit.pipeline.overrides import resolve
    from qaudit.pipeline.quantize import quantize
    from qaudit.pipeline.session import QUANTIZER_AT_FAULT, make_session, run_named
    from qaudit.pipeline.trials import _own_copy

    t0 = time.perf_counter()
    ranges_of = _ranges_loader(ws, changes)
    try:
        quant = quant_of(ws.quant, changes, ranges_of)
        folded, _ = ws.graph_for(quant)
        with tempfile.TemporaryDirectory(prefix="qaudit-fix-", dir=ws.work) as tmp:
            model = onnx.load(str(folded), load_external_data=False)
            tensor_overrides, _ = resolve(quant.overrides or {}, model, quant)
            # ORT writes <model>-inferred.onnx beside the model it quantizes (quirk 54): measurements at once
            # (--workers, Ray tasks reading a shared folder) each give it a file of their own
            own = _own_copy(folded, Path(tmp))
            del model
            q_path = quantize(
                own,
                ranges_of(ws.method),
                quant,
                Path(tmp) / "quantized.onnx",
                Path(tmp),
                also_exclude=ws.also_exclude,
                tensor_overrides=tensor_overrides,
            )
            session = make_session(q_path, what="the quantized model", advice=QUANTIZER_AT_FAULT)
            names = ws.output_names
            meter = OutputMeter(ws.outputs)
            labels = np.load(ws.labels) if ws.labels is not None else None
            seen = 0
            for b, f in zip(ws.batches, ws.fp32, strict=True):
                feeds = load_feeds(b)
                with np.load(f) as ff:
                    fp32 = {n: ff[f"o{k}"] for k, n in enumerate(names)}
                q = run_named(session, feeds)
                n = samples(feeds)
                meter.update(fp32, q, labels[seen : seen + n] if labels is not None else None)
                seen += n
            del session
    except QauditError as e:
        return Measured(tuple(changes), (), None, math.inf, time.perf_counter() - t0, str(e))
    rows = meter.rows()
    result = score(rows, ws.gates)
    return Measured(tuple(changes), rows, result, shortfall(result), time.perf_counter() - t0)


def score(rows, gates):
    """The output gates ``gates`` evaluated on output ``rows`` alone."""
    from qaudit.gate import evaluate
    from qaudit.report import Report

    report = Report({}, {}, {}, {}, {}, (), tuple(rows), ())
    return evaluate(report, gates)


class LocalExecutor:
    """Runs every task here, in order (the default executor of :func:`verify`)."""

    def map(self, fn, *iterables):
        return map(fn, *iterables)


class ProcessExecutor:
    """``width`` change sets measured at once in as many local processes (``qaudit fix --workers N``).

    One process pool (spawn: ONNX Runtime's threads do not survive a fork), started at the first
    :meth:`map` and reused for every measurement until :meth:`close`; a context manager that closes it
    on leaving, and stops the processes at once when leaving on an error or KeyboardInterrupt. The
    processes ignore SIGINT (Ctrl-C is the fix's to handle) and write their temporary files into
    ``tmp`` (the fix's workspace folder, removed with it after :meth:`close`). Each session keeps ONNX
    Runtime's default intra-op threads: one thread per process was not faster on 2 cores
    (docs/performance.md#qaudit-fix)."""

    def __init__(self, workers: int, tmp: Path):
        self.width = workers
        self.tmp = Path(tmp)
        self._pool = None

    def map(self, fn, workspaces, change_sets):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.width, ctx, _worker_start, (str(self.tmp),))
        return self._pool.map(fn, workspaces, change_sets)

    def close(self, stop: bool = False) -> None:
        """Wait for the processes to end (``stop``: end them now, their measurements discarded)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if not stop:
            pool.shutdown(wait=True)
            return
        # the pool's processes (ProcessPoolExecutor.terminate_workers from Python 3.14 only; its _processes
        # in 3.10-3.13): shutdown() alone waits for the measurements running
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        # the pool's own thread may reap a process first, and then our join returns while the process
        # still reads as alive until that thread has recorded its exit code: wait for the exit code
        deadline = time.monotonic() + 10
        for proc in processes:
            proc.join(max(0.0, deadline - time.monotonic()))
            while proc.exitcode is None and time.monotonic() < deadline:
                time.sleep(0.01)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(stop=kind is not None)


def _worker_start(tmp: str) -> None:
    """A :class:`ProcessExecutor` process's start: Ctrl-C left to the fix, temporary files in its folder."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tempfile.tempdir = tmp


def verify(ws: Workspace, change_sets: Iterable[Sequence[Change]], executor=None, progress=None) -> list[Measured]:
    """Measure every change set (:func:`measure_one`) with ``executor`` (anything with
    ``map(fn, *iterables)``, e.g. ``concurrent.futures.ProcessPoolExecutor``; default: here, in
    order), results in the order given. ``progress.advance(1)`` after each."""
    sets = [tuple(s) for s in change_sets]
    out = []
    for m in (executor or LocalExecutor()).map(measure_one, [ws] * len(sets), sets):
        out.append(m)
        if progress is not None:
            progress.advance(1)
    return out


__all__ = [
    "KINDS",
    "Candidate",
    "Change",
    "LocalExecutor",
    "Measured",
    "ProcessExecutor",
    "Workspace",
    "candidates",
    "layer_remedies",
    "measure_one",
    "output_gates",
    "quant_of",
    "verify",
    "workspace",
]
