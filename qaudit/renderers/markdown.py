"""A Markdown summary of an audit and its gates, for CI job summaries (pure; imports no onnxruntime).

GitHub Actions: append it to ``$GITHUB_STEP_SUMMARY``; GitLab: attach it as
an artifact or post it to the merge request. Sections: the verdict, what was
audited, the failing gates, the worst layers (failing layers first), the model
outputs, the calibration trials and the runtimes (when measured), the baseline
comparison, and every check in a collapsed block.
"""

from __future__ import annotations

import re

from qaudit.options import describe_calibration
from qaudit.renderers import numbers as num
from qaudit.renderers import runtimes as rts
from qaudit.renderers import trials as tr
from qaudit.renderers.base import accept, data_line, decomposition, override_label, with_gates
from qaudit.renderers.checks import words
from qaudit.report import GateCheck, GateResult

#: failing checks listed in full; the rest are counted (the JSON report has them all)
MAX_FAILURES = 50
#: checks listed in the collapsed "all checks" block
MAX_CHECKS = 500


def code(text: str, cell: bool = True) -> str:
    """``text`` as an inline code span; ``cell``: inside a table cell (``|`` escaped, as GFM tables need;
    elsewhere the backslash would show)."""
    text = str(text).replace("\n", " ").replace("\r", " ")
    if cell:
        text = text.replace("|", "\\|")
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


#: what can open markup that does something inside a line of text: a link or an image (``[``), an
#: HTML tag (``<``), an entity (``&``), a code span, a table cell, and the backslash itself
_MARKUP = re.compile(r"([\\`\[\]<|&])")


def text(value) -> str:
    """``value`` as plain Markdown text: every character that could open a link, an image, an HTML
    tag, an entity, a code span or a table cell backslash-escaped; newlines as spaces."""
    return _MARKUP.sub(r"\\\1", str(value)).replace("\n", " ").replace("\r", " ")


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A GFM table; ``align`` has one letter per column: l(eft), r(ight), c(enter)."""
    rule = [{"l": "---", "r": "---:", "c": ":---:"}[a] for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _check_row(c: GateCheck) -> list[str]:
    w = words(c)
    return [
        code(w.gate),
        f"{w.scope} {code(w.subject)}" if c.subject else w.subject,
        code(w.metric),
        w.measured,
        w.relation,
        w.threshold,
        code(w.glob) if w.glob else "",
        text(w.note),
    ]


_CHECK_HEADER = ["gate", "subject", "metric", "measured", "", "threshold", "glob", "note"]
_CHECK_ALIGN = "lllrcrll"


def _what_to_try(report) -> list[str]:
    """The "what to try" section (nothing when the report shows no cause)."""
    from qaudit.remedy import causes

    shown, more = causes.lines(report)
    if not shown:
        return []
    out = ["", f"### {causes.HEADING}", "", text(causes.INTRO[0].upper() + causes.INTRO[1:]) + ".", ""]
    out += [f"{i}. {text(line)} Evidence: {text(causes.evidence_text(c))}." for i, (c, line) in enumerate(shown, 1)]
    if more:
        out += ["", f"… and {more} more in the JSON report (`causes`)."]
    return out


def _fix(mr) -> list[str]:
    """The "Fix" section of a fix's before/after report (:mod:`qaudit.renderers.fixsection`)."""
    from qaudit.renderers.fixsection import HEADING, parts

    p = parts(mr)
    mark = {True: "✅ ", False: "❌ "}.get(p.passed, "")
    out = ["", f"### {HEADING}", "", f"**{mark}{text(p.verdict)}**"]
    for part in p.tables:
        out += ["", f"#### {text(part.title)}", ""]
        out += _table([text(h) for h in part.header], [[text(c) for c in row] for row in part.rows], part.align)
        if part.more:
            out += ["", text(part.more)]
    out += [""] + [f"- {text(line)}" for line in p.lines]
    return out


def _runtimes(rt) -> list[str]:
    """The "Runtimes" section (``--runtimes``): the outputs in each runtime, the first divergent layers,
    each runtime, and the per-layer table in a collapsed block (:data:`MAX_CHECKS` rows at most)."""
    out = ["", "### Runtimes", "", text(rts.outputs_title(rt)) + ".", ""]
    header = [text(h) for h in rts.output_header(rt)]
    out += _table(
        header, [[code(r[0]) if r[0] else "", code(r[1]), *r[2:]] for r in rts.output_rows(rt)], "ll" + "r" * 5
    )
    out += ["", *(f"- {text(line)}" for line in rts.summary_lines(rt))]
    rows = rts.layer_rows(rt)
    if rows:
        out += ["", f"<details><summary>{text(rts.LAYERS_TITLE)}: {len(rows)} layers</summary>", ""]
        out += _table(
            [text(h) for h in rts.layer_header(rt)],
            [
                [code(lr.name), code(lr.op_type), *cells, *(v + (" ◀" if d else "") for v, d in agree)]
                for lr, cells, agree in rows[:MAX_CHECKS]
            ],
            "ll" + "r" * (len(rt.names) + len(rts.pairs(rt))),
        )
        if len(rows) > MAX_CHECKS:
            out += ["", f"… and {len(rows) - MAX_CHECKS} more in the JSON report (`runtimes.layers`)."]
        out += ["", "◀: the pair's first layer below the tolerance.", "", "</details>"]
    return out


class MarkdownRenderer:
    """``render(report, *, gates=None, worst=5) -> str``: the Markdown summary of the gate verdict
    (``gates``, default ``report.gates``) and the ``worst`` layers, in the sections the module docstring lists."""

    name = "markdown"
    subjects = frozenset({"report", "runs"})

    def render(self, subject, *, gates: GateResult | None = None, worst: int = 5) -> str:
        if accept(self, subject, gates) == "runs":
            return self._runs(subject, worst)
        report = with_gates(subject, gates)
        result = report.gates
        s, d, m = report.settings, report.data, report.model
        out: list[str] = []
        if result is None:
            out.append("## qaudit: no gates configured")
        elif result.passed:
            out.append(f"## qaudit: ✅ PASS — {len(result.checks)} gate checks passed")
        else:
            out.append(f"## qaudit: ❌ FAIL — {len(result.failures)} of {len(result.checks)} gate checks failed")
        out.append("")
        out.append(
            f"Model {code(m.get('path'), cell=False)} (sha256 {code(str(m.get('sha256'))[:12], cell=False)}), "
            f"{text(str(s.get('format', '')).upper())} activations {text(s.get('activation_type'))}, "
            f"weights {text(s.get('weight_type'))} "
            f"{'per-channel' if s.get('per_channel') else 'per-tensor'}, "
            + (
                f"quantized elsewhere ({code((m.get('quantized') or {}).get('path'), cell=False)}), calibration unknown; "
                if m.get("quantized")
                else f"{text(describe_calibration(s))}; "
            )
            + f"{text(d.get('n_calib'))} calibration / {text(d.get('n_eval'))} "
            f"{'calibration' if d.get('eval_is_calib') else 'evaluation'} "
            f"samples; qaudit {text(report.meta.get('qaudit'))}, onnxruntime {text(report.meta.get('onnxruntime'))}."
        )
        if data_line(d):  # image and WAV folders, loader scripts: how the data was read
            out += ["", text(data_line(d))]
        if result is not None and result.skipped:
            out += ["", f"{len(result.skipped)} check(s) skipped (see all checks below)."]

        if result is not None and result.failures:
            out += ["", "### Failing gates", ""]
            out += _table(_CHECK_HEADER, [_check_row(c) for c in result.failures[:MAX_FAILURES]], _CHECK_ALIGN)
            if len(result.failures) > MAX_FAILURES:
                out += ["", f"… and {len(result.failures) - MAX_FAILURES} more in the JSON report."]

        failing_layers = result.failing("layer") if result is not None else []
        by_name = {r.name: r for r in report.layers}
        rows = [by_name[n] for n in failing_layers if n in by_name]
        rows += [r for r in report.worst_layers(worst) if r.name not in failing_layers]
        if rows:
            out += ["", "### Worst layers" + (" (failing first)" if failing_layers else ""), ""]
            out += _table(
                ["#", "layer", "op", "SQNR dB", "QMSE", "clip %", "iso clip/grid %", "weight SQNR dB", "gate"],
                [
                    [
                        str(r.index),
                        code(r.name) + (f" {code(override_label(r))}" if override_label(r) else ""),
                        code(r.op_type),
                        num.db(r.sqnr_db),
                        num.mse(r.qmse),
                        num.pct(r.clip_fraction),
                        decomposition(r),
                        num.db(r.w_sqnr_db),
                        "❌" if r.name in failing_layers else "",
                    ]
                    for r in rows
                ],
                "rllrrrrrc",
            )
        out += _what_to_try(report)

        failing_outputs = set(result.failing("output")) if result is not None else set()
        out += ["", "### Model outputs", ""]
        out += _table(
            ["output", *num.OUTPUT_HEADERS, "gate"],
            [
                [
                    code(o.name),
                    *num.output_cells(o),
                    "❌" if o.name in failing_outputs else "",
                ]
                for o in report.outputs
            ],
            "ll" + "r" * (len(num.OUTPUT_HEADERS) - 1) + "c",
        )
        if report.trials:
            out += ["", "### Calibration trials", "", text(tr.heading(report.trials)) + ".", ""]
            out += _table(
                ["output", *tr.OUTPUT_TITLES],
                [[code(o.name), *map(text, tr.output_cells(report.trials, o.name))] for o in report.outputs],
                "l" + "r" * len(tr.OUTPUT_TITLES),
            )
            out += [""] + [f"- {text(n)}" for n in report.trials.get("notes", ())]
        if report.runtimes is not None:
            out += _runtimes(report.runtimes)

        if result is not None and result.baseline is not None:
            b = result.baseline
            out += ["", "### Baseline", ""]
            out.append(
                f"Compared with {code(b.get('path') or '(in memory)', cell=False)}: "
                f"model sha256 {code(str(b.get('model_sha256'))[:12], cell=False)}, "
                f"qaudit {text(b.get('qaudit'))}, created {text(b.get('created'))}."
            )
            for label, names in (
                ("Layers added", result.added_layers),
                ("Layers removed", result.removed_layers),
                ("Outputs added", result.added_outputs),
                ("Outputs removed", result.removed_outputs),
            ):
                out.append(f"- {label}: " + (", ".join(code(n, cell=False) for n in names) if names else "none"))

        if result is not None and result.notes:
            out += ["", "### Notes", ""]
            out += [f"- {text(n)}" for n in result.notes]

        if result is not None and result.checks:
            shown = result.checks[:MAX_CHECKS]
            out += ["", f"<details><summary>All {len(result.checks)} checks</summary>", ""]
            out += _table(["status", *_CHECK_HEADER], [[c.status, *_check_row(c)] for c in shown], "l" + _CHECK_ALIGN)
            if len(result.checks) > MAX_CHECKS:
                out += ["", f"… and {len(result.checks) - MAX_CHECKS} more in the JSON report."]
            out += ["", "</details>"]
        return "\n".join(out) + "\n"

    def _runs(self, mr, worst: int) -> str:
        """The verdict naming the failing runs, the runs side by side, then a section per run
        (a single report's summary, one heading level down)."""
        from qaudit.runs import summary_rows, verdict_line

        if mr.fix is not None:  # a fix's verdict is the verifying audit's
            from qaudit.renderers.fixsection import parts

            p = parts(mr)
            out = [f"## qaudit { ({True: '✅ ', False: '❌ '}.get(p.passed, '')) }{text(p.verdict)}"]
        elif not mr.gated:
            out = [f"## qaudit: {len(mr.runs)} runs, no gates configured"]
        elif mr.passed:
            out = [f"## qaudit: ✅ PASS — every run passes ({text(', '.join(mr.names))})"]
        else:
            out = [f"## qaudit: ❌ FAIL — {text(verdict_line(mr).removeprefix('gates: FAIL (').removesuffix(')'))}"]
        out += ["", "### Runs side by side", ""]
        rows = summary_rows(mr)
        trials = any("trials_output" in row for row in rows)
        out += _table(
            [
                "run",
                "calibration",
                "worst layer",
                "worst layer SQNR dB",
                "output SQNR dB",
                "QCE",
                "acc drop %",
                "gates",
                *(["output SQNR trials", "paired difference (same subsets)"] if trials else []),
            ],
            [
                [
                    code(row["run"]),
                    text(describe_calibration(r.settings) if row["method"] else "given"),
                    code(row["worst_layer"]) if row["worst_layer"] else num.MISSING,
                    num.db(row["worst_layer_sqnr_db"]),
                    num.db(row["output_sqnr_db"]),
                    num.nats(row["qce"]),
                    num.points(row["acc_drop_pct"]),
                    {"pass": "✅", "fail": "❌"}.get(row["verdict"], "not gated"),
                    *(map(text, tr.run_cells(row, mr.names[0])) if trials else []),
                ]
                for (_, r), row in zip(mr.runs, rows, strict=True)
            ],
            "lllrrrrc" + ("rr" if trials else ""),
        )
        if mr.fix is not None:
            out += _fix(mr)
        for name, report in mr.runs:
            section = self.render(report, worst=worst).splitlines()
            section = ["#" + line if line.startswith("##") else line for line in section]
            section[0] = section[0].replace("### qaudit:", f"### run {code(name, cell=False)}:", 1)
            out += ["", *section]
        return "\n".join(out) + "\n"


RENDERER = MarkdownRenderer()
