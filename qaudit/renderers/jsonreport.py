"""The JSON renderer: the versioned JSON of a report (:func:`qaudit.report.to_json`) or of
a comparison (:func:`qaudit.comparison.result.to_json`). Both are strict JSON; how
non-finite numbers are written is documented in :mod:`qaudit.report`."""

from __future__ import annotations

from qaudit import report as report_json
from qaudit.renderers.base import accept, with_gates


class JsonRenderer:
    """``render(report_or_comparison, *, gates=None) -> str``: the JSON document, ending in a newline."""

    name = "json"
    subjects = frozenset({"report", "comparison", "runs"})

    def render(self, subject, *, gates=None) -> str:
        kind = accept(self, subject, gates)
        if kind == "comparison":
            from qaudit.comparison.result import to_json

            return to_json(subject)
        if kind == "runs":
            from qaudit.runs import runs_to_json

            return runs_to_json(subject)
        return report_json.to_json(with_gates(subject, gates))


RENDERER = JsonRenderer()
