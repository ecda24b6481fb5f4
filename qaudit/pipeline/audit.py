"""The audit: ``audit(config) -> Report``, the only place that knows the order of the stages.

    load and check -> inline Ifs, upgrade the opset, normalize, fold BN -> probe -> calibrate (+ check the fold) -> quantize
    -> match twins -> capture fp32 + quantized -> measure -> Report

Each stage lives in its own module of :mod:`qaudit.pipeline`; this one only
orders them and hands each the previous one's results. All intermediate models
live in a temporary directory that is removed on exit, whatever happens. The
user's model file is only read. The optional ``output_model`` is written last,
atomically (temporary file + rename), so a failed audit leaves nothing
half-written. Progress is reported to the caller's ``progress``, which the
caller owns: the audit never stops it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import onnx

from qaudit.errors import ConfigError, OutputError
from qaudit.options import SIXTEEN_BIT_OPSET, AuditConfig, QuantConfig
from qaudit.output import atomic_path
from qaudit.pipeline import kernels
from qaudit.pipeline.assemble import PhaseClock, RunFacts, build_report
from qaudit.pipeline.capture import Captured, QuantizedSide, capture_many
from qaudit.pipeline.controlflow import CONTROL_FLOW_OPS, every_sample, resolve_control_flow
from qaudit.pipeline.data import open_inputs
from qaudit.pipeline.foldcheck import FOLD_CHECK_SAMPLES, FoldingCheck
from qaudit.pipeline.load import LoadedModel, infer_shapes
from qaudit.pipeline.match import match, unapplied_activations
from qaudit.pipeline.measure import layer_rows, output_kinds
from qaudit.pipeline.overrides import mark_overrides
from qaudit.pipeline.overrides import resolve as resolve_overrides
from qaudit.pipeline.parallel import auto_batch_size, release_free_memory
from qaudit.pipeline.prequant import (
    align,
    check_layers,
    converted_opset,
    detected_settings,
    given_facts,
    kept_batchnorms,
    load_quantized,
    renamed,
)
from qaudit.pipeline.quantize import (
    calibrate_many,
    nonfinite_exclusions,
    probe_activations,
    quantize,
    quantizer_changes,
)
from qaudit.pipeline.runtimes import parse as parse_runtimes
from qaudit.pipeline.runtimes import section as runtime_section
from qaudit.pipeline.session import load_light, make_session, save_model
from qaudit.pipeline.transform import (
    PER_CHANNEL_QDQ_OPSET,
    FoldResult,
    GraphChange,
    fold_batchnorm,
    normalize,
    upgrade_opset,
)
from qaudit.report import Report
from qaudit.runs import MultiReport, output_path


class Progress(Protocol):
    """What :func:`audit` reports progress to (the CLI passes rich progress bars).

    The caller owns it: :func:`audit` announces stages and advances them, and
    never stops it, so one progress object can follow several audits.
    """

    def stage(self, description: str, total: int | None) -> None: ...
    def advance(self, n: int) -> None: ...


class NullProgress:
    def stage(self, description, total):
        pass

    def advance(self, n):
        pass


@dataclass
class Prepared:
    """The graph the audit folds and quantizes (stage 2), for callers that need the same one."""

    model: onnx.ModelProto  # the user's graph, normalized: named nodes, Constant nodes as initializers
    n_constants: int  # Constant nodes turned into initializers
    fold: FoldResult  # the BN-folded graph, with what was folded and skipped
    changes: list[GraphChange] = field(default_factory=list)  # Ifs inlined, opset upgraded, initializers unshared
    #: the user's graph as loaded, when an If was inlined or the opset upgraded: the reference
    #: the prepared graph's outputs are checked against (``None``: ``model`` is the reference)
    reference: onnx.ModelProto | None = None

    def rewrites(self) -> str | None:
        """What rewrote the computation before folding, for the check's messages, or ``None``."""
        parts = [
            f"inlining If '{c.target}'" if c.kind == "inline_if" else "the opset upgrade"
            for c in self.changes
            if c.kind in ("inline_if", "opset_upgrade")
        ]
        return " and ".join(parts) or None


def prepare(
    lm: LoadedModel, exclude=(), quant: QuantConfig | None = None, feeds=None, keep_bn=None, opset=None
) -> Prepared:
    """Prepare ``lm.model`` (in place) for quantization and fold its BatchNorms: the audit's second stage.

    Inlines the top-level Ifs whose condition is constant over ``feeds()`` (an iterator
    of every sample's feeds; :mod:`qaudit.pipeline.controlflow`), upgrades the opset when
    ``quant`` needs it (:func:`opset_needed`: per-channel QDQ needs opset 13, 16-bit types 21)
    or to ``opset`` (a model quantized elsewhere whose nodes were converted to it),
    then normalizes (:func:`~qaudit.pipeline.transform.normalize`) and folds.
    ``keep_bn(normalized model)``: the BatchNormalization nodes not to fold (a model
    quantized elsewhere that kept them, :func:`~qaudit.pipeline.prequant.kept_batchnorms`).
    :mod:`qaudit.comparison` and the tests use it to get exactly the graph the audit measures.
    """
    target, why = opset_needed(quant)
    upgrade = lm.opset < target
    if opset is not None and opset > max(lm.opset, target):
        upgrade, target = True, opset
        why = f"pairing its nodes with the quantized model's (--quantized, converted the same way to opset {opset})"
    reference = None  # a copy only when the graph may be rewritten (a big model is not copied for nothing)
    if upgrade or any(n.op_type in CONTROL_FLOW_OPS for n in lm.model.graph.node):
        reference = onnx.ModelProto()
        reference.CopyFrom(lm.model)
    changes = resolve_control_flow(lm.model, feeds, lm.path)
    if upgrade:
        lm.model = upgrade_opset(lm.model, lm.opset, target, why, lm.path)
        changes.append(
            GraphChange(
                "opset_upgrade",
                str(lm.path),
                f"opset upgraded from {lm.opset} to {target} with onnx.version_converter: {why} "
                f"needs opset >= {target}",
            )
        )
    if changes:  # new nodes and tensors: type them as the loaded model was
        lm.model, lm.shape_inference, untyped = infer_shapes(lm.model, lm.path)
        lm.untyped = tuple(untyped)
    n_constants, unshared = normalize(lm.model, exclude)
    rewritten = reference if changes else None
    keep = keep_bn(lm.model) if keep_bn is not None else ()
    return Prepared(lm.model, n_constants, fold_batchnorm(lm.model, keep), changes + unshared, rewritten)


def check_fold(folded_path: Path, check: FoldingCheck, batches, progress: Progress) -> None:
    """Run the folded model on ``batches`` for ``check`` (the audit of a model quantized elsewhere
    has no calibration pass to observe)."""
    from qaudit.pipeline.data import samples
    from qaudit.pipeline.session import PREPARED_AT_FAULT, run_named

    session = make_session(folded_path, what="the BN-folded model", advice=PREPARED_AT_FAULT)
    for feeds in batches:
        check.observe(feeds, run_named(session, feeds))
        progress.advance(samples(feeds))


def opset_needed(quant: QuantConfig | None) -> tuple[int, str]:
    """The lowest opset the quantized graph needs for ``quant``, and why (``(0, "")``: any).

    16-bit types: QuantizeLinear/DequantizeLinear take 16-bit integers from opset 21;
    ONNX Runtime's ``quantize_static`` would raise the opset itself
    (``quant_utils.update_opset_version``, onnxruntime 1.32) on a copy qaudit could not
    check, so qaudit upgrades first and checks the upgraded graph's outputs. 4-bit
    weights below opset 21 get ORT's ``com.microsoft`` Q/DQ ops instead
    (:func:`qaudit.pipeline.quantize.quantizer_changes` reports it).
    """
    if quant is None or quant.format != "qdq":
        return 0, ""
    if quant.sixteen_bit:
        types = sorted({t for t in quant.types_used() if "16" in t})
        return SIXTEEN_BIT_OPSET, f"{' and '.join(types)} quantization (16-bit QuantizeLinear/DequantizeLinear)"
    if quant.per_channel:
        return PER_CHANNEL_QDQ_OPSET, "--per-channel with the QDQ format (DequantizeLinear with an axis)"
    if any(s.get("per_channel") for t in (quant.overrides or {}).values() for s in t.values()):
        return PER_CHANNEL_QDQ_OPSET, "a per-channel override with the QDQ format (DequantizeLinear with an axis)"
    return 0, ""


@dataclass
class Context:
    """What the audit decided before quantizing: every run and every calibration trial
    (qaudit.pipeline.trials) is quantized, captured and measured from it."""

    cfg: AuditConfig
    src: object  # qaudit.pipeline.data.Inputs
    prep: Prepared
    fold: FoldResult
    given: object  # prequant's given model (--quantized), or None
    folded_path: Path
    work: Path
    outputs: object  # measure.OutputKinds
    tensor_overrides: dict
    overridden: dict
    auto_excluded: dict[str, str]
    bad: dict  # tensors holding NaN/Inf: {tensor: (finite min, finite max)}
    batch_size: int
    bytes_per_sample: int
    tensor_bytes: dict[str, int]
    fold_check: dict
    check_samples: int
    runtimes: tuple = ()  # qaudit.pipeline.runtimes: the first feeds the main table; () = ORT's default


@dataclass
class Run:
    """One quantized model of the audit: a run (calibration method) or a calibration trial."""

    cfg: AuditConfig  # its settings (a run's quantization, a trial's data)
    qmodel: onnx.ModelProto
    q_path: Path | None
    work: Path
    matching: object  # match.Matching
    quantizer: dict
    auto_excluded: dict[str, str]
    n_calib: int


def quantized_run(ctx: Context, run_cfg: AuditConfig, ranges, run_work: Path, clock: PhaseClock, **kw) -> Run:
    """Quantize ``ctx``'s folded graph with ``ranges`` (or take the given model) and pair its twins.
    ``kw``: ``auto_excluded`` and ``n_calib`` of a calibration trial (default: the audit's)."""
    fold, given = ctx.fold, ctx.given
    auto_excluded = kw.get("auto_excluded", ctx.auto_excluded)
    if given is None:
        release_free_memory()  # ORT's quantizer copies every weight a few times: give it the pages calibration freed
        q_path = quantize(
            ctx.folded_path,
            ranges,
            run_cfg.quant,
            run_work / "quantized.onnx",
            run_work,
            also_exclude=auto_excluded,
            tensor_overrides=ctx.tensor_overrides,
        )
        qmodel = onnx.load(str(q_path))
        quantizer = quantizer_changes(fold.model, qmodel)
        if getattr(ranges, "notes", ()):  # the calibration's own (Entropy's grown histograms)
            quantizer = {**quantizer, "notes": [*quantizer.get("notes", ()), *ranges.notes]}
        fmt = run_cfg.quant.format
    else:  # the user's model, its tensors named as the fp32 graph's where they pair (qaudit.pipeline.prequant)
        qmodel, _ = renamed(fold.model, given.model)
        check_layers(fold.model, qmodel, align(fold.model, given.model), ctx.cfg.model, run_cfg.quantized)
        fmt = detected_settings(qmodel)["format"]
        q_path, quantizer = None, {}  # capture saves the renamed model for its plain session
    clock.lap("quantize")
    # 5. pair every fp32 tensor with its quantized twin
    excluded = {n: "producer excluded from quantization (--exclude); computed in float" for n in run_cfg.quant.exclude}
    if given is not None:
        excluded = {}
    matching = match(fold.model, qmodel, {**excluded, **auto_excluded}, fmt)
    unapplied = unapplied_activations(fold.model, qmodel, matching)
    if unapplied:
        quantizer = {**quantizer, "notes": [*quantizer.get("notes", ()), *unapplied]}
    clock.lap("match")
    return Run(
        run_cfg, qmodel, q_path, run_work, matching, quantizer, auto_excluded, kw.get("n_calib", ctx.src.n_calib)
    )


def capture_runs(ctx: Context, runs: list[Run], on_batch=None) -> list[Captured]:
    """Capture every run on one pass over the evaluation data: the fp32 graph runs once per batch
    for the runs that pair the same fp32 tensors (all of them, unless their exclusions differ: one
    pass per set of paired tensors then). The captures are in the order of ``runs``."""
    cfg, src = ctx.cfg, ctx.src
    groups: dict[frozenset, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(frozenset(r.matching.twins), []).append(i)
    captures: dict[int, Captured] = {}
    if cfg.ray_address is not None:  # each run's batches sharded as Ray tasks, their meters merged
        from qaudit.distributed import sharded_capture

        n_batches = -(-src.n_eval // ctx.batch_size)
        for i, r in enumerate(runs):
            captures[i] = sharded_capture(
                cfg.ray_address, ctx.fold.model, r.qmodel, r.matching,
                src.evaluation.batches(ctx.batch_size, cfg.max_samples), r.work, n_batches=n_batches,
                labels=src.labels, on_batch=on_batch if i == 0 else None, outputs=ctx.outputs,
                isolated=cfg.isolated, tensor_bytes=ctx.tensor_bytes, model_name=f"model {cfg.model}",
                shared_dir=cfg.ray_shared_dir,
            )  # fmt: skip
        return [captures[i] for i in range(len(runs))]
    for g, members in enumerate(groups.values()):
        got = capture_many(
            ctx.fold.model,
            [QuantizedSide(runs[i].qmodel, runs[i].matching, runs[i].work, runs[i].q_path) for i in members],
            src.evaluation.batches(ctx.batch_size, cfg.max_samples),
            # the fp32 graph's instrumented copy beside the folded model, whose external data it refers to;
            # one file per pass (trials may run in parallel processes)
            ctx.folded_path.parent,
            labels=src.labels,
            outputs=ctx.outputs,
            isolated=cfg.isolated,
            tensor_bytes=ctx.tensor_bytes,
            on_batch=on_batch if g == 0 else None,
            model_name=f"model {cfg.model}",
            runtimes=ctx.runtimes or None,
            fp32_file=f"folded_instrumented.{runs[members[0]].work.name}.onnx",
        )
        captures.update(zip(members, got))
    return [captures[i] for i in range(len(runs))]


def run_report(ctx: Context, run: Run, captured, clock: PhaseClock) -> Report:
    """6. measure every row of a captured run and assemble its report."""
    fold, cfg = ctx.fold, ctx.cfg
    rows = layer_rows(
        fold.model, run.qmodel, run.matching, fold.folded, captured.meter, cfg.clip_percentile, ctx.folded_path.parent
    )  # the folder of the folded model's external data
    rows = mark_overrides(rows, ctx.overridden, fold.model)
    clock.lap("measure")
    facts = RunFacts(
        ctx.prep.n_constants, ctx.batch_size, ctx.bytes_per_sample, run.auto_excluded, run.n_calib, captured.samples
    )
    facts.fold_check, facts.fold_check_samples = ctx.fold_check, ctx.check_samples
    facts.graph_changes = ctx.prep.changes
    facts.quantizer = run.quantizer
    facts.label_output = ctx.outputs.label_output
    facts.plain_outputs = captured.plain_outputs
    facts.ray = captured.ray
    if ctx.given is not None:
        facts.quantized = given_facts(ctx.given, run.qmodel, cfg)
    src = ctx.src
    report = build_report(
        run.cfg, src.model, fold, run.matching, facts, rows, captured.outputs.rows(), clock, src.describe()
    )
    if captured.runtimes is not None:
        report = dataclasses.replace(report, runtimes=runtime_section(captured, report, ctx.runtimes))
    return report


def audit(
    cfg: AuditConfig,
    progress: Progress | None = None,
    output_models: dict | None = None,
    trial_executor=None,
    record: dict | None = None,
) -> Report | MultiReport:
    """Audit the post-training quantization of ``cfg.model`` (see docs/how-it-works.md).

    With several calibration methods (``cfg.runs``) the fp32 side (load, prepare, fold,
    probe, the fold check) and the calibration pass are done once, then each method's
    run is quantized, matched, captured and measured: a :class:`~qaudit.runs.MultiReport`.
    ``cfg.output_model`` is then the first run's model, or one file per run with
    ``{run}`` in its name; ``output_models`` (run name -> path, the CLI's staged files)
    replaces it. ``cfg.trials``: the calibration trials' statistics join the report (``trials``,
    :mod:`qaudit.pipeline.trials`; ``trial_executor`` runs them, default: on this machine,
    sharing the main run's fp32 pass).

    ``record`` (:mod:`qaudit.remedy`, which searches changes on the same graph and ranges):
    its ``"calibrate"`` (QuantConfigs) are calibrated on the same pass, their ranges put in
    ``"extra_ranges"``; the first run's prepared graph, ranges and quantize arguments are put in
    ``"folded"``, ``"ranges"``, ``"tensor_overrides"``, ``"also_exclude"``, ``"outputs"``, ``"batch_size"``
    and ``"nonfinite"`` (the tensors holding NaN/Inf)."""
    progress, clock = progress or NullProgress(), PhaseClock()
    kernels.name()  # a bad QAUDIT_KERNELS fails here, not on a worker thread
    runtimes = parse_runtimes(cfg.runtimes)  # an unknown or missing runtime fails before any work
    if cfg.ray_shared_dir is not None and cfg.ray_address is None:
        raise ConfigError(
            f"--ray-shared-dir {cfg.ray_shared_dir} is where Ray workers read the models and data: give "
            "--ray-address too, or drop --ray-shared-dir"
        )
    if cfg.ray_address is not None:  # no Ray, or no cluster there, or a bad shared folder: one line before any work
        from qaudit.distributed import check_shared_dir, connect

        if cfg.ray_shared_dir is not None:
            check_shared_dir(cfg.ray_shared_dir)
        connect(cfg.ray_address)
        if len(runtimes) > 1:
            raise ConfigError(
                "--ray-address shards the capture in one runtime: give one --runtimes entry with it, "
                "or audit the runtimes on one machine"
            )
    # 1. load and check the model, the data and the labels
    src = open_inputs(cfg)
    if cfg.trials:  # subsets that cannot be drawn (too few files) fail before any model runs
        from qaudit.pipeline.trials import trial_plan

        trial_plan(cfg, src.calib)
    outputs = output_kinds(src.model.model, cfg.class_outputs, cfg.label_output, labelled=src.labels is not None)
    clock.lap("load")
    # 2. prepare the graph (control flow, opset, shared initializers) and fold BatchNorm into the layers
    given = load_quantized(cfg.quantized, src.model) if cfg.quantized is not None else None
    if given is not None:  # fold only the BNs the quantized graph folded, check nothing else
        keep = functools.partial(kept_batchnorms, qmodel=given.model)
        opset = converted_opset(src.model, given)
        prep = prepare(src.model, (), None, every_sample(src, cfg.max_samples), keep_bn=keep, opset=opset)
    else:
        prep = prepare(src.model, cfg.quant.exclude, cfg.quant, every_sample(src, cfg.max_samples))
    model, fold = prep.model, prep.fold
    clock.lap("fold")
    with tempfile.TemporaryDirectory(prefix="qaudit-") as tmp:
        work = Path(tmp)
        # A big model's weights go to files here once; fold.model and model then only refer to them
        # (session.save_model), and every session and variant is made from those files.
        folded_path = save_model(fold.model, work / "folded.onnx")
        normalized_path = save_model(model, work / "normalized.onnx")
        fold.model = load_light(folded_path)
        src.model.model = prep.model = model = load_light(normalized_path)
        # fail fast, naming the user's model, if ORT cannot run it at all; the reference of the fold check
        # (the user's model as loaded when qaudit rewrote its graph: an If inlined, the opset upgraded)
        reference = normalized_path if prep.reference is None else save_model(prep.reference, work / "reference.onnx")
        original = make_session(reference, optimize=False, what=f"model {cfg.model}")
        if not fold.folded and not prep.rewrites():
            original = None  # nothing to check: every session holds its own copy of the weights
        # the per-tensor overrides on the graph ORT quantizes: a glob matching nothing fails before calibration
        tensor_overrides, overridden = resolve_overrides(cfg.quant.overrides, fold.model, cfg.quant)
        # 3. probe one sample: non-finite tensors stay in float (calibration finds later ones); size sets the batch
        bad, bytes_per_sample, tensor_bytes = probe_activations(folded_path, src.first_batch())
        fixed = src.calib.fixed_batch()  # the model's, which a --batch-size cannot change
        batch_size = fixed or cfg.batch_size or auto_batch_size(bytes_per_sample, fixed, cfg.isolated, len(runtimes))
        clock.lap("probe")
        # 4. calibrate (checking the fold on the same pass) and quantize
        check, rewrites = None, prep.rewrites()
        if rewrites:  # an If taking another branch on batches (a condition on the batch size) shows here
            what = rewrites + (" and BatchNormalization folding" if fold.folded else "")
            advice = "please report this model to qaudit"
            if "inlining" in rewrites:
                advice = (
                    f"the If conditions were evaluated one sample at a time and the audit runs batches of "
                    f"{batch_size}: try --batch-size 1, or {advice}"
                )
            check = FoldingCheck(original, src.model.output_names, FOLD_CHECK_SAMPLES, what, advice)
        elif fold.folded:
            check = FoldingCheck(original, src.model.output_names, FOLD_CHECK_SAMPLES)
        checking = " and checking the prepared graph" if rewrites else " and checking BN folding"
        quants = cfg.runs or (cfg.quant,)  # several calibration methods: one run each (qaudit.runs)
        if given is None:
            progress.stage("calibrating" + (checking if check else ""), src.n_calib)
            batches = src.calib.batches(batch_size, cfg.max_samples)
            observe = check.observe if check else None
            extra = tuple(record.get("calibrate", ())) if record is not None else ()
            all_ranges = calibrate_many(  # one pass for every run's method
                folded_path,
                batches,
                tuple(quants) + extra,
                work,
                progress.advance,
                set(bad),
                observe,
                nonfinite=bad,
                on_stage=progress.stage,
            )
            if record is not None:
                record["extra_ranges"], all_ranges = all_ranges[len(quants) :], all_ranges[: len(quants)]
            auto_excluded = nonfinite_exclusions(fold.model, bad)  # the probe's and calibration's finds
        else:  # nothing to calibrate: the fold check runs on the first evaluation batches
            if check is not None:
                progress.stage(checking.removeprefix(" and "), min(src.n_eval, FOLD_CHECK_SAMPLES))
                check_fold(folded_path, check, src.evaluation.batches(batch_size, FOLD_CHECK_SAMPLES), progress)
            auto_excluded, all_ranges = {}, [None]
        del original  # every session holds its own memory: free it before the next stage
        fold_check = check.result(cfg.fold_rtol, cfg.fold_atol) if check else {}
        clock.lap("calibrate")
        ctx = Context(
            cfg, src, prep, fold, given, folded_path, work, outputs, tensor_overrides, overridden,
            auto_excluded, bad, batch_size, bytes_per_sample, tensor_bytes, fold_check,
            check.samples if check else 0, tuple(runtimes),
        )  # fmt: skip
        shared = copy.deepcopy(clock)  # each run's phases: the shared ones, then its own
        runs: list[tuple[str, Report, Path | None]] = []
        staged = []  # each run quantized and matched, then every run captured on one pass (capture_runs)
        for i, (quant, ranges) in enumerate(zip(quants, all_ranges, strict=True)):
            run_cfg, run_work = cfg, work
            if cfg.runs:
                run_cfg, run_work = cfg.replace(quant=quant, runs=()), work / f"run{i}"
                run_work.mkdir()
                clock = copy.deepcopy(shared) if i else clock
                clock._t = time.perf_counter()
            run = quantized_run(ctx, run_cfg, ranges, run_work, clock)
            if record is not None and i == 0 and given is None:  # qaudit.remedy searches from here
                record.update(folded=onnx.load(str(folded_path)), ranges=ranges, tensor_overrides=tensor_overrides)
                record.update(also_exclude=dict(auto_excluded), outputs=outputs, batch_size=batch_size)
                record.update(nonfinite=dict(bad))
            if cfg.trials:  # the calibration trials, measured on the main run's pass (qaudit.pipeline.trials)
                from qaudit.pipeline.trials import run_trials

                run_ctx = ctx if not cfg.runs else replace(ctx, cfg=run_cfg, work=run_work)
                runs.append(
                    (
                        quant.calibrate_method,
                        run_trials(run_ctx, run, clock, progress, executor=trial_executor),
                        run.q_path,
                    )
                )
            else:
                staged.append((quant.calibrate_method, run, clock))
        if staged:  # every run captured on one pass over the evaluation data (capture_runs)
            progress.stage("capturing fp32 + quantized" + (f" ({len(staged)} runs)" if cfg.runs else ""), src.n_eval)
            start = time.perf_counter()
            captures = capture_runs(ctx, [run for _, run, _ in staged], progress.advance)
            for (name, run, clock), captured in zip(staged, captures, strict=True):
                clock._t = start  # the pass is every run's capture time
                clock.lap("capture")
                clock._t = time.perf_counter()
                runs.append((name, run_report(ctx, run, captured, clock), run.q_path))
        # 7. the shipped artifacts, written last and atomically: the first run's, or one per run ({run})
        for i, (name, _, q_path) in enumerate(runs):
            if output_models is not None:
                target = output_models.get(name)
            elif cfg.output_model is not None:
                target = output_path(cfg.output_model, name, i == 0)
            else:
                target = None
            if target is None:
                continue
            try:
                with atomic_path(target) as tmp_out:
                    shutil.copyfile(q_path, tmp_out)
            except OSError as e:  # a full disk, a size limit: a user's problem, and no half-written model
                reason = e.strerror or str(e)
                raise OutputError(f"cannot write {target}: {reason}", target, reason) from e
    if cfg.runs:
        return MultiReport(tuple((name, report) for name, report, _ in runs))
    return runs[0][1]


__all__ = [
    "Context",
    "NullProgress",
    "Prepared",
    "Progress",
    "Run",
    "audit",
    "capture_runs",
    "prepare",
    "quantized_run",
    "run_report",
]
