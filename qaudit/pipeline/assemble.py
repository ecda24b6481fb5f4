"""Stage 5b: assemble the :class:`~qaudit.report.Report` from what the stages measured.

Every fact the report carries about the run (versions, model, settings, data,
folding, notes) is written here, in one place, from the stages' results:
:func:`qaudit.pipeline.audit.audit` only orders the stages.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from qaudit import __version__
from qaudit.options import AuditConfig
from qaudit.pipeline import kernels
from qaudit.pipeline.controlflow import CONTROL_FLOW_OPS
from qaudit.pipeline.data import describe_labels
from qaudit.pipeline.load import LoadedModel
from qaudit.pipeline.match import Matching
from qaudit.pipeline.transform import FoldResult
from qaudit.report import LayerRow, OutputRow, Report


class PhaseClock:
    """Wall seconds of the audit's stages, in order (the report's ``meta.phase_seconds``)."""

    def __init__(self):
        self.start = self._t = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self._t, 4)
        self._t = now

    def total(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class RunFacts:
    """What the stages decided or found, beyond the rows: the report's settings, data and folding."""

    n_constants: int
    batch_size: int
    bytes_per_sample: int
    auto_excluded: dict[str, str]
    n_calib: int
    n_eval: int
    fold_check: dict = field(default_factory=dict)
    fold_check_samples: int = 0
    graph_changes: list = field(default_factory=list)  # transform.GraphChange: what qaudit changed before quantizing
    label_output: str | None = None  # the output the labels scored
    #: outputs on which the instrumented quantized graph differed from a plain session (capture.Captured)
    plain_outputs: tuple[str, ...] = ()
    #: what ONNX Runtime's quantizer changed itself: quantize.quantizer_changes (opset, Q/DQ domain, notes)
    quantizer: dict = field(default_factory=dict)
    #: --quantized: the user's model, the settings read from it, the options that did not apply
    #: (qaudit.pipeline.prequant.given_facts); None when qaudit quantized the model
    quantized: dict | None = None
    #: --ray-address: the capture's shards and the kernels every worker ran (qaudit.distributed); None: local
    ray: dict | None = None


def versions() -> dict:
    import onnxruntime

    return {
        "qaudit": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        # which per-value loops ran: "c" or "numpy" (qaudit/pipeline/kernels.py); the same
        # statistics, sums of squares equal to ~1e-7 relative
        "kernels": kernels.name(),
    }


def _some(names, most: int = 3) -> str:
    """The first ``most`` names, and ``...`` when there are more: for a note's parenthesis."""
    names = list(names)
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def notes(cfg: AuditConfig, lm: LoadedModel, matching: Matching, changes=(), plain_outputs=()) -> tuple[str, ...]:
    """What the reader must know to trust the numbers, in the order the stages found it."""
    out = [c.detail for c in changes if c.kind not in ("unshare_initializer", "route_outer_reads")]
    routed = [c.target for c in changes if c.kind == "route_outer_reads"]
    if routed:
        out.append(
            f"{len(routed)} If/Loop/Scan node(s) read main-graph tensors inside their subgraphs "
            f"({_some(routed)}; settings.graph_changes): each read goes "
            "through an Identity, since ONNX Runtime's quantizer rewires only main-graph consumers and the subgraph "
            "would read the tensor before its quantization, without a Relu the quantizer removed"
        )
    shared = [c.target for c in changes if c.kind == "unshare_initializer"]
    if shared:
        out.append(
            f"{len(shared)} initializer(s) read by several layers got one copy per layer "
            f"({_some(shared)}; settings.graph_changes): "
            "ONNX Runtime's quantizer names its own copies after existing initializers only, which can "
            "collide with another tensor"
        )
    if lm.untyped:
        out.append(
            f"{len(lm.untyped)} tensor(s) have no type after shape inference ({_some(lm.untyped)}): "
            "ONNX Runtime does not calibrate or quantize them"
        )
    kept = [n.name for n in lm.model.graph.node if n.op_type in CONTROL_FLOW_OPS]
    if kept:  # what resolve_control_flow left: no layers inside
        out.append(
            f"{len(kept)} If/Loop/Scan node(s) without layers run in float ({_some(kept)}): ONNX Runtime quantizes only the main graph"
        )
    if cfg.eval is None:
        out.append(
            "no --eval data: metrics are measured on the calibration data, which flatters them; "
            "pass held-out data with --eval"
        )
    if not matching.twins:
        out.append("ONNX Runtime quantized no activation of this model: there is nothing to compare per layer")
    if plain_outputs:
        out.append(
            "the instrumented quantized graph (every layer's integer tensor exposed) gave outputs "
            f"{', '.join(plain_outputs)} different from a plain session's on the first batch: the model "
            "outputs are measured from a plain session, but every layer row comes from the instrumented graph, "
            "which differs from deployment; please report it (docs/ort-quirks.md #29)"
        )
    return tuple(out)


class AccountingError(RuntimeError):
    """A quantized activation missing from the report, or reported twice: a bug in qaudit (exit 3)."""


def check_accounting(matching: Matching, rows: tuple[LayerRow, ...]) -> None:
    """Every activation the quantized graph quantizes, and every twin, appears exactly once in the
    report: a row measuring it, or an unmatched entry with its kind and reason. Nothing is
    silently dropped (docs/architecture.md); a violation raises :class:`AccountingError`.
    A converted edge (:attr:`Matching.converted`) has a row of its own, beside its twin's."""
    seen: dict[str, int] = {}
    converted = {tw.quant_name for tw in matching.converted.values()}
    for name in [r.tensor for r in rows if r.tensor and r.quant_tensor not in converted] + [
        u.tensor for u in matching.unmatched
    ]:
        seen[name] = seen.get(name, 0) + 1
    rows_of = {r.quant_tensor for r in rows if r.quant_tensor in converted}
    expected = set(matching.quantized) | set(matching.twins)
    if rows_of != converted:
        raise AccountingError(f"converted edge(s) without a row: {', '.join(sorted(converted - rows_of))}")
    missing = sorted(n for n in expected if n not in seen)
    twice = sorted(n for n, k in seen.items() if k > 1)
    if missing or twice:
        parts = []
        if missing:
            parts.append(f"{len(missing)} quantized tensor(s) have no row and no unmatched entry: {', '.join(missing)}")
        if twice:
            parts.append(f"{len(twice)} tensor(s) are reported more than once: {', '.join(twice)}")
        raise AccountingError("; ".join(parts))


def build_report(
    cfg: AuditConfig,
    lm: LoadedModel,
    fold: FoldResult,
    matching: Matching,
    facts: RunFacts,
    rows: tuple[LayerRow, ...],
    outputs: tuple[OutputRow, ...],
    clock: PhaseClock,
    data: dict,
) -> Report:
    """The frozen report of one audit. ``data``: descriptions of the calibration and evaluation data."""
    check_accounting(matching, rows)
    return Report(
        meta={
            **versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": clock.total(),
            "phase_seconds": clock.phases,
            **({"ray": facts.ray} if facts.ray else {}),
        },
        model={
            "path": str(cfg.model),
            "sha256": lm.sha256,
            "opset": lm.opset,
            "producer": f"{lm.model.producer_name} {lm.model.producer_version}".strip(),
            "inputs": [s.describe() for s in lm.inputs],
            "outputs": list(lm.output_names),
            "constants_to_initializers": facts.n_constants,
            "shape_inference": lm.shape_inference,
            "untyped_tensors": list(lm.untyped),
            **({"quantized": facts.quantized["model"]} if facts.quantized else {}),
        },
        settings={
            **(facts.quantized["settings"] if facts.quantized else cfg.quant.as_dict()),
            "batch_size": facts.batch_size,
            "batch_size_auto": cfg.batch_size is None,
            "activation_mb_per_sample": facts.bytes_per_sample / 1e6,
            "max_samples": cfg.max_samples,
            "clip_percentile": cfg.clip_percentile,
            "error": "accumulated" + (" and isolated" if cfg.isolated else ""),
            "graph_optimization": "ORT_ENABLE_ALL",
            "auto_excluded": [{"node": n, "reason": r} for n, r in facts.auto_excluded.items()],
            # the quantized graph's opset and Q/DQ domain (ORT's com.microsoft ops for 4-bit below opset 21)
            **{k: v for k, v in facts.quantizer.items() if k != "notes"},
            # what qaudit changed in the graph before quantizing it; only present when it did
            **({"graph_changes": [c.as_dict() for c in facts.graph_changes]} if facts.graph_changes else {}),
        },
        data={
            "calib": data["calib"],
            "eval": data["eval"],
            "eval_is_calib": cfg.eval is None,
            "n_calib": facts.n_calib,
            "n_eval": facts.n_eval,
            "labels": data.get("labels") or describe_labels(cfg.labels),
            "batch_axes": data.get("batch_axes"),
            "label_output": facts.label_output,
            # image and WAV folders, loader scripts: where the data came from and how it was read
            **{k: data[k] for k in ("sources", "preprocess", "class_names") if k in data},
        },
        folding={
            "folded": [{"layer": r.layer, "op_type": r.op_type, "bn": r.bn_node} for r in fold.folded.values()],
            "skipped": [{"bn": s.bn_node, "reason": s.reason} for s in fold.skipped],
            "check": facts.fold_check,
            "check_samples": facts.fold_check_samples,
            "rtol": cfg.fold_rtol,
            "atol": cfg.fold_atol,
        },
        layers=rows,
        outputs=outputs,
        unmatched=tuple(matching.unmatched),
        notes=quantized_notes(facts.quantized)
        + notes(cfg, lm, matching, facts.graph_changes, facts.plain_outputs)
        + tuple(facts.quantizer.get("notes", ()))
        + batch_notes(cfg, facts, data.get("batch_axes")),
    )


def quantized_notes(given: dict | None) -> tuple[str, ...]:
    """Where the quantized model came from (--quantized), and the options that did not apply to it."""
    if not given:
        return ()
    m, s = given["model"], given["settings"]
    out = [
        f"the quantized model is the user's, not qaudit's: {m['path']} (sha256 {m['sha256'][:12]}"
        + (f", made by {m['producer']}" if m["producer"] else "")
        + f"); qaudit did not calibrate or quantize it. Read from its graph: {s['format'].upper()}, activations "
        f"{s['activation_type'] or 'none'}, weights {s['weight_type'] or 'none'}"
        + ("" if s["per_channel"] is None else (" per-channel" if s["per_channel"] else " per-tensor"))
        + "; the calibration method and its settings are not recorded in a model (null in settings)"
    ]
    if given["unused"]:
        flags = ", ".join("--" + u.replace("_", "-") for u in given["unused"])
        out.append(f"not used with --quantized (the quantized model is audited as it is): {flags}")
    return tuple(out)


def batch_notes(cfg: AuditConfig, facts: RunFacts, layout: dict | None) -> tuple[str, ...]:
    """How the data was fed, when some input is not batched on axis 0 or the model overrode --batch-size."""
    out = []
    if layout and not all(a == 0 for a in layout["axes"].values()):
        parts = [f"{n}: {'none (fed as it is)' if a is None else f'axis {a}'}" for n, a in layout["axes"].items()]
        out.append(f"batch axes ({layout['rule']}): {', '.join(parts)}; change them with --batch-axis NAME=AXIS")
    if cfg.batch_size is not None and cfg.batch_size != facts.batch_size:
        out.append(f"--batch-size {cfg.batch_size} not used: the model fixes the batch at {facts.batch_size}")
    return tuple(out)
