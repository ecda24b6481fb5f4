"""Release gates: thresholds and baseline regressions, evaluated on a :class:`~qaudit.report.Report`.

Pure: no I/O, no onnxruntime. ``evaluate(report, config, baseline)`` returns a
:class:`~qaudit.report.GateResult`; only the CLI turns its verdict into an exit
code. The semantics (docs/gates.md):

* Every gate in :data:`GATES` compares one report metric with a threshold:
  ``min_*`` gates pass when ``measured >= threshold``, ``max_*`` gates when
  ``measured <= threshold``. **Equal to the threshold passes.**
* IEEE comparisons: an SQNR of ``+inf`` (no error at all) passes any minimum
  and fails any maximum; ``-inf`` fails any minimum.
* **Missing metrics**: a metric that is ``null`` or NaN (QCE of a class output
  whose runtime shape has no class axis, accuracy without labels, an SQNR
  without signal) is *missing*. A configured gate on a missing metric **fails** and says why,
  unless ``skip_missing`` is set, which makes it a skipped check. A configured
  gate that finds nothing at all to check fails the same way, so a typo in a
  layer glob cannot make a gate pass silently.
* Layer gates apply to the rows that have the metric at all: activation
  metrics to rows with a quantized activation, ``min_weight_sqnr`` to rows
  with weights. Output gates apply to every model output, except the gates on
  class metrics (:data:`~qaudit.report.CLASS_METRICS`), which apply to the
  class outputs (``kind == "class"``), and accuracy gates, which apply to the
  labelled output (every class output when none is labelled, so that they fail
  as missing). A gate on a class metric when the report has no class output
  is a :class:`~qaudit.errors.ConfigError`: it could check nothing.
* Thresholds are a default plus per-subject overrides keyed by glob
  (:func:`fnmatch.fnmatchcase`, case-sensitive; ``*`` also matches ``/``). The
  most specific matching glob wins: a glob without wildcards equal to the
  name, then the longest glob, then the one with fewer wildcards, then the one
  that sorts first. An override of ``None`` ("off") exempts the subject.
* Regression gates (``kind="regression"``) compare with a baseline report and
  run only when one is given. Layers and outputs are paired by name;
  ``measured`` is the change in the bad direction (an SQNR *drop* is
  ``baseline - current``), equal infinities count as no change. A metric
  missing in the baseline is skipped (nothing to compare with); missing in
  the current report it follows the missing-metric rule. ``acc_drop_pct`` is
  signed; ``max_acc_drop_increase`` counts a negative drop (the quantized model
  scores better than fp32) as 0, so a model whose accuracy rose never fails it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from qaudit.errors import ConfigError
from qaudit.report import CLASS_METRICS, GateCheck, GateResult, LayerRow, OutputRow, Report

WILDCARDS = "*?["


@dataclass(frozen=True)
class GateDef:
    """One kind of gate: which metric, compared how, valid thresholds."""

    name: str
    scope: str  # "layer" | "output"
    metric: str  # field of LayerRow / OutputRow
    comparison: str  # ">=" | "<="
    help: str
    unit: str = ""
    kind: str = "threshold"  # "threshold" | "regression"
    #: regression gates: +1 measures current - baseline (an increase), -1 baseline - current (a drop)
    direction: int = 0
    low: float | None = None  # valid thresholds: [low, high]
    high: float | None = None
    #: threshold when nothing configures the gate (regression gates only)
    default: float | None = None
    #: regression gates: both values are raised to at least this before the change is taken
    floor: float | None = None

    def check_value(self, value) -> float:
        """A valid threshold for this gate as a float, else :class:`ValueError` saying why."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number or 'off', not {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number, not {value!r}")
        if self.low is not None and v < self.low:
            raise ValueError(f"must be >= {self.low:g}, not {value!r}")
        if self.high is not None and v > self.high:
            raise ValueError(f"must be <= {self.high:g}, not {value!r}")
        return v


#: Every gate qaudit knows, in the order checks are reported. Fractions are 0-1
#: like the JSON report's fields; ``acc_drop_pct`` is in percent.
GATES: tuple[GateDef, ...] = (
    GateDef("min_layer_sqnr", "layer", "sqnr_db", ">=", "minimum activation SQNR of each quantized layer", "dB"),
    GateDef("max_layer_qmse", "layer", "qmse", "<=", "maximum activation QMSE of each quantized layer", low=0.0),
    GateDef(
        "max_clip_fraction",
        "layer",
        "clip_fraction",
        "<=",
        "maximum share (0-1) of fp32 values outside the encoding's range, per layer",
        low=0.0,
        high=1.0,
    ),
    GateDef("min_weight_sqnr", "layer", "w_sqnr_db", ">=", "minimum weight SQNR of each weighted layer", "dB"),
    GateDef("min_output_sqnr", "output", "sqnr_db", ">=", "minimum SQNR of each model output", "dB"),
    GateDef("max_output_qmse", "output", "qmse", "<=", "maximum QMSE of each model output", low=0.0),
    GateDef(
        "max_output_abs_error",
        "output",
        "max_abs_error",
        "<=",
        "maximum absolute error max|x - x_hat| of each model output",
        low=0.0,
    ),
    GateDef(
        "max_output_rel_error",
        "output",
        "rel_error",
        "<=",
        "maximum relative error sqrt(sum e^2 / sum x^2) of each model output",
        low=0.0,
    ),
    GateDef(
        "max_qce", "output", "qce", "<=", "maximum QCE (cross-entropy fp32 -> int8) of each output", "nats", low=0.0
    ),
    GateDef(
        "max_qkl", "output", "qkl", "<=", "maximum QKL (KL divergence fp32 -> int8) of each output", "nats", low=0.0
    ),
    GateDef(
        "min_top1_agreement",
        "output",
        "top1_agreement",
        ">=",
        "minimum share (0-1) of samples whose top-1 class is unchanged",
        low=0.0,
        high=1.0,
    ),
    GateDef(
        "min_acc_int8", "output", "acc_int8", ">=", "minimum accuracy (0-1) of the quantized model", low=0.0, high=1.0
    ),
    GateDef(
        "max_acc_drop_pct",
        "output",
        "acc_drop_pct",
        "<=",
        "maximum relative accuracy drop (acc_fp32 - acc_int8) / acc_fp32, in percent (negative: improved)",
        "%",
        low=0.0,
    ),
    GateDef(
        "min_runtime_agreement_db",
        "output",
        "runtime_agreement_db",
        ">=",
        "with --runtimes: minimum SQNR between every pair of runtimes' values of each output",
        "dB",
    ),
    GateDef(
        "max_layer_sqnr_drop",
        "layer",
        "sqnr_db",
        "<=",
        "with --baseline: maximum SQNR drop of each layer",
        "dB",
        kind="regression",
        direction=-1,
        low=0.0,
        default=1.0,
    ),
    GateDef(
        "max_output_sqnr_drop",
        "output",
        "sqnr_db",
        "<=",
        "with --baseline: maximum SQNR drop of each output",
        "dB",
        kind="regression",
        direction=-1,
        low=0.0,
        default=1.0,
    ),
    GateDef(
        "max_qce_increase",
        "output",
        "qce",
        "<=",
        "with --baseline: maximum QCE increase of each output",
        "nats",
        kind="regression",
        direction=+1,
        low=0.0,
    ),
    GateDef(
        "max_top1_agreement_drop",
        "output",
        "top1_agreement",
        "<=",
        "with --baseline: maximum drop (0-1) of the top-1 agreement of each output",
        kind="regression",
        direction=-1,
        low=0.0,
        high=1.0,
    ),
    GateDef(
        "max_acc_drop_increase",
        "output",
        "acc_drop_pct",
        "<=",
        "with --baseline: maximum increase of acc_drop_pct, in percentage points (a negative drop counts as 0)",
        "points",
        kind="regression",
        direction=+1,
        low=0.0,
        floor=0.0,
    ),
)
GATES_BY_NAME: dict[str, GateDef] = {g.name: g for g in GATES}


def _specificity(pattern: str, name: str) -> tuple:
    """Sort key: smaller is more specific (exact name, longer, fewer wildcards, then by text)."""
    exact = pattern == name and not any(c in pattern for c in WILDCARDS)
    return (not exact, -len(pattern), sum(pattern.count(c) for c in WILDCARDS), pattern)


@dataclass(frozen=True)
class Threshold:
    """A gate's threshold: a default and per-subject overrides ``{glob: value or None}``.

    ``None`` means "off": as the default, the gate applies only to subjects an
    override matches; as an override, it exempts the matching subjects.
    """

    default: float | None = None
    overrides: tuple[tuple[str, float | None], ...] = ()

    def __post_init__(self):
        ov = self.overrides
        items = ov.items() if isinstance(ov, Mapping) else ov
        clean = []
        for pattern, value in items:
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"a threshold override needs a non-empty layer or output glob, got {pattern!r}")
            clean.append((pattern, value))
        object.__setattr__(self, "overrides", tuple(sorted(dict(clean).items())))

    @property
    def active(self) -> bool:
        return self.default is not None or any(v is not None for _, v in self.overrides)

    def resolve(self, name: str) -> tuple[float | None, str | None]:
        """``(threshold, glob)`` for ``name``: the most specific matching override, else ``(default, None)``."""
        matches = [(p, v) for p, v in self.overrides if fnmatchcase(name, p)]
        if not matches:
            return self.default, None
        pattern, value = min(matches, key=lambda pv: _specificity(pv[0], name))
        return value, pattern

    def as_dict(self) -> dict:
        return {"default": self.default, "overrides": dict(self.overrides)}


@dataclass(frozen=True)
class GateConfig:
    """Which gates apply, with what thresholds. Build it in code or with :func:`qaudit.cli.settings.resolve`.

    ``thresholds`` maps gate names (:data:`GATES`) to a :class:`Threshold` or a
    plain number (the default, no overrides). Gates with a built-in default
    (the regression gates) keep it unless given; pass ``Threshold(None)`` to
    turn one off.
    """

    thresholds: Mapping[str, Threshold | float | None] = field(default_factory=dict)
    skip_missing: bool = False
    #: ``{runtime: thresholds}``: the threshold gates applied to another runtime's layers and outputs
    #: (``[tool.qaudit.runtimes.NAME]``, ``--runtimes``; docs/runtimes.md)
    runtimes: Mapping[str, Mapping] = field(default_factory=dict)

    def __post_init__(self):
        subs = {}
        for rt, t in dict(self.runtimes).items():
            sub = t if isinstance(t, GateConfig) else GateConfig(t, self.skip_missing)
            regression = [g.name for g in sub.active_gates(True) if g.kind == "regression" and g.default is None]
            regression += [n for n in dict(t) if GATES_BY_NAME.get(n) and GATES_BY_NAME[n].kind == "regression"]
            if regression:
                raise ConfigError(
                    f"[runtimes.{rt}] sets {regression[0]}, a regression gate: the baseline compares the first "
                    "runtime only; set threshold gates there"
                )
            subs[rt] = sub
        object.__setattr__(self, "runtimes", subs)
        given = dict(self.thresholds)
        unknown = sorted(set(given) - set(GATES_BY_NAME))
        if unknown:
            raise ConfigError(f"unknown gate {unknown[0]!r}; gates are: {', '.join(GATES_BY_NAME)}")
        full = {}
        for gd in GATES:
            t = given.get(gd.name, Threshold(gd.default))
            if not isinstance(t, Threshold):
                t = Threshold(t)
            for where, v in [("default", t.default), *((f"override {p!r}", v) for p, v in t.overrides)]:
                if v is not None:
                    try:
                        gd.check_value(v)
                    except ValueError as e:
                        raise ConfigError(f"gate {gd.name} ({where}) {e}") from None
            full[gd.name] = t
        object.__setattr__(self, "thresholds", full)

    def threshold(self, gate: str) -> Threshold:
        return self.thresholds[gate]

    def active_gates(self, with_baseline: bool) -> list[GateDef]:
        return [g for g in GATES if self.thresholds[g.name].active and (g.kind == "threshold" or with_baseline)]

    def configured(self, with_baseline: bool = False) -> bool:
        """Whether any gate would run: an active threshold gate, or a baseline."""
        return (
            with_baseline
            or any(g.kind == "threshold" for g in self.active_gates(False))
            or any(sub.configured() for sub in self.runtimes.values())
        )

    def as_dict(self, with_baseline: bool) -> dict:
        out = {g.name: self.thresholds[g.name].as_dict() for g in self.active_gates(with_baseline)}
        for rt, sub in self.runtimes.items():  # a runtime's thresholds as "gate[runtime]"
            out.update({f"{g.name}[{rt}]": sub.thresholds[g.name].as_dict() for g in sub.active_gates(False)})
        return out


# ------------------------------------------------------------------ checks


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def compare(measured: float | None, comparison: str, threshold: float) -> bool | None:
    """``measured >= threshold`` or ``<=``; ``None`` when ``measured`` is missing (null or NaN)."""
    if is_missing(measured):
        return None
    if comparison == ">=":
        return measured >= threshold
    if comparison == "<=":
        return measured <= threshold
    raise ValueError(f"unknown comparison {comparison!r}")


def change(direction: int, current: float, baseline: float) -> float:
    """The change of a metric in its bad direction (+1: increase, -1: drop); equal values (also ±inf) are 0."""
    if current == baseline:
        return 0.0
    return current - baseline if direction > 0 else baseline - current


_MISSING_WHY = {
    "qce": "QCE needs a class axis of K >= 2 scores, last",
    "qkl": "QKL needs a class axis of K >= 2 scores, last",
    "top1_agreement": "top-1 agreement needs a class axis of K >= 2 scores, last",
    "acc_int8": "accuracy needs --labels (applied to the labelled output, --label-output)",
    "acc_fp32": "accuracy needs --labels (applied to the labelled output, --label-output)",
    "acc_drop_pct": "accuracy needs --labels (applied to the labelled output, --label-output)",
    "clip_fraction": "per-channel activation encodings have no single range",
    "w_sqnr_db": "no quantized weight was found for this layer",
    "sqnr_db": "SQNR is undefined (no signal)",
    "runtime_agreement_db": "a runtime of the pair could not run the model",
    "qmse": "no values were measured",
}


def _missing_reason(metric: str, value, where: str = "") -> str:
    what = "NaN" if value is not None else "null"
    why = _MISSING_WHY.get(metric, "not measured")
    return f"{metric} is missing{where} ({what}: {why})"


def _layer_applies(gd: GateDef, row: LayerRow) -> bool:
    return row.has_weights if gd.metric.startswith("w_") else row.has_activation


def _keyed(rows) -> dict[str, object]:
    """Rows by name; a repeated name gets ' (#2)', ' (#3)', ... in order."""
    out: dict[str, object] = {}
    for r in rows:
        key, k = r.name, 1
        while key in out:
            k += 1
            key = f"{r.name} (#{k})"
        out[key] = r
    return out


@dataclass(frozen=True)
class _Agreement:
    """One output in one pair of runtimes: the subject of ``min_runtime_agreement_db``, its
    threshold resolved by the output's name (a GLOB=VALUE names outputs, as for the other gates)."""

    name: str
    runtime_agreement_db: float | None


def _agreement_subjects(report: Report) -> dict[str, _Agreement]:
    rt = report.runtimes
    if rt is None:
        return {}
    return {f"{o.name} ({pair})": _Agreement(o.name, o.agreement_db.get(pair)) for o in rt.outputs for pair in rt.pairs}


def _subjects(gd: GateDef, report: Report) -> dict[str, LayerRow | OutputRow]:
    if gd.metric == "runtime_agreement_db":
        return _agreement_subjects(report)
    if gd.scope == "output":
        outputs = _keyed(report.outputs)
        if gd.metric in CLASS_METRICS:
            outputs = {k: o for k, o in outputs.items() if o.is_class}
        if gd.metric.startswith("acc_"):
            # accuracy is measured on the labelled output only; without labels every class
            # output is checked, and fails as missing ("needs --labels")
            labelled = {k: o for k, o in outputs.items() if o.acc_fp32 is not None}
            return labelled or outputs
        return outputs
    return {k: r for k, r in _keyed(report.layers).items() if _layer_applies(gd, r)}


def _missing_status(skip_missing: bool) -> str:
    return "skip" if skip_missing else "fail"


def _gate_off(gd: GateDef, name: str, pattern: str) -> GateCheck:
    """The skipped check of a subject whose override turns the gate off."""
    reason = f"gate off for '{pattern}'"
    return GateCheck(gd.name, gd.scope, name, gd.metric, gd.comparison, None, None, "skip", pattern, reason=reason)


def _threshold_checks(gd, spec, subjects, skip_missing):
    for name, row in subjects.items():
        threshold, pattern = spec.resolve(row.name if isinstance(row, _Agreement) else name)
        if threshold is None:
            if pattern is not None:
                yield _gate_off(gd, name, pattern)
            continue
        v = getattr(row, gd.metric)
        ok = compare(v, gd.comparison, threshold)
        if ok is None:
            status, reason = _missing_status(skip_missing), _missing_reason(gd.metric, v)
        else:
            status, reason = ("pass" if ok else "fail"), ""
            if isinstance(v, float) and math.isinf(v):
                reason = f"{gd.metric} is {'+' if v > 0 else '-'}inf"
        yield GateCheck(
            gd.name,
            gd.scope,
            name,
            gd.metric,
            gd.comparison,
            threshold,
            None if is_missing(v) else v,
            status,
            pattern,
            reason=reason,
        )


def _regression_checks(gd, spec, subjects, base_subjects, skip_missing):
    for name, row in subjects.items():
        brow = base_subjects.get(name)
        if brow is None:
            continue  # listed as added
        threshold, pattern = spec.resolve(name)
        if threshold is None:
            if pattern is not None:
                yield _gate_off(gd, name, pattern)
            continue
        cur, base = getattr(row, gd.metric), getattr(brow, gd.metric)
        cur_v = None if is_missing(cur) else cur
        base_v = None if is_missing(base) else base
        if base_v is None:
            status, measured, reason = "skip", None, _missing_reason(gd.metric, base, " in the baseline")
        elif cur_v is None:
            status, measured, reason = _missing_status(skip_missing), None, _missing_reason(gd.metric, cur)
        else:
            floor = -math.inf if gd.floor is None else gd.floor
            measured = change(gd.direction, max(cur_v, floor), max(base_v, floor))
            status, reason = ("pass" if measured <= threshold else "fail"), ""
        yield GateCheck(
            gd.name,
            gd.scope,
            name,
            gd.metric,
            gd.comparison,
            threshold,
            measured,
            status,
            pattern,
            value=cur_v,
            baseline=base_v,
            reason=reason,
        )


def _nothing_checked(gd: GateDef, spec: Threshold, regression: bool, skip_missing: bool) -> GateCheck:
    what = "quantized layer" if gd.metric in ("sqnr_db", "qmse", "clip_fraction") else "weighted layer"
    what = ("class output" if gd.metric in CLASS_METRICS else "output") if gd.scope == "output" else what
    if gd.metric == "runtime_agreement_db":
        what = "pair of runtimes (--runtimes with two or more)"
    if spec.default is None:
        globs = ", ".join(repr(p) for p, v in spec.overrides if v is not None)
        reason = f"no {what} matches {globs}"
    elif regression:
        reason = f"no {what} is in both this report and the baseline"
    else:
        reason = f"the report has no {what} with {gd.metric}"
    return GateCheck(
        gd.name,
        gd.scope,
        "",
        gd.metric,
        gd.comparison,
        spec.default,
        None,
        _missing_status(skip_missing),
        reason=f"nothing checked: {reason}",
    )


def check_class_outputs(config: GateConfig, kinds: Mapping[str, str], with_baseline: bool = False) -> None:
    """Raise :class:`ConfigError` when an active gate checks a class metric and no output is
    of kind ``"class"`` (``kinds``: output name -> kind): such a gate could check nothing.
    :func:`evaluate` calls it; the CLI calls it before auditing, with the kinds the audit will use."""
    gates = [g for g in config.active_gates(with_baseline) if g.scope == "output" and g.metric in CLASS_METRICS]
    if not gates or "class" in kinds.values():
        return
    gd = gates[0]
    described = ", ".join(f"{n} ({k})" for n, k in kinds.items()) or "none"
    raise ConfigError(
        f"gate {gd.name} (--{gd.name.replace('_', '-')}) checks {gd.metric}, which only class outputs have, and no "
        f"output of the model holds class scores (outputs: {described}); remove the gate, or name the class "
        "outputs with --class-outputs NAME"
    )


def _baseline_notes(report: Report, baseline: Report) -> list[str]:
    notes = []
    keys = sorted(set(report.settings) | set(baseline.settings))
    diff = [
        f"{k} {baseline.settings.get(k)!r} -> {report.settings.get(k)!r}"
        for k in keys
        if k not in ("batch_size",) and report.settings.get(k) != baseline.settings.get(k)
    ]
    if diff:
        notes.append("settings differ from the baseline: " + "; ".join(diff))
    for k in ("n_calib", "n_eval", "eval_is_calib", "labels"):
        if report.data.get(k) != baseline.data.get(k):
            notes.append(
                f"data differ from the baseline ({k} {baseline.data.get(k)!r} -> {report.data.get(k)!r}): "
                "metrics were measured on different samples"
            )
            break
    return notes


def runtime_view(report: Report, runtime: str) -> Report | None:
    """``report`` as ``runtime`` measured it (its ``runtimes`` section): each row's activation SQNR and
    QMSE and each output's metrics are that runtime's (``None`` where not measurable there); the
    isolated error is the first runtime's only. ``None``: the report has no such runtime."""
    from dataclasses import replace

    rt = report.runtimes
    if rt is None or runtime not in rt.names:
        return None
    by_row = {(lr.name, lr.tensor): lr for lr in rt.layers}
    layers = []
    for row in report.layers:
        lr = by_row.get((row.name, row.tensor))
        if lr is not None:
            row = replace(
                row,
                sqnr_db=lr.sqnr_db.get(runtime),
                qmse=lr.qmse.get(runtime),
                sqnr_isolated_db=None,
                qmse_isolated=None,
                error_amplification=None,
            )
        layers.append(row)
    fields = set(OutputRow.__dataclass_fields__) - {"name"}
    outputs = []
    for o in report.outputs:
        m = next((x.metrics.get(runtime) for x in rt.outputs if x.name == o.name), None) or {}
        outputs.append(OutputRow(name=o.name, **{k: m.get(k) for k in fields}))
    return replace(report, layers=tuple(layers), outputs=tuple(outputs), gates=None)


def _runtime_checks(report: Report, runtime: str, config: GateConfig) -> list[GateCheck]:
    """The threshold gates of ``[runtimes.NAME]`` on that runtime's view; subjects end in ``[NAME]``."""
    from dataclasses import replace

    view = runtime_view(report, runtime)
    if view is None:
        ran = ", ".join(report.runtimes.names) if report.runtimes is not None else "one runtime"
        return [
            GateCheck(
                f"runtimes.{runtime}",
                "output",
                "",
                "runtime",
                ">=",
                None,
                None,
                "fail",
                reason=f"[runtimes.{runtime}] has gates, and the audit did not run {runtime} (it ran {ran}): "
                f"add it to --runtimes",
            )
        ]
    checks = evaluate(view, config).checks
    return [replace(c, subject=f"{c.subject} [{runtime}]" if c.subject else f"[{runtime}]") for c in checks]


def evaluate(
    report: Report, config: GateConfig, baseline: Report | None = None, baseline_source: str | None = None
) -> GateResult:
    """Apply every active gate of ``config`` to ``report`` (and, with a baseline, the regression gates).

    ``baseline_source`` (e.g. the baseline's path) is recorded in the result.
    Checks are ordered by gate (:data:`GATES` order), then by subject in
    report order, so the result is deterministic.
    """
    checks: list[GateCheck] = []
    notes: list[str] = []
    check_class_outputs(
        config, {o.name: "class" if o.is_class else "regression" for o in report.outputs}, baseline is not None
    )
    for gd in config.active_gates(baseline is not None):
        spec = config.threshold(gd.name)
        subjects = _subjects(gd, report)
        if gd.kind == "regression":
            base_subjects = _subjects(gd, baseline)
            found = list(_regression_checks(gd, spec, subjects, base_subjects, config.skip_missing))
        else:
            found = list(_threshold_checks(gd, spec, subjects, config.skip_missing))
        checks.extend(found or [_nothing_checked(gd, spec, gd.kind == "regression", config.skip_missing)])
        names = [r.name for r in (report.outputs if gd.scope == "output" else report.layers)]
        for pattern, _ in spec.overrides:
            if not any(fnmatchcase(n, pattern) for n in names):
                notes.append(f"{gd.name}: '{pattern}' matches no {gd.scope} of this report")

    for rt, sub in config.runtimes.items():
        if sub.configured():  # an empty [runtimes.NAME] table only lists the runtime
            checks.extend(_runtime_checks(report, rt, sub))

    added_l = removed_l = added_o = removed_o = ()
    base_info = None
    if baseline is not None:
        cur_l, base_l = _keyed(report.layers), _keyed(baseline.layers)
        cur_o, base_o = _keyed(report.outputs), _keyed(baseline.outputs)
        added_l = tuple(n for n in cur_l if n not in base_l)
        removed_l = tuple(n for n in base_l if n not in cur_l)
        added_o = tuple(n for n in cur_o if n not in base_o)
        removed_o = tuple(n for n in base_o if n not in cur_o)
        base_info = {
            "path": baseline_source,
            "model_sha256": baseline.model.get("sha256"),
            "qaudit": baseline.meta.get("qaudit"),
            "created": baseline.meta.get("created"),
            "format_version": baseline.format_version,
        }
        notes.extend(_baseline_notes(report, baseline))

    return GateResult(
        checks=tuple(checks),
        thresholds=config.as_dict(baseline is not None),
        skip_missing=config.skip_missing,
        baseline=base_info,
        added_layers=added_l,
        removed_layers=removed_l,
        added_outputs=added_o,
        removed_outputs=removed_o,
        notes=tuple(notes),
    )


__all__ = [
    "GATES",
    "check_class_outputs",
    "GateConfig",
    "GateDef",
    "GateCheck",
    "GateResult",
    "Threshold",
    "compare",
    "evaluate",
]
