"""The multi-run report: several audits of one model, side by side (``--calibrate-method a,b``).

A :class:`MultiReport` holds named runs, each a whole :class:`~qaudit.report.Report`
(today's report body, with its own settings and its own gate verdict). A
single-method audit still produces a plain :class:`~qaudit.report.Report`
(format 3, unchanged); a multi-run audit writes format 4 (docs/json-format.md)::

    {"format": {"name": "qaudit-report", "version": 4},
     "runs": [{"name": "percentile", <a report's sections: meta, model, settings, ..., gates>}, ...],
     "gates": null | {"passed": bool, "failed_runs": [names]}}

``qaudit fix``'s before/after report adds ``"fix"`` (:mod:`qaudit.remedy.fixreport`): what was
changed and how it was found; its verdict is the ``after`` run's.

Like :mod:`qaudit.report`, this module imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from qaudit.errors import ConfigError
from qaudit.report import Report, ReportFormatError, from_dict, to_dict

#: the format version of a multi-run document (a single report stays at :data:`qaudit.report.FORMAT_VERSION`)
RUNS_FORMAT_VERSION = 4


@dataclass(frozen=True)
class MultiReport:
    """Named runs of one audit, in the order asked for; run names are unique (the calibration method)."""

    runs: tuple[tuple[str, Report], ...]
    format_version: int = RUNS_FORMAT_VERSION
    #: ``qaudit fix``'s section (runs ``before`` and ``after``): what was changed and how it was found
    #: (:func:`qaudit.remedy.fixreport.section`), else None
    fix: dict | None = None

    def __post_init__(self):
        names = [n for n, _ in self.runs]
        if not names:
            raise ValueError("a multi-run report needs at least one run")
        if len(set(names)) != len(names):
            raise ValueError(f"run names must be unique, not {names}")
        if self.fix is not None and "after" not in names:
            raise ValueError("a fix report needs an 'after' run (the verifying audit)")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.runs)

    def run(self, name: str) -> Report:
        return dict(self.runs)[name]

    @property
    def gated(self) -> bool:
        """Whether any run carries a gate verdict."""
        return any(r.gates is not None for _, r in self.runs)

    @property
    def failed_runs(self) -> tuple[str, ...]:
        """The runs whose gates fail, in order."""
        return tuple(n for n, r in self.runs if r.gates is not None and not r.gates.passed)

    @property
    def passed(self) -> bool:
        return not self.failed_runs


def run_name(report: Report) -> str:
    """The name of a run: its calibration method (``"given"`` for a model quantized elsewhere)."""
    return str(report.settings.get("calibrate_method") or "given")


def as_runs(subject) -> MultiReport:
    """``subject`` as runs: a single report (any version) is one run named after its method."""
    if isinstance(subject, MultiReport):
        return subject
    return MultiReport(((run_name(subject), subject),), subject.format_version)


# ------------------------------------------------------------------ JSON


def runs_to_dict(mr: MultiReport) -> dict:
    runs = []
    for name, report in mr.runs:
        body = to_dict(report)
        body.pop("format")
        runs.append({"name": name, **body})
    gates = {"passed": mr.passed, "failed_runs": list(mr.failed_runs)} if mr.gated else None
    out = {"format": {"name": "qaudit-report", "version": RUNS_FORMAT_VERSION}, "runs": runs, "gates": gates}
    if mr.fix is not None:  # only a fix's report: other multi-run documents unchanged
        from qaudit.remedy.fixreport import to_dict as fix_to_dict

        out["fix"] = fix_to_dict(mr.fix, mr.run("after"))
    return out


def runs_to_json(mr: MultiReport, indent: int = 2) -> str:
    from qaudit.report import _INT_ARRAY

    text = json.dumps(runs_to_dict(mr), indent=indent, allow_nan=False)
    # one line per array of integers, as in a single report (qaudit.report.to_json)
    text = _INT_ARRAY.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return text + "\n"


def runs_from_dict(d: dict, strict: bool = False) -> MultiReport:
    """A :class:`MultiReport` from a format-4 document; a :class:`ReportFormatError` naming the field."""
    raw = d.get("runs")
    if not isinstance(raw, list) or not raw:
        raise ReportFormatError("runs must be a non-empty array of runs")
    runs, seen = [], set()
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise ReportFormatError(f"runs[{i}] must be an object")
        name = r.get("name")
        if not isinstance(name, str) or not name:
            raise ReportFormatError(f"runs[{i}].name must be a non-empty string")
        if name in seen:
            raise ReportFormatError(f"runs[{i}].name {name!r} is repeated: run names are unique")
        seen.add(name)
        body = {k: v for k, v in r.items() if k != "name"}
        try:  # a run's body is a format-3 report's
            report = from_dict({**body, "format": {"name": "qaudit-report", "version": 3}}, strict)
        except ReportFormatError as e:
            raise ReportFormatError(f"runs[{i}] ({name}): {e}") from None
        runs.append((name, dataclasses.replace(report, format_version=RUNS_FORMAT_VERSION)))
    fix = None
    if d.get("fix") is not None:
        from qaudit.remedy.fixreport import check

        if "after" not in seen:
            raise ReportFormatError("fix needs a run named 'after' (the verifying audit)")
        try:
            fix = check(d["fix"])
        except ValueError as e:
            raise ReportFormatError(str(e)) from None
    return MultiReport(tuple(runs), fix=fix)


def read(d, strict: bool = False) -> Report | MultiReport:
    """A saved report of any readable version: a :class:`Report` (versions 1-3 and 5) or a :class:`MultiReport` (4)."""
    if isinstance(d, dict) and isinstance(d.get("format"), dict) and d["format"].get("version") == RUNS_FORMAT_VERSION:
        if d["format"].get("name") != "qaudit-report":
            raise ReportFormatError("not a qaudit report (missing format.name == 'qaudit-report')")
        return runs_from_dict(d, strict)
    return from_dict(d, strict)


# ------------------------------------------------------------------ gates


def baseline_of(name: str, baseline: Report | MultiReport | None) -> Report | None:
    """The baseline a run is compared with: a single report serves every run; a multi-run
    baseline gives the run of the same name (its absence is a one-line :class:`ConfigError`)."""
    if baseline is None or isinstance(baseline, Report):
        return baseline
    if name in baseline.names:
        return baseline.run(name)
    raise ConfigError(
        f"the baseline report has no run {name!r} (its runs: {', '.join(baseline.names)}): runs are compared "
        "by name, i.e. by calibration method; give a baseline with that run, or a single-run report"
    )


def evaluate_runs(mr: MultiReport, config, baseline=None, baseline_source: str | None = None) -> MultiReport:
    """Every run gated with the same ``config`` (see :func:`qaudit.gate.evaluate`), each against
    :func:`baseline_of` its name."""
    from qaudit.gate import evaluate

    bases = {name: baseline_of(name, baseline) for name in mr.names}  # every name checked before any gate
    return dataclasses.replace(
        mr,
        runs=tuple(
            (n, dataclasses.replace(r, gates=evaluate(r, config, bases[n], baseline_source))) for n, r in mr.runs
        ),
    )


# ------------------------------------------------------------------ summary


def summary_rows(mr: MultiReport) -> list[dict]:
    """One row per run for the side-by-side tables: method, worst layer, output SQNR, QCE, accuracy drop, verdict;
    with calibration trials also the first run's worst output's SQNR over them (``output_sqnr_trials``) and its
    difference from the first run's, trial by trial on the same subsets (``output_sqnr_paired``, :func:`qaudit.trials.paired`)."""
    from qaudit.trials import lookup, paired

    rows = []
    first = mr.runs[0][1]
    sq0 = [o for o in first.outputs if o.sqnr_db is not None]
    out0 = min(sq0, key=lambda o: o.sqnr_db).name if sq0 else None
    for name, r in mr.runs:
        worst = r.worst_layers(1)
        outs = r.outputs
        sq = [o.sqnr_db for o in outs if o.sqnr_db is not None]
        qce = [o.qce for o in outs if o.qce is not None and math.isfinite(o.qce)]
        drop = [o.acc_drop_pct for o in outs if o.acc_drop_pct is not None]
        rows.append(
            {
                "run": name,
                "method": r.settings.get("calibrate_method"),
                "worst_layer": worst[0].name if worst else None,
                "worst_layer_sqnr_db": worst[0].sqnr_db if worst else None,
                "output_sqnr_db": min(sq) if sq else None,
                "qce": max(qce) if qce else None,
                "acc_drop_pct": max(drop) if drop else None,
                "verdict": None if r.gates is None else ("pass" if r.gates.passed else "fail"),
            }
        )
        if r.trials and out0 is not None:
            rows[-1]["trials_output"] = out0
            rows[-1]["output_sqnr_trials"] = lookup(r.trials, "outputs", out0, "sqnr_db")
            if r is not first:
                rows[-1]["output_sqnr_paired"] = paired(first.trials, r.trials, "outputs", out0, "sqnr_db")
    return rows


def verdict_line(mr: MultiReport) -> str:
    """E.g. ``"gates: FAIL (runs failing: entropy; passing: percentile, minmax)"``."""
    gated = [n for n, r in mr.runs if r.gates is not None]
    failed = mr.failed_runs
    if not failed:
        return f"gates: PASS (every run: {', '.join(gated)})"
    passing = [n for n in gated if n not in failed]
    tail = f"; passing: {', '.join(passing)}" if passing else ""
    return f"gates: FAIL (runs failing: {', '.join(failed)}{tail})"


def output_path(template, name: str, first: bool):
    """The ``--output-model`` file of run ``name``: ``template`` with ``{run}`` replaced, or, without
    the placeholder, ``template`` for the first run only (``None`` for the others)."""
    from pathlib import Path

    text = str(template)
    if "{run}" in text:
        return Path(text.replace("{run}", name))
    return Path(text) if first else None


__all__ = [
    "RUNS_FORMAT_VERSION",
    "MultiReport",
    "as_runs",
    "baseline_of",
    "evaluate_runs",
    "output_path",
    "read",
    "run_name",
    "runs_from_dict",
    "runs_to_dict",
    "runs_to_json",
    "summary_rows",
    "verdict_line",
]
