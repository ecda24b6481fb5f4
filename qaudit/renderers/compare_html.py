"""HTML page of a :class:`~qaudit.comparison.result.Comparison`: the models overlaid, aligned by the comparison.

The ``html`` renderer overlays several reports by the row index of their
layer tables. Exports of one network have different rows (Transpose, Reshape,
Identity, BN nodes), so here each report is reduced to its weighted layers,
re-indexed by the comparison's aligned row: a layer and its partners share the
x position of every plot and the ``#`` of every table. A section with the
alignment (pairs, confidences, differences and their explanations) is put in
front of the page. Like every renderer it imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

from dataclasses import replace
from html import escape

from qaudit.comparison.result import Comparison
from qaudit.renderers import numbers as num
from qaudit.renderers.html import RENDERER as HTML
from qaudit.renderers.terminal import COMPARE_COLUMNS
from qaudit.report import Report


def aligned_reports(c: Comparison) -> list[tuple[str, Report]]:
    """Each model's report with only its weighted rows, ``index`` = the comparison row."""
    out = []
    for k, (label, rep) in enumerate(zip(c.labels, c.reports)):
        by_index = {r.index: r for r in rep.layers}
        rows = tuple(
            replace(by_index[row.indices[k]], index=i)
            for i, row in enumerate(c.layers)
            if row.indices[k] is not None and row.indices[k] in by_index
        )
        out.append((label, replace(rep, layers=rows)))
    return out


def _alignment_section(c: Comparison) -> str:
    head = ["#", "signature"]
    for k, lab in enumerate(c.labels):
        head.append(lab)
        if k:
            head.append(f"conf ({lab})")
    head += [title for _, title in COMPARE_COLUMNS] + ["explanations"]
    rows = []
    for i, r in enumerate(c.layers):
        cells = [f"<td>{i}</td>", f'<td class="l">{escape(r.signature)}</td>']
        for k in range(len(c.labels)):
            cells.append(f'<td class="l name">{escape(r.layers[k]) if r.layers[k] else "-"}</td>')
            if k:
                cells.append(f"<td>{num.frac(r.confidence[k])}{' ' + escape(r.method[k]) if r.method[k] else ''}</td>")
        for metric, _ in COMPARE_COLUMNS:
            m = r.metric(metric)
            texts = [num.metric(metric, v) for v in m.values]
            txt = texts[0] if len(set(texts)) == 1 else " → ".join(texts)
            differs = any(m.differs)
            cells.append(f"<td{' class=worst' if differs else ''}>{escape(txt)}{' ≠' if differs else ''}</td>")
        cells.append(f'<td class="l">{"<br>".join(escape(e) for e in r.explanations)}</td>')
        rows.append(f"<tr{'' if r.aligned else ' class=worst'}>{''.join(cells)}</tr>")
    ths = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    causes = "".join(f"<li>{escape(e)}</li>" for e in c.explanations)
    notes = "".join(f"<li>{escape(n)}</li>" for n in c.notes)
    unaligned = "".join(
        f"<li>{escape(lab)}: {escape(', '.join(c.unaligned(k)))}</li>"
        for k, lab in enumerate(c.labels)
        if c.unaligned(k)
    )
    return (
        '<h2 id="alignment">Layer alignment</h2>'
        "<p>Weighted layers aligned by graph order and signature (and fp32 activation similarity when the models "
        "were run). In the plots and tables below, a layer's index is its row here: aligned layers share it. "
        "≠: differs from the first model beyond the tolerance.</p>"
        + (f"<h3>Known causes</h3><ul>{causes}</ul>" if causes else "")
        + (f"<h3>Unaligned layers</h3><ul>{unaligned}</ul>" if unaligned else "")
        + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
        + f'<div class="scroll"><table class="layers"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )


def comparison_page(c: Comparison, worst: int = 3) -> str:
    """The page of ``c``: the alignment section, then the overlay of :func:`aligned_reports`."""
    page = HTML.render(aligned_reports(c), worst=worst)
    return page.replace('<h2 id="summary">', _alignment_section(c) + '<h2 id="summary">', 1)


__all__ = ["aligned_reports", "comparison_page"]
