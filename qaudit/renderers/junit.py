"""JUnit XML of the gate checks, for CI test reports (pure; imports no onnxruntime).

Layout (the common Jenkins/Ant JUnit schema, read by GitLab, GitHub test
reporters, Jenkins, Azure DevOps):

* ``<testsuites name="qaudit">`` with the totals and the audit's duration;
* one ``<testsuite name="qaudit.<gate>">`` per gate, with ``<properties>``:
  the model, its sha256, the gate's thresholds, the baseline and the layers
  added/removed since it;
* one ``<testcase classname="qaudit.<gate>" name="layer <name>">`` (or
  ``output <name>``) per check. A failing check has ``<failure type="<gate>"
  message="...">``: the message states the measured value and the threshold,
  the body lists ``metric``, ``measured``, ``comparison``, ``threshold``,
  ``glob``, ``baseline``, ``value`` with full precision
  (:func:`qaudit.renderers.numbers.exact`: ``-`` when missing, ``∞`` for +inf).
  A skipped check has ``<skipped message="<reason>">``.

With no gate configured the file holds one empty suite (``tests="0"``).

A report that ran several runtimes (``--runtimes``) adds a suite ``qaudit.runtimes``
with no test case (its checks are those of its gates, ``min_runtime_agreement_db`` and
the ``[runtimes.NAME]`` gates, in their suites): ``<properties>`` ``runtimes`` (the names),
``runtime[NAME]`` (engine, version, device, what was not measurable there) and
``divergence[A vs B]`` (each pair's first divergent layer, or that every layer agrees),
and ``<system-out>`` holding the outputs' and the layers' tables in each runtime as text.

A multi-run report (:mod:`qaudit.runs`) has these suites for each run, named
``qaudit.<run>.<gate>`` (``qaudit.<run>`` when ungated), with the properties
``run`` and ``calibrate_method``; the totals cover every run.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from qaudit.renderers import runtimes as rts
from qaudit.renderers.base import accept, with_gates
from qaudit.renderers.checks import sentence
from qaudit.renderers.numbers import exact
from qaudit.report import GateCheck, GateResult, Report

# characters XML 1.0 does not allow, even escaped
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _s(v) -> str:
    return _ILLEGAL.sub("?", "" if v is None else str(v))


def _case_name(c: GateCheck) -> str:
    return f"{c.scope} {c.subject}" if c.subject else f"{c.scope}s (none checked)"


def _body(c: GateCheck) -> str:
    lines = [
        f"gate: {c.gate}",
        f"{c.scope}: {c.subject or '-'}",
        f"metric: {c.metric}",
        f"measured: {exact(c.measured)}",
        f"comparison: measured {c.comparison} threshold",
        f"threshold: {exact(c.threshold)}",
        f"glob: {c.pattern if c.pattern is not None else '(default)'}",
    ]
    if c.baseline is not None or c.value is not None:
        lines += [f"value: {exact(c.value)}", f"baseline: {exact(c.baseline)}"]
    if c.reason:
        lines.append(f"reason: {c.reason}")
    return "\n".join(lines) + "\n"


def _counts(checks) -> dict:
    return {
        "tests": str(len(checks)),
        "failures": str(sum(c.status == "fail" for c in checks)),
        "errors": "0",
        "skipped": str(sum(c.status == "skip" for c in checks)),
    }


def _properties(parent, report: Report, result: GateResult | None, gate: str | None, run: str | None = None) -> None:
    props = ET.SubElement(parent, "properties")

    def prop(name, value):
        ET.SubElement(props, "property", name=name, value=_s(value))

    if run is not None:
        prop("run", run)
        prop("calibrate_method", report.settings.get("calibrate_method"))
    prop("model", report.model.get("path"))
    prop("model_sha256", report.model.get("sha256"))
    if result is None:
        prop("gates", "none configured")
        return
    if gate is not None and gate in result.thresholds:
        t = result.thresholds[gate]
        prop("threshold", exact(t["default"]) if t["default"] is not None else "off")
        for glob, v in t["overrides"].items():
            prop(f"threshold[{glob}]", exact(v) if v is not None else "off")
    if result.baseline is not None:
        prop("baseline", result.baseline.get("path"))
        prop("baseline_model_sha256", result.baseline.get("model_sha256"))
        prop("added_layers", ", ".join(result.added_layers))
        prop("removed_layers", ", ".join(result.removed_layers))
        if result.added_outputs or result.removed_outputs:
            prop("added_outputs", ", ".join(result.added_outputs))
            prop("removed_outputs", ", ".join(result.removed_outputs))


class JUnitRenderer:
    """``render(report, *, gates=None) -> str``: the JUnit XML document of the gate checks
    (of ``gates``, default ``report.gates``), laid out as the module docstring says."""

    name = "junit"
    subjects = frozenset({"report", "runs"})

    def render(self, subject, *, gates: GateResult | None = None) -> str:
        if accept(self, subject, gates) == "runs":
            runs = [(name, r) for name, r in subject.runs]
        else:
            runs = [(None, with_gates(subject, gates))]
        every = [c for _, r in runs for c in (r.gates.checks if r.gates is not None else ())]
        seconds = max(float(r.meta.get("seconds") or 0) for _, r in runs)
        root = ET.Element("testsuites", name="qaudit", **_counts(every), time=f"{seconds:.3f}")
        for run, report in runs:
            _suites(root, report, run)
        ET.indent(root, space="  ")
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suites(root, report: Report, run: str | None) -> None:
    """The suites of one report (one per gate) under ``root``; those of a run are named ``qaudit.<run>.<gate>``."""
    result = report.gates
    checks = result.checks if result is not None else ()
    prefix = "qaudit" if run is None else f"qaudit.{_s(run)}"
    timestamp = _s(report.meta.get("created", "")).rstrip("Z")
    by_gate: dict[str, list[GateCheck]] = {}
    for c in checks:
        by_gate.setdefault(c.gate, []).append(c)
    if not by_gate:
        suite = ET.SubElement(root, "testsuite", name=prefix, **_counts(()), time="0", timestamp=timestamp)
        _properties(suite, report, result, None, run)
    for gate, cs in by_gate.items():
        suite = ET.SubElement(root, "testsuite", name=f"{prefix}.{gate}", **_counts(cs), time="0", timestamp=timestamp)
        _properties(suite, report, result, gate, run)
        for c in cs:
            case = ET.SubElement(suite, "testcase", classname=f"{prefix}.{gate}", name=_s(_case_name(c)), time="0")
            if c.status == "fail":
                el = ET.SubElement(case, "failure", type=gate, message=_s(sentence(c)))
                el.text = _s(_body(c))
            elif c.status == "skip":
                ET.SubElement(case, "skipped", message=_s(c.reason or "skipped"))
    if report.runtimes is not None:
        _runtimes_suite(root, report, f"{prefix}.runtimes", timestamp)


def _runtimes_suite(root, report: Report, name: str, timestamp: str) -> None:
    """The suite of the ``runtimes`` section: no test case; its properties and tables (as text)."""
    rt = report.runtimes
    suite = ET.SubElement(root, "testsuite", name=name, **_counts(()), time="0", timestamp=timestamp)
    props = ET.SubElement(suite, "properties")

    def prop(key, value):
        ET.SubElement(props, "property", name=_s(key), value=_s(value))

    prop("model", report.model.get("path"))
    prop("runtimes", ", ".join(rt.names))
    for info in rt.runtimes:
        prop(f"runtime[{info.name}]", rts.runtime_line(info).removeprefix(f"{info.name}: "))
    for line in rts.divergence_lines(rt):
        pair, _, what = line.partition(": ")
        prop(f"divergence[{pair}]", what)
    layers = [
        [lr.name, lr.op_type, *cells, *(v + (" ◀" if d else "") for v, d in agree)]
        for lr, cells, agree in rts.layer_rows(rt)
    ]
    text = [rts.outputs_title(rt), rts.text_table(rts.output_header(rt), rts.output_rows(rt)), ""]
    text += [
        rts.LAYERS_TITLE + " (◀: the pair's first layer below the tolerance)",
        rts.text_table(rts.layer_header(rt), layers),
    ]
    ET.SubElement(suite, "system-out").text = _s("\n".join(text) + "\n")


RENDERER = JUnitRenderer()
