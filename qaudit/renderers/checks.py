"""The words of a gate check, written once: :func:`words` gives its parts, :func:`sentence` the one line.

The terminal's "Failing gates"
table, the Markdown check tables and the JUnit failure messages all take their
text from here, so a check reads the same everywhere::

    min_layer_sqnr /fc2/Gemm: sqnr_db 18.25 < 20 (glob '/fc2/*')
    max_layer_sqnr_drop /fc2/Gemm: sqnr_db change 2.5 > 1 (baseline 30, now 27.5)
    max_qce features: qce is missing (null: QCE is defined for classification outputs ...)

The relation is the check's comparison when it passes and its negation when it
fails (``18.25 < 20`` for a failed ``>=``); numbers follow
:func:`qaudit.renderers.numbers.gate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from qaudit.renderers import numbers
from qaudit.report import GateCheck, GateResult

#: the relation a failed check states
_NEGATION = {">=": "<", "<=": ">"}


@dataclass(frozen=True)
class CheckWords:
    """The parts of a check as text (the columns of the check tables)."""

    gate: str
    scope: str  # "layer" | "output"
    subject: str  # the layer or output name; "(no layer)" when the gate found nothing to check
    metric: str  # the field, or "<field> change" for a regression gate
    measured: str  # "-" when nothing was measured
    relation: str  # ">=", "<", ...; "" when there is nothing to compare
    threshold: str  # "-" when an override turned the gate off
    glob: str  # the override's glob; "" for the gate's default
    note: str  # why it failed or was skipped, when the numbers do not say it
    baseline: str  # " (baseline 30, now 27.5)" for a regression check, else ""


def words(c: GateCheck) -> CheckWords:
    """The parts of ``c`` as text."""
    regression = c.baseline is not None or c.value is not None
    compared = c.measured is not None and c.threshold is not None
    relation = (c.comparison if c.passed else _NEGATION[c.comparison]) if compared else ""
    return CheckWords(
        gate=c.gate,
        scope=c.scope,
        subject=c.subject or f"(no {c.scope})",
        metric=f"{c.metric} change" if regression else c.metric,
        measured=numbers.gate(c.measured, c.threshold),
        relation=relation,
        threshold=numbers.gate(c.threshold, c.measured),
        glob=c.pattern or "",
        note=c.reason,
        baseline=(
            f" (baseline {numbers.gate(c.baseline, c.value)}, now {numbers.gate(c.value, c.baseline)})"
            if c.baseline is not None
            else ""
        ),
    )


def sentence(c: GateCheck) -> str:
    """One line for ``c`` (see the module docstring)."""
    w = words(c)
    if not w.relation:
        return f"{w.gate} {w.subject}: {w.note or c.status}"
    line = f"{w.gate} {w.subject}: {w.metric} {w.measured} {w.relation} {w.threshold}{w.baseline}"
    return line + (f" (glob '{w.glob}')" if w.glob else "")


def counts(result: GateResult) -> str:
    """The verdict's counts: ``"2 of 28 gate check(s) failed, 1 skipped"`` or ``"28 gate check(s) passed"``."""
    n, failed, skipped = len(result.checks), len(result.failures), len(result.skipped)
    extra = f", {skipped} skipped" if skipped else ""
    if result.passed:
        return f"{n} gate check(s) passed{extra}"
    return f"{failed} of {n} gate check(s) failed{extra}"


__all__ = ["CheckWords", "counts", "sentence", "words"]
