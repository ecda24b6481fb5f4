"""Self-contained HTML rendering of one or more :class:`~qaudit.report.Report`\\ s.

The ``html`` renderer (:data:`RENDERER`) renders a report, several labelled
reports ``[(label, report), ...]`` or a comparison (:mod:`qaudit.renderers.compare_html`)
as one HTML document: header
(model, sha256, settings, data, versions, gate verdict), output metrics, the
layerwise plots (inline SVG from :mod:`qaudit.renderers.svgplot`; several reports are
overlaid on the same axes with a legend), histograms of the worst layers, and
the sortable per-layer table with the unmatched tensors.

The page needs no network: styles and the one small script are inline, and a
Content-Security-Policy forbids loading anything. It is a pure function of the
reports (no clock, no randomness), so rendering a saved JSON report gives the
same bytes as rendering the report during the audit. Like every renderer it
imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from pathlib import PurePath

from qaudit import __version__, trials
from qaudit.renderers import numbers as num
from qaudit.renderers import trials as tr
from qaudit.renderers.base import accept, data_line, override_label, with_gates
from qaudit.renderers.checks import counts, sentence
from qaudit.renderers.svgplot import DASHES, MARKERS, PALETTE, Series, VLine, histogram_plot, line_plot
from qaudit.report import LayerRow, Report

#: quantized integer range per activation dtype, for the quantization grid drawn on histograms
QRANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}

ISOLATED_MISSING = "isolated: not measured in this report"


def _f(v) -> float | None:
    """A report number as a float: ``None`` when absent or NaN; infinities are kept."""
    if v is None or isinstance(v, bool):
        return None
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    v = float(v)
    return None if math.isnan(v) else v


def default_label(report: Report) -> str:
    """The label a report gets in legends: its model's file name."""
    return PurePath(str(report.model.get("path", "model"))).name or "model"


# ------------------------------------------------------------------ layerwise plots


def _enc_range(r: LayerRow):
    q_min, q_max = _f(r.q_min), _f(r.q_max)
    return None if q_min is None or q_max is None else q_max - q_min


def _isolated(r: LayerRow):
    return getattr(r, "sqnr_isolated_db", None)


#: (plot id, title, y label, [(series name, value of a row)], scale)
#: scale: "linear", "log", "auto" (log when the positive values span more than two decades),
#: "fraction" (always shows [0, 1]) or "zero" (linear, always shows 0)
LAYER_PLOTS: list[tuple[str, str, str, list[tuple[str, Callable[[LayerRow], object]]], str]] = [
    (
        "weight-range",
        "Weight range per layer: plain vs BN-folded",
        "weight range, max − min",
        [("plain", lambda r: r.w_range), ("BN-folded", lambda r: r.fold_w_range)],
        "auto",
    ),
    (
        "weight-precision",
        "Weight channel precision: plain vs BN-folded",
        "mean channel range / layer range (fraction)",
        [("plain", lambda r: r.w_precision), ("BN-folded", lambda r: r.fold_w_precision)],
        "fraction",
    ),
    (
        "act-range",
        "Activation range: clipped percentiles vs encoding",
        "activation range, hi − lo",
        [("clipped range a_hi − a_lo", lambda r: r.a_range), ("encoding range q_max − q_min", _enc_range)],
        "auto",
    ),
    (
        "act-precision",
        "Activation channel precision (clipped ranges)",
        "mean channel range / tensor range (fraction)",
        [("channel precision", lambda r: r.a_precision)],
        "fraction",
    ),
    (
        "sqnr",
        "Activation SQNR: accumulated vs isolated",
        "SQNR (dB)",
        [("accumulated", lambda r: r.sqnr_db), ("isolated", _isolated)],
        "linear",
    ),
    (
        "qmse",
        "Activation QMSE, accumulated (log10 scale)",
        "mean squared error (log10 scale)",
        [("QMSE", lambda r: r.qmse)],
        "log",
    ),
    (
        "decomposition",
        "Isolated error: share from clipping, and share of the grid used",
        "fraction (clipping: of the isolated squared error; grid: of the type's codes)",
        [("clip_error_share", lambda r: r.clip_error_share), ("grid_use", lambda r: r.grid_use)],
        "fraction",
    ),
    (
        "clip",
        "Clip fraction: fp32 values outside the encoding",
        "fraction of values outside [q_min, q_max]",
        [("clip fraction", lambda r: r.clip_fraction)],
        "zero",
    ),
]

XLABEL = "layer index (graph order, column # of the table)"


def _style(i_report: int, j_series: int, n_reports: int) -> dict:
    if n_reports == 1:
        return {
            "color": PALETTE[j_series % len(PALETTE)],
            "dash": DASHES[j_series % len(DASHES)],
            "marker": MARKERS[j_series % len(MARKERS)],
        }
    # later models are drawn thinner, with hollow markers, on top of the first: equal values stay visible
    return {
        "color": PALETTE[i_report % len(PALETTE)],
        "dash": DASHES[j_series % len(DASHES)],
        "marker": MARKERS[i_report % len(MARKERS)],
        "width": 3.0 if i_report == 0 else 1.6,
        "hollow": i_report > 0,
    }


def _trial_bars(report: Report, series: str) -> list:
    """The error bars of the SQNR plot's ``series`` (accumulated, isolated): min to max over the trials."""
    metric = "sqnr_isolated_db" if series == "isolated" else "sqnr_db"
    bars = []
    for r in report.layers if report.trials else ():
        s = trials.lookup(report.trials, "layers", r.name, metric)
        if s and s.get("mean") is not None:
            tip = f"layer {r.index} {r.name}, {series} over {report.trials['n']} trials: {tr.span(s, metric)} dB"
            bars.append((r.index, s["min"], s["max"], tip))
    return bars


def _layer_plot(reports, spec, x_range) -> tuple[str | None, str]:
    """(SVG or None when there is nothing to draw, the id)."""
    pid, title, ylabel, series_specs, scale = spec
    multi = len(reports) > 1
    values = [
        _f(get(r))
        for _, rep in reports
        for _, get in series_specs
        for r in rep.layers
        if _f(get(r)) is not None and math.isfinite(_f(get(r)))
    ]
    log = scale == "log"
    if scale == "auto":  # log when the positive values span more than two decades; zeros are then named, not drawn
        pos = [v for v in values if v > 0]
        log = bool(pos) and max(pos) / min(pos) > 100
    if log and "log10" not in ylabel:
        ylabel += " (log10 scale)"
        title += " (log10 scale)" if scale == "auto" else ""
    series, notes, skipped = [], [], []
    for i, (label, rep) in enumerate(reports):
        for j, (name, get) in enumerate(series_specs):
            xs, ys, tips = [], [], []
            for r in rep.layers:
                v = _f(get(r))
                if v is None:
                    continue
                if not math.isfinite(v) or (log and v <= 0):
                    skipped.append((label, name, r, v))
                    continue
                xs.append(r.index)
                ys.append(v)
                tips.append(f"layer {r.index} {r.name}: {num.sig(v, 4)}")
            if not xs and name == "isolated":
                continue
            bars = _trial_bars(rep, name) if pid == "sqnr" else []
            series.append(
                Series(
                    f"{label}: {name}" if multi else name, xs, ys, tips=tips, bars=bars, **_style(i, j, len(reports))
                )
            )
    if pid == "sqnr" and not any(_isolated(r) is not None for _, rep in reports for r in rep.layers):
        notes.append(ISOLATED_MISSING)
    if pid == "sqnr" and any(rep.trials for _, rep in reports):
        n = next(rep.trials["n"] for _, rep in reports if rep.trials)
        notes.append(f"bars: min to max over {n} calibration trials")
    if skipped:
        what = "∞ (no error)" if pid == "sqnr" else ("0 (no error)" if pid == "qmse" else "0 or less")
        lst = ", ".join(f"{(lab + ' ') if multi else ''}#{r.index}" for lab, _, r, _ in skipped[:8])
        notes.append(f"{what}, not drawn: {lst}{' …' if len(skipped) > 8 else ''}")
    if not any(s.x for s in series):
        return None, pid
    fixed = (0.0, 1.0) if scale == "fraction" else ((0.0, 0.0) if scale == "zero" else None)
    svg = line_plot(pid, title, XLABEL, ylabel, series, log_y=log, y_fixed=fixed, x_range=x_range, notes=notes)
    return svg, pid


# ------------------------------------------------------------------ histograms


def _short(name: str, n: int = 44) -> str:
    return name if len(name) <= n else name[: n // 2 - 1] + "…" + name[-(n // 2) :]


def _histogram_figure(pid: str, label: str | None, r: LayerRow) -> str:
    h = r.histogram
    head = f"{label}: " if label else ""
    title = f"{head}#{r.index} {_short(r.name)}, SQNR {num.db(r.sqnr_db)} dB"
    vlines, grid, notes = [], [], []
    q_min, q_max, scale = _f(r.q_min), _f(r.q_max), _f(r.scale)
    if q_min is not None and q_max is not None:
        vlines += [
            VLine(q_min, "clip points q_min / q_max", PALETTE[1]),
            VLine(q_max, "clip points q_min / q_max", PALETTE[1]),
        ]
    a_lo, a_hi = _f(r.a_lo), _f(r.a_hi)
    if a_lo is not None and a_hi is not None:
        vlines += [
            VLine(a_lo, "clipped range a_lo / a_hi", PALETTE[2], "5 3"),
            VLine(a_hi, "clipped range a_lo / a_hi", PALETTE[2], "5 3"),
        ]
    grid_label = ""
    if scale is not None and r.zero_point is not None and r.dtype in QRANGE:
        lo_q, hi_q = QRANGE[r.dtype]
        if hi_q - lo_q <= 4096:
            grid = [scale * (q - int(r.zero_point)) for q in range(lo_q, hi_q + 1)]
            grid_label = f"quantization grid: {hi_q - lo_q + 1} {r.dtype} levels, step {num.sig(scale)}"
        else:  # 16-bit: 65536 levels are a band at any width
            notes.append(
                f"quantization grid: {hi_q - lo_q + 1} {r.dtype} levels, step {num.sig(scale)} (too fine to draw)"
            )
    elif r.has_activation:
        notes.append("per-channel encoding: no single grid or clip points")
    caption = (
        f"Layer {r.index} <code>{escape(r.name)}</code> ({escape(r.op_type)}): fp32 values over the evaluation data, "
        f"{len(h.counts)} bins of width {num.sig(h.bin_width)}; clip fraction {num.pct(r.clip_fraction)} %."
    )
    svg = histogram_plot(
        pid,
        title,
        "fp32 activation value",
        h.lo,
        h.hi,
        h.counts,
        vlines=vlines,
        grid=grid,
        grid_label=grid_label,
        notes=notes,
    )
    return f'<figure class="hist">{svg}<figcaption>{caption}</figcaption></figure>'


# ------------------------------------------------------------------ tables


def _val(v, key: str = "") -> str:
    if v is None:
        return num.MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(_val(x) for x in v) if v else "none"
    if isinstance(v, dict):
        if key == "phase_seconds":
            return ", ".join(f"{k} {float(x):.2f} s" for k, x in v.items())
        return "; ".join(f"{k}: {_val(x)}" for k, x in v.items()) if v else "none"
    if isinstance(v, float):
        if key == "seconds":
            return f"{v:.2f} s"
        return num.sig(v, 6)
    return str(v)


def _dl(d: dict, code: Sequence[str] = ()) -> str:
    items = []
    for k, v in d.items():
        text = escape(_val(v, k))
        items.append(f"<dt>{escape(str(k))}</dt><dd>{f'<code>{text}</code>' if k in code else text}</dd>")
    return f"<dl>{''.join(items)}</dl>"


def _td(v, rule: Callable[[object], str] = num.sig) -> str:
    """A numeric cell written by ``rule`` (:mod:`qaudit.renderers.numbers`), with its exact sort key
    (JavaScript's spelling of the infinities; empty key: missing or NaN, sorted last)."""
    f = _f(v)
    key = "" if f is None else ("Infinity" if f == math.inf else ("-Infinity" if f == -math.inf else repr(f)))
    return f'<td data-v="{key}">{escape(rule(v))}</td>'


def _gates_html(report: Report) -> str:
    """The gate verdict, the failing and skipped checks (one sentence each), the thresholds and the baseline."""
    g = report.gates
    if g is None:
        return "<p class='muted'>Gates: none evaluated for this report.</p>"
    verdict, cls = ("PASS", "pass") if g.passed else ("FAIL", "fail")
    items = [f"<li>{escape(sentence(c))}</li>" for c in g.failures]
    items += [f"<li class='muted'>skipped: {escape(sentence(c))}</li>" for c in g.skipped]
    off = lambda v: "off" if v is None else v  # noqa: E731
    thresholds = {
        gate: {"default": off(t.get("default")), "overrides": {p: off(v) for p, v in t.get("overrides", {}).items()}}
        for gate, t in g.thresholds.items()
    }
    details = {
        "thresholds": thresholds,
        "skip_missing": g.skip_missing,
        "baseline": g.baseline,
        "added_layers": g.added_layers,
        "removed_layers": g.removed_layers,
        "added_outputs": g.added_outputs,
        "removed_outputs": g.removed_outputs,
        "notes": g.notes,
    }
    if g.baseline is None:
        details = {k: v for k, v in details.items() if k in ("thresholds", "skip_missing", "notes")}
    return (
        f'<p>Gates: <strong class="verdict {cls}">{verdict}</strong> {escape(counts(g))}.</p>'
        + (f'<ul class="checks">{"".join(items)}</ul>' if items else "")
        + _dl(details)
    )


def _model_card(label: str, report: Report, multi: bool) -> str:
    m, s, data = report.model, report.settings, report.data
    heading = f"<h3>{escape(label)}</h3>" if multi else ""
    fold = report.folding or {}
    folded = fold.get("folded", [])
    fold_txt = f"BatchNorm folded into {len(folded)} layer(s)" if folded else "no BatchNorm folded"
    skipped = "".join(
        f"<li>BN <code>{escape(str(x.get('bn')))}</code> not folded: {escape(str(x.get('reason')))}</li>"
        for x in fold.get("skipped", [])
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    eval_txt = (
        "the calibration data (no --eval: flatters the numbers)"
        if data.get("eval_is_calib")
        else escape(str(data.get("eval")))
    )
    summary = (
        f"<p class='lead'>{escape(str(s.get('format', '?')).upper())}, activations {escape(str(s.get('activation_type')))}, "
        f"weights {escape(str(s.get('weight_type')))} {'per-channel' if s.get('per_channel') else 'per-tensor'}; "
        + (
            f"quantized elsewhere: <code>{escape(str(m['quantized'].get('path')))}</code>; "
            if m.get("quantized")
            else f"calibrated on {escape(str(data.get('n_calib')))} samples, "
        )
        + f"measured on {escape(str(data.get('n_eval')))} samples of "
        f"{eval_txt}. Layer errors are <strong>{escape(str(s.get('error', 'accumulated')))}</strong>. {fold_txt}.</p>"
    )
    if data_line(data):  # image and WAV folders, loader scripts: how the data was read
        summary += f"<p class='muted data-line'>{escape(data_line(data))}</p>"
    return (
        f'<section class="card">{heading}{summary}{_gates_html(report)}'
        + (f'<ul class="warn">{notes}{skipped}</ul>' if notes or skipped else "")
        + '<div class="cols">'
        + f"<div><h4>Model</h4>{_dl(m, code=('path', 'sha256'))}</div>"
        + f"<div><h4>Settings used</h4>{_dl(s)}</div>"
        + f"<div><h4>Data</h4>{_dl(data, code=('calib', 'eval', 'labels'))}<h4>Versions</h4>{_dl(report.meta)}</div>"
        + "</div></section>"
    )


def _outputs_table(reports) -> str:
    multi = len(reports) > 1
    head = ["output", *num.OUTPUT_HEADERS]
    if multi:
        head = ["model"] + head
    rows = []
    for label, rep in reports:
        for o in rep.outputs:
            cells = [f'<td class="l">{escape(label)}</td>'] if multi else []
            cells += [
                f'<td class="l"><code>{escape(o.name)}</code></td>',
                f'<td class="l">{escape(o.kind or num.MISSING)}</td>',
                _td(o.qmse, num.mse),
                _td(o.sqnr_db, num.db),
                _td(o.max_abs_error, num.sig),
                _td(o.rel_error, num.sig),
                _td(o.qce, num.nats),
                _td(o.qkl, num.nats),
                _td(o.top1_agreement, num.pct),
                _td(o.acc_fp32, num.pct),
                _td(o.acc_int8, num.pct),
                _td(o.acc_drop_pct, num.points),
            ]
            rows.append(f"<tr>{''.join(cells)}</tr>")
    ths = "".join(
        f'<th scope="col"{" class=l" if h in ("model", "output", "kind") else ""}>{escape(h)}</th>' for h in head
    )
    return f'<table class="outputs"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _layer_table(tid: str, report: Report, worst: int) -> str:
    worst_names = {r.name for r in report.worst_layers(worst)}
    has_iso = any(_isolated(r) is not None for r in report.layers)
    cols = [
        ("#", "graph order"),
        ("layer", "node name; +Relu: activation fused into the layer; [bn]: BatchNorm folded"),
        ("op", "operator"),
        ("w range", "plain weights, max − min"),
        ("w range folded", "BN-folded weights, max − min"),
        ("w prec", "plain weight channel precision"),
        ("w prec folded", "BN-folded weight channel precision"),
        ("w SQNR dB", "folded fp32 weights vs the quantized weights"),
        ("act [lo, hi]", "clipped activation range (percentiles)"),
        ("act prec", "activation channel precision"),
        ("scale / zp", "activation encoding"),
        ("clip %", "share of fp32 values outside [q_min, q_max]"),
        ("SQNR dB", "accumulated error"),
    ]
    if has_iso:
        cols.append(("SQNR isolated dB", "isolated error of the layer alone"))
        cols.append(("iso clip err %", "share of the isolated squared error from values outside [q_min, q_max]"))
        cols.append(("grid use %", "share of the type's integer codes the isolated twin takes"))
    cols.append(("QMSE", "accumulated mean squared error"))
    sqnr_col = [c for c, _ in cols].index("SQNR dB")
    ths = "".join(
        f'<th scope="col"{" class=l" if c in ("layer", "op") else ""} title="{escape(t)}"><button type="button">{escape(c)}</button></th>'
        for c, t in cols
    )
    rows = []
    for r in report.layers:
        name = escape(r.name)
        if r.fused:
            name += " <span class='tag'>+" + escape("+".join(a.split("/")[-1] for a in r.fused)) + "</span>"
        if r.bn_folded:
            name += " <span class='tag'>[bn]</span>"
        if override_label(r):
            name += f" <span class='tag'>[{escape(override_label(r))}]</span>"
        is_worst = r.name in worst_names
        if is_worst:
            name += " <span class='badge'>worst</span>"
        if r.has_activation:
            act = f"[{num.sig(r.a_lo)}, {num.sig(r.a_hi)}]"
            act_key = repr(_f(r.a_range)) if _f(r.a_range) is not None else ""
            enc = f"{num.sig(r.scale)} / {r.zero_point}" if _f(r.scale) is not None else "per-channel"
            enc_key = repr(_f(r.scale)) if _f(r.scale) is not None else ""
        else:
            act, act_key, enc, enc_key = num.MISSING, "", num.MISSING, ""
        cells = [
            f'<td data-v="{r.index}">{r.index}</td>',
            f'<td class="l name">{name}</td>',
            f'<td class="l">{escape(r.op_type)}</td>',
            _td(r.w_range),
            _td(r.fold_w_range),
            _td(r.w_precision, num.frac),
            _td(r.fold_w_precision, num.frac),
            _td(r.w_sqnr_db, num.db),
            f'<td data-v="{act_key}">{escape(act)}</td>',
            _td(r.a_precision, num.frac),
            f'<td data-v="{enc_key}">{escape(enc)}</td>',
            _td(r.clip_fraction, num.pct),
            _td(r.sqnr_db, num.db),
        ]
        if has_iso:
            cells += [_td(_isolated(r), num.db), _td(r.clip_error_share, num.pct), _td(r.grid_use, num.pct)]
        cells.append(_td(r.qmse, num.mse))
        rows.append(f'<tr data-i="{r.index}"{" class=worst" if is_worst else ""}>{"".join(cells)}</tr>')
    buttons = (
        f'<p class="sortbar">Sort: <button type="button" data-table="{tid}" data-col="{sqnr_col}" data-dir="1">worst SQNR first</button> '
        f'<button type="button" data-table="{tid}" data-col="0" data-dir="1">graph order</button> '
        "<span class='muted'>or click a column header (again to reverse).</span></p>"
    )
    return (
        buttons
        + f'<div class="scroll"><table class="layers sortable" id="{tid}"><thead><tr>{ths}</tr></thead>'
        + f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


KIND_TEXT = {
    "fused": "a Relu/Clip folded into the layer's encoding",
    "excluded": "--exclude",
    "float-op": "an op ORT does not quantize",
    "removed": "producer removed from the quantized graph",
    "not-quantized": "no QuantizeLinear inserted",
}


def _what_to_try(reports) -> str:
    """The "what to try" section of each report that shows a cause ("" when none does)."""
    from qaudit.remedy import causes

    parts = []
    for label, rep in reports:
        shown, more = causes.lines(rep)
        if not shown:
            continue
        items = "".join(
            f"<li>{escape(line)} <span class='muted'>Evidence: {escape(causes.evidence_text(c))}.</span></li>"
            for c, line in shown
        )
        more_txt = f"<p class='muted'>… and {more} more in the JSON report (<code>causes</code>).</p>" if more else ""
        head = f"<h3>{escape(label)}</h3>" if len(reports) > 1 else ""
        parts.append(f"{head}<ol class='causes'>{items}</ol>{more_txt}")
    if not parts:
        return ""
    intro = causes.INTRO[0].upper() + causes.INTRO[1:]
    return f'<h2 id="causes">{causes.HEADING}</h2>\n<p>{escape(intro)}.</p>{"".join(parts)}\n'


def _unmatched(report: Report) -> str:
    if not report.unmatched:
        return "<p class='ok'>Unmatched tensors: none; every fp32 float tensor has a quantized twin.</p>"
    rows = "".join(
        f'<tr><td class="l"><code>{escape(u.tensor)}</code></td><td class="l"><code>{escape(u.producer)}</code></td>'
        f'<td class="l">{escape(u.op_type)}</td><td class="l" title="{escape(KIND_TEXT.get(u.kind, ""))}">{escape(u.kind)}</td>'
        f'<td class="l reason">{escape(u.reason)}</td></tr>'
        for u in report.unmatched
    )
    return (
        f"<p>Unmatched tensors: {len(report.unmatched)} fp32 tensor(s) without a quantized twin.</p>"
        '<div class="scroll"><table class="unmatched"><thead><tr><th scope="col" class=l>tensor</th>'
        '<th scope="col" class=l>producer</th><th scope="col" class=l>op</th><th scope="col" class=l>kind</th>'
        f'<th scope="col" class=l>reason</th></tr></thead><tbody>{rows}</tbody></table></div>'
    )


# ------------------------------------------------------------------ page

CSS = """
:root{color-scheme:light}
body{font:14px/1.45 "DejaVu Sans","Liberation Sans",system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fff}
header{background:#f4f6f8;border-bottom:1px solid #d8dde3;padding:14px 0 10px}
main,.hin{max-width:1240px;margin:0 auto;padding:0 14px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
h3{font-size:16px;margin:12px 0 6px}h4{font-size:13px;margin:10px 0 4px;text-transform:uppercase;letter-spacing:.04em;color:#444}
nav a{margin-right:14px;color:#0b5394}code{font-family:"DejaVu Sans Mono",monospace;font-size:12.5px;word-break:break-all}
.card{border:1px solid #d8dde3;border-radius:6px;padding:8px 12px;margin:10px 0}
.cols{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:14px}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:1px 10px;margin:0;font-size:13px}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
.lead{margin:4px 0}.muted{color:#555}.ok{color:#1f5f3a}.warn{color:#7a4a00}
.verdict{padding:1px 8px;border-radius:3px;color:#fff}.verdict.pass{background:#00704a}.verdict.fail{background:#b03000}
.plots,.hists{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px}
figure{margin:0;border:1px solid #e1e4e8;border-radius:6px;padding:4px;min-width:0}
figcaption{font-size:12.5px;color:#333;padding:2px 6px 4px}
svg.plot{width:100%;height:auto;display:block}
svg.plot text{fill:#1b1b1b}svg.plot .ptitle{font-weight:700;font-size:14px}svg.plot .alabel{font-size:12.5px}
svg.plot .note{font-style:italic;fill:#444}svg.plot .grid line{stroke:#e4e4e4}svg.plot .grid line.minor{stroke:#f3f3f3}
svg.plot .axes{fill:none;stroke:#777}svg.plot path.line{fill:none;stroke-width:2}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{padding:3px 5px;border-bottom:1px solid #e6e6e6;text-align:right;vertical-align:top;white-space:nowrap}
th{background:#f4f6f8;position:sticky;top:0;white-space:normal;vertical-align:bottom}.l{text-align:left}
td.name,td.reason{white-space:normal;overflow-wrap:anywhere;min-width:12em}
th button{font:inherit;font-weight:700;background:none;border:0;padding:0;cursor:pointer;color:inherit}
th[aria-sort=ascending] button::after{content:" ▲"}th[aria-sort=descending] button::after{content:" ▼"}
tr.worst td{background:#fdeee6}.badge{font-size:11px;border:1px solid #b03000;color:#b03000;border-radius:3px;padding:0 3px}
.tag{color:#555;font-size:12px}.sortbar button{font:inherit;font-size:13px;padding:1px 8px}
footer{max-width:1240px;margin:30px auto 20px;padding:0 14px;color:#555;font-size:12.5px}
@media (max-width:1000px){.plots,.hists,.cols{grid-template-columns:minmax(0,1fr)}}
"""

#: First thing in <head>: count script errors and console.error calls into
#: <body data-js-errors>, so a headless browser check can read them from the DOM.
JS_ERRORS = (
    "(function(){var n=0;function mark(){n++;if(document.body)document.body.setAttribute('data-js-errors',String(n));}"
    "window.addEventListener('error',mark,true);window.addEventListener('unhandledrejection',mark);"
    "var ce=console.error;console.error=function(){mark();return ce.apply(console,arguments);};})();"
)

#: Table sorting: header buttons and the "worst SQNR first" / "graph order" buttons.
JS_SORT = """(function(){
function key(td){var v=td.getAttribute('data-v');if(v===null)return td.textContent.toLowerCase();if(v==='')return null;return parseFloat(v);}
function sortBy(t,col,dir){var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
rows.sort(function(p,q){var x=key(p.cells[col]),y=key(q.cells[col]),c;
if(x===null||y===null){c=(x===null)-(y===null);}else if(typeof x==='number'&&typeof y==='number'){c=dir*(x<y?-1:x>y?1:0);}else{c=dir*String(x).localeCompare(String(y));}
return c||(+p.getAttribute('data-i'))-(+q.getAttribute('data-i'));});
rows.forEach(function(r){b.appendChild(r);});
Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){if(i===col)th.setAttribute('aria-sort',dir>0?'ascending':'descending');else th.removeAttribute('aria-sort');});}
document.querySelectorAll('table.sortable').forEach(function(t){Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){
var b=th.querySelector('button');if(b)b.addEventListener('click',function(){sortBy(t,i,th.getAttribute('aria-sort')==='ascending'?-1:1);});});});
document.querySelectorAll('button[data-table]').forEach(function(b){b.addEventListener('click',function(){
sortBy(document.getElementById(b.getAttribute('data-table')),+b.getAttribute('data-col'),+b.getAttribute('data-dir'));});});
document.body.setAttribute('data-ready','1');})();"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def plot_ids(reports: Sequence[tuple[str, Report]], worst: int = 3) -> list[str]:
    """Ids of the plots the page of these reports draws, in page order (for tests and links)."""
    x_range = _x_range(reports)
    ids = [pid for svg, pid in (_layer_plot(reports, spec, x_range) for spec in LAYER_PLOTS) if svg]
    for i, (_, rep) in enumerate(reports):
        ids += [f"hist-{i}-{r.index}" for r in rep.worst_layers(worst) if r.histogram is not None]
    return ids


def _trials_section(reports) -> str:
    """The outputs over the calibration trials (mean ± std [min, max]) and each trial's files."""
    parts = []
    for label, rep in reports:
        t = rep.trials
        if not t:
            continue
        head = "".join(
            f'<th scope="col"{" class=l" if h == "output" else ""}>{escape(h)}</th>'
            for h in ["output", *tr.OUTPUT_TITLES]
        )
        rows = "".join(
            f'<tr><td class="l"><code>{escape(o.name)}</code></td>'
            + "".join(f"<td>{escape(c)}</td>" for c in tr.output_cells(t, o.name))
            + "</tr>"
            for o in rep.outputs
        )
        notes = "".join(f"<li>{escape(n)}</li>" for n in t.get("notes", ()))
        subsets = "".join(f"<li>{escape(x)}</li>" for x in tr.subset_lines(t))
        parts.append(
            (f"<h3>{escape(label)}</h3>" if len(reports) > 1 else "")
            + f"<p>{escape(tr.heading(t))}. The layer plot's SQNR bars span min to max.</p>"
            + f'<table class="outputs"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            + (f"<ul class='muted'>{notes}</ul>" if notes else "")
            + f"<details><summary>The files of each trial</summary><ul>{subsets}</ul></details>"
        )
    return '<h2 id="trials">Calibration trials</h2>' + "".join(parts) if parts else ""


def _x_range(reports) -> tuple[int, int]:
    idx = [r.index for _, rep in reports for r in rep.layers]
    return (min(idx, default=0), max(idx, default=1))


def _runtime_series(rows, values, names) -> list:
    """One plot line per name: ``values(layer)[name]`` over the layer index, gaps where not finite."""
    from qaudit.renderers.svgplot import DASHES, MARKERS, PALETTE, Series

    out = []
    for j, n in enumerate(names):
        pts = [(x, v) for x, lr in rows if x is not None and (v := _f(values(lr).get(n))) is not None]
        pts = [(x, v) for x, v in pts if math.isfinite(v)]
        out.append(
            Series(
                n,
                [x for x, _ in pts],
                [v for _, v in pts],
                PALETTE[j % len(PALETTE)],
                DASHES[j % len(DASHES)],
                MARKERS[j % len(MARKERS)],
                tips=[f"#{x}: {num.db(v)} dB" for x, v in pts],
            )
        )
    return out


def _runtimes_html(reports) -> str:
    """The ``runtimes`` section of each report that has one (``--runtimes``): one plot line per runtime
    (each layer's SQNR against fp32), one per pair with the first runtime (their agreement), and the
    first divergent layers; rows not measurable in a runtime leave a gap in its line."""
    from qaudit.renderers.svgplot import line_plot

    parts = []
    for i, (label, rep) in enumerate(reports):
        rt = rep.runtimes
        if rt is None:
            continue
        index = {(r.name, r.tensor): r.index for r in rep.layers}
        rows = [(index.get((lr.name, lr.tensor)), lr) for lr in rt.layers]

        pairs = [f"{rt.names[0]} vs {n}" for n in rt.names[1:]]
        sq = line_plot(
            f"rt-sqnr-{i}",
            "SQNR in each runtime",
            "layer",
            "SQNR dB",
            _runtime_series(rows, lambda lr: lr.sqnr_db, rt.names),
        )
        agree_series = _runtime_series(rows, lambda lr: lr.agreement_db, pairs)
        ag = (
            line_plot(f"rt-agree-{i}", "Agreement between runtimes", "layer", "SQNR dB", agree_series)
            if any(s.x for s in agree_series)
            else "<p class='muted'>No pair of runtimes has a measured layer.</p>"
        )
        items = [
            f"<li>{escape(d.pair)}: first diverges at {escape(d.layer)} ({escape(d.op_type)}, "
            f"{escape(d.encoding or 'float')}), {num.db(d.agreement_db)} dB &lt; {num.db(rt.tolerance_db)} dB</li>"
            for d in rt.divergences
        ]
        for info in rt.runtimes:
            why = info.reason or info.layers_reason
            what = f"{escape(info.name)}: {escape(info.engine)} {escape(info.version)} on {escape(info.device)}"
            items.append(f"<li>{what}" + (f"; not measurable: {escape(why)}" if why else "") + "</li>")
        head = f"<h3>{escape(label)}</h3>" if len(reports) > 1 else ""
        parts.append(
            f'{head}<div class="plots"><figure class="layerplot">{sq}</figure>'
            f'<figure class="layerplot">{ag}</figure></div><ul>{"".join(items)}</ul>'
        )
    if not parts:
        return ""
    return '<h2 id="runtimes">Runtimes</h2>\n' + "".join(parts)


def _fix_html(mr) -> str:
    """The "Fix" section of a fix's before/after report (:mod:`qaudit.renderers.fixsection`)."""
    from qaudit.renderers.fixsection import HEADING, parts

    p = parts(mr)
    mark = {True: "pass", False: "fail"}.get(p.passed, "")
    out = [
        f'<h2 id="fix">{escape(HEADING)}</h2>',
        f'<p><strong class="verdict {mark}">{escape(p.verdict)}</strong></p>',
    ]
    for part in p.tables:
        # left-aligned columns "l", the long ones wrapping ("reason")
        cls = [
            (' class="l reason"' if h in ("change", "why", "set") else ' class="l"') if a == "l" else ""
            for h, a in zip(part.header, part.align, strict=True)
        ]
        head = "".join(f"<th{c}>{escape(h)}</th>" for h, c in zip(part.header, cls, strict=True))
        rows = "".join(
            "<tr>" + "".join(f"<td{k}>{escape(c)}</td>" for c, k in zip(row, cls, strict=True)) + "</tr>"
            for row in part.rows
        )
        out.append(
            f'<h3>{escape(part.title)}</h3><div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
        )
        if part.more:
            out.append(f"<p class='muted'>{escape(part.more)}</p>")
    out.append("<ul>" + "".join(f"<li>{escape(line)}</li>" for line in p.lines) + "</ul>")
    return "\n".join(out) + "\n"


def _page(reports: Sequence[tuple[str, Report]], worst: int, fix: str = "") -> str:
    """One self-contained HTML page for ``[(label, report), ...]`` (at least one); several are overlaid.
    ``fix``: the "Fix" section (:func:`_fix_html`), after the summary."""
    reports = list(reports)
    multi = len(reports) > 1
    x_range = _x_range(reports)
    labels = [label for label, _ in reports]
    title = "qaudit: " + (" vs ".join(labels) if multi else labels[0])

    figs, missing = [], []
    for spec in LAYER_PLOTS:
        svg, pid = _layer_plot(reports, spec, x_range)
        if svg is None:
            missing.append(spec[1])
        else:
            figs.append(f'<figure class="layerplot">{svg}</figure>')
    missing_html = (
        f"<p class='muted'>Not drawn (no layer has these values): {escape('; '.join(missing))}.</p>" if missing else ""
    )

    hist_parts = []
    for i, (label, rep) in enumerate(reports):
        w = rep.worst_layers(worst)
        with_h = [r for r in w if r.histogram is not None]
        if multi:
            hist_parts.append(f"<h3>{escape(label)}</h3>")
        if not w:
            hist_parts.append("<p class='muted'>No layer has a finite SQNR: no worst layers.</p>")
        elif not with_h:
            hist_parts.append(
                "<p class='muted'>No histograms in this report (written by a qaudit before histograms were added): "
                "re-run the audit to get them.</p>"
            )
        else:
            hist_parts.append(
                '<div class="hists">'
                + "".join(_histogram_figure(f"hist-{i}-{r.index}", label if multi else None, r) for r in with_h)
                + "</div>"
            )

    cards = "".join(_model_card(label, rep, multi) for label, rep in reports)
    tries = _what_to_try(reports)
    layer_sections = []
    for i, (label, rep) in enumerate(reports):
        head = f"<h3>{escape(label)}</h3>" if multi else ""
        worst_txt = "; ".join(f"#{r.index} {escape(r.name)} {num.db(r.sqnr_db)} dB" for r in rep.worst_layers(worst))
        layer_sections.append(
            f"{head}<p>{len(rep.layers)} rows in graph order. Worst {min(worst, len(rep.layers))} by accumulated SQNR "
            f"(highlighted): {worst_txt or 'none'}.</p>{_layer_table(f'layers-{i}', rep, worst)}{_unmatched(rep)}"
        )
    legend_txt = (
        "Each model has its own colour and marker; each quantity its own line style."
        if multi
        else "Each quantity has its own colour, line style and marker."
    )
    created = "; ".join(
        (f"{escape(label)}: " if multi else "") + escape(str(rep.meta.get("created", "?"))) for label, rep in reports
    )

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="qaudit {escape(__version__)}">
<title>{escape(title)}</title>
<link rel="icon" href="data:,">
<script>{JS_ERRORS}</script>
<style>{CSS}</style>
</head>
<body data-js-errors="0">
<header><div class="hin">
<h1>Quantization audit: {escape(" vs ".join(labels))}</h1>
<nav aria-label="sections"><a href="#summary">Summary</a>{'<a href="#fix">Fix</a>' if fix else ""}{'<a href="#causes">What to try</a>' if tries else ""}<a href="#outputs">Outputs</a><a href="#plots">Layer plots</a><a href="#histograms">Worst layers</a><a href="#layers">Layer table</a></nav>
</div></header>
<main>
<h2 id="summary">Summary</h2>
{cards}
{fix}{tries}<h2 id="outputs">Model outputs (fp32 vs quantized)</h2>
{_outputs_table(reports)}
{_trials_section(reports)}
<h2 id="plots">Layerwise plots</h2>
<p>Over the layer index of the table below (after Yun, 2022). {legend_txt} Hover a point for the layer name and value. SQNR and QMSE are accumulated errors.</p>
<div class="plots">{"".join(figs)}</div>
{missing_html}
{_runtimes_html(reports)}
<h2 id="histograms">Worst layers: fp32 values, quantization grid and clip points</h2>
{"".join(hist_parts)}
<h2 id="layers">Per-layer table</h2>
{"".join(layer_sections)}
</main>
<footer>Rendered by qaudit {escape(__version__)} from the report(s) created {created}. Self-contained page: it loads nothing; its only script sorts the tables.</footer>
<script>{JS_SORT}</script>
</body>
</html>
"""


class HtmlRenderer:
    """``render(subject, *, gates=None, worst=3) -> str``: one self-contained HTML page.

    A report is labelled with its model's file name (:func:`default_label`) and
    shows ``gates`` (default: its own verdict); several labelled reports are
    overlaid on the same plots, as are the runs of a multi-run report (labelled with their
    names); a comparison overlays its models aligned by the
    comparison (:mod:`qaudit.renderers.compare_html`). ``worst``: how many worst
    layers get a histogram.
    """

    name = "html"
    subjects = frozenset({"report", "reports", "comparison", "runs"})

    def render(self, subject, *, gates=None, worst: int = 3) -> str:
        kind = accept(self, subject, gates)
        if kind == "comparison":
            from qaudit.renderers.compare_html import comparison_page

            return comparison_page(subject, worst)
        if kind == "report":
            subject = [(default_label(subject), with_gates(subject, gates))]
        elif kind == "runs":  # the runs of one audit overlaid, each labelled with its name (the method)
            fix = _fix_html(subject) if subject.fix is not None else ""
            return _page(list(subject.runs), worst, fix)
        return _page(subject, worst)


RENDERER = HtmlRenderer()
