"""Calibration trials on the pipeline's side: one trial from a subset, and who runs them.

A trial is the audit of the same prepared graph calibrated on a subset of the
calibration files (:func:`qaudit.trials.plan`): :func:`run_trial` takes the
audit's :class:`~qaudit.pipeline.audit.Context` and a subset and returns the
trial's :class:`~qaudit.report.Report`. Everything before calibration (load,
prepare, fold, probe, the fold check, the batch size, the non-finite
exclusions) is the full-data audit's and is not repeated; a trial calibrates
(one pass over its subset), quantizes, captures and measures.

Who runs the trials is pluggable (``executor``):

* :class:`LocalExecutor` (the default) quantizes every trial, then captures the
  main run and every trial on *one* pass over the evaluation data: each batch
  is read once and the fp32 graph runs once per batch; each quantized and
  isolated graph runs on it. Every trial's sessions are alive at once.
* :class:`MapExecutor` hands :func:`run_trial` to any ``map`` (a process pool,
  Ray tasks): each trial then runs its own fp32 pass.

A "file" is what the calibration source yields one at a time: a ``.npy``/``.npz``
file of a directory, a ``test_data_set_*`` folder, or an item of data held in
memory (a feed dict of a list, a ``get_next()`` of a reader); a single ``.npz``
file is one file.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from qaudit.pipeline.assemble import PhaseClock
from qaudit.pipeline.data import Dataset, _FileSource
from qaudit.pipeline.quantize import calibrate_many, nonfinite_exclusions
from qaudit.report import Report
from qaudit.trials import plan, summarize


def files(dataset: Dataset) -> list[str]:
    """The calibration files in reading order (names relative to the data directory), or
    ``item i`` for data held in memory."""
    src = dataset.source
    if isinstance(src, _FileSource):
        base = src.path if src.path.is_dir() else src.path.parent
        return [str(item.path.relative_to(base)) for item in src.items]
    return [f"item {i}" for i, _ in enumerate(src.read(dataset))]


class _Subset:
    """The items ``indices`` of a data source, in its order."""

    def __init__(self, base, indices):
        self.base, self.indices = base, frozenset(indices)
        self.path, self.description = base.path, base.description

    def read(self, dataset):
        for i, item in enumerate(self.base.read(dataset)):
            if i in self.indices:
                yield item


def subset(dataset: Dataset, indices: Sequence[int]) -> Dataset:
    """``dataset`` restricted to the files ``indices`` (a file source lists only those; other
    sources are read and the rest skipped)."""
    out = copy.copy(dataset)
    if isinstance(dataset.source, _FileSource):
        src = copy.copy(dataset.source)
        src.items = [dataset.source.items[i] for i in sorted(indices)]
        out.source = src
    else:
        out.source = _Subset(dataset.source, indices)
    out.n_samples, out._scanned = 0, False
    return out


def prepare_trial(ctx, index: int, indices: Sequence[int], clock: PhaseClock | None = None, progress=None):
    """Calibrate on the files ``indices`` and quantize: the trial's :class:`~qaudit.pipeline.audit.Run`.
    The exclusions are the full-data audit's, plus any tensor this subset finds non-finite."""
    from qaudit.pipeline.audit import quantized_run

    cfg, clock = ctx.cfg, clock or PhaseClock()
    work = ctx.work / f"trial{index}"  # ctx.work: the run's directory
    work.mkdir(exist_ok=True)
    model = _own_copy(ctx.folded_path, work)
    data = subset(ctx.src.calib, indices)
    n_calib = data.count(cfg.max_samples)
    if progress is not None:
        progress.stage(f"calibrating trial {index + 1} ({len(indices)} files)", n_calib)
    bad = dict(ctx.bad)
    batches = data.batches(ctx.batch_size, cfg.max_samples)
    on_batch = progress.advance if progress is not None else None
    ranges = calibrate_many(model, batches, [cfg.quant], work, on_batch, set(bad), nonfinite=bad)[0]
    clock.lap("calibrate")
    excluded = {**ctx.auto_excluded, **nonfinite_exclusions(ctx.fold.model, bad)}
    return quantized_run(
        replace(ctx, folded_path=model), cfg, ranges, work, clock, auto_excluded=excluded, n_calib=n_calib
    )


def _own_copy(model: Path, folder: Path) -> Path:
    """``model`` linked (and its external weights, ``<name>.data``, copied) into ``folder``: ORT's calibrator
    and ``quantize_static`` write ``<model>-inferred.onnx`` beside the model they are given and delete
    it (onnxruntime 1.32, docs/ort-quirks.md), so trials run in parallel on one file would race; onnx
    refuses to load external data through a hard link ("potential hardlink attack"), so that is a copy."""
    out = folder / model.name
    for src in (model, model.with_name(model.name + ".data")):
        dst = folder / src.name
        if src.exists() and not dst.exists():
            try:
                if src == model:
                    os.link(src, dst)
                else:  # onnx refuses external data behind a hard link
                    shutil.copyfile(src, dst)
            except OSError:  # another file system: a copy
                shutil.copyfile(src, dst)
    return out


def run_trial(ctx, index: int, indices: Sequence[int]) -> Report:
    """One trial, whole: calibrate on the files ``indices``, quantize, capture (its own fp32 pass), measure."""
    from qaudit.pipeline.audit import capture_runs, run_report

    clock = PhaseClock()
    run = prepare_trial(ctx, index, indices, clock)
    captured = capture_runs(ctx, [run])[0]
    clock.lap("capture")
    return run_report(ctx, run, captured, clock)


class LocalExecutor:
    """Runs the trials here, one after another, and captures them with the main run on one pass."""

    shares_pass = True

    def run(self, ctx, subsets, main=None, progress=None, clock=None) -> tuple[list[Report], Report | None]:
        """The trials' reports, and the main run's (``main``, a Run; ``None`` if not given)."""
        from qaudit.pipeline.audit import capture_runs, run_report

        runs = []
        for i, indices in enumerate(subsets):
            runs.append(prepare_trial(ctx, i, indices, progress=progress))
        if clock is not None:
            clock.lap("trials")  # the trials' calibrations and quantizations; the shared capture follows
        everything = ([main] if main is not None else []) + runs
        if progress is not None:
            progress.stage(f"capturing fp32 + quantized (main and {len(runs)} trials)", ctx.src.n_eval)
        captured = capture_runs(ctx, everything, progress.advance if progress is not None else None)
        if clock is not None:
            clock.lap("capture")
        main_report = run_report(ctx, main, captured[0], clock or PhaseClock()) if main is not None else None
        trial_captures = captured[1:] if main is not None else captured
        return [run_report(ctx, r, c, PhaseClock()) for r, c in zip(runs, trial_captures, strict=True)], main_report


class MapExecutor:
    """Runs :func:`run_trial` through ``map`` (e.g. ``ProcessPoolExecutor().map``, a Ray map):
    each trial makes its own fp32 pass. The main run is captured on its own."""

    shares_pass = False

    def __init__(self, map_: Callable = map):
        self.map = map_

    def run(self, ctx, subsets, main=None, progress=None, clock=None):
        import functools

        from qaudit.pipeline.audit import capture_runs, run_report

        if progress is not None:
            progress.stage(f"running {len(subsets)} calibration trials", None)
        reports = list(self.map(functools.partial(run_trial, ctx), range(len(subsets)), subsets))
        if clock is not None:
            clock.lap("trials")
        main_report = None
        if main is not None:
            if progress is not None:
                progress.stage("capturing fp32 + quantized", ctx.src.n_eval)
            captured = capture_runs(ctx, [main], progress.advance if progress is not None else None)[0]
            if clock is not None:
                clock.lap("capture")
            main_report = run_report(ctx, main, captured, clock or PhaseClock())
        return reports, main_report


def trial_plan(cfg, calib: Dataset):
    """The subsets of ``cfg``'s trials over the files of ``calib`` (:func:`qaudit.trials.plan`): the audit
    draws them once before any model runs, so that subsets that cannot be drawn are an error at once."""
    return plan(files(calib), cfg.trials, cfg.seed, cfg.trial_fraction)


def run_trials(ctx, main, clock: PhaseClock, progress, executor=None) -> Report:
    """The main run's report with the ``trials`` section: the plan drawn from ``ctx.cfg``'s
    seed over the calibration files, the trials run by ``executor`` (default :class:`LocalExecutor`)."""
    p = trial_plan(ctx.cfg, ctx.src.calib)
    t0 = time.perf_counter()
    reports, report = (executor or LocalExecutor()).run(ctx, p.subsets, main, progress, clock)
    section = summarize(reports, p, round(time.perf_counter() - t0, 4))
    section["fp32_pass"] = "shared" if getattr(executor or LocalExecutor, "shares_pass", False) else "per trial"
    return replace(report, trials=section)


__all__ = ["LocalExecutor", "MapExecutor", "files", "prepare_trial", "run_trial", "run_trials", "subset", "trial_plan"]
