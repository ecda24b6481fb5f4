"""How every renderer writes a number: one spelling for each special value, one rule per quantity.

The terminal tables, Markdown, JUnit, HTML, the SVG plots and the
gate-check sentence (:mod:`qaudit.renderers.checks`) all write numbers with these functions, so a value
reads the same in every output (the golden files in ``tests/renderers/golden``
freeze the result).

Special values, whatever the quantity:

=============  ========  ==================================================
value          written   meaning
=============  ========  ==================================================
``None``       ``-``     missing: not measured, or not defined for this row
NaN            ``NaN``   measured but undefined (reports store it as missing)
``+inf``       ``∞``     e.g. an SQNR of +inf: no quantization error at all
``-inf``       ``-∞``    with an ASCII hyphen-minus, like every negative number
=============  ========  ==================================================

A value that rounds to zero is written without a sign (``0.0``, never
``-0.0``); exponents are written as Python writes them (``3.4e-05``).

Quantities (the *rules*):

* :func:`db`: decibels (SQNR), 1 decimal: ``31.0``;
* :func:`pct`: a fraction 0-1 shown as a percentage (clip fraction, top-1
  agreement, accuracy), 2 decimals: ``0.9975`` -> ``99.75``;
  :func:`points`: a value already in percent (``acc_drop_pct``), 2 decimals;
* :func:`frac`: a ratio 0-1 shown as is (channel precision, alignment
  confidence), 2 decimals: ``0.81``;
* :func:`nats`: QCE and QKL, 4 decimals: ``0.0629``;
* :func:`mse`: mean squared errors, 3 significant digits, always scientific:
  ``3.40e-04``;
* :func:`sig`: everything else (ranges, scales, bin widths, deltas), 3
  significant digits: ``0.292``, ``4.11``, ``1.5e-07``;
* :func:`gate`: the measured value and threshold of a gate check, 4
  significant digits, more when needed so that a value just under a threshold
  does not print as it: ``27.99996 < 28``, never ``28 < 28``;
* :func:`exact`: for machine readers (JUnit bodies, HTML sort keys): the
  shortest text that reads back as the same float (``repr``), with the special
  values above.

:func:`metric` applies the rule of a report field by its name (:data:`METRIC_RULES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

MISSING = "-"
NAN = "NaN"
POS_INF = "∞"
NEG_INF = "-∞"


def _float(v) -> float | None:
    """``v`` as a float (numpy scalars too); ``None`` stays ``None``."""
    if v is None:
        return None
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    return float(v)


def is_missing(v) -> bool:
    """``None`` or NaN: a value that has no number to show."""
    f = _float(v)
    return f is None or math.isnan(f)


def _special(f: float | None) -> str | None:
    if f is None:
        return MISSING
    if math.isnan(f):
        return NAN
    if math.isinf(f):
        return POS_INF if f > 0 else NEG_INF
    return None


def _unsigned_zero(text: str) -> str:
    """``-0.0`` -> ``0.0``, ``-0.00e+00`` -> ``0.00e+00``: a value that rounds to zero has no sign."""
    if text.startswith("-") and not any(ch in "123456789" for ch in text.split("e")[0]):
        return text[1:]
    return text


def text(v, spec: str) -> str:
    """``v`` formatted with the format ``spec`` (e.g. ``".3g"``), with the special values of the module docstring."""
    f = _float(v)
    special = _special(f)
    if special is not None:
        return special
    return _unsigned_zero(format(f, spec))


def sig(v, digits: int = 3) -> str:
    """``digits`` significant digits (default 3): ranges, scales, widths, deltas."""
    return text(v, f".{digits}g")


def db(v) -> str:
    """Decibels (SQNR), 1 decimal; ``∞`` for an SQNR of +inf (no error)."""
    return text(v, ".1f")


def pct(fraction) -> str:
    """A fraction 0-1 as a percentage with 2 decimals (the number only, no ``%``)."""
    f = _float(fraction)
    return text(None if f is None else 100 * f, ".2f")


def points(v) -> str:
    """A value already in percent, 2 decimals."""
    return text(v, ".2f")


def frac(v) -> str:
    """A ratio 0-1 shown as is, 2 decimals."""
    return text(v, ".2f")


def nats(v) -> str:
    """QCE / QKL, 4 decimals."""
    return text(v, ".4f")


def mse(v) -> str:
    """A mean squared error: 3 significant digits in scientific notation."""
    return text(v, ".2e")


#: significant digits of a gate's measured value and threshold
GATE_DIGITS = 4


def gate(v, against=None) -> str:
    """The measured value or threshold of a gate check: 4 significant digits, or, when ``against``
    (the other side of the comparison) differs from ``v`` but would print the same, as many more
    as it takes to tell them apart (``27.99996 < 28``, not ``28 < 28``)."""
    f, a = _float(v), _float(against)
    if f is None or a is None or f == a or not (math.isfinite(f) and math.isfinite(a)):
        return sig(f, GATE_DIGITS)
    for digits in range(GATE_DIGITS, 18):
        if sig(f, digits) != sig(a, digits):
            return sig(f, digits)
    return exact(f)  # unreachable: 17 significant digits tell any two doubles apart


def exact(v) -> str:
    """Full precision for machine readers: ``repr`` of the float (``0.1``, ``31.02673879115319``)."""
    f = _float(v)
    special = _special(f)
    return special if special is not None else repr(f)


#: the rule of each report field (layer, output and comparison metrics)
METRIC_RULES: dict[str, Callable[[object], str]] = {
    "sqnr_db": db,
    "sqnr_isolated_db": db,
    "w_sqnr_db": db,
    "qmse": mse,
    "qmse_isolated": mse,
    "w_qmse": mse,
    "clip_fraction": pct,
    "top1_agreement": pct,
    "acc_fp32": pct,
    "acc_int8": pct,
    "acc_drop_pct": points,
    "qce": nats,
    "qkl": nats,
    "max_abs_error": sig,
    "rel_error": sig,
    "w_precision": frac,
    "fold_w_precision": frac,
    "a_precision": frac,
}


def metric(name: str, v) -> str:
    """``v`` written by the rule of report field ``name`` (:data:`METRIC_RULES`; others: :func:`sig`)."""
    return METRIC_RULES.get(name, sig)(v)


#: the unit shown after a column title of a metric whose rule changes its unit
METRIC_UNITS = {"clip_fraction": "%", "top1_agreement": "%", "acc_fp32": "%", "acc_int8": "%", "acc_drop_pct": "%"}


__all__ = [
    "MISSING",
    "NAN",
    "NEG_INF",
    "POS_INF",
    "METRIC_RULES",
    "db",
    "exact",
    "frac",
    "gate",
    "is_missing",
    "metric",
    "mse",
    "nats",
    "pct",
    "points",
    "sig",
    "text",
]


#: the column titles of every model-output table, after the output's name (the cells of :func:`output_cells`)
OUTPUT_HEADERS = (
    "kind",
    "QMSE",
    "SQNR dB",
    "max abs err",
    "rel err",
    "QCE",
    "QKL",
    "top-1 agree %",
    "acc fp32 %",
    "acc int8 %",
    "acc drop %",
)


def output_cells(o) -> list[str]:
    """The cells of one model output (an :class:`~qaudit.report.OutputRow`), in the order
    every output table shows them (:data:`OUTPUT_HEADERS`): kind (class/regression), QMSE,
    SQNR, max absolute and relative error, QCE, QKL, top-1 agreement, accuracy fp32 and
    quantized, accuracy drop (signed)."""
    return [
        o.kind or MISSING,
        mse(o.qmse),
        db(o.sqnr_db),
        sig(o.max_abs_error),
        sig(o.rel_error),
        nats(o.qce),
        nats(o.qkl),
        pct(o.top1_agreement),
        pct(o.acc_fp32),
        pct(o.acc_int8),
        points(o.acc_drop_pct),
    ]
