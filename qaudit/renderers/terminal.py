"""The terminal renderer: rich tables of a :class:`~qaudit.report.Report` or a comparison.

:data:`RENDERER` renders to plain text (no colour, no ANSI codes, a fixed
``width``, independent of the environment) like every renderer, and is the one
renderer that can also stream: ``render(..., console=con)`` (or
:meth:`TerminalRenderer.print`) prints to a :class:`rich.console.Console` in
the colours of :data:`THEME`. Both give the same characters. Imports no onnxruntime.
"""

from __future__ import annotations

import io
import os

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich.theme import Theme

from qaudit.options import describe_calibration
from qaudit.renderers import numbers as num
from qaudit.renderers import runtimes as rts
from qaudit.renderers import trials as tr
from qaudit.renderers.base import accept, data_line, decomposition, override_label, with_gates
from qaudit.renderers.checks import counts, sentence, words
from qaudit.report import GateResult, Report
from qaudit.trials import LAYER_METRICS

THEME = Theme(
    {
        "worst": "bold red",
        "warn": "yellow",
        "ok": "green",
        "muted": "dim",
        "head": "bold",
        "verdict.pass": "bold green",
        "verdict.fail": "bold red",
        "gate.fail": "red",
    }
)


#: width of the text :meth:`TerminalRenderer.render` returns when no width is given
#: (the CLI's width when it does not write to a terminal and ``$COLUMNS`` is unset)
DEFAULT_WIDTH = 200


def console(file=None, width: int | None = None, stderr: bool = False) -> Console:
    """A themed console; when not writing to a terminal (CI logs, pipes) it is
    ``$COLUMNS`` or :data:`DEFAULT_WIDTH` columns wide, so the layer table does not wrap."""
    con = Console(file=file, width=width, theme=THEME, stderr=stderr, highlight=False)
    if width is None and not con.is_terminal:
        cols = os.environ.get("COLUMNS", "")
        con = Console(
            file=file, width=int(cols) if cols.isdigit() else DEFAULT_WIDTH, theme=THEME, stderr=stderr, highlight=False
        )
    return con


def _pair(a, b, rule=num.sig) -> str:
    """``a → b`` (plain → BN-folded), or ``a`` alone when there is no ``b`` or it is the same."""
    if a is None:
        return num.MISSING
    if b is None or a == b:
        return rule(a)
    return f"{rule(a)} → {rule(b)}"


#: the layer table's columns of the calibration trials (qaudit.trials.LAYER_METRICS)
TRIAL_TITLES = ("SQNR trials", "iso trials")

#: marks a layer or output that fails a gate (visible without colour, e.g. in CI logs)
FAIL_MARK = "✗"


def layer_table(report: Report, worst: int = 3) -> Table:
    worst_names = {r.name for r in report.worst_layers(worst)}
    failing = set(report.gates.failing("layer")) if report.gates else set()
    trials = f"; trials: mean ±std (min) over {report.trials['n']} calibration subsets" if report.trials else ""
    # the trials' columns: accumulated, and isolated when measured (--no-isolated: none)
    metrics = [
        m for m in LAYER_METRICS if report.trials and (m == "sqnr_db" or report.settings.get("error") != "accumulated")
    ]
    t = Table(
        title="Per-layer quantization, graph order (weights: plain → BN-folded; SQNR: accumulated, iso: the layer's "
        f"own error{trials})",
        title_justify="left",
        header_style="head",
    )
    for col, just in [
        ("#", "right"),
        ("layer", "left"),
        ("op", "left"),
        ("w range", "right"),
        ("w prec", "right"),
        ("w SQNR", "right"),
        ("act range", "right"),
        ("act prec", "right"),
        ("scale / zp", "right"),
        ("clip %", "right"),
        ("iso clip/grid %", "right"),
        ("SQNR dB", "right"),
        ("iso dB", "right"),
        ("QMSE", "right"),
        *[(title, "right") for title in TRIAL_TITLES[: len(metrics)]],
    ]:
        t.add_column(col, justify=just, overflow="fold", no_wrap=col not in ("layer", "w range", "act range"))
    for r in report.layers:
        spread = [Text(tr.layer_cell(report.trials, r.name, m)) for m in metrics]
        style = "gate.fail" if r.name in failing else "worst" if r.name in worst_names else None
        name = r.name + (f" +{'+'.join(a.split('/')[-1] for a in r.fused)}" if r.fused else "")
        if r.bn_folded:
            name += " [bn]"
        if override_label(r):
            name += f" [{override_label(r)}]"
        if r.name in failing:
            name += f" {FAIL_MARK}"
        t.add_row(
            str(r.index),
            Text(name),
            Text(r.op_type),
            _pair(r.w_range, r.fold_w_range if r.bn_folded else None),
            _pair(r.w_precision, r.fold_w_precision if r.bn_folded else None, num.frac),
            num.db(r.w_sqnr_db),
            f"[{num.sig(r.a_lo)}, {num.sig(r.a_hi)}]" if r.has_activation else num.MISSING,
            num.frac(r.a_precision),
            f"{num.sig(r.scale)} / {r.zero_point}"
            if r.scale is not None
            else ("per-channel" if r.has_activation else num.MISSING),
            num.pct(r.clip_fraction),
            decomposition(r),
            num.db(r.sqnr_db),
            num.db(r.sqnr_isolated_db),
            num.mse(r.qmse),
            *spread,
            style=style,
        )
    return t


def what_to_try(report: Report) -> Group | None:
    """The "what to try" section: the worst causes with their evidence; ``None`` when there is none."""
    from qaudit.remedy import causes

    shown, more = causes.lines(report)
    if not shown:
        return None
    parts = [Text.assemble((f"{causes.HEADING}: ", "head"), (causes.INTRO, "muted"))]
    for i, (cause, line) in enumerate(shown, 1):
        parts.append(Text(f"  {i}. {line}"))
        parts.append(Text(f"     evidence: {causes.evidence_text(cause)}", style="muted"))
    if more:
        parts.append(Text(f"  ... {more} more in the JSON report (causes)", style="muted"))
    return Group(*parts)


def output_table(report: Report) -> Table:
    t = Table(title="Model outputs (fp32 vs quantized)", title_justify="left", header_style="head")
    for col in ("output", *num.OUTPUT_HEADERS):
        t.add_column(col, justify="left" if col in ("output", "kind") else "right", no_wrap=col != "output")
    failing = set(report.gates.failing("output")) if report.gates else set()
    for o in report.outputs:
        t.add_row(
            Text(o.name + (f" {FAIL_MARK}" if o.name in failing else "")),
            *num.output_cells(o),
            style="gate.fail" if o.name in failing else None,
        )
    return t


def trials_table(report: Report) -> Table:
    """The model outputs over the calibration trials: mean ± std [min, max] of each metric."""
    t = Table(title=Text(tr.heading(report.trials)), title_justify="left", header_style="head")
    for col in ("output", *tr.OUTPUT_TITLES):
        t.add_column(col, justify="left" if col == "output" else "right", no_wrap=col != "output")
    for o in report.outputs:
        t.add_row(Text(o.name), *map(Text, tr.output_cells(report.trials, o.name)))
    return t


def runtime_tables(rt) -> list:
    """The ``runtimes`` section (``--runtimes``): per-layer SQNR in each runtime and every pair's
    agreement, the outputs likewise, the first divergent layer of each pair, what was not measurable
    (the cells: :mod:`qaudit.renderers.runtimes`)."""
    t = Table(title=rts.LAYERS_TITLE, title_justify="left", header_style="head")
    for i, col in enumerate(rts.layer_header(rt)):
        if i == 0:
            t.add_column(col, overflow="fold")
        elif i == 1:
            t.add_column(col)
        else:
            t.add_column(col, justify="right", no_wrap=True)
    for lr, cells, agree in rts.layer_rows(rt):
        marked = [Text(v + (" ◀" if d else ""), style="worst" if d else None) for v, d in agree]
        t.add_row(Text(lr.name), Text(lr.op_type), *cells, *marked)
    o = Table(title=rts.outputs_title(rt), title_justify="left", header_style="head")
    for col in rts.output_header(rt):
        o.add_column(col, justify="left" if col in ("output", "runtime") else "right", no_wrap=col != "output")
    for row in rts.output_rows(rt):
        o.add_row(Text(row[0]), *row[1:])
    return [t, o, Text("\n".join(rts.summary_lines(rt)))]


def given_summary(report: Report) -> str:
    """The quantization line of a model quantized elsewhere (--quantized): its file and what its graph says."""
    s, q = report.settings, report.model["quantized"]
    pc = {True: " per-channel", False: " per-tensor"}.get(s.get("per_channel"), "")
    return (
        f"quantized elsewhere: {q['path']}  sha256 {q['sha256'][:12]}; read from its graph: "
        f"{str(s.get('format')).upper()}, activations {s.get('activation_type')}, weights {s.get('weight_type')}{pc}; "
        "calibration unknown"
    )


def summary(report: Report, worst: int = 3) -> Group:
    s = report.settings
    d = report.data
    parts = [
        Text.assemble(
            ("model ", "head"),
            f"{report.model['path']}  sha256 {report.model['sha256'][:12]}  opset {report.model['opset']}",
        ),
        Text(
            (
                given_summary(report)
                if report.model.get("quantized")
                else f"quantized: {s['format'].upper()}, activations {s['activation_type']}, weights "
                f"{s['weight_type']}{' per-channel' if s['per_channel'] else ' per-tensor'}, {describe_calibration(s)} "
                f"on {d['n_calib']} "
                "calibration samples"
            )
            + f"; measured on {d['n_eval']} {'calibration' if d['eval_is_calib'] else 'evaluation'} samples"
            + (f"; labels score output {d['label_output']}" if d.get("label_output") else ""),
            style="muted",
        ),
    ]
    if data_line(d):  # image and WAV folders, loader scripts: how the data was read
        parts.append(Text(data_line(d), style="muted"))
    folded = report.folding.get("folded", [])
    if folded:
        checked = report.folding.get("check_samples")
        on = (
            f" on {checked} of {report.data['n_calib']} calibration samples"
            if checked and checked < report.data["n_calib"]
            else ""
        )
        if checked and report.model.get("quantized"):  # --quantized: checked on the evaluation data
            on = f" on {checked} evaluation samples"
        parts.append(
            Text(
                f"BN folded into {len(folded)} layer(s) (marked [bn]); folded fp32 outputs match the original{on}",
                style="muted",
            )
        )
    for sk in report.folding.get("skipped", []):
        parts.append(Text(f"BN {sk['bn']} not folded: {sk['reason']}", style="warn"))
    w = report.worst_layers(worst)
    if w:
        parts.append(
            Text.assemble(
                ("worst layers: ", "head"), ("; ".join(f"{r.name} {num.db(r.sqnr_db)} dB" for r in w), "worst")
            )
        )
    fused = [u for u in report.unmatched if u.kind == "fused"]
    other = [u for u in report.unmatched if u.kind != "fused"]
    if fused:
        parts.append(
            Text(
                f"{len(fused)} pre-activation tensor(s) have no quantized twin because ONNX Runtime fused the Relu/Clip "
                "that follows them into the layer's encoding; those rows (marked +Relu/+Clip) measure the activation output",
                style="muted",
            )
        )
    if other:
        parts.append(Text(f"{len(other)} fp32 tensor(s) without a quantized twin:", style="warn"))
        for u in other[:20]:
            parts.append(Text(f"  {u.tensor} ({u.op_type} {u.producer}): {u.reason}", style="muted"))
        if len(other) > 20:
            parts.append(Text(f"  ... {len(other) - 20} more in the JSON report", style="muted"))
    for n in report.notes:
        parts.append(Text(f"note: {n}", style="warn"))
    for n in (report.trials or {}).get("notes", ()):
        parts.append(Text(f"note (trials): {n}", style="warn"))
    return Group(*parts)


# ------------------------------------------------------------------ gates

#: failing checks listed in the terminal; the JSON, JUnit and Markdown outputs list them all
MAX_FAILURES_SHOWN = 20


def verdict(result: GateResult) -> Text:
    """One line: PASS or FAIL, the counts, and the first failing gates."""
    if result.passed:
        return Text.assemble(("PASS", "verdict.pass"), f": {counts(result)}")
    failed = result.failures
    first = "; ".join(sentence(c) for c in failed[:3]) + ("; ..." if len(failed) > 3 else "")
    return Text.assemble(("FAIL", "verdict.fail"), f": {counts(result)}: {first}")


def gates_section(result: GateResult) -> Group:
    parts = []
    if result.baseline is not None:
        b = result.baseline
        parts.append(
            Text(
                f"baseline {b.get('path') or '(in memory)'}: model sha256 {str(b.get('model_sha256'))[:12]}, "
                f"qaudit {b.get('qaudit')}, created {b.get('created')}",
                style="muted",
            )
        )
        for label, names in (
            ("layers added since the baseline", result.added_layers),
            ("layers removed since the baseline", result.removed_layers),
            ("outputs added since the baseline", result.added_outputs),
            ("outputs removed since the baseline", result.removed_outputs),
        ):
            if names:
                parts.append(Text(f"{label}: {', '.join(names)}", style="warn"))
    failed = result.failures
    if failed:
        t = Table(title="Failing gates", title_justify="left", header_style="head")
        for col, just in (
            ("gate", "left"),
            ("layer / output", "left"),
            ("metric", "left"),
            ("measured", "right"),
            ("", "center"),
            ("threshold", "right"),
            ("glob", "left"),
            ("note", "left"),
        ):
            t.add_column(col, justify=just, overflow="fold")
        for c in failed[:MAX_FAILURES_SHOWN]:
            w = words(c)
            t.add_row(
                *(Text(x) for x in (w.gate, w.subject, w.metric, w.measured, w.relation, w.threshold, w.glob, w.note)),
                style="gate.fail",
            )
        parts.append(t)
        if len(failed) > MAX_FAILURES_SHOWN:
            parts.append(
                Text(f"... {len(failed) - MAX_FAILURES_SHOWN} more failing checks in the JSON report", style="muted")
            )
    for c in result.skipped[:MAX_FAILURES_SHOWN]:
        parts.append(Text(f"skipped: {sentence(c)}", style="muted"))
    for n in result.notes:
        parts.append(Text(f"gate note: {n}", style="warn"))
    return Group(*parts)


def print_verdict(result: GateResult, con: Console) -> None:
    """The verdict on exactly one line, however long (CI logs are grepped for it)."""
    con.print(verdict(result), soft_wrap=True)


# ------------------------------------------------------------------ compare

#: (metric, column title) of the comparison tables; numbers follow :func:`qaudit.renderers.numbers.metric`
COMPARE_COLUMNS = (
    ("w_range", "w range"),
    ("fold_w_range", "w range folded"),
    ("fold_w_precision", "w prec folded"),
    ("w_sqnr_db", "w SQNR"),
    ("a_range", "act range"),
    ("a_precision", "act prec"),
    ("sqnr_db", "SQNR dB"),
    ("sqnr_isolated_db", "iso dB"),
    ("qmse", "QMSE"),
)
OUTPUT_COMPARE_COLUMNS = (
    ("qmse", "QMSE"),
    ("sqnr_db", "SQNR dB"),
    ("qce", "QCE"),
    ("top1_agreement", "top-1 agree %"),
    ("acc_fp32", "acc fp32 %"),
    ("acc_int8", "acc int8 %"),
    ("acc_drop_pct", "acc drop %"),
)
#: marks a value that differs from the first model's beyond the tolerance (visible without colour)
DIFF_MARK = "≠"


def _cell(values, differs, metric) -> Text:
    """``a → b`` (one value when they print the same), marked when it differs beyond the tolerance."""
    texts = [num.metric(metric, v) for v in values]
    if len(set(texts)) == 1:
        return Text(texts[0])
    return Text(" → ".join(texts) + (f" {DIFF_MARK}" if any(differs) else ""), style="worst" if any(differs) else None)


def alignment_table(c) -> Table:
    labels = c.labels
    t = Table(
        title="Layer alignment (weighted layers; confidence of the pairing with the first model)",
        title_justify="left",
        header_style="head",
    )
    t.add_column("#", justify="right")
    t.add_column("signature", justify="left", overflow="fold")
    for k, lab in enumerate(labels):
        t.add_column(lab, justify="left", overflow="fold")
        if k:
            t.add_column("conf", justify="right", no_wrap=True)
            t.add_column("how", justify="left", no_wrap=True)
    for i, r in enumerate(c.layers):
        cells = [str(i), Text(r.signature)]
        for k in range(len(labels)):
            name = r.layers[k]
            cells.append(Text(f"{r.indices[k]}:{name}" if name is not None else "-", style=None if name else "muted"))
            if k:
                how = {"signature+activation": "sig+act", "signature": "sig", "map": "map"}.get(r.method[k] or "", "")
                cells += [num.frac(r.confidence[k]), how]
        t.add_row(*cells, style=None if r.aligned else "warn")
    return t


def compare_layer_table(c) -> Table:
    """Two models: one row per aligned layer, ``a → b`` per metric."""
    t = Table(
        title=f"Per-layer metrics: {' → '.join(c.labels)} ({DIFF_MARK}: beyond tolerance)",
        title_justify="left",
        header_style="head",
    )
    t.add_column("#", justify="right")
    t.add_column("layer", justify="left", overflow="fold")
    for _, title in COMPARE_COLUMNS:
        t.add_column(title, justify="right", overflow="fold")
    for i, r in enumerate(c.layers):
        name = next(x for x in r.layers if x is not None)
        cells = [str(i), Text(name + ("" if r.aligned else " (unaligned)"))]
        for metric, _ in COMPARE_COLUMNS:
            m = r.metric(metric)
            cells.append(_cell(m.values, m.differs, metric))
        t.add_row(*cells)
    return t


def compare_layer_tables(c) -> list[Table]:
    """Three or more models: one table per aligned layer, metrics down, models across."""
    tables = []
    for i, r in enumerate(c.layers):
        name = next(x for x in r.layers if x is not None)
        t = Table(title=f"#{i} {name}  ({r.signature})", title_justify="left", header_style="head")
        t.add_column("metric", justify="left")
        for k, lab in enumerate(c.labels):
            t.add_column(lab + ("" if k == 0 else " (Δ)"), justify="right", overflow="fold")
        for metric, title in COMPARE_COLUMNS:
            m = r.metric(metric)
            if all(v is None for v in m.values):
                continue
            cells = [title]
            for k, v in enumerate(m.values):
                d = m.deltas[k]
                txt = num.metric(metric, v) + (
                    f" ({'+' if d >= 0 else ''}{num.metric(metric, d)})" if k and d is not None and d != 0 else ""
                )
                cells.append(
                    Text(txt + (f" {DIFF_MARK}" if m.differs[k] else ""), style="worst" if m.differs[k] else None)
                )
            t.add_row(*cells)
        tables.append(t)
    return tables


def compare_output_table(c) -> Table:
    t = Table(title="Model outputs (fp32 vs quantized), paired by position", title_justify="left", header_style="head")
    t.add_column("metric", justify="left")
    for lab in c.labels:
        t.add_column(lab, justify="right", overflow="fold")
    for o in c.outputs:
        t.add_row(Text("output"), *[Text(n or "-") for n in o.names], style="head")
        for metric, title in OUTPUT_COMPARE_COLUMNS:
            m = next(x for x in o.metrics if x.metric == metric)
            if all(v is None for v in m.values):
                continue
            t.add_row(
                title,
                *[
                    Text(
                        num.metric(metric, v) + (f" {DIFF_MARK}" if m.differs[k] else ""),
                        style="worst" if m.differs[k] else None,
                    )
                    for k, v in enumerate(m.values)
                ],
            )
    return t


def compare_summary(c) -> Group:
    parts = []
    for m in c.models:
        desc = (
            f"{m.path} ({'audited now' if m.source == 'model' else 'saved report'}), opset {m.opset}, "
            f"producer {m.producer or '?'}, input {', '.join(m.inputs)}, {m.weighted_layers} weighted layers, "
            f"{m.bn_folded_by_qaudit} BN folded by qaudit"
        )
        parts.append(Text.assemble((f"{m.label}: ", "head"), (desc, "muted")))
    for k in range(1, len(c.models)):
        pairs = c.pairs(k)
        confs = [p[2] for p in pairs if p[2] is not None]
        low = [p for p in pairs if p[2] is not None and p[2] < 0.8]
        parts.append(
            Text(
                f"{c.labels[0]} ↔ {c.labels[k]}: {len(pairs)} layer(s) aligned"
                + (f", confidence {num.frac(min(confs))}-{num.frac(max(confs))}" if confs else "")
                + (f", {len(low)} below 0.8" if low else ""),
                style="warn" if low else "ok",
            )
        )
    for k, m in enumerate(c.models):
        un = c.unaligned(k)
        if un:
            parts.append(Text(f"unaligned in {m.label}: {', '.join(un)}", style="warn"))
    differing = [(i, r) for i, r in enumerate(c.layers) if r.differs]
    if differing:
        parts.append(
            Text.assemble(
                ("layers that differ beyond tolerance: ", "head"),
                (
                    "; ".join(
                        f"#{i} {next(x for x in r.layers if x)} ({', '.join(m.metric for m in r.metrics if any(m.differs))})"
                        for i, r in differing
                    ),
                    "worst",
                ),
            )
        )
    else:
        parts.append(Text("no aligned layer differs beyond tolerance", style="ok"))
    for e in c.explanations:
        parts.append(Text(f"cause: {e}", style="warn"))
    for i, r in enumerate(c.layers):
        for e in r.explanations:
            parts.append(Text(f"#{i} {next(x for x in r.layers if x)}: {e}", style="muted"))
    for n in c.notes:
        parts.append(Text(f"note: {n}", style="warn"))
    return Group(*parts)


def plain_console(file, width: int = DEFAULT_WIDTH) -> Console:
    """A console that writes plain text at ``width`` columns whatever the environment
    (``NO_COLOR``, ``FORCE_COLOR``, ``COLUMNS``, ``TERM`` are ignored)."""
    return Console(
        file=file,
        width=width,
        theme=THEME,
        highlight=False,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        force_interactive=False,
        legacy_windows=False,
        _environ={},
    )


class TerminalRenderer:
    """The tables of a report (layers, outputs, summary, gates and the verdict line) or of a comparison.

    ``render(subject, *, gates=None, worst=3, quiet=False, width=200, console=None) -> str``:
    ``worst`` layers are highlighted; ``quiet`` keeps only the verdict line (a report
    without gates, or a comparison, then prints nothing); ``width`` is the width of
    the plain text returned. With ``console`` it prints there instead (at that
    console's width, in colour when it is a terminal) and returns ``""``.
    """

    name = "terminal"
    subjects = frozenset({"report", "comparison", "runs"})

    def render(
        self,
        subject,
        *,
        gates: GateResult | None = None,
        worst: int = 3,
        quiet: bool = False,
        width: int = DEFAULT_WIDTH,
        console: Console | None = None,
    ) -> str:
        if console is not None:
            self.print(subject, console, gates=gates, worst=worst, quiet=quiet)
            return ""
        buf = io.StringIO()
        self.print(subject, plain_console(buf, width), gates=gates, worst=worst, quiet=quiet)
        return buf.getvalue()

    def print(
        self, subject, console: Console, *, gates: GateResult | None = None, worst: int = 3, quiet: bool = False
    ) -> None:
        """Stream the same output to ``console`` (any console: :data:`THEME` is pushed while printing)."""
        with console.use_theme(THEME):
            self._print(subject, console, gates, worst, quiet)

    def _print(self, subject, con: Console, gates: GateResult | None, worst: int, quiet: bool) -> None:
        kind = accept(self, subject, gates)
        if kind == "runs":
            print_runs(subject, con, worst, quiet)
            return
        if kind == "comparison":
            if quiet:
                return
            c = subject
            con.print(alignment_table(c))
            if len(c.models) == 2:
                con.print(compare_layer_table(c))
            else:
                for t in compare_layer_tables(c):
                    con.print(t)
            con.print(compare_output_table(c))
            con.print(compare_summary(c))
            return
        report = with_gates(subject, gates)
        if not quiet:
            con.print(layer_table(report, worst))
            con.print(output_table(report))
            if report.trials:
                con.print(trials_table(report))
            if report.runtimes is not None:
                for part in runtime_tables(report.runtimes):
                    con.print(part)
            con.print(summary(report, worst))
            tries = what_to_try(report)
            if tries is not None:
                con.print(tries)
            if report.gates is not None:
                con.print(gates_section(report.gates))
        if report.gates is not None:
            print_verdict(report.gates, con)


def runs_table(mr) -> Table:
    """The runs side by side: method, worst layer and its SQNR, worst output SQNR, QCE, accuracy drop, verdict."""
    from qaudit.runs import summary_rows

    t = Table(title="Runs side by side", title_justify="left", header_style="head")
    for col, just in (
        ("run", "left"),
        ("calibration", "left"),
        ("worst layer", "left"),
        ("worst layer SQNR dB", "right"),
        ("output SQNR dB", "right"),
        ("QCE", "right"),
        ("acc drop %", "right"),
        ("gates", "left"),
    ):
        t.add_column(col, justify=just, overflow="fold")
    rows = summary_rows(mr)
    trials = any("trials_output" in row for row in rows)
    if trials:  # calibration trials: is a difference between runs noise?
        t.add_column("output SQNR trials", justify="right", overflow="fold")
        t.add_column("paired difference (same subsets)", justify="right", overflow="fold")
    for (_, report), row in zip(mr.runs, rows, strict=True):
        verdict_text = {"pass": Text("PASS", "verdict.pass"), "fail": Text("FAIL", "verdict.fail")}
        t.add_row(
            Text(row["run"]),
            Text(describe_calibration(report.settings) if row["method"] else "given"),
            Text(row["worst_layer"] or num.MISSING),
            num.db(row["worst_layer_sqnr_db"]),
            num.db(row["output_sqnr_db"]),
            num.nats(row["qce"]),
            num.points(row["acc_drop_pct"]),
            verdict_text.get(row["verdict"], Text("not gated", "muted")),
            *(map(Text, tr.run_cells(row, mr.names[0])) if trials else ()),
        )
    return t


def print_runs(mr, con: Console, worst: int = 3, quiet: bool = False) -> None:
    """Every run in full (its tables, summary and gates, under a rule naming it), the runs side by
    side, then one verdict line per gated run and the overall verdict naming the failing runs."""
    from qaudit.runs import verdict_line

    if not quiet:
        for name, report in mr.runs:
            con.rule(Text(f"run {name}: {describe_calibration(report.settings)}", style="head"), align="left")
            con.print(layer_table(report, worst))
            con.print(output_table(report))
            if report.trials:
                con.print(trials_table(report))
            if report.runtimes is not None:
                for part in runtime_tables(report.runtimes):
                    con.print(part)
            con.print(summary(report, worst))
            tries = what_to_try(report)
            if tries is not None:
                con.print(tries)
            if report.gates is not None:
                con.print(gates_section(report.gates))
        con.rule(style="muted")
        con.print(runs_table(mr))
        if mr.fix is not None:
            print_fix(mr, con)
    if mr.gated:
        for name, report in mr.runs:
            if report.gates is not None:
                con.print(Text.assemble(f"run {name}: ", verdict(report.gates)), soft_wrap=True)
        ok = mr.passed
        line = verdict_line(mr)
        con.print(Text(line, style="verdict.pass" if ok else "verdict.fail"), soft_wrap=True)
    if mr.fix is not None:  # the fix's verdict: the verifying audit's (qaudit fix's exit code)
        from qaudit.renderers.fixsection import parts

        p = parts(mr)
        con.print(Text(p.verdict, style={True: "verdict.pass", False: "verdict.fail"}.get(p.passed)), soft_wrap=True)


def print_fix(mr, con: Console) -> None:
    """The "Fix" section: the changes, the outputs before -> after, the trail, the budget and the files."""
    from qaudit.renderers.fixsection import HEADING, parts

    p = parts(mr)
    con.rule(Text(HEADING, style="head"), align="left")
    for part in p.tables:
        t = Table(title=part.title, title_justify="left", header_style="head")
        for col, a in zip(part.header, part.align, strict=True):
            t.add_column(col, justify="right" if a == "r" else "left", overflow="fold")
        for row in part.rows:
            t.add_row(*map(Text, row))
        con.print(t)
        if part.more:
            con.print(Text(part.more, style="muted"), soft_wrap=True)
    for line in p.lines:
        con.print(Text(line), soft_wrap=True)


RENDERER = TerminalRenderer()
