"""The ``runtimes`` section's cells and lines (``--runtimes``), shared by the terminal, Markdown and
JUnit renderers (the HTML report plots the same numbers).

Every number is the report's (:class:`qaudit.report.Runtimes`), written by :mod:`numbers`' rules;
a row that could not be measured in a runtime shows :data:`NOT_MEASURABLE` there (the reason is in
the JSON report). Agreements are against the first runtime listed.
"""

from __future__ import annotations

from qaudit.renderers import numbers as num

#: a runtime's cell where the row could not be measured there (the reason is in the JSON report)
NOT_MEASURABLE = "n/m"
LAYERS_TITLE = "Per-layer SQNR in each runtime, graph order (agree: SQNR of one runtime's tensor against the other's)"


def pairs(rt) -> list[str]:
    """The pairs shown: the first runtime with each other one (every pair is in the JSON report)."""
    names = rt.names
    return [f"{names[0]} vs {n}" for n in names[1:]]


def layer_header(rt) -> list[str]:
    return ["layer", "op", *(f"{n} dB" for n in rt.names), *(f"agree {p}" for p in pairs(rt))]


def layer_rows(rt) -> list[tuple[object, list[str], list[tuple[str, bool]]]]:
    """``(layer row, SQNR cell per runtime, (agreement cell, diverges here) per pair)`` in graph order."""
    diverging = {(d.pair, d.layer) for d in rt.divergences}
    out = []
    for lr in rt.layers:
        cells = [NOT_MEASURABLE if n in lr.not_measurable else num.db(lr.sqnr_db.get(n)) for n in rt.names]
        agree = [
            (num.db(lr.agreement_db.get(p)) if p in lr.agreement_db else NOT_MEASURABLE, (p, lr.name) in diverging)
            for p in pairs(rt)
        ]
        out.append((lr, cells, agree))
    return out


def outputs_title(rt) -> str:
    return f"Model outputs in each runtime (SQNR against fp32; agree: against {rt.names[0]})"


def output_header(rt) -> list[str]:
    return ["output", "runtime", "SQNR dB", "max |e|", "top-1", f"agree {rt.names[0]} dB", "max |diff|"]


def output_rows(rt) -> list[list[str]]:
    """One row per output and runtime (the output named on its first); the first runtime's agreement
    cells are empty."""
    names, rows = rt.names, []
    for out in rt.outputs:
        for i, n in enumerate(names):
            m, p = out.metrics.get(n, {}), f"{names[0]} vs {n}"
            agree = [num.db(out.agreement_db.get(p)), num.sig(out.max_abs_diff.get(p))] if i else ["", ""]
            rows.append(
                [
                    out.name if i == 0 else "",
                    n,
                    num.db(m.get("sqnr_db")),
                    num.sig(m.get("max_abs_error")),
                    num.pct(m.get("top1_agreement")),
                    *agree,
                ]
            )
    return rows


def divergence_lines(rt) -> list[str]:
    """Each pair's first divergent layer, or that every layer agrees to the tolerance."""
    lines = [
        f"{d.pair}: first diverges at {d.layer} ({d.op_type}, {d.encoding or 'float'}): agreement "
        f"{num.db(d.agreement_db)} dB < {num.db(rt.tolerance_db)} dB"
        for d in rt.divergences
    ]
    diverged = {d.pair.split(" vs ")[1] for d in rt.divergences}
    names = rt.names
    lines += [
        f"{names[0]} vs {n}: every layer agrees to {num.db(rt.tolerance_db)} dB or more"
        for n in names[1:]
        if n not in diverged
    ]
    return lines


def runtime_line(info) -> str:
    """``openvino: openvino 2026.4.1 on CPU``, and what could not be measured there."""
    what = f"{info.name}: {info.engine} {info.version} on {info.device}" + (
        "" if info.optimized else ", optimizations off"
    )
    if info.reason:
        what += f"; not measurable: {info.reason}"
    elif info.layers_reason:
        what += f"; outputs only: {info.layers_reason}"
    return what


def summary_lines(rt) -> list[str]:
    """The lines under the tables: the divergences, then each runtime."""
    return divergence_lines(rt) + [runtime_line(info) for info in rt.runtimes]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table (columns padded with spaces; the first two left-aligned, the rest right)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


__all__ = [
    "LAYERS_TITLE",
    "NOT_MEASURABLE",
    "divergence_lines",
    "layer_header",
    "layer_rows",
    "output_header",
    "output_rows",
    "outputs_title",
    "pairs",
    "runtime_line",
    "summary_lines",
    "text_table",
]
