"""The renderer protocol and the one registry of output formats.

Every output of qaudit is a :class:`Renderer`: a name, the kinds of subject it
accepts, and ``render(subject, *, gates=None, **options) -> str``, a pure
function of its arguments (no clock, no environment, no I/O). The subjects are

* ``"report"``: a :class:`~qaudit.report.Report`;
* ``"reports"``: several labelled reports, ``[(label, Report), ...]``, overlaid (HTML);
* ``"comparison"``: a :class:`~qaudit.comparison.result.Comparison`;
* ``"runs"``: a :class:`~qaudit.runs.MultiReport`, several runs of one audit (each with its own gates).

:data:`FORMATS` names every renderer; :func:`render` picks one, renders, and
optionally writes the text (atomically, or to stdout for ``"-"``). A format
name or a subject the format cannot render is a :class:`~qaudit.errors.ConfigError`
whose one-line message lists the valid choices; an option the renderer does not
take is a :class:`TypeError`, as for any Python call.

``gates`` is the :class:`~qaudit.report.GateResult` to show; ``None`` shows the
report's own ``report.gates`` (the verdict saved in a JSON report). It applies
to a single report only.

The terminal renderer is the one that can also stream: with ``console=`` (a
:class:`rich.console.Console`) it prints there, in colour, and returns ``""``.

Renderers import neither onnx nor onnxruntime (tests/renderers/test_imports.py),
so saved reports are rendered without running, or even installing, them.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from qaudit.errors import ConfigError
from qaudit.report import GateResult, Report

#: the kinds of subject a renderer may accept
SUBJECTS = ("report", "reports", "comparison", "runs")

#: how a kind of subject is named in messages
_KIND_TEXT = {
    "report": "report",
    "reports": "list of labelled reports",
    "comparison": "comparison",
    "runs": "multi-run report",
}

#: output format -> module defining ``RENDERER``; loaded on first use, so importing
#: this package stays cheap
_MODULES = {
    "terminal": "qaudit.renderers.terminal",
    "json": "qaudit.renderers.jsonreport",
    "markdown": "qaudit.renderers.markdown",
    "junit": "qaudit.renderers.junit",
    "html": "qaudit.renderers.html",
}
#: every output format, in the order they are listed to users
FORMATS: tuple[str, ...] = tuple(_MODULES)


@runtime_checkable
class Renderer(Protocol):
    """One output format.

    ``name`` is its key in :data:`FORMATS`; ``subjects`` the kinds of subject
    (see :data:`SUBJECTS`) it renders. ``render`` returns the whole text; it
    raises :class:`TypeError` for an option it does not take.
    """

    name: str
    subjects: frozenset[str]

    def render(self, subject, *, gates: GateResult | None = None, **options) -> str: ...


def subject_kind(subject) -> str:
    """``"report"``, ``"reports"`` or ``"comparison"``; :class:`TypeError` for anything else,
    :class:`~qaudit.errors.ConfigError` for an empty list of reports."""
    from qaudit.runs import MultiReport

    if isinstance(subject, Report):
        return "report"
    if isinstance(subject, MultiReport):
        return "runs"
    if isinstance(subject, Sequence) and not isinstance(subject, str):
        if not subject:
            raise ConfigError("nothing to render: the list of (label, report) pairs is empty")
        if all(
            isinstance(x, Sequence) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], Report)
            for x in subject
        ):
            return "reports"
    else:
        from qaudit.comparison.result import Comparison  # neither numpy nor onnx; only when needed

        if isinstance(subject, Comparison):
            return "comparison"
    raise TypeError(
        f"cannot render a {type(subject).__name__}: give a Report, a MultiReport, a list of (label, Report) pairs "
        "or a Comparison"
    )


def get_renderer(fmt: str) -> Renderer:
    """The renderer of format ``fmt``; :class:`~qaudit.errors.ConfigError` when there is none."""
    if fmt not in _MODULES:
        raise ConfigError(f"unknown output format {fmt!r}; formats are: {', '.join(FORMATS)}")
    return importlib.import_module(_MODULES[fmt]).RENDERER


def formats_for(kind: str) -> tuple[str, ...]:
    """The formats that render a subject of this kind (imports every renderer)."""
    return tuple(f for f in FORMATS if kind in get_renderer(f).subjects)


def accept(renderer: Renderer, subject, gates: GateResult | None = None) -> str:
    """The kind of ``subject`` (see :func:`subject_kind`) if ``renderer`` renders it, else a
    :class:`~qaudit.errors.ConfigError` listing the formats that do. Renderers call it first."""
    kind = subject_kind(subject)
    if kind not in renderer.subjects:
        what = _KIND_TEXT[kind]
        raise ConfigError(
            f"the {renderer.name} format cannot render a {what}; formats for a {what}: {', '.join(formats_for(kind))}"
        )
    if gates is not None and kind != "report":
        what = "each run carries its own (qaudit.runs.evaluate_runs)" if kind == "runs" else ""
        raise ConfigError(
            f"gates= applies to a single report, not to a {_KIND_TEXT[kind]}" + (f": {what}" if what else "")
        )
    return kind


def with_gates(report: Report, gates: GateResult | None) -> Report:
    """``report`` with ``gates`` as its verdict (``None``: the report's own ``report.gates``)."""
    if gates is None or gates is report.gates:
        return report
    import dataclasses

    return dataclasses.replace(report, gates=gates)


def render(subject, fmt: str, *, gates: GateResult | None = None, to: str | Path | None = None, **options) -> str:
    """Render ``subject`` in format ``fmt`` (one of :data:`FORMATS`) and return the text.

    ``gates``: the gate verdict to show (default: the report's own). ``to``: also
    write the text there, atomically (a temporary file in the target's
    directory, renamed over it; on failure the temporary file is deleted and an
    existing file is left untouched), or to stdout for ``"-"``. Nothing is
    written when rendering fails. Every format but ``json`` renders the strings of
    ``subject`` with their control characters escaped (:mod:`qaudit.renderers.text`).
    ``options`` go to the renderer, e.g.
    ``worst=5`` (markdown, html, terminal) or ``width=120`` (terminal).

    Raises :class:`~qaudit.errors.ConfigError` for an unknown format, or one that
    cannot render this subject (e.g. ``junit`` of a comparison).
    """
    renderer = get_renderer(fmt)
    accept(renderer, subject, gates)
    if to is not None and options.get("console") is not None:
        raise ConfigError("give either to= or console=, not both")
    if fmt != "json":  # the JSON report keeps every name as it is (JSON escapes it)
        from qaudit.renderers.text import printable_copy

        subject, gates = printable_copy(subject), printable_copy(gates)
    text = renderer.render(subject, gates=gates, **options)
    if to is not None:
        from qaudit.output import write_text

        write_text(to, text)
    return text


__all__ = [
    "FORMATS",
    "SUBJECTS",
    "Renderer",
    "accept",
    "formats_for",
    "get_renderer",
    "render",
    "subject_kind",
    "with_gates",
]


def data_line(d: dict) -> str | None:
    """How image and WAV folders and loader scripts were read, one line (every renderer shows it):
    ``data: calib imgs/ (10 images, 2 classes); preprocess ...; classes cat=0, dog=1``. None for
    other data (the report's ``data`` has no ``sources``)."""
    if not d.get("sources"):
        return None
    parts = [f"{k} {d[k]}" for k in ("calib", "eval") if d.get(k)]
    if (d.get("preprocess") or {}).get("summary"):
        parts.append(f"preprocess {d['preprocess']['summary']}")
    if isinstance(d.get("class_names"), list):
        parts.append("classes " + ", ".join(f"{n}={i}" for i, n in enumerate(d["class_names"])))
    return "data: " + "; ".join(parts)


def describe(settings: dict) -> str:
    """One override in words, e.g. "uint16", "per-channel axis 0", "range [-1, 1]"."""
    parts = []
    if "type" in settings:
        parts.append(settings["type"])
    if settings.get("per_channel"):
        parts.append("per-channel" + (f" axis {settings['axis']}" if "axis" in settings else ""))
    elif settings.get("per_channel") is False:
        parts.append("per-tensor")
    if "symmetric" in settings:
        parts.append("symmetric" if settings["symmetric"] else "asymmetric")
    if settings.get("reduce_range"):
        parts.append("reduce-range")
    if "rmin" in settings or "rmax" in settings:
        parts.append(f"range [{settings.get('rmin', '-')}, {settings.get('rmax', '-')}]")
    if "scale" in settings:
        parts.append(f"scale {settings['scale']:g} zp {settings['zero_point']}")
    return ", ".join(parts)


def override_label(row) -> str:
    """The marker of an overridden row, e.g. "override: uint16"; "" for a row without one."""
    if not getattr(row, "override", None):
        return ""
    return "override: " + "; ".join(describe(s) for s in row.override.values() if isinstance(s, dict))


def decomposition(row) -> str:
    """``clip / grid`` of a row: the isolated error's share from clipping and the share of the grid's
    codes used, in whole percent (``-`` for what the row does not have)."""
    from qaudit.renderers import numbers as num

    if row.clip_error_share is None and row.grid_use is None:
        return num.MISSING
    return " / ".join(num.MISSING if v is None else f"{100 * v:.0f}" for v in (row.clip_error_share, row.grid_use))
