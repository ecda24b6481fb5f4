"""The library API: ``audit(config) -> Report``.

This is the only module that knows the order of the stages:

    load -> transform (normalize, fold BN, check equivalence) -> quantize
    (calibrate, quantize_static) -> capture + match -> measure -> Report

All intermediate models live in a temporary directory that is removed on
exit, whatever happens. The user's model file is only read. The optional
``output_model`` is written last, atomically (temporary file + rename), so a
failed audit leaves nothing half-written.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from qaudit import __version__
from qaudit.errors import ConfigError, FoldingError, QauditError
from qaudit.options import AuditConfig
from qaudit.output import atomic_path
from qaudit.pipeline import kernels
from qaudit.pipeline.capture import isolated_model
from qaudit.pipeline.data import Dataset, load_labels
from qaudit.pipeline.foldcheck import OutputDeviation
from qaudit.pipeline.graph import with_outputs
from qaudit.pipeline.load import load_model
from qaudit.pipeline.match import match
from qaudit.pipeline.measure import ActivationMeter, OutputMeter, layer_rows, softmax_outputs
from qaudit.pipeline.parallel import lockstep, shares, usable_cores
from qaudit.pipeline.quantize import calibrate, probe_activations, quantize
from qaudit.pipeline.session import make_session, run_named, save_model
from qaudit.pipeline.transform import constants_to_initializers, ensure_node_names, fold_batchnorm
from qaudit.report import Report, UnmatchedTensor


class Progress(Protocol):
    """What :func:`audit` reports progress to (the CLI passes rich progress bars)."""

    def stage(self, description: str, total: int | None) -> None: ...
    def advance(self, n: int) -> None: ...
    def done(self) -> None: ...


class NullProgress:
    def stage(self, description, total):
        pass

    def advance(self, n):
        pass

    def done(self):
        pass


#: Bytes of float activations one batch may hold when the batch size is automatic.
#: Calibration keeps every activation of up to two batches (ORT's calibrator
#: histograms one while the session runs the next) and the capture holds the fp32,
#: quantized and isolated tensors of up to two batches, so peak memory is a small
#: multiple of this plus the model, whatever N is. Measured on PP-OCRv4 det at
#: 320x320 (177 MB of activations per sample), batch 1: peak RSS 0.88 GB at
#: N = 128, 0.93 GB at N = 512 (onnxruntime 1.32; README "Performance").
ACTIVATION_BUDGET = 256 * 1024 * 1024
#: calibration samples on which the BN-folded model is compared with the original
FOLD_CHECK_SAMPLES = 64
MAX_AUTO_BATCH = 64


def auto_batch_size(bytes_per_sample: int, fixed: int | None) -> int:
    """The largest batch (1..64) whose activations fit ACTIVATION_BUDGET; a fixed batch dim wins."""
    if fixed:
        return fixed
    return int(max(1, min(MAX_AUTO_BATCH, ACTIVATION_BUDGET // max(1, bytes_per_sample))))


def _versions() -> dict:
    import onnxruntime

    return {
        "qaudit": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        # which per-value loops ran: "c" or "numpy" (qaudit/kernels.py); the same
        # statistics, sums of squares equal to ~1e-7 relative
        "kernels": kernels.name(),
    }


def audit(cfg: AuditConfig, progress: Progress | None = None) -> Report:
    """Audit the post-training quantization of ``cfg.model``; see the README."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    clock = _PhaseClock()
    kernels.name()  # a bad QAUDIT_KERNELS fails here, not on a worker thread
    if cfg.output_model is not None and cfg.output_model.resolve() == cfg.model.resolve():
        raise ConfigError("--output-model must not be the input model: qaudit never modifies the user's model")

    # 1. load and check ------------------------------------------------------
    lm = load_model(cfg.model)
    calib = Dataset(cfg.calib, lm.inputs, "calibration")
    n_calib = calib.count(cfg.max_samples)
    evaluation = Dataset(cfg.eval, lm.inputs, "evaluation") if cfg.eval else calib
    n_eval = evaluation.count(cfg.max_samples)
    labels = load_labels(cfg.labels, n_eval, exact=cfg.max_samples is None) if cfg.labels else None
    clock.lap("load")

    # 2. normalize and fold --------------------------------------------------
    model = lm.model
    ensure_node_names(model)
    n_constants = constants_to_initializers(model)
    unknown = sorted(set(cfg.quant.exclude) - {n.name for n in model.graph.node})
    if unknown:
        raise ConfigError(
            f"--exclude names no node of the model: {', '.join(unknown)} "
            f"(node names look like: {', '.join(n.name for n in model.graph.node[:3])}, ...)"
        )
    fold = fold_batchnorm(model)
    clock.lap("fold")
    notes = []
    if lm.untyped:
        notes.append(
            f"{len(lm.untyped)} tensor(s) have no type after shape inference ({', '.join(lm.untyped[:3])}...): "
            "ONNX Runtime does not calibrate or quantize them"
        )
    if cfg.eval is None:
        notes.append(
            "no --eval data: metrics are measured on the calibration data, which flatters them; "
            "pass held-out data with --eval"
        )

    with tempfile.TemporaryDirectory(prefix="qaudit-") as tmp:
        work = Path(tmp)
        original_path = save_model(model, work / "normalized.onnx")
        folded_path = save_model(fold.model, work / "folded.onnx")
        # fail fast, naming the user's model, if ORT cannot run it at all; it is the
        # reference of the BN-folding check (both unoptimized: only folding differs)
        original_session = make_session(original_path, optimize=False, what=f"model {cfg.model}")
        # One sample with every float tensor exposed: tensors holding NaN/Inf (a
        # -inf attention mask) cannot be calibrated, so the nodes that read or
        # write them stay in float; the activation size sets the batch size.
        first = next(iter(calib.batches(calib.fixed_batch() or 1, None if calib.fixed_batch() else 1)))
        bad, bytes_per_sample, tensor_bytes = probe_activations(folded_path, first)
        clock.lap("probe")
        batch_size = cfg.batch_size or auto_batch_size(bytes_per_sample, calib.fixed_batch())

        # 3. calibrate (and check BN folding on the same pass), quantize -----
        auto_excluded = _nonfinite_exclusions(fold.model, bad)
        fold_dev = _FoldingCheck(original_session, lm.output_names, FOLD_CHECK_SAMPLES) if fold.folded else None
        progress.stage("calibrating" + (" and checking BN folding" if fold_dev else ""), n_calib)
        ranges = calibrate(
            folded_path,
            calib.batches(batch_size, cfg.max_samples),
            cfg.quant,
            work,
            progress.advance,
            skip=set(bad),
            observe=fold_dev.observe if fold_dev else None,
        )
        del original_session  # every session holds its own memory: free it before the next stage
        fold_check = {}
        if fold_dev:
            fold_dev.session = None
            fold_check = fold_dev.result(cfg)
        clock.lap("calibrate")
        q_path = quantize(folded_path, ranges, cfg.quant, work / "quantized.onnx", work, also_exclude=auto_excluded)
        qmodel = onnx.load(str(q_path))
        clock.lap("quantize")

        # 4. match and capture ----------------------------------------------
        excluded = {n: "producer excluded from quantization (--exclude); computed in float" for n in cfg.quant.exclude}
        excluded.update(auto_excluded)
        matching = match(fold.model, qmodel, excluded, cfg.quant.format)
        if not matching.twins:
            notes.append("ONNX Runtime quantized no activation of this model: there is nothing to compare per layer")
        clock.lap("match")
        progress.stage("capturing fp32 + quantized", n_eval)
        meter, out_meter, seen = _capture(
            fold.model,
            qmodel,
            matching,
            evaluation.batches(batch_size, cfg.max_samples),
            labels,
            cfg,
            work,
            progress,
            tensor_bytes,
        )

        clock.lap("capture")

        # 5. measure ----------------------------------------------------------
        rows = layer_rows(fold.model, qmodel, matching, fold.folded, meter, cfg.clip_percentile)
        clock.lap("measure")
        report = Report(
            meta={
                **_versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": time.perf_counter() - t0,
                "phase_seconds": clock.phases,
            },
            model={
                "path": str(cfg.model),
                "sha256": lm.sha256,
                "opset": lm.opset,
                "producer": f"{lm.model.producer_name} {lm.model.producer_version}".strip(),
                "inputs": [s.describe() for s in lm.inputs],
                "outputs": list(lm.output_names),
                "constants_to_initializers": n_constants,
                "shape_inference": lm.shape_inference,
                "untyped_tensors": list(lm.untyped),
            },
            settings={
                **cfg.quant.as_dict(),
                "batch_size": batch_size,
                "batch_size_auto": cfg.batch_size is None,
                "activation_mb_per_sample": bytes_per_sample / 1e6,
                "max_samples": cfg.max_samples,
                "clip_percentile": cfg.clip_percentile,
                "error": "accumulated" + (" and isolated" if cfg.isolated else ""),
                "graph_optimization": "ORT_ENABLE_ALL",
                "auto_excluded": [{"node": n, "reason": r} for n, r in auto_excluded.items()],
            },
            data={
                "calib": str(cfg.calib),
                "eval": str(cfg.eval) if cfg.eval else None,
                "eval_is_calib": cfg.eval is None,
                "n_calib": n_calib,
                "n_eval": seen,
                "labels": str(cfg.labels) if cfg.labels else None,
            },
            folding={
                "folded": [{"layer": r.layer, "op_type": r.op_type, "bn": r.bn_node} for r in fold.folded.values()],
                "skipped": [{"bn": s.bn_node, "reason": s.reason} for s in fold.skipped],
                "check": fold_check,
                "check_samples": fold_dev.samples if fold_dev else 0,
                "rtol": cfg.fold_rtol,
                "atol": cfg.fold_atol,
            },
            layers=rows,
            outputs=out_meter.rows(),
            unmatched=tuple(
                UnmatchedTensor(u.tensor, u.producer, u.op_type, u.kind, u.reason) for u in matching.unmatched
            ),
            notes=tuple(notes),
        )

        # 6. the shipped artifact, written last and atomically ---------------
        if cfg.output_model is not None:
            with atomic_path(cfg.output_model) as tmp_out:
                shutil.copyfile(q_path, tmp_out)
    progress.done()
    return report


class _PhaseClock:
    """Wall seconds of the audit's stages, in order (the report's ``meta.phase_seconds``)."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self._t, 4)
        self._t = now


class _FoldingCheck:
    """The folded fp32 model must reproduce the original's outputs.

    Observes the calibration pass (which runs the folded model) and runs the
    original model on the same batches, up to :data:`FOLD_CHECK_SAMPLES`
    samples: folding is an exact rewrite of the weights, so a wrong fold shows
    on the first batches, and checking every sample would cost one more
    (unoptimized) fp32 inference per sample, about 1.4x plain fp32 inference
    on PP-OCR det. The report says how many samples were checked.
    """

    def __init__(self, session, output_names, max_samples: int):
        self.session = session
        self.names = list(output_names)
        self.dev = OutputDeviation()
        self.max_samples = max_samples
        self.samples = 0

    def observe(self, feeds, outputs) -> None:
        if self.samples >= self.max_samples:
            return
        ref = run_named(self.session, feeds)
        self.dev.update({k: ref[k] for k in self.names}, {k: outputs[k] for k in self.names})
        self.samples += next(iter(feeds.values())).shape[0]

    def result(self, cfg: AuditConfig) -> dict:
        check = {}
        for out, (diff, scale) in self.dev.result().items():
            check[out] = {"max_abs_diff": diff, "max_abs": scale}
            if diff > cfg.fold_atol + cfg.fold_rtol * scale:
                raise FoldingError(
                    f"BatchNormalization folding changed output '{out}' by {diff:.3g} (max |output| {scale:.3g}, "
                    f"tolerance {cfg.fold_atol:g} + {cfg.fold_rtol:g}*max); please report this model to qaudit"
                )
        return check


def _nonfinite_exclusions(model: onnx.ModelProto, bad: dict) -> dict[str, str]:
    """Nodes that read or write a tensor holding NaN/Inf stay in float, with the reason."""
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


def _capture(fp32_model, qmodel, matching, batches, labels, cfg: AuditConfig, work: Path, progress, tensor_bytes=None):
    """Run the instrumented fp32, quantized and isolated-error graphs in lockstep
    and stream their tensors into the meters; returns (meter, output meter, samples).

    The twins are measured in shares of about equal size, one per usable core,
    each on its own thread (:func:`~qaudit.pipeline.parallel.lockstep`)."""
    vtypes = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(fp32_model.graph.value_info) + list(fp32_model.graph.input)
    }
    fp32_outs = [(n, vtypes.get(n, onnx.TensorProto.FLOAT)) for n in matching.twins]
    q_outs = [
        (tw.quant_name, onnx.TensorProto.INT8 if tw.encoding.dtype == "int8" else onnx.TensorProto.UINT8)
        for tw in matching.twins.values()
    ]
    fp32_session = make_session(
        save_model(with_outputs(fp32_model, fp32_outs), work / "folded_instrumented.onnx"), what=f"model {cfg.model}"
    )
    q_session = make_session(
        save_model(with_outputs(qmodel, q_outs), work / "quantized_instrumented.onnx"), what="the quantized model"
    )
    iso_session, iso_inputs = None, {}
    if cfg.isolated and matching.twins:
        iso_model, iso_inputs = isolated_model(qmodel, matching.twins)
        iso_session = make_session(
            save_model(iso_model, work / "quantized_isolated.onnx"), what="the isolated-error graph"
        )

    sizes = {n: (tensor_bytes or {}).get(n, 1) for n in matching.twins}
    meters = [ActivationMeter(matching, share) for share in shares(sizes, min(2, usable_cores()))] or [
        ActivationMeter(matching)
    ]
    out_meter = OutputMeter([o.name for o in fp32_model.graph.output], softmax_outputs(fp32_model))
    seen = 0

    def run_batch(feeds):
        a = run_named(fp32_session, feeds)
        b = run_named(q_session, feeds)
        c = None
        if iso_session is not None:
            iso_feeds = dict(feeds)
            iso_feeds.update({inp: a[name] for name, inp in iso_inputs.items()})
            c = run_named(iso_session, iso_feeds)
        return a, b, c

    def measurer(meter, first):
        def measure(feeds, outs):
            nonlocal seen
            a, b, c = outs
            meter.update(a, b, c)
            if first:
                n = next(iter(feeds.values())).shape[0]
                out_meter.update(a, b, labels[seen : seen + n] if labels is not None else None)
                seen += n
                progress.advance(n)

        return measure

    lockstep(run_batch, batches, [measurer(m, i == 0) for i, m in enumerate(meters)])
    return ActivationMeter.combine(meters), out_meter, seen


__all__ = ["audit", "AuditConfig", "Report", "Progress", "QauditError"]
